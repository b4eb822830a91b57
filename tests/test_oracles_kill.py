"""Real SIGKILLs of `evalharness run`, at random moments of generation and of judging, then a resume.

The command runs in a child process (forked from this one after a first, uninterrupted run has imported
everything, so a child starts in milliseconds instead of the seconds a fresh interpreter needs to import torch):
the fake backend generates, VADER and a real-HTTP fake OpenAI judge answering after a random delay judge. The
child gets SIGKILL, which runs no cleanup, at a seeded random point: once generations.jsonl has k lines (generation
still going), or once the judge has had k requests plus a random fraction of a reply's delay. The same command
then resumes; its scores must equal the uninterrupted run's, with no record twice and every jsonl line whole.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import forkcli
import pytest

from evalharness.testing.fake_openai import FakeOpenAI, Reply

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
N_PROMPTS = 300
VERDICTS = ["[[A>>B]]", "[[A>B]]", "[[A=B]]", "[[B>A]]", "[[B>>A]]"]
_delays = random.Random(0)


def _judge(body: dict) -> Reply:
    """A reply that depends on the request's content only (so a resumed run gets the same), after a random delay."""
    text = body["messages"][-1]["content"]
    h = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    reply = (f"My final verdict is {VERDICTS[h % 5]}." if "Assistant A" in text or "verdict" in text
             else f"Rating: [[{1 + h % 10}]]")
    return Reply(reply, delay_s=_delays.uniform(0.02, 0.08))


def _spec(tmp: Path, url: str) -> Path:
    prompts = tmp / "prompts.jsonl"
    words = ["the", "movie", "was", "great", "terrible", "fine", "good", "bad", "plot", "acting"]
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": " ".join(words[(i * 7 + j) % 10] for j in range(4))})
                               + "\n" for i in range(N_PROMPTS)))
    spec = tmp / "spec.yaml"
    spec.write_text(f"""\
name: kill
model: policy-x
backend: fake
generation: {{max_new_tokens: 32}}
judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 1, concurrency: 2, cache: false}}
tasks:
  sentiment: {{prompts: "{prompts}"}}
  mt_bench:
    questions: {DEMO}/mt_bench/questions.jsonl
    judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl
    reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl
  arena_hard:
    data_dir: {DEMO}/arena_hard
    questions: {DEMO}/arena_hard/questions.jsonl
    baseline: demo-baseline
    bootstrap_rounds: 20
""")
    return spec


def _start(spec: Path, results: Path, out: Path) -> multiprocessing.process.BaseProcess:
    env = {"EVALHARNESS_RESULTS": str(results), "EVALHARNESS_CACHE": str(results) + "-cache"}
    return forkcli.start(["run", str(spec), "--json"], results.parent, env, out)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _check_records(run: Path) -> None:
    """Every line of every jsonl parses; no generation, verdict or score recorded twice."""
    files = sorted(run.glob("*.jsonl"))
    assert {f.name for f in files} >= {"generations.jsonl", "verdicts.jsonl", "scores.jsonl"}
    for f in files:
        data = f.read_bytes()
        assert data.endswith(b"\n"), f
        rows = [json.loads(line) for line in data.splitlines()]  # a torn line fails here
        if f.name == "generations.jsonl":
            keys = [(r["model"], r["key"]) for r in rows]
        elif f.name == "verdicts.jsonl":
            keys = [(r["task"], r["model"], r["key"]) for r in rows]
        else:
            continue
        assert len(keys) == len(set(keys)), f"{f.name}: a record stored twice"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    tmp = tmp_path_factory.mktemp("kill")
    with FakeOpenAI(responder=_judge) as server, pytest.MonkeyPatch.context() as mp:
        spec = _spec(tmp, server.url)
        # The uninterrupted run, in this process first (imports everything the children then inherit).
        from typer.testing import CliRunner

        from evalharness.cli import app
        mp.setenv("EVALHARNESS_CACHE", str(tmp / "cache"))
        r = CliRunner().invoke(app, ["run", str(spec), "--json", "--results-dir", str(tmp / "full")])
        assert r.exit_code == 0, r.output
        want = json.loads(r.stdout)["scores"]
        runs = list((tmp / "full").glob("kill-*"))
        assert len(runs) == 1
        total_gens = _lines(runs[0] / "generations.jsonl")
        yield tmp, spec, server, want, total_gens


@pytest.mark.parametrize("phase,seed", [("generation", 0), ("generation", 1), ("judging", 2), ("judging", 3)])
def test_sigkill_then_resume_gives_the_uninterrupted_scores(setup, phase, seed):
    tmp, spec, server, want, total_gens = setup
    rng = random.Random(seed)
    results, out = tmp / f"r{seed}", tmp / f"out{seed}.json"
    before = server.requests
    p = _start(spec, results, out)
    deadline = time.monotonic() + 60
    if phase == "generation":
        k = rng.randint(1, total_gens - 200)  # chunks of 64 appended: at least 176 samples left to generate
        while _lines(next(iter(results.glob("kill-*/generations.jsonl")), results / "none")) < k:
            assert p.is_alive() and time.monotonic() < deadline
            time.sleep(0.0005)
    else:
        k = rng.randint(1, 12)
        while server.requests - before < k:
            assert p.is_alive() and time.monotonic() < deadline
            time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.05))
    os.kill(p.pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    (run,) = results.glob("kill-*")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] != "complete"  # the kill landed before the end
    if phase == "generation":
        assert server.requests == before and _lines(run / "generations.jsonl") < total_gens
    else:
        assert _lines(run / "generations.jsonl") == total_gens

    done = forkcli.finish(_start(spec, results, out), out)
    assert done.code == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["scores"] == want
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    _check_records(run)
