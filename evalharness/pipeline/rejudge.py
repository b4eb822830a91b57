"""Repeat judgments for repeatability (a task's ``rejudge: {fraction, times, seed}``), and the run's judge
reliability Scores (``evalharness.tasks.reliability``).

A seeded subsample of the judged items is asked again ``times`` times through the task's own ``judge`` (its
template, its parser, the run's JudgeClient): new requests past the response cache (``refresh``), each under
its own cache key (a repeat index no endpoint sees), so the cache neither answers a repeat nor loses the
primary response. Repeat verdicts go to the run store under ``<task>#rejudge``; a resumed run skips the scored
ones and asks the failed ones again, as it does for primary judgments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from evalharness.core.records import Score
from evalharness.store import RunStore
from evalharness.tasks.base import Pending, Session, Task, display_of
from evalharness.tasks.reliability import (
    ScoreKeys,
    chosen,
    reliability_scores,
    repeat_payload,
    repeat_task,
    swapped_task,
)

CHUNK = 64


def repeat_pending(task: Task, session: Session, store: RunStore) -> list[Pending]:
    """The repeat judgments of ``task`` still to make for this model: every repeat of each chosen item's scored
    or unparsed primary judgment that has no scored repeat verdict yet."""
    spec = getattr(task.cfg, "rejudge", None)
    if spec is None or task.env.judge is None:
        return []
    primary = {v.key: v.status for v in store.verdicts(task.name, session.name)}
    stored = {v.key: v.status for v in store.verdicts(repeat_task(task.name), session.name)}
    out = []
    for p in task.judgments(session):
        if primary.get(p.key, "error") == "error" or not chosen(p.item_id, spec.fraction, spec.seed):
            continue
        for k in range(1, spec.times + 1):
            key, payload = f"{p.key}#r{k}", repeat_payload(p.payload, k)
            if payload is not None and stored.get(key, "error") == "error":
                out.append(Pending(key, p.item_id, payload, p.sample_index))
    return out


def other_order_pending(task: Task, session: Session, store: RunStore) -> list[Pending]:
    """A task's judgments in the other order (AlpacaEval ``both_orders``) that have no scored verdict yet."""
    other = getattr(task, "other_order", None)
    if other is None or task.env.judge is None:
        return []
    stored = {v.key: v.status for v in store.verdicts(swapped_task(task.name), session.name)}
    return [p for p in other(session) if stored.get(p.key, "error") == "error"]


def judge_repeats(store: RunStore, session: Session, tasks: list[Task], log: Callable[[str], None]) -> None:
    """Ask every task's missing repeat judgments (past the response cache) and other-order judgments for one
    model, and store them apart from the task's own verdicts."""
    for task in tasks:
        for name, todo, what, refresh in (
            (repeat_task(task.name), repeat_pending(task, session, store), "repeat (never from the cache)", True),
            (swapped_task(task.name), other_order_pending(task, session, store), "other-order", False),
        ):
            if todo:
                log(f"{session.name}: {task.name}: {len(todo)} {what} judgments")
                _judge_into(store, session, task, name, todo, refresh, log)


def _judge_into(
    store: RunStore,
    session: Session,
    task: Task,
    name: str,
    todo: list[Pending],
    refresh: bool,
    log: Callable[[str], None],
) -> None:
    """Judge ``todo`` with the task's own judge and store the verdicts under task name ``name``."""
    bad = 0
    try:
        task.env.refresh = refresh
        for i in range(0, len(todo), CHUNK):
            chunk = todo[i : i + CHUNK]
            verdicts = task.judge(session, chunk)
            for p, v in zip(chunk, verdicts):
                v.task, v.model, v.key = name, session.name, p.key
            store.add_verdicts(verdicts)
            bad += sum(v.status == "error" for v in verdicts)
    finally:
        task.env.refresh = False
    if bad:
        log(f"{session.name}: {task.name}: {bad} of these judgments failed; asked again on the next run")


def run_reliability_scores(store: RunStore, session: Session, task: Task) -> list[Score]:
    """The judge reliability Scores of one task and model of a run (none for a task without a chat judge)."""
    if not task.needs_judge or task.env.judge is None:
        return []
    current = {p.key for p in task.judgments(session)}
    verdicts = [v for v in store.verdicts(task.name, session.name) if v.key in current]
    spec = getattr(task.cfg, "rejudge", None)
    repeats = []
    if spec is not None:  # the current subsample's repeats only (another rejudge earlier leaves its own stored)
        wanted = {f"{v.key}#r{k}" for v in verdicts for k in range(1, spec.times + 1)}
        repeats = [
            r
            for r in store.verdicts(repeat_task(task.name), session.name)
            if r.key in wanted and chosen(r.item_id, spec.fraction, spec.seed)
        ]
    swapped = store.verdicts(swapped_task(task.name), session.name)
    judge_version = next((v.judge_version for v in verdicts if v.judge_version), "")
    keys = ScoreKeys(
        task.name,
        session.name,
        str(getattr(task, "task_version", task.VERSION)),
        task.env.judge_name,
        judge_version,
    )
    unit_of = display_of(type(task).__module__.removesuffix(".task").rsplit(".", 1)[-1]).unit_of
    if unit_of is not None:  # the unit is the question: MT-Bench's two turns are one cluster
        verdicts, repeats, swapped = (
            [replace(v, item_id=unit_of(v.item_id)) for v in vs] for vs in (verdicts, repeats, swapped)
        )
    return reliability_scores(type(task).__module__, keys, verdicts, repeats, swapped=swapped)
