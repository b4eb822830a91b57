"""Paired comparisons (evalharness.tasks.paired): hand computations on small data, the bootstraps' shared
draws, known shifts, seeds, and the paired AlpacaEval 2 difference on official annotations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from test_metrics_alpaca_eval import LEADERBOARD, annotations_path, support_dir  # noqa: F401 (fixture)
from test_metrics_arena_hard import BATTLES

from evalharness.tasks import paired
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.tasks.alpaca_eval import paired_stats as ae_paired
from evalharness.tasks.arena_hard import metric as ah
from evalharness.tasks.arena_hard import paired_stats as ah_paired
from evalharness.tasks.mt_bench import metric as mt
from evalharness.tasks.mt_bench import paired_stats as mt_paired

T975_3 = 3.182446305284263  # Student t 0.975 quantile, 3 df


# ------------------------------------------------------------------ t-based tests
def test_paired_t_by_hand_counts_unpaired_items() -> None:
    a = {"p1": 3.0, "p2": 5.0, "p3": 4.0, "p4": 6.0, "only_a": 100.0}
    b = {"p1": 1.0, "p2": 4.0, "p3": 4.0, "p4": 3.0, "only_b1": -5.0, "only_b2": 7.0}
    r = paired.paired_t(a, b)
    # differences 2, 1, 0, 3: mean 1.5, SD sqrt(5/3), SE SD / 2
    se = math.sqrt(5 / 3) / 2
    assert (r.delta, r.n_paired, r.n_only_a, r.n_only_b) == (1.5, 4, 1, 2)
    assert r.se == pytest.approx(se) and (r.ci_low, r.ci_high) == pytest.approx((1.5 - T975_3 * se, 1.5 + T975_3 * se))
    assert r.p_value == pytest.approx(st.ttest_rel([3, 5, 4, 6], [1, 4, 4, 3]).pvalue, rel=1e-12)
    assert (r.value_a, r.value_b) == (4.5, 3.0)
    assert r.mde == pytest.approx(paired.stats.mde_paired_t(math.sqrt(5 / 3), 4))
    # direction is a - b
    s = paired.paired_t(b, a)
    assert (s.delta, s.ci_low, s.ci_high, s.p_value) == pytest.approx((-1.5, -r.ci_high, -r.ci_low, r.p_value))
    assert (s.n_only_a, s.n_only_b) == (2, 1)
    with pytest.raises(ValueError, match="no paired item"):
        paired.paired_t({"x": 1.0}, {"y": 1.0})


def test_a_model_against_itself_and_a_constant_shift() -> None:
    a = {str(i): float(i % 7) for i in range(30)}
    r = paired.paired_t(a, a)
    assert (r.delta, r.ci_low, r.ci_high, r.p_value, r.se, r.mde) == (0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    shifted = paired.paired_t({k: v + 0.25 for k, v in a.items()}, a)
    assert shifted.delta == pytest.approx(0.25) and shifted.ci_low == pytest.approx(0.25) and shifted.p_value == 0.0
    d = paired.PairedResult(**{**r.to_dict(), "se": math.nan}).to_dict()
    assert d["se"] is None and json.dumps(d)  # JSON-ready


def test_sample_means_paired_averages_samples_first() -> None:
    a = {"p1": [1.0, 3.0], "p2": [4.0], "p3": [2.0, 2.0, 5.0], "p4": [0.0], "lonely": [9.0]}
    b = {"p1": [2.0], "p2": [1.0, 1.0], "p3": [0.0], "p4": [1.0, 2.0], "empty": []}
    r = paired.sample_means_paired(a, b)
    # per-prompt means a: 2, 4, 3, 0; b: 2, 1, 0, 1.5 -> differences 0, 3, 3, -1.5
    d = np.array([0.0, 3.0, 3.0, -1.5])
    assert r.delta == pytest.approx(d.mean()) and r.se == pytest.approx(d.std(ddof=1) / 2)
    assert r.p_value == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    assert (r.n_paired, r.n_only_a, r.n_only_b) == (4, 1, 0)  # a prompt with no sample is absent


def test_mcnemar_paired_by_hand() -> None:
    # 10 items: a wins / b loses on 6, b wins / a loses on 1, a tie (0.5) against a loss on 1, 2 concordant
    a = dict(enumerate([1, 1, 1, 1, 1, 1, 0, 0.5, 1, 0]))
    b = dict(enumerate([0, 0, 0, 0, 0, 0, 1, 0.0, 1, 0]))
    r = paired.mcnemar_paired(a, b, scale=100)
    # discordant: 7 for a (the tie over a loss counts), 1 for b -> p = 2 * (1 + 8) / 2^8
    assert r.p_value == pytest.approx(18 / 256) == pytest.approx(st.binomtest(7, 8).pvalue)
    d = 100 * (np.array(list(a.values())) - np.array(list(b.values())))
    assert r.delta == pytest.approx(d.mean()) == pytest.approx(55.0)
    assert r.se == pytest.approx(d.std(ddof=1) / math.sqrt(10))
    assert (r.value_a, r.value_b, r.method) == (75.0, 20.0, "exact McNemar")


# ------------------------------------------------------------------ MT-Bench
def test_mt_bench_clusters_by_question() -> None:
    a = {("q1", 1): 8.0, ("q1", 2): 6.0, ("q2", 1): 5.0, ("q2", 2): 9.0, ("q3", 1): 7.0, ("q3", 2): 7.0,
         ("q4", 1): 2.0}
    b = {("q1", 1): 7.0, ("q1", 2): 4.0, ("q2", 1): 5.0, ("q3", 1): 3.0, ("q3", 2): 6.0, ("q4", 1): 4.0,
         ("q4", 2): 1.0}
    r = mt_paired.mt_bench_paired(a, b)
    # paired turns per question: q1 (1, 2) -> 1.5; q2 (turn 1 only: b lacks turn 2) -> 0; q3 (4, 1) -> 2.5; q4 -> -2
    d = np.array([1.5, 0.0, 2.5, -2.0])
    assert r.delta == pytest.approx(d.mean()) and r.se == pytest.approx(d.std(ddof=1) / 2)
    assert (r.n_paired, r.n_only_a, r.n_only_b) == (4, 1, 1)
    assert r.value_a == pytest.approx(np.mean([7, 5, 7, 2])) and r.value_b == pytest.approx(np.mean([5.5, 5, 4.5, 4]))
    t2 = mt_paired.mt_bench_paired(a, b, turn=2)
    assert (t2.delta, t2.n_paired, t2.n_only_a, t2.n_only_b) == (pytest.approx(1.5), 2, 1, 1)  # q1: 2, q3: 1
    t1 = mt_paired.mt_bench_paired(a, b, turn=1)
    assert t1.delta == pytest.approx(np.mean([1, 0, 4, -2])) and t1.n_paired == 4


def test_mt_bench_official_judgments(benchdata: Path) -> None:
    root = benchdata / "mt_bench/model_judgment/official_derived"
    verdicts = mt.load_judgments(root)
    a, b = mt_paired.mt_bench_scores(verdicts, "gpt-4"), mt_paired.mt_bench_scores(verdicts, "alpaca-13b")
    r = mt_paired.mt_bench_paired(a, b)
    # by hand from the TSVs: per-question mean of both turns, then the difference
    per_q: dict[str, dict[str, list[float]]] = {}
    for f in root.glob("*.tsv"):
        for row in pd.read_csv(f, sep="\t").itertuples():
            if row.score != -1:
                per_q.setdefault(row.model, {}).setdefault(str(row.question_id), []).append(float(row.score))
    shared = [q for q in per_q["gpt-4"] if q in per_q["alpaca-13b"]]
    d = np.array([np.mean(per_q["gpt-4"][q]) - np.mean(per_q["alpaca-13b"][q]) for q in shared])
    assert r.delta == pytest.approx(d.mean()) and r.se == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)))
    assert r.n_paired == len(d) == 80 and r.p_value < 1e-10
    overall = mt.aggregate(verdicts)  # the official 8.99 and 4.53 when every row is parsed
    if overall["gpt-4"]["n"] == overall["alpaca-13b"]["n"] == 160:
        assert r.delta == pytest.approx(overall["gpt-4"]["score"] - overall["alpaca-13b"]["score"])


# ------------------------------------------------------------------ Arena-Hard
def _battles(outcomes: dict[str, list[tuple[float, float]]], baseline: str = "base") -> pd.DataFrame:
    """Battle rows from per-question (game 1, game 2) model scores; 1.0 and 0.0 are decisive (x3)."""
    rows = []
    for model, games in outcomes.items():
        for q, pair in enumerate(games):
            for s in pair:
                winner = {1.0: "model_b", 0.0: "model_a", 0.5: "tie", 0.75: "model_b", 0.25: "model_a"}[s]
                rows += [(f"q{q}", baseline, model, winner)] * (3 if s in (0.0, 1.0) else 1)
    return pd.DataFrame(rows, columns=["question_id", "model_a", "model_b", "winner"])


def _closed_form_score(battles: pd.DataFrame, model: str, counts: np.ndarray | None = None) -> float:
    """With every battle against the baseline, BT's MLE win probability is the weighted win share."""
    rows = battles[battles.model_b == model]
    s = rows.winner.map({"model_b": 1.0, "model_a": 0.0, "tie": 0.5}).to_numpy()
    w = np.ones(len(rows)) if counts is None else counts[rows.index.to_numpy()]
    return 100 * float((w * s).sum() / w.sum())


def _synthetic_outcomes(seed: int, n: int = 40) -> dict[str, list[tuple[float, float]]]:
    rng = np.random.default_rng(seed)
    levels = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    skill = rng.normal(0, 1, n)  # question difficulty shared by both models: correlated outcomes
    out = {}
    for model, shift in (("x", 0.6), ("y", 0.0)):
        z = skill[:, None] + shift + rng.normal(0, 0.8, (n, 2))
        out[model] = [tuple(levels[np.clip(np.round(2 + 1.2 * row), 0, 4).astype(int)]) for row in z]
    return out


def test_arena_hard_bootstrap_equals_closed_form_on_the_same_question_draws() -> None:
    battles = _battles(_synthetic_outcomes(0))
    r = ah_paired.arena_hard_paired_bootstrap(battles, "x", "y", baseline="base", rounds=60, seed=7)
    assert r.value_a == pytest.approx(_closed_form_score(battles, "x"), abs=1e-6)
    assert r.delta == pytest.approx(_closed_form_score(battles, "x") - _closed_form_score(battles, "y"), abs=1e-6)
    # the same question draws for both models, redrawn here independently of the implementation
    rng = np.random.RandomState(7)
    qcodes, quniq = pd.factorize(battles.question_id)
    deltas = []
    for _ in range(60):
        counts = np.bincount(rng.randint(0, len(quniq), len(quniq)), minlength=len(quniq))[qcodes].astype(float)
        deltas.append(_closed_form_score(battles, "x", counts) - _closed_form_score(battles, "y", counts))
    assert (r.ci_low, r.ci_high) == pytest.approx(tuple(np.quantile(deltas, [0.025, 0.975])), abs=1e-5)
    assert r.se == pytest.approx(np.std(deltas, ddof=1), abs=1e-5)
    assert r.p_percentile == pytest.approx(paired.stats.bootstrap_p_value(deltas))
    assert r.p_value == pytest.approx(2 * st.norm.sf(abs(r.delta) / np.std(deltas, ddof=1)), rel=1e-4)
    assert (r.n_paired, r.n_only_a, r.n_only_b, r.rounds, r.seed) == (40, 0, 0, 60, 7)
    assert r.mde == pytest.approx(2.801585218 * r.se, rel=1e-6)


def test_arena_hard_self_shift_seed_and_unpaired_questions() -> None:
    outcomes = _synthetic_outcomes(1)
    battles = _battles(outcomes)
    same = ah_paired.arena_hard_paired_bootstrap(battles, "x", "x", baseline="base", rounds=30)
    assert (same.delta, same.ci_low, same.ci_high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    # known shift: a copy of x with 5 decisive game-1 wins turned into decisive losses: 15 of its battles flip
    wins = [i for i, (g1, _) in enumerate(outcomes["x"]) if g1 == 1.0][:5]
    worse = [((0.0 if i in wins else g1), g2) for i, (g1, g2) in enumerate(outcomes["x"])]
    shifted = _battles({"x": outcomes["x"], "x_worse": worse})
    r = ah_paired.arena_hard_paired_bootstrap(shifted, "x", "x_worse", baseline="base", rounds=40, seed=3)
    n_battles = len(shifted[shifted.model_b == "x"])  # the flip keeps the battle count (3 rows each way)
    assert r.delta == pytest.approx(100 * 5 * 3 / n_battles, abs=1e-6)
    assert r.ci_low > 0 and r.p_percentile == pytest.approx(2 / 41)  # every round favours x
    assert r.p_value == pytest.approx(2 * st.norm.sf(r.delta / r.se))
    assert r.p_value < r.p_percentile  # the z test on the bootstrap SE has no 2 / (B + 1) floor
    again = ah_paired.arena_hard_paired_bootstrap(shifted, "x", "x_worse", baseline="base", rounds=40, seed=3)
    assert again == r
    assert ah_paired.arena_hard_paired_bootstrap(shifted, "x", "x_worse", baseline="base", rounds=40, seed=4) != r
    # y lacks 4 questions: counted, and x's battles on them are left out of the comparison
    partial = battles[~((battles.model_b == "y") & battles.question_id.isin(["q0", "q1", "q2", "q3"]))]
    p = ah_paired.arena_hard_paired_bootstrap(partial.reset_index(drop=True), "x", "y", baseline="base", rounds=20)
    assert (p.n_paired, p.n_only_a, p.n_only_b) == (36, 4, 0)
    kept = partial[~partial.question_id.isin(["q0", "q1", "q2", "q3"])].reset_index(drop=True)
    assert p.value_a == pytest.approx(_closed_form_score(kept, "x"), abs=1e-6)
    # against the baseline itself (score 50 by construction), which lacks no question
    vs = ah_paired.arena_hard_paired_bootstrap(partial.reset_index(drop=True), "y", "base", baseline="base", rounds=20)
    assert (vs.value_b, vs.n_paired, vs.n_only_a, vs.n_only_b) == (50.0, 36, 0, 0)
    assert vs.delta == pytest.approx(_closed_form_score(kept, "y") - 50, abs=1e-6)


def test_arena_hard_warm_start_gives_the_same_numbers() -> None:
    battles = _battles(_synthetic_outcomes(2))
    cold = ah.bootstrap_elo(battles, baseline="base", rounds=25, unit="question")
    warm = ah.bootstrap_elo(battles, baseline="base", rounds=25, unit="question", warm_start=True)
    assert np.abs(cold.to_numpy() - warm.to_numpy()).max() < 1e-4  # Elo points; the solver's own precision


def test_arena_hard_official_battles(benchdata: Path) -> None:
    battles = ah.load_battles(benchdata / BATTLES)
    r = ah_paired.arena_hard_paired_bootstrap(battles, "gpt-4-0613", "gpt-3.5-turbo-0125", rounds=200)
    assert (r.value_a, r.value_b) == (pytest.approx(37.90, abs=0.005), pytest.approx(23.34, abs=0.005))  # official
    assert r.delta == pytest.approx(r.value_a - r.value_b) and r.ci_low < r.delta < r.ci_high
    assert r.ci_low > 0 and r.p_percentile == pytest.approx(2 / 201) and r.n_paired == 500
    assert r.p_value == pytest.approx(2 * st.norm.sf(r.delta / r.se)) and r.p_value < 1e-9
    # pairing: the same question draws make the difference tighter than two independent model CIs
    boot = ah.bootstrap_elo(battles, rounds=200, unit="question")
    marginal = [np.std(100 * ah.win_rate(boot[m]), ddof=1) for m in ("gpt-4-0613", "gpt-3.5-turbo-0125")]
    assert r.se < math.hypot(*marginal)


# ------------------------------------------------------------------ AlpacaEval 2
def _annotations(name: str, seed: int, n: int = 120, shift: float = 0.0, base: str = "base") -> list[dict[str, Any]]:
    """Synthetic annotations whose preference depends on the length difference and a shared item effect."""
    rng = np.random.default_rng(seed)
    item = np.random.default_rng(99).normal(0, 1, n)  # shared across models: correlated preferences
    len1 = np.random.default_rng(98).integers(200, 1500, n)
    len2 = rng.integers(200, 2500, n)
    z = 0.9 * np.tanh((len2 - len1) / 800) + item + shift + rng.normal(0, 0.7, n)
    rows = []
    for i in range(n):
        rows.append({"instruction": f"instruction {i}", "output_1": "b" * int(len1[i]), "output_2": "m" * int(len2[i]),
                     "generator_1": base, "generator_2": name, "preference": float(1 + 1 / (1 + math.exp(-z[i])))})
    return rows


def test_alpaca_winrate_paired_by_hand_and_unparsed_rows() -> None:
    a, b = _annotations("a", 1, n=40, shift=0.5), _annotations("b", 2, n=40)
    a[3]["preference"], b[7]["preference"], b[8]["preference"] = None, None, 0  # b[8]: legacy tie
    r = ae_paired.alpaca_winrate_paired(a, b)
    keep = [i for i in range(40) if i not in (3, 7)]
    wb = {i: (0.5 if b[i]["preference"] == 0 else b[i]["preference"] - 1) for i in keep}
    d = np.array([100 * (a[i]["preference"] - 1 - wb[i]) for i in keep])
    assert r.delta == pytest.approx(d.mean()) and r.se == pytest.approx(d.std(ddof=1) / math.sqrt(38))
    assert (r.n_paired, r.n_only_a, r.n_only_b) == (38, 1, 1)  # a's 7 and b's 3 are judged on one side only
    assert r.p_value == pytest.approx(st.ttest_1samp(d, 0).pvalue)
    with pytest.raises(ValueError, match="different baselines"):
        ae_paired.alpaca_winrate_paired(a, _annotations("c", 3, n=40, base="other"))
    with pytest.raises(ValueError, match="repeated"):
        ae_paired.alpaca_winrate_paired(a + a[:1], b)


def test_lc_paired_bootstrap_shares_draws_and_refits(support_dir: Path) -> None:  # noqa: F811
    support = ae.load_lc_support(support_dir)
    a, b = _annotations("a", 1, shift=0.6), _annotations("b", 2)
    baseline = [{**r, "generator_2": "base", "output_2": r["output_1"], "preference": 1.5} for r in a]
    r = ae_paired.alpaca_lc_paired_bootstrap(a, b, support, rounds=4, seed=5)
    lc = {name: ae.length_controlled_winrate(rows, support)["length_controlled_winrate"] for name, rows in
          (("a", a), ("b", b))}
    assert r.delta == pytest.approx(lc["a"] - lc["b"]) and (r.value_a, r.value_b) == (lc["a"], lc["b"])
    assert (r.n_paired, r.n_only_a, r.n_only_b, r.rounds) == (120, 0, 0, 4)
    # against the baseline (LC 50 every round) the delta's CI is the marginal LC bootstrap CI minus 50:
    # the same draws and the same refit as lc_winrate_bootstrap_ci
    vs_base = ae_paired.alpaca_lc_paired_bootstrap(a, baseline, support, rounds=4, seed=5)
    low, high = ae.lc_winrate_bootstrap_ci(a, support, rounds=4, seed=5)
    assert (vs_base.ci_low, vs_base.ci_high) == pytest.approx((low - 50, high - 50))
    assert vs_base.value_b == 50.0
    # several models against one reference: the same results, and the reference against itself is exactly 0
    many = ae_paired.alpaca_lc_against(b, {"a": a, "b": b}, support, rounds=4, seed=5)
    assert many["a"] == r
    same = many["b"]
    assert (same.delta, same.ci_low, same.ci_high, same.p_value, same.se) == (0.0, 0.0, 0.0, 1.0, 0.0)
    # swapping the models negates the delta and mirrors the CI; the seed reproduces
    swapped = ae_paired.alpaca_lc_paired_bootstrap(b, a, support, rounds=4, seed=5)
    assert (swapped.delta, swapped.ci_low, swapped.ci_high) == pytest.approx((-r.delta, -r.ci_high, -r.ci_low))
    assert (swapped.p_value, swapped.p_percentile) == (pytest.approx(r.p_value), r.p_percentile)
    with pytest.raises(ValueError, match="in the same"):
        ae_paired.alpaca_lc_paired_bootstrap(a, b[::-1], support, rounds=2)


def _official(benchdata: Path, model: str) -> dict[str, dict[str, Any]]:
    return {r["instruction"]: r for r in json.loads(annotations_path(benchdata, model).read_text())}


def test_alpaca_paired_difference_on_official_annotations(benchdata: Path) -> None:
    a_name, b_name = "claude-2.1", "gpt-3.5-turbo-1106"
    a, b = (ae.load_annotations(annotations_path(benchdata, m)) for m in (a_name, b_name))
    r = ae_paired.alpaca_winrate_paired(a, b)
    # by hand from the JSON files: per-instruction preference - 1 in percent, paired by instruction
    ra, rb = _official(benchdata, a_name), _official(benchdata, b_name)
    shared = [k for k in ra if k in rb and ra[k]["preference"] is not None and rb[k]["preference"] is not None]
    wa = np.array([100 * (ra[k]["preference"] - 1) for k in shared])
    wb = np.array([100 * (rb[k]["preference"] - 1) for k in shared])
    d = wa - wb
    se = math.sqrt(sum((x - d.mean()) ** 2 for x in d) / (len(d) - 1) / len(d))
    assert r.n_paired == len(shared) == 805 and r.n_only_a == r.n_only_b == 0
    assert r.delta == pytest.approx(d.mean()) and r.se == pytest.approx(se)
    assert r.p_value == pytest.approx(st.ttest_rel(wa, wb).pvalue)
    board = pd.read_csv(benchdata / "alpaca_eval" / LEADERBOARD, index_col=0)
    assert r.value_a == pytest.approx(board.loc[a_name, "win_rate"], abs=1e-6)
    assert r.value_b == pytest.approx(board.loc[b_name, "win_rate"], abs=1e-6)
    # per-instruction preferences of two models correlate positively, so the paired SE is smaller
    # than the one implied by the two leaderboard standard errors
    assert np.corrcoef(wa, wb)[0, 1] > 0.1
    assert r.se < math.hypot(board.loc[a_name, "standard_error"], board.loc[b_name, "standard_error"])
    # discrete win rate: exact McNemar on the discordant instructions, counted by hand
    disc = lambda p: 0.5 if p == 1.5 else float(round(p) - 1)  # noqa: E731
    da, db = (np.array([disc(r[k]["preference"]) for k in shared]) for r in (ra, rb))
    m = ae_paired.alpaca_discrete_paired(a, b)
    n_a, n_b = int((da > db).sum()), int((da < db).sum())
    assert m.p_value == pytest.approx(st.binomtest(n_a, n_a + n_b).pvalue)
    assert m.delta == pytest.approx(100 * (da.mean() - db.mean()))
    assert m.value_a == pytest.approx(board.loc[a_name, "discrete_win_rate"], abs=1e-6)
