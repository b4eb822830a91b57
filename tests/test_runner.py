"""`evalharness run SPEC`: a spec through the runner, over real HTTP to a judge; resumable; the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from evalharness.testing.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path: Path, url: str) -> Path:
    demo = REPO / "benchmarks" / "demo_data"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: fake-run
model: policy-x
backend: fake
generation: {{max_new_tokens: 32}}
judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 1, concurrency: 4, cache: false}}
tasks:
  mt_bench:
    questions: {demo}/mt_bench/questions.jsonl
    judge_prompts: {demo}/mt_bench/judge_prompts.jsonl
    reference_answers: {demo}/mt_bench/reference_answer/demo-reference.jsonl
  arena_hard:
    data_dir: {demo}/arena_hard
    questions: {demo}/arena_hard/questions.jsonl
    baseline: demo-baseline
    bootstrap_rounds: 10
""")
    return spec


def _judge(body: dict) -> str:
    text = body["messages"][-1]["content"]
    if "verdict" in text or "Assistant A" in text:
        return "A and B are close. My final verdict is [[B>A]]."
    return "Solid answer. Rating: [[7]]"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EVALHARNESS_RESULTS": str(cwd / "results"), "EVALHARNESS_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_run_spec_end_to_end_and_resume(tmp_path):
    with FakeOpenAI(responder=_judge) as server:
        spec = _spec(tmp_path, server.url)
        r = _cli("run", str(spec), "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        s = {(x["task"], x["metric"]): x for x in summary["scores"]}
        assert s[("mt_bench", "score")]["value"] == 7.0 and s[("mt_bench", "score")]["n"] == 8
        # game 1 (baseline is A): B>A is a policy win; game 2 (policy is A): B>A is a loss -> 50%
        assert s[("arena_hard", "score")]["value"] == pytest.approx(50.0)
        assert summary["judge_usage"]["requests"] == server.requests == 8 + 12
        manifest = json.loads((Path(summary["path"]) / "manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["judge_usage"]["failures"] == 0
        before = server.requests
        again = _cli("run", str(spec), "--json", cwd=tmp_path)
        assert again.returncode == 0 and server.requests == before  # resumed: nothing re-judged
        assert json.loads(again.stdout)["scores"] == summary["scores"]


def test_bad_spec_fails_cleanly(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nmodel: m\nbackend: fake\ntasks:\n  mt_bench:\n    limitt: 3\n")
    r = _cli("run", str(spec), cwd=tmp_path)
    assert r.returncode == 2 and f"{spec}:6 field 'tasks.mt_bench.limitt'" in r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_offline_demo_spec(tmp_path):
    from evalharness.pipeline.runner import run_spec
    res = run_spec(REPO / "benchmarks" / "demo.yaml", results_dir=tmp_path, progress=False)
    path, scores = res.path, res.scores
    by = {(s.task, s.metric): s for s in scores}
    assert {"alpaca_eval", "arena_hard", "mt_bench"} == {s.task for s in scores}
    assert all("(demo judge)" in s.judge_version or "(demo judge)" in s.judge_id for s in scores)
    win = by[("alpaca_eval", "win_rate")]
    # The demo judge answers in each benchmark's label space: every judgment parses.
    assert (win.n, win.n_skipped) == (8, 0) and win.task_version.startswith("2/custom:")
    assert (by[("arena_hard", "score")].n, by[("arena_hard", "score")].n_skipped) == (12, 0)
    assert (by[("mt_bench", "score")].n, by[("mt_bench", "score")].n_skipped) == (8, 0)
    assert (path / "alpaca_eval" / "smollm2-135m-instruct" / "annotations.json").is_file()
