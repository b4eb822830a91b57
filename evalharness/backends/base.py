"""The backend interface: two order-preserving batch methods, nothing else.

Retries, caching and concurrency belong to the wrapper around backends (evalharness.backends.client),
not to each backend (the inspect_ai split: thin provider, thick wrapper).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from evalharness.core.prompts import PromptItem, render
from evalharness.core.records import Generation, GenRequest, ScoreRequest, SeqLogprobs


@runtime_checkable
class Backend(Protocol):
    """A model that can sample responses and score fixed responses."""

    name: str
    model_id: str  # model spec + revision, for records and cache keys
    tokenizer: Any  # None for chat-only endpoints

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        """One Generation per (request, sample index), request-major, in input order."""
        ...

    def logprobs(self, requests: list[ScoreRequest]) -> list[SeqLogprobs]:
        """Summed log-probability (nats) of each response given its prompt, in input order."""
        ...


def request_prompt_ids(tokenizer: Any, req: GenRequest) -> list[int]:
    """A local backend's prompt: the harness-rendered ``prompt_ids`` as given, else the messages or text
    rendered once with the checkpoint's template (``evalharness.core.prompts.render``)."""
    if req.prompt_ids is not None:
        return list(req.prompt_ids)
    item = PromptItem(
        req.id,
        messages=tuple((m["role"], m["content"]) for m in req.messages) if req.messages else None,
        prompt=req.prompt,
    )
    return render(tokenizer, item)
