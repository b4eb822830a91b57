"""A real HTTP server speaking OpenAI chat-completions JSON, with scripted replies and injectable faults.

It binds 127.0.0.1 on a free port and serves from a background thread, so clients under test go
through their real HTTP stack (SDK, connection pool, timeouts). Typical use::

    with FakeOpenAI(default_text="[[A]]", latency_s=0.05) as server:
        server.enqueue(Fault.http(429, retry_after=0.2))          # the next request, whatever it is
        server.enqueue(Fault.http(503), contains="question 7")    # the next request that mentions it
        server.on("question 9", Fault.http(400))                  # every request that mentions it
        client = JudgeClient(ClientConfig(base_url=server.url, model="judge"))
        ...
        assert server.requests == 3 and server.max_in_flight <= 8

What a request gets, first match wins: its content-keyed one-shot queue, the global one-shot queue,
a sticky ``on`` rule, the ``responder`` callable, else ``Reply(default_text)``.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

TokenAlternatives = list[tuple[str, float]]


@dataclass
class Reply:
    """A successful completion. ``text`` as a list gives one text per choice (n > 1); a str is repeated.

    ``top_logprobs`` holds, per generated token, its alternatives best first; the first one is the
    sampled token. Without it, logprobs are synthesised from a whitespace split of the text.
    """

    text: str | list[str] = "ok"
    top_logprobs: list[TokenAlternatives] | None = None
    finish_reason: str = "stop"
    usage: dict[str, int] | None = None
    delay_s: float = 0.0


@dataclass
class Fault:
    """A failure to inject: an HTTP error status, a malformed body, a body without choices, a stall, a
    connection reset (TCP RST, no response) or a truncated response (fewer body bytes than Content-Length)."""

    kind: Literal["http", "malformed", "no_choices", "delay", "reset", "truncated"]
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0

    @classmethod
    def http(cls, status: int, retry_after: float | str | None = None) -> Fault:
        """An error status with an OpenAI-style error body; ``retry_after`` in seconds or as an HTTP-date."""
        return cls("http", status=status, retry_after=None if retry_after is None else str(retry_after))

    @classmethod
    def malformed(cls) -> Fault:
        """HTTP 200 with a body that is not JSON."""
        return cls("malformed", status=200)

    @classmethod
    def no_choices(cls) -> Fault:
        """HTTP 200 with valid JSON that lacks ``choices``."""
        return cls("no_choices", status=200)

    @classmethod
    def connection_reset(cls) -> Fault:
        """Close the connection with a TCP RST instead of answering."""
        return cls("reset", status=0)

    @classmethod
    def truncated(cls) -> Fault:
        """HTTP 200 whose body stops half way (the connection closes before Content-Length bytes came)."""
        return cls("truncated", status=200)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Stall this long before answering normally (longer than the client timeout, to provoke one)."""
        return cls("delay", status=200, delay_s=seconds)


Item = Reply | Fault | str
Responder = Callable[[dict[str, Any]], Item]


def request_text(body: dict[str, Any]) -> str:
    """All message contents of a chat request joined by newlines (what ``contains`` matches against)."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


class FakeOpenAI:
    """OpenAI-compatible chat server on 127.0.0.1:0 with scripted replies, faults and request stats."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        default_text: str = "ok",
        latency_s: float = 0.0,
        models: tuple[str, ...] = ("fake-model",),
        port: int = 0,
    ) -> None:
        self.port = port  # 0: a free one; a fixed one brings an endpoint "back" at the same URL
        self.responder, self.default_text, self.latency_s, self.models = responder, default_text, latency_s, models
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._queue: deque[Item] = deque()
        self._keyed: list[tuple[str, deque[Item]]] = []
        self._rules: list[tuple[str, Item]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.batch_delay_s = 0.0  # the Batch API: how long a batch stays in_progress before it completes
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        """Bind a free port and serve in a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler, bind_and_activate=False)
        server.daemon_threads, server.block_on_close = True, False
        server.allow_reuse_address = True
        server.request_queue_size = 256  # a burst of concurrent connects must not overflow the backlog
        server.server_bind()
        server.server_activate()
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving; stalled handlers wake up and exit."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients, ending in ``/v1``."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # -- scripting -------------------------------------------------------------------------------
    def enqueue(self, *items: Item, contains: str | None = None) -> None:
        """One-shot replies, in order: for any request, or for requests whose messages contain ``contains``."""
        with self._lock:
            if contains is None:
                self._queue.extend(items)
                return
            for key, queue in self._keyed:
                if key == contains:
                    queue.extend(items)
                    return
            self._keyed.append((contains, deque(items)))

    def on(self, contains: str, item: Item) -> None:
        """Answer every request whose messages contain ``contains`` with ``item`` (after one-shot queues)."""
        with self._lock:
            self._rules.append((contains, item))

    def reset(self) -> None:
        """Forget scripts and zero the counters."""
        with self._lock:
            self._queue.clear()
            self._keyed.clear()
            self._rules.clear()
            self.requests = 0  # chat-completion requests received, faults included
            self.in_flight = 0
            self.max_in_flight = 0
            self.received: list[dict[str, Any]] = []
            self.headers: list[dict[str, str]] = []
            self.files: dict[str, dict[str, Any]] = {}  # the Batch API's uploaded and output files
            self.batches: dict[str, dict[str, Any]] = {}
            self.batch_lines = 0  # batch request lines answered

    def _choose(self, body: dict[str, Any]) -> Item:
        text = request_text(body)
        with self._lock:
            for key, queue in self._keyed:
                if key in text and queue:
                    return queue.popleft()
            if self._queue:
                return self._queue.popleft()
            for key, item in self._rules:
                if key in text:
                    return item
        if self.responder is not None:
            return self.responder(body)
        return Reply(self.default_text)

    # -- serving (called from handler threads) ---------------------------------------------------
    def _enter(self, body: dict[str, Any], headers: dict[str, str]) -> None:
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.received.append(body)
            self.headers.append(headers)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stop.wait(seconds)

    def _answer(self, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        self._sleep(self.latency_s)
        item = self._choose(body)
        if isinstance(item, str):
            item = Reply(item)
        if isinstance(item, Fault):
            return self._fault(item, body)
        self._sleep(item.delay_s)
        return 200, {}, json.dumps(completion_body(item, body)).encode()

    def _fault(self, fault: Fault, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if fault.kind == "delay":
            self._sleep(fault.delay_s)
            return 200, {}, json.dumps(completion_body(Reply(self.default_text), body)).encode()
        if fault.kind in ("reset", "truncated"):
            return 200, {_CUT: fault.kind}, json.dumps(completion_body(Reply(self.default_text), body)).encode()
        if fault.kind == "malformed":
            return 200, {}, b'{"id": "chatcmpl-broken", "choices": [{"message": '
        if fault.kind == "no_choices":
            return (
                200,
                {},
                json.dumps(
                    {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": body.get("model", "")}
                ).encode(),
            )
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        error = {
            "error": {
                "message": f"injected fault: HTTP {fault.status}",
                "type": "fake_fault",
                "param": None,
                "code": str(fault.status),
            }
        }
        return fault.status, headers, json.dumps(error).encode()


def benchmark_judge(body: dict[str, Any]) -> Item:
    """A responder answering every benchmark in its own format: AlpacaEval's m/M log-probs (0.7/0.3),
    Arena-Hard's last [[label]] (B>A), MT-Bench's [[rating]] (6)."""
    text = request_text(body)
    if '"model_identifier": "M"' in text:
        return Reply("m", top_logprobs=[[("m", math.log(0.7)), ("M", math.log(0.3))]])
    if "Assistant A" in text:
        return "Close call. My final verdict is [[B>A]]."
    return "Rating: [[6]]"


class FakeOpenAIProcess:
    """``FakeOpenAI`` served from a child process, for throughput benchmarks of a client.

    In-process, the server's handler threads take the GIL from the client under test, so a benchmark
    would time both together; a real endpoint is another process (usually another machine). Scripting
    (``enqueue``/``on``) stays in-process only: here the child answers with ``responder`` or
    ``default_text``, and ``reset``/``requests``/``max_in_flight`` go over a pipe. ``responder`` must
    be picklable (a module-level function): the child is spawned, not forked.
    """

    def __init__(self, responder: Responder | None = None, *, default_text: str = "ok", latency_s: float = 0.0) -> None:
        self._args = (responder, default_text, latency_s)
        self._proc: Any = None
        self._conn: Any = None
        self._url = ""

    def start(self) -> FakeOpenAIProcess:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve_child, args=(child, *self._args), name="fake-openai", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(60):
            self.close()
            raise RuntimeError("the fake OpenAI server process did not start within 60 s")
        self._url = self._conn.recv()
        return self

    def _call(self, command: str) -> Any:
        self._conn.send(command)
        return self._conn.recv()

    def reset(self) -> None:
        """Zero the child's counters."""
        self._call("reset")

    @property
    def requests(self) -> int:
        return int(self._call("stats")["requests"])

    @property
    def cpu_s(self) -> float:
        """CPU seconds the server process has used (all its threads), to tell whether it kept up."""
        return float(self._call("stats")["cpu_s"])

    @property
    def max_in_flight(self) -> int:
        return int(self._call("stats")["max_in_flight"])

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        """Stop the child (asked first, then terminated) and wait for it."""
        if self._proc is None:
            return
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)
        self._conn.close()
        self._proc = None

    def __enter__(self) -> FakeOpenAIProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_child(conn: Any, responder: Responder | None, default_text: str, latency_s: float) -> None:
    with FakeOpenAI(responder, default_text=default_text, latency_s=latency_s) as server:
        conn.send(server.url)
        while True:
            try:
                command = conn.recv()
            except EOFError:  # the parent died: stop serving
                return
            if command == "stop":
                return
            if command == "reset":
                server.reset()
                conn.send(None)
            elif command == "stats":
                with server._lock:
                    conn.send(
                        {
                            "requests": server.requests,
                            "max_in_flight": server.max_in_flight,
                            "cpu_s": time.process_time(),
                        }
                    )


def _synth_logprobs(text: str) -> list[TokenAlternatives]:
    tokens = re.findall(r"\s*\S+", text) or [text]
    return [[(tok, -0.01)] + [(f"<alt{k}>", -2.0 - k) for k in range(1, 20)] for tok in tokens]


def completion_body(reply: Reply, request: dict[str, Any]) -> dict[str, Any]:
    """The chat.completion JSON for ``reply`` as the request asked for it (n, logprobs, top_logprobs)."""
    n = int(request.get("n") or 1)
    texts = reply.text if isinstance(reply.text, list) else [reply.text] * n
    want_logprobs = bool(request.get("logprobs"))
    top_n = int(request.get("top_logprobs") or 0)
    choices = []
    for i, text in enumerate(texts[:n]):
        choice: dict[str, Any] = {
            "index": i,
            "finish_reason": reply.finish_reason,
            "logprobs": None,
            "message": {"role": "assistant", "content": text, "refusal": None},
        }
        if want_logprobs:
            per_token = reply.top_logprobs if reply.top_logprobs is not None else _synth_logprobs(text)
            choice["logprobs"] = {
                "refusal": None,
                "content": [
                    {
                        "token": alts[0][0],
                        "logprob": alts[0][1],
                        "bytes": list(alts[0][0].encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts[:top_n]
                        ],
                    }
                    for alts in per_token
                ],
            }
        choices.append(choice)
    usage = reply.usage or {
        "prompt_tokens": len(request_text(request).split()),
        "completion_tokens": sum(len(t.split()) for t in texts[:n]),
    }
    usage = {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)}
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", ""),
        "choices": choices,
        "usage": usage,
    }


_CUT = "x-fake-cut"  # internal marker header: the handler resets or truncates instead of answering


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do: clients reuse pooled connections
    disable_nagle_algorithm = True  # headers and body go out as two writes; Nagle would hold the second

    @property
    def fake(self) -> FakeOpenAI:
        return self.server.fake  # type: ignore[attr-defined]  # set on the server by FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        cut = (headers or {}).get(_CUT)
        if cut is not None:
            self._cut(cut, payload)
            return
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout fired during an injected stall)

    def _cut(self, how: str, payload: bytes) -> None:
        self.close_connection = True
        try:
            if how == "truncated":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2])
                self.wfile.flush()
            # SO_LINGER 0: closing sends RST (a reset), or cuts the half-sent body short.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        answer = batch_api(self.fake, "GET", self.path, dict(self.headers.items()), b"")
        if answer is not None:
            self._send(*answer)
        elif self.path.rstrip("/").endswith("/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.fake.models]
            self._send(200, json.dumps({"object": "list", "data": data}).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = batch_api(self.fake, "POST", self.path, dict(self.headers.items()), raw)
        if answer is not None:
            self._send(*answer)
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._send(400, b'{"error": {"message": "request body is not JSON"}}')
            return
        self.fake._enter(body, {k.lower(): v for k, v in self.headers.items()})
        try:
            status, headers, payload = self.fake._answer(body)
            self._send(status, payload, headers)
        finally:
            self.fake._leave()


# -- the Batch API: /v1/files and /v1/batches ----------------------------------------------------------


def batch_api(
    fake: FakeOpenAI, method: str, path: str, headers: dict[str, str], raw: bytes
) -> tuple[int, bytes] | None:
    """The Batch API's endpoints as OpenAI serves them (file upload and content, batch create and retrieve);
    None for any other path. Each batch line is answered like a chat request (scripts, rules, responder)."""
    parts = path.split("?")[0].rstrip("/").split("/")
    tail = parts[parts.index("v1") + 1 :] if "v1" in parts else parts[1:]
    if method == "POST" and tail == ["files"]:
        return _upload(fake, headers, raw)
    if method == "POST" and tail == ["batches"]:
        return _create_batch(fake, json.loads(raw or b"{}"))
    if method == "GET" and len(tail) == 2 and tail[0] == "batches":
        return _retrieve_batch(fake, tail[1])
    if method == "GET" and len(tail) == 3 and tail[0] == "files" and tail[2] == "content":
        with fake._lock:
            file = fake.files.get(tail[1])
        return (200, file["content"]) if file else _not_found(f"No such File object: {tail[1]}")
    return None


def _not_found(message: str) -> tuple[int, bytes]:
    return 404, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()


def _file_object(file_id: str, content: bytes, purpose: str, filename: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose}  # fmt: skip


def _new_file(fake: FakeOpenAI, content: bytes, purpose: str, filename: str) -> dict[str, Any]:
    with fake._lock:
        file_id = f"file-{len(fake.files) + 1}"
        fake.files[file_id] = {**_file_object(file_id, content, purpose, filename), "content": content}
    return _file_object(file_id, content, purpose, filename)


def _upload(fake: FakeOpenAI, headers: dict[str, str], raw: bytes) -> tuple[int, bytes]:
    """``POST /v1/files``: multipart/form-data with ``purpose`` and ``file``."""
    import email.parser
    import email.policy

    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {ctype}\r\n\r\n".encode() + raw
    )
    fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
    if "file" not in fields or "purpose" not in fields:
        return 400, json.dumps({"error": {"message": "multipart form needs file and purpose"}}).encode()
    content, purpose = (fields[name].get_payload(decode=True) for name in ("file", "purpose"))
    if not isinstance(content, bytes) or not isinstance(purpose, bytes):
        return 400, json.dumps({"error": {"message": "file and purpose must be plain form fields"}}).encode()
    filename = str(fields["file"].get_filename() or "upload.jsonl")
    return 200, json.dumps(_new_file(fake, content, purpose.decode(), filename)).encode()


def _create_batch(fake: FakeOpenAI, body: dict[str, Any]) -> tuple[int, bytes]:
    """``POST /v1/batches``: a batch over an uploaded file, in_progress for ``fake.batch_delay_s``."""
    with fake._lock:
        source = fake.files.get(str(body.get("input_file_id")))
        if source is None or source["purpose"] != "batch":
            return _not_found(f"No such batch input file: {body.get('input_file_id')}")
        batch_id = f"batch_{len(fake.batches) + 1}"
        fake.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint"),
            "errors": None,
            "input_file_id": body.get("input_file_id"),
            "completion_window": body.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "completed_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "_created": time.monotonic(),
        }
    return _retrieve_batch(fake, batch_id)


def _retrieve_batch(fake: FakeOpenAI, batch_id: str) -> tuple[int, bytes]:
    """``GET /v1/batches/{id}``: the batch, run to completion once its delay has passed."""
    with fake._lock:
        batch = fake.batches.get(batch_id)
        if batch is None:
            return _not_found(f"No such Batch object: {batch_id}")
        due = time.monotonic() - batch["_created"] >= fake.batch_delay_s
        run = batch["status"] in ("validating", "in_progress") and due
        if run or not due:
            batch["status"] = "finalizing" if run else "in_progress"  # one caller runs it
        content = fake.files[batch["input_file_id"]]["content"] if run else b""
    if run:
        _run_batch(fake, batch, content)
    with fake._lock:
        return 200, json.dumps({k: v for k, v in batch.items() if not k.startswith("_")}).encode()


def _run_batch(fake: FakeOpenAI, batch: dict[str, Any], content: bytes) -> None:
    """Answer every line: a reply goes to the output file, an injected fault to the error file."""
    out, errors = [], []
    for n, line in enumerate(content.decode().splitlines()):
        request = json.loads(line)
        body = request["body"]
        item = fake._choose(body)
        reply = Reply(item) if isinstance(item, str) else item
        row: dict[str, Any] = {"id": f"batch_req_{batch['id']}_{n}", "custom_id": request["custom_id"], "error": None}
        if isinstance(reply, Reply):
            answer = completion_body(reply, body)
            row["response"] = {"status_code": 200, "request_id": f"req_{n}", "body": answer}
            out.append(row)
        else:
            status = reply.status if reply.kind == "http" else 500
            error = {"message": f"injected fault: HTTP {status}", "type": "fake_fault", "code": str(status)}
            row["response"] = {"status_code": status, "request_id": f"req_{n}", "body": {"error": error}}
            errors.append(row)
    files = {
        name: _new_file(fake, "".join(json.dumps(r) + "\n" for r in rows).encode(), "batch_output", name)["id"]
        for name, rows in (("output.jsonl", out), ("errors.jsonl", errors))
        if rows
    }
    with fake._lock:
        fake.batch_lines += len(out) + len(errors)
        batch.update(
            status="completed",
            output_file_id=files.get("output.jsonl"),
            error_file_id=files.get("errors.jsonl"),
            completed_at=int(time.time()),
            request_counts={"total": len(out) + len(errors), "completed": len(out), "failed": len(errors)},
        )
