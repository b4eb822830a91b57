"""Reasoning traces (issue 21 point 4): a policy's thinking is kept but never judged; a judge is parsed on its answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evalharness.analysis.html_report import write_report
from evalharness.backends.http import parse_completion
from evalharness.core import reasoning
from evalharness.pipeline.runner import run_spec
from evalharness.store import RunStore
from evalharness.testing.fake_openai import FakeOpenAI, request_text

DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"


@pytest.mark.parametrize(
    "text, field, answer, thinking",
    [
        ("<think>plan</think>\n\nThe answer.", None, "The answer.", "plan"),
        ("  <THINK>\nplan\n</THINK>The answer.", None, "The answer.", "plan"),
        ("<think>\n\n</think>\n\nThe answer.", None, "The answer.", ""),  # empty-think prefix
        ("plan in a template-opened block</think>The answer.", None, "The answer.", "plan in a template-opened block"),
        ("<think>ran out of tokens", None, "", "ran out of tokens"),
        ("The answer.", "endpoint reasoning", "The answer.", "endpoint reasoning"),
        (
            "No thinking. Use <think> tags like </think> this.",
            None,
            "No thinking. Use <think> tags like </think> this.",
            None,
        ),
        ("The answer.", None, "The answer.", None),
    ],
)
def test_split(text: str, field: str | None, answer: str, thinking: str | None) -> None:
    assert reasoning.split(text, field) == reasoning.Split(answer, thinking)


def test_token_counts() -> None:
    words = lambda s: len(s.split())  # noqa: E731
    assert reasoning.token_counts(10, reasoning.Split("a b c", "x y"), words) == {
        "n_answer_tokens": 3,
        "n_thinking_tokens": 7,
    }
    assert reasoning.token_counts(5, reasoning.Split("a"), None) == {"n_answer_tokens": 5, "n_thinking_tokens": 0}
    assert reasoning.token_counts(5, reasoning.Split("a", "b"), None)["n_thinking_tokens"] is None


def test_an_endpoints_reasoning_field_is_read() -> None:
    body = {"choices": [{"index": 0, "message": {"content": "Hi.", "reasoning_content": "think"}}]}
    assert parse_completion("r", body).reasoning == "think"
    body["choices"][0]["message"] = {"content": "Hi.", "reasoning": "or-style"}
    assert parse_completion("r", body).reasoning == "or-style"


SECRET = "secret plan 42"


def responder(body: dict[str, Any]) -> str:
    text = request_text(body)
    if "[[rating]]" in text:  # the judge prompt; it reasons first, with a decoy rating in its thinking
        assert SECRET not in text
        return "<think>I might give it [[2]]... no.</think>The answer is good. Rating: [[7]]"
    return f"<think>{SECRET}</think>The final answer."


def test_thinking_is_kept_folded_and_never_judged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "spec.yaml"
    mt = DEMO / "mt_bench"
    with FakeOpenAI(responder) as server:
        spec.write_text(
            f"""name: think
model: policy-x
backend: openai
backend_options: {{base_url: "{server.url}"}}
judge: {{type: openai, model: judge-x, base_url: "{server.url}", cache: false}}
tasks:
  mt_bench: {{questions: {mt}/questions.jsonl, judge_prompts: {mt}/judge_prompts.jsonl,
             reference_answers: {mt}/reference_answer/demo-reference.jsonl, question_ids: [{_first_id(mt)}]}}
"""
        )
        run = run_spec(spec, results_dir=tmp_path / "results", progress=False)
        bodies = server.received
    judged = [b for b in bodies if "[[rating]]" in request_text(b)]
    assert len(judged) == 2 and not any(SECRET in json.dumps(b) for b in judged)  # the judge never saw the thinking
    store = RunStore(run.path)
    gens = store.generations("policy-x")
    assert gens and all((g.text, g.thinking) == ("The final answer.", SECRET) for g in gens)
    # A second turn's history holds the policy's answer, not its thinking (as a chat UI sends it back).
    assert not any(SECRET in json.dumps(b) for b in bodies if "impartial judge" not in request_text(b))
    verdicts = store.verdicts("mt_bench", "policy-x")
    assert [v.value for v in verdicts] == [7.0, 7.0]  # parsed on the final answer; the whole reply stays raw
    assert all(v.raw.startswith("<think>I might give it [[2]]") for v in verdicts)
    html = write_report([str(run.path)], tmp_path / "r.html").read_text(encoding="utf-8")
    assert SECRET in html and 'el("details.thinking"' in html and "not judged" in html


def _first_id(folder: Path) -> int:
    return int(json.loads((folder / "questions.jsonl").read_text().splitlines()[0])["question_id"])
