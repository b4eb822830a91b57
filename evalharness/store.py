"""Results store: one folder per run plus a cross-run SQLite index.

results/<run_id>/manifest.json   what ran, exactly (written atomically, status updated in place)
                 generations.jsonl, verdicts.jsonl   append-only; a restart skips keys already present
                 scores.jsonl, summary.json          derived at the end (atomic rewrite)
results/index.sqlite             runs and scores across runs, for history and regression queries

A killed run can leave at most one partial trailing JSONL line; it is dropped on resume
(arena-hard-auto's results-file-as-resume-cache idea, made crash-safe).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from evalharness.core import provenance
from evalharness.core.errors import EvalHarnessError, InputError, parse_json
from evalharness.core.paths import results_root, write_atomic
from evalharness.core.records import KEY_FIELDS, GenRecord, Score, Verdict

# A training run's folder describes itself in this file (written by the trainer, read by trackers and sweeps).
TRAIN_MANIFEST = "train_manifest.json"


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, lambda f: json.dump(data, f, indent=2, ensure_ascii=False, default=str))


def write_jsonl_atomic(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    write_atomic(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text))


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (crash mid-write) is dropped, and cut off if ``repair``."""
    if not path.is_file():
        return []
    rows, good = [], 0
    with open(path, "rb") as f:
        data = f.read()
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return rows


class RunStore:
    """A run folder. ``open`` creates it or resumes it when the config matches.

    It takes and gives typed records (``GenRecord``, ``Verdict``); rows are read from disk once and
    kept in memory as they are appended, so the run loop asks it freely.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._lock: Any = None

    @property
    def run_id(self) -> str:
        return self.path.name

    @classmethod
    def open(cls, run_id: str, manifest: dict[str, Any], root: Path | None = None) -> RunStore:
        check_name(run_id, "run id")
        store = cls((root or results_root()) / run_id)
        store.path.mkdir(parents=True, exist_ok=True)
        store._acquire()
        mpath = store.path / "manifest.json"
        if mpath.is_file():
            old = json.loads(mpath.read_text())
            # The stored config went through JSON (tuples became lists): compare it so.
            if old.get("config") != json.loads(json.dumps(manifest.get("config"), default=str)):
                store._release()
                raise EvalHarnessError(
                    f"run '{run_id}' already exists in {store.path} with another config; pick another --run-id"
                )
            manifest = {**manifest, "started_at": old.get("started_at"), "resumed": old.get("resumed", 0) + 1}
            for name in ("generations", "verdicts"):
                read_jsonl(store.path / f"{name}.jsonl", repair=True)
        write_json_atomic(mpath, {**manifest, "status": "running", "pid": os.getpid()})
        index_run(store.path.parent, store.manifest(), None)  # listed as running; stale if its writer dies
        return store

    def _acquire(self) -> None:
        """One writer per run folder: jobs launched side by side (a SLURM array) may share a results root,
        but two processes appending to one run would interleave records."""
        import fcntl

        self._lock = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise EvalHarnessError(f"run '{self.run_id}' is being written by another process ({self.path})") from None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def manifest(self) -> dict[str, Any]:
        return read_json_object(self.path / "manifest.json")

    def update_manifest(self, **changes: Any) -> None:
        write_json_atomic(self.path / "manifest.json", {**self.manifest(), **changes})

    @contextlib.contextmanager
    def recording_failure(self) -> Iterator[RunStore]:
        """Mark the run 'interrupted' (Ctrl-C) or 'failed' (any other exception) in its manifest, then re-raise;
        running the same command again resumes it."""
        try:
            yield self
        except BaseException as e:
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            status = getattr(e, "run_status", status)  # e.g. 'stopped' by the judge budget (pipeline.budget)
            with contextlib.suppress(Exception):  # a full disk must not hide the first error behind a second
                self.update_manifest(
                    status=status,
                    error=f"{type(e).__name__}: {e}",
                    finished_at=provenance.now(),
                    **getattr(e, "manifest_fields", {}),
                )
                index_run(self.path.parent, self.manifest(), None)
            self._release()
            raise

    def append(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with open(self.path / f"{name}.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())
        if name in self._rows:
            self._rows[name] += [json.loads(json.dumps(r, default=str)) for r in rows]

    def read(self, name: str) -> list[dict[str, Any]]:
        if name not in self._rows:
            self._rows[name] = read_jsonl(self.path / f"{name}.jsonl")
        return self._rows[name]

    # -- typed records ------------------------------------------------------------------------
    def add_generations(self, records: list[GenRecord]) -> None:
        self.append("generations", [r.to_dict() for r in records])

    def generations(self, model: str | None = None) -> list[GenRecord]:
        """Stored generations (of ``model``), in file order; rows of schema 1 have no key and are not returned."""
        return [
            GenRecord.from_dict(r)
            for r in self.read("generations")
            if "key" in r and "item_id" in r and (model is None or r.get("model") == model)
        ]

    def add_verdicts(self, verdicts: list[Verdict]) -> None:
        self.append("verdicts", [v.to_dict() for v in verdicts])

    def verdicts(self, task: str | None = None, model: str | None = None) -> list[Verdict]:
        """Stored verdicts, upgraded from schema 1 where needed; a later row for one key replaces an earlier one
        (a failed judgment retried on resume)."""
        manifest = self.manifest() if (self.path / "manifest.json").is_file() else {}
        latest: dict[tuple[str, str, str], Verdict] = {}
        for row in self.read("verdicts"):
            v = _verdict_from_row(row, manifest)
            if (task is None or v.task == task) and (model is None or v.model == model):
                latest[(v.task, v.model, v.key)] = v
        return list(latest.values())

    def finish(self, scores: list[Score], summary: dict[str, Any], finished_at: str) -> None:
        write_jsonl_atomic(self.path / "scores.jsonl", (s.to_dict() for s in scores))
        write_json_atomic(self.path / "summary.json", summary)
        self.update_manifest(status="complete", finished_at=finished_at)
        index_run(self.path.parent, self.manifest(), scores)
        self._release()

    def scores(self) -> list[Score]:
        """The finished run's scores (``summary.json``; also readable for runs of schema 1).

        An unfinished run (running, killed, interrupted, failed) is an error that says its state and the
        command that resumes it; a damaged summary is an InputError naming the file and the field."""
        path = self.path / "summary.json"
        if not path.is_file():
            manifest = self.manifest()
            status = run_state(self.path, manifest)
            if status == "complete":
                raise InputError(f"missing, though the run is complete; {DAMAGED}", path=str(path))
            if status == "running":
                raise EvalHarnessError(
                    f"run {self.run_id} is still running (its process is alive); wait for it to finish"
                )
            state = {"stale": "stale: killed, its process is gone"}.get(status, status)
            raise EvalHarnessError(f"run {self.run_id} has no scores yet ({state}): {resume_hint(manifest)}")
        rows = read_json_object(path).get("scores", [])
        if not isinstance(rows, list):
            raise InputError(f"expected a list, found {type(rows).__name__}; {DAMAGED}", path=str(path), field="scores")
        return [_score(row, path, k) for k, row in enumerate(rows)]


DAMAGED = "the run folder is damaged: rerun the command that made it, or move the folder out of the results root"


def _score(row: Any, path: Path, k: int) -> Score:
    try:
        if not isinstance(row, dict):
            raise TypeError(f"expected an object, found {type(row).__name__}")
        score = Score.from_dict(row)
        if score.value is not None and not isinstance(score.value, (int, float)):
            raise TypeError(f"value {score.value!r} is not a number")
        return score
    except (TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{e}; {DAMAGED}", path=str(path), field=f"scores[{k}]") from None


def read_json_object(path: Path, hint: str = DAMAGED) -> dict[str, Any]:
    """A JSON object file of the store (manifest, summary); a file that is missing, not UTF-8, not JSON or
    not an object is an InputError naming it, with ``hint`` saying what to do."""
    try:
        data = parse_json(path.read_bytes(), path=path, what=f"not JSON; {hint}")
    except FileNotFoundError:
        raise InputError(f"missing; {hint}", path=str(path)) from None
    except IsADirectoryError:
        raise InputError(f"a folder, not a file; {hint}", path=str(path)) from None
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, found {type(data).__name__}; {hint}", path=str(path))
    return data


def resume_hint(manifest: dict[str, Any]) -> str:
    """The command that resumes an unfinished run, from the command line its manifest recorded."""
    import shlex

    argv = manifest.get("argv")
    if isinstance(argv, list) and len(argv) > 1 and all(isinstance(a, str) for a in argv) and _is_cli(argv[0]):
        return f"resume it with `evalharness {shlex.join(argv[1:])}`"
    return "run the command that started it again to resume it"


def _is_cli(program: str) -> bool:
    """Whether a recorded argv[0] is the evalharness command (the console script, or ``python -m evalharness``),
    so that its arguments are a command a user can run again; a library caller's script is not."""
    path = Path(program)
    return path.name == "evalharness" or (path.name in ("cli.py", "__main__.py") and path.parent.name == "evalharness")


def manifest_models(manifest: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """A run manifest's models by name (or spec); a ``models`` field of the wrong shape names the file."""
    models = manifest.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise InputError(f"expected a list of objects; {DAMAGED}", path=str(path / "manifest.json"), field="models")
    return {str(m.get("name") or m.get("spec")): m for m in models}


def checkpoint_manifest(entry: dict[str, Any], name: str = "evalharness_manifest.json") -> dict[str, Any]:
    """What a checkpoint's own manifest says about it (algorithm, step, run_name, base_model), from the folder
    a run's model entry names (``path``, else ``spec``); {} for a base or hub model."""
    for cand in dict.fromkeys(c for c in (entry.get("path"), entry.get("spec")) if isinstance(c, str) and c):
        path = Path(cand).expanduser() / name
        if path.is_file():
            return read_json_object(path, hint="not a checkpoint manifest: retrain or restore the checkpoint folder")
    return {}


# Schema-1 eval runs named no task on their verdicts; their judge ids name it.
_V1_EVAL_TASKS = {"vader": "sentiment", "alt-profanity-check": "toxicity", "kl": "kl"}


def _verdict_from_row(row: dict[str, Any], manifest: dict[str, Any]) -> Verdict:
    """A Verdict from a stored row; schema-1 rows (``evaluate.py``'s and the benchmark tasks' ad-hoc dicts)
    are mapped onto the one shape, so runs written before schema 2 stay readable by compare and plots."""
    if "task" in row and "model" in row and "item_id" in row:
        return Verdict.from_dict(row)
    row = dict(row)
    models = manifest.get("models") or [{}]
    config = manifest.get("config") or {}
    if "task" not in row:  # an `eval` run
        judge = str(row.get("judge_id", ""))
        row["task"] = _V1_EVAL_TASKS.get(judge, "reward" if judge.startswith("hf-classifier:") else judge)
    row.setdefault("model", config.get("model_name") or config.get("model") or models[0].get("spec", ""))
    if "item_id" not in row:  # MT-Bench rows: question and turn
        row["item_id"] = f"{row.get('question_id')}:{row.get('turn')}"
    if row.get("judge_version") is None:
        row["judge_version"] = str(row.get("judge_prompt", ""))
    row.setdefault("judge_id", "")
    value = row.get("value") if row.get("status") == "ok" else None
    return Verdict.from_dict({**row, "value": value, "key": row.get("key", "")})


def comparable(a: Score, b: Score) -> tuple[bool, str]:
    """Whether two scores may share a table column, and if not, why (DESIGN: the comparability key).

    They must agree on task, task version, metric, judge id, judge version, baseline and the policy's
    decoding; the reason names every field that differs, with both values.
    """
    diffs = [
        f"{f}: {getattr(a, f)!r} vs {getattr(b, f)!r}"
        for f in KEY_FIELDS
        if a.key[KEY_FIELDS.index(f)] != b.key[KEY_FIELDS.index(f)]
    ]
    return (not diffs, "; ".join(diffs))


def check_name(name: str, what: str) -> str:
    """A run id or model name that becomes a path component: never ``..``, a separator or absolute."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("~") or "\x00" in name:
        raise EvalHarnessError(
            f"{what} '{name}' cannot be a folder name inside the results root "
            "(no '/', '..', absolute paths or empty names)"
        )
    return name


def run_state(path: Path, manifest: dict[str, Any] | None = None) -> str:
    """The manifest's status, except that a 'running' run whose writer is gone (SIGKILL, power loss) is
    'stale': its ``.lock`` flock is free (the kernel drops it with the process) or its ``pid`` is dead."""
    import fcntl

    if manifest is None:
        manifest = read_json_object(path / "manifest.json")
    status = str(manifest.get("status", "unknown"))
    if status != "running":
        return status
    pid = manifest.get("pid")
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "stale"
        except PermissionError:
            pass  # alive, another user's
    try:
        with open(path / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: nobody holds it; closing releases it
    except BlockingIOError:
        return "running"
    except OSError:
        return status
    return "stale"


def indexed_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """Every run of the index with its live state (``run_state``: 'running' or 'stale' for unfinished ones)."""
    rows = _query(root, "SELECT run_id, path, kind, status, started_at, finished_at FROM runs ORDER BY started_at")
    out = []
    for run_id, path, kind, status, started, finished in rows:
        folder = Path(path)
        if (folder / "manifest.json").is_file():
            with contextlib.suppress(InputError):  # a damaged manifest keeps the index's word
                status = run_state(folder)
        out.append(
            {
                "run_id": run_id,
                "path": path,
                "kind": kind,
                "status": status,
                "started_at": started,
                "finished_at": finished,
            }
        )
    return out


def _query(root: Path | None, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read query on the index ([] when there is none); a damaged index names its file."""
    index = (root or results_root()) / "index.sqlite"
    if not index.is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(index)) as db:
            return db.execute(sql, args).fetchall()
    except sqlite3.DatabaseError as e:
        if "no such table" in str(e):
            return []
        raise InputError(
            f"not a readable results index ({e}); move it aside and rerun the runs to rebuild it", path=str(index)
        ) from None


def latest_run_of(model: str, root: Path | None = None) -> Path | None:
    """The newest complete run in the index with scores for ``model`` whose folder is still there."""
    rows = _query(
        root,
        "SELECT r.path FROM scores s JOIN runs r ON r.run_id = s.run_id WHERE s.model = ? AND "
        "r.status = 'complete' ORDER BY r.finished_at DESC",
        (model,),
    )
    return next((Path(p) for (p,) in rows if (Path(p) / "manifest.json").is_file()), None)


def unfinished_runs_of(model: str, root: Path | None = None) -> list[dict[str, Any]]:
    """Indexed runs that name ``model`` and never finished, with their live state and resume command."""
    out = []
    for run in indexed_runs(root):
        if run["status"] == "complete" or not (Path(run["path"]) / "manifest.json").is_file():
            continue
        try:
            manifest = read_json_object(Path(run["path"]) / "manifest.json")
            names = manifest_models(manifest, Path(run["path"]))
        except InputError:
            continue
        if model in names or any(m.get("spec") == model for m in names.values()):
            out.append({**run, "resume": resume_hint(manifest)})
    return out


def index_scores(
    root: Path | None = None, *, task: str | None = None, metric: str | None = None
) -> list[dict[str, Any]]:
    """Every indexed score of a complete run (optionally of one task and metric), with its run's path and
    manifest text: what ``history`` reads."""
    sql = (
        "SELECT s.run_id, s.task, s.metric, s.model, s.value, s.ci_low, s.ci_high, s.n, s.n_skipped, "
        "s.finished_at, r.path, r.manifest FROM scores s JOIN runs r ON r.run_id = s.run_id WHERE r.status = "
        "'complete'"
    )
    args: list[Any] = []
    for column, value in (("task", task), ("metric", metric)):
        if value:
            sql += f" AND s.{column} = ?"
            args.append(value)
    names = (
        "run",
        "task",
        "metric",
        "model",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "n_skipped",
        "finished_at",
        "path",
        "manifest",
    )
    return [dict(zip(names, row)) for row in _query(root, sql, tuple(args))]


def find_run(run: str, root: Path | None = None) -> Path:
    """A run folder from a path or a run id under the results root."""
    p = Path(run)
    for cand in (p, (root or results_root()) / run):
        if (cand / "manifest.json").is_file():
            return cand
    raise EvalHarnessError(f"no run '{run}' (looked for {p}/manifest.json and {(root or results_root()) / run})")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, path TEXT, kind TEXT, status TEXT,
  started_at TEXT, finished_at TEXT, git_commit TEXT, git_dirty INTEGER, manifest TEXT);
CREATE TABLE IF NOT EXISTS scores (run_id TEXT, task TEXT, task_version TEXT, metric TEXT, model TEXT,
  model_revision TEXT, value REAL, stderr REAL, ci_low REAL, ci_high REAL, n INTEGER, n_skipped INTEGER,
  judge_id TEXT, judge_version TEXT, reference_model TEXT, finished_at TEXT,
  PRIMARY KEY (run_id, task, metric, model));
"""


def index_run(root: Path, manifest: dict[str, Any], scores: list[Score] | None) -> None:
    """Upsert a run and its scores into ``root/index.sqlite`` in one transaction (``scores`` None: a run that
    starts, listed with its status and no scores yet).

    Many evaluation jobs may finish at once on one results root (a SLURM array on a shared
    filesystem): SQLite serialises writers, ``BEGIN IMMEDIATE`` takes the write lock before reading,
    and a busy database is waited for (timeout), so no run is lost.
    """
    db = sqlite3.connect(root / "index.sqlite", timeout=120, isolation_level=None)
    try:
        db.executescript(_SCHEMA)
        db.execute("BEGIN IMMEDIATE")
        rid = manifest["run_id"]
        db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?)", _run_row(root, manifest))
        if scores is None:
            db.execute("COMMIT")
            return
        db.execute("DELETE FROM scores WHERE run_id = ?", (rid,))
        db.executemany("INSERT INTO scores VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", _score_rows(manifest, scores))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    finally:
        db.close()


def _run_row(root: Path, manifest: dict[str, Any]) -> tuple[Any, ...]:
    """The run's row of the index's ``runs`` table, read from its manifest."""
    rid = manifest["run_id"]
    git = manifest.get("git") or {}
    return (
        rid,
        str(root / rid),
        manifest.get("kind"),
        manifest.get("status"),
        manifest.get("started_at"),
        manifest.get("finished_at"),
        git.get("commit"),
        int(bool(git.get("dirty"))),
        json.dumps(manifest, default=str),
    )


def _score_rows(manifest: dict[str, Any], scores: list[Score]) -> list[tuple[Any, ...]]:
    """The run's rows of the index's ``scores`` table, each with its model's revision from the manifest."""
    revisions = {m.get("name") or m.get("spec"): m.get("revision") for m in manifest.get("models", [])}
    return [
        (
            manifest["run_id"],
            s.task,
            s.task_version,
            s.metric,
            s.model,
            revisions.get(s.model),
            s.value,
            s.stderr,
            s.ci_low,
            s.ci_high,
            s.n,
            s.n_skipped,
            s.judge_id,
            s.judge_version,
            s.baseline,
            manifest.get("finished_at"),
        )
        for s in scores
    ]


# -- training runs -------------------------------------------------------------------------------------------------
# A training run's folder (RESULTS/train/[SWEEP/]RUN) holds train_manifest.json (what the run is and how it ended),
# metrics.jsonl (a row per logged step) and its checkpoints. The store owns the manifest's lifecycle
# (start / resume / checkpoint / finish / fail), every write atomic, and lists the run in the cross-run index as a
# row of ``runs`` with kind 'train', so an index written before training runs were indexed reads as before.

TRAIN_MANIFEST = "train_manifest.json"
TRAIN_METRICS = "metrics.jsonl"
TRAIN_KIND = "train"


def read_train_manifest(out: Path) -> dict[str, Any] | None:
    """A training run's manifest, or None when the folder has none (or a torn one from before atomic writes)."""
    try:
        return dict(json.loads((out / TRAIN_MANIFEST).read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def train_index_root(out: Path) -> Path:
    """The results root a training run is indexed in: the folder above the ``train/`` that holds it, else the
    default results root (a run given an ``--output-dir`` elsewhere)."""
    for parent in out.resolve().parents:
        if parent.name == "train":
            return parent.parent
    return results_root()


def train_run_id(out: Path) -> str:
    """The run's id in the index: its path under the results root (``train/...``), unique like a folder."""
    folder, root = out.resolve(), train_index_root(out)
    return str(folder.relative_to(root)) if folder.is_relative_to(root) else str(folder)


def index_train_run(out: Path, manifest: dict[str, Any]) -> None:
    """Upsert a training run into its results root's ``index.sqlite`` (kind 'train', no scores)."""
    root = train_index_root(out)
    root.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(root / "index.sqlite", timeout=120, isolation_level=None)
    try:
        db.executescript(_SCHEMA)
        git = manifest.get("git") or {}
        db.execute(
            "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?)",
            (
                train_run_id(out),
                str(out.resolve()),
                TRAIN_KIND,
                manifest.get("status"),
                manifest.get("started_at"),
                manifest.get("finished_at"),
                git.get("commit"),
                int(bool(git.get("dirty"))),
                json.dumps(manifest, default=str),
            ),
        )
    finally:
        db.close()


def _write_train_manifest(out: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(out / TRAIN_MANIFEST, manifest)
    index_train_run(out, manifest)


def start_train_run(out: Path, manifest: dict[str, Any]) -> None:
    """A fresh run folder, listed as running (any older content of ``out`` is gone)."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _write_train_manifest(out, {**manifest, "status": "running", "checkpoints": []})


def resume_train_run(out: Path, step: int, checkpoints: list[str], resumed: dict[str, Any]) -> None:
    """A killed run's folder put back to its checkpoint at ``step``: metric rows after it cut (they are computed
    again), the error of the last attempt dropped, the resume recorded."""
    write_jsonl_atomic(out / TRAIN_METRICS, [r for r in read_jsonl(out / TRAIN_METRICS) if r["step"] <= step])
    man = read_train_manifest(out) or {}
    man.pop("error", None)
    man.update(status="running", checkpoints=checkpoints, resumed=[*man.get("resumed", []), resumed])
    _write_train_manifest(out, man)


def record_train_checkpoint(out: Path, checkpoints: list[str]) -> None:
    """List the run's complete checkpoints (folder names, in step order) in its manifest."""
    _write_train_manifest(out, {**(read_train_manifest(out) or {}), "checkpoints": checkpoints})


def finish_train_run(out: Path, **fields: Any) -> None:
    """Mark the run finished, with ``fields`` (final metrics, training time, an algorithm's final state)."""
    _write_train_manifest(
        out, {**(read_train_manifest(out) or {}), "status": "finished", "finished_at": provenance.now(), **fields}
    )


def fail_train_run(out: Path, error: BaseException) -> None:
    """Mark the run 'interrupted' (Ctrl-C) or 'failed', with the error; running it again resumes it."""
    man = read_train_manifest(out)
    if man is None:
        return
    man.update(
        status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
        error=f"{type(error).__name__}: {error}",
        finished_at=provenance.now(),
    )
    with contextlib.suppress(Exception):  # a full disk must not hide the first error behind a second
        _write_train_manifest(out, man)


def append_train_metrics(out: Path, row: dict[str, Any]) -> None:
    """One logged step appended to the run's ``metrics.jsonl``."""
    with open(out / TRAIN_METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


# What every algorithm's metrics row is read as: the first key a row has (offline and PPO name KL differently).
_TRAIN_SERIES = {"loss": ("loss",), "reward_accuracy": ("rewards/accuracies",), "kl": ("kl", "objective/kl")}


def train_metrics(run: Path | str, root: Path | None = None) -> list[dict[str, Any]]:
    """A training run's own logged metrics per step: ``step``, ``loss``, ``reward_accuracy`` and ``kl`` (None where
    the algorithm logs no such number), beside every raw column. ``run`` is the run folder or its index id."""
    folder = Path(run)
    if not (folder / TRAIN_MANIFEST).is_file():
        folder = (root or results_root()) / str(run)
    if not (folder / TRAIN_MANIFEST).is_file():
        raise EvalHarnessError(f"no training run '{run}' (looked for {TRAIN_MANIFEST} in {Path(run)} and {folder})")
    out = []
    for row in read_jsonl(folder / TRAIN_METRICS):
        named = {k: next((row[c] for c in cols if row.get(c) is not None), None) for k, cols in _TRAIN_SERIES.items()}
        out.append({**row, **named})
    return out


def train_runs(root: Path | None = None) -> list[dict[str, Any]]:
    """The training runs of the index (``indexed_runs`` of kind 'train'), with each run's name and algorithm."""
    out = []
    for run in indexed_runs(root):
        if run["kind"] == TRAIN_KIND:
            man = read_train_manifest(Path(run["path"])) or {}
            out.append({**run, "run_name": man.get("run_name"), "algorithm": man.get("algorithm")})
    return out
