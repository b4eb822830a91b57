"""Anytime-valid confidence sequences for the mean of bounded per-item differences, and the sequential gate.

The confidence sequence is the predictable plug-in empirical-Bernstein (PrPl-EB) one of Waudby-Smith &
Ramdas (2023), "Estimating means of bounded random variables by betting", JRSS-B 86(1), Theorem 2 with
eqs. (13)-(15): for X_i in [0, 1],

    mu_t = (1/2 + sum_{i<=t} X_i) / (t + 1),   s2_t = (1/4 + sum_{i<=t} (X_i - mu_i)^2) / (t + 1)
    lambda_t = min(sqrt(2 log(1/a) / (s2_{t-1} t log(1 + t))), c),   c = 1/2
    v_i = 4 (X_i - mu_{i-1})^2,   psi(l) = (-log(1 - l) - l) / 4
    bound_t = sum lambda_i X_i / sum lambda_i  -/+  (log(1/a) + sum v_i psi(lambda_i)) / sum lambda_i

Each side is one-sided at its own level ``a`` (the paper's two-sided form splits a into a/2 + a/2); the
running intersection (max of lower bounds, min of upper bounds) is kept, which stays valid. It holds
simultaneously over every t, so a gate may look after every chunk and stop when it likes, and it needs only
the bounds of the differences: no normality, no variance known in advance. Closed form and vectorised,
so a simulation of thousands of sequences takes milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FAIL, PASS, INCONCLUSIVE = "FAIL", "PASS", "INCONCLUSIVE"
TRUNCATION = 0.5  # the paper's c: lambda never above 1/2


def _side(z: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(weighted centre, radius) of the one-sided PrPl-EB bound at level ``alpha`` for z in [0, 1]."""
    n = z.shape[-1]
    t = np.arange(1, n + 1, dtype=float)
    log_a = math.log(1 / alpha)
    mu = (0.5 + np.cumsum(z, axis=-1)) / (t + 1)
    mu_prev = np.concatenate([np.full(z.shape[:-1] + (1,), 0.5), mu[..., :-1]], axis=-1)
    s2 = (0.25 + np.cumsum((z - mu) ** 2, axis=-1)) / (t + 1)
    s2_prev = np.concatenate([np.full(z.shape[:-1] + (1,), 0.25), s2[..., :-1]], axis=-1)
    lam = np.minimum(np.sqrt(2 * log_a / (s2_prev * t * np.log1p(t))), TRUNCATION)
    psi = (-np.log1p(-lam) - lam) / 4
    v = 4 * (z - mu_prev) ** 2
    sum_lam = np.cumsum(lam, axis=-1)
    centre = np.cumsum(lam * z, axis=-1) / sum_lam
    radius = (log_a + np.cumsum(v * psi, axis=-1)) / sum_lam
    return centre, radius


def confidence_sequence(
    x: np.ndarray, lo: float, hi: float, *, alpha_lower: float, alpha_upper: float
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds after each item (last axis) on the mean of ``x`` in [lo, hi]: with probability at
    least 1 - alpha_lower the true mean is above every lower bound at once, and likewise for the upper side."""
    if not hi > lo:
        raise ValueError(f"bounds [{lo}, {hi}]: need lo < hi")
    x = np.asarray(x, dtype=float)
    if x.shape[-1] == 0:
        raise ValueError("no item")
    if np.any(x < lo - 1e-9) or np.any(x > hi + 1e-9):
        raise ValueError(f"values outside their bounds [{lo}, {hi}]")
    z = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    c_lo, r_lo = _side(z, alpha_lower)
    c_hi, r_hi = _side(z, alpha_upper)
    lower = np.maximum.accumulate(np.clip(c_lo - r_lo, 0.0, 1.0), axis=-1)
    upper = np.minimum.accumulate(np.clip(c_hi + r_hi, 0.0, 1.0), axis=-1)
    return lo + (hi - lo) * lower, lo + (hi - lo) * upper


@dataclass(frozen=True)
class SequentialResult:
    """The sequential gate's answer on one ordered series of oriented per-item changes (+ is better).

    ``n_used`` items were judged when it stopped (a multiple of the chunk, or all ``n_total``); ``lower`` /
    ``upper`` the confidence sequence then; ``reason`` why it stopped."""

    decision: str
    n_used: int
    n_total: int
    mean: float
    lower: float
    upper: float
    reason: str

    @property
    def share_used(self) -> float:
        return self.n_used / self.n_total


def checkpoints(n_total: int, chunk: int) -> list[int]:
    """The item counts after which the gate looks: every ``chunk`` items, and the last item."""
    if chunk < 1:
        raise ValueError(f"chunk {chunk}: need at least 1")
    return sorted({*range(chunk, n_total, chunk), n_total})


def _futile(mean: float, lower: float, upper: float, t: int, n: int, margin: float) -> bool:
    """Neither side reachable by the end, even if the items left averaged the optimistic end of the current
    sequence and the radius shrank as sqrt(log(1+t) / t) (the PrPl-EB rate). A heuristic; it only ever stops
    with INCONCLUSIVE, so it cannot add a false FAIL or a false PASS."""
    if t >= n:
        return True
    shrink = math.sqrt((math.log1p(n) / n) / (math.log1p(t) / t))
    radius = (upper - lower) / 2 * shrink
    best_pass = (t * mean + (n - t) * upper) / n - radius  # the final lower bound at best
    best_fail = (t * mean + (n - t) * lower) / n + radius  # the final upper bound at best
    return best_pass < -margin and best_fail >= 0


def sequential_gate(
    change: np.ndarray,
    lo: float,
    hi: float,
    *,
    margin: float = 0.0,
    chunk: int = 50,
    alpha_fail: float = 0.05,
    alpha_pass: float = 0.025,
    futility: bool = True,
) -> SequentialResult:
    """Feed the oriented per-item changes (in their order) chunk by chunk; stop at the first look where
    FAIL (the upper bound is below 0: a drop, one-sided at ``alpha_fail``) or PASS (the lower bound clears
    -``margin``, one-sided at ``alpha_pass``) holds, FAIL first, as the fixed-n gate: its one-sided drop
    test at alpha and its 95% CI's lower end. INCONCLUSIVE at the end, or earlier when neither side can be
    reached (``futility``)."""
    change = np.asarray(change, dtype=float)
    n = change.size
    lower, upper = confidence_sequence(change, lo, hi, alpha_lower=alpha_pass, alpha_upper=alpha_fail)
    means = np.cumsum(change) / np.arange(1, n + 1)
    for t in checkpoints(n, chunk):
        res = look(float(means[t - 1]), float(lower[t - 1]), float(upper[t - 1]), t, n, margin, futility=futility)
        if res is not None:
            return res
    raise AssertionError("unreachable: the last look decides")


def look(
    mean: float, lower: float, upper: float, t: int, n: int, margin: float, *, futility: bool = True
) -> SequentialResult | None:
    """The gate's answer after ``t`` of ``n`` items with the sequence at [lower, upper]; None: go on."""
    if upper < 0:
        return SequentialResult(FAIL, t, n, mean, lower, upper, f"upper bound {upper:+.4g} < 0 after {t} of {n}")
    if lower >= -margin:
        why = f"lower bound {lower:+.4g} >= -{margin:g} after {t} of {n}"
        return SequentialResult(PASS, t, n, mean, lower, upper, why)
    if t >= n or (futility and _futile(mean, lower, upper, t, n, margin)):
        why = "all items used" if t >= n else f"neither side reachable in the {n - t} items left"
        return SequentialResult(INCONCLUSIVE, t, n, mean, lower, upper, why)
    return None
