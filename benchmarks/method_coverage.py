"""Coverage of method-level 95% CIs by simulation: `python benchmarks/method_coverage.py` (docs/methods.md).

Each simulated experiment trains two methods with S seeds each and scores every checkpoint on the same n
prompts: y[s, i] = mu + seed[s] + prompt[i] + (method x prompt)[i] + residual[s, i] (seed x prompt and judge
noise), all Gaussian, with known SDs and a known true difference of the method means. The true method mean
is over the populations of seeds and prompts. Per S it prints how often each interval covers the truth:

* method mean, method diff: ``core.method_stats`` (two-way seed x prompt variance, Satterthwaite t);
* checkpoint mean, checkpoint diff: what a one-seed table offers, a t interval over prompts of seed 0
  (for the difference, seed 0 of a against seed 0 of b, paired over prompts);
* bootstrap diff: a hierarchical percentile bootstrap (seeds resampled within each method, prompts
  resampled once for both, 400 rounds).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evalharness.core.method_stats import method_difference, method_mean  # noqa: E402

# (name, seed SD, prompt SD, method x prompt SD, residual SD) on an AlpacaEval-like percent scale, n = 300
SCENARIOS = {
    "issue": (1.5, 20.0, 5.0, 15.0),  # seed-to-seed SD 1.5 points: re-runs 1-3 points apart
    "seed-heavy": (3.0, 20.0, 5.0, 15.0),
    "prompt-heavy": (0.5, 20.0, 5.0, 15.0),
    "no seed effect": (0.0, 20.0, 5.0, 15.0),
}
PROMPTS, DELTA, MU = 300, 2.0, 50.0


def simulate(
    seeds: int, sds: tuple[float, float, float, float], *, experiments: int = 2000, rounds: int = 0, seed: int = 0
) -> dict[str, float]:
    """Coverage of each interval (keys as in the module docstring) over ``experiments`` simulated experiments;
    the bootstrap only when ``rounds`` > 0."""
    sd_seed, sd_prompt, sd_mp, sd_res = sds
    rng = np.random.default_rng(seed)
    r, n = experiments, PROMPTS
    shared = rng.normal(0, sd_prompt, (r, 1, n))

    def method(mu: float) -> np.ndarray:
        own = rng.normal(0, sd_mp, (r, 1, n))
        return mu + rng.normal(0, sd_seed, (r, seeds, 1)) + shared + own + rng.normal(0, sd_res, (r, seeds, n))

    a, b = method(MU + DELTA), method(MU)
    m, d = method_mean(a), method_difference(a, b)
    t = st.t.ppf(0.975, n - 1)
    x, one = a[:, 0, :], a[:, 0, :] - b[:, 0, :]
    out = {
        "method mean": float(np.mean((m.ci_low <= MU + DELTA) & (MU + DELTA <= m.ci_high))),
        "method diff": float(np.mean((d.ci_low <= DELTA) & (DELTA <= d.ci_high))),
        "checkpoint mean": float(np.mean(np.abs(x.mean(-1) - MU - DELTA) <= t * x.std(-1, ddof=1) / math.sqrt(n))),
        "checkpoint diff": float(np.mean(np.abs(one.mean(-1) - DELTA) <= t * one.std(-1, ddof=1) / math.sqrt(n))),
        "median df": float(np.median(d.df)),
    }
    if rounds:
        out["bootstrap diff"] = bootstrap_coverage(a, b, rounds, rng)
    return out


def bootstrap_coverage(a: np.ndarray, b: np.ndarray, rounds: int, rng: np.random.Generator) -> float:
    """Coverage of the hierarchical percentile bootstrap of the difference: per round, each method's seeds drawn
    with replacement, the prompts drawn once for both (paired); the mean via draw counts."""
    r, s, n = a.shape
    counts = lambda k, size: np.apply_along_axis(np.bincount, 1, rng.integers(0, k, (rounds, size)), minlength=k)  # noqa: E731
    wa, wb, wp = counts(s, s) / s, counts(s, s) / s, counts(n, n) / n
    hits = 0
    for lo in range(0, r, 100):
        deltas = np.einsum("bs,rsn,bn->rb", wa, a[lo : lo + 100], wp) - np.einsum(
            "bs,rsn,bn->rb", wb, b[lo : lo + 100], wp
        )
        q = np.quantile(deltas, [0.025, 0.975], axis=1)
        hits += int(np.sum((q[0] <= DELTA) & (DELTA <= q[1])))
    return hits / r


def main() -> None:
    cols = ["method mean", "method diff", "checkpoint mean", "checkpoint diff", "bootstrap diff", "median df"]
    print(f"coverage of 95% CIs; {PROMPTS} prompts, true difference {DELTA}; 2000 experiments (bootstrap: 1000)")
    print(f"| scenario (SD seed/prompt/method x prompt/residual) | seeds | {' | '.join(cols)} |")
    print("|---|---" + "|---" * len(cols) + "|")
    for name, sds in SCENARIOS.items():
        for seeds in (2, 3, 5):
            cov = simulate(seeds, sds)
            cov["bootstrap diff"] = simulate(seeds, sds, experiments=1000, rounds=400, seed=1)["bootstrap diff"]
            cells = [f"{cov[c]:.1f}" if c == "median df" else f"{100 * cov[c]:.1f}%" for c in cols]
            print(f"| {name} ({'/'.join(f'{v:g}' for v in sds)}) | {seeds} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
