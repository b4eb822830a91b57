"""Thin provider for OpenAI-compatible chat endpoints: one chat-completions request in, one result out.

It owns no retries, cache or concurrency: those live in one place, ``evalharness.client.JudgeClient``
(inspect_ai's thin provider + thick wrapper). Its job is translation: a ``ChatRequest`` into one SDK
call, the reply into a ``ChatResult``, and every failure into a ``ProviderError`` that says whether
trying again could help.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from evalharness.errors import InputError

TokenAlternatives = list[tuple[str, float]]


@dataclass
class ChatRequest:
    """One chat completion to make. Every field except ``id`` changes the output, so all go into the cache key.

    ``model`` empty means the client's configured model. ``sample_index`` tells repeated samples of one
    prompt apart; ``template_version`` is the judge prompt template's version.
    """

    id: str
    messages: list[dict[str, Any]]
    model: str = ""
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    sample_index: int = 0
    template_version: str = ""
    # The benchmark's label space, for judges that answer by comparing label log-probabilities (a small
    # local judge): the assistant turn starts with ``choice_prefix`` and continues with one of ``choices``.
    # An endpoint never sees these (they are not in its request body, nor in its cache key).
    choices: tuple[str, ...] = ()
    choice_prefix: str = ""


@dataclass
class ChatResult:
    """The outcome of one ``ChatRequest``: ``status`` 'ok' with text, or 'error' with ``error`` and no text.

    ``texts`` holds every choice (n > 1); ``text`` is the first. ``top_logprobs`` has, per generated
    token of the first choice, the alternatives the server returned (best first), and ``token_logprobs``
    the sampled token with its log-probability; both None unless logprobs were asked for.
    """

    id: str
    status: Literal["ok", "error"]
    text: str | None = None
    texts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    top_logprobs: list[TokenAlternatives] | None = None
    token_logprobs: TokenAlternatives | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    key: str = ""
    choice_logprobs: dict[str, float] | None = None  # label -> log-prob, from a label-space judge


class ProviderError(Exception):
    """A failed call. ``retryable`` is the provider's verdict; ``retry_after`` the raw Retry-After header."""

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None,
                 retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retryable, self.status_code, self.retry_after = retryable, status_code, retry_after


# 408 is a timeout reported by the server; 429 and 5xx are load or outage. Any other 4xx is our fault
# and repeating it would only burn quota.
RETRYABLE_STATUS = frozenset({408, 429}) | frozenset(range(500, 600))


def read_api_key(api_key_env: str | None) -> str | None:
    """The secret from the environment variable *named* in config; None when no key is configured."""
    if not api_key_env:
        return None
    key = os.environ.get(api_key_env)
    if not key:
        raise InputError(f"environment variable {api_key_env} is not set (it should hold the API key)",
                         field="api_key_env")
    return key


class OpenAIChatProvider:
    """Chat completions through the official ``openai`` SDK against any ``base_url``."""

    name = "openai-chat"

    def __init__(self, base_url: str, *, api_key_env: str | None = None, timeout_s: float = 60.0) -> None:
        from openai import AsyncOpenAI

        key = read_api_key(api_key_env)
        self._secret = key
        # No key: send a placeholder rather than None, which would make the SDK fall back to
        # $OPENAI_API_KEY and hand a real secret to whatever local server base_url points at.
        # max_retries=0: retries belong to the wrapper, which counts and paces them.
        self._client = AsyncOpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout_s, max_retries=0)

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        await self._client.close()

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Send one request; return an ok ``ChatResult`` or raise ``ProviderError``."""
        import openai

        try:
            completion = await self._client.chat.completions.create(**request_params(request))
        except openai.APIStatusError as exc:
            raise ProviderError(self._redact(exc.message),  # "Error code: 429 - {body}"
                                retryable=exc.status_code in RETRYABLE_STATUS, status_code=exc.status_code,
                                retry_after=exc.response.headers.get("retry-after")) from None
        except openai.APITimeoutError:
            raise ProviderError("request timed out", retryable=True) from None
        except openai.APIConnectionError as exc:
            raise ProviderError(self._redact(f"connection error: {exc.__cause__ or exc}"), retryable=True) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise ProviderError(self._redact(f"malformed response body: {exc}"), retryable=True) from None
        return parse_completion(request.id, completion)

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def request_params(request: ChatRequest) -> dict[str, Any]:
    """The chat-completions arguments for ``request``; optional fields are left out when unset."""
    params: dict[str, Any] = {"model": request.model, "messages": request.messages,
                              "temperature": request.temperature, "top_p": request.top_p,
                              "max_tokens": request.max_tokens}
    if request.seed is not None:
        params["seed"] = request.seed
    if request.stop:
        params["stop"] = list(request.stop)
    if request.n != 1:
        params["n"] = request.n
    if request.logprobs:
        params["logprobs"] = True
        if request.top_logprobs is not None:
            params["top_logprobs"] = request.top_logprobs
    return params


def parse_completion(request_id: str, completion: Any) -> ChatResult:
    """A ``ChatResult`` from an SDK ``ChatCompletion``; a body without choices is a malformed response."""
    choices = getattr(completion, "choices", None)
    if isinstance(completion, str) or not choices:
        shown = completion if isinstance(completion, str) else json.dumps(_dump(completion))[:200]
        raise ProviderError(f"malformed response body (no choices): {shown[:200]}", retryable=True)
    choices = sorted(choices, key=lambda c: getattr(c, "index", 0))
    texts = [c.message.content or "" for c in choices]
    first = choices[0]
    top: list[TokenAlternatives] | None = None
    sampled: TokenAlternatives | None = None
    content = first.logprobs.content if first.logprobs is not None else None
    if content is not None:
        sampled = [(t.token, float(t.logprob)) for t in content]
        top = [[(a.token, float(a.logprob)) for a in (t.top_logprobs or [])] for t in content]
    usage: dict[str, int] = {}
    if getattr(completion, "usage", None) is not None:
        usage = {"prompt_tokens": int(completion.usage.prompt_tokens or 0),
                 "completion_tokens": int(completion.usage.completion_tokens or 0)}
    return ChatResult(id=request_id, status="ok", text=texts[0], texts=texts, finish_reason=first.finish_reason,
                      top_logprobs=top, token_logprobs=sampled, usage=usage)


def _dump(obj: Any) -> Any:
    try:
        return obj.model_dump()
    except Exception:  # noqa: BLE001 - only for an error message
        return repr(obj)
