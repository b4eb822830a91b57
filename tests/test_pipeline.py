"""The one run loop: three models x {sentiment, kl, alpaca_eval, arena_hard, mt_bench} in one run folder,
over real HTTP to a judge; resume after a kill without re-judging; failed judgments retried in every task;
runs written before schema 2 still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from evalharness.backends import fake
from evalharness.backends.client import JudgeClient
from evalharness.pipeline.evaluate import EvalConfig, run_eval
from evalharness.core.prompts import write_prompts
from evalharness.core.records import Score
from evalharness.pipeline.runner import run_spec
from evalharness.store import RunStore, comparable
from evalharness.testing import FakeOpenAI, Fault
from evalharness.testing.fake_openai import benchmark_judge, request_text

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
MODELS = ("a", "b", "c")
TASKS = ("sentiment", "kl", "alpaca_eval", "arena_hard", "mt_bench")
# Persistent faults, one item per LLM-judged task: these judgments fail for every model on the first run.
FAILING = ("Rewrite your story so that it ends happily.", "Explain the difference between weather and climate.")


class Killed(BaseException):
    """Stands in for SIGKILL (pytest reserves KeyboardInterrupt for itself)."""


responder = benchmark_judge  # AlpacaEval m/M log-probs, Arena-Hard [[B>A]], MT-Bench [[6]]


def spec_file(tmp_path: Path, url: str) -> Path:
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(5)],
                            tmp_path / "prompts.jsonl")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: three
models: [a, b, {{name: c, ref: c}}]
reference: a
backend: fake
generation: {{max_new_tokens: 32, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 0, concurrency: 4, cache: false}}
tasks:
  sentiment: {{prompts: {prompts}, generation: {{temperature: 1.0}}}}
  kl: {{prompts: {prompts}}}
  alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: {DEMO}/alpaca_eval/baseline.json,
                 lc_support_dir: {DEMO}/alpaca_eval}}
  arena_hard: {{data_dir: {DEMO}/arena_hard, questions: {DEMO}/arena_hard/questions.jsonl, baseline: demo-baseline,
               bootstrap_rounds: 10}}
  mt_bench: {{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl,
             reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl}}
""")
    return spec


def by_key(scores: list[Score]) -> dict[tuple[str, str, str], Score]:
    return {(s.model, s.task, s.metric): s for s in scores}


def test_three_models_every_task_one_run_retry_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    generated: list[int] = []
    real = fake.FakeBackend.generate
    monkeypatch.setattr(fake.FakeBackend, "generate", lambda self, reqs: generated.append(len(reqs)) or real(self, reqs))
    with FakeOpenAI(responder) as server:
        for text in FAILING:
            server.on(text, Fault.http(500))
        res = run_spec(spec_file(tmp_path, server.url), results_dir=results, progress=False)
        first = server.requests
    assert [p.parent.name for p in results.glob("*/manifest.json")] == [res.path.name]  # one run folder
    s = by_key(res.scores)
    assert {(m, t) for m, t, _ in s} == {(m, t) for m in MODELS for t in TASKS}
    store = RunStore(res.path)
    failed = [v for v in store.verdicts() if v.status == "error"]
    # MT-Bench: question 1's second turn; Arena-Hard: both games of demo-02; for each of the three models.
    assert len(failed) == 3 * (1 + 2) and {v.task for v in failed} == {"mt_bench", "arena_hard"}
    for m in MODELS:
        assert s[(m, "mt_bench", "score")].n_skipped == 1 and s[(m, "mt_bench", "score")].extra["n_error"] == 1
        assert s[(m, "arena_hard", "score")].n_skipped == 2
        assert s[(m, "alpaca_eval", "win_rate")].n == 8 and s[(m, "alpaca_eval", "win_rate")].n_skipped == 0
        assert s[(m, "mt_bench", "score")].value == 6.0 and s[(m, "arena_hard", "score")].value == pytest.approx(50.0)
        assert s[(m, "kl", "kl")].baseline == "a" and s[(m, "sentiment", "sentiment")].n == 5
    assert s[("a", "kl", "kl")].value == 0.0 and s[("b", "kl", "kl")].value != 0.0
    # Official-format files for every model, read back by the official metric code.
    from evalharness.tasks.mt_bench import metric as mt
    official = mt.metrics_from_file(res.path / "mt_bench" / "model_judgment" / "judge-x_single.jsonl")
    assert set(official["models"]) == set(MODELS)
    assert all((res.path / "alpaca_eval" / m / "annotations.json").is_file() for m in MODELS)

    # Rerun with a healthy judge: nothing regenerated, only the failed judgments asked again (no cache).
    generated.clear()
    with FakeOpenAI(responder) as server:
        again = run_spec(spec_file(tmp_path, server.url), results_dir=results, progress=False)
        assert server.requests == len(failed)
    assert again.path == res.path and generated == []
    s2 = by_key(again.scores)
    assert all(s2[(m, "mt_bench", "score")].n_skipped == 0 and s2[(m, "arena_hard", "score")].n_skipped == 0
               for m in MODELS)
    assert json.loads((res.path / "manifest.json").read_text())["judge_usage"]["cache_hits"] == 0
    assert first > 0


def test_killed_run_resumes_without_rejudging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results"
    calls: list[int] = []
    real = JudgeClient.complete

    def dying(self: JudgeClient, requests: list[Any], progress: bool = False) -> Any:
        calls.append(len(requests))
        if len(calls) == 4:
            raise Killed  # the process dies while judging: three chunks of verdicts are on disk
        return real(self, requests, progress)

    monkeypatch.setattr(JudgeClient, "complete", dying)
    with FakeOpenAI(responder) as server:
        with pytest.raises(Killed):
            run_spec(spec_file(tmp_path, server.url), results_dir=results, progress=False)
        before = server.requests
        [run_dir] = [p.parent for p in results.glob("*/manifest.json")]
        assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
        stored = len(RunStore(run_dir).verdicts())
        assert before == sum(calls[:3]) and stored > 0
        calls.append(-1)  # the next call is not the fourth: no more deaths
        res = run_spec(spec_file(tmp_path, server.url), results_dir=results, progress=False)
        total = server.requests
    # Every LLM judgment was asked exactly once over both processes.
    n_llm = sum(1 for v in RunStore(res.path).verdicts() if v.task in ("alpaca_eval", "arena_hard", "mt_bench"))
    assert total == n_llm and json.loads((res.path / "manifest.json").read_text())["status"] == "complete"


def test_comparable_says_why_not() -> None:
    a = Score("alpaca_eval", "win_rate", "m", 50.0, 10, task_version="2", judge_id="gpt-4", judge_version="v1",
              baseline="base", decoding={"temperature": 0.0})
    ok, why = comparable(a, Score.from_dict({**a.to_dict(), "model": "other", "value": 10.0}))
    assert ok and why == ""
    other = Score.from_dict({**a.to_dict(), "task_version": "2/first8", "decoding": {"temperature": 0.7}})
    ok, why = comparable(a, other)
    assert not ok and "task_version: '2' vs '2/first8'" in why and "decoding" in why and "judge" not in why


def test_runs_written_before_schema_2_still_read(tmp_path: Path) -> None:
    """Two run folders written by the code before this pipeline (an `eval` and a `run` of three benchmarks):
    `show` reads them, their verdicts upgrade to the one shape, and the same eval today gives the same scores."""
    legacy = tmp_path / "results"
    shutil.copytree(REPO / "tests/data/legacy_runs", legacy)
    old = RunStore(legacy / "legacy-eval")
    old_scores = {(s.model, s.metric): s for s in old.scores()}
    assert old_scores[("a", "kl")].baseline == "a"  # read from reference_model
    v = old.verdicts("sentiment", "a")
    assert len(v) == 12 and {x.task for x in old.verdicts()} == {"sentiment", "toxicity", "kl"}
    bench = RunStore(next(legacy.glob("legacy-bench-*")))
    assert {x.model for x in bench.verdicts()} == {"policy-x"}  # AlpacaEval rows carried no model
    mt_rows = bench.verdicts("mt_bench")
    assert len(mt_rows) == 8 and all(":" in x.item_id for x in mt_rows)

    new = run_eval(EvalConfig(models=["a", "b"], reference="a", prompts=str(legacy / "prompts.jsonl"), backend="fake",
                              judges=["sentiment", "toxicity", "kl"], n=2, results_dir=str(tmp_path / "new"),
                              progress=False))
    new_scores = {(s.model, s.metric): s for s in new.scores}
    for key, s in old_scores.items():
        assert new_scores[key].value == pytest.approx(s.value, rel=1e-12, abs=1e-12), key
        assert (new_scores[key].n, new_scores[key].n_skipped) == (s.n, s.n_skipped)


def test_head_to_head_against_another_models_stored_answers(tmp_path: Path) -> None:
    """AlpacaEval and Arena-Hard judged against model a's answers from an earlier run, not a third model's."""
    results = tmp_path / "results"
    with FakeOpenAI(responder) as server:
        first = run_spec(spec_file(tmp_path, server.url), results_dir=results, progress=False)
        a_outputs = json.loads((first.path / "alpaca_eval" / "a" / "model_outputs.json").read_text())
        spec = tmp_path / "h2h.yaml"
        spec.write_text(f"""\
name: h2h
models: [b]
backend: fake
generation: {{max_new_tokens: 32}}
judge: {{type: openai, model: judge-x, base_url: "{server.url}", cache: false}}
tasks:
  alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: "run:{first.path}/a"}}
  arena_hard: {{data_dir: {DEMO}/arena_hard, questions: {DEMO}/arena_hard/questions.jsonl,
               baseline: "run:{first.path}/a", bootstrap_rounds: 10}}
""")
        before = len(server.received)
        res = run_spec(spec, results_dir=results, progress=False)
        bodies = server.received[before:]
    s = by_key(res.scores)
    assert s[("b", "alpaca_eval", "win_rate")].baseline == "a" and s[("b", "arena_hard", "score")].baseline == "a"
    shown = [request_text(b) for b in bodies]
    assert all(any(o["output"] in t for t in shown) for o in a_outputs)  # a's own answers were the baseline
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace(f"run:{first.path}/a", f"run:{first.path}/nobody"))
    with pytest.raises(Exception, match="no answers of 'nobody'"):
        run_spec(bad, results_dir=results, progress=False)
