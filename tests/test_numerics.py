"""Every offline loss at the extremes: summed log-probs of -1e4, identical chosen and rejected, zero-length responses,
all-tied ODPO scores. Losses, gradients, implicit rewards and logged metrics stay finite, and where the value is
known by hand it is checked."""

from __future__ import annotations

import json
import math

import pytest
import torch
from trainkit import base  # noqa: F401  (module fixture)

from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.training.algorithms import ALGORITHMS, make_config
from evalharness.training.data import load_preferences, load_unpaired
from evalharness.training.losses import implicit_rewards, kto_loss, kto_rewards, preference_loss, reward_metrics

PAIRED = [a for a in ALGORITHMS if a != "kto" and not ALGORITHMS[a].online]  # PPO: tests/test_ppo.py
B = 4


def inputs(chosen: float, rejected: float, ref_chosen: float, ref_rejected: float, *, len_chosen: float = 1.0,
           len_rejected: float = 1.0, dtype=torch.float32) -> dict:
    """Batch of B identical pairs; the policy's log-probs require grad so the gradient can be checked too."""
    full = lambda v: torch.full((B,), v, dtype=dtype)  # noqa: E731
    return dict(chosen_logps=full(chosen).requires_grad_(), rejected_logps=full(rejected).requires_grad_(),
                ref_chosen_logps=full(ref_chosen), ref_rejected_logps=full(ref_rejected),
                chosen_lengths=full(len_chosen), rejected_lengths=full(len_rejected),
                chosen_scores=full(0.9), rejected_scores=full(0.1))


def check_finite(algorithm: str, kw: dict, **hp) -> torch.Tensor:
    """The loss, its gradient, the implicit rewards and their metrics are all finite; returns the loss."""
    loss = preference_loss(algorithm, **kw, **hp)
    assert torch.isfinite(loss).all(), (algorithm, loss)
    loss.sum().backward()
    for name in ("chosen_logps", "rejected_logps"):
        assert torch.isfinite(kw[name].grad).all(), (algorithm, name, kw[name].grad)
    rc, rr = implicit_rewards(algorithm, **{k: v.detach() for k, v in kw.items()}, **hp)
    metrics = reward_metrics(rc, rr)
    assert all(math.isfinite(v) for v in metrics.values()), (algorithm, metrics)
    return loss.detach()


EXTREMES = {
    "all -1e4": (-1e4, -1e4, -1e4, -1e4),
    "chosen -1e4": (-1e4, -1.0, -1.0, -1.0),
    "rejected -1e4": (-1.0, -1e4, -1.0, -1.0),
    "reference -1e4": (-1.0, -1.0, -1e4, -1e4),
    "policy -1e4, reference 0": (-1e4, -1e4, 0.0, 0.0),
    "h = +2e4": (-1.0, -1e4, -1e4, -1.0),
    "h = -2e4": (-1e4, -1.0, -1.0, -1e4),
    "log-probs 0 (p = 1)": (0.0, 0.0, 0.0, 0.0),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(EXTREMES))
@pytest.mark.parametrize("algorithm", PAIRED)
def test_paired_losses_are_finite_at_extreme_log_probs(algorithm, case, dtype):
    kw = inputs(*EXTREMES[case], dtype=dtype)
    check_finite(algorithm, kw)
    # long responses: length-normalised algorithms divide -1e4 by 500
    check_finite(algorithm, inputs(*EXTREMES[case], len_chosen=500, len_rejected=3, dtype=dtype))


def test_extreme_values_by_hand():
    h = (-1e4 - -1.0) - (-1.0 - -1e4)  # the case "h = -2e4": -19998
    # DPO, beta 0.1: -log sigmoid(beta h) = -beta h + log1p(e^(beta h)) = 1999.8
    assert check_finite("dpo", inputs(*EXTREMES["h = -2e4"]))[0].item() == pytest.approx(-0.1 * h, rel=1e-6)
    # ... and at h = +19998 it underflows to 0, not NaN
    assert check_finite("dpo", inputs(*EXTREMES["h = +2e4"]))[0].item() == pytest.approx(0.0, abs=1e-30)
    # IPO: (h - 1/(2 beta))^2
    assert check_finite("ipo", inputs(*EXTREMES["h = -2e4"]))[0].item() == pytest.approx((h - 5) ** 2, rel=1e-6)
    # ORPO, log p(y_w) = -1e4 and log p(y_l) = -1 over one token: log odds(a) = a - log(1 - e^a), and
    # -log sigmoid(x) = -x for x this negative
    lo = lambda a: a - math.log(-math.expm1(a))  # noqa: E731
    got = check_finite("orpo", inputs(*EXTREMES["chosen -1e4"]))[0].item()
    assert got == pytest.approx(1e4 + 0.1 * (lo(-1.0) - lo(-1e4)), rel=1e-6)
    # ORPO at p = 1 (log-prob 0): infinite odds are clamped to the largest finite ones; equal for both, ratio 0
    assert check_finite("orpo", inputs(*EXTREMES["log-probs 0 (p = 1)"]))[0].item() == pytest.approx(0.1 * math.log(2))


def zero_margin_loss(algorithm: str) -> float:
    """Each loss at zero reward difference, by hand, for log pi(y) = -7 over 7 tokens (NLL terms are 1)."""
    c = make_config(algorithm)
    if algorithm in ("dpo", "cdpo", "rdpo"):
        return math.log(2)
    if algorithm == "hinge":
        return 1.0  # relu(1 - 0)
    if algorithm == "ipo":
        return (1 / (2 * c.beta)) ** 2
    if algorithm == "odpo":
        return math.log(1 + math.exp(c.alpha * math.log(0.9 - 0.1)))  # -log s(0 - alpha log(s_w - s_l))
    if algorithm == "simpo":
        return math.log(1 + math.exp(c.gamma))  # -log s(0 - gamma)
    if algorithm == "orpo":
        return 1.0 + c.lam * math.log(2)
    assert algorithm == "cpo"
    return math.log(2) + c.nll_weight


@pytest.mark.parametrize("algorithm", PAIRED)
def test_identical_chosen_and_rejected(algorithm):
    """y_w = y_l: every reward difference is 0, so each loss is its value at zero margin (computed by hand)."""
    kw = inputs(-7.0, -7.0, -5.0, -5.0, len_chosen=7, len_rejected=7)
    loss = check_finite(algorithm, kw)
    assert loss == pytest.approx(torch.full((B,), zero_margin_loss(algorithm)), rel=1e-6)
    rc, rr = implicit_rewards(algorithm, **{k: v.detach() for k, v in kw.items()})
    m = reward_metrics(rc, rr)
    assert m["rewards/margins"] == 0 and m["rewards/accuracies"] == 0  # a tie is not a win


@pytest.mark.parametrize("offset_fn", ["log", "identity"])
def test_odpo_all_tied_scores(offset_fn):
    """Every pair's scores equal: f = log has offset -inf, whose limit is a loss of exactly 0 with zero gradient
    (the official code's value), formed without inf or NaN; f = identity has offset 0, i.e. DPO."""
    for case in ("all -1e4", "h = -2e4", "h = +2e4"):
        kw = inputs(*EXTREMES[case])
        kw["chosen_scores"] = kw["rejected_scores"] = torch.full((B,), 0.5)
        loss = check_finite("odpo", kw, offset_fn=offset_fn)
        if offset_fn == "log":
            assert (loss == 0).all() and (kw["chosen_logps"].grad == 0).all()
        else:
            dpo = preference_loss("dpo", **{k: v.detach() for k, v in kw.items() if "score" not in k})
            assert loss == pytest.approx(dpo)
    # scores that favour y_l (s_w < s_l, NaN in the official code) take the same zero
    kw = inputs(-3.0, -2.0, -2.5, -2.5)
    kw["chosen_scores"], kw["rejected_scores"] = torch.full((B,), 0.1), torch.full((B,), 0.9)
    assert (check_finite("odpo", kw) == 0).all()


@pytest.mark.parametrize("algorithm", [a for a in PAIRED if ALGORITHMS[a].needs_lengths])
def test_zero_length_responses_are_refused(algorithm):
    kw = inputs(0.0, -1.0, 0.0, -1.0)
    kw["chosen_lengths"] = torch.tensor([3.0, 0.0, 2.0, 1.0])
    with pytest.raises(EvalHarnessError, match="chosen_lengths must count response tokens"):
        preference_loss(algorithm, **kw)


def test_zero_length_responses_are_refused_where_lengths_are_optional():
    kw = inputs(0.0, -1.0, 0.0, -1.0)
    kw["rejected_lengths"] = torch.zeros(B)
    for algorithm in ("dpo", "ipo"):  # lengths unused here, but a zero length still means a broken batch
        with pytest.raises(EvalHarnessError, match="rejected_lengths must count response tokens"):
            preference_loss(algorithm, **kw)


@pytest.mark.parametrize("text, where", [("", "empty"), ("   ", "empty"), ([{"role": "assistant", "content": " "}], "empty")])
def test_zero_length_responses_are_refused_in_the_data(tmp_path, text, where):
    """The trainer never sees a zero-length response: the file is refused with its line and field."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "the movie", "chosen": "good", "rejected": "bad"},
            {"prompt": "the movie", "chosen": "good", "rejected": text}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError, match=where) as e:
        load_preferences(path)
    assert str(e.value).startswith(f"{path}:2 field 'rejected'")
    path.write_text(json.dumps({"prompt": "the movie", "completion": text, "label": True}) + "\n")
    with pytest.raises(InputError, match="completion"):
        load_unpaired(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", list(EXTREMES))
def test_kto_is_finite_at_extremes(case, dtype):
    c, _, rc, _ = EXTREMES[case]
    for kl in (0.0, 1e4, -1e4):  # the batch KL estimate, clamped at 0 below
        logps = torch.full((B,), c, dtype=dtype, requires_grad=True)
        ref = torch.full((B,), rc, dtype=dtype)
        desirable = torch.tensor([True, False, True, False])
        loss = kto_loss(logps=logps, ref_logps=ref, desirable=desirable, kl=kl, beta=0.1)
        assert torch.isfinite(loss).all() and ((loss >= 0) & (loss <= 1)).all()
        loss.sum().backward()
        assert torch.isfinite(logps.grad).all()
        assert torch.isfinite(kto_rewards(logps.detach(), ref, 0.1)).all()
    # identical policy and reference, KL 0: 1 - sigmoid(0) = 0.5 for every example (by hand)
    same = kto_loss(logps=torch.full((B,), -1e4), ref_logps=torch.full((B,), -1e4),
                    desirable=torch.tensor([True, False, True, False]), kl=0.0, beta=0.1)
    assert same.tolist() == [0.5] * B


def test_training_on_all_tied_odpo_pairs_is_finite_and_changes_nothing(base, tmp_path):
    """Trainer level: an ODPO run whose pairs are all tied has loss 0 and zero gradients at every step; the
    logged metrics are finite and the weights stay those of the base."""
    from safetensors.torch import load_file

    from evalharness.training.trainer import TrainConfig, train
    path = tmp_path / "tied.jsonl"
    path.write_text("".join(json.dumps({"prompt": "the movie", "chosen": "good fun", "rejected": "bad dull plot",
                                        "score_chosen": 0.5, "score_rejected": 0.5}) + "\n" for _ in range(8)))
    res = train(TrainConfig(algorithm="odpo", base=str(base), data=str(path), learning_rate=1e-2, max_steps=2,
                            batch_size=4, warmup_ratio=0.0, output_dir=str(tmp_path / "run")))
    for m in res.metrics:
        assert m["loss"] == 0 and m["grad_norm"] == 0
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    w, w0 = load_file(str(res.checkpoints[-1] / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert all(torch.equal(w[k], w0[k]) for k in w0)
