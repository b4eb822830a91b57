"""Method-level comparison: "SimPO beats DPO" is a claim about training methods, not about two checkpoints.

Checkpoints are grouped into methods: the same algorithm, hyperparameters, training settings, base, data and
step, across training seeds (read from each checkpoint's manifest), or as the user names them
(``--methods NAME=REF,REF``). Per method and (task, metric) column of ``compare``'s table: the mean over seeds
and prompts with a t interval holding both seed-to-seed and prompt-sampling variance
(``core.method_stats``); per pair of methods, the difference paired over the shared prompts (seeds
independent between methods), its CI, p-value, Holm over the section's tests and the MDE. A method with one
seed gets no interval: its seed variance is unknown, and the table says so. Method numbers live in their own
section and never share a column with a checkpoint's.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.analysis.compare import ALPHA, Column, Entry, Table, render, stored_task
from evalharness.analysis.text import render_grid
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.method_stats import SeedPromptResult, method_difference, method_mean
from evalharness.core.stats import holm, mde_t
from evalharness.tasks.base import ModelRecords, display_of

UNSUPPORTED = "seed variance unknown: a method-level claim is not supported; checkpoint-level results shown"
_SEED_SUFFIX = re.compile(r"-s\d+$")


@dataclass
class Method:
    """A training method: its checkpoints (one per seed) as rows of the comparison table."""

    name: str
    algorithm: str
    rows: list[int]  # indices into Table.rows
    seeds: list[Any]


@dataclass
class MethodCell:
    """One method on one column: the mean over seeds and prompts (None with fewer than 2 seeds: ``why``)."""

    result: SeedPromptResult | None
    n_units: int = 0
    n_dropped: int = 0  # items not answered by every seed: left out, counted
    why: str | None = None


@dataclass
class MethodComparison:
    """Method ``a`` minus method ``b`` on column ``j``, paired over the prompts all their seeds share."""

    a: int
    b: int
    j: int
    result: SeedPromptResult | None = None
    mde: float = math.nan
    n_units: int = 0
    p_holm: float | None = None
    why: str | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < ALPHA


@dataclass
class MethodTable:
    methods: list[Method]
    columns: list[Column]
    cells: dict[tuple[int, int], MethodCell]
    comparisons: list[MethodComparison]
    supported: bool  # some method has at least two seeds
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- grouping
def method_identity(entry: Entry) -> tuple[str, str, Any] | None:
    """(key, display name, seed) of a trained checkpoint from its manifest; None for a base or hub model."""
    info = entry.info
    if not info.get("algorithm") or info.get("step") is None:
        return None
    config = dict(info.get("train_config") or {})
    seed = config.pop("seed", None)
    if seed is None:  # a manifest without its training config: each training run is its own seed
        seed = str(info.get("run_name") or entry.label)
    what = {
        "algorithm": info["algorithm"],
        "hparams": entry.setting,
        "train_config": config,
        "base_model": info.get("base_model"),
        "data": (info.get("data") or {}).get("hash"),
        "step": info["step"],
    }
    name = _SEED_SUFFIX.sub("", str(info.get("run_name") or info["algorithm"])) + f"@{info['step']}"
    return json.dumps(what, sort_keys=True, default=str), name, seed


def group_by_manifest(table: Table) -> tuple[list[Method], list[str]]:
    """Methods from the rows' checkpoint manifests, and notes (a seed seen twice counts once)."""
    groups: dict[str, Method] = {}
    names: dict[str, int] = defaultdict(int)
    notes = []
    for i, e in enumerate(table.rows):
        ident = method_identity(e)
        if ident is None:
            continue
        key, name, seed = ident
        if key not in groups:
            names[name] += 1
            groups[key] = Method(name if names[name] == 1 else f"{name}#{names[name]}", e.algorithm, [], [])
        m = groups[key]
        if seed in m.seeds:  # the same checkpoint in two runs: a repeated evaluation is not a new seed
            first = table.rows[m.rows[m.seeds.index(seed)]].label
            notes.append(f"{e.label} is seed {seed} of {m.name} again (as {first}): counted once")
            continue
        m.rows.append(i)
        m.seeds.append(seed)
    return list(groups.values()), notes


def parse_groups(values: list[str]) -> dict[str, list[str]]:
    """``NAME=REF,REF`` options (or one YAML file mapping a name to a list of rows) as {name: [row, ...]}."""
    if len(values) == 1 and values[0].endswith((".yaml", ".yml")) and "=" not in values[0]:
        return _groups_file(Path(values[0]))
    out: dict[str, list[str]] = {}
    for v in values:
        name, sep, refs = v.partition("=")
        members = [r.strip() for r in refs.split(",") if r.strip()]
        if not sep or not name.strip() or not members:
            raise InputError(f"{v!r}: expected NAME=ROW,ROW,...", field="--methods")
        if name.strip() in out:
            raise InputError(f"method {name.strip()!r} named twice", field="--methods")
        out[name.strip()] = members
    return out


def _groups_file(path: Path) -> dict[str, list[str]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read the method grouping: {e}", path=str(path)) from e
    if not isinstance(data, dict) or not data:
        raise InputError("expected a mapping of method name to a list of rows", path=str(path))
    out = {}
    for name, refs in data.items():
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise InputError("expected a non-empty list of row names", path=str(path), field=str(name))
        out[str(name)] = list(refs)
    return out


def group_explicit(table: Table, groups: dict[str, list[str]]) -> list[Method]:
    """Methods as the user names them: each member is one row (label or model); distinct rows are distinct seeds."""
    out = []
    taken: dict[int, str] = {}
    for name, refs in groups.items():
        rows = []
        for ref in refs:
            hits = [i for i, e in enumerate(table.rows) if ref in (e.label, e.model)]
            if len(hits) != 1:
                labels = ", ".join(e.label for e in table.rows)
                raise InputError(f"method {name}: {ref!r} names {len(hits)} rows; rows: {labels}", field="--methods")
            if hits[0] in taken or hits[0] in rows:
                raise InputError(f"method {name}: {ref!r} is already in {taken.get(hits[0], name)}", field="--methods")
            rows.append(hits[0])
            taken[hits[0]] = name
        algos = {table.rows[i].algorithm for i in rows}
        seeds = [(table.rows[i].info.get("train_config") or {}).get("seed", table.rows[i].label) for i in rows]
        out.append(Method(name, algos.pop() if len(algos) == 1 else "mixed", rows, seeds))
    return out


# ---------------------------------------------------------------- per-item values and statistics
def unit_values(table: Table, i: int, j: int) -> dict[str, float]:
    """Row ``i``'s per-item values on column ``j`` (their mean is the score), from its task's ``unit_values``."""
    col, e = table.columns[j], table.rows[i]
    module, task, config = stored_task(e.store, col.task, col.metric)
    fn = getattr(importlib.import_module(f"evalharness.tasks.{module}"), "unit_values", None)
    if fn is None:
        raise ValueError(f"{col.task}/{col.metric} has no per-item values (a refit metric)")
    return {str(k): float(v) for k, v in fn(col.metric, ModelRecords(e.store, e.model, task, config)).items()}


def _matrix(values: list[dict[str, float]], keys: list[str]) -> np.ndarray:
    return np.array([[v[k] for k in keys] for v in values], dtype=float)


def _shared(values: list[dict[str, float]]) -> tuple[list[str], int]:
    """The items every checkpoint answered (in the first's order), and how many items some lack."""
    keys = [k for k in values[0] if all(k in v for v in values[1:])]
    return keys, len(set().union(*values)) - len(keys)


def _scalar(r: SeedPromptResult) -> SeedPromptResult:
    return SeedPromptResult(*(np.asarray(x).item() for x in vars(r).values()))


def method_cell(values: list[dict[str, float]]) -> MethodCell:
    """The mean over seeds and prompts of one method's per-item values (one dict per seed)."""
    if len(values) < 2:
        return MethodCell(None, why=UNSUPPORTED.split(":")[0])
    keys, dropped = _shared(values)
    if len(keys) < 2:
        return MethodCell(None, len(keys), dropped, why=f"{len(keys)} item(s) shared by every seed")
    return MethodCell(_scalar(method_mean(_matrix(values, keys))), len(keys), dropped)


def compare_methods(a: list[dict[str, float]], b: list[dict[str, float]], ia: int, ib: int, j: int) -> MethodComparison:
    """Method a minus method b over the items every checkpoint of both answered, with the MDE at 80% power."""
    out = MethodComparison(ia, ib, j)
    if len(a) < 2 or len(b) < 2:
        out.why = UNSUPPORTED.split(":")[0]
        return out
    keys, _ = _shared(a + b)
    out.n_units = len(keys)
    if len(keys) < 2:
        out.why = f"{len(keys)} item(s) shared by both methods' seeds"
        return out
    out.result = _scalar(method_difference(_matrix(a, keys), _matrix(b, keys)))
    out.mde = mde_t(float(out.result.se), float(out.result.df))
    return out


# ---------------------------------------------------------------- the method section of a comparison
def build_methods(
    table: Table, *, groups: dict[str, list[str]] | None = None, against: str | None = None
) -> MethodTable | None:
    """Method rows for ``table``'s columns: grouped from the manifests (or ``groups``), a mean per method and
    column, and each pair of methods (or each against the method ``against``) with Holm over the section.
    None when no row is a trained checkpoint and no grouping is given."""
    methods, notes = (group_explicit(table, groups), []) if groups else group_by_manifest(table)
    if not methods:
        if against is not None:
            raise InputError(
                f"{against!r}: no row is a trained checkpoint, so there is no method", field="--method-against"
            )
        return None
    names = [m.name for m in methods]
    if against is not None and against not in names:
        raise InputError(f"{against!r} is not a method; methods: {', '.join(names)}", field="--method-against")
    supported = any(len(m.rows) > 1 for m in methods)
    values = _all_values(table, methods, notes)
    cells = {key: method_cell(v) for key, v in values.items()}
    for (_, j), cell in cells.items():
        if cell.n_dropped:
            notes.append(f"{table.columns[j].label}: {cell.n_dropped} item(s) not answered by every seed left out")
    pairs = _pairs(methods, against) if supported else []  # with one seed per method there is nothing to test
    comps = [
        compare_methods(values[(a, j)], values[(b, j)], a, b, j)
        for a, b in pairs
        for j in range(len(table.columns))
        if (a, j) in values and (b, j) in values
    ]
    tested = [c for c in comps if c.result is not None]
    for c, p in zip(tested, holm([float(c.result.p_value) for c in tested if c.result is not None])):
        c.p_holm = None if math.isnan(p) else p
    if supported:  # else the verdict line says it
        notes.append(_legend(len(tested)))
    return MethodTable(methods, table.columns, cells, comps, supported, notes)


def _all_values(table: Table, methods: list[Method], notes: list[str]) -> dict[tuple[int, int], list[dict[str, float]]]:
    """(method, column) -> each seed's per-item values, for the columns where every seed has a score."""
    out = {}
    for m, method in enumerate(methods):
        for j, col in enumerate(table.columns):
            if not all((i, j) in table.cells for i in method.rows):
                continue
            try:
                out[(m, j)] = [unit_values(table, i, j) for i in method.rows]
            except (ValueError, KeyError, OSError, EvalHarnessError) as e:
                notes.append(f"{method.name}, {col.label}: no method-level estimate: {e}")
    return out


def _pairs(methods: list[Method], against: str | None) -> list[tuple[int, int]]:
    """(a, b) pairs tested as a - b: each method against ``against``, else every later method against each earlier."""
    if against is not None:
        ref = [m.name for m in methods].index(against)
        return [(a, ref) for a in range(len(methods)) if a != ref]
    return [(a, b) for a in range(len(methods)) for b in range(a)]


def _legend(tests: int) -> str:
    return (
        "method: mean over seeds and prompts; 95% CI: t with Satterthwaite df over seed-to-seed and "
        f"prompt-sampling variance; Δ: paired over shared prompts, seeds independent; * Holm p < {ALPHA} over the "
        f"section's {tests} tests; MDE: the difference detectable with 80% power"
    )


def verdicts(mt: MethodTable) -> list[str]:
    """One line per method comparison on each column with a direction: which method is better, or no
    significant difference with the MDE; with one seed per method, that the claim is not supported."""
    if not mt.supported:
        return [f"method-level: {UNSUPPORTED}"]
    out = []
    for c in mt.comparisons:
        col = mt.columns[c.j]
        if col.higher_is_better is None:
            continue
        a, b = mt.methods[c.a].name, mt.methods[c.b].name
        head = f"{a} vs {b} on {col.label}:"
        if c.result is None:
            out.append(f"{head} not compared ({c.why})")
            continue
        r, d = c.result, _digits(col)
        what = f"Δ {_num(r.estimate, d, True)} [{_num(r.ci_low, d, True)}, {_num(r.ci_high, d, True)}], Holm p {_p(c.p_holm)}"
        if c.significant:
            better = a if (float(r.estimate) > 0) == bool(col.higher_is_better) else b
            out.append(
                f"{head} {better} is better ({what}, {len(mt.methods[c.a].rows)} vs {len(mt.methods[c.b].rows)} seeds)"
            )
        else:
            out.append(f"{head} no significant difference ({what}; MDE {_num(c.mde, d)})")
    return out


# ---------------------------------------------------------------- rendering
def _digits(col: Column) -> int:
    if col.metric in ("length", "avg_length"):
        return 1
    digits = display_of(col.task).digits
    return 3 if digits is None else digits


def _num(x: Any, d: int, sign: bool = False) -> str:
    if x is None or math.isnan(float(x)):
        return "—"
    return f"{float(x):+.{d}f}" if sign else f"{float(x):.{d}f}"


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "—"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _mean_text(cell: MethodCell | None, d: int) -> str:
    if cell is None:
        return "—"
    if cell.result is None:
        return f"({cell.why})"
    r = cell.result
    return f"{_num(r.estimate, d)} [{_num(r.ci_low, d)}, {_num(r.ci_high, d)}] df={float(r.df):.1f}"


def _delta_text(c: MethodComparison, d: int) -> str:
    if c.result is None:
        return f"({c.why})"
    r = c.result
    text = (
        f"{_num(r.estimate, d, True)} [{_num(r.ci_low, d, True)}, {_num(r.ci_high, d, True)}] p={_p(float(r.p_value))}"
    )
    return text + ("*" if c.significant else f" (MDE {_num(c.mde, d)})") + f" df={float(r.df):.1f}"


def method_grids(mt: MethodTable) -> dict[str, Any]:
    """The method section as text cells: ``means`` and ``differences`` (each ``head`` and ``body``; differences
    None without a test) and the verdict and note ``lines``. The terminal, markdown and HTML report show these."""
    head = ["method", "algorithm", "seeds"] + [f"method mean {c.label}" for c in mt.columns]
    body = [
        [m.name, m.algorithm, str(len(m.rows))]
        + [_mean_text(mt.cells.get((k, j)), _digits(c)) for j, c in enumerate(mt.columns)]
        for k, m in enumerate(mt.methods)
    ]
    diffs = None
    if mt.comparisons:
        by_pair: dict[tuple[int, int], dict[int, MethodComparison]] = defaultdict(dict)
        for c in mt.comparisons:
            by_pair[(c.a, c.b)][c.j] = c
        rows = [
            [f"{mt.methods[a].name} − {mt.methods[b].name}"]
            + [_delta_text(cs[j], _digits(c)) if j in cs else "—" for j, c in enumerate(mt.columns)]
            for (a, b), cs in by_pair.items()
        ]
        diffs = {"head": ["method difference"] + [f"Δ method {c.label}" for c in mt.columns], "body": rows}
    return {"means": {"head": head, "body": body}, "differences": diffs, "lines": [*verdicts(mt), *mt.notes]}


def render_methods(mt: MethodTable, fmt: str = "table") -> str:
    """The method section: a row per method (mean over seeds, its CI), a row per comparison (Δ, CI, p, Holm
    star or MDE), then the verdicts. Its columns are method columns only."""
    grids = method_grids(mt)
    out = render_grid(**grids["means"], fmt=fmt, left=3, title="methods (across training seeds)")
    if grids["differences"]:
        out += render_grid(**grids["differences"], fmt=fmt)
    return out + ("\n" if fmt == "markdown" else "") + "".join(f"{line}\n" for line in grids["lines"])


def method_rows(mt: MethodTable) -> list[dict[str, Any]]:
    """The method section as one flat table for the trackers: a row per method mean and per method difference."""
    recs = method_records(mt)
    means = [{"kind": "mean", "against": None, "value": r.pop("mean"), **r} for r in recs["methods"]]
    for r in means:
        r["seeds"] = ",".join(map(str, r["seeds"]))
    diffs = [{"kind": "difference", "value": r.pop("delta"), **r} for r in recs["comparisons"]]
    keys = list(dict.fromkeys(k for r in means + diffs for k in r))
    return [{k: r.get(k) for k in keys} for r in means + diffs]


def method_records(mt: MethodTable) -> dict[str, Any]:
    """The method section as JSON: per method and column, per comparison and column, the verdicts and notes."""

    def nums(r: SeedPromptResult | None, kind: str) -> dict[str, Any]:
        more = ("var_seed", "var_prompt") if kind == "mean" else ("p_value",)
        if r is None:  # the same keys, empty: one schema whether or not there is an estimate
            return dict.fromkeys((kind, "ci_low", "ci_high", "se", "df", *more))
        out = {kind: r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high, "se": r.se, "df": r.df}
        out.update({k: getattr(r, k) for k in more})
        return {k: None if math.isnan(float(v)) else float(v) for k, v in out.items()}

    methods = [
        {
            "method": m.name,
            "algorithm": m.algorithm,
            "n_seeds": len(m.rows),
            "seeds": m.seeds,
            "task": c.task,
            "metric": c.metric,
            "n_items": cell.n_units,
            "n_items_dropped": cell.n_dropped,
            "why_not": cell.why,
            **nums(cell.result, "mean"),
        }
        for (k, j), cell in sorted(mt.cells.items())
        for m, c in [(mt.methods[k], mt.columns[j])]
    ]
    comparisons = [
        {
            "method": mt.methods[c.a].name,
            "against": mt.methods[c.b].name,
            "task": mt.columns[c.j].task,
            "metric": mt.columns[c.j].metric,
            "n_items": c.n_units,
            "p_holm": c.p_holm,
            "mde": None if math.isnan(c.mde) else c.mde,
            "significant": c.significant,
            "why_not": c.why,
            **nums(c.result, "delta"),
        }
        for c in mt.comparisons
    ]
    message = None if mt.supported else UNSUPPORTED
    return {
        "supported": mt.supported,
        "message": message,
        "methods": methods,
        "comparisons": comparisons,
        "verdicts": verdicts(mt),
        "notes": mt.notes,
    }


def render_compare(table: Table, mt: MethodTable | None, fmt: str = "table") -> str:
    """``compare``'s output: the checkpoint table, then (where rows are trained checkpoints) the method section;
    in JSON, the method section under ``methods`` (csv: the checkpoint rows only)."""
    text = render(table, fmt)
    if mt is None or fmt == "csv":
        return text
    if fmt == "json":
        return json.dumps({**json.loads(text), "methods": method_records(mt)}, indent=2)
    return text + "\n" + render_methods(mt, fmt)
