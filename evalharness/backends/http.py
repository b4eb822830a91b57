"""Thin provider for OpenAI-compatible chat endpoints: one chat-completions request in, one result out.

It owns no retries, cache or concurrency: those live in one place, ``evalharness.backends.client.JudgeClient``
(inspect_ai's thin provider + thick wrapper). Its job is translation: a ``ChatRequest`` into one HTTP
POST of the chat-completions JSON, the reply into a ``ChatResult``, and every failure into a
``ProviderError`` that says whether trying again could help.

The POST goes out on aiohttp, not through the ``openai`` SDK: the SDK's parameter transform, request
building, pydantic reply models and httpx's pure-Python HTTP/1.1 stack cost ~2.4 ms of CPU per request
here, aiohttp's C parser and a plain dict ~0.4 ms, and at 32 requests in flight that CPU is what bounds
a judging job (benchmarks/perf/judge_client_throughput.py). The wire format is the same.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from evalharness.core.errors import InputError

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
    reasoning: str | None = None  # the first choice's separate reasoning field (reasoning_content / reasoning)


class ProviderError(Exception):
    """A failed call. ``retryable`` is the provider's verdict; ``retry_after`` the raw Retry-After header."""

    def __init__(
        self, message: str, *, retryable: bool, status_code: int | None = None, retry_after: str | None = None
    ) -> None:
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
        raise InputError(
            f"environment variable {api_key_env} is not set (it should hold the API key)", field="api_key_env"
        )
    return key


class OpenAIChatProvider:
    """Chat completions over HTTP (aiohttp) against any OpenAI-compatible ``base_url``.

    Make it inside the event loop that will use it (aiohttp sessions are bound to their loop), and
    ``aclose`` it there. One session pools keep-alive connections for all requests in flight.
    """

    name = "openai-chat"

    def __init__(self, base_url: str, *, api_key_env: str | None = None, timeout_s: float = 60.0) -> None:
        import aiohttp
        from aiohttp.helpers import get_env_proxy_for_url
        from yarl import URL

        key = read_api_key(api_key_env)
        self._secret = key
        self._base = base_url.rstrip("/")
        self._url = self._base + "/chat/completions"
        # No key: send a placeholder, as the SDK-based provider did, rather than nothing or an ambient
        # $OPENAI_API_KEY that would hand a real secret to whatever local server base_url points at.
        headers = {
            "Authorization": f"Bearer {key or 'EMPTY'}",
            "Accept": "application/json",
            "Content-Type": "application/json",
            "User-Agent": "evalharness",
        }
        # HTTP(S)_PROXY / NO_PROXY apply, as they did through the SDK (httpx honours them). Looked up
        # once here: aiohttp's trust_env would look up the proxy and ~/.netrc in a thread per request.
        self._proxy: URL | None
        self._proxy_auth: aiohttp.BasicAuth | None
        try:
            self._proxy, self._proxy_auth = get_env_proxy_for_url(URL(self._url))
        except LookupError:
            self._proxy, self._proxy_auth = None, None
        # limit=0: no connection cap of aiohttp's own (its default is 100); JudgeClient bounds concurrency.
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=timeout_s)
        )

    async def aclose(self) -> None:
        """Close the pooled HTTP connections."""
        await self._session.close()

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Send one request; return an ok ``ChatResult`` or raise ``ProviderError``."""
        completion = await post_json(
            self._session,
            self._url,
            request_params(request),
            redact=self._redact,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        )
        return parse_completion(request.id, completion)

    async def call(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None) -> bytes:
        """One other call to the same API (``path`` under ``base_url``, e.g. ``/files``): the raw reply body, or
        ``ProviderError`` as for a chat request. The Batch API transport (``backends.batch``) uses it."""
        headers = {"Content-Type": content_type} if content_type else None
        return await send_request(
            self._session,
            method,
            self._base + path,
            data,
            headers=headers,
            redact=self._redact,
            proxy=self._proxy,
            proxy_auth=self._proxy_auth,
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


async def post_json(
    session: Any, url: str, payload: dict[str, Any], *, redact: Any = None, proxy: Any = None, proxy_auth: Any = None
) -> Any:
    """POST ``payload`` as JSON on an aiohttp session; the decoded JSON reply, or ``ProviderError`` saying
    whether a retry could help (timeouts, connection failures, 408/429/5xx and unreadable bodies can)."""
    raw = await send_request(
        session, "POST", url, json.dumps(payload).encode(), redact=redact, proxy=proxy, proxy_auth=proxy_auth
    )
    try:
        return json.loads(raw)
    except ValueError as exc:  # not JSON, or cut off
        hide = redact or (lambda text: text)
        raise ProviderError(hide(f"malformed response body: {exc}: {raw[:200]!r}"), retryable=True) from None


async def send_request(
    session: Any,
    method: str,
    url: str,
    data: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    redact: Any = None,
    proxy: Any = None,
    proxy_auth: Any = None,
) -> bytes:
    """One HTTP call on an aiohttp session; the raw reply body, or ``ProviderError`` saying whether a retry
    could help (timeouts, connection failures and 408/429/5xx can)."""
    import aiohttp

    hide = redact or (lambda text: text)
    try:
        async with session.request(
            method, url, data=data, headers=headers, proxy=proxy, proxy_auth=proxy_auth
        ) as response:
            status, raw = response.status, await response.read()
            retry_after = response.headers.get("retry-after")
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise ProviderError("request timed out", retryable=True) from None
    except aiohttp.ClientError as exc:  # refused, reset, disconnected mid-body, bad chunking, ...
        raise ProviderError(hide(f"connection error: {type(exc).__name__}: {exc}"), retryable=True) from None
    if status >= 400:
        body = raw.decode("utf-8", errors="replace")
        raise ProviderError(
            hide(f"Error code: {status} - {_error_message(body)}"),
            retryable=status in RETRYABLE_STATUS,
            status_code=status,
            retry_after=retry_after,
        )
    return bytes(raw)


def _error_message(body: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body itself (cut to 500 characters)."""
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
    except (ValueError, AttributeError):
        pass
    return body[:500]


def request_params(request: ChatRequest) -> dict[str, Any]:
    """The chat-completions arguments for ``request``; optional fields are left out when unset."""
    params: dict[str, Any] = {
        "model": request.model,
        "messages": request.messages,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
    }
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
    """A ``ChatResult`` from a chat.completion JSON body; a body without choices is a malformed response."""
    choices = completion.get("choices") if isinstance(completion, dict) else None
    if not choices or not isinstance(choices, list):
        raise ProviderError(f"malformed response body (no choices): {json.dumps(completion)[:200]}", retryable=True)
    try:
        choices = sorted(choices, key=lambda c: c.get("index") or 0)
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
        first = choices[0]
        message = first.get("message") or {}
        reasoning = message.get("reasoning_content") or message.get("reasoning")  # vLLM, DeepSeek; OpenRouter
        top: list[TokenAlternatives] | None = None
        sampled: TokenAlternatives | None = None
        content = (first.get("logprobs") or {}).get("content")
        if content is not None:
            sampled = [(t["token"], float(t["logprob"])) for t in content]
            top = [[(a["token"], float(a["logprob"])) for a in (t.get("top_logprobs") or [])] for t in content]
        usage: dict[str, int] = {}
        if completion.get("usage"):
            usage = {
                "prompt_tokens": int(completion["usage"].get("prompt_tokens") or 0),
                "completion_tokens": int(completion["usage"].get("completion_tokens") or 0),
            }
    except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a field of the wrong shape
        raise ProviderError(
            f"malformed response body ({type(exc).__name__}: {exc}): {json.dumps(completion)[:200]}", retryable=True
        ) from None
    return ChatResult(
        id=request_id,
        status="ok",
        text=texts[0],
        texts=texts,
        finish_reason=first.get("finish_reason"),
        top_logprobs=top,
        token_logprobs=sampled,
        usage=usage,
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
    )
