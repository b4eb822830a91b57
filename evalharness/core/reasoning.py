"""A reasoning model's thinking, separated from its answer before anything judges the answer.

The common formats: ``<think>...</think>`` before the answer (DeepSeek-R1, Qwen3, QwQ), the same with an empty
think block (Qwen3 with thinking switched off), a closing ``</think>`` alone (chat templates that open the block
in the prompt), and an endpoint's separate field (vLLM and DeepSeek ``reasoning_content``, OpenRouter
``reasoning``). A block that never closes is all thinking: the model ran out of tokens before answering.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OPEN, CLOSE = "<think>", "</think>"
_LEADING_OPEN = re.compile(r"^\s*<think>", re.IGNORECASE)


@dataclass(frozen=True)
class Split:
    """``answer`` is what a judge sees; ``thinking`` is None when the reply had none ("" for an empty block)."""

    answer: str
    thinking: str | None = None


def split(text: str, reasoning: str | None = None) -> Split:
    """The answer and the thinking of a reply; ``reasoning`` is an endpoint's separate reasoning field."""
    text = text or ""
    opened = _LEADING_OPEN.match(text)
    close = text.lower().find(CLOSE)
    if opened and close < 0:  # never closed: no answer yet
        return Split("", _join(reasoning, text[opened.end() :].strip()))
    if close >= 0 and (opened or OPEN not in text.lower()[:close]):
        start = opened.end() if opened else 0
        return Split(text[close + len(CLOSE) :].strip(), _join(reasoning, text[start:close].strip()))
    return Split(text, reasoning if reasoning else None)


def _join(field: str | None, inline: str) -> str:
    return f"{field}\n\n{inline}" if field and inline else (field or inline)


def token_counts(n_tokens: int, part: Split, count: Callable[[str], int] | None) -> dict[str, int | None]:
    """Answer and thinking tokens of a sample of ``n_tokens`` generated tokens.

    ``count`` tokenizes a text (the policy's tokenizer); without one the split is unknown (None) unless there
    is no thinking. The thinking's count includes its tags: the answer's is what the policy spent on the answer.
    """
    if part.thinking is None:
        return {"n_answer_tokens": n_tokens, "n_thinking_tokens": 0}
    if count is None:
        return {"n_answer_tokens": None, "n_thinking_tokens": None}
    answer = min(count(part.answer), n_tokens) if part.answer else 0
    return {"n_answer_tokens": answer, "n_thinking_tokens": max(n_tokens - answer, 0)}


def counter(backend: Any) -> Callable[[str], int] | None:
    """A token counter from a backend's tokenizer (None for an endpoint, which has none here)."""
    tok = getattr(backend, "tokenizer", None)
    if tok is None:
        return None
    return lambda text: len(tok.encode(text, add_special_tokens=False))
