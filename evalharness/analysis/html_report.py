"""``evalharness report``: one self-contained HTML page per comparison (table, figures, per-prompt viewer).

The page is one file with no network and no server: the comparison is ``compare``'s (``resolve``,
``build_table``, ``best_checkpoint``, ``cell_text``), the figures are ``plot.py``'s and
``plot.plot_history``'s (inlined as data: URIs), and every model's answers and judgments are read
through the store's typed methods and keyed as the tasks key them (each task rebuilt from the run
manifest; ``Session.answer`` finds a request's stored sample). All data goes into one JSON blob inside
``<script type="application/json">`` and the page's script renders it lazily, one page of rows at a
time. Model outputs and judge texts are untrusted: the script writes them with ``textContent`` only, the
blob is escaped for its script context, and a strict CSP (no network, nonce'd script and style) stands
behind that.
"""

from __future__ import annotations

import base64
import html
import json
import math
import secrets
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from evalharness.analysis.compare import (
    ALPHA,
    Entry,
    Table,
    best_checkpoint,
    build_table,
    cell_text,
    mark_drops,
    records,
    resolve,
    stored_task,
)
from evalharness.analysis.methods import build_methods, method_grids
from evalharness.analysis.plot import NOT_REWARDS, plot_history
from evalharness.analysis.reliability import reliability_data
from evalharness.core import provenance
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import GenRecord, Verdict
from evalharness.store import RunStore
from evalharness.tasks.base import GenerationSettings, ModelRecords, RunEnv, Session, Task, display_of, task_class
from evalharness.tasks.prompted import PromptSetTask, per_prompt


def _unit(module: str, item_id: str) -> str:
    """The unit an item is paired and shown on (MT-Bench: the question of a turn), from the task's DISPLAY."""
    unit_of = display_of(module).unit_of
    return unit_of(item_id) if unit_of else item_id


# ---------------------------------------------------------------- tasks as the run recorded them
def _rebuild_task(store: RunStore, name: str) -> tuple[str, Task | None]:
    """(module, the task with its items loaded) from the run manifest, or (module, None) when its config
    or data are gone (a schema-1 run, a moved prompt file): the viewer then shows no prompt text."""
    manifest = store.manifest()
    ident = ((manifest.get("config") or {}).get("tasks") or {}).get(name) or {}
    try:
        module, _, config = stored_task(store, name)
    except EvalHarnessError:
        return name, None
    if "config" not in ident:
        return module, None
    try:
        cls = task_class(module)
        known = {f.name for f in fields(cls.Config)}
        cfg = cls.Config(**{k: v for k, v in config.items() if k in known})
        gen = GenerationSettings(
            **{k: v for k, v in (ident.get("generation") or {}).items() if k in GenerationSettings.__dataclass_fields__}
        )
        judge = manifest.get("judge") or {}
        env = RunEnv(
            generation=gen,
            out_dir=store.path,
            judge_name=str(judge.get("name") or ""),
            reference_name=manifest.get("reference"),
            progress=False,
        )
        task = cls(name, cfg, env, gen)
        if isinstance(task, PromptSetTask):
            PromptSetTask.setup(task)  # the prompt items only: reading answers needs no classifier
        else:
            task.setup()
        return module, task
    except (EvalHarnessError, OSError, ValueError, TypeError, KeyError):  # data moved or not fetchable offline
        return module, None


def _session(store: RunStore, model: str, records: list[GenRecord]) -> Session:
    """The model's Session as the run loop built it (its identity from the manifest), never loading it."""
    ident = next(
        (dict(m) for m in (store.manifest().get("config") or {}).get("models", []) if m.get("name") == model), {}
    )
    ident.pop("name", None)

    def no_backend() -> Any:
        raise EvalHarnessError("the report reads stored records; it never loads a model")

    return Session(model, ident, no_backend, records)


def _prompt_text(req: Any) -> str:
    if req.messages:
        users = [m["content"] for m in req.messages if m.get("role") == "user"]
        return users[-1] if users else str(req.messages[-1].get("content", ""))
    return str(req.prompt or "")


def _probabilities(v: Verdict) -> dict[str, float] | None:
    """The judge's probabilities where it gives them: MT-Bench's rating distribution, a label judge's
    choice log-probs, AlpacaEval's m/M top log-probs."""
    if isinstance(v.meta.get("rating_probabilities"), dict):
        return {str(k): float(p) for k, p in v.meta["rating_probabilities"].items()}
    logps: dict[str, float] = {}
    if isinstance(v.meta.get("choice_logprobs"), dict):
        logps = {str(k): float(x) for k, x in v.meta["choice_logprobs"].items()}
    elif isinstance(v.raw, dict):
        content = ((v.raw.get("logprobs") or {}).get("content") or [{}])[0] or {}
        logps = {
            str(t["token"]): float(t["logprob"])
            for t in content.get("top_logprobs") or []
            if isinstance(t, dict) and "token" in t and "logprob" in t
        }
    if not logps:
        return None
    top = max(logps.values())
    z = sum(math.exp(x - top) for x in logps.values())
    return {k: math.exp(x - top) / z for k, x in logps.items()}


def _judgment(v: Verdict, scale: Callable[[float], float]) -> dict[str, Any]:
    raw = v.raw if isinstance(v.raw, str) or v.raw is None else json.dumps(v.raw, ensure_ascii=False)
    return {
        "status": v.status,
        "value": v.value,
        "score": scale(v.value) if v.value is not None else None,
        "order": v.order,
        "raw": raw,
        "error": v.error,
        "probs": _probabilities(v),
        "sample": v.sample_index,
        "label": v.meta.get("label"),
        "game": v.meta.get("game"),
        "turn": v.meta.get("turn"),
        "item": v.item_id,
    }


def task_items(
    entry: Entry, name: str, module: str, task: Task | None, prompts: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """One model's items of one task: unit -> answers, judgments and the per-item score (the mean of its ok
    judgments on the task's readable scale, as ``per_prompt`` pairs prompt-set tasks), plus the prompts."""
    store, model = entry.store, entry.model
    records = store.generations(model)
    scale = display_of(module).item_scale or (lambda v: v)  # per-item scores on the task's readable scale
    items: dict[str, dict[str, Any]] = defaultdict(lambda: {"answers": [], "judgments": []})
    if task is not None:
        session = _session(store, model, records)
        for req in task.requests(session):
            unit = _unit(module, req.id)
            p = prompts.setdefault(unit, {"text": [], "category": ""})
            text = _prompt_text(req)
            if text not in p["text"]:
                p["text"].append(text)
            for si, g in enumerate(session.samples(req)):
                if g is not None:
                    items[unit]["answers"].append(_answer(g, req.id, si))
    by_key = {g.key: g for g in records}
    verdicts = store.verdicts(name, model)
    for v in sorted(verdicts, key=lambda v: (v.item_id, v.meta.get("game") or 0, v.sample_index)):
        unit = _unit(module, v.item_id)
        items[unit]["judgments"].append(_judgment(v, scale))
        if task is None and v.key in by_key and not any(a["key"] == v.key for a in items[unit]["answers"]):
            items[unit]["answers"].append(_answer(by_key[v.key], v.item_id, v.sample_index))  # reward/KL: key = sample
        category = v.meta.get("category")
        if category:
            prompts.setdefault(unit, {"text": [], "category": ""})["category"] = str(category)
    for unit, (category, baseline) in (task.item_extras() if task is not None else {}).items():
        if unit in prompts:
            prompts[unit].update({"baseline": baseline, **({"category": category} if category else {})})
    values = per_prompt(ModelRecords(store, model, name))
    merged: dict[str, list[float]] = defaultdict(list)
    for item_id, xs in values.items():
        merged[_unit(module, item_id)] += [scale(x) for x in xs]
    for unit, it in items.items():
        unit_scores = merged.get(unit)
        it["score"] = sum(unit_scores) / len(unit_scores) if unit_scores else None
        it["chars"] = sum(len(a["text"]) for a in it["answers"]) / len(it["answers"]) if it["answers"] else None
        it["failed"] = sum(j["status"] == "error" for j in it["judgments"])
        it["unparsed"] = sum(j["status"] == "unparsed" for j in it["judgments"])
    return dict(items)


def _answer(g: GenRecord, request_id: str, sample: int) -> dict[str, Any]:
    return {
        "key": g.key,
        "request": request_id,
        "sample": sample,
        "text": g.text,
        "n_tokens": g.n_tokens,
        "finish": g.finish_reason,
        "thinking": g.thinking,  # a reasoning policy's trace: shown folded, never judged
        "n_thinking_tokens": g.n_thinking_tokens,
    }


# ---------------------------------------------------------------- figures
def _data_uri(path: Path) -> str:
    kind = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode()


def figures(
    table: Table,
    entries: list[Entry],
    items: dict[str, list[dict[str, Any]]],
    work: Path,
    results_dir: str | Path | None,
) -> tuple[list[dict[str, str]], list[str]]:
    """(figures as {title, uri, note}, notes on figures left out): the frontier, the trends over checkpoints,
    and each task's answer length against its score per model (a length exploit shows as a slope)."""
    out, notes = _frontier_figure(table, entries, work, results_dir)
    out.extend(_trend_figures(table, entries, work))
    for task, per_model in items.items():
        fig = _length_scatter(task, entries, per_model, work / f"length-{len(out)}")
        if fig is not None:
            out.append(fig)
    return out, notes


def _frontier_reward(table: Table) -> str | None:
    """The first column that is a classifier reward (its cells carry a judge description), or None."""
    return next(
        (
            c.metric
            for j, c in enumerate(table.columns)
            if c.metric not in NOT_REWARDS
            and any(cell.score.extra.get("judge_desc") for (_, jj), cell in table.cells.items() if jj == j)
        ),
        None,
    )


def _frontier_figure(
    table: Table, entries: list[Entry], work: Path, results_dir: str | Path | None
) -> tuple[list[dict[str, str]], list[str]]:
    """(the reward vs KL frontier figure if one can be drawn, the note saying why not if it failed)."""
    out: list[dict[str, str]] = []
    notes: list[str] = []
    metrics = {c.metric for c in table.columns}
    # The frontier's y axis: a classifier reward (its judge described, as plot.py labels its axis).
    reward = _frontier_reward(table)
    if "kl" in metrics and reward is not None:
        from evalharness.analysis.plot import frontier_points, plot_frontier

        try:
            runs = list(dict.fromkeys(str(e.store.path) for e in entries))
            points, meta = frontier_points(
                runs, reward_metric=reward, results_dir=Path(results_dir) if results_dir else None
            )
            if points:
                files = plot_frontier(points, meta, work / "frontier")
                out.append(
                    {
                        "title": "Reward vs KL frontier",
                        "uri": _data_uri(files[1]),
                        "note": f"{len(points)} models; {meta['skipped']} left out",
                    }
                )
        except EvalHarnessError as err:
            notes.append(f"no frontier: {err}")
    return out, notes


def _trend_figures(table: Table, entries: list[Entry], work: Path) -> list[dict[str, str]]:
    """One trend-over-checkpoints figure per tracked metric, when the rows form a lineage."""
    out: list[dict[str, str]] = []
    stepped = [i for i, e in enumerate(entries) if e.step is not None]
    if len(stepped) >= 2:  # the rows form a lineage: one trend per tracked metric
        for j, col in enumerate(table.columns):
            if col.higher_is_better is None:
                continue
            pts = _trend_points(table, entries, j)
            if len(pts) < 2:
                continue
            mark_drops(pts, higher_is_better=col.higher_is_better)
            files = plot_history(pts, work / f"trend-{j}", title=col.label)
            out.append(
                {
                    "title": f"Trend over checkpoints: {col.label}",
                    "uri": _data_uri(files[1]),
                    "note": "red circles: a significant drop from the previous checkpoint",
                }
            )
    return out


def _trend_points(table: Table, entries: list[Entry], j: int) -> list[dict[str, Any]]:
    """Column ``j``'s scored checkpoints (and the reference row), ordered by run name then step."""
    col = table.columns[j]
    pts = []
    for i, e in enumerate(entries):
        cell = table.cells.get((i, j))
        if cell is None or cell.score.value is None or (e.step is None and i != table.against):
            continue
        s = cell.score
        pts.append(
            {
                "run": e.store.run_id,
                "path": str(e.store.path),
                "task": col.task,
                "metric": col.metric,
                "model": e.model,
                "step": e.step,
                "run_name": e.info.get("run_name"),
                "value": s.value,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
            }
        )
    pts.sort(key=lambda p: (p["run_name"] or "", p["step"] if p["step"] is not None else -1))
    return pts


def _length_scatter(
    task: str, entries: list[Entry], per_model: list[dict[str, Any]], out: Path
) -> dict[str, str] | None:
    from evalharness.analysis.plot import new_figure, save_figure

    series = []
    for e, its in zip(entries, per_model):
        pts = [(it["chars"], it["score"]) for it in its.values() if it["chars"] is not None and it["score"] is not None]
        if pts:
            series.append((e.label, pts))
    if not series:
        return None
    fig, ax = new_figure(dpi=120)
    for k, (label, pts) in enumerate(series):
        xs, ys = zip(*pts)
        ax.scatter(xs, ys, s=10, alpha=0.45, color=f"C{k % 10}")
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        ax.scatter([mx], [my], s=90, marker="D", color=f"C{k % 10}", edgecolors="black", label=label, zorder=5)
    ax.set_xlabel("answer length (characters, mean over an item's samples or turns)")
    ax.set_ylabel(f"{task}: per-item score")
    ax.set_title(f"{task}: length vs score (dots: items; diamonds: each model's mean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    files = save_figure(fig, out)
    # PNG, not SVG: thousands of item dots make an SVG of megabytes (1.5 MiB at 10 x 805), the PNG ~100 KiB.
    return {
        "title": f"Length vs score: {task}",
        "uri": _data_uri(files[0]),
        "note": "a model whose mean moves right and up together with its items may be winning on length",
    }


# ---------------------------------------------------------------- the data blob
_ARROWS: dict[bool | None, str] = {True: "↑", False: "↓"}


def _table_data(table: Table) -> dict[str, Any]:
    cols = [
        {
            "label": c.label,
            "arrow": _ARROWS.get(c.higher_is_better, ""),
            "task": c.task,
            "metric": c.metric,
        }
        for c in table.columns
    ]
    rows = []
    for i, e in enumerate(table.rows):
        cells = []
        for j in range(len(table.columns)):
            value, delta = cell_text(table, i, j)
            cell = table.cells.get((i, j))
            cells.append(
                {
                    "value": value,
                    "delta": "(reference)" if i == table.against else delta,
                    "sig": bool(cell is not None and cell.significant),
                    "n": cell.score.n if cell else None,
                    "skipped": cell.score.n_skipped if cell else None,
                }
            )
        rows.append(
            {
                "label": e.label,
                "algorithm": e.algorithm,
                "step": e.step,
                "setting": " ".join(f"{k}={v}" for k, v in e.setting.items()),
                "cells": cells,
            }
        )
    return {"columns": cols, "rows": rows, "notes": table.notes, "records": records(table), "alpha": ALPHA}


def _provenance(entries: list[Entry]) -> list[dict[str, Any]]:
    out = []
    for store in dict.fromkeys(e.store.path for e in entries):
        m = RunStore(store).manifest()
        cfg = m.get("config") or {}
        out.append(
            {
                "run": m.get("run_id", store.name),
                "kind": m.get("kind"),
                "status": m.get("status"),
                "started_at": m.get("started_at"),
                "finished_at": m.get("finished_at"),
                "git": m.get("git"),
                "backend": m.get("backend"),
                "judge": m.get("judge"),
                "reference": m.get("reference"),
                "generation": cfg.get("generation"),
                "models": [
                    {"name": x.get("name"), "spec": x.get("spec"), "revision": x.get("revision")}
                    for x in m.get("models", [])
                ],
                "tasks": {
                    k: {
                        "module": v.get("module"),
                        "version": v.get("version"),
                        "decoding": (cfg.get("tasks") or {}).get(k, {}).get("generation"),
                    }
                    for k, v in (m.get("tasks") or {}).items()
                },
            }
        )
    return out


def report_data(
    refs: list[str],
    *,
    against: str | None = None,
    results_dir: str | Path | None = None,
    work: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data: resolved and tabulated exactly as ``compare`` does
    (``log``: progress of the long paired bootstraps)."""
    entries = resolve(refs, results_dir)
    table = build_table(entries, against=against, log=log)
    best = _best_checkpoint_row(table, entries)
    items, prompts, modules = _all_task_items(entries)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        figs, fig_notes = figures(table, entries, items, Path(tmp), results_dir)
    against_row = table.against if table.against is not None else 0
    default_b = best["row"] if best else (1 if len(entries) > 1 and against_row == 0 else 0)
    return {
        "generated_at": provenance.now(),
        "refs": refs,
        "models": [
            {"label": e.label, "run": e.store.run_id, "model": e.model, "algorithm": e.algorithm, "step": e.step}
            for e in entries
        ],
        "against": table.against,
        "best": best,
        "default_a": against_row,
        "default_b": default_b,
        "table": _table_data(table),
        "methods": method_grids(mt) if (mt := build_methods(table)) is not None else None,
        "figures": figs,
        "figure_notes": fig_notes,
        "tasks": {
            n: {
                "module": modules.get(n, n),
                "flip_at": display_of(modules.get(n, n)).flip_at,
                "prompts": prompts[n],
                "items": items[n],
            }
            for n in items
        },
        "provenance": _provenance(entries),
        "judge_reliability": reliability_data(entries),  # the judge's own figures (analysis.reliability)
    }


def _best_checkpoint_row(table: Table, entries: list[Entry]) -> dict[str, Any] | None:
    """The best checkpoint on the first directed metric (with its row), or None without a reference."""
    for col in table.columns:
        if col.higher_is_better is not None and table.against is not None:
            v = best_checkpoint(table, col.metric)
            if v is not None:
                return {**v, "row": next(i for i, e in enumerate(entries) if e.label == v["best_model"])}
    return None


def _all_task_items(
    entries: list[Entry],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, dict[str, dict[str, Any]]], dict[str, str]]:
    """(per task, each model's items; per task, its prompts; per task, its module), each task rebuilt once
    per run."""
    items: dict[str, list[dict[str, Any]]] = {}
    prompts: dict[str, dict[str, dict[str, Any]]] = {}
    modules: dict[str, str] = {}
    rebuilt: dict[tuple[Path, str], tuple[str, Task | None]] = {}
    for name in dict.fromkeys(s.task for e in entries for s in e.scores):
        items[name] = []
        prompts[name] = {}
        for e in entries:
            if name not in {s.task for s in e.scores}:
                items[name].append({})
                continue
            key = (e.store.path, name)
            if key not in rebuilt:
                rebuilt[key] = _rebuild_task(e.store, name)
            module, task = rebuilt[key]
            modules[name] = module
            items[name].append(task_items(e, name, module, task, prompts[name]))
    return items, prompts, modules


# ---------------------------------------------------------------- the page
def script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``</script>``, ``<!--`` or ``]]>`` can end or
    bend the block, and U+2028/2029 stay escaped (JSON.parse reads every ``\\uXXXX`` back)."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _clean(x: Any) -> Any:
    """NaN and infinities are not JSON: None (undefined with too few items)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _asset(name: str) -> str:
    return resources.files("evalharness.data").joinpath(name).read_text(encoding="utf-8")


def render_html(data: dict[str, Any], *, title: str = "evalharness report") -> str:
    """The page: a strict CSP, the inline style and script (one nonce), and the data blob."""
    nonce = secrets.token_urlsafe(18)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src data:; "
        "base-uri 'none'; form-action 'none'; connect-src 'none'; frame-src 'none'; object-src 'none'"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<title>{html.escape(title)}</title>\n<style nonce="{nonce}">\n{_asset("report.css")}</style>\n</head>\n'
        '<body>\n<div id="app"><p id="loading">Loading report…</p></div>\n'
        f'<script id="report-data" type="application/json">{script_json(_clean(data))}</script>\n'
        f'<script nonce="{nonce}">\n{_asset("report.js")}</script>\n</body>\n</html>\n'
    )


def write_report(
    refs: list[str],
    out: str | Path,
    *,
    against: str | None = None,
    results_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Build the report of ``refs`` (as ``evalharness compare`` reads them) into ``out``, written atomically."""
    from evalharness.store import write_text_atomic

    out = Path(out)
    data = report_data(
        refs, against=against, results_dir=results_dir, log=log, work=out.parent if out.parent.is_dir() else None
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, render_html(data, title=f"evalharness report: {', '.join(refs)}"))
    return out


# Public names for the judge-drift check (workflows.drift), which rebuilds a stored run's task and session as the
# report's viewer does, to ask today's judge about the same answers.
rebuild_task = _rebuild_task
stored_session = _session
