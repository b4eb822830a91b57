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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import provenance, trackers
from .backends import backend_class, get_backend
from .backends.base import Backend
from .errors import EvalHarnessError, InputError
from .models import ModelRef, evict, resolve, resolve_dtype
from .records import SCHEMA_VERSION, GenRecord, GenRequest, Score, content_hash
from .spec import JudgeSpec
from .store import RunStore
from .tasks.base import GenerationSettings, Pending, RunEnv, Session, Task, TaskSpec, task_class

JUDGE_CHUNK = 64


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
    # Library use: models already in memory (model ref -> backend), and a ready chat judge (judge, name).
    backends: dict[str, Backend] = field(default_factory=dict)
    chat_judge: tuple[Any, str] | None = None


@dataclass
class RunResult:
    path: Path
    scores: list[Score]
    summary: dict[str, Any]
    report_to: list[str] = field(default_factory=list)  # the trackers the caller sends it to (compare.report_to_trackers)


def make_judge(spec: JudgeSpec, progress: bool) -> tuple[Any, str]:
    """A chat judge and the name it carries in scores (``(demo judge)`` marks a demo judge)."""
    if spec.type == "local":
        from .judges.local import LocalChatJudge
        judge: Any = LocalChatJudge(spec.model, dtype=spec.dtype, progress=progress)
        name = f"local:{judge.model_id}"
    else:
        from .client import ClientConfig, JudgeClient
        judge = JudgeClient(ClientConfig(base_url=spec.base_url or "", model=spec.model, api_key_env=spec.api_key_env,
                                         concurrency=spec.concurrency, max_retries=spec.max_retries,
                                         timeout_s=spec.timeout_s, prices=spec.prices, cache=spec.cache))
        name = spec.model
    return judge, name + (" (demo judge)" if spec.demo else "")


class _Models:
    """Resolves model refs once; the backend of a model is built only when something must be generated
    or scored, and one backend serves a model that is both a policy and the KL reference."""

    def __init__(self, plan: RunPlan) -> None:
        self.plan = plan
        self.options = dict(plan.backend_options)
        if plan.backend == "hf":
            self.options["dtype"] = resolve_dtype(self.options.get("dtype", "float32"))
            self.options.setdefault("batch_size", "auto")
            self.options.setdefault("progress", plan.progress)
        self.refs: dict[str, ModelRef | None] = {}
        self.live: dict[str, Backend] = {}

    def ref(self, spec: str) -> ModelRef | None:
        if spec not in self.refs:
            self.refs[spec] = (resolve(spec) if self.plan.backend in ("hf", "vllm") and spec not in self.plan.backends
                               else None)
        return self.refs[spec]

    def identity(self, spec: str) -> dict[str, Any]:
        """What makes this model's samples what they are: backend, revision, number-changing options."""
        ref = self.ref(spec)
        options = {k: v for k, v in self.options.items() if k not in ("batch_size", "progress", "score_batch_size",
                                                                      "api_key_env", "concurrency")}
        given = self.plan.backends.get(spec)
        model = f"{ref.spec}@{ref.revision}" if ref else (given.model_id if given is not None else spec)
        return {"backend": getattr(given, "name", self.plan.backend), "model": model, "options": options}

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
        if m.ref == plan.reference or (ref is not None and mref is not None and mref.path == ref.path
                                       and mref.revision == ref.revision):
            return plan.models, m.ref, m.name
    return plan.models, plan.reference, plan.reference


def _setup_tasks(plan: RunPlan, env: RunEnv, ref_spec: str | None, log: Callable[[str], None]) -> list[Task]:
    """Every task of the plan, its items loaded and checked: a bad input fails here, before anything is written."""
    tasks: list[Task] = []
    for ts in plan.tasks:
        task = task_class(ts.module)(ts.name, ts.config, env, ts.generation)
        if task.needs_reference and ref_spec is None:
            raise InputError(f"task '{ts.name}' needs a reference model (the SFT model): set reference", field="reference")
        if task.needs_reference and not getattr(backend_class(plan.backend), "scores_responses", True):
            raise InputError(f"task '{ts.name}' scores the policy's responses (log-probs), which the "
                             f"'{plan.backend}' backend cannot; use hf or vllm", field="backend")
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
    root = Path(plan.results_dir) if plan.results_dir else None
    env = RunEnv(generation=plan.generation, out_dir=Path("."), judge=judge, judge_name=judge_name,
                 reference=(lambda: models.backend(ref_spec)) if ref_spec else None, reference_name=ref_name,
                 progress=plan.progress, log=log)
    tasks = _setup_tasks(plan, env, ref_spec, log)
    identity = {"models": [{"name": m.name, **models.identity(m.ref)} for m in model_list],
                "reference": models.identity(ref_spec) if ref_spec else None,
                "judge": {"name": judge_name, "protocol": getattr(judge, "protocol", None)} if judge else None,
                "generation": asdict(plan.generation), "tasks": {t.name: t.identity() for t in tasks}}
    run_id = plan.run_id or f"{plan.name}-{content_hash(identity, length=10)}"
    manifest = {"run_id": run_id, "kind": plan.kind, "schema_version": SCHEMA_VERSION, "spec_file": plan.source,
                "config": identity, "started_at": provenance.now(), **provenance.environment(),
                "models": [_model_entry(m, models.ref(m.ref)) for m in model_list]
                + ([_model_entry(ModelSpec(ref_name, ref_spec), models.ref(ref_spec))]
                   if ref_spec and ref_name not in {m.name for m in model_list} else []),
                "reference": ref_name, "backend": plan.backend,
                "judge": {"name": judge_name, "id": getattr(judge, "model_id", None),
                          "protocol": getattr(judge, "protocol", None)} if judge else None,
                "tasks": {t.name: {"module": t.identity()["module"], "version": t.VERSION} for t in tasks}, **plan.meta}
    store = RunStore.open(run_id, manifest, root)
    env.out_dir = store.path
    log(f"run {run_id}: {store.path}")
    keep = {ref_spec} if ref_spec else set()
    sessions: dict[str, Session] = {}
    try:
        with store.recording_failure():
            for m in model_list:
                session = Session(m.name, models.identity(m.ref), lambda m=m: models.backend(m.ref),
                                  store.generations(m.name))
                sessions[m.name] = session
                _generate_missing(store, session, tasks, plan.chunk_size, plan.progress, log)
                _judge_missing(store, session, tasks, log)
                session.release()
                models.release(m.ref, keep)
            scores: list[Score] = []
            for task in tasks:
                for m in model_list:
                    scores += task.aggregate(sessions[m.name], store.verdicts(task.name, m.name))
            usage = getattr(judge, "usage", None)
            if usage is not None:
                store.update_manifest(judge_usage=usage)
            summary = {"run_id": run_id, "path": str(store.path), "task": ",".join(t.name for t in tasks),
                       "models": [m.name for m in model_list], "judge": judge_name, "judge_usage": usage,
                       "scores": [s.to_dict() for s in scores]}
            store.finish(scores, summary, provenance.now())
    finally:
        models.close()
    return RunResult(store.path, scores, summary, list(plan.report_to))


def _model_entry(m: ModelSpec, ref: ModelRef | None) -> dict[str, Any]:
    return {"name": m.name, **(ref.to_dict() if ref else {"spec": m.ref, "revision": None})}


def _generate_missing(store: RunStore, session: Session, tasks: list[Task], chunk_size: int, progress: bool,
                      log: Callable[[str], None]) -> None:
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
            chunk = reqs[i:i + chunk_size]
            records = []
            gens = session.backend.generate(chunk)
            it = iter(gens)
            for r in chunk:  # backends return request-major, sample-minor, in input order
                for si in range(r.params.n):
                    g = next(it)
                    failed = g.finish_reason == "error"
                    records.append(GenRecord(
                        key=session.key(r, si), model=session.name, item_id=r.id, sample_index=si, text=g.text,
                        status="error" if failed else "ok", token_ids=g.token_ids, prompt_ids=g.prompt_ids,
                        n_tokens=len(g.token_ids or []), finish_reason=g.finish_reason, error=g.error,
                        params=r.params.to_dict(), model_id=session.backend.model_id))
            store.add_generations(records)
            session.answers.update({rec.key: rec for rec in records})
            new_ok += sum(rec.status == "ok" for rec in records)
            bar.update(len(chunk))
        bar.close()
        if new_ok == 0:  # an endpoint failing every request: count the failures, retry them on the next run
            log(f"{session.name}: every generation of this round failed; they are counted and retried on the next run")
            return


def _judge_missing(store: RunStore, session: Session, tasks: list[Task], log: Callable[[str], None]) -> None:
    """Every task's judgments that have no stored verdict, or only a failed one (failures are retried)."""
    for task in tasks:
        done = {v.key for v in store.verdicts(task.name, session.name) if v.status != "error"}
        todo: list[Pending] = [p for p in task.judgments(session) if p.key not in done]
        if not todo:
            continue
        log(f"{session.name}: {task.name}: {len(todo)} judgments")
        errors: list[str] = []
        for i in range(0, len(todo), JUDGE_CHUNK):
            chunk = todo[i:i + JUDGE_CHUNK]
            verdicts = task.judge(session, chunk)
            if len(verdicts) != len(chunk):
                raise EvalHarnessError(f"task {task.name}: judge returned {len(verdicts)} verdicts for {len(chunk)}")
            for p, v in zip(chunk, verdicts):
                v.task, v.model, v.key = task.name, session.name, p.key
            store.add_verdicts(verdicts)
            errors += [v.error or v.status for v in verdicts if v.status == "error"]
        if errors:  # say it once, plainly: an endpoint down for the whole run fails every judgment
            log(f"{session.name}: {task.name}: {len(errors)} of {len(todo)} judgments failed (e.g. {errors[0]}); "
                "they are counted as skipped, not scored, and retried when the same command runs again")


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled or total < 2:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="prompt")



def sweep_models(sweep: str | Path, results_dir: str | Path | None = None) -> tuple[str, list[ModelSpec]]:
    """A training sweep's base (named ``sft``) and every checkpoint (named ``<run>@<step>``), from its sweep.json."""
    import json

    from .paths import results_root
    path = Path(sweep)
    if not (path / "sweep.json").is_file():
        path = Path(results_dir or results_root()) / "train" / str(sweep)
    file = path / "sweep.json"
    if not file.is_file():
        raise InputError("no sweep.json: not a finished training sweep (evalharness train SPEC writes it)",
                         path=str(file), field="from_sweep")
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


def plan_from_spec(path: str | Path, *, results_dir: str | Path | None = None, progress: bool = True) -> RunPlan:
    """A RunPlan from a run spec file (validated strictly; errors name file, line and field)."""
    from .spec import load_spec
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
    generation = GenerationSettings(**spec.generation.model_dump())
    apply_task_generation(task_specs, generation)
    return RunPlan(name=spec.name, models=models, tasks=task_specs, backend=spec.backend,
                   backend_options=dict(spec.backend_options), generation=generation, reference=reference,
                   judge=spec.judge, kind="run", results_dir=results_dir, progress=progress, source=str(path),
                   report_to=spec.report_to)


def run_spec(path: str | Path, *, results_dir: str | Path | None = None, progress: bool = True,
             report_to: list[str] | None = None, log: Callable[[str], None] = lambda _: None) -> RunResult:
    """``evalharness run SPEC``; ``report_to`` (None: the spec's) names the trackers the run is sent to."""
    plan = plan_from_spec(path, results_dir=results_dir, progress=progress)
    if report_to is not None:
        plan.report_to = report_to
    return run(plan, log=log)
