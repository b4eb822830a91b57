"""Resume where it can really differ: an hf evaluation of a tiny model (length-sorted batches, chunking)
killed by a real SIGKILL after one chunk, then resumed; stale vs running runs; Ctrl-C records 'interrupted';
response caches readable by the user only."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from procs import ctrl_c_default

from evalharness.core.prompts import write_prompts
from evalharness.store import indexed_runs, read_jsonl, run_state

REPO = Path(__file__).resolve().parents[1]
WORDS = "the movie was great terrible fine good bad plot acting a an and it is not very really".split()

# The child: run_eval with a small chunk; PAUSE_S after each append gives the parent a moment to kill
# it between chunks (a kill inside a chunk is what the reliability suite's random kills cover).
CHILD = """
import sys, time
from evalharness.pipeline.evaluate import EvalConfig, run_eval
from evalharness.store import RunStore
pause = float(sys.argv[5])
real = RunStore.add_generations
def slow(self, records):
    real(self, records)
    time.sleep(pause)
RunStore.add_generations = slow
cfg = EvalConfig(models=[sys.argv[1]], reference=sys.argv[2], prompts=sys.argv[3], judges=["sentiment", "kl"],
                 backend="hf", max_new_tokens=8, n=2, chunk_size=3, run_id="r", results_dir=sys.argv[4],
                 progress=False)
res = run_eval(cfg)
print("SCORES", [(s.model, s.task, s.metric, s.value) for s in res.scores])
"""


def _prompts(tmp_path: Path) -> Path:
    # Prompts of varied lengths, so length-sorted batching reorders them differently per chunk.
    rows = [{"id": f"q{i}", "prompt": " ".join(WORDS[j % len(WORDS)] for j in range(i, i + 1 + (i * 7) % 11))}
            for i in range(10)]
    return write_prompts(rows, tmp_path / "prompts.jsonl")


def _child(tmp_path: Path, model: Path, ref: Path, results: Path, pause: float) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(model), str(ref), str(_prompts(tmp_path)),
                             str(results), str(pause)], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_default)


def _wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {n} lines")


def _content(run: Path) -> tuple[dict, list]:
    gens = {(g["model"], g["item_id"], g["sample_index"], g["params"]["temperature"]): (g["text"], g["token_ids"])
            for g in read_jsonl(run / "generations.jsonl")}
    scores = [(s["model"], s["task"], s["metric"], s["value"], s["n"]) for s in read_jsonl(run / "scores.jsonl")]
    return gens, sorted(scores)


def test_hf_eval_killed_after_one_chunk_resumes_to_the_same_records(tmp_path, tiny_model, tiny_ref_model):
    whole = _child(tmp_path, tiny_model, tiny_ref_model, tmp_path / "whole", 0.0)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()

    killed = _child(tmp_path, tiny_model, tiny_ref_model, tmp_path / "killed", 3.0)
    run = tmp_path / "killed" / "r"
    _wait_for_lines(run / "generations.jsonl", 3 * 2, killed)  # one chunk: 3 prompts x n=2
    assert run_state(run) == "running"  # alive and holding the run's flock
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "running" and run_state(run) == "stale"  # SIGKILL left no chance to say so
    assert [r["status"] for r in indexed_runs(tmp_path / "killed")] == ["stale"]
    show = subprocess.run([sys.executable, "-m", "evalharness.cli", "show", str(run)], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert show.returncode == 2 and "stale" in show.stderr and "Traceback" not in show.stderr
    partial = len(read_jsonl(run / "generations.jsonl"))
    assert 0 < partial < 2 * 10 * 2  # killed part way through (two streams: T=1 for sentiment and KL)

    resumed = _child(tmp_path, tiny_model, tiny_ref_model, tmp_path / "killed", 0.0)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert json.loads((run / "manifest.json").read_text())["resumed"] == 1
    gens_whole, scores_whole = _content(tmp_path / "whole" / "r")
    gens_resumed, scores_resumed = _content(run)
    rows = read_jsonl(run / "generations.jsonl")
    assert len(rows) == len(gens_resumed) == len(gens_whole)  # nothing duplicated or lost
    assert gens_resumed == gens_whole and scores_resumed == scores_whole
    assert run_state(run) == "complete" and [r["status"] for r in indexed_runs(tmp_path / "killed")] == ["complete"]


def test_ctrl_c_records_interrupted(tmp_path, tiny_model, tiny_ref_model):
    proc = _child(tmp_path, tiny_model, tiny_ref_model, tmp_path / "res", 3.0)
    run = tmp_path / "res" / "r"
    _wait_for_lines(run / "generations.jsonl", 6, proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["error"].startswith("KeyboardInterrupt")
    assert run_state(run) == "interrupted"


def test_response_cache_is_private(tmp_path):
    from evalharness.backends.client import ClientConfig, JudgeClient
    from evalharness.testing import FakeOpenAI
    from evalharness.backends.http import ChatRequest
    with FakeOpenAI(default_text="[[A]]") as server:
        client = JudgeClient(ClientConfig(base_url=server.url, model="j", cache_dir=tmp_path / "cache"))
        assert client.complete([ChatRequest(id="1", messages=[{"role": "user", "content": "hi"}])])[0].status == "ok"
        client.close()
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    files = list((tmp_path / "cache").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [
        (f.name, oct(f.stat().st_mode)) for f in files]


@pytest.mark.parametrize("run_id", ["../escape", "/abs/path", "a/b", ".."])
def test_run_ids_cannot_leave_the_results_root(tmp_path, run_id):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    write_prompts([{"id": "q", "prompt": "hi"}], tmp_path / "p.jsonl")
    res = subprocess.run([sys.executable, "-m", "evalharness.cli", "eval", "--model", "a", "--backend", "fake",
                          "--judges", "sentiment", "--prompts", str(tmp_path / "p.jsonl"), "--run-id", run_id,
                          "--results-dir", str(tmp_path / "res" / "inner")], cwd=tmp_path, env=env, text=True,
                         capture_output=True)
    assert res.returncode == 2 and "error:" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "res" / "escape").exists() and not Path("/abs/path").exists()
    assert not list((tmp_path / "res").rglob("manifest.json"))
