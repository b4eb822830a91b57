"""Judge reliability as Scores of the run: position consistency, repeatability, parse-failure and error rates.

A fake judge over real HTTP flips its verdict with a known probability p; the measured figures must match
theory within their CIs: two independent judgments agree with probability (1 - p)^2 + p^2, and with balanced
true verdicts kappa is (1 - 2p)^2. Kappa is checked against sklearn, its bootstrap CI's coverage by simulation,
the Wilson interval by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from evalharness.core.records import Score
from evalharness.pipeline.runner import run_spec
from evalharness.store import RunStore
from evalharness.tasks import reliability as rel
from evalharness.testing import FakeOpenAI
from evalharness.testing.flip_judge import FlipJudge

DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"
P = 0.2
AGREE = (1 - P) ** 2 + P**2  # 0.68: two independent judgments of one item agree
KAPPA = (1 - 2 * P) ** 2  # 0.36 with balanced true verdicts


def arena_data(tmp: Path, n: int) -> dict[str, str]:
    """An Arena-Hard v0.1 data root with ``n`` questions and a baseline whose answers say BASELINE."""
    answers = tmp / "data" / "arena_hard" / "arena-hard-v0.1" / "model_answer"
    answers.mkdir(parents=True, exist_ok=True)
    rows, questions = [], []
    for i in range(n):
        prompt = f"Question {i}: say something about the number {i}."
        questions.append({"uid": f"q{i:03d}", "category": "arena-hard-v0.1", "prompt": prompt})
        rows.append(
            {
                "uid": f"q{i:03d}",
                "model": "base",
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": {"answer": f"BASELINE {i}"}},
                ],
            }
        )
    (answers / "base.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "q.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return {
        "data_dir": str(tmp / "data"),
        "questions": str(tmp / "q.jsonl"),
        "baseline": "base",
        "judge_config": str(DEMO / "arena_hard/config/judge_config.v0.1-legacy.yaml"),
        "bootstrap_rounds": "10",
        "style_tokenizer": "whitespace",
    }


def arena_spec(
    tmp: Path, name: str, url: str, n: int, rejudge: str = "", cache: bool = False, model: str = "a"
) -> Path:
    opts = ", ".join(f"{k}: {v}" for k, v in arena_data(tmp, n).items()) + (f", rejudge: {rejudge}" if rejudge else "")
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"""\
name: {name}
models: [{model}]
backend: fake
generation: {{max_new_tokens: 8, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 0, concurrency: 1, cache: {str(cache).lower()}}}
tasks:
  arena_hard: {{{opts}}}
""")
    return spec


def by_metric(scores: list[Score]) -> dict[str, Score]:
    return {s.metric: s for s in scores if s.extra.get("reliability")}


# ---------------------------------------------------------------- the statistics, against independent ones
def test_kappa_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, 200).astype(float)
    b = np.where(rng.random(200) < 0.3, rng.integers(0, 3, 200), a).astype(float)
    assert rel.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
    r1 = rng.integers(1, 11, 300).astype(float)
    r2 = np.clip(r1 + rng.integers(-2, 3, 300), 1, 10).astype(float)
    assert rel.cohen_kappa(r1, r2, weights="quadratic") == pytest.approx(
        cohen_kappa_score(r1, r2, weights="quadratic"), abs=1e-12
    )


def test_wilson_share_by_hand() -> None:
    flags = [(i, i % 4 != 0) for i in range(40)]  # 30 of 40 items agree
    share, lo, hi, n = rel.share_by_item(flags)
    z = 1.959963984540054
    p = 30 / 40
    centre = (p + z * z / 80) / (1 + z * z / 40)
    half = z * math.sqrt(p * (1 - p) / 40 + z * z / 6400) / (1 + z * z / 40)
    assert (share, n) == (0.75, 40) and lo == pytest.approx(centre - half) and hi == pytest.approx(centre + half)


def test_kappa_ci_covers_truth_in_simulation() -> None:
    """The cluster-bootstrap CI of kappa covers the true (1 - 2p)^2 in about 95% of simulated flip judges, with
    two repeats per item (clustered, not new items)."""
    rng = np.random.default_rng(7)
    covered, sims = 0, 200
    for s in range(sims):
        truth = rng.integers(0, 2, 150)
        pairs = []
        for i, t in enumerate(truth):
            first = t ^ (rng.random() < P)
            pairs += [(i, float(first), float(t ^ (rng.random() < P))) for _ in range(2)]
        _, lo, hi, _ = rel.kappa_ci(pairs, rounds=300, seed=s)
        covered += lo <= KAPPA <= hi
    assert 0.88 <= covered / sims <= 0.99


# ---------------------------------------------------------------- through the run loop, a fake judge over HTTP
@pytest.fixture(scope="module")
def flip_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("flip")
    judge = FlipJudge(P, seed=3)
    with FakeOpenAI(judge) as server:
        res = run_spec(
            arena_spec(tmp, "flip", server.url, 200, "{fraction: 1.0, times: 1, seed: 0}", cache=True),
            results_dir=tmp / "results",
            progress=False,
        )
    return {"res": res, "judge": judge, "tmp": tmp}


def test_flip_judge_consistency_and_repeatability_match_theory(flip_run: dict[str, Any]) -> None:
    res = flip_run["res"]
    rs = by_metric(res.scores)
    assert set(rs) == {"position_consistency", "repeat_agreement", "repeat_kappa", "parse_failure_rate", "error_rate"}
    pc, ra, rk = rs["position_consistency"], rs["repeat_agreement"], rs["repeat_kappa"]
    assert pc.n == 200 and ra.n == 200
    assert pc.ci_low <= AGREE <= pc.ci_high, pc
    assert ra.ci_low <= AGREE <= ra.ci_high, ra
    assert rk.ci_low <= KAPPA <= rk.ci_high, rk
    assert rs["parse_failure_rate"].value == 0 and rs["error_rate"].value == 0
    # the figures recomputed from the stored verdicts, independently of the module
    store = RunStore(res.path)
    games: dict[str, dict[int, float]] = {}
    for v in store.verdicts("arena_hard", "a"):
        games.setdefault(v.item_id, {})[v.meta["game"]] = v.value
    assert pc.value == pytest.approx(np.mean([g[1] == g[2] for g in games.values()]))
    primary = {v.key: v.value for v in store.verdicts("arena_hard", "a")}
    rep = store.verdicts("arena_hard#rejudge", "a")
    assert len(rep) == 400  # every game of every item (fraction 1), once
    per_item: dict[str, list[bool]] = {}
    for v in rep:
        per_item.setdefault(v.item_id, []).append(v.value == primary[v.key.rsplit("#r", 1)[0]])
    assert ra.value == pytest.approx(np.mean([np.mean(x) for x in per_item.values()]))
    a = [primary[v.key.rsplit("#r", 1)[0]] for v in rep]
    assert rk.value == pytest.approx(cohen_kappa_score(a, [v.value for v in rep]), abs=1e-12)
    # the reliability scores never enter the gate as model metrics
    assert all(s.higher_is_better is None for s in rs.values())


def test_rejudge_bypasses_warm_cache_and_keeps_primary(flip_run: dict[str, Any], tmp_path: Path) -> None:
    """A second run with more repeats on a warm cache: the new repeats reach the server, the stored primary
    verdicts and repeats are unchanged."""
    res, tmp = flip_run["res"], flip_run["tmp"]
    store = RunStore(res.path)
    before = {v.key: v.value for v in store.verdicts("arena_hard", "a")}
    judge = FlipJudge(P, seed=99)
    with FakeOpenAI(judge) as server:
        # a new run (a new endpoint URL) on the shared response cache, then the same spec again (resumed)
        spec = arena_spec(tmp, "flip2", server.url, 200, "{fraction: 0.25, times: 2, seed: 0}", cache=True)
        run_spec(spec, results_dir=tmp / "results", progress=False)
        first = judge.requests
        res2 = run_spec(spec, results_dir=tmp / "results", progress=False)  # resumed: nothing asked again
        assert judge.requests == first
    chosen = {v.item_id for v in RunStore(res2.path).verdicts("arena_hard#rejudge", "a")}
    assert 0.15 * 200 < len(chosen) < 0.35 * 200
    # 400 primary games (a new URL is a new cache key) + 2 repeats x 2 games per chosen item, all sent
    assert first == 400 + 4 * len(chosen)
    assert {v.key: v.value for v in store.verdicts("arena_hard", "a")} == before


def test_warm_cache_rejudge_reaches_server(tmp_path: Path) -> None:
    """On one server: a run fills the cache; a run with rejudge answers its primary games from the cache and
    sends every repeat."""
    judge = FlipJudge(P, seed=5)
    with FakeOpenAI(judge) as server:
        first = run_spec(
            arena_spec(tmp_path, "warm1", server.url, 20, cache=True), results_dir=tmp_path / "r", progress=False
        )
        assert judge.requests == 40
        # rejudge is not part of the run's identity: the finished run is resumed and only the repeats are sent
        again = run_spec(
            arena_spec(tmp_path, "warm1", server.url, 20, "{fraction: 1.0, times: 1}", cache=True),
            results_dir=tmp_path / "r",
            progress=False,
        )
        assert again.path == first.path and judge.requests == 40 + 40
        assert "repeat_agreement" in by_metric(again.scores)
        res = run_spec(
            arena_spec(tmp_path, "warm2", server.url, 20, "{fraction: 1.0, times: 2}", cache=True),
            results_dir=tmp_path / "r",
            progress=False,
        )
        assert judge.requests == 80 + 80  # primaries cached, 2 x 2 games x 20 repeats sent (repeat 1 too)
    first = {v.key: v.value for v in RunStore(tmp_path / "r" / RunStore(res.path).run_id).verdicts("arena_hard", "a")}
    assert len(first) == 40


def test_show_and_json_carry_reliability(flip_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from test_gate import cli

    res = flip_run["res"]
    code, out, _ = cli(capsys, "show", res.path, "--json")
    assert code == 0
    metrics = {s["metric"] for s in json.loads(out)["scores"]}
    assert {"position_consistency", "repeat_agreement", "repeat_kappa"} <= metrics
    code, out, _ = cli(capsys, "show", res.path)
    assert code == 0 and "position_consistency" in out


def test_mt_bench_repeat_weighted_kappa(tmp_path: Path) -> None:
    """MT-Bench ratings: agreement and quadratic-weighted kappa of repeats (checked against sklearn)."""
    spec = tmp_path / "mt.yaml"
    with FakeOpenAI(FlipJudge(P, seed=2)) as server:
        spec.write_text(f"""\
name: mt
models: [a]
backend: fake
generation: {{max_new_tokens: 8, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{server.url}", max_retries: 0, concurrency: 1, cache: false}}
tasks:
  mt_bench: {{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl,
             reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl,
             rejudge: {{fraction: 1.0, times: 3}}}}
""")
        res = run_spec(spec, results_dir=tmp_path / "r", progress=False)
    rs = by_metric(res.scores)
    assert "position_consistency" not in rs  # single-answer grading shows no order
    store = RunStore(res.path)
    primary = {v.key: v.value for v in store.verdicts("mt_bench", "a")}
    rep = store.verdicts("mt_bench#rejudge", "a")
    assert len(rep) == 3 * len(primary)
    a = [primary[v.key.rsplit("#r", 1)[0]] for v in rep]
    b = [v.value for v in rep]
    assert rs["repeat_kappa"].value == pytest.approx(cohen_kappa_score(a, b, weights="quadratic"), abs=1e-12)
    assert rs["repeat_kappa"].extra["weights"] == "quadratic"
    # a question's two turns and three repeats are one cluster: n counts questions
    assert rs["repeat_agreement"].n == rs["repeat_kappa"].n == len({v.item_id.split(":")[0] for v in rep}) == 4
    per_q: dict[str, list[bool]] = {}
    for v, x in zip(rep, a):
        per_q.setdefault(v.item_id.split(":")[0], []).append(round(v.value) == round(x))
    assert rs["repeat_agreement"].value == pytest.approx(np.mean([np.mean(f) for f in per_q.values()]))


def test_bad_rejudge_option_names_the_field(tmp_path: Path) -> None:
    from evalharness.core.errors import InputError

    spec = arena_spec(tmp_path, "bad", "http://127.0.0.1:9", 4, "{fraction: 0, times: 1}")
    with pytest.raises(InputError) as e:
        run_spec(spec, results_dir=tmp_path / "r", progress=False)
    assert "rejudge" in str(e.value) and "bad.yaml" in str(e.value)


def test_compare_shows_judge_section_not_columns(flip_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from test_gate import cli

    from evalharness import trackers

    res = flip_run["res"]
    code, out, _ = cli(capsys, "compare", res.path, "--format", "markdown")
    assert code == 0
    table, _, section = out.partition("**Judge reliability**")
    assert "position" not in table and "Arena-Hard %" in table  # the model table has no judge figure column
    pc = by_metric(res.scores)["position_consistency"]
    row = next(line for line in section.splitlines() if line.startswith("| a |"))
    assert f"{pc.value:.2f} [{pc.ci_low:.2f}, {pc.ci_high:.2f}] n=200" in row and "judge-x" in row
    # the trackers get them as every other score
    sent = {r["metric"]: r for r in trackers.score_rows(res.scores) if r["task"] == "arena_hard"}
    assert sent["position_consistency"]["value"] == pc.value and sent["repeat_kappa"]["n"] == 200


def test_html_report_data_has_judge_section(flip_run: dict[str, Any]) -> None:
    from evalharness.analysis.html_report import report_data

    res = flip_run["res"]
    data = report_data([str(res.path)])
    (row,) = data["judge_reliability"]
    pc = by_metric(res.scores)["position_consistency"]
    assert row["task"] == "arena_hard" and row["position_consistency"] == [pc.value, pc.ci_low, pc.ci_high, 200]
    metrics = [c["metric"] for c in data["table"]["columns"]]
    assert "score" in metrics and not set(metrics) & set(rel.RELIABILITY_METRICS)


def test_alpaca_both_orders_position_consistency(tmp_path: Path) -> None:
    """AlpacaEval with both_orders: a judge that prefers the output shown first (unless it flips, probability p)
    agrees with itself across the two orders only when exactly one of the two judgments flips: 2p(1 - p). The
    official order's win rate is unchanged by the option."""
    n = 150
    ev = [{"instruction": f"Instruction {i}: write about {i}.", "dataset": "demo"} for i in range(n)]
    base = [{"instruction": e["instruction"], "output": f"BASELINE {i}", "generator": "base"} for i, e in enumerate(ev)]
    (tmp_path / "ev.json").write_text(json.dumps(ev))
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "no-lc").mkdir()
    results = {}
    for both in (False, True):
        judge = FlipJudge(P, seed=4)
        with FakeOpenAI(judge) as server:
            spec = tmp_path / f"ae{both}.yaml"
            spec.write_text(f"""\
name: ae-{str(both).lower()}
models: [a]
backend: fake
generation: {{max_new_tokens: 8, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{server.url}", max_retries: 0, concurrency: 1, cache: false}}
tasks:
  alpaca_eval: {{eval_set: {tmp_path}/ev.json, baseline: {tmp_path}/base.json, lc_support_dir: {tmp_path}/no-lc,
                 both_orders: {str(both).lower()}}}
""")
            results[both] = run_spec(spec, results_dir=tmp_path / "r", progress=False)
            assert judge.requests == (2 * n if both else n)
    rs = by_metric(results[True].scores)
    pc = rs["position_consistency"]
    assert pc.n == n and pc.ci_low <= 2 * P * (1 - P) <= pc.ci_high, pc
    assert "position_consistency" not in by_metric(results[False].scores)
    win = {b: next(s for s in results[b].scores if s.metric == "win_rate") for b in (False, True)}
    assert win[True].n == win[False].n == n and win[True].value == win[False].value  # the official order only
    other = RunStore(results[True].path).verdicts("alpaca_eval#swapped", "a")
    assert len(other) == n and {v.order for v in other} == {"AB", "BA"}
