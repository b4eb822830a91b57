"""A training run killed by SIGKILL resumes from its newest complete checkpoint to the weights and metrics of a run
that was never interrupted: single process, and two processes under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from trainkit import (SCRIPT, assert_rows_match, assert_same_weights, base, child_env, pairs,  # noqa: F401
                      torchrun, weights)

from evalharness.errors import EvalHarnessError
from evalharness.train.trainer import TrainConfig, TrainResult, train

OPTS = dict(algorithm="dpo", learning_rate=5e-3, max_steps=6, save_every=2, batch_size=4, warmup_ratio=0.2)


def options(base: Path, pairs: Path, out: Path, **kw) -> dict:
    return {**OPTS, "base": str(base), "data": str(pairs), "output_dir": str(out), **kw}


@pytest.fixture(scope="module")
def uninterrupted(base, pairs, tmp_path_factory):
    return train(TrainConfig(**options(base, pairs, tmp_path_factory.mktemp("full") / "run")))


def killed_run(opts: dict, kill: str | None = None, *, until_lines: int | None = None) -> subprocess.CompletedProcess:
    """Run the trainer in a child process and SIGKILL it: at a named point (the trainer's test hook), or from
    outside once metrics.jsonl has ``until_lines`` lines."""
    env = child_env(kill)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(opts)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if until_lines is not None:
        metrics = Path(opts["output_dir"]) / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= until_lines:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_same_run(got: TrainResult, want: TrainResult, tol: float = 1e-6) -> None:
    """Equal final weights and equal logged metrics, step for step, with no step missing or repeated."""
    out = got.output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_rows_match(rows, want.metrics, tol, "metrics.jsonl")
    assert_rows_match(got.metrics, want.metrics, tol, "TrainResult.metrics")
    assert_same_weights(out / "checkpoint-6", want.output_dir / "checkpoint-6", tol)
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "finished" and man["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [c.name for c in got.checkpoints] == man["checkpoints"]
    assert not list(out.glob(".checkpoint-*"))


@pytest.mark.parametrize("kill, resumes_from", [
    ("after_optimizer:4", "checkpoint-2"),  # step 4's update applied, its checkpoint never written
    ("in_checkpoint:4", "checkpoint-2"),  # checkpoint-4 half-written: weights on disk, training state not
    ("after_checkpoint:4", "checkpoint-4"),  # checkpoint-4 complete, the train manifest not yet updated
])
def test_sigkill_at_a_chosen_point_resumes_to_the_same_run(base, pairs, tmp_path, uninterrupted, kill, resumes_from):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, kill)
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "running"  # SIGKILL leaves no chance to record anything
    if kill.startswith("in_checkpoint"):
        half = list(out.glob(".checkpoint-4.*"))
        assert half and (half[0] / "model.safetensors").is_file()  # the half-written folder is really there
        assert not (out / "checkpoint-4").exists()
    resumed = train(TrainConfig(**opts))
    assert not resumed.skipped
    man = json.loads((out / "train_manifest.json").read_text())
    assert [(r["from"], r["optimizer"]) for r in man["resumed"]] == [(resumes_from, True)]
    assert_same_run(resumed, uninterrupted)


def test_sigkill_from_outside_at_an_unplanned_moment(base, pairs, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, until_lines=3)
    assert (out / "checkpoint-2").is_dir()
    assert_same_run(train(TrainConfig(**opts)), uninterrupted)


def test_twice_killed_run_resumes_twice(base, pairs, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, "before_checkpoint:2")  # no complete checkpoint: the second launch starts from step 0
    assert not list(out.glob("checkpoint-*"))
    killed_run(opts, "after_optimizer:5")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    res = train(TrainConfig(**opts))
    man = json.loads((out / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-4"]
    assert_same_run(res, uninterrupted)


def test_without_optimizer_state_it_resumes_weights_and_costs_a_third(base, pairs, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, pairs, out, save_optimizer=False)
    killed_run(opts, "after_checkpoint:4")
    ck = out / "checkpoint-4"
    assert not (ck / "training_state" / "optimizer.pt").exists()
    res = train(TrainConfig(**opts))
    man = json.loads((out / "train_manifest.json").read_text())
    assert [(r["from"], r["optimizer"]) for r in man["resumed"]] == [("checkpoint-4", False)]
    assert [m["step"] for m in res.metrics] == list(range(1, 7))
    # steps 1-4 are the uninterrupted run's; step 5 starts with fresh Adam moments, so it differs
    assert res.metrics[3]["loss"] == pytest.approx(uninterrupted.metrics[3]["loss"], abs=1e-6)
    assert abs(res.metrics[5]["loss"] - uninterrupted.metrics[5]["loss"]) > 1e-6
    # the disk cost of save_optimizer: AdamW keeps two fp32 moments per trainable weight, plus a few hundred
    # bytes of pickle per tensor (which dominate only on a model this tiny)
    full = uninterrupted.checkpoints[-1]  # only the newest checkpoint keeps the optimizer state
    opt_bytes = (full / "training_state" / "optimizer.pt").stat().st_size
    w = weights(full)
    moments = 2 * sum(t.numel() * t.element_size() for t in w.values())
    assert moments < opt_bytes < moments + 1024 * len(w)


def test_a_changed_launch_is_refused_not_mixed(base, pairs, tmp_path):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, "after_checkpoint:2")
    state = json.loads((out / "checkpoint-2" / "training_state" / "state.json").read_text())
    assert state["step"] == 2 and state["samples_seen"] == 8 and state["global_batch"] == 4
    state["global_batch"] = 8  # as if written by two processes
    (out / "checkpoint-2" / "training_state" / "state.json").write_text(json.dumps(state))
    with pytest.raises(EvalHarnessError, match="same number of processes"):
        train(TrainConfig(**opts))
    assert (out / "checkpoint-2").is_dir()  # nothing deleted


def test_two_processes_killed_resume_to_the_same_run(base, pairs, tmp_path, uninterrupted):
    """torchrun, 2 processes (gloo): rank 0 SIGKILLs itself between step 4's update and its checkpoint; torchrun
    ends rank 1; the same command again resumes both ranks from checkpoint-2. Compared with the uninterrupted
    one-process run of the same global batch (2 x 2 = 4): DDP's all-reduce changes the sums' order, so to 1e-5."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"

    def launch(kill: str | None) -> subprocess.CompletedProcess:
        return subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", str(script),
                               json.dumps(options(base, pairs, out, batch_size=2)), str(out)],
                              env=child_env(kill), capture_output=True, text=True, timeout=300)

    killed = launch("after_optimizer:4:0")
    assert killed.returncode != 0 and "exitcode: -9" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = launch(None)
    assert again.returncode == 0, again.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"run.rank{rank}").read_text())
        assert_rows_match(got, uninterrupted.metrics, 1e-5, f"rank {rank}")
    man = json.loads((out / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-2"]
    assert_same_run(TrainResult(out, [out / c for c in man["checkpoints"]], got), uninterrupted, tol=1e-5)


def test_lora_kto_run_resumes_to_the_same_adapter(base, pairs, tmp_path):
    """The other resume paths: a LoRA adapter restored onto the base (not a full model folder), and KTO's unpaired
    examples with their precomputed KL-mismatch reference log-probs."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file
    opts = lambda out: options(base, pairs, out, algorithm="kto", lora=True, lora_r=4, lora_alpha=8,  # noqa: E731
                               learning_rate=2e-2)
    want = train(TrainConfig(**opts(tmp_path / "full")))
    killed_run(opts(tmp_path / "run"), "after_optimizer:5")
    got = train(TrainConfig(**opts(tmp_path / "run")))
    man = json.loads((tmp_path / "run" / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-4"]
    assert_rows_match(got.metrics, want.metrics, 1e-6)
    a = load_file(str(tmp_path / "run" / "checkpoint-6" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "full" / "checkpoint-6" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert max(float((a[k] - load_file(str(tmp_path / "full" / "checkpoint-2" / "adapter_model.safetensors"))[k])
                     .abs().max()) for k in a) > 1e-4  # the adapter really moved after the resumed checkpoint


def test_only_the_newest_checkpoint_keeps_optimizer_state(tmp_path, base, pairs):
    """A run holds one optimizer state (the resume point's), not one per checkpoint; every checkpoint stays listed."""
    from evalharness.train.trainer import STATE_DIR, TrainConfig, _checkpoints, train
    res = train(TrainConfig(algorithm="dpo", base=str(base), data=str(pairs), max_steps=3, batch_size=2,
                            save_every=1, learning_rate=1e-3, output_dir=str(tmp_path / "run")))
    cks = _checkpoints(tmp_path / "run")
    assert [c.name for c in cks] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"] == [c.name for c in res.checkpoints]
    assert [(c / STATE_DIR / "optimizer.pt").is_file() for c in cks] == [False, False, True]
    assert [json.loads((c / STATE_DIR / "state.json").read_text())["optimizer"] for c in cks] == [False, False, True]
