"""The length confound of AlpacaEval 2's judge on its official annotations (docs/ensembles.md's table).

For each model in ``<benchdata>/alpaca_eval/results/*/weighted_alpaca_eval_gpt4_turbo/annotations.json`` (GPT-4
Turbo judging each model against gpt4_1106_preview): the win rate (mean preference, as percent), the length ruler
(percent of instructions where the model's answer is longer than the baseline's: what a length-only judge
would give), and the correlation of the judge's per-item preference (0..1, the model's side) with the length
difference in characters (model minus baseline): Pearson's r with its Fisher-z 95% interval, Spearman's rho.
Pooled: every model's items together; its interval is a bootstrap over instructions (an instruction's items are
one unit, 1000 rounds, seed 0), since one instruction appears once per model. The computation is
``evalharness.tasks.controls.correlation``, the one a run's ``controls: [longest]`` uses.

    python benchmarks/length_confound.py [BENCHDATA]     (default ../shared/benchdata)
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from evalharness.tasks.controls import correlation

BASELINE = "gpt4_1106_preview"


def items(file: Path) -> list[tuple[str, float, float]]:
    """(instruction, preference for the model in 0..1, length difference model - baseline) per scored item."""
    out = []
    for row in json.loads(file.read_text(encoding="utf-8")):
        pref = row.get("preference")
        if pref is None or (isinstance(pref, float) and math.isnan(pref)) or str(pref) in ("", "nan", "None"):
            continue
        out.append((row["instruction"], float(pref) - 1.0, float(len(row["output_2"]) - len(row["output_1"]))))
    return out


def row(name: str, data: list[tuple[str, float, float]], ci: tuple[float, float] | None = None) -> str:
    y, x = [d[1] for d in data], [d[2] for d in data]
    c = correlation(x, y)
    lo, hi = ci or (c["ci_low"], c["ci_high"])
    ruler = 100 * np.mean([1.0 if d > 0 else 0.0 if d < 0 else 0.5 for d in x])
    return (
        f"| {name} | {len(data)} | {100 * np.mean(y):.1f} | {ruler:.1f} | {c['r']:+.3f} [{lo:+.3f}, {hi:+.3f}] "
        f"| {c['spearman']:+.3f} |"
    )


def pooled_ci(data: list[tuple[str, float, float]], rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of r, instructions drawn with replacement (all their items kept)."""
    by: dict[str, list[int]] = {}
    for i, d in enumerate(data):
        by.setdefault(d[0], []).append(i)
    groups = list(by.values())
    x, y = np.array([d[2] for d in data]), np.array([d[1] for d in data])
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(rounds):
        idx = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        rs.append(np.corrcoef(x[idx], y[idx])[0, 1])
    lo, hi = np.quantile(rs, [0.025, 0.975])
    return float(lo), float(hi)


def main(root: Path) -> None:
    folder = root / "alpaca_eval" / "results"
    print("| model | n | win rate % | length ruler % | Pearson r, 95% CI | Spearman |")
    print("|---|---|---|---|---|---|")
    pooled: list[tuple[str, float, float]] = []
    for model_dir in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        file = model_dir / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
        if not file.is_file() or model_dir.name == BASELINE:
            continue
        data = items(file)
        print(row(model_dir.name, data))
        pooled += data
    print(row("pooled (bootstrap CI over instructions)", pooled, pooled_ci(pooled)))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "benchdata")
