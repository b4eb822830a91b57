"""Every task runs on every backend that claims to serve it, or is refused up front (issue 24, point 9).

Each (task, backend) pair goes through ``evalharness run SPEC``'s library entry with small local data: the
fake backend, and hf with a tiny random model; chat-judged tasks are judged over real HTTP by the fake
OpenAI server. The result is scores, or an ``InputError`` raised before the run folder exists: never a
traceback from inside the loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalharness.core.errors import InputError
from evalharness.core.prompts import write_prompts
from evalharness.pipeline.runner import run_spec
from evalharness.testing.fake_openai import FakeOpenAI, benchmark_judge

DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"
TASKS = {
    "sentiment": "{{prompts: {p}}}",
    "toxicity": "{{prompts: {p}}}",
    "kl": "{{prompts: {p}}}",
    "reward": "{{prompts: {p}, judge: sentiment}}",
    "preference_accuracy": "{{pairs: {pairs}, beta: 0.1}}",
    "alpaca_eval": f"{{{{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: {DEMO}/alpaca_eval/baseline.json, "
                   f"lc_support_dir: {DEMO}/alpaca_eval, limit: 2}}}}",
    "arena_hard": f"{{{{data_dir: {DEMO}, questions: {DEMO}/arena_hard/questions.jsonl, baseline: demo-baseline, "
                  "bootstrap_rounds: 5, limit: 2}}",
    "mt_bench": f"{{{{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl, "
                f"reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl, limit: 2}}}}",
}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    p = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(3)], tmp_path / "p.jsonl")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"Say {i}", "chosen": "good fun movie",
                                         "rejected": "the plot was dull"}) + "\n" for i in range(3)))
    return {"p": p, "pairs": pairs}


@pytest.mark.parametrize("backend", ["fake", "hf"])
@pytest.mark.parametrize("task", list(TASKS))
def test_each_task_on_each_backend_scores_or_refuses_up_front(tmp_path: Path, data: dict[str, Path], task: str,
                                                              backend: str, request: pytest.FixtureRequest) -> None:
    model = str(request.getfixturevalue("tiny_model")) if backend == "hf" else "policy-x"
    results = tmp_path / "results"
    with FakeOpenAI(responder=benchmark_judge) as server:
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"""\
name: matrix
model: {model}
reference: {model}
backend: {backend}
generation: {{max_new_tokens: 8}}
judge: {{type: openai, model: fake-model, base_url: "{server.url}", max_retries: 0, cache: false}}
tasks:
  {task}: {TASKS[task].format(**data)}
""")
        try:
            res = run_spec(spec, results_dir=results, progress=False)
        except InputError:
            # A refusal is allowed only where the backend lacks what the task needs, and only before any folder.
            from evalharness.backends import capabilities
            assert not results.exists()
            assert task in ("kl", "preference_accuracy") and not capabilities(backend).scores_responses
            return
    scores = [s for s in res.scores if s.task == task and s.value is not None]
    assert scores, f"{task} on {backend}: no score"
