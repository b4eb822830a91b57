"""A PPO run killed by SIGKILL resumes from its newest complete checkpoint (actor, critic, optimizer, scheduler, the
adaptive KL coefficient, RNG, prompt-stream position) to the weights and metrics of a run never interrupted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from test_trainer_resume import killed_run
from trainkit import SCRIPT, assert_rows_match, assert_same_weights, child_env, torchrun, weights

from evalharness.train.trainer import STATE_DIR, TrainConfig, TrainResult, train

STARTS = ["the movie", "a review", "the plot", "the cast", "this story", "the music", "write a review", "the acting"]
# Adaptive KL, so the coefficient a checkpoint holds changes every step; 2 PPO epochs x 2 minibatches, so the
# minibatch shuffles draw from their generator several times a step.
HP = {"reward": "sentiment", "response_length": 6, "temperature": 1.0, "num_ppo_epochs": 2, "num_mini_batches": 2,
      "adaptive_kl": True, "kl_coef": 0.1, "target_kl": 0.05, "horizon": 40.0}
OPTS = dict(algorithm="ppo", learning_rate=1e-2, max_steps=6, save_every=2, batch_size=2, warmup_ratio=0.2)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": STARTS[i % 8]}) + "\n" for i in range(16)))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from tiny import build_model
    return build_model(tmp_path_factory.mktemp("tinybase") / "m", seed=3)


def options(base: Path, prompts: Path, out: Path, **kw) -> dict:
    return {**OPTS, "base": str(base), "data": str(prompts), "output_dir": str(out), "hparams": dict(HP), **kw}


@pytest.fixture(scope="module")
def uninterrupted(base, prompts, tmp_path_factory):
    return train(TrainConfig(**options(base, prompts, tmp_path_factory.mktemp("full") / "run")))


def assert_same_run(got: TrainResult, want: TrainResult, tol: float = 1e-6) -> None:
    """Equal final actor weights and equal logged metrics, step for step, with no step missing or repeated."""
    out = got.output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_rows_match(rows, want.metrics, tol, "metrics.jsonl")
    assert_rows_match(got.metrics, want.metrics, tol, "TrainResult.metrics")
    assert_same_weights(out / "checkpoint-6", want.output_dir / "checkpoint-6", tol)
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "finished" and man["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert man["final_kl_coef"] == pytest.approx(json.loads(
        (want.output_dir / "train_manifest.json").read_text())["final_kl_coef"], abs=tol)
    assert [c.name for c in got.checkpoints] == man["checkpoints"]
    assert not list(out.glob(".checkpoint-*"))


def test_the_uninterrupted_run_depends_on_what_a_checkpoint_keeps(uninterrupted):
    """What a resume must restore really changes from step to step, so a resume that lost it would differ."""
    m = uninterrupted.metrics
    assert len({r["objective/kl_coef"] for r in m}) == 6  # the adaptive coefficient moves every step
    assert m[4]["loss/value_avg"] != pytest.approx(m[0]["loss/value_avg"], abs=1e-3)  # the critic learns
    cks = uninterrupted.checkpoints
    # only the newest checkpoint keeps the optimizer state and the critic; every one keeps scheduler, RNG, KL coef
    assert [(c / STATE_DIR / "optimizer.pt").is_file() for c in cks] == [False, False, True]
    assert [(c / STATE_DIR / "critic.safetensors").is_file() for c in cks] == [False, False, True]
    assert [json.loads((c / STATE_DIR / "state.json").read_text())["critic"] for c in cks] == [False, False, True]
    # the model folder is the actor alone: a causal LM with its head, no critic tensor
    w = weights(cks[-1])
    assert "lm_head.weight" in w and not any(k.startswith(("critic", "head", "policy")) for k in w)


@pytest.mark.parametrize("kill, resumes_from", [
    ("after_optimizer:4", "checkpoint-2"),  # step 4's update applied, its checkpoint never written
    ("in_checkpoint:4", "checkpoint-2"),  # checkpoint-4 half-written: actor on disk, training state not
    ("after_checkpoint:4", "checkpoint-4"),  # checkpoint-4 complete, the train manifest not yet updated
])
def test_sigkill_at_a_chosen_point_resumes_to_the_same_run(base, prompts, tmp_path, uninterrupted, kill, resumes_from):
    out = tmp_path / "run"
    opts = options(base, prompts, out)
    killed_run(opts, kill)
    assert json.loads((out / "train_manifest.json").read_text())["status"] == "running"
    if kill.startswith("in_checkpoint"):
        half = list(out.glob(".checkpoint-4.*"))
        assert half and (half[0] / "model.safetensors").is_file() and not (out / "checkpoint-4").exists()
    resumed = train(TrainConfig(**opts))
    assert not resumed.skipped
    man = json.loads((out / "train_manifest.json").read_text())
    step = int(resumes_from.split("-")[1])
    assert [(r["from"], r["step"], r["optimizer"]) for r in man["resumed"]] == [(resumes_from, step, True)]
    assert_same_run(resumed, uninterrupted)


def test_sigkill_from_outside_at_an_unplanned_moment(base, prompts, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, prompts, out)
    killed_run(opts, until_lines=3)  # somewhere in step 4's rollouts or update
    assert (out / "checkpoint-2").is_dir()
    resumed = train(TrainConfig(**opts))
    assert [r["from"] for r in json.loads((out / "train_manifest.json").read_text())["resumed"]] == ["checkpoint-2"]
    assert_same_run(resumed, uninterrupted)


def test_without_optimizer_state_it_resumes_actor_and_critic(base, prompts, tmp_path, uninterrupted):
    """save_optimizer: false keeps the actor, the critic, scheduler, KL coefficient, RNG and stream position; Adam's
    moments restart from zero, so the steps after the resume differ. With it, the newest checkpoint's optimizer.pt
    is two fp32 moments per trainable weight of actor and critic (plus pickle overhead per tensor)."""
    out = tmp_path / "run"
    opts = options(base, prompts, out, save_optimizer=False)
    killed_run(opts, "after_checkpoint:4")
    st = out / "checkpoint-4" / STATE_DIR
    assert not (st / "optimizer.pt").exists() and (st / "critic.safetensors").is_file()
    res = train(TrainConfig(**opts))
    man = json.loads((out / "train_manifest.json").read_text())
    assert [(r["from"], r["optimizer"]) for r in man["resumed"]] == [("checkpoint-4", False)]
    assert_rows_match(res.metrics[:4], uninterrupted.metrics[:4], 1e-6)
    # step 5 samples with the restored actor and KL coefficient: its rollouts and the critic's values are the same,
    # then fresh Adam moments update differently
    assert res.metrics[4]["objective/scores"] == pytest.approx(uninterrupted.metrics[4]["objective/scores"], abs=1e-6)
    assert res.metrics[4]["objective/kl_coef"] == pytest.approx(uninterrupted.metrics[4]["objective/kl_coef"])
    assert abs(res.metrics[5]["loss"] - uninterrupted.metrics[5]["loss"]) > 1e-6
    full = uninterrupted.checkpoints[-1] / STATE_DIR
    from safetensors.torch import load_file
    tensors = [*weights(uninterrupted.checkpoints[-1]).values(), *load_file(str(full / "critic.safetensors")).values()]
    moments = 2 * sum(t.numel() * t.element_size() for t in tensors)
    opt_bytes = (full / "optimizer.pt").stat().st_size
    assert moments < opt_bytes < moments + 1024 * len(tensors)


def test_lora_run_resumes_actor_and_critic_adapters(base, prompts, tmp_path):
    """LoRA: the actor's adapter is the checkpoint folder; the critic's adapter and head are in training_state."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file
    opts = lambda out: options(base, prompts, out, lora=True, lora_r=4, lora_alpha=8, learning_rate=2e-2)  # noqa: E731
    want = train(TrainConfig(**opts(tmp_path / "full")))
    critic = load_file(str(tmp_path / "full" / "checkpoint-6" / STATE_DIR / "critic.safetensors"))
    assert critic and all("lora_" in k or k.startswith("head.") for k in critic)
    killed_run(opts(tmp_path / "run"), "after_optimizer:5")
    got = train(TrainConfig(**opts(tmp_path / "run")))
    man = json.loads((tmp_path / "run" / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-4"]
    assert_rows_match(got.metrics, want.metrics, 1e-6)
    a = load_file(str(tmp_path / "run" / "checkpoint-6" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "full" / "checkpoint-6" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_two_processes_killed_resume_to_the_same_run(base, prompts, tmp_path, uninterrupted):
    """torchrun, 2 processes (gloo): rank 0 SIGKILLs itself between step 4's update and its checkpoint, torchrun
    ends rank 1, and the same command resumes both ranks from checkpoint-2. Each rank samples half of every
    rollout batch (batch 1 x 2 minibatches x 2 processes = the one-process run's 4 episodes)."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"

    def launch(kill: str | None) -> subprocess.CompletedProcess:
        return subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", str(script),
                               json.dumps(options(base, prompts, out, batch_size=1)), str(out)],
                              env=child_env(kill), capture_output=True, text=True, timeout=400)

    killed = launch("after_optimizer:4:0")
    assert killed.returncode != 0 and "exitcode: -9" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = launch(None)
    assert again.returncode == 0, again.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"run.rank{rank}").read_text())
        assert_rows_match(got, uninterrupted.metrics, 1e-4, f"rank {rank}")
    man = json.loads((out / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-2"]
    assert_same_run(TrainResult(out, [out / c for c in man["checkpoints"]], got), uninterrupted, tol=1e-4)
