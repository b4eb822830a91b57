"""Human-readable tables of scores (rich), one row per model and metric."""

from __future__ import annotations

import math
from typing import Any

from .records import Score


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def scores_table(scores: list[Score], title: str = "") -> Any:
    """A rich Table: model, metric, mean, standard error, 95% CI, n, skipped, judge."""
    from rich.table import Table

    t = Table(title=title or None, show_lines=False)
    many_tasks = len({s.task for s in scores}) > 1
    if many_tasks:
        t.add_column("task", no_wrap=True)
    for col, kw in (("model", {"no_wrap": True}), ("metric", {"no_wrap": True}), ("mean", {"justify": "right"}),
                    ("± SE", {"justify": "right"}), ("95% CI", {"justify": "right", "no_wrap": True}),
                    ("n", {"justify": "right"}), ("skipped", {"justify": "right"}), ("judge", {})):
        t.add_column(col, **kw)
    for s in scores:
        arrow = {True: " ↑", False: " ↓"}.get(s.higher_is_better, "")
        ci = f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]" if s.ci_low is not None else "—"
        digits = 1 if s.metric == "length" else 4
        t.add_row(*([s.task] if many_tasks else []), s.model, s.metric + arrow, _fmt(s.value, digits), _fmt(s.stderr, digits), ci if digits == 4 else
                  f"[{_fmt(s.ci_low, 1)}, {_fmt(s.ci_high, 1)}]", str(s.n), str(s.n_skipped), s.judge_id)
    return t


def print_scores(scores: list[Score], title: str = "") -> None:
    from rich.console import Console
    console = Console()
    if not console.is_terminal:  # pipes and CI logs: don't squeeze the table into 80 columns
        console = Console(width=160)
    console.print(scores_table(scores, title))
