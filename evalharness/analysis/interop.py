"""Recompute benchmark metrics from the official tools' own files, and import them as runs.

``evalharness metrics alpaca-eval|arena-hard|mt-bench FILE`` calls ``compute``; ``--save`` calls
``import_run`` so official results sit in the same store (and SQLite index) as our own runs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from evalharness.core import provenance
from evalharness.core.errors import InputError
from evalharness.core.records import SCHEMA_VERSION, Score
from evalharness.store import RunStore, write_json_atomic

BENCHES = ("alpaca-eval", "arena-hard", "mt-bench")


def compute(bench: str, path: str | Path, **options: Any) -> tuple[dict[str, Any], list[Score]]:
    """Metrics dict (JSON-ready) and Score records for one official results file, each score with its
    direction as the benchmark's task gives it (win rates and scores higher-is-better, a length none),
    so `regress` gates imported models too."""
    metrics, scores = _compute(bench, Path(path), **options)
    for s in scores:
        if s.higher_is_better is None and s.metric != "avg_length":
            s.higher_is_better = True
    return metrics, scores


def _compute(bench: str, path: Path, **options: Any) -> tuple[dict[str, Any], list[Score]]:
    if not path.exists():
        raise InputError("file not found", path=str(path))
    opts = {k: v for k, v in options.items() if v is not None}
    if bench == "alpaca-eval":
        from evalharness.tasks.alpaca_eval import metric as m

        metrics = m.metrics_from_annotations_file(path, **opts)
        return metrics, m.to_scores(metrics, metrics["model"])
    if bench == "arena-hard":
        from evalharness.tasks.arena_hard import metric as a

        metrics = a.metrics_from_file(path, **opts)
        return metrics, a.to_scores(metrics)
    if bench == "mt-bench":
        from evalharness.tasks.mt_bench import metric as t

        metrics = t.metrics_from_file(path, **opts)
        return metrics, t.to_scores(metrics)
    raise InputError(f"unknown benchmark '{bench}'; one of {', '.join(BENCHES)}")


def import_run(
    bench: str, path: str | Path, metrics: dict[str, Any], scores: list[Score], results_dir: str | Path | None = None
) -> Path:
    """Store recomputed official metrics as a run ``import-<bench>-<file hash>`` (idempotent)."""
    digest = hashlib.sha256(Path(path).read_bytes() if Path(path).is_file() else str(path).encode()).hexdigest()
    run_id = f"import-{bench}-{digest[:10]}"
    manifest = {
        "run_id": run_id,
        "kind": "import",
        "schema_version": SCHEMA_VERSION,
        "started_at": provenance.now(),
        "config": {"bench": bench, "source": str(Path(path).resolve()), "sha256": digest},
        **provenance.environment(),
        "models": [{"spec": s.model, "revision": None} for s in scores],
    }
    task = bench.replace("-", "_")
    manifest["tasks"] = {task: {"module": f"evalharness.tasks.{task}", "version": "imported"}}
    store = RunStore.open(run_id, manifest, Path(results_dir) if results_dir else None)
    with store.recording_failure():
        _store_records(store, bench, Path(path), metrics, scores)
        summary = {
            "run_id": run_id,
            "path": str(store.path),
            "task": bench,
            "metrics": metrics,
            "scores": [s.to_dict() for s in scores],
        }
        store.finish(scores, summary, provenance.now())
    return store.path


def _store_records(store: RunStore, bench: str, path: Path, metrics: dict[str, Any], scores: list[Score]) -> None:
    """The per-item records of an imported file, so `compare` and `regress` can pair imported models item by
    item: AlpacaEval's annotations in the official layout, Arena-Hard's and MT-Bench's judgments as verdicts.
    (A battles file holds no per-game judgments: its scores import, its pairs cannot.)"""
    if store.verdicts() or (store.path / "alpaca_eval").exists():
        return  # an import is idempotent
    if bench == "alpaca-eval":
        from evalharness.tasks.alpaca_eval import metric as m
        from evalharness.tasks.base import file_name

        rows = m.load_annotations(path)
        model = metrics["model"]
        mine = [r for r in rows if r.get("generator_2", model) == model] or rows
        write_json_atomic(store.path / "alpaca_eval" / file_name(model) / "annotations.json", mine)
    elif bench == "mt-bench":
        from evalharness.tasks.mt_bench import metric as t

        verdicts = t.load_judgments(path)
        for v in verdicts:
            v.task, v.model, v.key = "mt_bench", v.meta["model"], f"{v.meta['question_id']}:t{v.meta['turn']}"
        store.add_verdicts(verdicts)
    elif bench == "arena-hard":
        from evalharness.tasks.arena_hard import metric as a

        if not (path.is_dir() or a.is_judgment_file(path)):
            return  # battles carry no per-game judgment to store
        verdicts = a.load_judgments(path, baseline=metrics["baseline"])
        for v in verdicts:
            v.task, v.model, v.key = "arena_hard", v.meta["model"], f"{v.item_id}:g{v.meta['game']}"
        store.add_verdicts(verdicts)
