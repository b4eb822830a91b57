"""Comparison tables, paired differences and regression gates across runs and checkpoints.

Rows are models (a run's models, or one model of a run); columns are (task, metric) pairs whose
scores are comparable (``store.comparable``: task version, judge, baseline, decoding agree). With a
reference row (``against``), each cell gets the paired difference to it, computed item by item by
the task's own ``paired`` function (``evalharness.tasks.paired``: paired t over prompts or questions, exact
McNemar, paired bootstraps with the same draws for both models), a p-value and a Holm-adjusted
p-value over every test in the table, and the minimum detectable effect beside what is not
significant. Two marginal CIs are never compared.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from evalharness.analysis.floors import floor_notes
from evalharness.analysis.text import render_grid
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.paths import results_root
from evalharness.core.records import KEY_FIELDS, MAX_SKIPPED_SHARE, Score, score_ci
from evalharness.core.stats import holm
from evalharness.store import (
    DAMAGED,
    RunStore,
    checkpoint_manifest,
    comparable,
    find_run,
    index_scores,
    latest_run_of,
    manifest_models,
    unfinished_runs_of,
)
from evalharness.tasks.base import ModelRecords, display_of
from evalharness.tasks.reliability import RELIABILITY_METRICS

ALPHA = 0.05
# Shown unless asked for (--metrics): secondary numbers of a task, there in `show` and --format json.
SECONDARY = {
    "kl_k3",
    "discrete_win_rate",
    "turn1",
    "turn2",
    "avg_length",
    *(f"contingency_{c}" for c in ("ww", "wl", "lw", "ll")),
    *(f"reward_margin_q{q}" for q in (10, 25, 50, 75, 90)),
    *RELIABILITY_METRICS,  # the judge's, not the model's: compare shows them in their own section
}
# Schema-1 eval runs named the task after the prompt file; their metrics name the task module.
_V1_MODULES = {"sentiment": "sentiment", "toxicity": "toxicity", "kl": "kl", "kl_k3": "kl", "length": "sentiment"}


@dataclass
class Entry:
    """A row: one model of one finished run, with what its checkpoint manifest says about it."""

    store: RunStore
    model: str
    scores: list[Score]
    info: dict[str, Any]  # the checkpoint's evalharness_manifest.json ({} for a base or hub model)
    label: str = ""

    @property
    def algorithm(self) -> str:
        return str(self.info.get("algorithm") or ("sft" if self.model == "sft" else "—"))

    @property
    def step(self) -> int | None:
        return self.info.get("step")

    @property
    def setting(self) -> dict[str, Any]:
        return dict((self.info.get("train_config") or {}).get("hparams") or self.info.get("hparams") or {})


@dataclass
class Column:
    task: str
    metric: str
    key: tuple[Any, ...]
    label: str
    higher_is_better: bool | None


@dataclass
class Cell:
    score: Score
    paired: Any = None  # evalharness.tasks.paired.PairedResult, delta = this row - the reference row
    p_holm: float | None = None
    error: str | None = None
    unmeasured: str | None = None  # why the score is not a measurement (``Score.unmeasured``), when asked

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


@dataclass
class Table:
    columns: list[Column]
    rows: list[Entry]
    cells: dict[tuple[int, int], Cell]
    against: int | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- rows
def run_entries(store: RunStore, models: list[str] | None = None) -> list[Entry]:
    """The rows of one finished run (all its models, or those named)."""
    infos = manifest_models(store.manifest(), store.path)
    scores = store.scores()
    names = list(dict.fromkeys(s.model for s in scores))
    if models is not None:
        missing = [m for m in models if m not in names]
        if missing:
            raise EvalHarnessError(
                f"run {store.run_id} has no scores for {missing[0]!r}; its models: {', '.join(names)}"
            )
        names = models
    return [
        Entry(store, m, [s for s in scores if s.model == m], checkpoint_manifest(infos.get(m, {"spec": m})), m)
        for m in names
    ]


def _run_folder(ref: str, root: Path) -> Path | None:
    try:
        return find_run(ref, root)
    except EvalHarnessError:
        return None


def _resolve_one(ref: str, root: Path) -> list[Entry]:
    run, sep, model = ref.rpartition(":")
    path = _run_folder(ref, root)
    if path is not None:  # a run folder: its errors (damaged, interrupted) are the answer, not a model lookup
        return run_entries(RunStore(path))
    if sep and run and (path := _run_folder(run, root)) is not None:
        return run_entries(RunStore(path), [model])
    found = latest_run_of(ref, root)
    if found is not None:
        return run_entries(RunStore(found), [ref])
    for folder in (Path(ref), root / ref, *((Path(run), root / run) if sep and run else ())):
        if folder.is_dir() and (folder / "summary.json").exists():  # a run folder that lost its manifest
            raise InputError(f"missing; {DAMAGED}", path=str(folder / "manifest.json"))
    unfinished = unfinished_runs_of(ref, root)
    if unfinished:
        last = unfinished[-1]
        state = {"stale": "killed"}.get(last["status"], last["status"])
        raise EvalHarnessError(
            f"model '{ref}' has no finished run; its run {last['run_id']} is {state}: {last['resume']}"
        )
    raise EvalHarnessError(
        f"'{ref}' is neither a run (id or folder under {root}) nor a model with a finished run in the results index"
    )


def resolve(refs: list[str], results_dir: str | Path | None = None) -> list[Entry]:
    """``RUN`` (every model of a run: id or folder), ``RUN:MODEL``, or ``MODEL`` (its newest finished run
    in the results index). A model in several rows is labelled ``RUN:MODEL``."""
    root = Path(results_dir) if results_dir else results_root()
    out = [e for ref in refs for e in _resolve_one(ref, root)]
    counts: dict[str, int] = defaultdict(int)
    for e in out:
        counts[e.model] += 1
    for e in out:
        e.label = f"{e.store.run_id}:{e.model}" if counts[e.model] > 1 else e.model
    return out


# ---------------------------------------------------------------- columns and paired cells
def stored_task(store: RunStore, task: str, metric: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """How a stored run ran ``task``: (task module name, the task name its verdicts carry, its config).

    Runs of schema 1 recorded no module: the benchmark tasks are named after theirs, and ``eval`` runs'
    tasks are known by ``metric``. The one place a task is found again from its run (compare's paired
    tests, the report's item viewer)."""
    manifest = store.manifest()
    configs = (manifest.get("config") or {}).get("tasks") or {}
    ident = got if isinstance(got := configs.get(task), dict) else {}
    module = ident.get("module") or ((manifest.get("tasks") or {}).get(task) or {}).get("module")
    if module:
        return str(module).rsplit(".", 1)[-1], task, dict(ident.get("config") or {})
    if task in ("alpaca_eval", "arena_hard", "mt_bench"):
        return task, task, dict(ident.get("config") or {})
    v1 = _V1_MODULES.get(metric or task)
    if v1 is None:
        raise EvalHarnessError(f"no task module known for {task}/{metric} in run {store.run_id}")
    name = "sentiment" if metric == "length" else v1
    return v1, name, dict(((configs.get(name) or {}).get("config")) or {})


def paired_cell(column: Column, a: Entry, b: Entry, *, rounds: int | None = None, seed: int = 0) -> Any:
    """The paired difference a - b on one column, by the task's own ``paired`` function. ``rounds`` None
    leaves each bootstrap at its task's default (Arena-Hard 1000, AlpacaEval LC 200: a GLM refit per round)."""
    if column.metric in RELIABILITY_METRICS:
        raise ValueError(f"{column.metric} describes the judge: no paired test between models")
    module, task_a, config_a = stored_task(a.store, column.task, column.metric)
    _, task_b, config_b = stored_task(b.store, column.task, column.metric)
    fn = getattr(importlib.import_module(f"evalharness.tasks.{module}"), "paired", None)
    if fn is None:
        raise EvalHarnessError(f"task {column.task} has no paired comparison")
    return fn(
        column.metric,
        ModelRecords(a.store, a.model, task_a, config_a),
        ModelRecords(b.store, b.model, task_b, config_b),
        seed=seed,
        **({} if rounds is None else {"rounds": rounds}),
    )


def _label(task: str, metric: str) -> str:
    """A column's label: the task module's ``DISPLAY`` names it (a benchmark keeps its labels in its folder)."""
    label = display_of(task).labels.get(metric)
    if label is not None:
        return label
    return metric if metric == task or metric == "length" else f"{task} {metric}"


MIXED_HINT = "pass --allow-mixed to show them in separate, labelled columns"


def _metric_key(m: str) -> tuple[str | None, str]:
    return (m.split("/", 1)[0], m.split("/", 1)[1]) if "/" in m else (None, m)


def _groups(entries: list[Entry], metrics: list[str] | None) -> dict[tuple[str, str], list[tuple[int, Score]]]:
    """The scores of each (task, metric) shown: those named, else the headline ones (one length column)."""
    wanted = None if metrics is None else {_metric_key(m) for m in metrics}
    groups: dict[tuple[str, str], list[tuple[int, Score]]] = defaultdict(list)
    for i, e in enumerate(entries):
        for s in e.scores:
            if wanted is not None:
                if (s.task, s.metric) not in wanted and (None, s.metric) not in wanted:
                    continue
            elif s.metric in SECONDARY:
                continue
            groups[(s.task, s.metric)].append((i, s))
    if metrics is not None:
        present = {(t, m) for t, m in groups} | {(None, m) for _, m in groups}
        missing = [m for m in metrics if _metric_key(m) not in present]
        if missing:
            known = sorted({f"{s.task}/{s.metric}" for e in entries for s in e.scores})
            raise InputError(
                f"no scores for {', '.join(missing)}; metrics of these rows: {', '.join(known) or 'none'}",
                field="--metrics",
            )
    else:
        for k in [k for k in groups if k[1] == "length"][1:]:
            del groups[k]
    return groups


def _columns(
    entries: list[Entry], groups: dict[tuple[str, str], list[tuple[int, Score]]], *, allow_mixed: bool, mixed_hint: str
) -> Table:
    """One column per (task, metric) and comparability key (``store.comparable`` decides; refused unless mixed)."""
    columns: list[Column] = []
    cells: dict[tuple[int, int], Cell] = {}
    for (task, metric), items in groups.items():
        by_key: dict[tuple[Any, ...], list[tuple[int, Score]]] = defaultdict(list)
        for i, s in items:
            rep = next((k for k, members in by_key.items() if comparable(members[0][1], s)[0]), s.key)
            by_key[rep].append((i, s))
        if len(by_key) > 1 and not allow_mixed:
            (ia, a), (ib, b) = (members[0] for members in list(by_key.values())[:2])
            raise EvalHarnessError(
                f"{task}/{metric}: scores of {entries[ia].label} and {entries[ib].label} are not "
                f"comparable ({comparable(a, b)[1]}); {mixed_hint}"
            )
        for key, members in by_key.items():
            label = _label(task, metric) + (key_suffix(members[0][1], list(by_key)) if len(by_key) > 1 else "")
            columns.append(Column(task, metric, key, label, members[0][1].higher_is_better))
            for i, s in members:
                cells[(i, len(columns) - 1)] = Cell(s)
    return Table(columns, entries, cells)


def key_suffix(score: Score, keys: list[tuple[Any, ...]]) -> str:
    """`` [field=value, ...]``: what sets a score's comparability key apart from the other keys of its metric."""
    diff = [f for j, f in enumerate(KEY_FIELDS) if len({k[j] for k in keys}) > 1]
    return " [" + ", ".join(f"{f}={_short(score, f)}" for f in diff) + "]"


def build_table(
    entries: list[Entry],
    *,
    against: str | None = None,
    metrics: list[str] | None = None,
    allow_mixed: bool = False,
    rounds: int | None = None,
    seed: int = 0,
    max_skipped: float | None = None,
    mixed_hint: str = MIXED_HINT,
    log: Callable[[str], None] | None = None,
) -> Table:
    """Columns per (task, metric), refused (or, ``allow_mixed``, split and labelled) where keys differ;
    with ``against`` (a row's label or model), paired differences and Holm over the table's tests.
    ``max_skipped``: a cell over that failed share (``Score.unmeasured``) is marked and not tested."""
    if not entries:
        raise EvalHarnessError("nothing to compare")
    if rounds is not None and rounds < 2:
        raise InputError(f"--rounds {rounds}: a bootstrap needs at least 2 rounds", field="rounds")
    table = _columns(entries, _groups(entries, metrics), allow_mixed=allow_mixed, mixed_hint=mixed_hint)
    table.notes += floor_notes(table)
    if max_skipped is not None:
        for cell in table.cells.values():
            cell.unmeasured = cell.score.unmeasured(max_skipped)
    if against is not None:
        matches = [i for i, e in enumerate(entries) if against in (e.label, e.model)]
        if len(matches) != 1:
            raise EvalHarnessError(
                f"--against {against!r} names {len(matches)} rows; rows: {', '.join(e.label for e in entries)}"
            )
        _pair_against(table, matches[0], rounds=rounds, seed=seed, log=log or (lambda _: None))
    return table


def _pair_against(table: Table, ref: int, *, rounds: int | None, seed: int, log: Callable[[str], None]) -> None:
    """Each row's paired difference to row ``ref``, Holm over every test; failures as a short cell reason
    with the detail once in the notes."""
    import time

    table.against = ref
    tested: list[Cell] = []
    details: dict[str, str] = {}
    for j, col in enumerate(table.columns):
        base = table.cells.get((ref, j))
        if base is None or base.unmeasured:
            continue
        for i, row in enumerate(table.rows):
            cell = table.cells.get((i, j))
            if i == ref or cell is None or cell.unmeasured:
                continue
            start = time.monotonic()
            # paired tests that refit a model per bootstrap round take minutes: they say so on stderr first
            slow = display_of(col.task).slow.get(col.metric)
            if slow:
                log(
                    f"{col.label}: paired bootstrap of {row.label} vs {table.rows[ref].label} "
                    f"({slow}; {rounds or 'default'} rounds)..."
                )
            try:
                cell.paired = paired_cell(col, row, table.rows[ref], rounds=rounds, seed=seed)
                tested.append(cell)
            except (ValueError, EvalHarnessError, OSError) as e:
                cell.error = short_reason(e)
                details.setdefault(str(e), f"{col.label}, {row.label}: {e}")
            if slow:
                log(f"{col.label}: {row.label} done in {time.monotonic() - start:.0f}s")
    for cell, p in zip(tested, holm([c.paired.p_value for c in tested])):
        cell.p_holm = None if p is None or math.isnan(p) else p
    table.notes.append(
        f"Δ: paired difference to {table.rows[ref].label} over shared items; * Holm-adjusted "
        f"p < {ALPHA} over the table's {len(tested)} tests; MDE: the difference detectable "
        "with 80% power"
    )
    table.notes += [f"not paired: {d}" for d in details.values()]


def short_reason(error: BaseException) -> str:
    """A table cell's few words for why a paired test failed; the full message goes below the table."""
    text = str(error)
    if isinstance(error, OSError) or "urlopen error" in text:
        return "download failed: see below"
    first = text.splitlines()[0] if text else type(error).__name__
    return first if len(first) <= 60 else first[:57] + "..."


def _short(score: Score, field_: str) -> str:
    value = getattr(score, field_)
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in sorted(value.items()))
    return str(value)


# ---------------------------------------------------------------- rendering
def _digits(col: Column) -> int:
    if col.metric.startswith("contingency_"):  # counts of pairs (preference_accuracy)
        return 0
    if col.metric in ("length", "avg_length"):
        return 1
    digits = display_of(col.task).digits
    return 3 if digits is None else digits


def _num(x: float | None, d: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def cell_text(table: Table, i: int, j: int) -> tuple[str, str]:
    """(value [CI], Δ [CI] p) of one cell."""
    cell = table.cells.get((i, j))
    if cell is None:
        return "—", ""
    d = _digits(table.columns[j])
    s = cell.score
    lo, hi = score_ci(s)
    value = _num(s.value, d) + (
        f" [{_num(lo, d)}, {_num(hi, d)}]" if lo is not None and hi is not None and not math.isnan(lo) else ""
    )
    if cell.paired is None:
        return value, (f"({cell.error})" if cell.error else "")
    r = cell.paired
    delta = f"{_num(r.delta, d, True)} [{_num(r.ci_low, d, True)}, {_num(r.ci_high, d, True)}] p={_p(r.p_value)}"
    delta += "*" if cell.significant else f" (MDE {_num(r.mde, d)})"
    if r.n_only_a or r.n_only_b:
        delta += f" n={r.n_paired}, unpaired {r.n_only_a}+{r.n_only_b}"
    return value, delta


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _head(e: Entry) -> list[str]:
    return [
        e.label,
        e.algorithm,
        " ".join(f"{k}={v}" for k, v in e.setting.items()),
        "" if e.step is None else str(e.step),
    ]


def records(table: Table) -> list[dict[str, Any]]:
    """One JSON record per (row, column): the ``--format json`` and ``csv`` content."""
    out = []
    for (i, j), cell in sorted(table.cells.items()):
        e, col, s = table.rows[i], table.columns[j], cell.score
        lo, hi = score_ci(s)
        rec: dict[str, Any] = {
            "model": e.label,
            "run": e.store.run_id,
            "algorithm": e.algorithm,
            "step": e.step,
            "task": col.task,
            "metric": col.metric,
            "column": col.label,
            "value": s.value,
            "ci_low": lo,
            "ci_high": hi,
            "n": s.n,
            "n_skipped": s.n_skipped,
        }
        if table.against is not None and i != table.against:
            r = cell.paired
            rec.update(
                {
                    "delta": r.delta if r else None,
                    "delta_ci_low": r.ci_low if r else None,
                    "delta_ci_high": r.ci_high if r else None,
                    "p_value": r.p_value if r else None,
                    "p_holm": cell.p_holm,
                    "n_paired": r.n_paired if r else None,
                    "mde": r.mde if r else None,
                    "n_only_model": r.n_only_a if r else None,
                    "n_only_against": r.n_only_b if r else None,
                    "method": r.method if r else None,
                    "error": cell.error,
                }
            )
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
    return out


def render(table: Table, fmt: str = "table") -> str:
    """The SimPO-paper layout: a row per model, a column per (task, metric), value [95% CI] and Δ."""
    if fmt == "json":
        return json.dumps(
            {
                "rows": records(table),
                "against": None if table.against is None else table.rows[table.against].label,
                "notes": table.notes,
            },
            indent=2,
        )
    if fmt == "csv":
        recs = records(table)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in recs for k in r)))
        writer.writeheader()
        writer.writerows(recs)
        return buf.getvalue()
    head = ["model", "algorithm", "setting", "step"]
    cols: list[str] = []
    for c in table.columns:
        arrows: dict[bool | None, str] = {True: " ↑", False: " ↓"}
        cols.append(c.label + arrows.get(c.higher_is_better, ""))
        if table.against is not None:
            cols.append(f"Δ {c.label}")
    body = []
    for i, e in enumerate(table.rows):
        row = _head(e)
        for j in range(len(table.columns)):
            value, delta = cell_text(table, i, j)
            row.append(value)
            if table.against is not None:
                row.append("(reference)" if i == table.against else delta)
        body.append(row)
    if fmt not in ("table", "markdown", "latex"):
        raise InputError(f"unknown format '{fmt}'; table, markdown, latex, csv or json", field="--format")
    return render_grid(head + cols, body, fmt=fmt, left=len(head), notes=table.notes)


# ---------------------------------------------------------------- the best checkpoint, without a winner's curse
def best_checkpoint(table: Table, metric: str, *, base: str = "sft") -> dict[str, Any] | None:
    """The best trained row on ``metric`` against ``base``, corrected for having picked it among k.

    The best of k checkpoints is chosen on the same prompts its difference is measured on, so its
    uncorrected test is biased toward "better". Its claim stands only if its paired p-value,
    Holm-adjusted over the k checkpoints' tests (the table's own Holm is over every column), is below
    0.05, and its mean clears the base's own 95% CI half-width.
    """
    j = next((j for j, c in enumerate(table.columns) if c.metric == metric), None)
    if j is None or table.against is None:
        return None
    sign = -1.0 if table.columns[j].higher_is_better is False else 1.0
    trained = [
        (i, table.cells[(i, j)])
        for i in range(len(table.rows))
        if i != table.against and (i, j) in table.cells and table.cells[(i, j)].paired is not None
    ]
    if not trained:
        return None
    ps = holm([c.paired.p_value for _, c in trained])
    i, best = max(trained, key=lambda t: sign * (t[1].score.value if t[1].score.value is not None else -math.inf))
    p_adj = ps[[t[0] for t in trained].index(i)]
    ref = table.cells[(table.against, j)].score
    half = (ref.ci_high - ref.ci_low) / 2 if ref.ci_low is not None and ref.ci_high is not None else math.nan
    r = best.paired
    beats = bool(sign * r.delta > 0 and p_adj is not None and p_adj < ALPHA and sign * r.delta > half)
    e = table.rows[i]
    return {
        "best_model": e.label,
        "best_run": e.info.get("run_name"),
        "best_step": e.step,
        "metric": metric,
        "best_reward": best.score.value,
        "sft_reward": ref.value,
        "sft_ci_halfwidth": half,
        "paired_delta": {
            "delta": r.delta,
            "ci_low": r.ci_low,
            "ci_high": r.ci_high,
            "p_value": r.p_value,
            "n_prompts": r.n_paired,
        },
        "p_holm_over_checkpoints": p_adj,
        "k_checkpoints": len(trained),
        "beats_sft": beats,
        "selection": f"best of {len(trained)} checkpoints on the evaluation prompts; its paired p-value "
        f"Holm-adjusted over the {len(trained)} checkpoint tests",
    }


def verdict_line(v: dict[str, Any]) -> str:
    d = v["paired_delta"]
    word = "beats" if v["beats_sft"] else "does NOT clearly beat"
    return (
        f"best checkpoint: {v['best_model']}: {v['metric']} {v['best_reward']:.3f} vs SFT {v['sft_reward']:.3f} "
        f"(SFT 95% CI ±{v['sft_ci_halfwidth']:.3f}); paired Δ {d['delta']:+.3f} [{d['ci_low']:+.3f}, "
        f"{d['ci_high']:+.3f}] over {d['n_prompts']} prompts, p = {_p(d['p_value'])}, Holm over "
        f"{v['k_checkpoints']} checkpoints p = {_p(v['p_holm_over_checkpoints'])}: {word} SFT"
    )


# ---------------------------------------------------------------- regression gate
NOT_MEASURED = "NOT MEASURED"
REGRESS_HINT = "gate scores of one task version, judge, baseline and decoding: rerun one side to match the other"


def known_unavailable(entries: list[Entry]) -> dict[tuple[str, str], str]:
    """(task, metric) that no row could compute, for a reason known before the run (the task recorded it in
    ``extra['unavailable']``, e.g. AlpacaEval LC without its support files): left out of a default gate."""
    by_metric: dict[tuple[str, str], list[Score | None]] = {}
    for k, e in enumerate(entries):
        for s in e.scores:
            by_metric.setdefault((s.task, s.metric), [None] * len(entries))[k] = s
    return {
        m: str(cast(Score, ss[0]).extra["unavailable"])  # all() below: every s is a Score
        for m, ss in by_metric.items()
        if all(s is not None and s.value is None and s.extra.get("unavailable") for s in ss)
    }


def regress(
    baseline: Entry,
    candidate: Entry,
    *,
    metrics: list[str] | None = None,
    margins: dict[str, float] | None = None,
    rounds: int | None = None,
    seed: int = 0,
    max_skipped: float = MAX_SKIPPED_SHARE,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Per metric: FAIL (significantly worse, Holm over the metrics checked), PASS (the CI of the change
    clears -margin), INCONCLUSIVE (with the MDE), or NOT MEASURED (a side scored nothing, too many failed
    judgments, or lacks the metric: with its reason). The change is oriented so that + is better."""
    log = log or (lambda _: None)
    if baseline.label == candidate.label:  # one model against itself, or one name in two runs: tell the rows apart
        baseline = replace(baseline, label=f"baseline:{baseline.label}")
        candidate = replace(candidate, label=f"candidate:{candidate.label}")
    if metrics is None:
        baseline, candidate = _drop_known_unavailable(baseline, candidate, log)
    table = build_table(
        [baseline, candidate],
        against=baseline.label,
        metrics=metrics,
        rounds=rounds,
        seed=seed,
        max_skipped=max_skipped,
        mixed_hint=REGRESS_HINT,
        log=log,
    )
    margins = margins or {}
    known = {f"{c.task}/{c.metric}" for c in table.columns} | {c.metric for c in table.columns}
    for k in margins:
        if k not in known:
            raise InputError(f"--margin {k}: no such metric; metrics: {', '.join(sorted(known))}", field="--margin")
    rows = [
        _gate_row(table, j, margins)
        for j, col in enumerate(table.columns)
        if col.higher_is_better is not None or metrics is not None
    ]  # no direction (length): not gated
    if not rows:  # a gate that checks nothing must not pass
        raise EvalHarnessError(
            "no metric to gate: no shared score has a direction (higher or lower is better); name them with --metrics"
        )
    _assign_verdicts(rows)
    # NaN (undefined with too few items) is not JSON: None
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]


def _drop_known_unavailable(baseline: Entry, candidate: Entry, log: Callable[[str], None]) -> tuple[Entry, Entry]:
    """Leave out of both sides each metric that neither side has, logging why."""
    for (task, metric), why in known_unavailable([baseline, candidate]).items():
        log(f"left out {task}/{metric}: neither side has it ({why})")
        baseline, candidate = (
            replace(e, scores=[s for s in e.scores if (s.task, s.metric) != (task, metric)])
            for e in (baseline, candidate)
        )
    return baseline, candidate


def _assign_verdicts(rows: list[dict[str, Any]]) -> None:
    """Set FAIL/PASS/INCONCLUSIVE on the measured rows, in place, with Holm over their drop p-values."""
    drops = [r for r in rows if "_change_ci" in r]
    for rec, p in zip(drops, holm([r["p_drop"] for r in drops])):
        rec["p_holm"] = p
        lo, _ = rec.pop("_change_ci")
        if p is not None and p < ALPHA:
            rec["verdict"] = "FAIL"
        elif lo >= -rec["margin"]:
            rec["verdict"] = "PASS"
        else:
            rec["verdict"] = "INCONCLUSIVE"


def _gate_row(table: Table, j: int, margins: dict[str, float]) -> dict[str, Any]:
    """One metric's gate record: NOT MEASURED with its reason, or the oriented paired change to test."""
    col = table.columns[j]
    head = {"task": col.task, "metric": col.metric}
    sides = (("baseline", table.cells.get((0, j))), ("candidate", table.cells.get((1, j))))
    why = [
        f"{side}: no {col.task}/{col.metric} score (the other side has one)"
        if cell is None
        else f"{side}: {cell.score.extra.get('unavailable') or cell.unmeasured}"
        for side, cell in sides
        if cell is None or cell.unmeasured
    ]
    cell = sides[1][1]
    if not why and (cell is None or cell.paired is None):
        why = [f"no paired difference: {cell.error if cell else 'not paired'}"]
    if why:
        return {**head, "verdict": NOT_MEASURED, "reason": "; ".join(why)}
    r = cell.paired  # type: ignore[union-attr]
    sign = -1.0 if col.higher_is_better is False else 1.0
    change, lo, hi = sign * r.delta, *sorted((sign * r.ci_low, sign * r.ci_high))
    p_drop = r.p_value / 2 if change < 0 else 1 - r.p_value / 2  # one-sided: H0 "no drop"
    return {
        **head,
        "higher_is_better": col.higher_is_better,
        "delta": r.delta,
        "delta_ci_low": r.ci_low,
        "delta_ci_high": r.ci_high,
        "p_value": r.p_value,
        "p_drop": p_drop,
        "n_paired": r.n_paired,
        "mde": r.mde,
        "margin": margins.get(f"{col.task}/{col.metric}", margins.get(col.metric, 0.0)),
        "_change_ci": (lo, hi),
        "method": r.method,
    }


def gate_exit(rows: list[dict[str, Any]], *, strict: bool = False) -> int:
    """The gate's exit status: 1 FAIL (or INCONCLUSIVE when strict), else 3 NOT MEASURED, else 0."""
    verdicts = {r["verdict"] for r in rows}
    if "FAIL" in verdicts or (strict and "INCONCLUSIVE" in verdicts):
        return 1
    return 3 if NOT_MEASURED in verdicts else 0


# ---------------------------------------------------------------- history
def history(
    model: str | None,
    *,
    task: str | None = None,
    metric: str | None = None,
    results_dir: str | Path | None = None,
    max_skipped: float = MAX_SKIPPED_SHARE,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every indexed score of a lineage, oldest first: ``model`` itself across runs, and the checkpoints
    trained from it (their manifests name it as base), with step and finish time. Each point names its
    ``series``: scores share one only if ``store.comparable`` says so. A point that is not a measurement
    carries ``not_measured`` (its reason); a run whose files are damaged is left out with a warning."""
    root = Path(results_dir) if results_dir else results_root()
    if not (root / "index.sqlite").is_file():
        raise EvalHarnessError(f"no results index at {root / 'index.sqlite'}: no finished run yet")
    log = log or (lambda _: None)
    runs: dict[str, dict[tuple[str, str, str], Score] | None] = {}
    out = []
    for row in index_scores(root, task=task, metric=metric):
        point = _history_point(row, model, runs, log)
        if point is not None:
            out.append(point)
    out.sort(
        key=lambda r: (
            r["task"],
            r["metric"],
            r["run_name"] or "",
            r["step"] if r["step"] is not None else -1,
            r["finished_at"] or "",
        )
    )
    _split_series(out)
    for point in out:
        score = point.pop("score")
        reason = score.unmeasured(max_skipped)
        # a task that knew in advance why it could not compute a number (LC without support files) says so
        point["not_measured"] = reason and (score.extra.get("unavailable") if score.value is None else None) or reason
    return out


def _split_series(points: list[dict[str, Any]]) -> None:
    """Name each point's ``series``: its task/metric, and where scores of one metric are not comparable
    (``store.comparable``), the key fields that set them apart (DESIGN: they never share a column)."""
    groups: dict[tuple[str, str], list[list[dict[str, Any]]]] = defaultdict(list)
    for p in points:
        series = groups[(p["task"], p["metric"])]
        home = next((g for g in series if comparable(g[0]["score"], p["score"])[0]), None)
        if home is None:
            series.append([p])
        else:
            home.append(p)
    for (task, metric), series in groups.items():
        keys = [g[0]["score"].key for g in series]
        for g in series:
            name = f"{task}/{metric}" + (key_suffix(g[0]["score"], keys) if len(series) > 1 else "")
            for p in g:
                p["series"] = name


def _run_scores(
    path: str, runs: dict[str, dict[tuple[str, str, str], Score] | None], log: Callable[[str], None]
) -> dict[tuple[str, str, str], Score] | None:
    """A run's full scores by (model, task, metric), read once; None (warned once) when its files are damaged."""
    if path not in runs:
        try:
            runs[path] = {(s.model, s.task, s.metric): s for s in RunStore(Path(path)).scores()}
        except EvalHarnessError as e:
            log(f"warning: left out run {Path(path).name}: {e}")
            runs[path] = None
    return runs[path]


def _history_point(
    row: dict[str, Any], model: str | None, runs: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any] | None:
    """One index row as a history point of ``model``'s lineage (None: not of it, or its run is unreadable)."""
    try:
        manifest = json.loads(row["manifest"])
        entries = manifest_models(manifest if isinstance(manifest, dict) else {}, Path(row["path"]))
        entry = entries.get(row["model"], {"spec": row["model"]})
        info = checkpoint_manifest(entry)
    except (ValueError, TypeError, EvalHarnessError) as e:
        if row["path"] not in runs:
            log(f"warning: left out run {row['run']}: {e}")
            runs[row["path"]] = None
        return None
    base = str(info.get("base_model") or "")
    name = row["model"]
    if model is not None and model not in (name, str(entry.get("spec") or ""), base, Path(base).name if base else ""):
        return None
    scores = _run_scores(row["path"], runs, log)
    score = None if scores is None else scores.get((name, row["task"], row["metric"]))
    if score is None:
        return None
    point = {k: v for k, v in row.items() if k != "manifest"}  # the index row, less the manifest text
    return {
        **point,
        "step": info.get("step"),
        "run_name": info.get("run_name"),
        "algorithm": info.get("algorithm") or ("sft" if name in ("sft", model) else None),
        "higher_is_better": score.higher_is_better,
        "score": score,
    }


def mark_drops(points: list[dict[str, Any]], *, higher_is_better: bool | None = True, rounds: int = 200) -> None:
    """Mark each point that is a significant drop from the previous one (``drop``, ``drop_p``, ``paired``):
    paired over shared items where both runs' records are there, else a z test on the two SEs.

    The previous point is the one before in the same training run (``run_name``); a run's first checkpoint
    is tested against the base (the latest point without a run name): two sweeps' checkpoints are two
    trends, never one.
    """
    sign = -1.0 if higher_is_better is False else 1.0
    for prev, cur in _steps(points):
        p, paired = math.nan, False
        try:
            a = run_entries(RunStore(Path(cur["path"])), [cur["model"]])[0]
            b = run_entries(RunStore(Path(prev["path"])), [prev["model"]])[0]
            col = Column(cur["task"], cur["metric"], (), "", higher_is_better)
            r = paired_cell(col, a, b, rounds=rounds)
            p, delta, paired = r.p_value, r.delta, True
        except (EvalHarnessError, ValueError, OSError, StopIteration, KeyError):
            delta = (cur["value"] or 0) - (prev["value"] or 0)
            ses = [
                (x["ci_high"] - x["ci_low"]) / (2 * 1.96)
                for x in (prev, cur)
                if x["ci_low"] is not None and x["ci_high"] is not None
            ]
            if len(ses) == 2 and math.hypot(*ses) > 0:
                from scipy.stats import norm

                p = float(2 * norm.sf(abs(delta) / math.hypot(*ses)))
        cur.update(
            {
                "drop": bool(sign * delta < 0 and p == p and p < ALPHA),
                "drop_p": None if p != p else p,
                "paired": paired,
                "delta_prev": delta,
                "prev": (prev["path"], prev["model"]),  # the point tested against (a drift check asks its run)
            }
        )


def _steps(points: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(previous, current) pairs along each training run's trend, the base in front (see ``mark_drops``)."""
    last: dict[str | None, dict[str, Any]] = {}
    out = []
    for cur in points:
        if cur.get("not_measured"):  # neither tested nor a point to test the next one against
            continue
        run = cur.get("run_name")
        prev = last.get(run) or last.get(None)
        if prev is not None:
            out.append((prev, cur))
        last[run] = cur
    return out


# ---------------------------------------------------------------- to experiment trackers
def report_to_trackers(
    names: Sequence[str],
    run_path: Path,
    *,
    table: Table | None = None,
    figures: Sequence[Path] = (),
    against: str | None = None,
    group: str | None = None,
    log: Callable[[str], None] = lambda _: None,
    methods: list[dict[str, Any]] | None = None,
) -> None:
    """Send a finished run to the trackers with its comparison table (``table``, else built from the run, paired
    against ``against`` or the run's reference model when it is a row), trend figures (into ``RUN/figures``) and
    ``methods`` (``methods.method_rows``)."""
    from evalharness import trackers
    from evalharness.analysis.plot import trend_figures

    if not names:
        return
    if table is None:
        store = RunStore(run_path)
        entries = run_entries(store)
        ref = against or store.manifest().get("reference")
        table = build_table(entries, against=ref if any(ref == e.label for e in entries) else None, allow_mixed=True)
    plots = list(figures) + trend_figures(table, run_path / "figures")
    trackers.report_evaluation(
        names, run_path, comparison=records(table), figures=plots, group=group, log=log, methods=methods
    )
