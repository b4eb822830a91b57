"""Issue 22, point 2: a judge budget that holds. ``judge: {max_cost, max_requests}`` per run, across resumes: the
run stops cleanly (exit 4, manifest ``stopped``, every judgment so far kept, no scores), and a later run with a
bigger budget resumes to the same scores as an unbudgeted run, paying nothing twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import forkcli
import pytest

from evalharness.pipeline.budget import BUDGET_FILE, BudgetStop
from evalharness.pipeline.runner import run_spec
from evalharness.store import RunStore
from evalharness.testing.fake_openai import FakeOpenAI, request_text

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
TASKS = (
    f"  mt_bench:\n    questions: {DEMO}/mt_bench/questions.jsonl\n"
    f"    judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl\n"
    f"    reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl\n"
    f"  arena_hard:\n    data_dir: {DEMO}\n    questions: {DEMO}/arena_hard/questions.jsonl\n"
    "    baseline: demo-baseline\n    bootstrap_rounds: 10\n"
)
# USD per 1M tokens of judge-x: $0.001 a prompt word of the fake server, $0.00001 a reply word (so that the worst
# case of a first judgment, max_tokens 2048 completion tokens, fits in a budget that stops the run half way)
PRICE = (1000.0, 10.0)


def judge_reply(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    if "Assistant A" in text:
        return "A and B are close. My final verdict is [[B>A]]."
    return "Solid answer. Rating: [[7]]"


def spec_file(tmp_path: Path, url: str, judge: str = "", *, name: str = "spec.yaml", tasks: str = TASKS) -> Path:
    """A run of the fake policy judged by ``judge-x`` at the fake server, with extra judge fields ``judge``."""
    spec = tmp_path / name
    spec.write_text(
        f"name: budgeted\nmodel: policy-x\nbackend: fake\ngeneration: {{max_new_tokens: 16}}\n"
        f'judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 0, concurrency: 4, cache: false, '
        f"prices: {{judge-x: [{PRICE[0]}, {PRICE[1]}]}}{judge}}}\ntasks:\n{tasks}"
    )
    return spec


def cli_env(cwd: Path) -> dict[str, str]:
    return {"EVALHARNESS_RESULTS": str(cwd / "results"), "EVALHARNESS_CACHE": str(cwd / "cache")}


def cli(*args: str, cwd: Path) -> forkcli.Done:
    """``evalharness ARGS`` in a real (forked) process: its own exit code and stderr, started in milliseconds."""
    return forkcli.run(list(args), cwd, cli_env(cwd))


def scores_of(path: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {(s.task, s.metric): (s.value, s.ci_low, s.ci_high, s.n, s.n_skipped) for s in RunStore(path).scores()}


def hand_cost(bodies: list[dict[str, Any]], rate: float = 1.0) -> float:
    """What the fake server's reported usage costs: prompt words and reply words, times judge-x's price."""
    prompt = sum(len(request_text(b).split()) for b in bodies)
    completion = sum(len(judge_reply(b).split()) for b in bodies)
    return rate * (prompt * PRICE[0] + completion * PRICE[1]) / 1e6


def unbudgeted(tmp_path: Path, url: str, tasks: str = TASKS) -> Path:
    spec = spec_file(tmp_path, url, name="free.yaml", tasks=tasks)
    return run_spec(spec, results_dir=tmp_path / "free", progress=False).path


def test_max_cost_stops_cleanly_and_a_bigger_budget_resumes_to_the_unbudgeted_scores(tmp_path: Path) -> None:
    with FakeOpenAI(responder=judge_reply) as server:
        free = unbudgeted(tmp_path, server.url)
        total = hand_cost(server.received)
        server.reset()
        budget = round(total * 0.4, 4)
        small = spec_file(tmp_path, server.url, f", max_cost: {budget}")
        stopped = cli("run", str(small), cwd=tmp_path)
        assert stopped.code == 4, stopped.stderr
        assert "Traceback" not in stopped.stderr
        [run] = (tmp_path / "results").glob("budgeted-*")
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["status"] == "stopped" and "budget: spent $" in manifest["error"]
        assert f"of max_cost ${budget:g}" in stopped.stderr and "run the same command again to resume" in stopped.stderr
        assert not (run / "summary.json").exists() and not (run / "scores.jsonl").exists()  # no partial score
        first = len(server.received)
        assert 0 < len(RunStore(run).verdicts()) == first < 20  # every judgment paid for is kept
        spent = json.loads((run / BUDGET_FILE).read_text())
        assert spent["cost_usd"] == pytest.approx(hand_cost(server.received))  # (c): the endpoint's usage x price
        assert spent["requests"] == spent["judgments"] == first
        assert hand_cost(server.received) <= budget
        results = tmp_path / "results"
        with pytest.raises(BudgetStop):  # the same budget: stops at once, asks nothing
            run_spec(small, results_dir=results, progress=False)
        assert len(server.received) == first
        bigger = spec_file(tmp_path, server.url, f", max_cost: {total * 2}")
        assert run_spec(bigger, results_dir=results, progress=False).path == run
    assert len(server.received) == 20  # nothing judged twice (no response cache: the run folder resumed)
    assert json.loads((run / "manifest.json").read_text())["status"] == "complete"
    # The budget is the run's, across its invocations: all that was spent, counted once.
    assert json.loads((run / BUDGET_FILE).read_text())["cost_usd"] == pytest.approx(total)
    assert scores_of(run) == scores_of(free)


def test_max_requests_is_cumulative_over_resumes(tmp_path: Path) -> None:
    with FakeOpenAI(responder=judge_reply) as server:
        free = unbudgeted(tmp_path, server.url)
        server.reset()
        results = tmp_path / "results"
        with pytest.raises(BudgetStop, match="sent 5 of max_requests 5 requests"):
            run_spec(spec_file(tmp_path, server.url, ", max_requests: 5"), results_dir=results, progress=False)
        assert len(server.received) == 5
        with pytest.raises(BudgetStop, match="sent 12 of max_requests 12"):
            run_spec(spec_file(tmp_path, server.url, ", max_requests: 12"), results_dir=results, progress=False)
        assert len(server.received) == 12  # 7 more: the 5 sent before count toward the 12
        [run] = results.glob("budgeted-*")
        assert json.loads((run / "manifest.json").read_text())["budget"]["requests"] == 12
        assert len(RunStore(run).verdicts()) == 12
        res = run_spec(spec_file(tmp_path, server.url, ", max_requests: 20"), results_dir=results, progress=False)
    assert res.path == run and len(server.received) == 20
    assert scores_of(run) == scores_of(free)


def test_a_budget_needs_a_priced_judge_and_an_endpoint_judge(tmp_path: Path) -> None:
    from evalharness.core.errors import InputError

    with FakeOpenAI(responder=judge_reply) as server:
        spec = tmp_path / "unpriced.yaml"
        spec.write_text(spec_file(tmp_path, server.url, ", max_cost: 1").read_text().replace("judge-x: [", "other: ["))
        with pytest.raises(InputError, match="judge.max_cost.*'judge-x'"):  # exit 2, before anything is written
            run_spec(spec, results_dir=tmp_path / "r", progress=False)
        assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("budgeted-*"))
        local = tmp_path / "local.yaml"
        local.write_text(
            "name: l\nmodel: p\nbackend: fake\njudge: {type: local, model: smollm2-135m-instruct, batch: true}\n"
            f"tasks:\n{TASKS}"
        )
        with pytest.raises(InputError, match=f"{local}:4.*openai judge"):
            run_spec(local, results_dir=tmp_path / "r", progress=False)
        assert server.received == []


def test_a_damaged_budget_record_is_an_error_naming_it(tmp_path: Path) -> None:
    from evalharness.core.errors import InputError

    with FakeOpenAI(responder=judge_reply) as server:
        spec = spec_file(tmp_path, server.url, ", max_requests: 2")
        with pytest.raises(BudgetStop):
            run_spec(spec, results_dir=tmp_path / "r", progress=False)
        [record] = (tmp_path / "r").glob(f"*/{BUDGET_FILE}")
        for damage in ('{"dollars": 1}', "{not json"):
            record.write_text(damage)
            with pytest.raises(InputError, match=BUDGET_FILE):
                run_spec(spec, results_dir=tmp_path / "r", progress=False)
        assert len(server.received) == 2  # nothing sent on a record it cannot read


def test_the_estimate_is_the_worst_case_then_the_running_average_at_the_batch_rate_for_batches() -> None:
    from evalharness.backends.client import ChatRequest, ClientConfig, JudgeClient
    from evalharness.pipeline.budget import Budget, Spend
    from evalharness.pipeline.spec import JudgeSpec
    from evalharness.tasks.base import Pending

    request = ChatRequest(id="q", messages=[{"role": "user", "content": "x" * 400}], max_tokens=100)
    pending = Pending("k", "q", (request, {"game": 1}))  # a task's facts beside the request
    for batch, rate in ((False, 1.0), (True, 0.5)):
        spec = JudgeSpec(model="judge-x", base_url="http://127.0.0.1:9/v1", prices={"judge-x": PRICE}, max_cost=1.0,
                         batch=batch)  # fmt: skip
        budget = Budget.of(
            spec, JudgeClient(ClientConfig(base_url="http://127.0.0.1:9/v1", model="judge-x", cache=False))
        )
        assert budget is not None
        # Nothing paid yet: 400 characters / 4 = 100 prompt tokens, and max_tokens 100 completion tokens.
        assert budget.estimate(pending, Spend()) == (pytest.approx(rate * (100 * PRICE[0] + 100 * PRICE[1]) / 1e6), 1.0)
        # Paid: 2 judgments of 1000 characters in 250 prompt tokens, 30 completion tokens, 3 requests.
        paid = Spend(cost_usd=0.1, requests=3, judgments=2, prompt_chars=1000, prompt_tokens=250, completion_tokens=30)
        cost, requests = budget.estimate(pending, paid)
        assert cost == pytest.approx(rate * (400 * 250 / 1000 * PRICE[0] + 15 * PRICE[1]) / 1e6) and requests == 1.5
    assert budget.estimate(Pending("k", "q", "a classifier's sample"), paid) == (0.0, 0.0)
