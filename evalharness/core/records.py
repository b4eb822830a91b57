"""Typed records that flow between layers and land, as JSON lines, in the results store.

Every record is a plain dataclass so it serialises with ``to_dict`` and round-trips with
``from_dict``; ``SCHEMA_VERSION`` goes into every manifest so old runs stay readable.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

# 2: one generation and one verdict row shape for every task (task, model, item, sample index);
# Score.baseline and Score.decoding. Version-1 rows are upgraded on read (store.RunStore).
SCHEMA_VERSION = 2

Status = Literal["ok", "unparsed", "error"]
T = TypeVar("T")


class Record:
    """Mixin: dict round-trip for dataclass records."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SamplingParams(Record):
    """Decoding parameters; all of them change an output, so all of them go into cache keys."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int = 0
    top_logprobs: int = 0  # return this many alternatives per generated token (local judges)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenRequest(Record):
    """One prompt to complete. ``messages`` is the chat; ``prompt_ids`` the harness-rendered ids.

    The harness renders chat prompts once with the checkpoint's template (DESIGN: one renderer),
    so local backends get ``prompt_ids``; chat-only endpoints get ``messages``.
    """

    id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    prompt_ids: list[int] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)


@dataclass
class Generation(Record):
    """One sampled response. ``token_ids`` are exactly the generated ids (EOS included if produced)."""

    id: str
    sample_index: int
    text: str
    token_ids: list[int] | None = None
    prompt_ids: list[int] | None = None
    finish_reason: str = "stop"  # stop | length | error
    logprob: float | None = None
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ScoreRequest(Record):
    """Score a fixed response under a model: log p(response_ids | prompt_ids)."""

    id: str
    prompt_ids: list[int]
    response_ids: list[int]
    return_token_logprobs: bool = False


@dataclass
class SeqLogprobs(Record):
    """Summed log-probability (nats) of the response tokens only; per-token values on request."""

    id: str
    logprob: float
    n_tokens: int
    token_logprobs: list[float] | None = None


@dataclass
class GenRecord(Record):
    """One stored generation, the same row shape for every task.

    ``key`` is a hash of everything that determines the sample (model, rendered prompt, decoding,
    request id, sample index), so two tasks that ask for the same sample share one row, and a
    resumed run skips keys already present. ``status`` 'error' (an endpoint that failed after its
    retries) is kept as a record, never judged, and generated again on the next run.
    """

    key: str
    model: str
    item_id: str
    sample_index: int
    text: str
    status: Literal["ok", "error"] = "ok"
    token_ids: list[int] | None = None
    prompt_ids: list[int] | None = None
    n_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    model_id: str = ""
    # A reasoning policy's thinking (core.reasoning.split), kept here; ``text`` is the answer the judges see.
    thinking: str | None = None
    n_thinking_tokens: int | None = 0  # of n_tokens; None: unknown (no tokenizer to split the count)


@dataclass
class Verdict(Record):
    """One judgment. ``value`` is None unless ``status == 'ok'``: never a sentinel number.

    Keyed by (task, model, key); ``key`` defaults to ``item_id#sample_index`` and a task may make it
    finer (e.g. a hash of what the judge was shown, so a changed answer is judged anew).
    """

    item_id: str
    judge_id: str
    judge_version: str
    status: Status
    value: float | None = None
    raw: Any = None
    order: str | None = None  # AB | BA for pairwise judges
    sample_index: int = 0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    task: str = ""
    model: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if self.status == "ok":
            if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
                raise ValueError(f"verdict {self.item_id}: status ok needs a numeric value")
        elif self.value is not None:
            raise ValueError(f"verdict {self.item_id}: status {self.status} must not carry a value")
        if not self.key:
            self.key = f"{self.item_id}#{self.sample_index}"


# A score counts as measured only when something was scored and at most this share of its judgments
# failed or went unparsed (DESIGN: a judge that fails is counted, never a score). One rule for the
# regression gate, the run's exit status and history's marks; ``--max-skipped`` overrides it.
MAX_SKIPPED_SHARE = 0.10


def check_max_skipped(share: float) -> float:
    """``share`` as a ``--max-skipped`` value: a share of judgments in [0, 1); else an error naming the flag."""
    from evalharness.core.errors import InputError

    if not 0.0 <= share < 1.0:
        raise InputError(f"must be a share of judgments in [0, 1), got {share}", field="--max-skipped")
    return share


def unmeasured_reason(n: int, n_skipped: int, max_skipped_share: float = MAX_SKIPPED_SHARE) -> str | None:
    """Why a result of ``n`` scored and ``n_skipped`` failed-or-unparsed units is not a measurement, or None.

    ``n`` counts scored units only (items, games, turns), ``n_skipped`` the failed and unparsed ones.
    """
    total = n + n_skipped
    if n <= 0:
        return f"nothing scored ({n_skipped} of {total} judgments failed or unparsed)" if total else "nothing scored"
    if n_skipped > max_skipped_share * total:
        return (
            f"{n_skipped} of {total} judgments failed or unparsed "
            f"({n_skipped / total:.0%} > {max_skipped_share:.0%} allowed)"
        )
    return None


KEY_FIELDS = ("task", "task_version", "metric", "judge_id", "judge_version", "baseline", "decoding")


@dataclass
class Score(Record):
    """One metric of one model on one task, with its uncertainty and the keys that make it comparable.

    The comparability key (DESIGN): task and task version; ``judge_id``, who judged (classifier
    package, judge model, the reference model for KL); ``judge_version``, a hash of template, parser
    and judge decoding; ``baseline``, the model compared against where there is one; ``decoding``,
    the policy's decoding. ``store.comparable`` decides whether two scores may share a column.
    """

    task: str
    metric: str
    model: str
    value: float | None
    n: int
    n_skipped: int = 0
    stderr: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float = 0.95
    task_version: str = "1"
    judge_id: str = ""
    judge_version: str = ""
    baseline: str | None = None
    decoding: dict[str, Any] | None = None
    higher_is_better: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Score:
        # Schema 1 called the baseline reference_model and kept the direction in extra.
        data = dict(data)
        if "baseline" not in data and "reference_model" in data:
            data["baseline"] = data.pop("reference_model")
        if data.get("higher_is_better") is None and isinstance(data.get("extra"), dict):
            data["higher_is_better"] = data["extra"].get("higher_is_better")
        return super().from_dict(data)

    def unmeasured(self, max_skipped_share: float = MAX_SKIPPED_SHARE) -> str | None:
        """Why this score is not a measurement (nothing scored, too many failures, no value), or None."""
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return unmeasured_reason(self.n, self.n_skipped, max_skipped_share) or "no value computed"
        return unmeasured_reason(self.n, self.n_skipped, max_skipped_share)

    @property
    def key(self) -> tuple[Any, ...]:
        """What must match for two scores to share a table column (see ``store.comparable``)."""
        return tuple(_hashable(getattr(self, f)) for f in KEY_FIELDS)


def _hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    return value


def content_hash(*parts: Any, length: int = 16) -> str:
    """A short stable hash of JSON-serialisable parts: record keys, judge versions, run ids."""
    import hashlib
    import json

    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# A task run at several temperatures keeps one task name per temperature (``summarize@t0.5``): the spec
# writes these names and the readers (plots, tables) map them back.
TEMPERATURE_MARK = "@t"


def temperature_task(name: str, temperature: float) -> str:
    """The name of one temperature of a swept task (``summarize@t0.5``): its scores' own column."""
    return f"{name}{TEMPERATURE_MARK}{temperature:g}"


def swept_task(name: str) -> str:
    """The task a temperature-swept task name belongs to (``summarize@t0.5`` -> ``summarize``)."""
    base, mark, t = name.rpartition(TEMPERATURE_MARK)
    return base if mark and base and t.replace(".", "", 1).isdigit() else name


def score_ci(s: Score) -> tuple[float | None, float | None]:
    """A score's 95% CI; from its SE (a t interval, n - 1 df) where only that is stored (the official
    AlpacaEval win rate reports a standard error, no interval)."""
    if s.ci_low is not None and s.ci_high is not None:
        return s.ci_low, s.ci_high
    if s.value is None or s.stderr is None or math.isnan(s.stderr) or s.n < 2:
        return None, None
    from scipy.stats import t  # lazily: records is imported by every layer

    half = float(t.ppf(0.5 + s.ci_level / 2, s.n - 1)) * s.stderr
    return s.value - half, s.value + half
