"""Experiment trackers (``report_to``, as in transformers and TRL): W&B and MLflow get what the store has.

Training: every ``metrics.jsonl`` row, under its own names, with the step as the x axis; the train manifest as
the config. Evaluation: every score (value, CI, n, n_skipped per model/task/metric), the scores and the comparison
table rows and figures its callers built (``compare.report_to_trackers``), the run manifest as config.

The results store is the record and trackers are copies of it: a row is written to the store first, then handed
to the trackers. An unknown name or a missing package fails at start, before anything is trained or generated; a
tracker that cannot open its run (W&B online without credentials) fails when the run opens, as transformers'
callbacks fail at init: before a training run's first step, or after an evaluation's results are stored. A tracker that fails later, at log time, is switched off for the rest of that run with one warning naming it
and the error; the run goes on and finishes, since every number it would have sent is in the run folder.

Offline: W&B with ``WANDB_MODE=offline`` writes its run under ``$WANDB_DIR`` (default: the run folder); MLflow
uses ``$MLFLOW_TRACKING_URI``, by default ``sqlite:///RESULTS/mlflow.db``; a SQLite store's artifacts go beside its
database (``mlartifacts/``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Literal, Protocol, get_args

import pydantic

from evalharness.core.errors import InputError, MissingExtraError

TrackerName = Literal["wandb", "mlflow"]
KNOWN: tuple[str, ...] = get_args(TrackerName)
Log = Callable[[str], None]


def _names(value: Any) -> Any:
    return [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value


# A spec's ``report_to:``: a list or a comma string of tracker names, or none; unknown names fail validation
# (with the spec's file, line and field, as every spec error).
ReportTo = Annotated[
    list[Literal["wandb", "mlflow", "none"]],
    pydantic.BeforeValidator(_names),
    pydantic.AfterValidator(lambda v: [n for n in dict.fromkeys(v) if n != "none"]),
]


def parse_report_to(value: str | Sequence[str] | None) -> list[str]:
    """Tracker names from ``--report-to`` (``wandb,mlflow``, ``none``) or a list; an unknown name is an InputError."""
    names = _names(value) or []
    for n in names:
        if n not in (*KNOWN, "none"):
            raise InputError(f"unknown tracker '{n}'; known: {', '.join(KNOWN)}, or none", field="report_to")
    return [n for n in dict.fromkeys(names) if n != "none"]


def check(names: Sequence[str]) -> None:
    """Fail now, before a long run, on an unknown tracker or a tracker whose package is not installed."""
    for n in parse_report_to(names):
        _require(n)


def _require(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtraError(package, package) from None


class Tracker(Protocol):
    """One tracker run. ``step`` None logs a final value (W&B: the run summary; MLflow: step 0)."""

    name: str

    def log_config(self, config: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None: ...
    def log_artifact(self, path: Path, folder: str = "") -> None: ...
    def finish(self, failed: bool = False) -> None: ...


@dataclass
class RunInfo:
    """What a tracker run is called and where its local files go."""

    name: str
    kind: str  # train | eval: W&B's job_type, an MLflow tag
    folder: Path  # the run folder: W&B's default dir
    results: Path  # the results root: MLflow's default store
    group: str | None = None  # W&B group (a sweep's name)


def flatten(d: Mapping[str, Any], parent: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested dicts as one level, keys joined by ``sep`` (transformers' ``flatten_dict``, which its MLflow callback
    applies to the config); an empty dict stays a value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{parent}{sep}{k}" if parent else str(k)
        if v and isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def numeric(row: Mapping[str, Any], skip: Iterable[str] = ("step",)) -> dict[str, float]:
    """The numbers of a row, as trackers take them: None, text and ``skip`` (the x axis) left out."""
    return {
        k: float(v) for k, v in row.items() if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


class WandbTracker:
    """A W&B run; ``WANDB_MODE``, ``WANDB_PROJECT`` (default ``evalharness``), ``WANDB_DIR`` are W&B's own."""

    name = "wandb"

    def __init__(self, info: RunInfo) -> None:
        self._wandb = wandb = _require("wandb")
        folder = None
        if not os.environ.get("WANDB_DIR"):
            info.folder.mkdir(parents=True, exist_ok=True)
            folder = str(info.folder)
        # create_new: a run of ours never finishes (or reuses) a run the calling program has open
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "evalharness",
            name=info.name,
            group=info.group,
            job_type=info.kind,
            dir=folder,
            reinit="create_new",
        )

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)  # W&B shows nested config as dotted keys

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if step is None:
            self.run.summary.update(dict(metrics))
        else:
            self.run.log(dict(metrics), step=step)

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = [[_cell(r.get(c)) for c in columns] for r in rows]
        self.run.log({name: self._wandb.Table(columns=columns, data=data, allow_mixed_types=True)})

    def log_artifact(self, path: Path, folder: str = "") -> None:
        key = f"{folder}/{path.stem}" if folder else path.stem
        if path.suffix == ".png":
            self.run.log({key: self._wandb.Image(str(path))})
        self.run.save(str(path), base_path=str(path.parent), policy="now")

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (dict, list)) else v


# MLflow's rules for metric and param keys (mlflow.utils.validation): these characters, at most 250 of them;
# param values at most 6000 characters.
_MLFLOW_BAD = re.compile(r"[^\w/.\- :]")
_MLFLOW_KEY, _MLFLOW_VALUE = 250, 6000


def mlflow_key(key: str) -> str:
    """A metric or param name as MLflow accepts it: every other character (a model's ``@``) becomes ``_``; an empty,
    ``.`` or ``..`` path segment (a model given as an absolute path: ``/ckpt/...``) becomes ``_``, since MLflow refuses
    names that would resolve to another as a file path; a name over MLflow's 250 characters keeps its tail, after
    8 hex digits of its hash so that two long names stay apart."""
    key = "/".join("_" if part in ("", ".", "..") else part for part in _MLFLOW_BAD.sub("_", key).split("/"))
    if len(key) > _MLFLOW_KEY:
        key = f"{hashlib.sha256(key.encode()).hexdigest()[:8]}_{key[-(_MLFLOW_KEY - 9) :]}"
    return key


class MlflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run, so the calling program's own run is left
    alone); ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME`` (default ``evalharness``) are respected."""

    name = "mlflow"

    def __init__(self, info: RunInfo, log: Log) -> None:
        _require("mlflow")
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local store under the results root
            info.results.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(info.results / 'mlflow.db').resolve()}"
        # A local SQLite store keeps the artifacts of experiments we create beside its database, not in MLflow's
        # default ./mlruns of whatever folder the command runs in; a server or file store decides for itself.
        artifacts = None
        if uri.startswith("sqlite:///"):
            artifacts = (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        self.uri, self._log = uri, log
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "evalharness"
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=artifacts)
        tags = {"evalharness.kind": info.kind, "evalharness.folder": str(info.folder.resolve())}
        if info.group:
            tags["evalharness.group"] = info.group
        self.run_id = self.client.create_run(exp_id, run_name=info.name, tags=tags).info.run_id

    def log_config(self, config: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params, dropped = [], []
        for k, v in flatten(config).items():
            key, value = mlflow_key(k), str(v)
            if len(key) > _MLFLOW_KEY or len(value) > _MLFLOW_VALUE:
                dropped.append(k)  # as transformers' MLflow callback: too long for a param, left out
                continue
            params.append(Param(key, value))
        if dropped:
            self._log(f"mlflow: {len(dropped)} config values too long for a param, not logged (first: {dropped[0]})")
        for i in range(0, len(params), 100):  # MLflow's limit per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), v, now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        import pandas as pd

        self.client.log_table(
            self.run_id, pd.DataFrame([{k: _cell(v) for k, v in r.items()} for r in rows]), f"{name}.json"
        )

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self.client.log_artifact(self.run_id, str(path), folder or None)

    def finish(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class Trackers:
    """Every tracker of one run, each call fanned out to all; one that fails at log time is switched off with a
    warning (see the module docstring). Also the no-op tracker: ``Trackers([])``."""

    def __init__(self, trackers: list[Tracker], log: Log = lambda _: None, where: str = "the run folder") -> None:
        self.active, self.log, self.where = list(trackers), log, where
        self.failed: list[str] = []

    def _each(self, method: str, *args: Any) -> None:
        for t in list(self.active):
            try:
                getattr(t, method)(*args)
            except Exception as e:  # a tracker's failure must never lose or stop the run whose copy it holds
                self.active.remove(t)
                self.failed.append(t.name)
                self.log(
                    f"warning: {t.name} failed at {method} ({type(e).__name__}: {e}); it is switched off for "
                    f"the rest of this run; every number is in {self.where}"
                )
                if method != "finish":
                    try:  # best effort: its run says it failed rather than "running"
                        t.finish(failed=True)
                    except Exception:
                        pass

    def log_config(self, config: Mapping[str, Any]) -> None:
        self._each("log_config", config)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if metrics:
            self._each("log_metrics", metrics, step)

    def log_row(self, row: Mapping[str, Any]) -> None:
        """A ``metrics.jsonl`` row: its numbers under their own names, at its step."""
        self.log_metrics(numeric(row), int(row["step"]))

    def log_table(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._each("log_table", name, rows)

    def log_artifact(self, path: Path, folder: str = "") -> None:
        self._each("log_artifact", path, folder)

    def finish(self, failed: bool = False) -> None:
        self._each("finish", failed)
        self.active = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.finish(failed=kind is not None)


def start(names: Sequence[str], info: RunInfo, log: Log = lambda _: None) -> Trackers:
    """Open a run on every named tracker; a tracker that cannot start raises (the ones already open are closed)."""
    opened: list[Tracker] = []
    try:
        for n in parse_report_to(names):
            opened.append(WandbTracker(info) if n == "wandb" else MlflowTracker(info, log))
    except BaseException:
        Trackers(opened).finish(failed=True)
        raise
    return Trackers(opened, log, str(info.folder))


# ---------------------------------------------------------------- training
def start_training(names: Sequence[str], out: Path, results: Path, log: Log = lambda _: None) -> Trackers:
    """The tracker run of a training run: the train manifest as config, then the rows ``metrics.jsonl`` already
    holds (a resumed run's steps before its checkpoint), so the tracker's curve is the file's from step 1."""
    from evalharness.store import TRAIN_MANIFEST, read_jsonl

    if not names:
        return Trackers([])
    manifest = json.loads((out / TRAIN_MANIFEST).read_text())
    t = start(names, RunInfo(manifest["run_name"], "train", out, results), log)
    t.log_config(manifest)
    for row in read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").is_file() else []:
        t.log_row(row)
    return t


# ---------------------------------------------------------------- evaluation
def score_rows(scores: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per score: value, SE, 95% CI (from the SE where only that is stored), n, n_skipped and the
    comparability key."""
    from evalharness.core.records import score_ci

    rows = []
    for s in scores:
        lo, hi = score_ci(s)
        rows.append(
            {
                "model": s.model,
                "task": s.task,
                "metric": s.metric,
                "value": s.value,
                "stderr": s.stderr,
                "ci_low": lo,
                "ci_high": hi,
                "n": s.n,
                "n_skipped": s.n_skipped,
                "task_version": s.task_version,
                "judge_id": s.judge_id,
                "judge_version": s.judge_version,
                "baseline": s.baseline,
            }
        )
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]


def score_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Scores as tracker metrics: ``MODEL/TASK/METRIC/value``, ``.../ci_low``, ``.../ci_high``, ``.../n``,
    ``.../n_skipped`` (each a leaf, so no name is also another's folder in a file store)."""
    out = {}
    for r in rows:
        for stat in ("value", "ci_low", "ci_high", "n", "n_skipped"):
            if r[stat] is not None:
                out[f"{r['model']}/{r['task']}/{r['metric']}/{stat}"] = float(r[stat])
    return out


def report_evaluation(
    names: Sequence[str],
    run_path: Path,
    *,
    comparison: list[dict[str, Any]] | None = None,
    figures: Sequence[Path] = (),
    group: str | None = None,
    log: Log = lambda _: None,
    methods: list[dict[str, Any]] | None = None,
) -> None:
    """Send a finished evaluation run to the trackers: its manifest and scores, the comparison table's rows
    (``comparison``, as ``compare.records`` gives them) and ``figures``. A sink: the callers build tables and
    figures. A tracker that cannot start is one line on ``log``, never an exception: the run is complete."""
    from evalharness.store import RunStore

    if not names:
        return
    store = RunStore(run_path)
    rows = score_rows(store.scores())
    try:
        t = start(names, RunInfo(store.run_id, "eval", run_path, run_path.parent, group), log)
    except MissingExtraError:
        raise
    except Exception as e:  # no login, no server: the finished run must not end in a traceback
        first = (str(e).strip().splitlines() or [""])[0]
        log(
            f"error: tracker could not start ({type(e).__name__}: {first}); nothing was sent, every number is "
            f"in {run_path}"
        )
        return
    with t:
        t.log_config(store.manifest())
        t.log_metrics(score_metrics(rows))
        t.log_table("scores", rows)
        if comparison is not None:
            t.log_table("comparison", comparison)
        if methods:  # analysis.methods.method_rows: method means and differences across training seeds
            t.log_table("methods", methods)
        for p in figures:
            t.log_artifact(Path(p), "figures")
    if t.failed:
        log(f"trackers: {', '.join(t.failed)} did not get everything; the run is complete in {run_path}")
