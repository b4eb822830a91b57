"""PPO: the four functions against hand computations, and the loop on tiny random Llamas with the VADER judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from evalharness.core.errors import EvalHarnessError
from evalharness.training.ppo import gae, kl_penalty, policy_loss, update_kl_coef, value_loss, whiten
from evalharness.training.trainer import TrainConfig, train

T = torch.tensor


def close(got: torch.Tensor, want: list) -> None:
    torch.testing.assert_close(got, T(want, dtype=got.dtype), atol=1e-6, rtol=0)


def test_gae_by_hand_right_and_left_aligned():
    # gamma 0.9, lam 0.8, so gamma * lam = 0.72. Row 0, three tokens:
    #   t=2: delta = 1 + 0 - 0.4 = 0.6 (V = 0 after the last token); A2 = 0.6
    #   t=1: delta = 0 + 0.9 * 0.4 - 0.2 = 0.16; A1 = 0.16 + 0.72 * 0.6 = 0.592
    #   t=0: delta = 0 + 0.9 * 0.2 - 0.5 = -0.32; A0 = -0.32 + 0.72 * 0.592 = 0.10624
    # Row 1, a padded position first (its 9 and 7 must not leak): t=2: -1 - 0.1 = -1.1; t=1: 0.5 + 0.09 - 0.3
    #   + 0.72 * -1.1 = -0.502. Row 2 is row 1 left-aligned: the padding after the last token has V = 7, ignored.
    rewards = T([[0.0, 0.0, 1.0], [9.0, 0.5, -1.0], [0.5, -1.0, 9.0]])
    values = T([[0.5, 0.2, 0.4], [7.0, 0.3, 0.1], [0.3, 0.1, 7.0]])
    mask = T([[1, 1, 1], [0, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    close(adv, [[0.10624, 0.592, 0.6], [0.0, -0.502, -1.1], [-0.502, -1.1, 0.0]])
    close(ret, [[0.60624, 0.792, 1.0], [0.0, -0.202, -1.0], [-0.202, -1.0, 0.0]])
    # gamma = lam = 1: every advantage is the sum of the rewards to go minus V_t
    adv1, _ = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=1.0)
    close(adv1, [[0.5, 0.8, 0.6]])


def test_whiten_by_hand():
    x = T([[1.0, 2.0, 3.0], [4.0, 100.0, -50.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    # masked entries 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    sd = math.sqrt(5 / 3 + 1e-8)
    w = whiten(x, mask)
    close(w, [[-1.5 / sd, -0.5 / sd, 0.5 / sd], [1.5 / sd, 0.0, 0.0]])
    kept = whiten(x, mask, shift_mean=False)
    assert kept[0].tolist() == pytest.approx([2.5 - 1.5 / sd, 2.5 - 0.5 / sd, 2.5 + 0.5 / sd], abs=1e-6)
    with pytest.raises(EvalHarnessError, match="at least 2"):
        whiten(x, T([[1, 0, 0], [0, 0, 0]]))


def test_policy_loss_by_hand():
    # ratios 1.5, 0.5, 1.5, 0.5 against advantages +1, +1, -2, -2, clip range 0.2:
    #   max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, max(3, 2.4) = 3, max(1.0, 1.6) = 1.6 (clipped)
    # the masked entry (log-ratio 100, would overflow) must not matter
    old = T([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    new = old + T([[math.log(1.5), math.log(0.5), 100.0], [math.log(1.5), math.log(0.5), 0.0]])
    adv = T([[1.0, 1.0, 5.0], [-2.0, -2.0, 0.0]])
    mask = T([[1, 1, 0], [1, 1, 0]])
    loss, clipfrac = policy_loss(new, old, adv, mask, cliprange=0.2)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 3.0 + 1.6) / 4, abs=1e-6)
    assert float(clipfrac) == pytest.approx(0.5)
    # at pi == pi_old the loss is -mean(A) and its gradient is -A / n per token (the policy gradient)
    lp = old.clone().requires_grad_(True)
    loss0, cf0 = policy_loss(lp, old, adv, mask, cliprange=0.2)
    loss0.backward()
    assert float(loss0.detach()) == pytest.approx(-(1 + 1 - 2 - 2) / 4) and float(cf0) == 0.0
    close(lp.grad, [[-0.25, -0.25, 0.0], [0.5, 0.5, 0.0]])


def test_value_loss_by_hand():
    # eps_v 0.2. Token 0: V 1.0 clipped to 0.7; (1 - 0)^2 = 1 > 0.49 -> 1. Token 1: unclipped, (0 - 1)^2 = 1.
    # Token 2: V 0.0 clipped to 0.3 vs R 0.1: 0.01 < 0.04 -> 0.04 (the clipped term). Loss 0.5 * 2.04 / 3 = 0.34.
    v, v_old, ret = T([[1.0, 0.0, 0.0, 5.0]]), T([[0.5, 0.0, 0.5, 0.0]]), T([[0.0, 1.0, 0.1, 0.0]])
    mask = T([[1, 1, 1, 0]])
    assert float(value_loss(v, v_old, ret, mask, cliprange_value=0.2)) == pytest.approx(0.34, abs=1e-6)
    assert float(value_loss(v, v_old, ret, mask, cliprange_value=10.0)) == pytest.approx(0.5 * 2.01 / 3, abs=1e-6)


def test_kl_estimators_and_adaptive_controller_by_hand():
    lp, ref, m = T([[-1.0, -3.0]]), T([[-2.0, 0.0]]), T([[1, 0]])
    close(kl_penalty(lp, ref, m, "k1"), [[1.0, 0.0]])
    close(kl_penalty(lp, ref, m, "k3"), [[math.exp(-1) - 1 + 1, 0.0]])
    # Ziegler et al. 2019: the proportional error is clipped to +-0.2 and scaled by n / horizon
    assert update_kl_coef(0.1, 12.0, target=6.0, horizon=1000, n_episodes=100) == pytest.approx(0.102)
    assert update_kl_coef(0.1, 3.0, target=6.0, horizon=1000, n_episodes=100) == pytest.approx(0.098)
    assert update_kl_coef(0.1, 6.6, target=6.0, horizon=1000, n_episodes=100) == pytest.approx(0.1 * 1.01)
    assert update_kl_coef(0.1, 6.0, target=6.0, horizon=1000, n_episodes=100) == pytest.approx(0.1)


# -- the loop on a tiny model ------------------------------------------------------------------------------------

STARTS = ["the movie", "a review", "the plot", "the cast", "this story", "the music", "write a review", "the acting"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": STARTS[i % 8]}) + "\n" for i in range(16)))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from tiny import build_model
    return build_model(tmp_path_factory.mktemp("tinybase") / "m", seed=3)


def cfg(base: Path, data: Path, out: Path, hp: dict | None = None, **kw) -> TrainConfig:
    opts = dict(algorithm="ppo", base=str(base), data=str(data), learning_rate=3e-3, max_steps=2, batch_size=8,
                warmup_ratio=0.0, schedule="constant", output_dir=str(out),
                hparams={"reward": "sentiment", "response_length": 8, "temperature": 1.0, **(hp or {})})
    opts.update(kw)
    return TrainConfig(**opts)


def test_ppo_raises_the_sentiment_reward_of_a_tiny_model(base, prompts, tmp_path):
    """VADER on a random 31-word model: PPO learns to emit 'great', 'good', 'loved', 'fun' in ten steps."""
    res = train(cfg(base, prompts, tmp_path / "r", max_steps=10, batch_size=16, save_every=5))
    scores = [m["objective/scores"] for m in res.metrics]
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.15, scores
    first = res.metrics[0]
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before the first update
    assert [c.name for c in res.checkpoints] == ["checkpoint-5", "checkpoint-10"]
    man = json.loads((res.checkpoints[-1] / "evalharness_manifest.json").read_text())
    assert man["algorithm"] == "ppo" and man["step"] == 10 and man["hparams"]["kl_coef"] == 0.05
    assert man["hparams"]["num_ppo_epochs"] == 4 and man["hparams"]["cliprange_value"] == 0.2  # defaults written out
    assert man["reward"]["id"] == "vader" and man["reward"]["version"].startswith("vadersentiment==")
    assert man["data"]["kind"] == "prompts" and man["data"]["n_examples"] == 16
    for key in ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg",
                "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg"):
        assert key in man["metrics"] and math.isfinite(man["metrics"][key])
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10 and json.loads(lines[-1])["episode"] == 160
    # the checkpoint evaluates like any model: it loads, and its answers are more positive than the base's
    from evalharness.backends.hf import HFBackend
    from evalharness.judges import get_judge
    from evalharness.core.records import GenRequest, SamplingParams
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=4, seed=123)
    judge = get_judge("sentiment")
    mean = []
    for model in (str(base), str(res.checkpoints[-1])):
        b = HFBackend(model)
        gens = b.generate([GenRequest(f"h{i}", prompt=s, params=params) for i, s in enumerate(STARTS)])
        mean.append(sum(v.value for v in judge.judge(gens)) / len(gens))
    assert mean[1] > mean[0] + 0.1, mean


def test_first_update_starts_on_policy(base, prompts, tmp_path):
    """One epoch, one minibatch: the update's log-probs equal the rollout's, so nothing is clipped (ratio 1)."""
    res = train(cfg(base, prompts, tmp_path / "r", max_steps=1, hp={"num_ppo_epochs": 1}))
    m = res.metrics[0]
    assert m["policy/approxkl_avg"] == pytest.approx(0.0, abs=1e-10) and m["policy/clipfrac_avg"] == 0.0
    assert m["val/ratio"] == pytest.approx(1.0, abs=1e-6) and m["val/clipfrac_avg"] == 0.0
    # a zeroed value head: V = 0, so the value loss is 0.5 * mean(R^2) of the returns, which are > 0 here
    assert m["loss/value_avg"] > 0 and m["objective/kl_coef"] == 0.05


def test_huge_kl_coef_keeps_kl_near_zero(base, prompts, tmp_path):
    """64 episodes a step, one PPO epoch (less overfitting to a few samples), k3 (a non-negative KL estimate)."""
    kw = dict(max_steps=6, batch_size=64, learning_rate=1e-2)
    free = train(cfg(base, prompts, tmp_path / "free", hp={"kl_coef": 0.0, "kl_estimator": "k3", "num_ppo_epochs": 1}, **kw))
    held = train(cfg(base, prompts, tmp_path / "held", hp={"kl_coef": 100.0, "kl_estimator": "k3", "num_ppo_epochs": 1}, **kw))
    kl_free = [m["objective/kl"] for m in free.metrics]
    kl_held = [m["objective/kl"] for m in held.metrics]
    assert kl_free[0] == kl_held[0] == pytest.approx(0.0, abs=1e-5)
    assert kl_free[-1] > 1.0, kl_free  # unpenalised, the policy leaves the reference for the reward
    assert kl_held[-1] < 0.3 * kl_free[-1] and max(kl_held) < 0.5, (kl_held, kl_free)


def test_adaptive_controller_moves_toward_the_target(base, prompts, tmp_path):
    # target far below any KL the policy reaches: the coefficient must rise once KL > target; at step 1 KL = 0
    # (policy == reference), below the target, so it first falls. Each step follows Ziegler's rule exactly.
    hp = {"adaptive_kl": True, "kl_coef": 0.1, "target_kl": 0.05, "horizon": 40.0}
    res = train(cfg(base, prompts, tmp_path / "r", max_steps=4, learning_rate=1e-2, hp=hp))
    coefs = [m["objective/kl_coef"] for m in res.metrics]
    for a, b in zip(res.metrics, res.metrics[1:]):
        assert b["objective/kl_coef"] == pytest.approx(
            update_kl_coef(a["objective/kl_coef"], a["objective/kl"], target=0.05, horizon=40.0, n_episodes=8))
    assert coefs[1] == pytest.approx(0.1 * (1 - 0.2 * 8 / 40))  # KL 0 < target: clipped error -0.2
    assert any(m["objective/kl"] > 0.06 for m in res.metrics[1:-1]) and coefs[-1] > coefs[1], coefs


def test_missing_eos_penalty_lowers_exactly_the_truncated_responses(base, prompts, tmp_path):
    # the same seed samples the same responses; step 1 is scored before any update
    plain = train(cfg(base, prompts, tmp_path / "a", max_steps=1, hp={"response_length": 3}))
    fined = train(cfg(base, prompts, tmp_path / "b", max_steps=1, hp={"response_length": 3, "missing_eos_penalty": 1.0}))
    a, b = plain.metrics[0], fined.metrics[0]
    assert a["val/num_eos_tokens"] == b["val/num_eos_tokens"] < 8  # most of 3-token random responses lack EOS
    assert b["objective/scores"] == pytest.approx(a["objective/scores"] - (8 - a["val/num_eos_tokens"]) / 8)


def test_finished_run_is_skipped_and_a_changed_config_refused(base, prompts, tmp_path):
    first = train(cfg(base, prompts, tmp_path / "r", max_steps=1))
    again = train(cfg(base, prompts, tmp_path / "r", max_steps=1))
    assert again.skipped and again.checkpoints == first.checkpoints
    assert [m["objective/scores"] for m in again.metrics] == [m["objective/scores"] for m in first.metrics]
    with pytest.raises(EvalHarnessError, match="different configuration"):
        train(cfg(base, prompts, tmp_path / "r", max_steps=1, hp={"kl_coef": 0.2}))


def test_seeded_runs_are_identical_and_grad_accumulation_matches(base, prompts, tmp_path):
    a = train(cfg(base, prompts, tmp_path / "a", max_steps=2))
    b = train(cfg(base, prompts, tmp_path / "b", max_steps=2))
    acc = train(cfg(base, prompts, tmp_path / "acc", max_steps=2, batch_size=4, grad_accum=2))
    keys = ("objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg")
    assert [[m[k] for k in keys] for m in a.metrics] == [[m[k] for k in keys] for m in b.metrics]
    for m1, m2 in zip(a.metrics, acc.metrics):
        assert [m1[k] for k in keys] == pytest.approx([m2[k] for k in keys], abs=1e-5)
        assert m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)


def test_lora_reference_is_the_base_with_the_adapter_disabled(base, prompts, tmp_path):
    pytest.importorskip("peft")
    from evalharness.core.models import resolve
    res = train(cfg(base, prompts, tmp_path / "lora", max_steps=3, lora=True, lora_r=4, lora_alpha=8,
                    learning_rate=2e-2))
    assert res.metrics[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # adapter B = 0 at init: policy == base
    assert res.metrics[-1]["objective/kl"] != pytest.approx(0.0, abs=1e-4)
    ck = res.checkpoints[-1]
    assert (ck / "adapter_config.json").is_file() and not (ck / "model.safetensors").exists()
    assert resolve(str(ck)).kind == "lora"


def test_bf16_mixed_precision_trains(base, prompts, tmp_path):
    res = train(cfg(base, prompts, tmp_path / "bf", max_steps=2, dtype="bfloat16"))
    from safetensors.torch import load_file
    assert all(t.dtype == torch.float32 for t in load_file(str(res.checkpoints[0] / "model.safetensors")).values())
    assert all(math.isfinite(m["loss"]) for m in res.metrics)


def test_bf16_rollouts_sample_from_a_synced_bf16_copy_and_the_ratio_starts_at_one(base, prompts, tmp_path):
    """bf16 runs sample from a bf16 copy of the actor (no per-call autocast casts); it follows every update, and the
    first update is still on-policy because the old log-probs come from the actor's own forward."""
    from evalharness.core.models import load_fresh, resolve
    from evalharness.training.ppo import _sampler, _sync_sampler
    policy = load_fresh(resolve(str(base)), dtype="float32")[0]
    assert _sampler(policy, cfg(base, prompts, tmp_path / "x")) is None  # fp32: samples from the actor itself
    assert _sampler(policy, cfg(base, prompts, tmp_path / "x", dtype="bfloat16", lora=True)) is None
    sampler = _sampler(policy, cfg(base, prompts, tmp_path / "x", dtype="bfloat16"))
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in sampler.parameters())
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)
    _sync_sampler(sampler, policy)
    for (n, a), b in zip(sampler.named_parameters(), policy.parameters()):
        assert torch.equal(a, b.to(torch.bfloat16)), n
    res = train(cfg(base, prompts, tmp_path / "r", max_steps=2, dtype="bfloat16", hp={"num_ppo_epochs": 1}))
    first = res.metrics[0]
    assert first["val/ratio"] == pytest.approx(1.0, abs=1e-6) and first["policy/approxkl_avg"] < 1e-10
    assert res.metrics[1]["objective/kl"] != 0.0  # the second batch was sampled after the update


def test_bad_hyperparameters_fail_before_work(base, prompts, tmp_path):
    for hp, word in (({"kl_estimator": "k2"}, "kl_estimator"), ({"num_ppo_epochs": 0}, "num_ppo_epochs"),
                     ({"reward": "kl"}, "reward"), ({"lam": 1.5}, "lam"), ({"beta": 0.1}, "beta")):
        with pytest.raises(EvalHarnessError, match=word):
            train(cfg(base, prompts, tmp_path / "x", hp=hp))
    assert not (tmp_path / "x").exists()


def test_two_processes_data_parallel_match_one_process(base, prompts, tmp_path):
    """torchrun with 2 processes (gloo on CPU): each samples half of every rollout batch, the rollouts are shared,
    and each minibatch's loss is normalised by its global token count, so the run equals one process's."""
    import os
    import shutil
    import subprocess
    import sys
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    keys = ["objective/scores", "objective/kl", "loss/policy_avg", "loss/value_avg", "policy/clipfrac_avg", "grad_norm"]
    script = tmp_path / "run.py"
    script.write_text(
        "import json, os, sys\nfrom evalharness.training.trainer import TrainConfig, train\n"
        f"r = train(TrainConfig(algorithm='ppo', base={str(base)!r}, data={str(prompts)!r}, learning_rate=3e-3,"
        " max_steps=2, batch_size=int(sys.argv[1]), warmup_ratio=0.0, schedule='constant', output_dir=sys.argv[2],"
        " hparams={'reward': 'sentiment', 'response_length': 8, 'temperature': 1.0}))\n"
        f"open(sys.argv[2] + '.rank' + os.environ['RANK'], 'w').write(json.dumps([[m[k] for k in {keys!r}] for m in r.metrics]))\n")
    two = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script), "4", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})  # this checkout
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    one = train(cfg(base, prompts, tmp_path / "one", batch_size=8))
    got = [json.loads((tmp_path / f"two.rank{r}").read_text()) for r in (0, 1)]
    assert got[0] == got[1]  # both ranks log the same metrics
    want = [[m[k] for k in keys] for m in one.metrics]
    for g, w in zip(got[0], want):
        assert g == pytest.approx(w, rel=1e-4, abs=1e-5)
    assert (tmp_path / "two" / "checkpoint-2" / "model.safetensors").is_file()


def test_cli_trains_ppo_and_a_sweep_mixes_it_with_offline_algorithms(base, prompts, tmp_path):
    import subprocess
    import sys
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "evalharness.cli", "train", "--algorithm", "ppo", "--base", str(base), "--data",
           str(prompts), "--hp", "reward=sentiment", "--hp", "kl_coef=0.1", "--hp", "response_length=6",
           "--max-steps", "1", "--batch-size", "4", "--output-dir", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ck = Path(p.stdout.strip().splitlines()[-1])
    man = json.loads((ck / "evalharness_manifest.json").read_text())
    assert ck == out / "checkpoint-1" and man["hparams"]["kl_coef"] == 0.1 and man["reward"]["spec"] == "sentiment"
    p = subprocess.run(cmd[:-2] + ["--output-dir", str(tmp_path / "bad"), "--hp", "kl_estimator=k9"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "kl_estimator" in p.stderr and not (tmp_path / "bad").exists()

    from evalharness.workflows.sweep import load_train_spec, run_sweep
    (tmp_path / "held.jsonl").write_text("".join(json.dumps({"id": f"h{i}", "prompt": s}) + "\n"
                                                 for i, s in enumerate(STARTS[:4])))
    spec_path = tmp_path / "sweep.yaml"
    spec_path.write_text(f"""\
name: mixed
base: {base}
data:
  on_policy: {{prompts: {prompts}, judge: sentiment, k: 2, max_new_tokens: 6}}
train: {{learning_rate: 1.0e-2, max_steps: 1, batch_size: 4, warmup_ratio: 0.0}}
algorithms:
  dpo: {{beta: 0.1}}
  ppo: {{kl_coef: [0.05, 0.5], response_length: 6, temperature: 1.0}}
eval: {{prompts: ./held.jsonl, judges: [sentiment, kl], max_new_tokens: 6}}
""")
    spec, runs = load_train_spec(spec_path)
    assert [r.name for r in runs] == ["dpo-beta0.1-s0", "ppo-kl_coef0.05-response_length6-temperature1.0-s0",
                                      "ppo-kl_coef0.5-response_length6-temperature1.0-s0"]
    res = run_sweep(spec, runs, results_dir=tmp_path / "results", progress=False)
    data = {r.name: json.loads((t.output_dir / "train_manifest.json").read_text())["data"] for r, t in res.runs}
    assert data["dpo-beta0.1-s0"]["source"].endswith("pairs.jsonl")
    assert all(d["source"] == str(prompts) and d["kind"] == "prompts" for n, d in data.items() if n.startswith("ppo"))
    rows = [r for r in res.table if r["metric"] == "sentiment"]
    assert sorted(r["algorithm"] for r in rows) == ["dpo", "ppo", "ppo", "sft"] and res.plots

    only = tmp_path / "only.yaml"  # a PPO-only sweep needs prompts, not pairs
    only.write_text(spec_path.read_text().replace("  dpo: {beta: 0.1}\n", "").replace(
        f"  on_policy: {{prompts: {prompts}, judge: sentiment, k: 2, max_new_tokens: 6}}", "  path: ./pairs.jsonl"))
    from evalharness.core.errors import InputError
    with pytest.raises(InputError, match="data.prompts") as e:
        load_train_spec(only)
    assert e.value.field == "data"
    only.write_text(only.read_text().replace("path: ./pairs.jsonl", f"prompts: {prompts}"))
    assert [r.name for r in load_train_spec(only)[1]] == [r.name for r in runs[1:]]
