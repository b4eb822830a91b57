"""The `openai` policy backend over real HTTP (fake server) and the local chat judge."""

from __future__ import annotations

import pytest

from evalharness.backends import get_backend
from evalharness.backends.http import ChatRequest
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest
from evalharness.testing.fake_openai import Fault, FakeOpenAI


def test_openai_backend_generates_in_order_and_marks_failures(tmp_path):
    with FakeOpenAI(responder=lambda body: "answer to " + body["messages"][-1]["content"]) as server:
        server.enqueue(Fault.http(400), contains="q3")
        b = get_backend("openai", "fake-model", base_url=server.url, cache_dir=str(tmp_path), max_retries=1)
        gens = b.generate([GenRequest(f"q{i}", messages=[{"role": "user", "content": f"q{i}"}],
                                      params=SamplingParams(max_new_tokens=8)) for i in range(5)])
        assert [g.text for g in gens if g.id != "q3"] == [f"answer to q{i}" for i in (0, 1, 2, 4)]
        bad = gens[3]
        assert bad.finish_reason == "error" and bad.text == "" and bad.error
        assert server.received[0]["max_tokens"] == 8
        with pytest.raises(EvalHarnessError, match="cannot score"):
            b.logprobs([ScoreRequest("x", [1], [2])])


def test_local_chat_judge_returns_top_logprobs(tiny_model):
    from evalharness.judges.local import LocalChatJudge
    judge = LocalChatJudge(str(tiny_model))
    res = judge.complete([ChatRequest("a", [{"role": "user", "content": "the movie"}], max_tokens=2, logprobs=True,
                                      top_logprobs=3)])[0]
    assert res.status == "ok" and len(res.top_logprobs) >= 1 and len(res.top_logprobs[0]) == 3
    first = res.top_logprobs[0]
    assert [lp for _, lp in first] == sorted([lp for _, lp in first], reverse=True)
    assert all(isinstance(t, str) for t, _ in first)
