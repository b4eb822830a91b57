"""Small, exact statistics shared by judges, KL, aggregation and paired comparisons."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from scipy import stats as _st
from scipy.optimize import brentq as _brentq


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, standard error, and a Student-t confidence interval of the mean.

    With one value the SE and CI are undefined and returned as NaN (never a fake zero width).
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        raise ValueError("mean_ci of an empty sample")
    m = float(x.mean())
    if n < 2:
        return m, math.nan, math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(n))
    h = float(_st.t.ppf(0.5 + level / 2, n - 1)) * se
    return m, se, m - h, m + h


def wilson_ci(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson 1927): unlike the normal interval it stays inside
    [0, 1] and keeps a width at 0 or n successes. ``successes`` may be fractional (a tie counted as half:
    the half-counts have at most a Bernoulli's variance, so the interval is, if anything, conservative)."""
    if n <= 0:
        return math.nan, math.nan
    z = float(_st.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float],
    *,
    rounds: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic`` over resampled rows (axis 0)."""
    x = np.asarray(values)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(rounds, len(x)))
    stats = np.array([statistic(x[i]) for i in idx])
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def cluster_means(values: Sequence[float], clusters: Sequence[Hashable]) -> dict[Hashable, float]:
    """Mean of ``values`` within each cluster, in first-appearance order of the clusters.

    The unit of a CI is the cluster (a prompt's samples, a question's turns or games), so values are
    averaged within it first and the clusters then count equally.
    """
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    sums: dict[Hashable, list[float]] = {}
    for v, c in zip(values, clusters):
        s = sums.setdefault(c, [0.0, 0])
        s[0] += float(v)
        s[1] += 1
    return {c: s / k for c, (s, k) in sums.items()}


def cluster_mean_ci(
    values: Sequence[float], clusters: Sequence[Hashable], level: float = 0.95
) -> tuple[float, float, float, float, int]:
    """Mean over clusters of per-cluster means, its SE and t interval (df = clusters - 1), and the
    number of clusters."""
    means = cluster_means(values, clusters)
    return (*mean_ci(list(means.values()), level), len(means))


def t_p_value(mean: float, se: float, df: float) -> float:
    """Two-sided p-value of H0: mean = 0 for a t statistic mean / se with ``df`` degrees of freedom
    (``math.inf``: the normal, a z test).

    A zero SE (all differences equal) gives 1 for a zero mean and 0 otherwise, where t is 0/0 or
    infinite; an undefined SE (one item) gives NaN.
    """
    if math.isnan(se) or df < 1:
        return math.nan
    if se == 0:
        return 1.0 if mean == 0 else 0.0
    z = abs(mean / se)
    return float(2 * (_st.norm.sf(z) if math.isinf(df) else _st.t.sf(z, df)))


def mcnemar_exact(n_a_only: int, n_b_only: int) -> float:
    """Exact two-sided McNemar p-value: a binomial(n, 1/2) test on the discordant pairs.

    ``n_a_only`` pairs favour a, ``n_b_only`` favour b; p = min(1, 2 P(X <= min(n_a_only, n_b_only)))
    with X ~ Bin(n_a_only + n_b_only, 1/2) (concordant pairs carry no information). No discordant
    pair gives 1.
    """
    n = n_a_only + n_b_only
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * _st.binom.cdf(min(n_a_only, n_b_only), n, 0.5)))


def _adjust(pvalues: Sequence[float | None], holm: bool) -> list[float]:
    p = np.array([math.nan if v is None else float(v) for v in pvalues], dtype=float)
    out = np.full(p.size, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order]
    if holm:  # step-down: max over j <= i of (m - j + 1) p_(j)
        adj = np.maximum.accumulate((m - np.arange(m)) * ranked)
    else:  # step-up: min over j >= i of m p_(j) / j
        adj = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out.tolist()


def holm(pvalues: Sequence[float | None]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error; for gates), in input order.

    Missing p-values (None or NaN) stay NaN and do not count towards the number of tests.
    """
    return _adjust(pvalues, holm=True)


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate; for screens), in input order.

    Missing p-values (None or NaN) stay NaN and do not count towards the number of tests.
    """
    return _adjust(pvalues, holm=False)


def mde_paired_t(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided one-sample (paired) t test, exact noncentral t.

    The smallest true mean difference delta whose test (df = n - 1, level ``alpha``) rejects with
    probability ``power``: P(|T| > t_crit) = power with T ~ noncentral t(n - 1, delta sqrt(n) / sd),
    both tails counted. ``sd`` is the SD of the per-item differences. NaN for n < 2; 0 when sd is 0.
    """
    if n < 2 or math.isnan(sd):
        return math.nan
    return mde_t(sd / math.sqrt(n), n - 1, alpha=alpha, power=power)


def mde_t(se: float, df: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided t test with standard error ``se`` and ``df`` degrees of
    freedom (fractional for a Satterthwaite df): delta = nc * se where the noncentral t(df, nc) passes
    the critical value with probability ``power``, both tails counted. NaN for df < 1; 0 when se is 0."""
    if math.isnan(se) or math.isnan(df) or df < 1:
        return math.nan
    if se == 0:
        return 0.0
    crit = float(_st.t.ppf(1 - alpha / 2, df))

    def achieved(nc: float) -> float:
        far = float(_st.nct.cdf(-crit, df, nc))  # the opposite tail; scipy can return NaN for ~0 there
        return float(_st.nct.sf(crit, df, nc)) + (far if math.isfinite(far) else 0.0) - power

    hi = crit + float(_st.norm.ppf(power)) + 1.0
    while achieved(hi) < 0:
        hi *= 2
    return _brentq(achieved, 0.0, hi, xtol=1e-12) * se


def mde_normal(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimum detectable effect of a two-sided z test with standard error ``se``:
    (z_(1 - alpha/2) + z_power) se, the far tail neglected. For bootstrap SEs."""
    if math.isnan(se):
        return math.nan
    return float((_st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)) * se)


def bootstrap_p_value(deltas: Sequence[float] | np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: delta = 0, by inverting the percentile interval.

    p = min(1, 2 min(1 + #{delta* <= 0}, 1 + #{delta* >= 0}) / (B + 1)): the smallest level whose
    percentile CI excludes 0, with the +1 that keeps a finite bootstrap from reporting p = 0. So
    p >= 2 / (B + 1), too coarse for Holm over many tests unless B is large.
    """
    d = np.asarray(deltas, dtype=float)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return math.nan
    below, above = int((d <= 0).sum()), int((d >= 0).sum())
    return float(min(1.0, 2 * (1 + min(below, above)) / (d.size + 1)))
