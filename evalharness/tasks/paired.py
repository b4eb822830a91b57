"""Paired differences between two models over the items both answered.

Checkpoints of one base answer the same prompts and their per-item scores are correlated, so a
difference is computed item by item and then aggregated: a t interval for means (clustered where
the benchmark's unit is a question), an exact McNemar test for discrete win rates, and a paired
bootstrap, with the same draws for both models, where the metric is a refit (the AlpacaEval LC GLM,
Arena-Hard's Bradley-Terry). Items present for one model only are counted, never dropped silently.

Every delta is ``a - b`` in the metric's own units (percent for win rates and scores); which
direction is better is the caller's business. Pure functions over per-item data: no store, no CLI.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from evalharness.core import stats
from evalharness.core.records import Verdict
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.tasks.arena_hard import metric as ah

LEVEL, ALPHA, POWER = 0.95, 0.05, 0.8  # 95% CIs; MDE at 80% power, two-sided alpha 0.05
ARENA_ROUNDS = 1000  # a comparison defaults to 1000 rounds (the official leaderboard CI uses 100)
LC_ROUNDS = 200  # each round refits each model's GLM with its CV: about 0.1 s a model on one core


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of model a with model b.

    ``delta`` = metric(a) - metric(b) over the paired units; ``ci_low``/``ci_high`` its CI at
    ``level``; ``p_value`` two-sided for H0 delta = 0; ``se`` the SE of delta (the bootstrap SD for
    a bootstrap); ``mde`` the minimum detectable effect at 80% power, alpha 0.05 (``mde_method``
    says how). A bootstrap's ``p_value`` is the z test on its SE, and ``p_percentile`` the
    percentile-inversion p, which cannot go below 2 / (rounds + 1). ``n_paired`` counts the units
    of the test (instructions, prompts, questions); ``n_only_a``/``n_only_b`` count the scored items
    of one model that the other lacks (for clustered metrics these are items, e.g. MT-Bench
    question-turns). ``value_a``/``value_b`` are the two models' metric on the paired units.
    """

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    n_paired: int
    n_only_a: int
    n_only_b: int
    se: float
    mde: float
    method: str
    mde_method: str
    value_a: float
    value_b: float
    level: float = LEVEL
    rounds: int | None = None
    seed: int | None = None
    p_percentile: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON: NaN (undefined with too few items) becomes None."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


# ---------------------------------------------------------------- pairing and the t-based tests
def pair_items(a: Mapping[Hashable, float], b: Mapping[Hashable, float]) -> tuple[list[Hashable], int, int]:
    """Keys both mappings have (in a's order), and the counts of keys only a or only b has."""
    common = [k for k in a if k in b]
    return common, len(a) - len(common), len(b) - len(common)


def _t_result(
    xa: Sequence[float], xb: Sequence[float], n_only_a: int, n_only_b: int, method: str, level: float
) -> PairedResult:
    """Paired t over aligned units (xa[i], xb[i])."""
    ya, yb = np.asarray(xa, dtype=float), np.asarray(xb, dtype=float)
    if ya.size == 0:
        raise ValueError("no paired item: the two models share no scored item")
    d = ya - yb
    delta, se, lo, hi = stats.mean_ci(d, level)
    sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
    return PairedResult(
        delta=delta,
        ci_low=lo,
        ci_high=hi,
        p_value=stats.t_p_value(delta, se, d.size - 1),
        n_paired=int(d.size),
        n_only_a=n_only_a,
        n_only_b=n_only_b,
        se=se,
        mde=stats.mde_paired_t(sd, int(d.size), alpha=ALPHA, power=POWER),
        method=method,
        mde_method="noncentral t",
        value_a=float(ya.mean()),
        value_b=float(yb.mean()),
        level=level,
    )


def paired_t(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, level: float = LEVEL, method: str = "paired t"
) -> PairedResult:
    """Paired t test of mean(a - b) over the items both have (item id -> score per model)."""
    common, only_a, only_b = pair_items(a, b)
    return _t_result([a[k] for k in common], [b[k] for k in common], only_a, only_b, method, level)


def clustered_paired_t(
    a: Mapping[Hashable, float],
    b: Mapping[Hashable, float],
    cluster: Callable[[Hashable], Hashable],
    *,
    level: float = LEVEL,
    method: str = "clustered paired t",
) -> PairedResult:
    """Paired t test over clusters: items are paired first, then each model's mean over a cluster's
    paired items is one unit (``cluster`` maps an item id to its cluster), t over clusters.
    ``n_paired`` counts clusters, ``n_only_*`` items."""
    common, only_a, only_b = pair_items(a, b)
    keys = [cluster(k) for k in common]
    ma, mb = (stats.cluster_means([m[k] for k in common], keys) for m in (a, b))
    return _t_result(list(ma.values()), list(mb.values()), only_a, only_b, method, level)


def sample_means_paired(
    a: Mapping[Hashable, Sequence[float]], b: Mapping[Hashable, Sequence[float]], *, level: float = LEVEL
) -> PairedResult:
    """Classifier rewards, KL, length: per-prompt mean over each model's samples, then a paired t
    test over prompts (prompt id -> that model's per-sample values). A prompt with no sample is
    absent."""
    means = [{k: float(np.mean(v)) for k, v in m.items() if len(v)} for m in (a, b)]
    return paired_t(means[0], means[1], level=level, method="paired t over per-prompt sample means")


def mcnemar_paired(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], *, scale: float = 1.0, level: float = LEVEL
) -> PairedResult:
    """Discrete outcomes in [0, 1] per item (1 win, 0 loss, 0.5 an exact tie): delta of the means
    with its t interval, p-value from the exact McNemar test.

    McNemar is the sign test on discordant pairs: an item counts for a when a's outcome is higher
    (win against loss, or a 0.5 tie against a loss), for b when lower; equal outcomes carry no
    information. ``scale`` multiplies values and deltas (100 for percent).
    """
    common, only_a, only_b = pair_items(a, b)
    xa, xb = np.array([a[k] for k in common], float), np.array([b[k] for k in common], float)
    result = _t_result(scale * xa, scale * xb, only_a, only_b, "exact McNemar", level)
    return replace(result, p_value=stats.mcnemar_exact(int((xa > xb).sum()), int((xa < xb).sum())))


# ---------------------------------------------------------------- bootstraps of refit metrics
def _bootstrap_result(
    point_a: float,
    point_b: float,
    series_a: np.ndarray,
    series_b: np.ndarray,
    n_paired: int,
    n_only_a: int,
    n_only_b: int,
    method: str,
    level: float,
    rounds: int,
    seed: int,
) -> PairedResult:
    deltas = np.asarray(series_a, float) - np.asarray(series_b, float)
    lo, hi = (float(x) for x in np.quantile(deltas, [(1 - level) / 2, (1 + level) / 2]))
    se = float(deltas.std(ddof=1)) if deltas.size > 1 else math.nan
    delta = point_a - point_b
    # p from the bootstrap SE (a z test), not the share of rounds past 0: that share floors at
    # 2 / (B + 1), and Holm over a table's tests multiplies the smallest p by their number.
    return PairedResult(
        delta=delta,
        ci_low=lo,
        ci_high=hi,
        p_value=stats.t_p_value(delta, se, math.inf),
        n_paired=n_paired,
        n_only_a=n_only_a,
        n_only_b=n_only_b,
        se=se,
        mde=stats.mde_normal(se, alpha=ALPHA, power=POWER),
        mde_method="normal, bootstrap SE",
        method=method,
        value_a=point_a,
        value_b=point_b,
        level=level,
        rounds=rounds,
        seed=seed,
        p_percentile=stats.bootstrap_p_value(deltas),
    )


# ---------------------------------------------------------------- AlpacaEval 2
def alpaca_wins(annotations: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-instruction win (preference - 1) and discrete win of a model's annotations (parsed rows
    only), by instruction. A repeated instruction is an error: pairing needs one row each."""
    win, discrete = ae.item_wins([r["preference"] for r in annotations])
    out: tuple[dict[str, float], dict[str, float]] = ({}, {})
    seen: set[str] = set()
    for i, r in enumerate(annotations):
        if r["instruction"] in seen:
            raise ValueError(f"annotation {i}: instruction repeated, cannot pair: {r['instruction'][:80]!r}")
        seen.add(r["instruction"])
        if not math.isnan(win[i]):
            out[0][r["instruction"]], out[1][r["instruction"]] = float(win[i]), float(discrete[i])
    return out


def _check_same_baseline(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> None:
    refs = {r.get("generator_1") for r in [*a, *b]} - {None}
    if len(refs) > 1:
        raise ValueError(f"annotations against different baselines {sorted(refs)}: not comparable")


def alpaca_winrate_paired(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], *, level: float = LEVEL
) -> PairedResult:
    """AlpacaEval 2 win rate (percent): the per-instruction preference difference, paired t.

    Both models' annotations are against the same baseline; an unparsed judgment leaves its
    instruction unpaired (counted in ``n_only_*``).
    """
    _check_same_baseline(a, b)
    wa, wb = alpaca_wins(a)[0], alpaca_wins(b)[0]
    return paired_t(
        {k: 100 * v for k, v in wa.items()},
        {k: 100 * v for k, v in wb.items()},
        level=level,
        method="paired t over per-instruction preferences",
    )


def alpaca_discrete_paired(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], *, level: float = LEVEL
) -> PairedResult:
    """AlpacaEval 2 discrete win rate (percent): difference with a t interval, exact McNemar p."""
    _check_same_baseline(a, b)
    return mcnemar_paired(alpaca_wins(a)[1], alpaca_wins(b)[1], scale=100.0, level=level)


def alpaca_lc_paired_bootstrap(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    support: ae.LCSupport,
    *,
    rounds: int = LC_ROUNDS,
    level: float = LEVEL,
    seed: int = 0,
) -> PairedResult:
    """AlpacaEval 2 LC win rate (percent): paired bootstrap over instructions with the GLM refit.

    Each round draws one resample of the instructions and refits both models' GLMs on it
    (:func:`metrics.alpaca_eval.lc_winrate_resampled`: the draws and fit of ``lc_winrate_bootstrap_ci``
    for the same seed). The official GLM looks instruction difficulty up by row, so both annotation
    lists must hold the same instructions in the same (eval-set) order; an unparsed judgment is a
    row like any other there, as in the official LC. The point delta is the two official LCs.
    """
    return alpaca_lc_against(b, {"a": a}, support, rounds=rounds, level=level, seed=seed)["a"]


def alpaca_lc_against(
    reference: Sequence[Mapping[str, Any]],
    models: Mapping[str, Sequence[Mapping[str, Any]]],
    support: ae.LCSupport,
    *,
    rounds: int = LC_ROUNDS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, PairedResult]:
    """:func:`alpaca_lc_paired_bootstrap` of each model against one reference (delta = model -
    reference), all on the same draws, the reference's bootstrap refits done once for all."""
    order = [r["instruction"] for r in reference]
    for name, rows in models.items():
        _check_same_baseline(rows, reference)
        if [r["instruction"] for r in rows] != order:
            raise ValueError(
                f"LC pairing needs {name!r} and the reference over the same instructions in the "
                "same (eval-set) order: the GLM looks instruction difficulty up by row"
            )
    n = len(order)
    if n < 2:
        raise ValueError("LC needs at least two instructions")
    draws = np.random.default_rng(seed).integers(0, n, size=(rounds, n))

    def run(rows: Sequence[Mapping[str, Any]]) -> tuple[float, np.ndarray]:
        return (
            ae.length_controlled_winrate(rows, support)["length_controlled_winrate"],
            np.array([ae.lc_winrate_resampled(rows, support, d) for d in draws]),
        )

    ref_point, ref_series = run(reference)
    out = {}
    for name, rows in models.items():
        point, series = run(rows)
        out[name] = _bootstrap_result(
            point,
            ref_point,
            series,
            ref_series,
            n,
            0,
            0,
            "paired bootstrap over instructions, GLM refit",
            level,
            rounds,
            seed,
        )
    return out


# ---------------------------------------------------------------- Arena-Hard
def _questions(battles: pd.DataFrame, model: str) -> set[str]:
    return set(battles.question_id[(battles.model_a == model) | (battles.model_b == model)])


def arena_hard_paired_bootstrap(
    battles: pd.DataFrame,
    a: str,
    b: str,
    *,
    baseline: str = ah.DEFAULT_BASELINE,
    rounds: int = ARENA_ROUNDS,
    seed: int = ah.OFFICIAL_SEED,
    level: float = LEVEL,
    features: np.ndarray | None = None,
    ridge: float = 0.0,
    warm_start: bool = True,
) -> PairedResult:
    """Arena-Hard score (percent): paired cluster bootstrap over questions, Bradley-Terry refit.

    Only battles among a, b and the baseline on questions both models have are kept. Each round
    draws questions with replacement (both games of a question, and the x3 repeats of a decisive
    verdict, move together) and refits one BT over both models
    (:func:`metrics.arena_hard.bootstrap_elo`, ``unit="question"``), so both see the same draws;
    delta = 100 (win_rate(elo_a) - win_rate(elo_b)). ``features`` (style control) are rows of
    ``battles``. ``n_paired`` counts questions, ``n_only_*`` questions one model lacks.
    """
    qa, qb = _questions(battles, a), _questions(battles, b)
    if baseline in (a, b):  # the anchor plays every question of the other model; it lacks none
        qa = qb if a == baseline else qa
        qb = qa if b == baseline else qb
    if not qa or not qb:
        raise ValueError(f"no battle for {a if not qa else b!r}")
    keep = (
        battles.model_a.isin({a, b, baseline})
        & battles.model_b.isin({a, b, baseline})
        & battles.question_id.isin(qa & qb)
    ).to_numpy()
    sub = battles[keep].reset_index(drop=True)
    feats = None if features is None else np.asarray(features)[keep]
    elo, _ = ah.fit_bt(sub, baseline=baseline, features=feats, ridge=ridge)
    boot = ah.bootstrap_elo(
        sub,
        baseline=baseline,
        rounds=rounds,
        seed=seed,
        unit="question",
        features=feats,
        ridge=ridge,
        warm_start=warm_start,
    )
    score = lambda e: 100 * ah.win_rate(e)  # noqa: E731
    n = len(qa & qb)
    return _bootstrap_result(
        float(score(elo[a])),
        float(score(elo[b])),
        score(boot[a].to_numpy()),
        score(boot[b].to_numpy()),
        n,
        len(qa) - n,
        len(qb) - n,
        "paired cluster bootstrap over questions, Bradley-Terry refit",
        level,
        rounds,
        seed,
    )


# ---------------------------------------------------------------- MT-Bench
def mt_bench_scores(verdicts: Sequence[Verdict], model: str) -> dict[tuple[str, int], float]:
    """(question id, turn) -> rating of a model's parsed MT-Bench verdicts (metrics.mt_bench records)."""
    out: dict[tuple[str, int], float] = {}
    for v in verdicts:
        if v.meta["model"] == model and v.status == "ok":
            key = (str(v.meta["question_id"]), int(v.meta["turn"]))
            if key in out:
                raise ValueError(f"two ratings of {model!r} for question {key[0]} turn {key[1]}")
            out[key] = float(v.value)  # type: ignore[arg-type]
    return out


def mt_bench_paired(
    a: Mapping[tuple[str, int], float],
    b: Mapping[tuple[str, int], float],
    *,
    turn: int | None = None,
    level: float = LEVEL,
) -> PairedResult:
    """MT-Bench: with ``turn`` None, the per-question difference of the mean over the turns both
    models have (the cluster is the question), t over questions; with ``turn`` 1 or 2, the
    per-question difference on that turn. Keys are (question id, turn)."""
    if turn is not None:
        pick = lambda m: {q: v for (q, t), v in m.items() if t == turn}  # noqa: E731
        return paired_t(pick(a), pick(b), level=level, method=f"paired t over questions, turn {turn}")
    return clustered_paired_t(a, b, lambda k: k[0], level=level, method="paired t over questions (mean of both turns)")
