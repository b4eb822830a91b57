"""A judge budget that holds: ``judge: {max_cost: USD, max_requests: N}`` per run, across its resumes.

The judge client counts the tokens the endpoint reports and prices them (``core.prices``; the batch rate for
``batch: true``). Before each chunk of judgments the runner asks ``Budget.fit``: the chunk is cut to the
judgments that the estimate says fit in what is left, and when not one fits the run stops with
``BudgetStop`` (exit 4, manifest status ``stopped``), every judgment made so far kept. The estimate is the
running average over the judgments already paid (tokens per prompt character, completion tokens and requests
per judgment); before the first is paid, a judgment is priced at its worst case (prompt characters / 4 tokens
and ``max_tokens`` completion tokens). What was spent is kept in ``budget.json`` in the run folder, so the
budget is for the run, not for one invocation: a later run with a bigger budget resumes where this one
stopped and counts what was spent before toward it. Cached answers cost nothing and count nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evalharness.backends.client import ChatRequest
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.prices import cost_usd, price_of
from evalharness.pipeline.spec import JudgeSpec
from evalharness.store import DAMAGED, read_json_object, write_json_atomic
from evalharness.tasks.base import Pending

__all__ = ["BUDGET_FILE", "Budget", "BudgetStop", "Spend", "chat_request"]

BUDGET_FILE = "budget.json"
CHARS_PER_TOKEN = 4.0  # the worst-case guess before any reply: English is ~4 characters a token, code fewer


class BudgetStop(EvalHarnessError):
    """The next judgment would pass the run's judge budget: the run stops, its records kept, to be resumed."""

    exit_code = 4  # apart from 3 (judging failed): nothing failed, the run is unfinished by choice
    run_status = "stopped"

    def __init__(self, message: str, spent: dict[str, Any]) -> None:
        super().__init__(message)
        self.manifest_fields = {"budget": spent}


@dataclass
class Spend:
    """What a run's judge has spent, over all its invocations (``budget.json``)."""

    cost_usd: float = 0.0
    requests: int = 0
    judgments: int = 0  # judgments sent to the endpoint (not answered from the cache)
    prompt_chars: int = 0  # of the judgments sent: the characters of their prompts
    prompt_tokens: int = 0
    completion_tokens: int = 0


_USAGE = ("requests", "prompt_tokens", "completion_tokens")


class Budget:
    """The run's judge budget; ``of`` gives None when the spec sets none."""

    def __init__(self, spec: JudgeSpec, judge: Any) -> None:
        self.spec, self.judge = spec, judge
        self.folder: Path | None = None
        self.before = Spend()
        self.start: dict[str, Any] = {}

    @classmethod
    def of(cls, spec: JudgeSpec | None, judge: Any) -> Budget | None:
        """The budget of ``spec``'s judge; a ``max_cost`` for a judge model without a price is an InputError,
        raised before anything runs (a cost that cannot be counted cannot be held)."""
        if spec is None or (spec.max_cost is None and spec.max_requests is None):
            return None
        if spec.max_cost is not None and price_of(spec.model, spec.prices) is None:
            raise InputError(
                f"max_cost needs a price for the judge model {spec.model!r}: give it in judge.prices "
                "(USD per 1M prompt and completion tokens: {MODEL: [PROMPT, COMPLETION]})",
                field="judge.max_cost",
            )
        return cls(spec, judge)

    def open(self, folder: Path) -> None:
        """Start counting in run folder ``folder``, from what its earlier invocations spent."""
        self.folder = folder
        path = folder / BUDGET_FILE
        try:
            self.before = Spend(**read_json_object(path)) if path.is_file() else Spend()
        except TypeError as e:
            raise InputError(f"not a budget record ({e}); {DAMAGED}", path=str(path)) from None
        self.start = dict(self.judge.usage)

    def spent(self, chars: int = 0) -> Spend:
        """The run's spend so far: earlier invocations' plus this one's (the judge client's counters)."""
        now = self.judge.usage
        delta = {name: now[name] - self.start[name] for name in _USAGE}
        paid = (now["items"] - self.start["items"]) - (now["cache_hits"] - self.start["cache_hits"])
        cost = (now["cost_usd"] or 0.0) - (self.start["cost_usd"] or 0.0)
        b = self.before
        return Spend(
            cost_usd=b.cost_usd + cost,
            requests=b.requests + delta["requests"],
            judgments=b.judgments + paid,
            prompt_chars=b.prompt_chars + chars,
            prompt_tokens=b.prompt_tokens + delta["prompt_tokens"],
            completion_tokens=b.completion_tokens + delta["completion_tokens"],
        )

    def record(self, chunk: list[Pending]) -> None:
        """After a chunk is judged and stored: write the run's spend (atomically) for the next invocation."""
        assert self.folder is not None
        spent = self.spent(sum(_chars(p) for p in chunk))
        write_json_atomic(self.folder / BUDGET_FILE, asdict(spent))
        self.before, self.start = spent, dict(self.judge.usage)

    def fit(self, chunk: list[Pending], where: str, left: int) -> list[Pending]:
        """The leading judgments of ``chunk`` that the estimate says fit in the budget; ``BudgetStop`` when none
        does. ``where`` names the task and model, ``left`` counts their judgments still to make."""
        spent = self.spent()
        cost, requests = spent.cost_usd, float(spent.requests)
        for n, pending in enumerate(chunk):
            c, r = self.estimate(pending, spent)
            over_cost = self.spec.max_cost is not None and cost + c > self.spec.max_cost
            over_requests = self.spec.max_requests is not None and requests + r > self.spec.max_requests
            if over_cost or over_requests:
                if n == 0:
                    raise self._stop(spent, c, r, where, left)
                return chunk[:n]
            cost, requests = cost + c, requests + r
        return chunk

    def estimate(self, pending: Pending, spent: Spend) -> tuple[float, float]:
        """The expected cost (USD) and requests of one judgment; a judgment made without a chat request (a
        classifier, KL) costs nothing here."""
        request = chat_request(pending)
        if request is None:
            return 0.0, 0.0
        chars = _chars(pending)
        if spent.judgments and spent.prompt_chars:
            prompt = chars * spent.prompt_tokens / spent.prompt_chars
            completion = spent.completion_tokens / spent.judgments
            requests = spent.requests / spent.judgments
        else:
            prompt, completion, requests = chars / CHARS_PER_TOKEN, float(request.max_tokens * request.n), 1.0
        model = request.model or self.spec.model
        cost = cost_usd(model, prompt, completion, self.spec.prices, batch=self.spec.batch) or 0.0
        return cost, requests

    def _stop(self, spent: Spend, cost: float, requests: float, where: str, left: int) -> BudgetStop:
        limits = []
        if self.spec.max_cost is not None:
            limits.append(f"spent ${spent.cost_usd:.4f} of max_cost ${self.spec.max_cost:g}")
        if self.spec.max_requests is not None:
            limits.append(f"sent {spent.requests} of max_requests {self.spec.max_requests} requests")
        return BudgetStop(
            f"budget: {', '.join(limits)}; {spent.judgments} judgments made; the next judgment ({where}) would "
            f"cost about ${cost:.4f} and {requests:.1f} requests, and {left} of its judgments are left. Every "
            f"judgment so far is kept in {self.folder}: raise judge.max_cost / max_requests (what was spent counts "
            "toward them) and run the same command again to resume",
            asdict(spent),
        )


def chat_request(pending: Pending) -> ChatRequest | None:
    """The chat request a judgment sends: its payload, or the one in its payload tuple (a task keeps its own
    facts beside it); None for a judgment that sends none."""
    payload = pending.payload
    parts = payload if isinstance(payload, (tuple, list)) else (payload,)
    return next((p for p in parts if isinstance(p, ChatRequest)), None)


def _chars(pending: Pending) -> int:
    request = chat_request(pending)
    if request is None:
        return 0
    return sum(len(str(m.get("content") or "")) for m in request.messages)
