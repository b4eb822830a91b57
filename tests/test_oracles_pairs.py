"""`evalharness pairs` with a pairwise chat judge: the written pairs agree with the judge's notion of quality, checked
on a file that must not be empty (an `all(...)` over no lines proves nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from evalharness.testing import FakeOpenAI
from evalharness.testing.fake_openai import request_text

QUESTIONS = ["write a short review", "review the movie", "write about the story", "continue this review"]


def quality(answer: str) -> int:
    return 1 + len(answer.split()) % 10


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def judge(body: dict[str, Any]) -> str:
    text = request_text(body)
    a = quality(_between(text, "[The Start of Assistant A's Answer]", "[The End of Assistant A's Answer]"))
    b = quality(_between(text, "[The Start of Assistant B's Answer]", "[The End of Assistant B's Answer]"))
    return "Final verdict: " + ("[[A]]" if a > b else "[[B]]" if b > a else "[[C]]")


def test_cli_pairwise_pairs_follow_the_judge(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(QUESTIONS)))
    out = tmp_path / "pairs.jsonl"
    # A fresh interpreter, not forkcli's fork: this child runs torch, and a fork of a process whose OpenMP
    # threads are live (earlier tests ran torch here) can hang in its first matmul.
    env = {**os.environ, "EVALHARNESS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).parents[1])}
    with FakeOpenAI(judge) as server:
        done = subprocess.run([sys.executable, "-m", "evalharness", "pairs", "--model", str(tiny_model), "--prompts",
                               str(prompts), "--out", str(out), "--k", "4", "--max-new-tokens", "8", "--rank",
                               "pairwise", "--judge-model", "fake-model", "--judge-base-url", server.url],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) >= 2  # not vacuous
    assert all(quality(r["chosen"]) > quality(r["rejected"]) for r in rows)
    meta = json.loads((tmp_path / "pairs.jsonl.meta.json").read_text())
    assert meta["stats"]["judge"]["mode"] == "pairwise"
