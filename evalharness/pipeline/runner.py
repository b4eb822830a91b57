"""The one run loop: every task over every model, into one run folder, resumable.

For each model: generate what is missing (every task's requests, in rounds, so turn 2 can follow
turn 1), judge what is missing, release the model. Then every task aggregates its verdicts into
Scores. Records are appended as they are produced, so a kill loses at most one chunk; a rerun
skips what is done, and retries failed generations and failed judgments (never stored as results).

``evalharness run SPEC``, ``evalharness eval ...`` and a training sweep's evaluation all build a
``RunPlan`` and call ``run``.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from evalharness import trackers
from evalharness.backends import backend_options, capabilities, get_backend, scoring_backends
from evalharness.backends.base import Backend
from evalharness.core import provenance, reasoning
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.models import ModelRef, evict, resolve, resolve_dtype
from evalharness.core.records import (
    MAX_SKIPPED_SHARE,
    SCHEMA_VERSION,
    GenRecord,
    GenRequest,
    Score,
    Verdict,
    check_max_skipped,
    content_hash,
)
from evalharness.pipeline import presets
from evalharness.pipeline.preflight import preflight
from evalharness.pipeline.spec import JudgeSpec
from evalharness.store import RunStore
from evalharness.tasks.base import GenerationSettings, Pending, RunEnv, Session, Task, TaskSpec, task_class

JUDGE_CHUNK = 64
# What ``--rejudge`` re-asks: the statuses whose stored verdicts are asked again (bypassing the response
# cache). Failed judgments are re-asked on every run anyway; unparsed ones only when asked to.
REJUDGE = {"unparsed": ("unparsed",), "failed": ("error",), "all-bad": ("unparsed", "error")}


class JudgingFailed(EvalHarnessError):
    """A run stored every record, but a task's judging failed or went unparsed beyond the allowed share."""

    exit_code = 3  # the CLI's exit status: apart from 2 (bad input), so a CI can tell the two apart


@dataclass
class ModelSpec:
    """A model of a run: the name tables and files use, and the model ref (alias, folder, hub id, LoRA)."""

    name: str
    ref: str


@dataclass
class RunPlan:
    """Everything one run needs. Fields below ``run_id`` are bookkeeping, not identity."""

    name: str
    models: list[ModelSpec]
    tasks: list[TaskSpec]
    backend: str = "hf"
    backend_options: dict[str, Any] = field(default_factory=dict)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    reference: str | None = None  # the KL reference (a model ref; named like the model with the same ref)
    judge: JudgeSpec | None = None
    kind: str = "run"
    run_id: str | None = None
    results_dir: str | Path | None = None
    progress: bool = True
    chunk_size: int = 64  # requests per append: what a kill can lose
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in the manifest (e.g. the sweep it evaluates)
    report_to: list[str] = field(default_factory=list)  # trackers the finished run is sent to (trackers.py)
    rejudge: str | None = None  # a REJUDGE key: stored unparsed and/or failed verdicts are asked again
    # Library use: models already in memory (model ref -> backend), and a ready chat judge (judge, name).
    backends: dict[str, Backend] = field(default_factory=dict)
    chat_judge: tuple[Any, str] | None = None


@dataclass
class RunResult:
    path: Path
    scores: list[Score]
    summary: dict[str, Any]
    report_to: list[str] = field(
        default_factory=list
    )  # the trackers the caller sends it to (compare.report_to_trackers)


@dataclass
class JudgingCount:
    """One task and model of a finished run: judgments scored, failed and unparsed, and why its headline
    score is not a measurement (None: it is one)."""

    task: str
    model: str
    scored: int
    failed: int
    unparsed: int
    unmeasured: str | None = None

    def line(self) -> str:
        """One summary line, as ``run`` prints it at the end."""
        text = f"{self.task} {self.model}: {self.scored} scored, {self.failed} failed, {self.unparsed} unparsed"
        return text + (f": NOT MEASURED, {self.unmeasured}" if self.unmeasured else "")


def judging_counts(path: str | Path, max_skipped: float = MAX_SKIPPED_SHARE) -> list[JudgingCount]:
    """Per task and model of a finished run folder, its judgment counts and whether its headline scores (the
    first score of each task version: a benchmark category is its own) are measured, by ``Score.unmeasured``."""
    store = RunStore(Path(path))
    heads: dict[tuple[str, str], list[Score]] = {}
    seen: set[tuple[str, str, str]] = set()
    for s in store.scores():
        if (s.task, s.model, s.task_version) not in seen:
            seen.add((s.task, s.model, s.task_version))
            heads.setdefault((s.task, s.model), []).append(s)
    statuses: dict[tuple[str, str], Counter[str]] = {}
    for v in store.verdicts():  # the latest verdict of each key: a re-judged item counts once
        statuses.setdefault((v.task, v.model), Counter())[v.status] += 1
    out = []
    for (task, model), scores in heads.items():
        c = statuses.get((task, model), Counter())
        reasons = [f"{s.metric}: {r}" for s in scores if (r := s.unmeasured(max_skipped)) is not None]
        out.append(JudgingCount(task, model, c["ok"], c["error"], c["unparsed"], "; ".join(reasons) or None))
    return out


def check_judging(
    path: str | Path, max_skipped: float = MAX_SKIPPED_SHARE, log: Callable[[str], None] = lambda _: None
) -> list[JudgingCount]:
    """Log one line per task and model of a finished run; raise ``JudgingFailed`` (exit 3) if any is not measured."""
    counts = judging_counts(path, check_max_skipped(max_skipped))
    for c in counts:
        log(c.line())
    bad = [c for c in counts if c.unmeasured]
    if bad:
        which = ", ".join(f"{c.task} {c.model}" for c in bad)
        raise JudgingFailed(
            f"{len(bad)} of {len(counts)} task results are not measured ({which}); "
            f"every record is kept in {path}: run the same command again to retry failed judgments, "
            "with --rejudge unparsed to ask unparsed ones again"
        )
    return counts


def make_judge(spec: JudgeSpec, progress: bool) -> tuple[Any, str]:
    """A chat judge and the name it carries in scores (``(demo judge)`` marks a demo judge)."""
    if spec.type == "local":
        from evalharness.judges.local import LocalChatJudge

        judge: Any = LocalChatJudge(spec.model, dtype=spec.dtype, progress=progress)
        name = f"local:{judge.model_id}"
    else:
        from evalharness.backends.client import ClientConfig, JudgeClient

        judge = JudgeClient(
            ClientConfig(
                base_url=spec.base_url or "",
                model=spec.model,
                api_key_env=spec.api_key_env,
                concurrency=spec.concurrency,
                max_retries=spec.max_retries,
                timeout_s=spec.timeout_s,
                prices=spec.prices,
                cache=spec.cache,
            )
        )
        name = presets.judge_name(spec.model, spec.preset)  # a preset's numbers never share a column with others'
    return judge, name + (" (demo judge)" if spec.demo else "")


class _Models:
    """Resolves model refs once; the backend of a model is built only when something must be generated
    or scored, and one backend serves a model that is both a policy and the KL reference."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.caps = capabilities(plan.backend)
        self.options = backend_options(plan.backend, plan.backend_options, progress=plan.progress)
        if "dtype" in self.options:  # "auto" becomes what it means here, so the run's identity names it
            self.options["dtype"] = resolve_dtype(self.options["dtype"])
        self.refs: dict[str, ModelRef | None] = {}
        self.live: dict[str, Backend] = {}

    def ref(self, spec: str) -> ModelRef | None:
        if spec not in self.refs:
            self.refs[spec] = resolve(spec) if self.caps.local_weights and spec not in self.plan.backends else None
        return self.refs[spec]

    def identity(self, spec: str) -> dict[str, Any]:
        """What makes this model's samples what they are: backend, revision, number-changing options."""
        ref = self.ref(spec)
        options = {
            k: v
            for k, v in self.options.items()
            if k not in ("batch_size", "progress", "score_batch_size", "api_key_env", "concurrency")
        }
        given = self.plan.backends.get(spec)
        model = f"{ref.spec}@{ref.revision}" if ref else (given.model_id if given is not None else spec)
        return {"backend": getattr(given, "name", self.plan.backend), "model": model, "options": options}

    def reference_id(self, spec: str) -> str:
        """What a model is, whatever it is named: its content hash or revision (a hub id at its revision, an
        adapter's hash on its base's); the backend's model id or the ref itself where nothing is resolved."""
        ref = self.ref(spec)
        if ref is None:
            given = self.plan.backends.get(spec)
            return given.model_id if given is not None else spec
        return _ref_identity(ref)

    def backend(self, spec: str) -> Backend:
        if spec in self.plan.backends:
            return self.plan.backends[spec]
        if spec not in self.live:
            ref = self.ref(spec)
            self.live[spec] = get_backend(self.plan.backend, ref or spec, **self.options)
        return self.live[spec]

    def release(self, spec: str, keep: set[str]) -> None:
        if spec in keep or spec not in self.live:
            return
        backend = self.live.pop(spec)
        close = getattr(backend, "close", None)
        if close is not None:
            close()
        ref = self.refs.get(spec)
        if ref is not None:
            evict(ref)
        del backend
        gc.collect()

    def close(self) -> None:
        for spec in list(self.live):
            self.release(spec, set())


def _ref_identity(ref: ModelRef) -> str:
    own = f"{ref.path}@{ref.revision}" if ref.kind == "hub" else ref.revision
    return f"{own}+{_ref_identity(ref.base)}" if ref.base is not None else own


def _plan_models(plan: RunPlan, models: _Models) -> tuple[list[ModelSpec], str | None, str | None]:
    """Checked model list, the reference's spec, and the name its scores carry (a model's name when the
    reference is also evaluated, so the SFT row and the KL baseline are one model)."""
    if not plan.models:
        raise InputError("a run needs at least one model", field="models")
    names = [m.name for m in plan.models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"two models are named {dup[0]!r}; give each a distinct name", field="models")
    for m in plan.models:
        if not m.name:
            raise InputError("a model needs a non-empty name", field="models")
        models.ref(m.ref)  # resolves (and fails) before anything is written
    if plan.reference is None:
        return plan.models, None, None
    ref = models.ref(plan.reference)
    for m in plan.models:
        mref = models.ref(m.ref)
        if m.ref == plan.reference or (
            ref is not None and mref is not None and mref.path == ref.path and mref.revision == ref.revision
        ):
            return plan.models, m.ref, m.name
    return plan.models, plan.reference, plan.reference


def _setup_tasks(plan: RunPlan, env: RunEnv, ref_spec: str | None, log: Callable[[str], None]) -> list[Task]:
    """Every task of the plan, its items loaded and checked: a bad input fails here, before anything is written."""
    tasks: list[Task] = []
    for ts in plan.tasks:
        task = task_class(ts.module)(ts.name, ts.config, env, ts.generation)
        if task.needs_reference and ref_spec is None:
            raise InputError(
                f"task '{ts.name}' needs a reference model (the SFT model): set reference", field="reference"
            )
        if task.needs_reference and not capabilities(plan.backend).scores_responses:
            raise InputError(
                f"task '{ts.name}' scores the policy's responses (log-probs), which the "
                f"'{plan.backend}' backend cannot; use one that can: {scoring_backends()}",
                field="backend",
            )
        if task.needs_judge and env.judge is None:
            log(f"{ts.name}: no judge: answers are generated and written, nothing is scored")
        try:
            task.setup()
        except InputError as e:  # a file the spec names: say which spec and field named it
            if not plan.source or e.path == plan.source:
                raise
            raise InputError(str(e), path=plan.source, field=f"tasks.{ts.name}") from None
        tasks.append(task)
    if not tasks:
        raise InputError("a run needs at least one task", field="tasks")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InputError("two tasks have the same name", field="tasks")
    return tasks


def run(plan: RunPlan, log: Callable[[str], None] = lambda _: None) -> RunResult:
    """Run every task of ``plan`` over every model into one run folder; resume a run with the same identity."""
    trackers.check(plan.report_to)
    models = _Models(plan)
    model_list, ref_spec, ref_name = _plan_models(plan, models)
    judge, judge_name = plan.chat_judge or (make_judge(plan.judge, plan.progress) if plan.judge else (None, ""))
    env = RunEnv(
        generation=plan.generation,
        out_dir=Path("."),
        judge=judge,
        judge_name=judge_name,
        reference=(lambda: models.backend(ref_spec)) if ref_spec else None,
        reference_name=ref_name,
        reference_id=models.reference_id(ref_spec) if ref_spec else None,
        progress=plan.progress,
        log=log,
    )
    tasks = _setup_tasks(plan, env, ref_spec, log)
    _log_preflight(plan, log)
    identity = _run_identity(plan, models, model_list, ref_spec, judge, judge_name, tasks)
    run_id = plan.run_id or f"{plan.name}-{content_hash(identity, length=10)}"
    manifest = _run_manifest(plan, models, run_id, identity, model_list, ref_spec, ref_name, judge, judge_name, tasks)
    store = RunStore.open(run_id, manifest, Path(plan.results_dir) if plan.results_dir else None)
    env.out_dir = store.path
    log(f"run {run_id}: {store.path}")
    try:
        with store.recording_failure():
            sessions = _run_models(plan, store, models, model_list, ref_spec, tasks, log)
            scores, summary = _finish_run(store, run_id, model_list, tasks, sessions, judge, judge_name)
    finally:
        models.close()
    return RunResult(store.path, scores, summary, list(plan.report_to))


def _log_preflight(plan: RunPlan, log: Callable[[str], None]) -> None:
    """Log the preflight notes: after the local checks (files, models), before the run folder, the checks of
    keys, endpoints, decoding and data folders."""
    for note in preflight(
        backend=plan.backend,
        backend_options=plan.backend_options,
        generation=plan.generation,
        judge=None if plan.chat_judge else plan.judge,
        tasks=plan.tasks,
    ):
        log(note)


def _run_identity(
    plan: RunPlan,
    models: _Models,
    model_list: list[ModelSpec],
    ref_spec: str | None,
    judge: Any,
    judge_name: str,
    tasks: list[Task],
) -> dict[str, Any]:
    """What makes the run what it is (models, reference, judge, decoding, tasks): its hash names the run."""
    return {
        "models": [{"name": m.name, **models.identity(m.ref)} for m in model_list],
        "reference": models.identity(ref_spec) if ref_spec else None,
        "judge": {"name": judge_name, "protocol": getattr(judge, "protocol", None)} if judge else None,
        "generation": asdict(plan.generation),
        "tasks": {t.name: t.identity() for t in tasks},
    }


def _run_manifest(
    plan: RunPlan,
    models: _Models,
    run_id: str,
    identity: dict[str, Any],
    model_list: list[ModelSpec],
    ref_spec: str | None,
    ref_name: str | None,
    judge: Any,
    judge_name: str,
    tasks: list[Task],
) -> dict[str, Any]:
    """The run folder's manifest: the identity, provenance, resolved models, judge and task versions."""
    return {
        "run_id": run_id,
        "kind": plan.kind,
        "schema_version": SCHEMA_VERSION,
        "spec_file": plan.source,
        "config": identity,
        "started_at": provenance.now(),
        **provenance.environment(),
        "models": [_model_entry(m, models.ref(m.ref)) for m in model_list]
        + (
            [_model_entry(ModelSpec(ref_name, ref_spec), models.ref(ref_spec))]
            if ref_spec and ref_name is not None and ref_name not in {m.name for m in model_list}
            else []
        ),
        "reference": ref_name,
        "backend": plan.backend,
        "judge": {
            "name": judge_name,
            "id": getattr(judge, "model_id", None),
            "protocol": getattr(judge, "protocol", None),
        }
        if judge
        else None,
        "tasks": {t.name: {"module": t.identity()["module"], "version": t.VERSION} for t in tasks},
        **plan.meta,
    }


def _run_models(
    plan: RunPlan,
    store: RunStore,
    models: _Models,
    model_list: list[ModelSpec],
    ref_spec: str | None,
    tasks: list[Task],
    log: Callable[[str], None],
) -> dict[str, Session]:
    """Generate then judge what is missing for each model in turn, releasing each (but the reference) after."""
    keep = {ref_spec} if ref_spec else set()
    sessions: dict[str, Session] = {}
    for m in model_list:
        session = Session(m.name, models.identity(m.ref), partial(models.backend, m.ref), store.generations(m.name))
        sessions[m.name] = session
        _generate_missing(store, session, tasks, plan.chunk_size, plan.progress, log)
        _judge_missing(store, session, tasks, log, plan.rejudge, plan.progress)
        session.release()
        models.release(m.ref, keep)
    return sessions


def _finish_run(
    store: RunStore,
    run_id: str,
    model_list: list[ModelSpec],
    tasks: list[Task],
    sessions: dict[str, Session],
    judge: Any,
    judge_name: str,
) -> tuple[list[Score], dict[str, Any]]:
    """Aggregate every task's verdicts into scores, record the judge's usage, and write scores and summary."""
    scores: list[Score] = []
    for task in tasks:
        for m in model_list:
            scores += task.aggregate(sessions[m.name], store.verdicts(task.name, m.name))
    usage = getattr(judge, "usage", None)
    if usage is not None:
        store.update_manifest(judge_usage=usage)
    summary = {
        "run_id": run_id,
        "path": str(store.path),
        "task": ",".join(t.name for t in tasks),
        "models": [m.name for m in model_list],
        "judge": judge_name,
        "judge_usage": usage,
        "scores": [s.to_dict() for s in scores],
    }
    store.finish(scores, summary, provenance.now())
    return scores, summary


def _model_entry(m: ModelSpec, ref: ModelRef | None) -> dict[str, Any]:
    return {"name": m.name, **(ref.to_dict() if ref else {"spec": m.ref, "revision": None})}


def _generate_missing(
    store: RunStore, session: Session, tasks: list[Task], chunk_size: int, progress: bool, log: Callable[[str], None]
) -> None:
    """Every task's missing samples, round after round until no task asks for a new one."""
    while True:
        todo: dict[str, GenRequest] = {}  # one request per distinct sample set; tasks asking alike share it
        for task in tasks:
            for req in task.requests(session):
                if any(session.answer(req, si) is None for si in range(req.params.n)):
                    todo.setdefault(session.key(req, 0), req)
        if not todo:
            return
        reqs = list(todo.values())
        log(f"{session.name}: generating {sum(r.params.n for r in reqs)} samples for {len(reqs)} prompts")
        bar = _bar(len(reqs), session.name, progress)
        new_ok = 0
        for i in range(0, len(reqs), chunk_size):
            chunk = reqs[i : i + chunk_size]
            records = []
            gens = session.backend.generate(chunk)
            it = iter(gens)
            for r in chunk:  # backends return request-major, sample-minor, in input order
                for si in range(r.params.n):
                    g = next(it)
                    failed = g.finish_reason == "error"
                    part = reasoning.split(g.text, g.meta.get("reasoning"))  # judges see the answer only
                    n_tokens = len(g.token_ids) if g.token_ids is not None else int(g.meta.get("n_tokens", 0))
                    counts = reasoning.token_counts(n_tokens, part, reasoning.counter(session.backend))
                    records.append(
                        GenRecord(
                            key=session.key(r, si),
                            model=session.name,
                            item_id=r.id,
                            sample_index=si,
                            text=part.answer,
                            status="error" if failed else "ok",
                            token_ids=g.token_ids,
                            prompt_ids=g.prompt_ids,
                            n_tokens=n_tokens,
                            thinking=part.thinking,
                            n_thinking_tokens=counts["n_thinking_tokens"],
                            finish_reason=g.finish_reason,
                            error=g.error,
                            params=r.params.to_dict(),
                            model_id=session.backend.model_id,
                        )
                    )
            store.add_generations(records)
            session.answers.update({rec.key: rec for rec in records})
            new_ok += sum(rec.status == "ok" for rec in records)
            bar.update(len(chunk))
        bar.close()
        if new_ok == 0:  # an endpoint failing every request: count the failures, retry them on the next run
            log(f"{session.name}: every generation of this round failed; they are counted and retried on the next run")
            return


def _judge_missing(
    store: RunStore,
    session: Session,
    tasks: list[Task],
    log: Callable[[str], None],
    rejudge: str | None = None,
    progress: bool = False,
) -> None:
    """Every task's judgments that have no stored verdict, or only a failed one (failures are retried), and with
    ``rejudge`` the stored ones of those statuses, asked again past the response cache (the newer verdict wins)."""
    again = {"error", *REJUDGE[rejudge]} if rejudge else {"error"}
    for task in tasks:
        stored = {v.key: v.status for v in store.verdicts(task.name, session.name)}
        todo: list[Pending] = [p for p in task.judgments(session) if stored.get(p.key, "error") in again]
        if not todo:
            continue
        redo = [p for p in todo if stored.get(p.key) in again - {"error"}]
        log(f"{session.name}: {task.name}: {len(todo)} judgments" + (f" ({len(redo)} asked again)" if redo else ""))
        bar = _bar(len(todo), f"{session.name}: judging {task.name}", progress, unit="judgment")
        task.env.judge_bar = bar if progress else None
        errors: Counter[str] = Counter()
        try:
            fresh = [p for p in todo if stored.get(p.key) not in again - {"error"}]
            for pending, refresh in ((fresh, False), (redo, True)):
                task.env.refresh = refresh  # only the re-asked ones bypass the response cache
                for i in range(0, len(pending), JUDGE_CHUNK):
                    errors.update(_judge_chunk(store, session, task, pending[i : i + JUDGE_CHUNK], bar))
        finally:
            task.env.refresh, task.env.judge_bar = False, None
            bar.close()
        if errors:  # once per kind of failure, with its count: an endpoint down for the whole run fails every one
            log(
                f"{session.name}: {task.name}: {sum(errors.values())} of {len(todo)} judgments failed; they are "
                "counted as skipped, not scored, and retried when the same command runs again:"
            )
            for kind, count in errors.most_common():
                log(f"  {count} x {kind}")


def _judge_chunk(store: RunStore, session: Session, task: Task, chunk: list[Pending], bar: Any) -> Counter[str]:
    """Judge one chunk, append its verdicts, advance the bar to its end; the chunk's failures by kind."""
    before = getattr(bar, "n", 0)
    verdicts = task.judge(session, chunk)
    if len(verdicts) != len(chunk):
        raise EvalHarnessError(f"task {task.name}: judge returned {len(verdicts)} verdicts for {len(chunk)}")
    for p, v in zip(chunk, verdicts):
        v.task, v.model, v.key = task.name, session.name, p.key
    store.add_verdicts(verdicts)
    bar.update(max(0, len(chunk) - (getattr(bar, "n", 0) - before)))  # cache hits and non-chat judges
    return Counter(failure_kind(v) for v in verdicts if v.status == "error")


def failure_kind(verdict: Verdict) -> str:
    """A failed verdict's error with the numbers that differ per request (ids, timings) left out, so that
    one outage is one line however many judgments it failed."""
    import re

    text = ((verdict.error or "error").splitlines() or ["error"])[0]
    return re.sub(r"\b\d+(\.\d+)?s\b", "Ns", text)[:200]


class _NoBar:
    n = 0

    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, desc: str, enabled: bool, unit: str = "prompt") -> Any:
    if not enabled or total < 2:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def sweep_models(sweep: str | Path, results_dir: str | Path | None = None) -> tuple[str, list[ModelSpec]]:
    """A training sweep's base (named ``sft``) and every checkpoint (named ``<run>@<step>``), from its sweep.json."""
    import json

    from evalharness.core.paths import results_root

    path = Path(sweep)
    if not (path / "sweep.json").is_file():
        path = Path(results_dir or results_root()) / "train" / str(sweep)
    file = path / "sweep.json"
    if not file.is_file():
        raise InputError(
            "no sweep.json: not a finished training sweep (evalharness train SPEC writes it)",
            path=str(file),
            field="from_sweep",
        )
    data = json.loads(file.read_text())
    base = data["spec"]["base"]
    models = [ModelSpec("sft", base)]
    for run in data["runs"]:
        for ck in run["checkpoints"]:
            step = Path(ck).name.rsplit("-", 1)[-1]
            models.append(ModelSpec(f"{run['name']}@{step}", str(Path(ck).resolve())))
    return base, models


def apply_task_generation(tasks: list[TaskSpec], generation: GenerationSettings) -> None:
    """A task's own ``generation:`` overrides the run's decoding for that task only."""
    from dataclasses import replace

    for ts in tasks:
        overrides = ts.extra.pop("generation_overrides", None)
        if overrides:
            ts.generation = replace(generation, **overrides)


def model_option(text: str) -> ModelSpec:
    """``--model NAME=REF`` (or a bare REF, named by itself), validated as a spec's ``models:`` entry is."""
    import pydantic

    from evalharness.pipeline.spec import ModelEntry

    name, sep, ref = text.partition("=")
    name, ref = (name.strip(), ref.strip()) if sep else (text.strip(), text.strip())
    if not name or not ref:
        raise InputError(f"takes NAME=REF (a model ref: alias, folder, hub id), got {text!r}", field="--model")
    try:
        entry = ModelEntry(name=name, ref=ref)
    except pydantic.ValidationError as e:
        raise InputError(f"{text!r}: {e.errors()[0]['msg']}", field="--model") from None
    return ModelSpec(entry.name, entry.ref)


def plan_from_spec(
    path: str | Path,
    *,
    results_dir: str | Path | None = None,
    progress: bool = True,
    extra_models: list[ModelSpec] | None = None,
) -> RunPlan:
    """A RunPlan from a run spec file (validated strictly; errors name file, line and field); ``extra_models``
    (``run --model``) are evaluated beside the spec's."""
    from evalharness.pipeline.spec import load_spec

    spec, task_specs = load_spec(path)
    reference = spec.reference
    if spec.from_sweep:
        base, models = sweep_models(spec.from_sweep, results_dir)
        reference = reference or base
    elif spec.models:
        models = [ModelSpec(m, m) if isinstance(m, str) else ModelSpec(m.name, m.ref) for m in spec.models]
    else:
        assert spec.model is not None
        models = [ModelSpec(spec.model_name or spec.model, spec.model)]
    models = models + list(extra_models or [])  # a name given twice fails in _plan_models, before anything runs
    generation = GenerationSettings(**spec.generation.model_dump())
    apply_task_generation(task_specs, generation)
    return RunPlan(
        name=spec.name,
        models=models,
        tasks=task_specs,
        backend=spec.backend,
        backend_options=dict(spec.backend_options),
        generation=generation,
        reference=reference,
        judge=spec.judge,
        kind="run",
        results_dir=results_dir,
        progress=progress,
        source=str(path),
        report_to=list(spec.report_to),
    )


def run_spec(
    path: str | Path,
    *,
    results_dir: str | Path | None = None,
    progress: bool = True,
    report_to: list[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
    extra_models: list[ModelSpec] | None = None,
    rejudge: str | None = None,
) -> RunResult:
    """``evalharness run SPEC``; ``report_to`` (None: the spec's) names the trackers the run is sent to,
    ``extra_models`` are added to the spec's models, ``rejudge`` (a REJUDGE key) re-asks stored bad verdicts."""
    if rejudge is not None and rejudge not in REJUDGE:
        raise InputError(f"must be one of {', '.join(REJUDGE)}, got {rejudge!r}", field="--rejudge")
    plan = plan_from_spec(path, results_dir=results_dir, progress=progress, extra_models=extra_models)
    if report_to is not None:
        plan.report_to = report_to
    plan.rejudge = rejudge
    return run(plan, log=log)
