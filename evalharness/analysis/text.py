"""Tables for people: one renderer for every table the commands print (scores, comparisons, frontiers, trends)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from evalharness.core.records import Score


def _fmt(x: float | None, digits: int = 4) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _latex(text: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("Δ", r"$\Delta$"),
        ("↑", r"$\uparrow$"),
        ("↓", r"$\downarrow$"),
        ("—", "--"),
    ):
        text = text.replace(a, b)
    return text


def render_grid(
    head: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    fmt: str = "table",
    left: int = 1,
    notes: Sequence[str] = (),
    title: str = "",
    width: int | None = None,
) -> str:
    """A table of strings as text: ``table`` (a rich box table), ``markdown`` or ``latex``; the first ``left``
    columns align left, the numbers right; ``notes`` follow the table. Every command prints tables through it."""
    if fmt == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(([f"**{title}**", ""] if title else []) + lines + [""] + [f"_{n}_" for n in notes]) + "\n"
    if fmt == "latex":
        lines = [
            r"\begin{tabular}{" + "l" * left + "r" * (len(head) - left) + "}",
            r"\toprule",
            " & ".join(_latex(h) for h in head) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(_latex(x) for x in r) + r" \\" for r in body]
        return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in notes]) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown table format {fmt!r}")
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title or None, show_lines=False)
    for k, h in enumerate(head):
        t.add_column(h, justify="left" if k < left else "right", overflow="fold")
    for r in body:
        t.add_row(*r)
    console = Console(record=True, width=width or max(160, 18 * len(head)))
    with console.capture() as cap:
        console.print(t)
        for n in notes:
            console.print(n, soft_wrap=True)
    return cap.get()


def score_grid(scores: list[Score]) -> tuple[list[str], list[list[str]], int]:
    """(head, rows, left columns) of a run's scores: model, metric, mean, SE, 95% CI, n, skipped, judge."""
    many_tasks = len({s.task for s in scores}) > 1
    head = ["task"] * many_tasks + ["model", "metric", "mean", "± SE", "95% CI", "n", "skipped", "judge"]
    body = []
    for s in scores:
        arrows: dict[bool | None, str] = {True: " ↑", False: " ↓"}
        arrow = arrows.get(s.higher_is_better, "")
        digits = 1 if s.metric == "length" else 4
        ci = f"[{_fmt(s.ci_low, digits)}, {_fmt(s.ci_high, digits)}]" if s.ci_low is not None else "—"
        body.append(
            [s.task] * many_tasks
            + [
                s.model,
                s.metric + arrow,
                _fmt(s.value, digits),
                _fmt(s.stderr, digits),
                ci,
                str(s.n),
                str(s.n_skipped),
                s.judge_id,
            ]
        )
    return head, body, 2 + many_tasks


def print_scores(scores: list[Score], title: str = "") -> None:
    """A run's scores on stdout, one row per model and metric."""
    import shutil
    import sys

    head, body, left = score_grid(scores)
    # pipes and CI logs get a wide table, not one squeezed into 80 columns
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    sys.stdout.write(render_grid(head, body, left=left, title=title, width=width))
