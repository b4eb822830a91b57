"""On-policy pairs ranked by a chat judge (single-answer rating, or pairwise in both orders), over real HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evalharness.testing import FakeOpenAI
from evalharness.testing.fake_openai import request_text
from evalharness.workflows.onpolicy import PairsConfig, build_pairs, parse_pairwise

QUESTIONS = ["write a short review", "review the movie", "write about the story", "continue this review"]
UNRANKABLE = "review the movie"  # the fake judge never gives a parseable verdict on this one


def quality(answer: str) -> int:
    """The fake judge's notion of quality: a deterministic function of the answer."""
    return 1 + len(answer.split()) % 10


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def judge(body: dict[str, Any]) -> str:
    text = request_text(body)
    if f"\n{UNRANKABLE}\n" in text:
        return "Both answers have merits. Rating: 7 out of 10 [B]"  # no [[...]]: unparsed, never a score
    if "[The Start of Assistant A's Answer]" in text:
        a = quality(_between(text, "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]"))
        b = quality(_between(text, "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]"))
        return "Final verdict: " + ("[[A]]" if a > b else "[[B]]" if b > a else "[[C]]")
    answer = _between(text, "[The Start of Assistant's Answer]", "[The End of Assistant's Answer]")
    return f"Rating: [[{quality(answer)}]]; [[1]] would be harsh."  # FastChat: the first [[N]] counts


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))  # judge responses are cached there


def test_parse_pairwise_is_fastchats():
    assert parse_pairwise("[[A]] no wait, [[B]]") == "A" and parse_pairwise("tie: [[C]]") == "C"
    assert parse_pairwise("[[C]] or rather [[B]]") == "B"  # FastChat checks [[A]], then [[B]], then [[C]]
    assert parse_pairwise("[A] is better") is None and parse_pairwise("") is None


@pytest.mark.parametrize("rank", ["rating", "pairwise"])
def test_chat_judge_ranks_samples(tiny_model, prompts, rank):
    with FakeOpenAI(judge) as server:
        cfg = PairsConfig(model=str(tiny_model), prompts=str(prompts), k=4, max_new_tokens=8, rank=rank,
                          chat_judge={"model": "fake-model", "base_url": server.url})
        pairs, stats = build_pairs(cfg)
        requests = server.requests
    assert pairs and UNRANKABLE not in [p.prompt.messages[-1][1] for p in pairs]
    for p in pairs:
        assert quality(p.chosen) > quality(p.rejected)  # best vs worst by the judge
        if rank == "rating":
            assert (p.score_chosen, p.score_rejected) == (quality(p.chosen), quality(p.rejected))
    j = stats["judge"]["judgments"]
    assert stats["judge"]["mode"] == rank and j["requests"] == requests == j["ok"] + j["unparsed"] + j["failed"]
    assert j["unparsed"] > 0 and j["failed"] == 0 and stats["too_few_scored"] >= 1  # the unrankable prompt, dropped
    n, unscored = stats["samples"], stats["failed_judgments"]
    if rank == "rating":
        assert requests == n and unscored == j["unparsed"]  # one rating per sample; unparsed ones are unscored
    else:  # m samples of a prompt play m (m - 1) games (both orders); only the unrankable prompt's never parse
        assert 2 <= unscored <= 4 and j["unparsed"] == unscored * (unscored - 1)

def test_cli_pairs_with_a_chat_judge(tiny_model, prompts, tmp_path):
    out = tmp_path / "pairs.jsonl"
    with FakeOpenAI(judge) as server:
        p = subprocess.run([sys.executable, "-m", "evalharness.cli", "pairs", "--model", str(tiny_model), "--prompts",
                            str(prompts), "--out", str(out), "--k", "3", "--max-new-tokens", "8", "--rank", "pairwise",
                            "--judge-model", "fake-model", "--judge-base-url", server.url],
                           capture_output=True, text=True, timeout=300,
                           env={**__import__("os").environ, "EVALHARNESS_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 0, p.stderr[-2000:]
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    assert meta["stats"]["judge"]["mode"] == "pairwise" and meta["config"]["chat_judge"]["model"] == "fake-model"
    assert all(quality(json.loads(x)["chosen"]) > quality(json.loads(x)["rejected"]) for x in out.read_text().splitlines())
