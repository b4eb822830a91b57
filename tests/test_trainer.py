"""The trainer on tiny random Llamas: exact at initialisation, deterministic, resumable, loadable checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.training.algorithms import ALGORITHMS, get_spec
from evalharness.training.trainer import TrainConfig, train
from trainkit import base, pairs  # noqa: F401  (module fixtures)

CHAT = [{"role": "user", "content": "write a short review about the movie"}]



def cfg(base: Path, data: Path, out: Path, **kw) -> TrainConfig:
    opts = dict(algorithm="dpo", base=str(base), data=str(data), learning_rate=5e-3, max_steps=4, batch_size=4,
                warmup_ratio=0.0, output_dir=str(out))
    opts.update(kw)
    return TrainConfig(**opts)


def test_dpo_starts_at_ln2_and_learns(base, pairs, tmp_path):
    res = train(cfg(base, pairs, tmp_path / "dpo", max_steps=6, save_every=3))
    first = res.metrics[0]
    # policy == reference at step 1: every pair's loss is ln 2 and margins 0 (to float error: the reference
    # pass batches and pads differently)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-5)
    assert res.metrics[-1]["loss"] < first["loss"] and res.metrics[-1]["rewards/margins"] > 0
    assert [c.name for c in res.checkpoints] == ["checkpoint-3", "checkpoint-6"]
    man = json.loads((res.checkpoints[-1] / "evalharness_manifest.json").read_text())
    assert man["algorithm"] == "dpo" and man["hparams"] == {"beta": 0.1} and man["step"] == 6
    assert man["base_model"] == str(base.resolve()) and man["data"]["hash"].startswith("sha256:")
    assert man["data"]["n_examples"] == 12 and man["metrics"]["step"] == 6
    assert man["train_config"]["learning_rate"] == 5e-3
    train_man = json.loads((tmp_path / "dpo" / "train_manifest.json").read_text())
    assert train_man["status"] == "finished" and train_man["checkpoints"] == ["checkpoint-3", "checkpoint-6"]
    lines = (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6


def test_checkpoint_reloads_and_scores_like_the_trained_model(base, pairs, tmp_path):
    from evalharness.backends.hf import HFBackend
    from evalharness.core.records import ScoreRequest
    res = train(cfg(base, pairs, tmp_path / "r"))
    from evalharness.core.models import resolve
    ref = resolve(str(res.checkpoints[-1]))
    assert ref.kind == "local"
    b, b0 = HFBackend(ref), HFBackend(str(base))
    prompt = b.render(__import__("evalharness.core.prompts", fromlist=["PromptItem"]).PromptItem("x", messages=(("user", CHAT[0]["content"]),)))
    resp = b.tokenizer("the movie was great and i loved it", add_special_tokens=False)["input_ids"] + [b.tokenizer.eos_token_id]
    lp = b.logprobs([ScoreRequest("x", prompt, resp)])[0].logprob
    lp0 = b0.logprobs([ScoreRequest("x", prompt, resp)])[0].logprob
    assert lp > lp0  # the chosen style became more likely


def test_lora_checkpoint_is_an_adapter_on_the_base(base, pairs, tmp_path):
    pytest.importorskip("peft")
    from evalharness.core.models import load, resolve
    res = train(cfg(base, pairs, tmp_path / "lora", lora=True, lora_r=4, lora_alpha=8, learning_rate=2e-2, max_steps=6))
    ck = res.checkpoints[-1]
    assert (ck / "adapter_config.json").is_file() and not (ck / "model.safetensors").exists()
    ref = resolve(str(ck))
    assert ref.kind == "lora" and ref.base is not None and ref.base.path == str(base.resolve())
    merged, _ = load(ref)
    plain, _ = load(resolve(str(base)))
    diffs = [float((a - b).detach().abs().max()) for (n, a), (_, b) in zip(merged.named_parameters(), plain.named_parameters())
             if "q_proj" in n]
    assert max(diffs) > 0  # the adapter changed the attention weights once merged
    assert res.metrics[-1]["rewards/margins"] > 0


def test_seeded_runs_are_identical_and_seed_changes_order(base, pairs, tmp_path):
    a = train(cfg(base, pairs, tmp_path / "a", max_steps=3))
    b = train(cfg(base, pairs, tmp_path / "b", max_steps=3))
    c = train(cfg(base, pairs, tmp_path / "c", max_steps=3, seed=1))
    losses = lambda r: [m["loss"] for m in r.metrics]  # noqa: E731
    assert losses(a) == losses(b)
    assert losses(a) != losses(c)


def test_gradient_accumulation_matches_one_big_batch(base, pairs, tmp_path):
    one = train(cfg(base, pairs, tmp_path / "one", batch_size=4, grad_accum=1, max_steps=3))
    acc = train(cfg(base, pairs, tmp_path / "acc", batch_size=2, grad_accum=2, max_steps=3))
    for m1, m2 in zip(one.metrics, acc.metrics):
        assert m1["loss"] == pytest.approx(m2["loss"], abs=1e-5)
        assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)


def test_warmup_then_cosine_schedule(base, pairs, tmp_path):
    res = train(cfg(base, pairs, tmp_path / "s", max_steps=10, warmup_ratio=0.2, learning_rate=1e-3))
    lrs = [m["lr"] for m in res.metrics]  # the rate each step used
    # warmup 2 steps: (s+1)/3 of the peak; then cosine from the peak, reaching 0 after the last step
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[1] == pytest.approx(1e-3 * 2 / 3)
    assert lrs[2] == pytest.approx(1e-3)
    assert lrs[6] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_finished_run_is_skipped_and_a_changed_config_refused(base, pairs, tmp_path):
    first = train(cfg(base, pairs, tmp_path / "r", max_steps=2))
    again = train(cfg(base, pairs, tmp_path / "r", max_steps=2))
    assert again.skipped and again.checkpoints == first.checkpoints
    assert [m["loss"] for m in again.metrics] == [m["loss"] for m in first.metrics]
    with pytest.raises(EvalHarnessError, match="different configuration"):
        train(cfg(base, pairs, tmp_path / "r", max_steps=3))


def test_unfinished_run_restarts(base, pairs, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "train_manifest.json").write_text(json.dumps({"status": "running"}))
    (out / "checkpoint-1").mkdir()
    res = train(cfg(base, pairs, out, max_steps=2))
    assert not res.skipped and not (out / "checkpoint-1").exists() and (out / "checkpoint-2").is_dir()


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if not get_spec(a).online])  # ppo: tests/test_ppo.py
def test_every_algorithm_trains(base, pairs, tmp_path, algorithm):
    res = train(cfg(base, pairs, tmp_path / algorithm, algorithm=algorithm, max_steps=3))
    losses = [m["loss"] for m in res.metrics]
    assert all(math.isfinite(x) for x in losses) and len(res.checkpoints) == 1
    man = json.loads((res.checkpoints[0] / "evalharness_manifest.json").read_text())
    assert man["algorithm"] == algorithm and man["hparams"]  # defaults are written out, never implicit
    if algorithm == "kto":
        assert res.metrics[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1
        assert res.metrics[0]["loss"] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0) for every example
    if algorithm in ("cdpo", "odpo", "rdpo") or algorithm == "dpo":
        assert man["reference_model"] == str(base.resolve())
    if algorithm in ("simpo", "orpo", "cpo"):
        assert man["reference_model"] is None


def test_odpo_needs_scores_and_bad_options_fail_before_work(base, tmp_path):
    data = tmp_path / "noscores.jsonl"
    data.write_text(json.dumps({"prompt": "the movie", "chosen": "good", "rejected": "bad"}) + "\n")
    with pytest.raises(InputError, match="score_chosen"):
        train(cfg(base, data, tmp_path / "o", algorithm="odpo"))
    with pytest.raises(EvalHarnessError, match="gamma"):
        train(cfg(base, data, tmp_path / "o", hparams={"gamma": 1.0}))
    with pytest.raises(EvalHarnessError, match="schedule"):
        train(cfg(base, data, tmp_path / "o", schedule="step"))
    assert not (tmp_path / "o").exists()


def test_truncation_keeps_eos_budget_and_prompt_tail(base, tmp_path):
    from evalharness.training.trainer import _encode
    from evalharness.core.models import load_fresh, resolve
    from evalharness.core.prompts import PromptItem
    _, tok = load_fresh(resolve(str(base)))
    c = TrainConfig(algorithm="dpo", base="", data="", max_length=8, max_prompt_length=3)
    p, r = _encode(tok, PromptItem("x", prompt="the movie was great and fun"), "good good good good good good good", c)
    assert p == tok("the movie was great and fun")["input_ids"][-3:]
    assert len(p) + len(r) == 8
    _, r2 = _encode(tok, PromptItem("x", prompt="the"), "good", c)
    assert r2[-1] == tok.eos_token_id  # an untruncated response ends with EOS (TRL convention)


def test_dropout_is_disabled_so_step_one_is_exact(pairs, tmp_path):
    from tiny import build_model
    from transformers import AutoConfig
    path = build_model(tmp_path / "drop", seed=5)
    conf = AutoConfig.from_pretrained(path)
    conf.attention_dropout = 0.5
    conf.save_pretrained(path)
    res = train(cfg(path, pairs, tmp_path / "d", max_steps=1))
    assert res.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_bf16_mixed_precision_keeps_fp32_weights(base, pairs, tmp_path):
    res = train(cfg(base, pairs, tmp_path / "bf", dtype="bfloat16", max_steps=2))
    from safetensors.torch import load_file
    w = load_file(str(res.checkpoints[0] / "model.safetensors"))
    assert all(t.dtype == torch.float32 for t in w.values())
    assert math.isfinite(res.metrics[-1]["loss"])


def test_default_dtype_is_auto_and_the_manifest_records_the_resolved_one(base, pairs, tmp_path, monkeypatch):
    """auto (the default) is mixed precision where the hardware has bf16 units, float32 elsewhere; the run's
    identity holds what it resolved to, so the same run on the same machine resumes, and a run resolved differently
    is another run."""
    from evalharness.training.loop import make_plan
    assert TrainConfig(algorithm="dpo", base=str(base), data=str(pairs)).dtype == "auto"
    assert make_plan(cfg(base, pairs, tmp_path / "a")).ident["dtype"] == "float32"
    monkeypatch.setenv("EVALHARNESS_AUTO_DTYPE", "bfloat16")
    plan = make_plan(cfg(base, pairs, tmp_path / "a"))
    assert plan.ident["dtype"] == plan.cfg.dtype == "bfloat16"
    res = train(cfg(base, pairs, tmp_path / "a", max_steps=1))
    man = json.loads((tmp_path / "a" / "train_manifest.json").read_text())
    assert man["identity"]["dtype"] == "bfloat16" and math.isfinite(res.metrics[0]["loss"])


def test_two_processes_data_parallel_match_one_process(base, pairs, tmp_path):
    """`torchrun`/`accelerate launch` with 2 processes (gloo on CPU): each takes half of every step's batch and
    DDP averages gradients, so losses match one process with the whole batch."""
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    script = tmp_path / "run.py"
    script.write_text(
        "import json, os, sys\nfrom evalharness.training.trainer import TrainConfig, train\n"
        f"r = train(TrainConfig(algorithm='dpo', base={str(base)!r}, data={str(pairs)!r}, learning_rate=5e-3, max_steps=3,"
        " batch_size=int(sys.argv[1]), warmup_ratio=0.0, output_dir=sys.argv[2]))\n"
        "open(sys.argv[2] + '.rank' + os.environ['RANK'], 'w').write(json.dumps([m['loss'] for m in r.metrics]))\n")
    from trainkit import child_env  # this checkout's code, not the editable install's
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), "2", str(tmp_path / "two")],
                         env=child_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = train(cfg(base, pairs, tmp_path / "one", batch_size=4, max_steps=3))
    got = [json.loads((tmp_path / f"two.rank{r}").read_text()) for r in (0, 1)]
    assert got[0] == got[1]  # both ranks log the same reduced metrics
    assert got[0] == pytest.approx([m["loss"] for m in one.metrics], abs=1e-5)
    assert (tmp_path / "two" / "checkpoint-3" / "model.safetensors").is_file()  # written once, by rank 0


def test_a_failed_run_is_recorded_as_failed(base, pairs, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(base, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):
        train(cfg(broken, pairs, tmp_path / "f"))
    man = json.loads((tmp_path / "f" / "train_manifest.json").read_text())
    assert man["status"] == "failed" and man["error"] and not list((tmp_path / "f").glob("checkpoint-*"))


def test_the_store_indexes_a_training_run_and_returns_its_own_metrics(base, pairs, tmp_path, monkeypatch):
    """A training run under a results root is a row of its index.sqlite (kind 'train'), listed as running while it
    trains and finished after; the store gives its logged loss, reward accuracy and KL per step. An index written
    before training runs were indexed (an eval run in it) gains the row and keeps its eval run."""
    import sqlite3

    from evalharness import store
    root = tmp_path / "results"
    monkeypatch.setenv("EVALHARNESS_RESULTS", str(root))
    root.mkdir()
    store.index_run(root, {"run_id": "an-eval", "kind": "eval", "status": "complete", "started_at": "0"}, [])
    seen: list[str] = []

    def watch(message: str) -> None:  # the index row while the run trains
        if " step 1/" in message:
            seen.extend(r["status"] for r in store.train_runs(root))

    res = train(cfg(base, pairs, None, output_dir=None, run_name="indexed", max_steps=2), log=watch)
    assert res.output_dir == root / "train" / "indexed" and seen == ["running"]
    with sqlite3.connect(root / "index.sqlite") as db:
        rows = dict(db.execute("SELECT run_id, kind FROM runs").fetchall())
    assert rows == {"an-eval": "eval", "train/indexed": "train"}
    [row] = store.train_runs(root)
    assert (row["status"], row["algorithm"], row["path"]) == ("finished", "dpo", str(res.output_dir.resolve()))
    got = store.train_metrics("train/indexed", root)
    assert [r["step"] for r in got] == [1, 2]
    assert [r["loss"] for r in got] == [m["loss"] for m in res.metrics]
    assert [r["reward_accuracy"] for r in got] == [m["rewards/accuracies"] for m in res.metrics]
    assert got[0]["kl"] is None  # DPO logs no KL; KTO's kl and PPO's objective/kl are read as kl


def test_a_failed_training_run_is_marked_failed_in_manifest_and_index(base, pairs, tmp_path, monkeypatch):
    from evalharness import store
    root = tmp_path / "results"
    monkeypatch.setenv("EVALHARNESS_RESULTS", str(root))

    def explode(message: str) -> None:
        if " step 1/" in message:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        train(cfg(base, pairs, None, output_dir=None, run_name="fails", max_steps=2), log=explode)
    man = json.loads((root / "train" / "fails" / "train_manifest.json").read_text())
    assert man["status"] == "failed" and man["error"] == "RuntimeError: boom"
    assert [(r["run_id"], r["status"]) for r in store.train_runs(root)] == [("train/fails", "failed")]
    # a folder with only the manifest and metrics (written before the index knew training runs) reads by path
    assert [r["step"] for r in store.train_metrics(root / "train" / "fails")] == [1]
