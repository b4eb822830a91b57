"""Each benchmark's floor and length confound, as notes beside compare's table (``controls: [null, longest]``).

The floor is the score of the ``null-control`` row (a constant answer through the same judge,
``evalharness.tasks.controls``); the confound is each row's ``length_confound`` (the correlation of the judge's
verdicts with the length difference). Both are scores like any other and have their own columns; these notes
say what they mean next to the benchmark's headline column.
"""

from __future__ import annotations

from typing import Any

from evalharness.tasks.controls import NULL_MODEL

CONTROL_METRICS = ("length_confound", "length_ruler", "judge_agreement", "judge_kappa")


def floor_notes(table: Any) -> list[str]:
    """One note per benchmark column with a floor, and one per task with a length confound (``compare.Table``)."""
    notes: list[str] = []
    nulls = [i for i, e in enumerate(table.rows) if e.model == NULL_MODEL]
    for j, col in enumerate(table.columns):
        cells = [table.cells.get((i, j)) for i in nulls]
        values = [c.score.value for c in cells if c is not None and c.score.value is not None]
        if col.metric not in CONTROL_METRICS and values:
            notes.append(
                f"floor of {col.label}: {values[0]:.1f} ({NULL_MODEL}: one constant answer, judged by the same judge)"
            )
    for j, col in enumerate(table.columns):
        if col.metric != "length_confound":
            continue
        shown = [
            f"{table.rows[i].model} {c.score.value:+.2f}"
            + (f" [{c.score.ci_low:+.2f}, {c.score.ci_high:+.2f}]" if c.score.ci_low is not None else "")
            for i in range(len(table.rows))
            if (c := table.cells.get((i, j))) is not None and c.score.value is not None
        ]
        if shown:
            notes.append(f"length confound of {col.task} (r of verdict with length difference): " + "; ".join(shown))
    return notes
