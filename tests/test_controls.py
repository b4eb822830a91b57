"""The floor and the length confound (issue 21 point 6): a constant-answer control judged like any model over real
HTTP, a length-only ruler, and the judge's verdict-length correlation checked against scipy."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as st
from taskkit import POLICY, RecordingBackend

from evalharness.core.records import Score, Verdict
from evalharness.pipeline.runner import ModelSpec, RunPlan, run
from evalharness.pipeline.spec import JudgeSpec, load_spec
from evalharness.store import RunStore
from evalharness.tasks import controls
from evalharness.tasks.arena_hard import task as arena_hard
from evalharness.tasks.base import GenerationSettings, Task, TaskSpec
from evalharness.testing import FakeOpenAI

ANSWER = re.compile(r"<\|The Start of Assistant (A|B)'s Answer\|>\n(.*?)\n<\|The End of Assistant \1's Answer\|>", re.S)


def flipped(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % 3 == 0


def length_judge(body: dict[str, Any]) -> str:
    """Prefers the longer answer, except on a third of the requests (a hash of the request), where it prefers the
    shorter: a judge with a strong, not perfect, length bias."""
    user = body["messages"][-1]["content"]
    a, b = (m.group(2) for m in ANSWER.finditer(user))
    longer_a = len(a) > len(b)
    return "[[A>B]]" if longer_a != flipped(user) else "[[B>A]]"


def by(scores: list[Score], model: str, metric: str) -> Score:
    (s,) = [s for s in scores if s.model == model and s.metric == metric]
    return s


def test_null_control_and_length_confound_on_arena_hard(tmp_path: Path, benchdata: Path) -> None:
    cfg = arena_hard.Config(version="v2.0", data_dir=str(benchdata), limit=8, bootstrap_rounds=10)
    judge = JudgeSpec(model="judge-x", base_url="", cache=False, max_retries=0)
    with FakeOpenAI(length_judge) as server:
        judge.base_url = server.url
        plan = RunPlan(name="c", models=[ModelSpec(POLICY, POLICY)], tasks=[TaskSpec("arena_hard", "arena_hard", cfg)],
                       backend="fake", backends={POLICY: RecordingBackend()}, judge=judge,
                       controls=["null", "longest"], null_answer="No answer.",
                       generation=GenerationSettings(max_new_tokens=32), results_dir=tmp_path / "r", progress=False)
        res = run(plan)
        bodies = server.received
    store = RunStore(res.path)
    # The null control was judged like any model: the judge saw its constant text, 2 games per question.
    shown = [b for b in bodies if "\nNo answer.\n" in b["messages"][-1]["content"]]
    assert len(shown) == 16 and len(bodies) == 32
    floor = by(res.scores, controls.NULL_MODEL, "score")
    # Its score is the judge's real verdicts: the constant answer is shorter than every baseline answer, so it
    # wins exactly the flipped games (two players: the BT win rate is the share of battles won).
    wins = sum(flipped(b["messages"][-1]["content"]) for b in shown)
    assert floor.value == pytest.approx(100 * wins / 16, abs=1e-6) and floor.judge_id == "judge-x"
    assert {v.status for v in store.verdicts("arena_hard", controls.NULL_MODEL)} == {"ok"}

    # The confound of the policy: per question, the mean game value against the length difference, as scipy has it.
    confound = by(res.scores, POLICY, "length_confound")
    answers = {g.item_id: g.text for g in store.generations(POLICY)}
    base = {q: t for q, (_, t) in _extras(cfg, tmp_path).items()}
    values: dict[str, list[float]] = {}
    for v in store.verdicts("arena_hard", POLICY):
        values.setdefault(v.item_id, []).append(100 * v.value)
    items = list(values)
    x = [len(answers[q]) - len(base[q]) for q in items]
    y = [float(np.mean(values[q])) for q in items]
    ref = st.pearsonr(x, y)
    lo, hi = ref.confidence_interval(0.95)
    assert confound.value == pytest.approx(ref.statistic, abs=1e-12)
    assert (confound.ci_low, confound.ci_high) == pytest.approx((lo, hi), abs=1e-12)
    assert confound.extra["spearman"] == pytest.approx(st.spearmanr(x, y)[0], abs=1e-12)
    assert confound.n == 8 and confound.judge_id == "judge-x"
    ruler = by(res.scores, POLICY, "length_ruler")
    assert ruler.value == 100 * np.mean([d > 0 for d in x]) and ruler.judge_id == controls.RULER_ID
    # The null control has the same pair of control scores, beside its floor.
    assert by(res.scores, controls.NULL_MODEL, "length_ruler").value == 0.0
    # compare (text, --format json and the HTML report share its notes) states the floor and the confound.
    from evalharness.analysis.compare import build_table, render, run_entries

    table = build_table(run_entries(store))
    assert f"floor of Arena-Hard %: {floor.value:.1f} (null-control" in "\n".join(table.notes)
    assert f"{POLICY} {confound.value:+.2f} [{confound.ci_low:+.2f}, {confound.ci_high:+.2f}]" in render(table, "json")


def _extras(cfg: Any, tmp_path: Path) -> dict[str, tuple[str | None, str]]:
    from evalharness.tasks.base import RunEnv

    t = arena_hard.ArenaHardTask("arena_hard", cfg, RunEnv(GenerationSettings(), tmp_path))
    t.setup()
    return t.item_extras()


class _Rated(Task):
    """A rating task with no baseline (MT-Bench's shape): answers by question, a list of turns."""

    needs_judge = True

    def answers(self, session: Any) -> dict[int, list[str]]:
        return {1: ["a" * 10, "b" * 40], 2: ["c" * 25], 3: ["d" * 5, "e" * 60]}


class _Paired(Task):
    """A pairwise task (AlpacaEval's shape): outputs in item order, the baseline in item_extras."""

    needs_judge = True

    def item_extras(self) -> dict[str, tuple[str | None, str]]:
        return {"x": (None, "12345"), "y": (None, "1"), "z": (None, "123")}

    def outputs(self, session: Any) -> list[str | None]:
        return ["123", "12", None]


def test_rating_and_pairwise_shapes() -> None:
    head = Score("t", "score", "m", 5.0, 5, judge_id="j", judge_version="v")
    rated = _Rated.__new__(_Rated)
    verdicts = [Verdict(i, "j", "v", "ok", r) for i, r in [("1:1", 3.0), ("1:2", 8.0), ("2:1", 6.0), ("3:1", 2.0)]]
    verdicts.append(Verdict("3:2", "j", "v", "error"))
    [confound] = controls.length_scores(rated, None, verdicts, [head])  # type: ignore[arg-type]
    ref = st.pearsonr([10, 40, 25, 5], [3.0, 8.0, 6.0, 2.0])
    assert confound.value == pytest.approx(ref.statistic) and (confound.n, confound.n_skipped) == (4, 1)
    assert confound.extra["against"] == "answer length (characters)"
    paired = _Paired.__new__(_Paired)
    assert controls.answer_lengths(paired, None) == {"x": (3, 5), "y": (2, 1)}  # type: ignore[arg-type]
    vs = [Verdict("x", "j", "v", "ok", 0.0), Verdict("y", "j", "v", "ok", 1.0)]
    confound, ruler = controls.length_scores(paired, None, vs, [head])  # type: ignore[arg-type]
    assert ruler.value == 50.0 and ruler.n == 2  # longer on y, shorter on x
    assert confound.value is None and confound.n == 2  # two points always lie on a line: no correlation reported


def test_correlation_interval_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = (x + rng.normal(size=40) > 0).astype(float)  # 0/1 verdicts: Pearson is the point-biserial r
    c = controls.correlation(x, y)
    pb = st.pointbiserialr(y, x)
    assert c["r"] == pytest.approx(pb.statistic) and c["p_value"] == pytest.approx(pb.pvalue)
    lo, hi = st.pearsonr(x, y).confidence_interval(0.95)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((lo, hi))
    assert math.isnan(controls.correlation([1, 2, 3], [1, 1, 1])["r"])


def test_spec_controls(tmp_path: Path) -> None:
    head = "name: x\nmodels: [m]\nbackend: fake\ntasks: {alpaca_eval: {}}\n"
    (tmp_path / "ok.yaml").write_text(head + "controls: [null, longest]\nnull_answer: 'N/A'\n")
    spec, _ = load_spec(tmp_path / "ok.yaml")
    assert spec.controls == ["null", "longest"] and spec.null_answer == "N/A"
    (tmp_path / "bad.yaml").write_text(head + "controls: [nul]\n")
    from evalharness.core.errors import InputError

    with pytest.raises(InputError) as e:
        load_spec(tmp_path / "bad.yaml")
    assert e.value.field == "controls.0" and e.value.line == 5
    from evalharness.pipeline.runner import plan_from_spec

    plan = plan_from_spec(tmp_path / "ok.yaml", results_dir=tmp_path)
    assert (plan.controls, plan.null_answer, plan.ensemble) == (["null", "longest"], "N/A", None)


def test_length_confound_script_reads_the_official_annotations(benchdata: Path) -> None:
    """benchmarks/length_confound.py (the docs' table): its per-model win rate is the official leaderboard's, so
    the preference's side is read right; the correlation is scipy's on the same items."""
    import csv
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "length_confound.py"
    spec = importlib.util.spec_from_file_location("length_confound", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    board = benchdata / "alpaca_eval/leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
    official = {r[""]: float(r["win_rate"]) for r in csv.DictReader(board.open())}
    for model in ("NullModel", "alpaca-7b"):
        data = mod.items(benchdata / f"alpaca_eval/results/{model}/weighted_alpaca_eval_gpt4_turbo/annotations.json")
        assert 100 * np.mean([d[1] for d in data]) == pytest.approx(official[model], abs=1e-6)
        c = controls.correlation([d[2] for d in data], [d[1] for d in data])
        assert c["r"] == pytest.approx(st.pearsonr([d[2] for d in data], [d[1] for d in data]).statistic)
