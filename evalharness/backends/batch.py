"""The OpenAI Batch API as a judge transport (``judge: {batch: true}``): half the price, hours instead of seconds.

A chunk's chat requests become one JSONL file (``custom_id`` = the request's cache key, ``method: POST``,
``url: /v1/chat/completions``, ``body`` = the chat-completions JSON the per-request path would POST), which
is uploaded (``POST /files``, purpose ``batch``), made a batch (``POST /batches``), polled
(``GET /batches/{id}``) until it is completed, failed, expired or cancelled, and whose output and error files
are downloaded (``GET /files/{id}/content``). Each output line is parsed into the same ``ChatResult`` the
per-request path gives.

The state of every batch (its keys, input file id, batch id, status) is kept in a small JSON file, written
atomically before each step that costs money or waits, in a folder of the run (``<run>/batches/``). A run
killed between upload and download resumes by polling the same batch instead of paying twice. Failed lines
(5xx, 429, expired, a malformed body) are sent again in a new batch, up to ``max_retries`` times; what still
fails comes back as an error result, which the caller records as a failed verdict, never a score.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from evalharness.backends.http import (
    RETRYABLE_STATUS,
    ChatRequest,
    ChatResult,
    OpenAIChatProvider,
    ProviderError,
    parse_completion,
    request_params,
)
from evalharness.core.paths import write_atomic

__all__ = ["BatchState", "BatchTransport", "batch_lines", "open_states"]

ENDPOINT = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class BatchState:
    """One batch of this run, as kept in its state file. ``step`` is how far it got: ``uploaded`` (input file
    sent), ``submitted`` (batch created: poll it), ``downloaded`` (its lines are in ``lines``), ``done``
    (its results were handed back)."""

    name: str
    keys: list[str]
    step: str = "new"
    input_file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the batch's own status, as the API last reported it
    errors: str | None = None  # a failed batch's errors (validation), as one line
    lines: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / f"{self.name}.json", lambda f: json.dump(asdict(self), f, ensure_ascii=False))


def open_states(folder: Path) -> list[BatchState]:
    """The batches in ``folder`` whose results were never handed back (a killed run's), oldest first."""
    states = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            state = BatchState(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            continue  # a state file of another version, or damaged: never reused, never deleted
        if state.step in ("uploaded", "submitted", "downloaded"):
            states.append(state)
    return sorted(states, key=lambda s: s.created)


def batch_lines(requests: dict[str, ChatRequest]) -> bytes:
    """The Batch API input file for ``requests`` (cache key -> request): one JSONL line per request."""
    rows = (
        {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": request_params(request)}
        for key, request in requests.items()
    )
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


@dataclass
class _Outcome:
    result: ChatResult
    retryable: bool = False


class BatchTransport:
    """Sends requests through the Batch API and hands back one ``ChatResult`` per cache key.

    ``count`` receives the client's counter deltas (``requests``: lines sent, ``retries``: lines sent again).
    """

    def __init__(
        self,
        provider: OpenAIChatProvider,
        folder: Path,
        *,
        poll_s: float,
        window: str,
        max_retries: int,
        count: Callable[..., None],
    ) -> None:
        self.provider, self.folder, self.poll_s, self.window = provider, folder, poll_s, window
        self.max_retries, self.count = max_retries, count

    async def complete(self, todo: dict[str, ChatRequest]) -> dict[str, ChatResult]:
        """One result per key of ``todo``: first from batches a killed run left (polled, not sent again), then
        from new batches, failed lines sent again up to ``max_retries`` times."""
        outcomes: dict[str, _Outcome] = {}
        for state in open_states(self.folder):
            if set(state.keys) & set(todo):
                self.count(requests=len(state.keys))  # the killed run's count of them was never kept
                outcomes.update(await self._finish(state, todo))
        retries, sent = 0, dict.fromkeys(todo, 0)
        while True:
            send = {k: r for k, r in todo.items() if k not in outcomes}
            retry = {k: todo[k] for k, o in outcomes.items() if o.retryable} if retries < self.max_retries else {}
            if not send and not retry:
                break
            if retry:
                retries += 1
                self.count(retries=len(retry))
            send.update(retry)
            self.count(requests=len(send))
            for key in send:
                sent[key] += 1
            outcomes.update(await self._finish(await self._submit(send), todo))
        return {k: replace(outcomes[k].result, attempts=max(1, sent[k])) for k in todo}

    # -- the steps ------------------------------------------------------------------------------
    async def _submit(self, requests: dict[str, ChatRequest]) -> BatchState:
        state = BatchState(name=f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}", keys=list(requests))
        data, ctype = _multipart({"purpose": "batch"}, "batch_input.jsonl", batch_lines(requests))
        uploaded = await self._call("POST", "/files", data, ctype)
        state.input_file_id, state.step = str(uploaded["id"]), "uploaded"
        state.save(self.folder)
        return state

    async def _create(self, state: BatchState) -> None:
        body = {"input_file_id": state.input_file_id, "endpoint": ENDPOINT, "completion_window": self.window}
        batch = await self._call("POST", "/batches", json.dumps(body).encode(), "application/json")
        state.batch_id, state.status, state.step = str(batch["id"]), str(batch.get("status")), "submitted"
        state.save(self.folder)

    async def _finish(self, state: BatchState, todo: dict[str, ChatRequest]) -> dict[str, _Outcome]:
        """Take ``state`` to its results (create, poll, download as needed) and mark it done."""
        try:
            if state.step == "uploaded":
                await self._create(state)
            if state.step == "submitted":
                await self._download(state, await self._poll(state))
        except ProviderError as exc:  # the endpoint is unreachable: the state stays, the next run polls it again
            error = f"Batch API ({state.batch_id or state.input_file_id}): {exc}"
            mine = [k for k in state.keys if k in todo]
            return {k: _Outcome(ChatResult(id=todo[k].id, status="error", error=error, key=k)) for k in mine}
        outcomes = {k: v for k, v in self._parse(state, todo).items() if k in todo}
        state.step = "done"
        state.save(self.folder)
        return outcomes

    async def _poll(self, state: BatchState) -> dict[str, Any]:
        while True:
            batch = await self._call("GET", f"/batches/{state.batch_id}")
            if batch.get("status") in TERMINAL:
                return batch
            await asyncio.sleep(self.poll_s)

    async def _download(self, state: BatchState, batch: dict[str, Any]) -> None:
        lines: list[dict[str, Any]] = []
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if file_id:
                raw = await self._call("GET", f"/files/{file_id}/content", raw=True)
                lines += [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        errors = (batch.get("errors") or {}).get("data") or []
        state.errors = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors) or None
        state.lines, state.status, state.step = lines, str(batch["status"]), "downloaded"
        state.save(self.folder)

    def _parse(self, state: BatchState, todo: dict[str, ChatRequest]) -> dict[str, _Outcome]:
        outcomes = {}
        for line in state.lines:
            key = str(line.get("custom_id"))
            if key in todo:
                outcomes[key] = _line_outcome(todo[key], key, line)
        for key in set(state.keys) - set(outcomes):
            if key not in todo:
                continue
            # No line: a batch that failed validation fails again as it is; an expired or cancelled one may not.
            failed = state.status == "failed"
            why = state.errors if failed and state.errors else f"no result line in batch {state.batch_id}"
            error = f"Batch API: batch {state.status}: {why}"
            outcomes[key] = _Outcome(ChatResult(id=todo[key].id, status="error", error=error, key=key), not failed)
        return outcomes

    async def _call(
        self, method: str, path: str, data: bytes | None = None, ctype: str | None = None, *, raw: bool = False
    ) -> Any:
        """A control call (upload, create, poll, download), retried with backoff while retrying can help."""
        attempt = 0
        while True:
            try:
                body = await self.provider.call(method, path, data, ctype)
                return body if raw else _json(body)
            except ProviderError as exc:
                attempt += 1
                if not exc.retryable or attempt > self.max_retries:
                    raise
                await asyncio.sleep(min(30.0, 0.5 * 2 ** (attempt - 1)))


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProviderError(f"malformed response body: {exc}: {body[:200]!r}", retryable=True) from None
    if not isinstance(data, dict):
        raise ProviderError(f"malformed response body: {body[:200]!r}", retryable=True)
    return data


def _line_outcome(request: ChatRequest, key: str, line: dict[str, Any]) -> _Outcome:
    """One output or error line: the ``ChatResult`` the per-request path would give for it."""
    response = line.get("response") or {}
    status = response.get("status_code")
    body = response.get("body")
    if line.get("error") or status != 200:
        detail = line.get("error") or (body or {}).get("error") or {}
        message = detail.get("message") if isinstance(detail, dict) else str(detail)
        code = status if isinstance(status, int) else (detail.get("code") if isinstance(detail, dict) else None)
        retryable = not isinstance(status, int) or status in RETRYABLE_STATUS
        error = f"Batch API line: Error code: {code} - {message}"
        return _Outcome(ChatResult(id=request.id, status="error", error=error, key=key), retryable)
    try:
        return _Outcome(replace(parse_completion(request.id, body), key=key))
    except ProviderError as exc:
        return _Outcome(ChatResult(id=request.id, status="error", error=f"Batch API line: {exc}", key=key), True)


def _multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (the form fields, then the file) and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n".encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
