"""The task protocol, and what a task gets from the one run loop (``evalharness.pipeline.runner``).

Every evaluation is a task: classifier rewards, KL to the reference, AlpacaEval 2, Arena-Hard,
MT-Bench. A task module (``tasks/<name>.py``) reads top to bottom:

1. ``Config``: a dataclass; every field changes a number.
2. ``setup``: load and check the items (before anything is written).
3. ``requests(session)``: what the policy must generate. The loop calls it again after each round
   of generation, so a task can ask for turn 2 once turn 1 is answered (MT-Bench).
4. ``judgments(session)`` and ``judge(session, pending)``: what must be judged, and how: a classifier,
   the reference model's log-probs, or a chat judge (template + backend call + parser).
5. ``aggregate(session, verdicts)``: Scores, computed by the same metric function the official-file
   importers use.
6. ``VERSION``: changes whenever a number could change.

The loop owns generate-missing, judge-missing, records and resume; a task never touches the store.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol

from evalharness.backends.base import Backend
from evalharness.backends.http import ChatRequest, ChatResult
from evalharness.core import reasoning
from evalharness.core.decoding import Decoding
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.records import GenRecord, GenRequest, Score, Verdict, content_hash
from evalharness.tasks import benchdata
from evalharness.tasks.reliability import JUDGE_CHECKS


def data_file(data_dir: str | None, rel: str, fetch_name: str) -> Path:
    """A benchmark file: ``data_dir/<benchmark>/rel`` when a ``data_dir`` is given, else the pinned, checksummed file
    ``fetch_name`` from the benchmark's public home (see evalharness.tasks.benchdata).

    ``data_dir`` means one thing for every task: the benchmark data root, laid out like ``shared/benchdata``
    (``alpaca_eval/``, ``arena_hard/``, ``mt_bench/`` inside). The older form, the benchmark's own folder
    (``data_dir/rel``), is still read when it cannot be mistaken for a root (it has no ``<benchmark>/`` folder),
    with a note that it is deprecated. A file missing from ``data_dir`` is an error naming it, never a download."""
    if data_dir is None:
        return benchdata.fetch(fetch_name)
    bench = fetch_name.split("/")[0]
    root = Path(data_dir)
    path = root / bench / rel
    if path.is_file():
        return path
    if (root / rel).is_file() and not (root / bench).is_dir():
        warnings.warn(
            f"data_dir {root} is a {bench}/ folder: give its parent, the benchmark data root "
            "(the benchmark's own folder is deprecated as data_dir)",
            FutureWarning,
            stacklevel=2,
        )
        return root / rel
    raise InputError(
        f"file not found: data_dir is the benchmark data root, laid out like shared/benchdata "
        f"(this file at {bench}/{rel})",
        path=str(path),
        field="data_dir",
    )


class ChatJudge(Protocol):
    """``JudgeClient`` (any OpenAI-compatible endpoint) or ``LocalChatJudge`` (in-process model).

    ``protocol`` says how verdicts are produced: ``generate`` (free text, parsed) or ``label-logprobs``
    (a local judge scoring the allowed labels); it is part of every judge version. ``progress`` is a bool or
    the run's own progress bar. A judge with ``caches_responses`` also takes ``refresh=True`` (ask anew).
    """

    model_id: str
    protocol: str

    def complete(self, requests: list[ChatRequest], progress: Any = False) -> list[ChatResult]: ...


GenerationSettings = Decoding  # the one decoding config (evalharness.core.decoding), under its older name


@dataclass
class Pending:
    """One judgment to make: its verdict key, the item and sample it is about, and what the judge needs."""

    key: str
    item_id: str
    payload: Any
    sample_index: int = 0


class Session:
    """One model during a run: its name, its generations, and its backend, loaded only when needed.

    Generation keys are computable without loading the model (the model's revision, the backend and
    its number-changing options, the request, the decoding and the sample index), so a finished run
    resumes without loading any model.
    """

    def __init__(
        self, name: str, identity: dict[str, Any], load: Callable[[], Backend], records: list[GenRecord]
    ) -> None:
        self.name, self.identity, self._load = name, identity, load
        self._backend: Backend | None = None
        self.answers: dict[str, GenRecord] = {}
        for r in records:  # later rows win: a failed sample retried on resume
            self.answers[r.key] = r

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = self._load()
        return self._backend

    @property
    def loaded(self) -> bool:
        return self._backend is not None

    def release(self) -> None:
        self._backend = None

    def key(self, req: GenRequest, sample_index: int = 0) -> str:
        content = (
            req.prompt_ids if req.prompt_ids is not None else (req.messages if req.messages is not None else req.prompt)
        )
        return content_hash(self.identity, content, req.params.to_dict(), req.id, sample_index)

    def answer(self, req: GenRequest, sample_index: int = 0) -> GenRecord | None:
        """The stored sample for a request, or None while it is missing or failed."""
        r = self.answers.get(self.key(req, sample_index))
        return r if r is not None and r.status == "ok" else None

    def samples(self, req: GenRequest) -> list[GenRecord | None]:
        return [self.answer(req, si) for si in range(req.params.n)]


@dataclass
class RunEnv:
    """What every task of a run shares: decoding, the chat judge, the KL reference, output folder, logging."""

    generation: GenerationSettings
    out_dir: Path  # the run folder; tasks write official-format files under out_dir/<task>/
    judge: ChatJudge | None = None
    judge_name: str = ""  # e.g. "gpt-4-1106-preview" or "local:smollm2-135m-instruct@... (demo judge)"
    reference: Callable[[], Backend] | None = None  # the KL reference, loaded once per run on first use
    reference_name: str | None = None
    progress: bool = True
    log: Callable[[str], None] = lambda _: None
    # The reference's identity (content hash or revision): who judges KL, whatever the reference is named.
    reference_id: str | None = None
    refresh: bool = False  # the judgments being made are re-asked (--rejudge): past the judge's response cache
    judge_bar: Any = None  # the run's one progress bar over this task's judge requests, or None

    def need_judge(self, task: str) -> ChatJudge:
        if self.judge is None:
            raise EvalHarnessError(f"task '{task}' needs a judge: add a judge: section to the spec")
        return self.judge


class Task:
    """Base class of every task; see the module docstring for the protocol."""

    Config: ClassVar[type]
    VERSION: ClassVar[str] = "1"
    needs_judge: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False

    def __init__(self, name: str, cfg: Any, env: RunEnv, generation: GenerationSettings | None = None) -> None:
        self.name, self.cfg, self.env = name, cfg, env
        self.generation = generation or env.generation

    def item_extras(self) -> dict[str, tuple[str | None, str]]:
        """Per-item facts the HTML report's viewer shows beside the answers: unit -> (category, the baseline's
        answer the judge compared against). Pairwise benchmarks override it; other tasks have none."""
        return {}

    def setup(self) -> None:
        """Load and validate items; raise InputError before anything is written."""

    def identity(self) -> dict[str, Any]:
        """What goes into the run id: the config, the decoding and the version."""
        cfg = asdict(self.cfg) if hasattr(self.cfg, "__dataclass_fields__") else dict(self.cfg)
        for name in JUDGE_CHECKS:  # extra judgments beside the run's numbers: adding them resumes the run
            cfg.pop(name, None)
        return {
            "module": type(self).__module__.removesuffix(".task"),
            "version": self.VERSION,
            "config": cfg,
            "generation": asdict(self.generation),
        }

    def requests(self, session: Session) -> list[GenRequest]:
        return []

    def judgments(self, session: Session) -> list[Pending]:
        return []

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        raise NotImplementedError

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        raise NotImplementedError

    # -- shared by the chat-judged tasks ------------------------------------------------------
    def chat_verdicts(self, pending: list[Pending], parse: Callable[[Pending, ChatResult], Verdict]) -> list[Verdict]:
        """Judge ``pending`` (payload: a ChatRequest) with the run's chat judge; a failed call is an error
        verdict (retried on the next run, never a score), anything else goes through the task's parser."""
        if not pending:
            return []
        judge = self.env.need_judge(self.name)
        progress = self.env.judge_bar if self.env.judge_bar is not None else self.env.progress
        # Only a judge with a response cache takes ``refresh`` (a local judge has none to bypass).
        refresh = {"refresh": True} if self.env.refresh and getattr(judge, "caches_responses", False) else {}
        results = judge.complete([p.payload for p in pending], progress=progress, **refresh)
        out = []
        for p, res in zip(pending, results):
            if res.status != "ok":
                out.append(
                    Verdict(
                        p.item_id,
                        self.env.judge_name,
                        "",
                        "error",
                        sample_index=p.sample_index,
                        error=res.error,
                        key=p.key,
                    )
                )
            else:
                out.append(_parse_answer(p, res, parse))
        return out

    def judge_version(self, *parts: Any) -> str:
        """DESIGN: one meaning everywhere: a hash of template, parser, judge decoding and judge protocol."""
        protocol = getattr(self.env.judge, "protocol", "generate") if self.needs_judge else ""
        return content_hash(type(self).__module__, self.VERSION, protocol, *parts, length=12)


def file_name(name: str) -> str:
    """A file name from a model or judge name (``org/model``, ``local:/path``, ``../x``): never a path."""
    import re

    return re.sub(r"[^\w.@+=-]", "_", name).lstrip(".") or "_"


STORED_PREFIX = "run:"


def stored_answers(baseline: str, relative: str) -> tuple[Path, str] | None:
    """Head-to-head judging: ``run:RUN/MODEL`` names another model's stored answers (the official-format
    file ``relative`` inside that finished run, with ``{model}`` filled in) as a benchmark's baseline.
    Returns (file, model name), or None for an ordinary baseline."""
    if not baseline.startswith(STORED_PREFIX):
        return None
    from evalharness.store import find_run

    run, sep, model = baseline[len(STORED_PREFIX) :].rpartition("/")
    if not sep or not run or not model:
        raise InputError(f"a stored baseline is run:RUN/MODEL, got {baseline!r}", field="baseline")
    path = find_run(run) / relative.format(model=file_name(model))
    if not path.is_file():
        raise InputError(f"run {run} has no answers of {model!r} for this benchmark", path=str(path), field="baseline")
    return path, model


def task_class(module: str) -> type[Task]:
    """The Task class of ``evalharness.tasks.<module>``: adding a task means adding one module."""
    try:
        mod = importlib.import_module(f"evalharness.tasks.{module}")
    except ModuleNotFoundError as e:
        if e.name == f"evalharness.tasks.{module}":
            raise InputError(f"unknown task '{module}'; known: {', '.join(known_tasks())}") from None
        raise
    cls = getattr(mod, "TASK_CLASS", None)
    if cls is None:
        raise InputError(f"evalharness.tasks.{module} is not a task module (no TASK_CLASS)")
    return cls


@dataclass(frozen=True)
class Display:
    """How the analysis layer shows a task's numbers: a task module's ``DISPLAY``, so that an official benchmark
    keeps its display facts in its own folder and compare / report need no per-benchmark branch."""

    labels: dict[str, str] = field(default_factory=dict)  # metric -> column label
    digits: int | None = None  # decimals in tables (None: by metric kind)
    item_scale: Callable[[float], float] | None = None  # a verdict's value as the per-item score shown
    flip_at: float | None = None  # the midpoint whose crossing is a flipped verdict (a win became a loss)
    unit_of: Callable[[str], str] | None = None  # item id -> the unit items are paired on
    slow: dict[str, str] = field(default_factory=dict)  # metric -> why its paired test takes minutes


def display_of(module: str) -> Display:
    """The display facts of task module ``module`` (a task name that is not a module has the defaults)."""
    try:
        mod = importlib.import_module(f"evalharness.tasks.{module}")
    except (ModuleNotFoundError, ValueError):
        return Display()
    found = getattr(mod, "DISPLAY", None)
    return found if isinstance(found, Display) else Display()


# Modules of the tasks package that hold shared machinery, not a task.
NOT_TASKS = ("base", "prompted", "paired", "benchdata", "ensemble", "controls", "reliability")


def known_tasks() -> list[str]:
    import pkgutil

    from evalharness import tasks

    return sorted(
        m.name for m in pkgutil.iter_modules(tasks.__path__) if m.name not in NOT_TASKS and not m.name.startswith("_")
    )


@dataclass
class ModelRecords:
    """One model's records of one task in one finished run: what a task's ``paired`` reads.

    A task module's ``paired(metric, a, b, *, rounds, seed) -> PairedResult`` compares two models
    item by item from these (``evalharness.tasks.paired``); ``compare``, ``regress`` and ``history`` call it.
    """

    store: Any  # evalharness.store.RunStore
    model: str
    task: str
    config: dict[str, Any] = field(default_factory=dict)  # the task's config as the run recorded it

    def verdicts(self) -> list[Verdict]:
        return list(self.store.verdicts(self.task, self.model))

    @property
    def folder(self) -> Path:
        return Path(self.store.path)


@dataclass
class TaskSpec:
    """A task as a run asks for it: the name scores carry, its module, its config, its decoding."""

    name: str
    module: str
    config: Any
    generation: GenerationSettings | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _parse_answer(p: Pending, res: ChatResult, parse: Callable[[Pending, ChatResult], Verdict]) -> Verdict:
    """A judge that reasons before its verdict is parsed on its final answer; its whole reply stays in ``raw``."""
    part = reasoning.split(res.text or "", res.reasoning)
    if part.thinking is None:
        return parse(p, res)
    v = parse(p, replace(res, text=part.answer))
    if v.raw == part.answer:
        v.raw = res.text
    if res.reasoning:
        v.meta = {**v.meta, "judge_reasoning": res.reasoning}
    return v
