"""The judge-reliability section of ``compare`` and the HTML report: the judge's own figures per task and row
(``evalharness.tasks.reliability``), apart from the model metrics, whose columns they never share."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from evalharness.analysis.text import render_grid
from evalharness.core.records import Score
from evalharness.tasks.reliability import RELIABILITY_METRICS

LABELS = {
    "position_consistency": "position consistency",
    "repeat_agreement": "repeat agreement",
    "repeat_kappa": "repeat κ",
    "parse_failure_rate": "unparsed",
    "error_rate": "failed",
}
NOTE = (
    "judge reliability: describes the judge, not the model (never gated); 95% CIs over items. Position "
    "consistency: both orders agree; repeat agreement and κ: a seeded subsample judged again (rejudge:)"
)


def _cell(s: Score | None) -> str:
    if s is None or s.value is None:
        return "—"
    ci = "" if s.ci_low is None or s.ci_high is None else f" [{s.ci_low:.2f}, {s.ci_high:.2f}]"
    return f"{s.value:.2f}{ci} n={s.n}"


def reliability_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Per row (anything with ``label`` and ``scores``) and task: the judge and its reliability Scores."""
    out = []
    for e in rows:
        by_task: dict[str, dict[str, Score]] = {}
        for s in e.scores:
            if s.metric in RELIABILITY_METRICS and s.extra.get("reliability"):
                by_task.setdefault(s.task, {})[s.metric] = s
        for task, scores in by_task.items():
            judge = next(iter(scores.values())).judge_id
            out.append({"model": e.label, "task": task, "judge": judge, "scores": scores})
    return out


def reliability_section(rows: Sequence[Any], fmt: str = "table") -> str:
    """compare's judge-reliability table ('' when no row has a judge-reliability figure)."""
    found = reliability_rows(rows)
    if not found:
        return ""
    head = ["model", "task", "judge", *(LABELS[m] for m in RELIABILITY_METRICS)]
    body = [
        [r["model"], r["task"], r["judge"], *(_cell(r["scores"].get(m)) for m in RELIABILITY_METRICS)] for r in found
    ]
    return render_grid(head, body, fmt=fmt, left=3, notes=[NOTE], title="Judge reliability", width=240)


def reliability_data(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """The section as JSON-ready rows (the HTML report's data)."""
    nan = lambda x: None if isinstance(x, float) and math.isnan(x) else x  # noqa: E731
    return (
        [
            {
                "model": r["model"],
                "task": r["task"],
                "judge": r["judge"],
                **{m: [nan(s.value), nan(s.ci_low), nan(s.ci_high), s.n] for m, s in r["scores"].items()},
            }
            for r in found
        ]
        if (found := reliability_rows(rows))
        else []
    )
