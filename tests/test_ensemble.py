"""Judge ensembles (issue 21 point 3): two judges over real HTTP, each judge's verdicts and scores kept, the
Arena-Hard v2.0 two-judge score checked against a transcription of the official rule on the same files."""

from __future__ import annotations

import glob
import hashlib
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score
from taskkit import POLICY, RecordingBackend

from evalharness.core.errors import InputError
from evalharness.core.records import Score, Verdict
from evalharness.pipeline.runner import ModelSpec, RunPlan, run
from evalharness.pipeline.spec import JudgeSpec, load_spec
from evalharness.store import RunStore, comparable
from evalharness.tasks import ensemble
from evalharness.tasks.arena_hard import task as arena_hard
from evalharness.tasks.base import GenerationSettings, TaskSpec
from evalharness.testing import FakeOpenAI, Fault

LABELS = ["[[A>>B]]", "[[A>B]]", "[[A=B]]", "[[B>A]]", "[[B>>A]]"]


def official_battles(folder: Path, judge_names: list[str], weight: int = 3) -> pd.DataFrame:
    """lmarena/arena-hard-auto show_result.py ``load_judgments`` at commit
    196f6b826783b3da7310e361a805fa36f0be83f3, lines 12-56, transcribed (the folder is ours, not ``data/``)."""
    dfs = []
    for judge_name in judge_names:
        dfs.extend([pd.read_json(f, lines=True) for f in glob.glob(os.path.join(folder, judge_name, "*.jsonl"))])
    data = pd.concat(dfs).reset_index(drop=True)
    null_indices = data.games.map(
        lambda x: x[0] is None or x[1] is None or x[0]["score"] is None or x[1]["score"] is None
    )
    _data = data[~null_indices].reset_index(drop=True)
    label_to_score = {
        "A>B": [1], "A>>B": [1] * weight, "A=B": [0.5], "A<<B": [0] * weight, "A<B": [0],
        "B>A": [0], "B>>A": [0] * weight, "B=A": [0.5], "B<<A": [1] * weight, "B<A": [1],
    }
    _data["scores"] = _data.games.map(
        lambda x: label_to_score[x[1]["score"]] + [1 - s for s in label_to_score[x[0]["score"]]]
    )
    return _data[["uid", "model", "category", "scores"]].explode("scores").reset_index(drop=True)


def two_judges(body: dict[str, Any]) -> Any:
    """Each judge model answers with its own deterministic label per request; judge-b fails on one question."""
    text = body["messages"][-1]["content"]
    if body["model"] == "judge-b" and "FAILME" in text:
        return Fault.http(400)
    digest = int(hashlib.sha256((body["model"] + text).encode()).hexdigest(), 16)
    return f"My verdict: {LABELS[digest % 5]}"


def plan(tmp_path: Path, server: FakeOpenAI, cfg: Any, rule: str, module: str = "arena_hard") -> RunPlan:
    judges = [JudgeSpec(model=m, base_url=server.url, cache=False, max_retries=0) for m in ("judge-a", "judge-b")]
    return RunPlan(name="ens", models=[ModelSpec(POLICY, POLICY)], tasks=[TaskSpec(module, module, cfg)],
                   backend="fake", backends={POLICY: RecordingBackend()}, judge=judges, ensemble=rule,
                   generation=GenerationSettings(max_new_tokens=32), results_dir=tmp_path / "results", progress=False)


def by(scores: list[Score], task: str, metric: str) -> Score:
    (s,) = [s for s in scores if s.task == task and s.metric == metric]
    return s


def test_arena_hard_v2_two_judges_match_show_result(tmp_path: Path, benchdata: Path, monkeypatch: Any) -> None:
    cfg = arena_hard.Config(version="v2.0", data_dir=str(benchdata), limit=6, bootstrap_rounds=20)
    # The third question's prompt carries a marker, so judge-b's two games of it fail (HTTP 400).
    real = arena_hard._questions

    def marked(c: Any, bench: str) -> Any:
        qs, complete = real(c, bench)
        qs[2] = {**qs[2], "prompt": qs[2]["prompt"] + " FAILME"}
        return qs, complete

    monkeypatch.setattr(arena_hard, "_questions", marked)
    with FakeOpenAI(two_judges) as server:
        res = run(plan(tmp_path, server, cfg, "arena_hard_v2"))
    store = RunStore(res.path)
    scores = res.scores
    a, b = (by(scores, f"arena_hard:{j}", "score") for j in ("judge-a", "judge-b"))
    ens = by(scores, "arena_hard", "ensemble_arena_hard_v2")
    # Each judge keeps its own verdicts and its own score, under its own comparability key.
    assert {v.judge_id for v in store.verdicts("arena_hard:judge-a", POLICY)} == {"judge-a"}
    vb = store.verdicts("arena_hard:judge-b", POLICY)
    assert sum(v.status == "error" for v in vb) == 2 and b.n_skipped == 2 and b.extra["n_error"] == 2
    assert (a.judge_id, b.judge_id) == ("judge-a", "judge-b")
    assert ens.judge_id == "ensemble(arena_hard_v2: judge-a, judge-b)"
    for single in (a, b):
        ok, why = comparable(ens, single)
        assert not ok and "judge_id" in why and "judge_version" in why
    # The official rule on the official-format judgment files the run wrote, per judge.
    folder = res.path / "arena_hard/arena-hard-v2.0/model_judgment"
    battles = official_battles(folder, ["judge-a", "judge-b"])
    assert len(battles) == ens.extra["n_battles"]
    assert ens.value == pytest.approx(100 * battles.scores.astype(float).mean(), abs=1e-6)
    # judge-b's failed question is dropped whole for judge-b; judge-a's games of it still count.
    assert ens.n_skipped == 2 and ens.n == 12 + 10 and ens.extra["n_games_dropped"] == 2
    from evalharness.pipeline.runner import judging_counts

    counts = {(c.task, c.model): (c.scored, c.failed) for c in judging_counts(res.path)}
    assert counts[("arena_hard", POLICY)] == (22, 2) and counts[("arena_hard:judge-b", POLICY)] == (10, 2)
    only_a = official_battles(folder, ["judge-a"])
    assert a.value == pytest.approx(100 * only_a.scores.astype(float).mean(), abs=1e-6)
    # Agreement: the games both judged, against sklearn's kappa on the same win/tie/loss labels.
    agree, kappa = by(scores, "arena_hard", "judge_agreement"), by(scores, "arena_hard", "judge_kappa")
    va = {ensemble.unit_of(v): v for v in store.verdicts("arena_hard:judge-a", POLICY)}
    pairs = [(va[ensemble.unit_of(v)].value, v.value) for v in vb if v.status == "ok"]
    lab = lambda x: "win" if x > 0.5 else "loss" if x < 0.5 else "tie"  # noqa: E731
    la, lb = [lab(p[0]) for p in pairs], [lab(p[1]) for p in pairs]
    assert agree.n == kappa.n == 10
    assert agree.value == pytest.approx(100 * sum(x == y for x, y in zip(la, lb)) / 10)
    assert kappa.value == pytest.approx(cohen_kappa_score(la, lb))


def test_mean_and_vote_rules_count_a_failed_judge(tmp_path: Path, benchdata: Path) -> None:
    def verdict(item: str, order: str, value: float | None, judge: str) -> Verdict:
        status = "ok" if value is not None else "error"
        return Verdict(item, judge, "v", status, value, order=order)

    va = [verdict("q1", "AB", 1.0, "a"), verdict("q1", "BA", 0.0, "a"), verdict("q2", "AB", 1.0, "a")]
    vb = [verdict("q1", "AB", 0.5, "b"), verdict("q1", "BA", 0.0, "b"), verdict("q2", "AB", None, "b")]
    pct = lambda v: 100 * v  # noqa: E731
    mean = ensemble.item_ensemble({"a": va, "b": vb}, "mean", pct, 50.0)
    assert mean.values == {("q1", 0, "AB"): 75.0, ("q1", 0, "BA"): 0.0}
    assert (mean.skipped, mean.failed) == (1, {"a": 0, "b": 1})
    vote = ensemble.item_ensemble({"a": va, "b": vb, "c": va}, "vote", pct, 50.0)
    assert vote.values == {("q1", 0, "AB"): 100.0, ("q1", 0, "BA"): 0.0}  # two of three say win
    assert ensemble.combine([100.0, 0.0], "vote", 50.0) == 50.0  # no majority: a tie
    assert ensemble.combine([7.0, 7.0, 3.0], "vote", None) == 7.0  # ratings: the majority's
    with pytest.raises(ValueError):
        ensemble.combine([1.0], "median", None)


def test_kappa_matches_sklearn() -> None:
    a = ["win", "win", "tie", "loss", "loss", "win", "tie", "loss"]
    b = ["win", "loss", "tie", "loss", "win", "win", "win", "loss"]
    assert ensemble.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    # by hand: p_o = 5/8; p_e = (3*4 + 2*1 + 3*3) / 64 = 23/64
    assert ensemble.cohen_kappa(a, b) == pytest.approx((5 / 8 - 23 / 64) / (1 - 23 / 64))


def test_spec_shape(tmp_path: Path) -> None:
    head = "name: x\nmodels: [m]\nbackend: fake\ntasks: {alpaca_eval: {}}\n"
    two = "judge: [{model: a, base_url: http://x}, {model: b, base_url: http://x}]\n"
    (tmp_path / "ok.yaml").write_text(head + two + "ensemble: vote\n")
    spec, _ = load_spec(tmp_path / "ok.yaml")
    assert isinstance(spec.judge, list) and spec.ensemble == "vote"
    (tmp_path / "one.yaml").write_text(head + "judge: {model: a, base_url: http://x}\n")
    assert isinstance(load_spec(tmp_path / "one.yaml")[0].judge, JudgeSpec)  # the single-judge form still reads
    for name, text, field in [("norule", two, "judge"), ("lone", "judge: {model: a, base_url: http://x}\nensemble: mean\n", "ensemble"),
                              ("bad", two + "ensemble: median\n", "ensemble"),
                              ("nourl", "judge: [{model: a, base_url: http://x}, {model: b}]\nensemble: mean\n", "judge.1.base_url")]:
        (tmp_path / f"{name}.yaml").write_text(head + text)
        with pytest.raises(InputError) as e:
            load_spec(tmp_path / f"{name}.yaml")
        assert e.value.field == field and e.value.line is not None, (name, e.value)


def rating_judges(body: dict[str, Any]) -> Any:
    """Ratings from a hash of (judge, request); judge-b fails on the question asking for a travel blog."""
    text = body["messages"][-1]["content"]
    if body["model"] == "judge-b" and "travel blog" in text:
        return Fault.http(400)
    return f"Rating: [[{1 + int(hashlib.sha256((body['model'] + text).encode()).hexdigest(), 16) % 10}]]"


def test_mt_bench_mean_ensemble_over_real_http(tmp_path: Path, benchdata: Path) -> None:
    from evalharness.tasks.mt_bench import task as mt_bench

    cfg = mt_bench.Config(data_dir=str(benchdata), question_ids=(81, 111, 145))
    with FakeOpenAI(rating_judges) as server:
        res = run(plan(tmp_path, server, cfg, "mean", module="mt_bench"))
    store = RunStore(res.path)
    va = {v.item_id: v.value for v in store.verdicts("mt_bench:judge-a", POLICY)}
    vb = {v.item_id: v.value for v in store.verdicts("mt_bench:judge-b", POLICY) if v.status == "ok"}
    assert len(va) == 6 and len(vb) == 4  # question 81 (the travel blog) failed for judge-b, both turns
    ens = by(res.scores, "mt_bench", "ensemble_mean")
    # Items both judged, averaged; then the mean over questions of their turns' means (the question is the unit).
    per_q: dict[str, list[float]] = {}
    for item, b in vb.items():
        per_q.setdefault(item.split(":")[0], []).append((va[item] + b) / 2)
    assert ens.value == pytest.approx(sum(sum(v) / len(v) for v in per_q.values()) / len(per_q))
    assert (ens.n, ens.n_skipped, ens.extra["n_failed_by_judge"]) == (4, 2, {"judge-a": 0, "judge-b": 2})
    assert ens.judge_id == "ensemble(mean: judge-a, judge-b)" and ens.task_version == by(
        res.scores, "mt_bench:judge-a", "score").task_version
    kappa = by(res.scores, "mt_bench", "judge_kappa")
    items = list(vb)
    assert kappa.n == 4 and kappa.value == pytest.approx(
        cohen_kappa_score([va[i] for i in items], [vb[i] for i in items]))


def test_arena_rule_refuses_other_tasks_before_anything_runs(tmp_path: Path, benchdata: Path) -> None:
    from evalharness.tasks.mt_bench import task as mt_bench

    cfg = mt_bench.Config(data_dir=str(benchdata), question_ids=(81,))
    with FakeOpenAI(rating_judges) as server:
        with pytest.raises(InputError, match="arena_hard_v2 is Arena-Hard's rule"):
            run(plan(tmp_path, server, cfg, "arena_hard_v2", module="mt_bench"))
        with pytest.raises(InputError, match="ensemble must be one of"):
            run(plan(tmp_path, server, cfg, "median", module="mt_bench"))
        assert server.requests == 0
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").glob("ens-*"))


def test_alpaca_eval_vote_ensemble_with_controls(tmp_path: Path, benchdata: Path) -> None:
    """AlpacaEval through two judges (the same scripted preferences), a vote, and both controls."""
    from scipy import stats as st
    from test_task_alpaca_eval import N, judge_responder

    from evalharness.tasks import controls
    from evalharness.tasks.alpaca_eval import task as alpaca

    cfg = alpaca.Config(data_dir=str(benchdata), limit=N, lc_support_dir=str(tmp_path / "no-lc"))
    items, _ = alpaca.load_items(cfg)
    with FakeOpenAI(judge_responder(items)) as server:
        p = plan(tmp_path, server, cfg, "vote", module="alpaca_eval")
        p.controls = ["null", "longest"]
        res = run(p)
    store = RunStore(res.path)
    for model in (POLICY, controls.NULL_MODEL):
        vote = by([s for s in res.scores if s.model == model], "alpaca_eval", "ensemble_vote")
        assert (vote.n, vote.n_skipped) == (N - 1, 1)  # item 10 unparsed by both judges: skipped, counted
        single = by([s for s in res.scores if s.model == model], "alpaca_eval:judge-a", "win_rate")
        assert vote.judge_id != single.judge_id and vote.task_version == single.task_version
        agree = by([s for s in res.scores if s.model == model], "alpaca_eval", "judge_agreement")
        assert agree.value == 100.0 and agree.n == N - 1
    # The null control's answers went to the judges; its floor is a real score of their verdicts.
    assert {g.text for g in store.generations(controls.NULL_MODEL)} == {controls.NULL_ANSWER}
    confound = by([s for s in res.scores if s.model == POLICY], "alpaca_eval:judge-b", "length_confound")
    out = {g.item_id: g.text for g in store.generations(POLICY)}
    baseline = {req: text for req, (_, text) in _alpaca_extras(cfg, tmp_path).items()}
    vs = [v for v in store.verdicts("alpaca_eval:judge-b", POLICY) if v.status == "ok"]
    x = [len(out[v.item_id]) - len(baseline[v.item_id]) for v in vs]
    y = [100 * (v.value - 1) for v in vs]
    assert confound.value == pytest.approx(st.pearsonr(x, y).statistic, abs=1e-9) and confound.n == N - 1


def _alpaca_extras(cfg: Any, tmp_path: Path) -> dict[str, tuple[str | None, str]]:
    from evalharness.tasks.alpaca_eval import task as alpaca
    from evalharness.tasks.base import RunEnv

    t = alpaca.AlpacaEvalTask("alpaca_eval", cfg, RunEnv(GenerationSettings(), tmp_path))
    t.setup()
    return t.item_extras()
