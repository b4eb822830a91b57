"""A PPO run killed by SIGKILL resumes from its newest complete checkpoint (actor, critic, optimizer, scheduler, the
adaptive KL coefficient, RNG, prompt-stream position) to the weights and metrics of a run never interrupted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_ppo import prompts  # noqa: F401 (the 16 movie-review prompts)
from trainkit import (KILL_POINTS, assert_lora_resume, assert_rows_match, assert_same_run, base,  # noqa: F401
                      kill_then_resume, killed_run, torchrun_killed_then_resumed, weights)

from evalharness.training.trainer import STATE_DIR, TrainConfig, TrainResult, train

# Adaptive KL, so the coefficient a checkpoint holds changes every step; 2 PPO epochs x 2 minibatches, so the
# minibatch shuffles draw from their generator several times a step.
HP = {"reward": "sentiment", "response_length": 6, "temperature": 1.0, "num_ppo_epochs": 2, "num_mini_batches": 2,
      "adaptive_kl": True, "kl_coef": 0.1, "target_kl": 0.05, "horizon": 40.0}
OPTS = dict(algorithm="ppo", learning_rate=1e-2, max_steps=6, save_every=2, batch_size=2, warmup_ratio=0.2)


def options(base: Path, prompts: Path, out: Path, **kw) -> dict:
    return {**OPTS, "base": str(base), "data": str(prompts), "output_dir": str(out), "hparams": dict(HP), **kw}


@pytest.fixture(scope="module")
def uninterrupted(base, prompts, tmp_path_factory):
    return train(TrainConfig(**options(base, prompts, tmp_path_factory.mktemp("full") / "run")))


def assert_same_ppo_run(got: TrainResult, want: TrainResult, tol: float = 1e-6) -> None:
    """The trainer's comparison (final actor weights, every metric of every step), and the final KL coefficient."""
    assert_same_run(got, want, tol)
    final = [json.loads((r.output_dir / "train_manifest.json").read_text())["final_kl_coef"] for r in (got, want)]
    assert final[0] == pytest.approx(final[1], abs=tol)


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


@pytest.mark.parametrize("kill, resumes_from", KILL_POINTS)
def test_sigkill_at_a_chosen_point_resumes_to_the_same_run(base, prompts, tmp_path, uninterrupted, kill, resumes_from):
    out = tmp_path / "run"
    resumed = kill_then_resume(options(base, prompts, out), kill)
    man = json.loads((out / "train_manifest.json").read_text())
    step = int(resumes_from.split("-")[1])
    assert [(r["from"], r["step"], r["optimizer"]) for r in man["resumed"]] == [(resumes_from, step, True)]
    assert_same_ppo_run(resumed, uninterrupted)


def test_sigkill_from_outside_at_an_unplanned_moment(base, prompts, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, prompts, out)
    killed_run(opts, until_lines=3)  # somewhere in step 4's rollouts or update
    assert (out / "checkpoint-2").is_dir()
    resumed = train(TrainConfig(**opts))
    assert [r["from"] for r in json.loads((out / "train_manifest.json").read_text())["resumed"]] == ["checkpoint-2"]
    assert_same_ppo_run(resumed, uninterrupted)


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
    assert_lora_resume(opts, tmp_path, "after_optimizer:5", "checkpoint-4")
    critic = load_file(str(tmp_path / "run" / "checkpoint-6" / STATE_DIR / "critic.safetensors"))
    assert critic and all("lora_" in k or k.startswith("head.") for k in critic)  # the critic's adapter and head
    assert "head.weight" in critic and float(critic["head.weight"].abs().max()) > 0  # learnt from its zero init


def test_two_processes_killed_resume_to_the_same_run(base, prompts, tmp_path, uninterrupted):
    """torchrun, 2 processes (gloo): rank 0 SIGKILLs itself between step 4's update and its checkpoint, torchrun
    ends rank 1, and the same command resumes both ranks from checkpoint-2. Each rank samples half of every
    rollout batch (batch 1 x 2 minibatches x 2 processes = the one-process run's 4 episodes)."""
    opts = options(base, prompts, tmp_path / "run", batch_size=1)
    resumed = torchrun_killed_then_resumed(tmp_path, opts, "after_optimizer:4:0", uninterrupted, 1e-4)
    assert_same_ppo_run(resumed, uninterrupted, tol=1e-4)
