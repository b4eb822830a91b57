"""Method-level statistics: a training method's mean over seeds and prompts, and two methods' difference.

A method (algorithm + hyperparameters + step) is trained with S seeds, and each checkpoint answers the same
n prompts. The model (a two-way random-effects layout, seeds crossed with prompts):

    y[s, i] = mu + seed[s] + prompt[i] + (seed x prompt)[s, i]

The target is mu: the mean over the population of seeds *and* of prompts. The grand mean's variance is
sigma2_seed / S + sigma2_prompt / n + sigma2_inter / (S n), estimated from the two-way ANOVA mean squares:

    var = s2(seed means) / S + s2(prompt means over seeds) / n - MS_residual / (S n)

(the first two terms each hold the interaction once; the third removes the double count). It is floored at
the larger of the first two, each of which alone has an expectation below the true variance. Its degrees of
freedom are Satterthwaite's over the three mean squares (at most S - 1 when the seed term dominates), and the
CI and p-value use Student's t with them: at 2-5 seeds a normal or bootstrap interval is far too narrow.

For two methods a and b on shared prompts, the prompt main effect cancels item by item; seeds are
independent between methods (seed 0 of DPO and seed 0 of SimPO are not paired):

    var = s2(a's seed means) / Sa + s2(b's seed means) / Sb + s2(per-prompt a - b of seed means) / n
          - MS_res(a) / (Sa n) - MS_res(b) / (Sb n),

floored at max(first two, third), Satterthwaite df. Every function takes arrays with leading batch axes
(..., seeds, prompts), so a simulation of thousands of experiments is one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

LEVEL = 0.95


@dataclass(frozen=True)
class SeedPromptResult:
    """An estimate with its SE, Satterthwaite df and t interval; ``p_value`` is for H0 estimate = 0 (a
    difference). ``var_seed`` (seed-to-seed) and ``var_prompt`` (prompt sampling) are the two variance terms
    before the correction for the interaction they both hold."""

    estimate: Any  # an array over the batch axes, or a float
    se: Any
    df: Any
    ci_low: Any
    ci_high: Any
    p_value: Any
    var_seed: Any
    var_prompt: Any


def _terms(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seed means, prompt means (over seeds), and the residual mean square / (S n) with its df."""
    s, n = y.shape[-2], y.shape[-1]
    if s < 2 or n < 2:
        raise ValueError(f"a method-level estimate needs at least 2 seeds and 2 prompts, got {s} and {n}")
    seed_means = y.mean(axis=-1)
    prompt_means = y.mean(axis=-2)
    resid = y - seed_means[..., :, None] - prompt_means[..., None, :] + y.mean(axis=(-2, -1))[..., None, None]
    ms_res = (resid**2).sum(axis=(-2, -1)) / ((s - 1) * (n - 1))
    return seed_means, prompt_means, ms_res / (s * n), np.asarray(float((s - 1) * (n - 1)))


def _finish(
    estimate: np.ndarray,
    pos: list[tuple[np.ndarray, float]],
    neg: list[tuple[np.ndarray, float]],
    floors: tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]],
    level: float,
) -> SeedPromptResult:
    """Combine variance terms (value, df): sum(pos) - sum(neg), floored; Satterthwaite df; t interval and p."""
    raw = sum(v for v, _ in pos) - sum(v for v, _ in neg)
    spread = sum(v**2 / d for v, d in pos + neg)
    with np.errstate(divide="ignore", invalid="ignore"):  # no variation at all (every length at the cap): 0/0
        sat = np.where(spread > 0, raw**2 / np.where(spread > 0, spread, 1.0), 1.0)
    (fa, dfa), (fb, dfb) = floors
    floor_v, floor_df = np.maximum(fa, fb), np.where(fa >= fb, dfa, dfb)
    use_floor = raw < floor_v
    var = np.where(use_floor, floor_v, raw)
    df = np.maximum(np.where(use_floor, floor_df, sat), 1.0)
    se = np.sqrt(var)
    half = _st.t.ppf(0.5 + level / 2, df) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        tstat = np.abs(estimate) / se
    p = np.where(se > 0, 2 * _st.t.sf(tstat, df), np.where(estimate == 0, 1.0, 0.0))
    return SeedPromptResult(
        estimate=estimate,
        se=se,
        df=df,
        ci_low=estimate - half,
        ci_high=estimate + half,
        p_value=p,
        var_seed=fa,
        var_prompt=fb,
    )


def method_mean(y: np.ndarray, level: float = LEVEL) -> SeedPromptResult:
    """The mean over seeds and prompts of ``y`` (..., seeds, prompts), with both sources of variance."""
    y = np.asarray(y, dtype=float)
    s, n = y.shape[-2], y.shape[-1]
    seed_means, prompt_means, v_res, df_res = _terms(y)
    v_seed = (seed_means.var(axis=-1, ddof=1) / s, float(s - 1))
    v_prompt = (prompt_means.var(axis=-1, ddof=1) / n, float(n - 1))
    return _finish(y.mean(axis=(-2, -1)), [v_seed, v_prompt], [(v_res, float(df_res))], (v_seed, v_prompt), level)


def method_difference(ya: np.ndarray, yb: np.ndarray, level: float = LEVEL) -> SeedPromptResult:
    """Mean of a minus mean of b, on shared prompts (the last axes align), seeds independent between them."""
    ya, yb = np.asarray(ya, dtype=float), np.asarray(yb, dtype=float)
    if ya.shape[-1] != yb.shape[-1]:
        raise ValueError(f"the two methods must share their prompts: {ya.shape[-1]} vs {yb.shape[-1]}")
    (sa, n), sb = ya.shape[-2:], yb.shape[-2]
    ma, pa, ra, dfa = _terms(ya)
    mb, pb, rb, dfb = _terms(yb)
    va = ma.var(axis=-1, ddof=1) / sa
    vb = mb.var(axis=-1, ddof=1) / sb
    vd = (pa - pb).var(axis=-1, ddof=1) / n
    seeds = (va + vb, float(min(sa, sb) - 1))  # the floor's df: conservative, the smaller seed count
    return _finish(
        ya.mean(axis=(-2, -1)) - yb.mean(axis=(-2, -1)),
        [(va, float(sa - 1)), (vb, float(sb - 1)), (vd, float(n - 1))],
        [(ra, float(dfa)), (rb, float(dfb))],
        (seeds, (vd, float(n - 1))),
        level,
    )
