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
from typing import Any, TypeVar

import numpy as np

from evalharness.core import stats

K = TypeVar("K", bound=Hashable)  # an item key: prompt id, (question, turn), ...
LEVEL, ALPHA, POWER = 0.95, 0.05, 0.8  # 95% CIs; MDE at 80% power, two-sided alpha 0.05


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
def pair_items(a: Mapping[K, float], b: Mapping[K, float]) -> tuple[list[K], int, int]:
    """Keys both mappings have (in a's order), and the counts of keys only a or only b has."""
    common = [k for k in a if k in b]
    return common, len(a) - len(common), len(b) - len(common)


def _t_result(
    xa: Sequence[float] | np.ndarray,
    xb: Sequence[float] | np.ndarray,
    n_only_a: int,
    n_only_b: int,
    method: str,
    level: float,
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
    a: Mapping[K, float], b: Mapping[K, float], *, level: float = LEVEL, method: str = "paired t"
) -> PairedResult:
    """Paired t test of mean(a - b) over the items both have (item id -> score per model)."""
    common, only_a, only_b = pair_items(a, b)
    return _t_result([a[k] for k in common], [b[k] for k in common], only_a, only_b, method, level)


def clustered_paired_t(
    a: Mapping[K, float],
    b: Mapping[K, float],
    cluster: Callable[[K], Hashable],
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
    a: Mapping[K, Sequence[float]], b: Mapping[K, Sequence[float]], *, level: float = LEVEL
) -> PairedResult:
    """Classifier rewards, KL, length: per-prompt mean over each model's samples, then a paired t
    test over prompts (prompt id -> that model's per-sample values). A prompt with no sample is
    absent."""
    means = [{k: float(np.mean(v)) for k, v in m.items() if len(v)} for m in (a, b)]
    return paired_t(means[0], means[1], level=level, method="paired t over per-prompt sample means")


def mcnemar_paired(
    a: Mapping[K, float], b: Mapping[K, float], *, scale: float = 1.0, level: float = LEVEL
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
def bootstrap_result(
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
