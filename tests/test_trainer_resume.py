"""A training run killed by SIGKILL resumes from its newest complete checkpoint to the weights and metrics of a run
that was never interrupted: single process, and two processes under torchrun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainkit import (KILL_POINTS, assert_lora_resume, assert_same_run, base,  # noqa: F401
                      kill_then_resume, killed_run, pairs, torchrun_killed_then_resumed, weights)

from evalharness.core.errors import EvalHarnessError
from evalharness.training.trainer import TrainConfig, train

OPTS = dict(algorithm="dpo", learning_rate=5e-3, max_steps=6, save_every=2, batch_size=4, warmup_ratio=0.2)


def options(base: Path, pairs: Path, out: Path, **kw) -> dict:
    return {**OPTS, "base": str(base), "data": str(pairs), "output_dir": str(out), **kw}


@pytest.fixture(scope="module")
def uninterrupted(base, pairs, tmp_path_factory):
    return train(TrainConfig(**options(base, pairs, tmp_path_factory.mktemp("full") / "run")))


@pytest.mark.parametrize("kill, resumes_from", KILL_POINTS)
def test_sigkill_at_a_chosen_point_resumes_to_the_same_run(base, pairs, tmp_path, uninterrupted, kill, resumes_from):
    out = tmp_path / "run"
    resumed = kill_then_resume(options(base, pairs, out), kill)
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
    opts = options(base, pairs, tmp_path / "run", batch_size=2)
    resumed = torchrun_killed_then_resumed(tmp_path, opts, "after_optimizer:4:0", uninterrupted, 1e-5)
    assert_same_run(resumed, uninterrupted, tol=1e-5)


def test_lora_kto_run_resumes_to_the_same_adapter(base, pairs, tmp_path):
    """The other resume paths: a LoRA adapter restored onto the base (not a full model folder), and KTO's unpaired
    examples with their precomputed KL-mismatch reference log-probs."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file
    opts = lambda out: options(base, pairs, out, algorithm="kto", lora=True, lora_r=4, lora_alpha=8,  # noqa: E731
                               learning_rate=2e-2)
    assert_lora_resume(opts, tmp_path, "after_optimizer:5", "checkpoint-4")
    a = load_file(str(tmp_path / "run" / "checkpoint-6" / "adapter_model.safetensors"))
    assert max(float((a[k] - load_file(str(tmp_path / "full" / "checkpoint-2" / "adapter_model.safetensors"))[k])
                     .abs().max()) for k in a) > 1e-4  # the adapter really moved after the resumed checkpoint


def test_only_the_newest_checkpoint_keeps_optimizer_state(tmp_path, base, pairs):
    """A run holds one optimizer state (the resume point's), not one per checkpoint; every checkpoint stays listed."""
    from evalharness.training.trainer import STATE_DIR, TrainConfig, _checkpoints, train
    res = train(TrainConfig(algorithm="dpo", base=str(base), data=str(pairs), max_steps=3, batch_size=2,
                            save_every=1, learning_rate=1e-3, output_dir=str(tmp_path / "run")))
    cks = _checkpoints(tmp_path / "run")
    assert [c.name for c in cks] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"] == [c.name for c in res.checkpoints]
    assert [(c / STATE_DIR / "optimizer.pt").is_file() for c in cks] == [False, False, True]
    assert [json.loads((c / STATE_DIR / "state.json").read_text())["optimizer"] for c in cks] == [False, False, True]
