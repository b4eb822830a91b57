"""The frontier and the best-checkpoint verdict read the metric's direction from its Score: for a
lower-is-better reward (toxicity) the front, the table, the axis label and "beats SFT" all turn around."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from evalharness.analysis import compare
from evalharness.core.errors import EvalHarnessError
from evalharness.analysis.plot import FrontierPoint, frontier_points, frontier_table, pareto_front, plot_frontier
from test_compare import base_values, sentiment_run, shifted
from test_plot import SFT_SPEC, checkpoint, write_run


def pt(name: str, kl: float, reward: float, hib: bool, algorithm: str = "dpo") -> FrontierPoint:
    return FrontierPoint(name, algorithm, None, None, {}, reward, reward - 0.01, reward + 0.01, kl, kl, kl, name,
                         higher_is_better=hib)


HAND = {"e": (0.5, 0.4), "a": (1.0, 0.5), "h": (1.5, 0.3), "b": (2.0, 0.7), "g": (3.5, 0.2), "g2": (3.5, 0.2),
        "d": (4.0, 0.25)}


def test_lower_is_better_front_on_hand_made_points() -> None:
    low = [pt(n, *v, hib=False) for n, v in HAND.items()]
    # Lower toxicity at no more KL dominates: e beats a (less KL, less toxic), h beats b, g ties g2 (both kept),
    # d has more KL than g and is more toxic.
    assert [p.label for p in pareto_front(low)] == ["e", "h", "g", "g2"]
    high = [pt(n, *v, hib=True) for n, v in HAND.items()]
    assert [p.label for p in pareto_front(high)] == ["e", "a", "b"]
    # An explicit direction overrides the points'; mixing two directions in one plot is refused.
    assert [p.label for p in pareto_front(high, higher_is_better=False)] == ["e", "h", "g", "g2"]
    with pytest.raises(EvalHarnessError, match="mix a higher-is-better and a lower-is-better"):
        pareto_front(low[:2] + high[2:])
    rows = {r["label"]: r for r in frontier_table(low + [pt("i", 0.8, 0.35, False, "ipo")])}
    assert [n for n, r in rows.items() if r["on_front"]] == ["e", "h", "g", "g2", "i"]
    assert [n for n, r in rows.items() if r["on_overall_front"]] == ["e", "h", "g", "g2", "i"]
    assert not rows["a"]["on_front"] and not rows["d"]["on_front"]


def test_a_toxicity_frontier_is_labelled_and_drawn_lower_is_better(tmp_path: Path) -> None:
    results = tmp_path / "results"
    dpo = checkpoint(tmp_path, "dpo-beta0.1-s0", "dpo", 0.1, 8)
    write_run(results, "ev", {SFT_SPEC: (0.5, 0.0), dpo: (0.7, 4.0)}, toxicity=True)
    points, meta = frontier_points(["ev"], reward_metric="toxicity", results_dir=results)
    assert meta["higher_is_better"] is False and all(p.higher_is_better is False for p in points)
    low = [pt(n, *v, hib=False) for n, v in HAND.items()]
    png, svg = plot_frontier(low, meta, tmp_path / "tox")
    text = svg.read_text()
    assert "toxicity (lower is better): alt-profanity-check p(offensive)" in text and png.stat().st_size > 1000


def run_table(root: Path, values: dict[str, dict[str, list[float]]], hib: bool) -> compare.Table:
    path = sentiment_run(root, f"run-{hib}", values, higher_is_better=hib)
    return compare.build_table(compare.run_entries(compare.RunStore(path)), against="sft")


def test_best_checkpoint_on_a_lower_is_better_metric(tmp_path: Path) -> None:
    sft = base_values(prompts=40)
    values = {"sft": sft, "less": shifted(sft, -0.12, 0.02, seed=2), "more": shifted(sft, +0.2, 0.02, seed=3),
              "tiny": shifted(sft, -0.01, 0.002, seed=4)}
    v = compare.best_checkpoint(run_table(tmp_path / "low", values, False), "sentiment")
    assert v is not None and v["best_model"] == "less" and v["beats_sft"] is True and v["k_checkpoints"] == 3
    d = np.array([np.mean(values["less"][p]) - np.mean(sft[p]) for p in sft])
    assert v["paired_delta"]["delta"] == pytest.approx(d.mean()) and v["paired_delta"]["ci_high"] < 0
    assert v["best_reward"] < v["sft_reward"] and "beats SFT" in compare.verdict_line(v)
    # The same numbers read higher-is-better: the rise is now the gain.
    up = compare.best_checkpoint(run_table(tmp_path / "high", values, True), "sentiment")
    assert up is not None and up["best_model"] == "more" and up["beats_sft"] is True
    # Lower, significantly, but by less than SFT's own CI half-width: no claim.
    small = {"sft": sft, "tiny": values["tiny"], "more": values["more"]}
    w = compare.best_checkpoint(run_table(tmp_path / "small", small, False), "sentiment")
    assert w is not None and w["best_model"] == "tiny" and w["paired_delta"]["p_value"] < 1e-6
    assert -w["paired_delta"]["delta"] < w["sft_ci_halfwidth"] and w["beats_sft"] is False
    # Every checkpoint more toxic than SFT: the least bad one is picked and does not beat it.
    worse = {"sft": sft, "more": values["more"], "more2": shifted(sft, +0.05, 0.02, seed=5)}
    x = compare.best_checkpoint(run_table(tmp_path / "worse", worse, False), "sentiment")
    assert x is not None and x["best_model"] == "more2" and x["beats_sft"] is False
