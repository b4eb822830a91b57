"""Issue 22, point 4: the OpenAI Batch API as a judge transport (``judge: {batch: true}``), over real HTTP against
the fake server's /v1/files and /v1/batches: the same scores as the per-request endpoint, at the batch rate; a run
SIGKILLed between upload and download polls the same batch on resume (one batch, paid once); failed lines are
sent again, and what keeps failing is a failed verdict, never a score."""

from __future__ import annotations

import json
import time
from pathlib import Path

import forkcli
import pytest
from test_budget import TASKS, cli, cli_env, hand_cost, judge_reply, scores_of, spec_file, unbudgeted

from evalharness.backends.batch import batch_lines
from evalharness.backends.client import ChatRequest, ClientConfig, JudgeClient
from evalharness.pipeline.runner import judging_counts, run_spec
from evalharness.store import RunStore, run_state
from evalharness.testing.fake_openai import FakeOpenAI, Fault

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
MT = (
    f"  mt_bench:\n    questions: {DEMO}/mt_bench/questions.jsonl\n"
    f"    judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl\n"
    f"    reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl\n"
)
BATCH = ", batch: true, batch_poll_s: 0.05"
TURN2 = json.loads((DEMO / "mt_bench/questions.jsonl").read_text().splitlines()[0])["turns"][1]


def batch_run(tmp_path: Path, server: FakeOpenAI, extra: str = "", tasks: str = MT) -> Path:
    tmp_path.mkdir(exist_ok=True)
    spec = spec_file(tmp_path, server.url, BATCH + extra, name="batch.yaml", tasks=tasks)
    return run_spec(spec, results_dir=tmp_path / "results", progress=False).path


def test_batch_run_gives_the_per_request_scores_at_the_batch_rate(tmp_path: Path) -> None:
    with FakeOpenAI(responder=judge_reply) as server:
        free = unbudgeted(tmp_path, server.url)
        assert server.requests == 20 and not server.batches
        bodies = list(server.received)
        server.reset()
        path = batch_run(tmp_path, server, tasks=TASKS)
        assert server.requests == 0  # no chat request: every judgment went through a batch
        assert len(server.batches) == 2 and server.batch_lines == 20  # one per chunk (a task's 8 and 12)
        uploads = [f for f in server.files.values() if f["purpose"] == "batch"]
        assert len(uploads) == 2
        lines = [json.loads(x) for f in uploads for x in f["content"].decode().splitlines()]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"} and {x["method"] for x in lines} == {"POST"}
    assert sorted(json.dumps(x["body"], sort_keys=True) for x in lines) == sorted(
        json.dumps(b, sort_keys=True) for b in bodies
    )  # each line's body is the request the per-request path sends
    assert scores_of(path) == scores_of(free)
    usage = json.loads((path / "manifest.json").read_text())["judge_usage"]
    assert usage["cost_usd"] == pytest.approx(hand_cost(bodies, rate=0.5))  # half the standard rate
    assert usage["requests"] == 20 and usage["failures"] == 0
    states = [json.loads(p.read_text()) for p in (path / "batches").glob("*.json")]
    assert (
        len(states) == 2 and {s["step"] for s in states} == {"done"} and {s["status"] for s in states} == {"completed"}
    )


def test_a_run_killed_while_its_batch_runs_polls_the_same_batch(tmp_path: Path) -> None:
    with FakeOpenAI(responder=judge_reply) as server:
        free = unbudgeted(tmp_path, server.url, tasks=MT)
        server.reset()
        server.batch_delay_s = 600.0  # in progress until the run is killed
        spec = spec_file(tmp_path, server.url, BATCH, name="batch.yaml", tasks=MT)
        child = forkcli.start(["run", str(spec)], tmp_path, cli_env(tmp_path), tmp_path / ".out")
        deadline, submitted = time.monotonic() + 60, []
        while not submitted and time.monotonic() < deadline and child.is_alive():
            states = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/batches/*.json")]
            submitted = [s for s in states if s["step"] == "submitted"]
            time.sleep(0.02)
        assert submitted and child.is_alive(), (tmp_path / ".out.err").read_text()
        time.sleep(0.2)  # a few polls
        child.kill()  # SIGKILL: no handler runs
        child.join()
        assert child.exitcode == -9
        [run] = (tmp_path / "results").glob("budgeted-*")
        assert run_state(run) == "stale" and not RunStore(run).verdicts()
        assert len(server.batches) == 1 and server.batch_lines == 0
        server.batch_delay_s = 0.0
        done = cli("run", str(spec), cwd=tmp_path)
        assert done.code == 0, done.stderr
    assert len(server.batches) == 1 and server.batch_lines == 8 and server.requests == 0  # polled, not sent again
    assert len([f for f in server.files.values() if f["purpose"] == "batch"]) == 1
    assert scores_of(run) == scores_of(free)
    assert json.loads((run / "manifest.json").read_text())["judge_usage"]["requests"] == 8


def test_failed_batch_lines_are_sent_again_then_counted_as_failed_verdicts(tmp_path: Path) -> None:
    with FakeOpenAI(responder=judge_reply) as server:
        server.enqueue(Fault.http(500), contains=TURN2)  # once: the retry batch answers it
        path = batch_run(tmp_path, server, ", max_retries: 1")
        assert len(server.batches) == 2 and server.batch_lines == 9
        [count] = judging_counts(path)
        assert (count.scored, count.failed, count.unparsed) == (8, 0, 0)
        server.reset()
        server.on(TURN2, Fault.http(503))  # always: one retry, then a failed verdict
        path = batch_run(tmp_path / "b", server, ", max_retries: 1")
        assert len(server.batches) == 2 and server.batch_lines == 9
        [count] = judging_counts(path)
        assert (count.scored, count.failed, count.unparsed) == (7, 1, 0)
        [failed] = [v for v in RunStore(path).verdicts() if v.status == "error"]
        assert failed.value is None and "Error code: 503" in (failed.error or "")
        [score] = [s for s in RunStore(path).scores() if s.metric == "score"]
        assert (score.n, score.n_skipped) == (7, 1)  # counted, not scored
        server.reset()
        server.on(TURN2, Fault.http(400))  # our fault: sending it again would fail again
        path = batch_run(tmp_path / "c", server, ", max_retries: 3")
        assert len(server.batches) == 1 and server.batch_lines == 8
        assert [(c.scored, c.failed) for c in judging_counts(path)] == [(7, 1)]


def test_batch_input_lines_and_a_client_resuming_an_uploaded_file(tmp_path: Path) -> None:
    requests = {"k1": ChatRequest(id="a", messages=[{"role": "user", "content": "hi"}], model="m", max_tokens=5)}
    [line] = [json.loads(x) for x in batch_lines(requests).decode().splitlines()]
    assert line == {
        "custom_id": "k1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "top_p": 1.0,
                 "max_tokens": 5},
    }  # fmt: skip
    with FakeOpenAI(default_text="Rating: [[5]]") as server:
        config = ClientConfig(base_url=server.url, model="gpt-4o", cache=False, batch=True, batch_poll_s=0.01,
                              batch_dir=tmp_path)  # fmt: skip
        ask = [ChatRequest(id=f"q{i}", messages=[{"role": "user", "content": f"q {i}"}]) for i in range(3)]
        first = JudgeClient(config).complete(ask)
        assert [r.text for r in first] == ["Rating: [[5]]"] * 3 and len(server.batches) == 1
        # A state left after its upload (a kill before the batch was created) is created from the same file.
        state = json.loads(next(tmp_path.glob("*.json")).read_text())
        state.update(name="left", step="uploaded", batch_id=None, created=0.0)
        (tmp_path / "left.json").write_text(json.dumps(state))
        again = JudgeClient(config).complete(ask)
        assert [r.text for r in again] == ["Rating: [[5]]"] * 3
        assert len(server.batches) == 2 and len(server.files) == 3  # one upload, two outputs: no second upload
