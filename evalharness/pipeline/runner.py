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
from evalharness.core.paths import results_root
from evalharness.core.records import (
    MAX_SKIPPED_SHARE,
    SCHEMA_VERSION,
    GenRecord,
    Score,
    Verdict,
    check_max_skipped,
    content_hash,
)
from evalharness.pipeline import plan as planning
from evalharness.pipeline import presets
from evalharness.pipeline.budget import Budget
from evalharness.pipeline.preflight import check_judge, preflight
from evalharness.pipeline.rejudge import judge_repeats, run_reliability_scores
from evalharness.pipeline.spec import JudgeSpec
from evalharness.pipeline.stops import JudgeOrder, JudgingProgress, StopCheck, first_stop, mark_scores, record_stop
from evalharness.store import RunStore, write_json_atomic
from evalharness.tasks import controls
from evalharness.tasks.base import GenerationSettings, Pending, RunEnv, Session, Task, TaskSpec, task_class
from evalharness.tasks.ensemble import Panel

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
    judge: JudgeSpec | list[JudgeSpec] | None = None  # a list: an ensemble, combined by ``ensemble``
    ensemble: str | None = None  # evalharness.tasks.ensemble RULES
    controls: list[str] = field(default_factory=list)  # evalharness.tasks.controls CONTROLS: null, longest
    null_answer: str | None = None  # the null control's answer; None: controls.NULL_ANSWER
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
    # Checks between judging chunks that may stop a task's judging early, and the order judgments go in (stops.py).
    stops: list[StopCheck] = field(default_factory=list)
    judge_order: JudgeOrder | None = None


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
        # No verdicts of its own (an ensemble's scores, over its judges' verdicts): its scores count its units.
        c = statuses.get((task, model)) or Counter(ok=sum(s.n for s in scores), error=sum(s.n_skipped for s in scores))
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
                batch=spec.batch,
                batch_poll_s=spec.batch_poll_s,
                batch_window=spec.batch_completion_window,
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


def _add_null_control(plan: RunPlan) -> None:
    """``controls: [null]``: the constant-answer model joins the run's models (once), answering from its text."""
    unknown = sorted(set(plan.controls) - set(controls.CONTROLS))
    if unknown:
        raise InputError(f"unknown controls {unknown}; known: {', '.join(controls.CONTROLS)}", field="controls")
    if "null" not in plan.controls or any(m.name == controls.NULL_MODEL for m in plan.models):
        return
    from evalharness.backends.constant import ConstantBackend

    plan.models = [*plan.models, ModelSpec(controls.NULL_MODEL, controls.NULL_REF)]
    plan.backends = {**plan.backends, controls.NULL_REF: ConstantBackend(plan.null_answer or controls.NULL_ANSWER)}


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


@dataclass
class Prepared:
    """A run set up and checked before its folder opens: what ``run`` executes and ``plan_run`` estimates."""

    models: Any  # the run's _Models: refs resolved once, backends built on first use
    model_list: list[ModelSpec]
    ref_spec: str | None
    ref_name: str | None
    judge: Any
    judge_name: str
    env: RunEnv
    tasks: list[Task]
    identity: dict[str, Any]
    run_id: str
    panel: Panel | None = None  # a list of judges (tasks.ensemble)


def prepare(plan: RunPlan, log: Callable[[str], None] = lambda _: None, judge_cache: bool = True) -> Prepared:
    """Resolve the models, set up every task (a bad input fails here), run the preflight checks and name the run;
    nothing is written. ``judge_cache=False``: judges that open no response cache for writing (a plan's)."""
    trackers.check(plan.report_to)
    _add_null_control(plan)
    models = _Models(plan)
    model_list, ref_spec, ref_name = _plan_models(plan, models)
    panel, (judge, judge_name) = _judges(plan, cache=judge_cache)
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
    tasks = panel.expand(tasks) if panel else tasks
    _log_preflight(plan, log)
    identity = _run_identity(plan, models, model_list, ref_spec, judge, judge_name, tasks)
    run_id = plan.run_id or f"{plan.name}-{content_hash(identity, length=10)}"
    return Prepared(models, model_list, ref_spec, ref_name, judge, judge_name, env, tasks, identity, run_id, panel)


def run(plan: RunPlan, log: Callable[[str], None] = lambda _: None) -> RunResult:
    """Run every task of ``plan`` over every model into one run folder; resume a run with the same identity.
    The plan of what is left (``plan.json``) is written first, for ``plan.side_by_side`` after the run."""
    p = prepare(plan, log)
    models, tasks, judge, panel = p.models, p.tasks, p.judge, p.panel
    budget = None if plan.chat_judge or isinstance(plan.judge, list) else Budget.of(plan.judge, judge)
    manifest = _run_manifest(
        plan, models, p.run_id, p.identity, p.model_list, p.ref_spec, p.ref_name, judge, p.judge_name, tasks
    )
    store = RunStore.open(p.run_id, manifest, Path(plan.results_dir) if plan.results_dir else None)
    for t in tasks:  # a panel's per-judge copies hold their own env
        t.env.out_dir = store.path
    log(f"run {p.run_id}: {store.path}")
    if isinstance(plan.judge, JudgeSpec) and plan.judge.batch and not plan.chat_judge and judge is not None:
        judge.config.batch_dir = store.path / "batches"  # a killed run polls its batches again, never resends
    try:
        with store.recording_failure():
            _write_plan(plan, p, store, log)
            if budget is not None:
                budget.open(store.path)
            sessions = _run_models(plan, store, models, p.model_list, p.ref_spec, tasks, log, budget)
            scores, summary = _finish_run(
                store, p.run_id, p.model_list, tasks, sessions, judge, p.judge_name, panel, "longest" in plan.controls
            )
    finally:
        models.close()
    return RunResult(store.path, scores, summary, list(plan.report_to))


def _judges(plan: RunPlan, cache: bool = True) -> tuple[Panel | None, tuple[Any, str]]:
    """The run's chat judge and its name; with a list of judges, the panel too (the first judge stands for the
    panel where one judge is asked for: its protocol; the name is the ensemble's). ``cache=False``: judges
    that open no response cache for writing (a plan's)."""
    if plan.chat_judge is not None:
        return None, plan.chat_judge
    specs = plan.judge if isinstance(plan.judge, list) else [plan.judge] if plan.judge else []
    specs = specs if cache else [j.model_copy(update={"cache": False}) for j in specs]
    if isinstance(plan.judge, list):
        panel = Panel(
            plan.ensemble or "",
            [make_judge(j, plan.progress) for j in specs],
            presets.own_settings([j.preset for j in specs]),
        )
        return panel, (panel.judges[0][0], panel.name)
    return None, make_judge(specs[0], plan.progress and cache) if specs else (None, "")


def plan_run(plan: RunPlan, log: Callable[[str], None] = lambda _: None) -> planning.RunEstimate:
    """What ``run(plan)`` would still do and cost, with nothing sent and nothing written: the run folder of the
    same identity, if there is one, is read for what is done; the response cache is read, never opened for writing."""
    p = prepare(plan, log, judge_cache=False)
    root = Path(plan.results_dir) if plan.results_dir else results_root()
    folder = root / p.run_id
    store = RunStore(folder) if (folder / "manifest.json").is_file() else None
    return _estimate(plan, p, store)


def _estimate(plan: RunPlan, p: Prepared, store: RunStore | None) -> planning.RunEstimate:
    """The plan of a prepared run, from the records in ``store`` (None: nothing done yet)."""
    sessions = {
        m.name: Session(m.name, p.models.identity(m.ref), _no_backend, store.generations(m.name) if store else [])
        for m in p.model_list
    }
    spec = plan.judge if plan.chat_judge is None and not isinstance(plan.judge, list) else None
    facts = planning.JudgeFacts(name=p.judge_name or None)  # an ensemble: requests counted, cost unknown
    if spec is not None:
        facts = _judge_facts(spec, p.judge, p.judge_name)
    budget = {k: getattr(spec, k, None) for k in ("max_cost", "max_requests")}
    root = Path(plan.results_dir) if plan.results_dir else None
    return planning.estimate(
        p.tasks, sessions, store, facts, run_id=p.run_id, root=root, budget=budget, again=asked_again(plan.rejudge)
    )


def asked_again(rejudge: str | None) -> set[str]:
    """The stored verdict statuses a run asks again: failures always, and those ``rejudge`` names."""
    return {"error", *REJUDGE[rejudge]} if rejudge else {"error"}


def _judge_facts(spec: JudgeSpec, judge: Any, name: str) -> planning.JudgeFacts:
    """The plan's view of the spec's judge: price, concurrency, the token counter and the cache lookup."""
    if spec.type == "local":
        from transformers import AutoTokenizer

        ref = judge.ref.base if judge.ref.base is not None else judge.ref
        counter = planning.tokenizer_counter(AutoTokenizer.from_pretrained(str(ref.path)))
        return planning.JudgeFacts(name=name, model=spec.model, local=True, count=counter)
    from evalharness.backends.client import cached_keys

    def cached(requests: list[Any]) -> list[bool]:
        keys = [judge.key(r) for r in requests]
        held = cached_keys(keys, judge.config.cache_dir)
        return [k in held for k in keys]

    return planning.JudgeFacts(
        name=name,
        model=spec.model,
        concurrency=spec.concurrency,
        batch=bool(getattr(spec, "batch", False)),
        prices=spec.prices,
        cached=cached if spec.cache else None,
    )


def _write_plan(plan: RunPlan, p: Prepared, store: RunStore, log: Callable[[str], None]) -> None:
    """``plan.json``: what the run is about to do, for the planned-against-actual table. The plan is a report, not
    part of the results: a planner that fails says so and the run goes on."""
    try:
        estimate = _estimate(plan, p, store)
    except Exception as e:  # noqa: BLE001
        log(f"no {planning.PLAN_FILE}: the planner failed ({type(e).__name__}: {e}); the run goes on")
        return
    write_json_atomic(store.path / planning.PLAN_FILE, estimate.to_dict())


def _no_backend() -> Backend:
    raise EvalHarnessError("a plan loads no model")


def _log_preflight(plan: RunPlan, log: Callable[[str], None]) -> None:
    """Log the preflight notes: after the local checks (files, models), before the run folder, the checks of
    keys, endpoints, decoding and data folders."""
    judges = plan.judge if isinstance(plan.judge, list) else [plan.judge]
    for note in preflight(
        backend=plan.backend,
        backend_options=plan.backend_options,
        generation=plan.generation,
        judge=None if plan.chat_judge else judges[0],
        tasks=plan.tasks,
    ) + [n for j in judges[1:] if not plan.chat_judge for n in check_judge(j)]:
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
            # where today's judge is asked again (a drift check across runs): the variable's name, never the key
            **(
                {"type": "openai", "model": plan.judge.model, "base_url": plan.judge.base_url}
                | {"api_key_env": plan.judge.api_key_env}
                if isinstance(plan.judge, JudgeSpec) and plan.judge.type == "openai" and not plan.chat_judge
                else {}
            ),
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
    budget: Budget | None = None,
) -> dict[str, Session]:
    """Generate then judge what is missing for each model in turn, releasing each (but the reference) after."""
    keep = {ref_spec} if ref_spec else set()
    sessions: dict[str, Session] = {}
    for m in model_list:
        session = Session(m.name, models.identity(m.ref), partial(models.backend, m.ref), store.generations(m.name))
        sessions[m.name] = session
        mine = controls.judged_only(m.name, tasks)
        _generate_missing(store, session, mine, plan.chunk_size, plan.progress, log)
        _judge_missing(store, session, mine, log, plan.rejudge, plan.progress, plan.stops, plan.judge_order, budget)
        judge_repeats(store, session, mine, log)  # a task's rejudge: {fraction, times}: repeatability
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
    panel: Panel | None = None,
    longest: bool = False,
) -> tuple[list[Score], dict[str, Any]]:
    """Aggregate every task's verdicts into scores (and a panel's ensemble), record the judge's usage, and write
    scores and summary."""
    scores: list[Score] = []
    for task in tasks:
        for m in model_list:
            if task in controls.judged_only(m.name, tasks):
                verdicts = store.verdicts(task.name, m.name)
                own = task.aggregate(sessions[m.name], verdicts)
                scores += own + (controls.length_scores(task, sessions[m.name], verdicts, own) if longest else [])
                scores += run_reliability_scores(store, sessions[m.name], task)
    if panel:
        scores += [s for m in model_list for s in panel.aggregate(m.name, scores, store.verdicts)]
    mark_scores(store, scores)
    usage = {name: getattr(j, "usage", None) for j, name in panel.judges} if panel else getattr(judge, "usage", None)
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
        reqs = [req for _, req in planning.missing_generations(session, tasks).values()]
        if not reqs:
            return
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
    stops: list[StopCheck] | None = None,
    order: JudgeOrder | None = None,
    budget: Budget | None = None,
) -> None:
    """Every task's judgments that have no stored verdict, or only a failed one (failures are retried), and with
    ``rejudge`` the stored ones of those statuses, asked again past the response cache (the newer verdict wins).
    ``stops`` are asked after each chunk; the first reason ends the task's judging for this model (stops.py)."""
    again = asked_again(rejudge)
    for task in tasks:
        record_stop(store, task.name, session.name, None)  # judging it again: a former early stop is undone
        stored = {v.key: v.status for v in store.verdicts(task.name, session.name)}
        todo: list[Pending] = planning.missing_judgments(task, session, stored, again)
        if not todo:
            continue
        redo = [p for p in todo if stored.get(p.key) in again - {"error"}]
        log(f"{session.name}: {task.name}: {len(todo)} judgments" + (f" ({len(redo)} asked again)" if redo else ""))
        bar = _bar(len(todo), f"{session.name}: judging {task.name}", progress, unit="judgment")
        task.env.judge_bar = bar if progress else None
        try:
            fresh = [p for p in todo if stored.get(p.key) not in again - {"error"}]
            fresh, redo = (order(task, fresh), order(task, redo)) if order else (fresh, redo)
            errors, stop, judged = _judge_in_chunks(store, session, task, fresh, redo, stops or [], bar, budget)
            if stop:
                log(f"{session.name}: {task.name}: stopped after {judged} of {len(todo)} judgments: {stop}")
                record_stop(store, task.name, session.name, {"reason": stop, "judged": judged, "total": len(todo)})
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


def _judge_in_chunks(
    store: RunStore,
    session: Session,
    task: Task,
    fresh: list[Pending],
    redo: list[Pending],
    stops: list[StopCheck],
    bar: Any,
    budget: Budget | None = None,
) -> tuple[Counter[str], str | None, int]:
    """Judge ``fresh`` then ``redo`` (re-asked past the response cache) chunk by chunk, asking ``stops`` after
    each chunk: the failures by kind, the reason it stopped early (None: all judged), the judgments sent.
    ``budget`` cuts each chunk to what it still holds before it is sent, and halts the run (BudgetStop) when
    not one judgment fits: a stop is the answer being known, a budget is the money running out."""
    errors: Counter[str] = Counter()
    total, judged = len(fresh) + len(redo), 0
    for pending, refresh in ((fresh, False), (redo, True)):
        task.env.refresh = refresh  # only the re-asked ones bypass the response cache
        i = 0
        while i < len(pending):
            chunk = pending[i : i + JUDGE_CHUNK]
            if budget is not None:
                chunk = budget.fit(chunk, f"{task.name} for {session.name}", len(pending) - i)
            errors.update(_judge_chunk(store, session, task, chunk, bar))
            if budget is not None:
                budget.record(chunk)
            judged, i = judged + len(chunk), i + len(chunk)
            left = pending[i:] + ([] if refresh else redo)
            stop = first_stop(stops, JudgingProgress(store, session, task, judged, total, left)) if left else None
            if stop:
                return errors, stop, judged
    return errors, None, judged


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
        ensemble=spec.ensemble,
        controls=list(spec.controls),
        null_answer=spec.null_answer,
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
    stops: list[StopCheck] | None = None,
    judge_order: JudgeOrder | None = None,
) -> RunResult:
    """``evalharness run SPEC``; ``report_to`` (None: the spec's) names the trackers the run is sent to,
    ``extra_models`` are added to the spec's models, ``rejudge`` (a REJUDGE key) re-asks stored bad verdicts;
    ``stops`` and ``judge_order`` may end a task's judging early (``stops.py``)."""
    if rejudge is not None and rejudge not in REJUDGE:
        raise InputError(f"must be one of {', '.join(REJUDGE)}, got {rejudge!r}", field="--rejudge")
    plan = plan_from_spec(path, results_dir=results_dir, progress=progress, extra_models=extra_models)
    if report_to is not None:
        plan.report_to = report_to
    plan.rejudge = rejudge
    plan.stops, plan.judge_order = list(stops or []), judge_order
    return run(plan, log=log)
