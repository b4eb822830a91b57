"""Stopping a task's judging early: checks the run loop asks between judging chunks, and how a stop is recorded.

A ``StopCheck`` sees what has been judged so far (``JudgingProgress``) and returns a reason to stop, or None.
The run loop asks every check after each chunk and stops the task's judging for that model at the first
reason (the sequential gate of ``analysis.sequential`` is one such check; a budget is another). An optional
``JudgeOrder`` puts the judgments in an order first (a seeded random one, so the judged items are a random
sample). A stop is recorded in the run's manifest (``stopped_early``: task -> model -> reason, judged, total)
and on the scores aggregated over the judged items (``Score.extra['stopped_early']``); the same command
without the checks resumes the run and judges the rest, which clears the mark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from evalharness.core.records import Score
from evalharness.store import RunStore
from evalharness.tasks.base import Pending, Session, Task

STOPPED = "stopped_early"  # the manifest key


@dataclass
class JudgingProgress:
    """One task and model, between two judging chunks: ``judged`` of ``total`` judgments sent this run,
    ``left`` the ones not yet sent; the verdicts so far are in ``store``."""

    store: RunStore
    session: Session
    task: Task
    judged: int
    total: int
    left: list[Pending]


StopCheck = Callable[[JudgingProgress], str | None]
JudgeOrder = Callable[[Task, list[Pending]], list[Pending]]


def first_stop(checks: Sequence[StopCheck], progress: JudgingProgress) -> str | None:
    """The first check's reason to stop, or None to go on."""
    for check in checks:
        reason = check(progress)
        if reason:
            return reason
    return None


def record_stop(store: RunStore, task: str, model: str, stop: dict[str, Any] | None) -> None:
    """Record that ``task`` of ``model`` stopped early (``stop``: reason, judged, total), or clear the mark."""
    marks: dict[str, dict[str, Any]] = dict(store.manifest().get(STOPPED) or {})
    per_task = dict(marks.get(task) or {})
    if stop is None and model not in per_task:
        return
    if stop is None:
        per_task.pop(model)
    else:
        per_task[model] = stop
    marks[task] = per_task
    store.update_manifest(**{STOPPED: {t: m for t, m in marks.items() if m}})


def mark_scores(store: RunStore, scores: list[Score]) -> None:
    """Put each recorded early stop on the scores of its task and model (aggregated over the judged items).
    A task whose official file lists every item (AlpacaEval) counts an item never judged as skipped: those
    are not failures, so ``n_skipped`` is capped at the failed and unparsed verdicts stored."""
    marks = store.manifest().get(STOPPED) or {}
    for s in scores:
        stop = (marks.get(s.task) or {}).get(s.model)
        if stop:
            s.extra[STOPPED] = stop
            failed = sum(v.status != "ok" for v in store.verdicts(s.task, s.model))
            s.n_skipped = min(s.n_skipped, failed)
