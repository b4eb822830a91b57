"""JudgeClient over real HTTP against the fake OpenAI server: retries, cache, concurrency, accounting, secrets."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from evalharness.backends.client import ChatRequest, ClientConfig, JudgeClient, parse_retry_after
from evalharness.core.errors import InputError
from evalharness.testing import FakeOpenAI, Fault, Reply
from evalharness.testing.fake_openai import request_text

SECRET = "sk-test-0123456789-do-not-leak"


def echo(body: dict[str, Any]) -> str:
    return "echo: " + request_text(body)


@pytest.fixture
def server() -> FakeOpenAI:
    with FakeOpenAI(echo) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "user-cache"))


def make_client(server: FakeOpenAI, tmp_path: Path, **overrides: Any) -> JudgeClient:
    settings: dict[str, Any] = dict(base_url=server.url, model="judge-1", cache_dir=tmp_path / "cache",
                                    backoff_base_s=0.01, backoff_max_s=0.05, timeout_s=2.0, max_retries=3)
    return JudgeClient(ClientConfig(**{**settings, **overrides}))


def ask(i: int | str, **params: Any) -> ChatRequest:
    return ChatRequest(id=f"r{i}", messages=[{"role": "user", "content": f"question {i}"}], **params)


def test_results_keep_input_order_and_concurrency_bound_holds(server: FakeOpenAI, tmp_path: Path) -> None:
    server.latency_s = 0.05
    client = make_client(server, tmp_path, concurrency=4)
    requests = [ask(i) for i in range(40)]
    results = client.complete(requests)
    assert [r.id for r in results] == [r.id for r in requests]
    assert [r.text for r in results] == [f"echo: question {i}" for i in range(40)]
    assert server.max_in_flight == 4  # bounded, and the bound was actually used (parallel, not sequential)
    assert client.usage["requests"] == 40 and client.usage["items"] == 40


def test_retry_after_in_seconds_is_honoured(server: FakeOpenAI, tmp_path: Path) -> None:
    server.enqueue(Fault.http(429, retry_after=0.4))
    client = make_client(server, tmp_path)
    started = time.perf_counter()
    [result] = client.complete([ask(1)])
    assert time.perf_counter() - started >= 0.4  # the backoff alone would wait under 0.01 s
    assert result.status == "ok" and result.attempts == 2 and server.requests == 2
    assert client.usage["retries"] == 1 and client.usage["failures"] == 0


def test_retry_after_as_http_date_is_honoured(server: FakeOpenAI, tmp_path: Path) -> None:
    server.enqueue(Fault.http(503, retry_after=email.utils.formatdate(time.time() + 2, usegmt=True)))
    started = time.perf_counter()
    [result] = make_client(server, tmp_path).complete([ask(1)])
    assert time.perf_counter() - started >= 0.95  # HTTP-dates have 1 s resolution
    assert result.status == "ok" and result.attempts == 2


def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("fault", [Fault.http(500), Fault.http(502), Fault.http(503), Fault.http(429),
                                   Fault.delay(3.0), Fault.malformed(), Fault.no_choices()],
                         ids=["500", "502", "503", "429", "timeout", "malformed", "no-choices"])
def test_transient_faults_are_retried(server: FakeOpenAI, tmp_path: Path, fault: Fault) -> None:
    server.enqueue(fault, contains="question 1")
    results = make_client(server, tmp_path, timeout_s=1.0).complete([ask(0), ask(1)])
    assert [r.status for r in results] == ["ok", "ok"]
    assert results[1].text == "echo: question 1" and results[1].attempts == 2
    assert server.requests == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_fail_at_once(server: FakeOpenAI, tmp_path: Path, status: int) -> None:
    server.on("question 1", Fault.http(status))
    client = make_client(server, tmp_path)
    results = client.complete([ask(0), ask(1)])
    assert results[0].status == "ok"
    bad = results[1]
    assert bad.status == "error" and bad.attempts == 1 and bad.text is None and str(status) in (bad.error or "")
    assert server.requests == 2
    assert client.usage["failures"] == 1 and client.usage["retries"] == 0


def test_final_failure_is_reported_counted_and_never_cached(server: FakeOpenAI, tmp_path: Path) -> None:
    server.on("question 1", Fault.http(503))
    server.on("question 2", Fault.malformed())
    client = make_client(server, tmp_path, max_retries=2)
    results = client.complete([ask(0), ask(1), ask(2)])
    assert [r.status for r in results] == ["ok", "error", "error"]
    assert [r.attempts for r in results] == [1, 3, 3]
    assert "503" in (results[1].error or "") and "malformed" in (results[2].error or "")
    assert client.usage["failures"] == 2 and client.usage["retries"] == 4 and client.usage["requests"] == 7
    assert server.requests == 7

    server.requests = 0
    again = client.complete([ask(0), ask(1), ask(2)])  # failures were not cached: they are asked again
    assert [r.cached for r in again] == [True, False, False] and server.requests == 6

    server.reset()  # the endpoint recovers
    healed = client.complete([ask(1), ask(2)])
    assert [r.status for r in healed] == ["ok", "ok"] and server.requests == 2
    assert all(r.cached for r in client.complete([ask(1), ask(2)])) and server.requests == 2


def test_rerun_is_served_from_cache_with_zero_requests(server: FakeOpenAI, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEY_A", "sk-a")
    monkeypatch.setenv("KEY_B", "sk-b")
    requests = [ask(i, temperature=0.7, seed=i, logprobs=True, top_logprobs=3) for i in range(20)]
    first = make_client(server, tmp_path, concurrency=2, api_key_env="KEY_A").complete(requests)
    assert server.requests == 20 and not any(r.cached for r in first)

    server.reset()
    client = make_client(server, tmp_path, concurrency=16, api_key_env="KEY_B")  # plumbing, not output
    second = client.complete(requests)
    assert server.requests == 0
    assert all(r.cached and r.status == "ok" and r.attempts == 0 for r in second)
    strip = lambda r: dataclasses.replace(r, cached=False, attempts=0)  # noqa: E731
    assert [strip(r) for r in second] == [strip(r) for r in first]  # logprob tuples survive the round trip
    assert client.usage["cache_hits"] == 20 and client.usage["requests"] == 0
    assert client.usage["prompt_tokens"] == 0  # cached answers cost nothing


def test_cache_key_covers_outputs_and_nothing_else(server: FakeOpenAI, tmp_path: Path) -> None:
    client = make_client(server, tmp_path)
    base = ask(1)
    key = client.key(base)
    changed = [dataclasses.replace(base, **{name: value}) for name, value in [
        ("model", "judge-2"), ("temperature", 0.5), ("top_p", 0.9), ("max_tokens", 7), ("seed", 3),
        ("stop", ("\n",)), ("n", 2), ("logprobs", True), ("top_logprobs", 5), ("sample_index", 1),
        ("template_version", "v2"), ("messages", [{"role": "user", "content": "question 1 "}])]]
    keys = {client.key(r) for r in changed}
    assert key not in keys and len(keys) == len(changed)
    assert make_client(server, tmp_path, model="judge-2").key(base) == client.key(changed[0])
    assert make_client(server, tmp_path, model_revision="abc123").key(base) != key
    assert make_client(server, tmp_path, base_url=server.url.replace("127.0.0.1", "localhost")).key(base) != key
    same = [make_client(server, tmp_path, concurrency=32, api_key_env="OTHER", timeout_s=9, max_retries=0,
                        backoff_base_s=1.0, cache_dir=tmp_path / "elsewhere").key(base),
            client.key(dataclasses.replace(base, id="another-id")),
            client.key(dataclasses.replace(base, temperature=0))]  # int 0 decodes as 0.0
    assert same == [key] * 3

    client.complete([base])
    client.complete([dataclasses.replace(base, temperature=0.5)])  # over the wire too: a new request
    client.complete([dataclasses.replace(base, id="renamed")])
    assert server.requests == 2


def test_logprobs_are_parsed(server: FakeOpenAI, tmp_path: Path) -> None:
    scripted = [[("[[A]]", -0.1), ("[[B]]", -2.4), ("[[C]]", -5.0)], [("\n", -0.01), (" ", -4.6), ("!", -6.0)]]
    server.enqueue(Reply("[[A]]\n", top_logprobs=scripted))
    [result] = make_client(server, tmp_path).complete([ask(1, logprobs=True, top_logprobs=2)])
    assert server.received[0]["logprobs"] is True and server.received[0]["top_logprobs"] == 2
    assert result.top_logprobs == [[("[[A]]", -0.1), ("[[B]]", -2.4)], [("\n", -0.01), (" ", -4.6)]]
    assert result.token_logprobs == [("[[A]]", -0.1), ("\n", -0.01)]
    [plain] = make_client(server, tmp_path).complete([ask(2)])
    assert plain.top_logprobs is None and "logprobs" not in server.received[1]


def test_n_choices_usage_and_cost(server: FakeOpenAI, tmp_path: Path) -> None:
    server.enqueue(Reply(["a", "b", "c"], usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    client = make_client(server, tmp_path, prices={"judge-1": (1.0, 2.0)})
    [result] = client.complete([ask(1, n=3, temperature=1.0)])
    assert result.texts == ["a", "b", "c"] and result.text == "a"
    usage = client.usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (1000, 500)
    assert usage["cost_usd"] == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    assert make_client(server, tmp_path).usage["cost_usd"] is None  # no price table, no made-up cost


def test_identical_requests_in_one_batch_are_sent_once(server: FakeOpenAI, tmp_path: Path) -> None:
    results = make_client(server, tmp_path, cache=False).complete([ask(1), ask(2), dataclasses.replace(ask(1), id="dup")])
    assert [r.id for r in results] == ["r1", "r2", "dup"] and results[2].text == "echo: question 1"
    assert server.requests == 2


def test_complete_works_inside_a_running_event_loop(server: FakeOpenAI, tmp_path: Path) -> None:
    client = make_client(server, tmp_path)

    async def caller() -> tuple[str | None, str | None]:
        [sync_result] = client.complete([ask(1)])
        [async_result] = await client.acomplete([ask(2)])
        return sync_result.text, async_result.text

    assert asyncio.run(caller()) == ("echo: question 1", "echo: question 2")


def test_api_key_comes_from_named_env_var_and_never_leaks(server: FakeOpenAI, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("JUDGE_API_KEY", SECRET)
    server.enqueue(Fault.http(429, retry_after=0), Fault.http(401))  # log a retry and a final failure
    client = make_client(server, tmp_path, api_key_env="JUDGE_API_KEY")
    results = client.complete([ask(1), ask(2, logprobs=True)])
    assert {h["authorization"] for h in server.headers} == {f"Bearer {SECRET}"}
    stored = b"".join(p.read_bytes() for p in (tmp_path / "cache").iterdir())
    assert b"echo: question" in stored and SECRET.encode() not in stored
    assert SECRET not in caplog.text and SECRET not in repr(results) and SECRET not in repr(client.usage)
    assert "JUDGE_API_KEY" not in repr(client.usage)


def test_no_key_configured_sends_no_ambient_openai_key(server: FakeOpenAI, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)  # must not reach a local server nobody gave it to
    make_client(server, tmp_path).complete([ask(1)])
    assert SECRET not in server.headers[0].get("authorization", "")


def test_missing_key_variable_is_a_clear_config_error(server: FakeOpenAI, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(InputError, match="NO_SUCH_KEY_VAR"):
        make_client(server, tmp_path, api_key_env="NO_SUCH_KEY_VAR").complete([ask(1)])
    assert server.requests == 0


def test_fake_server_lists_models(server: FakeOpenAI) -> None:
    import openai

    models = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


def test_unreachable_endpoint_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = JudgeClient(ClientConfig(base_url=f"http://127.0.0.1:{port}/v1", model="judge-1", cache_dir=tmp_path,
                                      backoff_base_s=0.01, backoff_max_s=0.02, max_retries=2))
    [result] = client.complete([ask(1)])
    assert result.status == "error" and result.attempts == 3 and "connection error" in (result.error or "")
    assert client.usage["retries"] == 2 and client.usage["failures"] == 1


def test_server_in_its_own_process_answers_counts_and_stops(tmp_path: Path) -> None:
    from evalharness.testing import FakeOpenAIProcess

    with FakeOpenAIProcess(echo, latency_s=0.02) as server:
        client = JudgeClient(ClientConfig(base_url=server.url, model="judge-1", cache_dir=tmp_path, concurrency=4))
        results = client.complete([ask(i) for i in range(12)])
        assert [r.text for r in results] == [f"echo: question {i}" for i in range(12)]
        assert server.requests == 12 and server.max_in_flight == 4 and server.cpu_s > 0
        server.reset()
        assert server.requests == 0
        proc = server._proc
    assert not proc.is_alive()
