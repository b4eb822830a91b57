"""The thick wrapper around chat providers: bounded concurrency, retries, a response cache, accounting.

Judges build ``ChatRequest``s and call ``JudgeClient.complete``; the provider below
(``evalharness.backends.http``) makes exactly one HTTP call per attempt. Everything that decides
*how often* and *whether* to call lives here, once (inspect_ai's thin provider + thick wrapper):

- a failed item comes back as ``ChatResult(status='error', error=...)``, never an exception and
  never a sentinel, so the caller records a failed Verdict and counts it (DESIGN: n, n_skipped);
- 429 / 5xx / timeouts / connection errors / malformed bodies are retried with exponential backoff and
  jitter, honouring Retry-After; other 4xx fail at once;
- only successes are cached (alpaca_eval's users saw failed annotations cached as results), under a
  key of everything that changes the output and nothing else (DESIGN: cache keys).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from evalharness.backends.http import ChatRequest, ChatResult, OpenAIChatProvider, ProviderError
from evalharness.core import paths
from evalharness.core.prices import cost_usd, price_of

__all__ = [
    "ChatRequest",
    "ChatResult",
    "ClientConfig",
    "JudgeClient",
    "ResponseCache",
    "cache_key",
    "cached_keys",
    "parse_retry_after",
    "run_sync",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# A server asking for a longer pause than this is treated as asking for this long: a run should
# degrade to slow, not to stalled for an hour on one header.
MAX_RETRY_AFTER_S = 300.0


@dataclass
class ClientConfig:
    """How to reach a judge endpoint and how hard to try. Only ``base_url``, ``model`` and
    ``model_revision`` change outputs (and so the cache key); the rest is plumbing.

    ``api_key_env`` names the environment variable holding the key (None for local servers): the
    secret itself never enters config, manifests or cache. ``prices`` maps a model to USD per 1M
    (prompt, completion) tokens, laid over the shipped table (``evalharness.core.prices``); a model
    priced by neither has no cost (None, never zero).
    """

    base_url: str
    model: str
    api_key_env: str | None = None
    model_revision: str = ""
    concurrency: int = 8
    max_retries: int = 6
    timeout_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    cache: bool = True
    cache_dir: str | Path | None = None
    prices: dict[str, tuple[float, float]] | None = None
    # The OpenAI Batch API (backends.batch) instead of one request per judgment: billed at the batch rate.
    batch: bool = False
    batch_poll_s: float = 30.0
    batch_window: str = "24h"
    batch_dir: str | Path | None = None  # where batch state is kept (a run's batches/); None: the cache's

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout_s <= 0:
            raise ValueError("ClientConfig: concurrency >= 1, max_retries >= 0 and timeout_s > 0 are required")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code, also when called inside a running event
    loop (a notebook, an async caller): then on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def cache_key(provider: str, base_url: str, model_revision: str, request: ChatRequest) -> str:
    """SHA-256 over everything that changes a response: endpoint, model and revision, messages, decoding
    parameters, sample index, judge template version. Not the id, api key or concurrency."""
    # A shallow field dict: JSON serialises it exactly as dataclasses.asdict's deep copy would (the key
    # of every cached response is unchanged), without copying each prompt for every request. The
    # label-space fields are for local judges: an endpoint never sees them.
    fields = {
        f.name: getattr(request, f.name)
        for f in dataclasses.fields(request)
        if f.name not in ("id", "choices", "choice_prefix")
    }
    fields["stop"] = list(request.stop)
    for name in ("temperature", "top_p"):
        fields[name] = float(fields[name])  # 0 and 0.0 are the same decoding
    payload = {"provider": provider, "base_url": base_url.rstrip("/"), "revision": model_revision, **fields}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def cached_keys(keys: Sequence[str], cache_dir: str | Path | None = None) -> set[str]:
    """The keys among ``keys`` that the response cache holds, read without writing anything (a plan counts
    them before a run); none when there is no cache file yet."""
    path = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "responses"
    path = path / "chat.sqlite"
    if not keys or not path.is_file():
        return set()
    found: set[str] = set()
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            for i in range(0, len(keys), 500):
                chunk = list(keys[i : i + 500])
                marks = ",".join("?" * len(chunk))
                found |= {k for (k,) in db.execute(f"SELECT key FROM responses WHERE key IN ({marks})", chunk)}
    except sqlite3.Error:
        return set()
    return found


class ResponseCache:
    """Successful responses in one SQLite file: each write is its own transaction (atomic), WAL mode lets
    readers and writers (threads or processes) share it, and a lock serialises this process's writers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        # Cached judge responses may quote private prompts: readable by the user only (sqlite gives its
        # -wal and -shm files the database file's mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, json.dumps(value, ensure_ascii=False), time.time()),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


_CACHED_FIELDS = ("text", "texts", "finish_reason", "top_logprobs", "token_logprobs", "usage")


def _pairs(rows: list[list[Any]]) -> list[tuple[str, float]]:
    return [(str(token), float(logprob)) for token, logprob in rows]  # JSON turned the tuples into lists


def _from_cache(request: ChatRequest, key: str, value: dict[str, Any]) -> ChatResult:
    top, sampled = value["top_logprobs"], value["token_logprobs"]
    return ChatResult(
        id=request.id,
        status="ok",
        text=value["text"],
        texts=value["texts"],
        finish_reason=value["finish_reason"],
        usage=value["usage"],
        cached=True,
        key=key,
        top_logprobs=None if top is None else [_pairs(alts) for alts in top],
        token_logprobs=None if sampled is None else _pairs(sampled),
    )


_COUNTERS = ("items", "requests", "retries", "cache_hits", "failures", "prompt_tokens", "completion_tokens")


class JudgeClient:
    """Batch chat completions with bounded concurrency, retries, caching and usage accounting."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._cache: ResponseCache | None = None
        if config.cache:
            folder = Path(config.cache_dir) if config.cache_dir is not None else paths.cache_dir("responses")
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            if config.cache_dir is None:
                folder.chmod(0o700)  # our own folder (cache_dir made it with the umask's mode): user only
            self._cache = ResponseCache(folder / "chat.sqlite")
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._cost: float | None = 0.0 if price_of(config.model, config.prices) is not None else None
        self._unpriced: set[str] = set()
        self._rng = random.Random()  # jitter only; never affects an output

    @property
    def model_id(self) -> str:
        """The judge model and where it is served (for manifests and the ChatJudge protocol)."""
        return f"{self.config.model}@{self.config.base_url}"

    @property
    def usage(self) -> dict[str, Any]:
        """Totals over this client's life: items, requests (HTTP attempts), retries, cache hits, failures,
        prompt and completion tokens of real requests, and cost in USD (None when nothing prices the model)."""
        with self._lock:
            return {**self._counts, "cost_usd": self._cost}

    def key(self, request: ChatRequest) -> str:
        """The cache key this client uses for ``request``."""
        return cache_key(
            OpenAIChatProvider.name, self.config.base_url, self.config.model_revision, self._resolve(request)
        )

    @property
    def caches_responses(self) -> bool:
        """Whether successes are cached (and ``refresh`` has a cache to bypass)."""
        return self._cache is not None

    def complete(
        self, requests: Sequence[ChatRequest], progress: Any = False, refresh: bool = False
    ) -> list[ChatResult]:
        """Blocking ``acomplete``; safe to call from inside a running event loop (it then uses a thread)."""
        return run_sync(self.acomplete(requests, progress, refresh))

    async def acomplete(
        self, requests: Sequence[ChatRequest], progress: Any = False, refresh: bool = False
    ) -> list[ChatResult]:
        """One result per request, in order. Identical requests (same key) are sent once. ``refresh`` asks
        every request anew (a re-judged answer) and caches the new response; ``progress`` is a bool or a
        caller's progress bar (anything with ``update``) advanced once per request sent."""
        resolved = [self._resolve(r) for r in requests]
        keys = [self.key(r) for r in resolved]
        by_key: dict[str, ChatResult] = {}
        todo: dict[str, ChatRequest] = {}
        for request, key in zip(resolved, keys):
            if key in by_key or key in todo:
                continue
            hit = self._cache.get(key) if self._cache is not None and not refresh else None
            if hit is not None:
                by_key[key] = _from_cache(request, key, hit)
            else:
                todo[key] = request
        if todo:
            by_key.update(await (self._batch(todo, progress) if self.config.batch else self._run(todo, progress)))
        results = [replace(by_key[key], id=request.id) for request, key in zip(resolved, keys)]
        self._count(
            items=len(results),
            cache_hits=sum(r.cached for r in results),
            failures=sum(r.status == "error" for r in results),
        )
        return results

    def close(self) -> None:
        """Release the cache file."""
        if self._cache is not None:
            self._cache.close()

    # -- internals ----------------------------------------------------------------------------------
    def _resolve(self, request: ChatRequest) -> ChatRequest:
        return request if request.model else replace(request, model=self.config.model)

    async def _run(self, todo: dict[str, ChatRequest], progress: Any) -> dict[str, ChatResult]:
        # The provider (and its connection pool) is made per call, inside the running loop: async HTTP
        # clients are bound to the loop that made them, and ``complete`` may run a fresh loop each time.
        provider = OpenAIChatProvider(
            self.config.base_url, api_key_env=self.config.api_key_env, timeout_s=self.config.timeout_s
        )
        semaphore = asyncio.Semaphore(self.config.concurrency)
        own = progress is True  # a caller's bar (one over a whole task) is advanced here, never closed here
        bar: Any = _progress_bar(len(todo), self.config.model) if own else (progress or None)
        try:

            async def one(key: str, request: ChatRequest) -> tuple[str, ChatResult]:
                result = await self._attempt_until_done(provider, semaphore, key, request)
                if bar is not None:
                    bar.update(1)
                return key, result

            return dict(await asyncio.gather(*(one(k, r) for k, r in todo.items())))
        finally:
            if own:
                bar.close()
            await provider.aclose()

    async def _batch(self, todo: dict[str, ChatRequest], progress: Any) -> dict[str, ChatResult]:
        """``todo`` through the Batch API; successes are accounted at the batch rate and cached as usual."""
        from evalharness.backends.batch import BatchTransport

        provider = OpenAIChatProvider(
            self.config.base_url, api_key_env=self.config.api_key_env, timeout_s=self.config.timeout_s
        )
        folder = Path(self.config.batch_dir) if self.config.batch_dir is not None else paths.cache_dir("batches")
        transport = BatchTransport(
            provider,
            folder,
            poll_s=self.config.batch_poll_s,
            window=self.config.batch_window,
            max_retries=self.config.max_retries,
            count=self._count,
        )
        try:
            results = await transport.complete(todo)
        finally:
            await provider.aclose()
        for key, result in results.items():
            if result.status == "ok":
                self._account(todo[key].model, result.usage, batch=True)
                if self._cache is not None:
                    self._cache.put(key, {name: getattr(result, name) for name in _CACHED_FIELDS})
        bar = progress if progress is not True and progress else None
        if bar is not None:
            bar.update(len(todo))
        return results

    async def _attempt_until_done(
        self, provider: OpenAIChatProvider, semaphore: asyncio.Semaphore, key: str, request: ChatRequest
    ) -> ChatResult:
        attempts = 0
        while True:
            attempts += 1
            try:
                async with semaphore:  # held only while a request is in flight, not while backing off
                    self._count(requests=1)
                    async with asyncio.timeout(self.config.timeout_s):
                        result = await provider.chat(request)
            except ProviderError as exc:
                error = exc
            except TimeoutError:
                error = ProviderError(f"no response within {self.config.timeout_s}s", retryable=True)
            except Exception as exc:  # noqa: BLE001 - one item's bug must not sink the batch
                log.exception("request %s: unexpected provider failure", request.id)
                error = ProviderError(f"{type(exc).__name__}: {exc}", retryable=False)
            else:
                self._account(request.model, result.usage)
                if self._cache is not None:
                    self._cache.put(key, {name: getattr(result, name) for name in _CACHED_FIELDS})
                return replace(result, attempts=attempts, key=key)
            if not error.retryable or attempts > self.config.max_retries:
                # Debug, not a warning per request: the caller counts failures and reports each kind once.
                log.debug("request %s failed after %d attempt(s): %s", request.id, attempts, error)
                return ChatResult(id=request.id, status="error", error=str(error), attempts=attempts, key=key)
            self._count(retries=1)
            delay = self._delay(attempts, parse_retry_after(error.retry_after))
            log.debug("request %s: %s; retry %d in %.2fs", request.id, error, attempts, delay)
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter; a server's Retry-After is a floor, with jitter on top so that a
        burst of 429s does not come back as a burst."""
        jitter = self._rng.uniform(0.0, self.config.backoff_base_s)
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER_S) + jitter
        backoff = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return backoff * self._rng.uniform(0.5, 1.0)

    def _account(self, model: str, usage: dict[str, int], *, batch: bool = False) -> None:
        prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
        self._count(prompt_tokens=prompt, completion_tokens=completion)
        cost = cost_usd(model, prompt, completion, self.config.prices, batch=batch)
        with self._lock:
            if cost is None:  # a partial sum is not the cost: unknown from here on
                if model not in self._unpriced:
                    self._unpriced.add(model)
                    log.warning("no price for model %s: cost_usd is unknown (judge: prices: sets one)", model)
                self._cost = None
            elif self._cost is not None:
                self._cost += cost

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._counts[name] += delta


def _progress_bar(total: int, model: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"judge {model}", unit="req")
