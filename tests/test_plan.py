"""`evalharness plan` and `run --dry-run`: AlpacaEval, Arena-Hard and MT-Bench over three models on the fake backend,
judged over real HTTP. The plan's request counts are exact (Arena-Hard's two games, MT-Bench's two turns), a
finished run leaves nothing to plan, a partly done or cached run counts only the rest, the actual prompt tokens
(counted by a real BPE tokenizer on the server) are within the stated approximation, cost is tokens x price, the
MDE is the normal formula, and a dry run sends and writes nothing."""

from __future__ import annotations

import collections
import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import forkcli
import numpy as np
import pytest
from scipy import stats as st

from evalharness.core.records import Verdict
from evalharness.pipeline import plan as planning
from evalharness.pipeline.runner import plan_from_spec, plan_run, run_spec
from evalharness.testing import FakeOpenAI, Fault
from evalharness.testing.fake_openai import Reply, benchmark_judge

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
MODELS = ("a", "b", "c")
GPT4O_MINI = (0.15, 0.6)  # USD per 1M prompt / completion tokens, the shipped table's gpt-4o-mini (dated 2026-06-21)
FAILING = ("Rewrite your story so that it ends happily.", "Explain the difference between weather and climate.")


@pytest.fixture(scope="module")
def bpe() -> Any:
    """SmolLM2's byte-level BPE tokenizer (49k vocabulary): the stand-in for the judge's own tokenizer."""
    from transformers import AutoTokenizer

    from evalharness.core.models import resolve

    return AutoTokenizer.from_pretrained(str(resolve("smollm2-135m-instruct").path))


@pytest.fixture
def server(bpe: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The benchmark judge, reporting usage as OpenAI bills it: content tokens (here by a real BPE tokenizer),
    3 per message and 3 priming the reply (OpenAI's cookbook), completion tokens of the reply."""
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))  # the response cache of this test only

    def count(text: str) -> int:
        return len(bpe(text, add_special_tokens=False)["input_ids"])

    def respond(body: dict[str, Any]) -> Any:
        reply = benchmark_judge(body)
        reply = Reply(reply) if isinstance(reply, str) else reply
        prompt = 3 + sum(3 + count(str(m.get("content") or "")) for m in body["messages"])
        reply.usage = {"prompt_tokens": prompt, "completion_tokens": count(str(reply.text))}
        return reply

    with FakeOpenAI(respond, models=("gpt-4o-mini",)) as s:
        yield s


def spec_file(tmp_path: Path, url: str, cache: bool = False, extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: three
models: [a, b, c]
backend: fake
generation: {{max_new_tokens: 32}}
judge: {{type: openai, model: gpt-4o-mini, base_url: "{url}", max_retries: 0, concurrency: 4, cache: {str(cache).lower()}{extra}}}
tasks:
  alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: {DEMO}/alpaca_eval/baseline.json,
                 lc_support_dir: {DEMO}/alpaca_eval}}
  arena_hard: {{data_dir: {DEMO}, questions: {DEMO}/arena_hard/questions.jsonl, baseline: demo-baseline,
               bootstrap_rounds: 10}}
  mt_bench: {{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl,
             reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl}}
""")
    return spec


def expected_counts() -> dict[str, tuple[int, int]]:
    """Per task, (generations, judge requests) for one model, counted from the data files themselves."""
    alpaca = len(json.loads((DEMO / "alpaca_eval" / "eval_set.json").read_text()))
    arena = sum(1 for line in (DEMO / "arena_hard" / "questions.jsonl").read_text().splitlines() if line.strip())
    mt = [json.loads(line) for line in (DEMO / "mt_bench" / "questions.jsonl").read_text().splitlines() if line.strip()]
    turns = sum(len(q["turns"]) for q in mt)
    return {"alpaca_eval": (alpaca, alpaca), "arena_hard": (arena, 2 * arena), "mt_bench": (turns, turns)}


def plan_of(spec: Path, results: Path) -> planning.RunEstimate:
    return plan_run(plan_from_spec(spec, results_dir=results, progress=False))


def by_task(plan: planning.RunEstimate) -> dict[tuple[str, str], planning.TaskModelPlan]:
    return {(r.task, r.model): r for r in plan.rows}


def test_plan_counts_run_matches_then_nothing_left(tmp_path: Path, server: Any) -> None:
    results = tmp_path / "results"
    spec = spec_file(tmp_path, server.url)
    plan = plan_of(spec, results)
    assert server.requests == 0 and not results.exists()  # nothing sent, nothing written
    rows = by_task(plan)
    for (task, (gens, reqs)), m in itertools.product(expected_counts().items(), MODELS):
        assert (rows[(task, m)].generations, rows[(task, m)].requests, rows[(task, m)].cached) == (gens, reqs, 0)
    total = plan.totals()
    assert total["requests"] == 3 * sum(r for _, r in expected_counts().values()) == 84
    for r in plan.rows:  # cost is tokens x the table's price, by hand
        assert r.cost_usd == pytest.approx((r.prompt_tokens * GPT4O_MINI[0] + r.output_tokens * GPT4O_MINI[1]) / 1e6)

    res = run_spec(spec, results_dir=results, progress=False)
    usage = json.loads((res.path / "manifest.json").read_text())["judge_usage"]
    assert server.requests == usage["requests"] == total["requests"]
    stored = json.loads((res.path / planning.PLAN_FILE).read_text())
    assert (
        stored["totals"]["requests"] == total["requests"]
        and stored["totals"]["prompt_tokens"] == total["prompt_tokens"]
    )
    # The approximation (chars / 4 + framing) against a real BPE count of what was sent.
    error = total["prompt_tokens"] / usage["prompt_tokens"] - 1
    assert abs(error) <= planning.TOKEN_TOLERANCE, error
    # The client prices from the shipped table without a spec price: actual cost is actual tokens x price.
    by_hand = (usage["prompt_tokens"] * GPT4O_MINI[0] + usage["completion_tokens"] * GPT4O_MINI[1]) / 1e6
    assert usage["cost_usd"] == pytest.approx(by_hand)
    text = planning.side_by_side(res.path)
    assert text is not None and "prompt tokens" in text and f"{total['prompt_tokens']:,}" in text
    work = tmp_path / "work"
    work.mkdir()
    done = forkcli.run(["show", str(res.path)], work, {"EVALHARNESS_RESULTS": str(results)})
    assert done.code == 0 and "planned vs actual" in done.stdout, done.stderr

    again = plan_of(spec, results)
    assert again.resumes and again.totals()["requests"] == 0 and again.totals()["generations"] == 0
    assert server.requests == total["requests"]

    # Another run of the same judge plans its output tokens from this run's replies, not the typical values:
    # within the stated tolerance of what the judge reported for the same requests.
    other = tmp_path / "other.yaml"
    other.write_text(spec.read_text().replace("name: three", "name: other"))
    second = plan_of(other, results)
    assert second.totals()["requests"] == total["requests"]
    out_error = second.totals()["output_tokens"] / usage["completion_tokens"] - 1
    assert abs(out_error) <= planning.TOKEN_TOLERANCE, (second.totals()["output_tokens"], usage["completion_tokens"])


def test_partly_done_run_counts_only_the_rest(tmp_path: Path, server: Any) -> None:
    results = tmp_path / "results"
    spec = spec_file(tmp_path, server.url)
    for text in FAILING:  # MT-Bench: one question's turn 2; Arena-Hard: both games of one question
        server.on(text, Fault.http(500))
    server.on("Now tell them where lunch will be.", "no rating given")  # MT-Bench question 4, turn 2: unparsed
    run_spec(spec, results_dir=results, progress=False)
    plan = plan_of(spec, results)
    rows = by_task(plan)
    for m in MODELS:
        assert rows[("mt_bench", m)].requests == 1 and rows[("arena_hard", m)].requests == 2
        assert rows[("alpaca_eval", m)].requests == 0 and rows[("mt_bench", m)].generations == 0
    assert plan.totals()["requests"] == 9 and plan.totals()["generations"] == 0
    rerun = plan_from_spec(spec, results_dir=results, progress=False)
    rerun.rejudge = "unparsed"  # as run --rejudge unparsed asks: the unparsed turn too
    assert {r.model: r.requests for r in plan_run(rerun).rows if r.task == "mt_bench"} == dict.fromkeys(MODELS, 2)


def test_cached_judgments_are_not_counted_as_requests(tmp_path: Path, server: Any) -> None:
    results = tmp_path / "results"
    spec = spec_file(tmp_path, server.url, cache=True)
    res = run_spec(spec, results_dir=results, progress=False)
    verdicts = res.path / "verdicts.jsonl"
    lines = verdicts.read_text().splitlines(keepends=True)
    verdicts.write_text("".join(lines[:50]))  # 34 verdicts lost; their judge responses are still in the cache
    plan = plan_of(spec, results)
    assert (plan.totals()["requests"], plan.totals()["cached"]) == (0, len(lines) - 50)
    uncached = plan_of(spec_file(tmp_path, server.url, cache=False), results)  # same run: cache is not identity
    assert (uncached.totals()["requests"], uncached.totals()["cached"]) == (len(lines) - 50, 0)
    assert server.requests == len(lines)


def test_mde_is_the_normal_formula_and_sigma_comes_from_earlier_runs(tmp_path: Path) -> None:
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    comps = planning.compare_plan(_FakeTask("alpaca_eval"), ["a", "b", "c"], 805, None)  # type: ignore[arg-type]
    assert [(c.a, c.b) for c in comps] == [("a", "b"), ("a", "c")]
    assert comps[0].mde == pytest.approx(z * 25.45 / math.sqrt(805), rel=1e-12)
    # sigma from an earlier run: pooled SD of per-question paired differences (MT-Bench: mean over both turns)
    rng = np.random.default_rng(0)
    ratings = {m: rng.integers(1, 11, size=(12, 2)).astype(float) for m in MODELS}
    verdicts = [
        Verdict(f"{q}:{t + 1}", "j", "v", "ok", ratings[m][q, t], model=m, task="mt_bench", key=f"{q}:t{t + 1}")
        for m in MODELS
        for q in range(12)
        for t in range(2)
    ]
    sigma, n = planning.paired_sigma(verdicts, "mt_bench", list(MODELS)) or (0.0, 0)
    d = [ratings[m].mean(axis=1) - ratings["a"].mean(axis=1) for m in ("b", "c")]
    pooled = math.sqrt((np.var(d[0], ddof=1) + np.var(d[1], ddof=1)) / 2)
    assert n == 12 and sigma == pytest.approx(pooled, rel=1e-12)


class _FakeTask:
    """Just what compare_plan reads of a task."""

    def __init__(self, module: str) -> None:
        self.name = module
        self.module = module

    def identity(self) -> dict[str, Any]:
        return {"module": f"evalharness.tasks.{self.module}"}


def test_typical_sigmas_recomputed_from_official_data(benchdata: Path) -> None:
    def sd(a: dict[Any, float], b: dict[Any, float]) -> float:
        return float(np.std([a[k] - b[k] for k in a if k in b], ddof=1))

    def alpaca(model: str) -> dict[str, float]:
        rows = json.loads(
            (benchdata / f"alpaca_eval/results/{model}/weighted_alpaca_eval_gpt4_turbo/annotations.json").read_text()
        )
        return {r["instruction"]: 100 * (float(r["preference"]) - 1) for r in rows}

    got = sd(alpaca("OpenHermes-2.5-Mistral-7B"), alpaca("gpt-3.5-turbo-1106"))
    assert got == pytest.approx(planning.TYPICAL_SIGMA["alpaca_eval"], abs=0.005)
    games: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    path = benchdata / "arena_hard/battles/arena_hard_battles.gpt-4-1106-preview.gpt-3.5-turbo-0125+gpt-4-0613.jsonl"
    for line in path.read_text().splitlines():
        r = json.loads(line)
        games[r["model_b"]][r["question_id"]].append({"model_b": 100.0, "tie": 50.0, "model_a": 0.0}[r["winner"]])
    mean = {m: {q: float(np.mean(v)) for q, v in g.items()} for m, g in games.items()}
    assert sd(mean["gpt-4-0613"], mean["gpt-3.5-turbo-0125"]) == pytest.approx(
        planning.TYPICAL_SIGMA["arena_hard"], abs=0.005
    )

    def mt(model: str) -> dict[str, float]:
        folder = benchdata / "mt_bench/model_judgment/official_derived"
        rows = list(csv.DictReader((folder / f"gpt-4_single.scores.{model}.tsv").open(), delimiter="\t"))
        per: dict[str, list[float]] = collections.defaultdict(list)
        for r in rows:
            per[r["question_id"]].append(float(r["score"]))
        return {q: float(np.mean(v)) for q, v in per.items() if len(v) == 2}

    assert sd(mt("gpt-4"), mt("alpaca-13b")) == pytest.approx(planning.TYPICAL_SIGMA["mt_bench"], abs=0.005)


def test_dry_run_sends_and_writes_nothing_and_bad_spec_exits_2(tmp_path: Path, server: Any) -> None:
    results = tmp_path / "results"
    results.mkdir()
    spec = spec_file(tmp_path, server.url)
    env = {"EVALHARNESS_RESULTS": str(results)}
    work = tmp_path / "work"
    work.mkdir()
    done = forkcli.run(["run", str(spec), "--dry-run"], work, env)
    assert done.code == 0, done.stderr
    assert "plan of run three-" in done.stdout and "MDE" in done.stdout and "arena_hard" in done.stdout
    assert server.requests == 0 and list(results.iterdir()) == []
    done = forkcli.run(["plan", str(spec), "--json"], work, env)
    assert done.code == 0, done.stderr
    assert json.loads(done.stdout)["totals"]["requests"] == 84
    bad = tmp_path / "bad.yaml"
    bad.write_text(spec.read_text().replace("backend: fake", "backend: fake\nbogus: 1"))
    for args in (["plan", str(bad)], ["run", str(bad), "--dry-run"]):
        done = forkcli.run(args, work, env)
        assert done.code == 2 and "bogus" in done.stderr, done.stderr
    assert server.requests == 0 and list(results.iterdir()) == []


def test_train_dry_run_prints_steps_and_trains_nothing(tmp_path: Path) -> None:
    spec = REPO / "benchmarks" / "sentiment_frontier.yaml"
    results = tmp_path / "results"
    results.mkdir()
    done = forkcli.run(["train", str(spec), "--dry-run"], tmp_path, {"EVALHARNESS_RESULTS": str(results)})
    assert done.code == 0, done.stderr
    prompts = sum(1 for line in (REPO / "benchmarks/sentiment/prompts_train.jsonl").read_text().splitlines() if line)
    steps = math.ceil(2 * math.ceil(prompts / 8))  # epochs 2, batch 8, one pair per prompt at most
    row = next(line.split() for line in done.stdout.splitlines() if line.startswith("dpo-"))
    assert row[2:6] == [str(prompts), str(steps), "8", str(steps * 8 * 2)]  # examples, steps, batch, sequences
    assert row[-2] == str(2 * prompts) and row[-1] == str(steps // 8)  # reference passes; checkpoints every 8 steps
    assert f"generations {4 * prompts}" in done.stdout and list(results.iterdir()) == []
