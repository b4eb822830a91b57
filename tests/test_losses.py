"""Preference losses against hand computations from the paper formulas, finite differences, and known fixed points."""

from __future__ import annotations

import math

import pytest
import torch

from evalharness.core.errors import EvalHarnessError
from evalharness.training.algorithms import ALGORITHMS, get_spec, make_config
from evalharness.training.losses import implicit_rewards, kto_loss, kto_rewards, preference_loss, reward_metrics

# Three pairs: summed log-probs of policy and reference, token counts, scores.
#            chosen  rejected  ref_chosen  ref_rejected  |y_w|  |y_l|  s_w  s_l
ROWS = [(-10.0, -12.0, -11.0, -11.5, 5, 6, 0.9, 0.4),  # h = 1 - (-0.5) = 1.5
        (-25.0, -20.0, -24.0, -22.0, 10, 8, 2.0, 1.0),  # h = -1 - 2 = -3
        (-7.5, -9.0, -8.0, -8.5, 3, 4, 1.5, 0.5)]  # h = 0.5 - (-0.5) = 1
PAIRED = [a for a in ALGORITHMS if a != "kto" and not get_spec(a).online]


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def h(r: tuple) -> float:
    return (r[0] - r[2]) - (r[1] - r[3])


def inputs(rows: list[tuple] = ROWS, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    cols = list(zip(*rows))
    names = ["chosen_logps", "rejected_logps", "ref_chosen_logps", "ref_rejected_logps", "chosen_lengths",
             "rejected_lengths", "chosen_scores", "rejected_scores"]
    return {n: torch.tensor(c, dtype=dtype) for n, c in zip(names, cols)}


# Each formula written out from the paper, per row r = (c, l, rc, rl, nc, nl, sw, sl), in plain floats.
HAND = {
    "dpo": ({}, lambda r: -logsig(0.1 * h(r))),
    "cdpo": ({"label_smoothing": 0.2}, lambda r: -0.8 * logsig(0.1 * h(r)) - 0.2 * logsig(-0.1 * h(r))),
    "hinge": ({"beta": 0.5}, lambda r: max(0.0, 1 - 0.5 * h(r))),
    "ipo": ({"beta": 0.25}, lambda r: (h(r) - 2.0) ** 2),
    "ipo-per-token": ({"beta": 0.25, "length_normalized": True},
                      lambda r: ((r[0] - r[2]) / r[4] - (r[1] - r[3]) / r[5] - 2.0) ** 2),
    "odpo": ({"beta": 0.5, "alpha": 2.0}, lambda r: -logsig(0.5 * h(r) - 2.0 * math.log(r[6] - r[7]))),
    "odpo-identity": ({"alpha": 0.5, "offset_fn": "identity"}, lambda r: -logsig(0.1 * h(r) - 0.5 * (r[6] - r[7]))),
    "simpo": ({"beta": 2.5, "gamma": 0.7}, lambda r: -logsig(2.5 * r[0] / r[4] - 2.5 * r[1] / r[5] - 0.7)),
    "rdpo": ({"alpha": 0.05}, lambda r: -logsig(0.1 * h(r) + 0.05 * (r[4] - r[5]))),
    "orpo": ({"lam": 0.3}, lambda r: -r[0] / r[4] - 0.3 * logsig(
        (r[0] / r[4] - math.log(1 - math.exp(r[0] / r[4]))) - (r[1] / r[5] - math.log(1 - math.exp(r[1] / r[5]))))),
    "cpo": ({"beta": 0.2, "nll_weight": 0.5}, lambda r: -logsig(0.2 * (r[0] - r[1])) + 0.5 * (-r[0] / r[4])),
}


@pytest.mark.parametrize("case", list(HAND))
def test_loss_matches_hand_computation(case):
    hp, formula = HAND[case]
    got = preference_loss(case.split("-")[0], **inputs(), **hp)
    assert got.shape == (3,) and got.dtype == torch.float64
    assert got.tolist() == pytest.approx([formula(r) for r in ROWS], abs=1e-12)


def test_dpo_literal_value():
    # Row 1: h = 1.5, -log sigma(0.15) = log(1 + e^-0.15) = 0.620957...
    assert preference_loss("dpo", **inputs())[0].item() == pytest.approx(0.6209570, abs=1e-7)


@pytest.mark.parametrize("algorithm", PAIRED)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_kept(algorithm, dtype):
    x = inputs(dtype=dtype)
    x["chosen_lengths"] = x["chosen_lengths"].long()  # integer counts are accepted
    assert preference_loss(algorithm, **x).dtype == dtype


@pytest.mark.parametrize("algorithm", PAIRED)
def test_gradients_match_finite_differences(algorithm):
    x = inputs()
    hp = {"length_normalized": True} if algorithm == "ipo" else {}

    def f(c, r):
        return preference_loss(algorithm, **{**x, "chosen_logps": c, "rejected_logps": r}, **hp)

    assert torch.autograd.gradcheck(f, (x["chosen_logps"].requires_grad_(), x["rejected_logps"].requires_grad_()))


def test_kto_gradients_match_finite_differences():
    lp = torch.tensor([-3.0, -5.0, -4.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-4.0, -4.5, -4.0], dtype=torch.float64)
    des = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda p: kto_loss(logps=p, ref_logps=ref, desirable=des, kl=0.3, beta=0.5), (lp,))


def test_at_initialization():
    x = inputs()
    x["ref_chosen_logps"], x["ref_rejected_logps"] = x["chosen_logps"].clone(), x["rejected_logps"].clone()
    assert preference_loss("dpo", **x).tolist() == [math.log(2)] * 3
    for eps in (0.0, 0.1, 0.5):
        assert preference_loss("cdpo", **x, label_smoothing=eps).tolist() == pytest.approx([math.log(2)] * 3, abs=1e-15)
    for beta in (0.1, 0.5):
        assert preference_loss("ipo", **x, beta=beta).tolist() == pytest.approx([1 / (4 * beta**2)] * 3, rel=1e-15)


@pytest.mark.parametrize("offset_fn", ["log", "identity"])
def test_odpo_tied_and_reversed_scores_are_finite(offset_fn):
    x = inputs()
    x["chosen_scores"] = torch.tensor([1.0, 0.2, 3.0], dtype=torch.float64)  # tie, reversed, ordinary
    x["rejected_scores"] = torch.tensor([1.0, 0.7, 1.0], dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        y = {k: v.to(dtype) for k, v in x.items()}
        y["chosen_logps"].requires_grad_()
        loss = preference_loss("odpo", **y, offset_fn=offset_fn)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(y["chosen_logps"].grad).all()
    dpo = preference_loss("dpo", **x)
    if offset_fn == "log":  # the official code's tie limit: offset -inf, loss 0, no gradient; reversed likewise
        assert loss[:2].tolist() == [0.0, 0.0] and y["chosen_logps"].grad[:2].tolist() == [0.0, 0.0]
        assert loss[2].item() == pytest.approx(-logsig(0.1 * 1.0 - math.log(2.0)))
    else:  # a tie is plain DPO; a reversed pair gets a negative offset (an easier margin): 0.1*h + 0.5
        assert loss[0].item() == pytest.approx(dpo[0].item(), abs=1e-12)
        assert loss[1].item() == pytest.approx(-logsig(0.1 * -3 + 0.5), abs=1e-12)
    assert preference_loss("odpo", **x, alpha=0.0).tolist() == dpo.tolist()  # alpha = 0 is DPO, not 0 * log 0


def test_simpo_ignores_reference_and_gamma_is_absolute():
    x = inputs()
    no_ref = {k: v for k, v in x.items() if not k.startswith("ref")}
    junk = {**x, "ref_chosen_logps": x["ref_chosen_logps"] * 7, "ref_rejected_logps": -x["ref_rejected_logps"]}
    assert preference_loss("simpo", **no_ref).tolist() == preference_loss("simpo", **junk).tolist()

    def logit(beta):  # invert -log s(z) = L: z = -log(expm1(L))
        return -torch.log(torch.expm1(preference_loss("simpo", **no_ref, beta=beta, gamma=0.7)))

    avg_margin = torch.tensor([-10 / 5 + 12 / 6, -25 / 10 + 20 / 8, -7.5 / 3 + 9 / 4], dtype=torch.float64)
    for beta in (1.0, 2.0, 4.0):  # z = beta * avg_margin - gamma: gamma stays 0.7, never 0.7 * beta
        assert logit(beta).tolist() == pytest.approx((beta * avg_margin - 0.7).tolist(), abs=1e-10)


def test_rdpo_reduces_to_dpo_and_penalises_length():
    x = inputs()
    assert preference_loss("rdpo", **x, alpha=0.0).tolist() == preference_loss("dpo", **x).tolist()
    short, long = dict(x, chosen_lengths=torch.full((3,), 5.0)), dict(x, chosen_lengths=torch.full((3,), 50.0))
    # A longer chosen answer asks for a smaller log-ratio margin when alpha > 0, so its loss is lower.
    assert (preference_loss("rdpo", **long) < preference_loss("rdpo", **short)).all()
    assert (preference_loss("rdpo", **long, alpha=-0.01) > preference_loss("rdpo", **short, alpha=-0.01)).all()


def test_orpo_and_cpo_nll_parts():
    x = inputs()
    nll = [10 / 5, 25 / 10, 7.5 / 3]  # -log pi(y_w) / |y_w|
    assert preference_loss("orpo", **x, lam=0.0).tolist() == pytest.approx(nll, abs=1e-14)
    diff = preference_loss("cpo", **x, nll_weight=0.5) - preference_loss("cpo", **x, nll_weight=0.0)
    assert diff.tolist() == pytest.approx([0.5 * v for v in nll], abs=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orpo_finite_when_average_logprob_is_zero(dtype):
    c = torch.tensor([0.0, -1e-12, -1e-30, -2.0], dtype=dtype, requires_grad=True)
    r = torch.tensor([0.0, -3.0, 0.0, -1e-9], dtype=dtype, requires_grad=True)
    n = torch.tensor([4.0, 4.0, 4.0, 4.0], dtype=dtype)
    loss = preference_loss("orpo", chosen_logps=c, rejected_logps=r, chosen_lengths=n, rejected_lengths=n)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    assert loss[0].item() == pytest.approx(0.1 * math.log(2))  # p_w = p_l = 1: equal odds, NLL 0


def test_kto_by_hand():
    lp = torch.tensor([-3.0, -5.0, -4.0, -6.0], dtype=torch.float64)
    ref = torch.tensor([-4.0, -4.5, -4.0, -5.0], dtype=torch.float64)  # log-ratios 1, -0.5, 0, -1
    des = torch.tensor([True, False, True, False])
    got = kto_loss(logps=lp, ref_logps=ref, desirable=des, kl=0.3, beta=0.5, desirable_weight=2.0,
                   undesirable_weight=1.5)
    want = [2.0 * (1 - sig(0.5 * (1 - 0.3))), 1.5 * (1 - sig(0.5 * (0.3 + 0.5))),
            2.0 * (1 - sig(0.5 * (0 - 0.3))), 1.5 * (1 - sig(0.5 * (0.3 + 1)))]
    assert got.tolist() == pytest.approx(want, abs=1e-14)
    # A negative KL estimate is clamped: the reference point is never below 0.
    neg = kto_loss(logps=lp, ref_logps=ref, desirable=des, kl=torch.tensor(-2.0, dtype=torch.float64), beta=0.5)
    zero = kto_loss(logps=lp, ref_logps=ref, desirable=des, kl=0.0, beta=0.5)
    assert neg.tolist() == zero.tolist()
    assert zero[0].item() == pytest.approx(1 - sig(0.5), abs=1e-15)
    # No gradient reaches the KL estimate, the policy still gets one.
    kl = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    p = lp.clone().requires_grad_()
    kto_loss(logps=p, ref_logps=ref, desirable=des, kl=kl, beta=0.5).sum().backward()
    assert kl.grad is None and p.grad is not None and (p.grad != 0).all()
    assert kto_rewards(lp, ref, 0.5).tolist() == [0.5, -0.25, 0.0, -0.5]


def test_implicit_rewards_and_metrics_by_hand():
    x = inputs()
    w, l = implicit_rewards("dpo", **x, beta=0.5)  # 0.5 * (c - rc), 0.5 * (l - rl)
    assert w.tolist() == [0.5, -0.5, 0.25] and l.tolist() == [-0.25, 1.0, -0.25]
    w, l = implicit_rewards("simpo", **x)  # 2 * c / |y_w|
    assert w.tolist() == pytest.approx([-4.0, -5.0, -5.0]) and l.tolist() == pytest.approx([-4.0, -5.0, -4.5])
    w, l = implicit_rewards("orpo", **x)  # 0.1 * c / |y_w|
    assert w.tolist() == pytest.approx([-0.2, -0.25, -0.25])
    w, l = implicit_rewards("cpo", **x)  # 0.1 * c
    assert w.tolist() == pytest.approx([-1.0, -2.5, -0.75]) and l.tolist() == pytest.approx([-1.2, -2.0, -0.9])
    c = x["chosen_logps"].clone().requires_grad_()
    assert not implicit_rewards("dpo", **{**x, "chosen_logps": c})[0].requires_grad

    m = reward_metrics(torch.tensor([1.0, 2.0, 0.5, -1.0]), torch.tensor([0.0, 2.0, 1.0, -3.0]))
    assert m == pytest.approx({"rewards/chosen": 0.625, "rewards/rejected": 0.0, "rewards/margins": 0.625,
                               "rewards/accuracies": 0.5})  # the tie (2.0, 2.0) is not accurate


@pytest.mark.parametrize("call, words", [
    (lambda x: preference_loss("dpoo", **x), ["dpoo", "dpo, cdpo, hinge"]),
    (lambda x: preference_loss("dpo", **x, betta=0.1), ["dpo", "betta", "valid: beta"]),
    (lambda x: preference_loss("dpo", chosen_logps=x["chosen_logps"], rejected_logps=x["rejected_logps"]),
     ["dpo", "ref_chosen_logps", "ref_rejected_logps"]),
    (lambda x: preference_loss("dpo", **{**x, "ref_rejected_logps": None}), ["dpo", "ref_rejected_logps"]),
    (lambda x: preference_loss("simpo", chosen_logps=x["chosen_logps"], rejected_logps=x["rejected_logps"]),
     ["simpo", "chosen_lengths", "rejected_lengths"]),
    (lambda x: preference_loss("ipo", **{**x, "chosen_lengths": None}, length_normalized=True),
     ["ipo", "chosen_lengths"]),
    (lambda x: preference_loss("odpo", **{**x, "chosen_scores": None, "rejected_scores": None}),
     ["odpo", "chosen_scores", "rejected_scores"]),
    (lambda x: preference_loss("kto", **x), ["kto", "unpaired", "kto_loss"]),
    (lambda x: preference_loss("odpo", **x, offset_fn="sqrt"), ["odpo", "offset_fn", "log, identity"]),
    (lambda x: preference_loss("dpo", **x, beta=0.0), ["dpo", "beta", "> 0"]),
    (lambda x: preference_loss("cdpo", **x, label_smoothing=0.6), ["cdpo", "label_smoothing", "[0, 0.5]"]),
    (lambda x: preference_loss("ipo", **x, length_normalized="yes"), ["ipo", "length_normalized"]),
    (lambda x: preference_loss("dpo", **{**x, "ref_chosen_logps": x["ref_chosen_logps"][:, None]}), ["shape"]),
    (lambda x: preference_loss("simpo", **{**x, "chosen_lengths": torch.zeros(3)}), ["simpo", "chosen_lengths"]),
    (lambda x: kto_loss(logps=x["chosen_logps"], ref_logps=x["ref_chosen_logps"], desirable=torch.ones(3),
                        kl=0.0, beta=0.1), ["desirable", "bool"]),
])
def test_errors_name_the_problem(call, words):
    with pytest.raises(EvalHarnessError) as e:
        call(inputs())
    assert all(w in str(e.value) for w in words), str(e.value)


def test_registry_and_configs():
    assert list(ALGORITHMS) == ["dpo", "cdpo", "hinge", "ipo", "odpo", "simpo", "rdpo", "orpo", "cpo", "kto", "ppo"]
    assert [a for a in ALGORITHMS if get_spec(a).online] == ["ppo"]
    assert get_spec("odpo").needs_scores and get_spec("kto").unpaired and not get_spec("simpo").needs_reference
    cfg = make_config("simpo", beta=3)
    assert (cfg.beta, cfg.gamma) == (3.0, 1.0) and isinstance(cfg.beta, float)
    assert make_config("rdpo").alpha == 0.01 and make_config("kto").desirable_weight == 1.0
    for bad in ({"beta": True}, {"beta": "0.1"}, {"beta": float("nan")}):
        with pytest.raises(EvalHarnessError, match="beta"):
            make_config("dpo", **bad)


def test_a_new_offline_algorithm_is_one_row_of_the_table(monkeypatch):
    """The recipe of algorithms.py: a row (here DPO's needs with a doubled loss, SimPO's reward scaled by beta, its
    own name and colour) is all that preference_loss, implicit_rewards and the plots need to know about it."""
    import dataclasses

    import torch.nn.functional as F

    from evalharness.analysis import plot
    from evalharness.training import algorithms
    row = dataclasses.replace(algorithms.ALGORITHMS["dpo"], name="dpo2", loss=lambda c, p: -2 * F.logsigmoid(c.beta * p.h()),
                              reward=("simpo", "beta"), display="DPO x2", colour="#123456")
    monkeypatch.setitem(algorithms.ALGORITHMS, "dpo2", row)
    w, l = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.5])
    rw, rl = torch.tensor([-3.5, -4.0]), torch.tensor([-4.0, -4.0])
    n_w, n_l = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 3.0])
    kw = dict(chosen_logps=w, rejected_logps=l, ref_chosen_logps=rw, ref_rejected_logps=rl, chosen_lengths=n_w,
              rejected_lengths=n_l, beta=0.5)
    # h = (-3 + 3.5) - (-4 + 4) = 0.5 and (-5 + 4) - (-4.5 + 4) = -0.5; loss = -2 log sigma(0.5 h)
    want = [-2 * math.log(1 / (1 + math.exp(-0.25))), -2 * math.log(1 / (1 + math.exp(0.25)))]
    assert preference_loss("dpo2", **kw).tolist() == pytest.approx(want, abs=1e-6)
    cw, cl = implicit_rewards("dpo2", **kw)
    assert cw.tolist() == pytest.approx([0.5 * -3 / 2, 0.5 * -5 / 4]) and cl.tolist() == pytest.approx([-2.0, -0.75])
    assert plot.display_name("dpo2") == "DPO x2"
