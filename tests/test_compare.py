"""compare, regress, history end to end: paired differences equal to a hand computation from the files
(official AlpacaEval annotations and MT-Bench judgments imported with `metrics --save`, our own fake-backend
runs), regress's verdicts and exit codes on constructed runs, refused incomparable columns, unpaired items
counted, history over a sweep's checkpoints with its plot, and no winner's curse in the best checkpoint."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as st

from evalharness.analysis import compare
from evalharness.pipeline.evaluate import EvalConfig, run_eval
from evalharness.core.prompts import write_prompts
from evalharness.core.records import Score, Verdict
from evalharness.core.stats import mean_ci
from evalharness.store import RunStore, read_jsonl

JSON_CELL = {"model", "task", "metric", "value", "ci_low", "ci_high", "n"}
JSON_DELTA = {"delta", "delta_ci_low", "delta_ci_high", "p_value", "p_holm", "n_paired", "mde"}
REGRESS_FIELDS = {"task", "metric", "verdict", "delta", "delta_ci_low", "delta_ci_high", "p_value", "p_holm",
                  "n_paired", "mde"}


def cli(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evalharness.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def t_ci(d: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired differences and its 95% t interval, from the SD (ddof 1)."""
    m, se = float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))
    half = float(st.t.ppf(0.975, d.size - 1)) * se
    return m, m - half, m + half


def t_p(d: np.ndarray) -> float:
    return float(2 * st.t.sf(abs(d.mean()) / (d.std(ddof=1) / math.sqrt(d.size)), d.size - 1))


def rows_of(out: str) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["model"], r["task"], r["metric"]): r for r in json.loads(out)["rows"]}


# ---------------------------------------------------------------- runs built through the store API
def sentiment_run(root: Path, run_id: str, values: dict[str, dict[str, list[float]]], *,
                  task_version: str = "1;prompts=constructed", finished_at: str = "2026-01-01T00:00:00Z",
                  models: list[dict[str, Any]] | None = None, higher_is_better: bool | None = True) -> Path:
    """A finished sentiment run: per model, prompt id -> per-sample rewards, as verdicts and clustered scores
    (the mean over prompts of the per-prompt mean, t interval over prompts, as the task computes them)."""
    manifest = {"run_id": run_id, "kind": "eval", "schema_version": 2,
                "config": {"constructed": run_id}, "tasks": {"sentiment": {"module": "evalharness.tasks.sentiment",
                                                                           "version": "1"}},
                "models": models or [{"name": m, "spec": m} for m in values]}
    store = RunStore.open(run_id, manifest, root)
    scores = []
    for model, per_prompt in values.items():
        store.add_verdicts([Verdict(item_id=p, judge_id="vader", judge_version="v", status="ok", value=x,
                                    sample_index=k, meta={"n_tokens": 10}, task="sentiment", model=model,
                                    key=f"{p}#{k}") for p, xs in per_prompt.items() for k, x in enumerate(xs)])
        m, se, lo, hi = mean_ci([float(np.mean(xs)) for xs in per_prompt.values()])
        keys = dict(task="sentiment", model=model, task_version=task_version, judge_id="vader", judge_version="v",
                    decoding={"temperature": 1.0})
        scores.append(Score(metric="sentiment", value=m, n=sum(map(len, per_prompt.values())), stderr=se,
                            ci_low=lo, ci_high=hi, higher_is_better=higher_is_better, **keys))
    store.finish(scores, {"run_id": run_id, "scores": [s.to_dict() for s in scores]}, finished_at)
    return store.path


def base_values(seed: int = 0, prompts: int = 40) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.2, 0.8, prompts)  # prompts differ a lot: pairing removes this
    return {f"p{i}": list(np.clip(level[i] + rng.normal(0, 0.05, 2), 0, 1)) for i in range(prompts)}


def shifted(values: dict[str, list[float]], shift: float, noise: float = 0.0, seed: int = 1) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {p: [x + shift + rng.normal(0, noise) for x in xs] for p, xs in values.items()}


# ---------------------------------------------------------------- (a) official AlpacaEval annotations
def _prefs(path: Path) -> dict[str, float]:
    return {r["instruction"]: float(r["preference"]) for r in json.loads(path.read_text())
            if r.get("preference") is not None and not (isinstance(r["preference"], float) and math.isnan(r["preference"]))}


def _import(bench: str, path: Path, results: Path) -> str:
    p = cli("metrics", bench, path, "--save", "--results-dir", results)
    assert p.returncode == 0, p.stderr
    return Path(p.stderr.strip().splitlines()[-1].split("imported into ")[1]).name


def test_alpaca_eval_official_annotations_paired_by_hand(tmp_path: Path, benchdata: Path) -> None:
    files = {m: benchdata / "alpaca_eval" / "results" / m / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
             for m in ("claude-2.1", "gpt-3.5-turbo-1106")}
    res = tmp_path / "results"
    runs = {m: _import("alpaca-eval", f, res) for m, f in files.items()}
    p = cli("compare", runs["gpt-3.5-turbo-1106"], runs["claude-2.1"], "--against", "claude-2.1", "--format", "json",
            "--metrics", "win_rate,discrete_win_rate", "--results-dir", res)
    assert p.returncode == 0, p.stderr
    rows = rows_of(p.stdout)

    pa, pb = _prefs(files["gpt-3.5-turbo-1106"]), _prefs(files["claude-2.1"])
    shared = [k for k in pa if k in pb]
    d = 100 * (np.array([pa[k] for k in shared]) - np.array([pb[k] for k in shared]))
    delta, lo, hi = t_ci(d)
    wr = rows[("gpt-3.5-turbo-1106", "alpaca_eval", "win_rate")]
    assert wr["n_paired"] == len(shared) == 805 and wr["n_only_model"] == wr["n_only_against"] == 0
    assert wr["delta"] == pytest.approx(delta, abs=1e-9)
    assert (wr["delta_ci_low"], wr["delta_ci_high"]) == pytest.approx((lo, hi), abs=1e-9)
    assert wr["p_value"] == pytest.approx(t_p(d), rel=1e-6)
    # The table's values are the two models' official win rates: their difference is the unpaired one here.
    ref = rows[("claude-2.1", "alpaca_eval", "win_rate")]
    assert wr["value"] - ref["value"] == pytest.approx(delta, abs=1e-9)  # every instruction is shared
    assert ref["ci_low"] < ref["value"] < ref["ci_high"]  # the official SE as a 95% interval

    # Discrete win rate: official convention (preference > 1.5 a win, = 1.5 half), exact McNemar on discordant pairs.
    disc = lambda x: 1.0 if x > 1.5 else 0.5 if x == 1.5 else 0.0  # noqa: E731
    xa, xb = np.array([disc(pa[k]) for k in shared]), np.array([disc(pb[k]) for k in shared])
    up, down = int((xa > xb).sum()), int((xa < xb).sum())
    dw = rows[("gpt-3.5-turbo-1106", "alpaca_eval", "discrete_win_rate")]
    assert dw["delta"] == pytest.approx(100 * (xa - xb).mean(), abs=1e-9)
    assert dw["p_value"] == pytest.approx(st.binomtest(up, up + down, 0.5).pvalue, rel=1e-9)
    assert dw["method"] == "exact McNemar"
    # Holm over the table's two tests: the smaller p doubled, the larger max(itself, that).
    ps = sorted([wr["p_value"], dw["p_value"]])
    assert sorted([wr["p_holm"], dw["p_holm"]]) == pytest.approx([min(1, 2 * ps[0]), min(1, max(2 * ps[0], ps[1]))])

    # regress: the same paired difference gates claude-2.1 -> gpt-3.5 as a significant drop.
    p = cli("regress", "--baseline", "claude-2.1", "--candidate", "gpt-3.5-turbo-1106", "--metrics",
            "alpaca_eval/win_rate", "--json", "--results-dir", res)
    assert p.returncode == 1, p.stderr
    [gate] = json.loads(p.stdout)
    assert REGRESS_FIELDS <= set(gate) and gate["verdict"] == "FAIL"
    assert gate["delta"] == pytest.approx(delta, abs=1e-9) and gate["n_paired"] == 805
    assert gate["p_holm"] == pytest.approx(t_p(d) / 2, rel=1e-6)  # one-sided, one metric
    # ... and the other way round it passes (the lower CI bound of the gain is above 0). Without --metrics the
    # gate checks every headline metric with a direction: an imported win rate is higher-is-better.
    p = cli("regress", "--baseline", "gpt-3.5-turbo-1106", "--candidate", "claude-2.1", "--json", "--results-dir", res)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [(r["metric"], r["verdict"]) for r in json.loads(p.stdout)] == [("win_rate", "PASS")]


# ---------------------------------------------------------------- (b) official MT-Bench judgments
def test_mt_bench_official_judgments_paired_by_hand(tmp_path: Path, benchdata: Path) -> None:
    folder = benchdata / "mt_bench" / "model_judgment" / "official_derived"
    res = tmp_path / "results"
    runs = {m: _import("mt-bench", folder / f"gpt-4_single.scores.{m}.tsv", res) for m in ("gpt-4", "alpaca-13b")}
    p = cli("compare", runs["alpaca-13b"], runs["gpt-4"], "--against", "gpt-4", "--format", "json",
            "--metrics", "mt_bench/score,mt_bench/turn1,mt_bench/turn2", "--results-dir", res)
    assert p.returncode == 0, p.stderr
    rows = rows_of(p.stdout)
    ratings: dict[str, dict[tuple[str, int], float]] = {}
    for m in ("gpt-4", "alpaca-13b"):
        lines = (folder / f"gpt-4_single.scores.{m}.tsv").read_text().splitlines()
        head = lines[0].split("\t")
        ratings[m] = {(r[head.index("question_id")], int(r[head.index("turn")])): float(r[head.index("score")])
                      for r in (ln.split("\t") for ln in lines[1:]) if float(r[head.index("score")]) != -1}
    a, b = ratings["alpaca-13b"], ratings["gpt-4"]
    shared = [k for k in a if k in b]
    per_q: dict[str, list[float]] = defaultdict(list)
    for q, t in shared:
        per_q[q].append(a[(q, t)] - b[(q, t)])  # the mean of paired differences = the difference of the means
    d = np.array([np.mean(v) for v in per_q.values()])
    delta, lo, hi = t_ci(d)
    score = rows[("alpaca-13b", "mt_bench", "score")]
    assert score["n_paired"] == len(per_q) == 80
    assert score["delta"] == pytest.approx(delta, abs=1e-12) and score["p_value"] == pytest.approx(t_p(d), rel=1e-6)
    assert (score["delta_ci_low"], score["delta_ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    for turn in (1, 2):
        dt = np.array([a[(q, t)] - b[(q, t)] for q, t in shared if t == turn])
        r = rows[("alpaca-13b", "mt_bench", f"turn{turn}")]
        assert r["delta"] == pytest.approx(dt.mean(), abs=1e-12) and r["n_paired"] == dt.size
        assert r["delta_ci_low"] == pytest.approx(t_ci(dt)[1], abs=1e-12)


# ---------------------------------------------------------------- (c) our own runs
@pytest.fixture
def own_run(tmp_path: Path) -> Path:
    """A fake-backend eval run: models a and b on the sentiment task, 8 prompts x 2 samples."""
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(8)],
                            tmp_path / "prompts.jsonl")
    return run_eval(EvalConfig(models=["a", "b"], prompts=str(prompts), judges=["sentiment"], backend="fake", n=2,
                               max_new_tokens=16, results_dir=str(tmp_path / "results"), progress=False)).run_dir


def test_own_run_delta_from_verdicts_and_every_format(own_run: Path) -> None:
    p = cli("compare", own_run, "--against", "a", "--format", "json")
    assert p.returncode == 0, p.stderr
    rows = rows_of(p.stdout)
    per: dict[str, dict[str, list[float]]] = {"a": defaultdict(list), "b": defaultdict(list)}
    for v in read_jsonl(own_run / "verdicts.jsonl"):
        if v["task"] == "sentiment" and v["status"] == "ok":
            per[v["model"]][v["item_id"]].append(v["value"])
    d = np.array([np.mean(per["b"][k]) - np.mean(per["a"][k]) for k in per["a"]])
    delta, lo, hi = t_ci(d)
    r = rows[("b", "sentiment", "sentiment")]
    assert JSON_CELL | JSON_DELTA <= set(r) and r["n_paired"] == 8 and r["n"] == 16
    assert r["delta"] == pytest.approx(delta, abs=1e-12) and r["p_value"] == pytest.approx(t_p(d), rel=1e-9)
    assert (r["delta_ci_low"], r["delta_ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
    assert r["mde"] > 0 and r["p_holm"] >= r["p_value"]
    assert JSON_CELL <= set(rows[("a", "sentiment", "sentiment")])
    assert not JSON_DELTA & set(rows[("a", "sentiment", "sentiment")])  # the reference row has no Δ
    # length: one column, the same hand computation over n_tokens.
    lens = {m: defaultdict(list) for m in ("a", "b")}
    for g in read_jsonl(own_run / "generations.jsonl"):
        lens[g["model"]][g["item_id"]].append(g["n_tokens"])
    dl = np.array([np.mean(lens["b"][k]) - np.mean(lens["a"][k]) for k in lens["a"]])
    assert rows[("b", "sentiment", "length")]["delta"] == pytest.approx(dl.mean(), abs=1e-12)

    latex = cli("compare", own_run, "--against", "a", "--format", "latex").stdout
    assert latex.index(r"\toprule") < latex.index(r"\midrule") < latex.index(r"\bottomrule")
    assert r"\begin{tabular}" in latex and r"$\Delta$" in latex and latex.count(r"\\") == 3  # header + 2 rows
    md = [ln for ln in cli("compare", own_run, "--against", "a", "--format", "markdown").stdout.splitlines()
          if ln.startswith("|")]
    assert len(md) == 4 and set(md[1].replace("|", "")) == {"-"}
    assert len({ln.count("|") for ln in md}) == 1  # every row has the header's cells
    assert f"{delta:+.3f}" in md[2 if md[2].startswith("| b") else 3]
    recs = list(csv.DictReader(io.StringIO(cli("compare", own_run, "--against", "a", "--format", "csv").stdout)))
    assert len(recs) == len(rows) and {(x["model"], x["metric"]) for x in recs} == {(m, t) for m, _, t in rows}
    assert float(next(x for x in recs if x["model"] == "b" and x["metric"] == "sentiment")["delta"]) == pytest.approx(delta)
    table = cli("compare", own_run, "--against", "a")
    assert table.returncode == 0 and "(reference)" in table.stdout and "Holm" in table.stdout


# ---------------------------------------------------------------- regress on constructed cases
def test_regress_verdicts_and_exit_codes(tmp_path: Path) -> None:
    root = tmp_path / "results"
    base = base_values()
    sentiment_run(root, "base", {"m": base})
    sentiment_run(root, "drop", {"m": shifted(base, -0.1)})  # a known drop of 0.1 on every sample
    sentiment_run(root, "noisy", {"m": shifted(base, 0.0, noise=0.05, seed=3)})
    args = ("--results-dir", root, "--json")

    p = cli("regress", "--baseline", "base:m", "--candidate", "base:m", *args)  # a model against itself
    assert p.returncode == 0, p.stderr
    [same] = json.loads(p.stdout)
    assert REGRESS_FIELDS <= set(same) and same["verdict"] == "PASS" and same["delta"] == 0.0
    assert same["n_paired"] == 40

    p = cli("regress", "--baseline", "base:m", "--candidate", "drop:m", *args)
    assert p.returncode == 1, p.stderr
    [drop] = json.loads(p.stdout)
    assert drop["verdict"] == "FAIL" and drop["delta"] == pytest.approx(-0.1, abs=1e-12)
    assert drop["delta_ci_low"] == pytest.approx(-0.1, abs=1e-9) and drop["p_holm"] < 0.05
    # Within a stated margin a drop passes: the CI's lower bound (-0.1) is above -0.15 ... but a significant
    # drop is a FAIL whatever the margin, so the margin only matters where the test does not reject.
    p = cli("regress", "--baseline", "base:m", "--candidate", "drop:m", "--margin", "sentiment/sentiment=0.15", *args)
    assert p.returncode == 1 and json.loads(p.stdout)[0]["verdict"] == "FAIL"

    p = cli("regress", "--baseline", "base:m", "--candidate", "noisy:m", *args)
    assert p.returncode == 0, p.stderr
    [noisy] = json.loads(p.stdout)
    diffs = np.array([np.mean(x) - np.mean(y) for x, y in zip(shifted(base, 0.0, noise=0.05, seed=3).values(),
                                                               base.values())])
    assert noisy["verdict"] == "INCONCLUSIVE" and noisy["delta"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert noisy["delta_ci_low"] < 0 < noisy["delta_ci_high"] and noisy["p_holm"] >= 0.05 and noisy["mde"] > 0
    assert cli("regress", "--baseline", "base:m", "--candidate", "noisy:m", "--strict", *args).returncode == 1
    text = cli("regress", "--baseline", "base:m", "--candidate", "noisy:m", "--results-dir", root)
    assert text.stdout.startswith("INCONCLUSIVE") and "MDE" in text.stdout
    p = cli("regress", "--baseline", "base:m", "--candidate", "noisy:m", "--margin",
            f"sentiment/sentiment={-noisy['delta_ci_low'] + 0.01}", "--strict", *args)
    assert p.returncode == 0 and json.loads(p.stdout)[0]["verdict"] == "PASS"

    # One shared prompt: no SE, no p-value: INCONCLUSIVE, printed and dumped without a number made up.
    sentiment_run(root, "one", {"m": {"p0": [0.5, 0.6]}})
    sentiment_run(root, "one-later", {"m": {"p0": [0.4, 0.5]}})
    p = cli("regress", "--baseline", "one:m", "--candidate", "one-later:m", "--results-dir", root)
    assert p.returncode == 0 and p.stdout.startswith("INCONCLUSIVE") and "n=1" in p.stdout, p.stdout + p.stderr
    [one] = json.loads(cli("regress", "--baseline", "one:m", "--candidate", "one-later:m", *args).stdout)
    assert one["p_holm"] is None and one["delta"] == pytest.approx(-0.1) and one["n_paired"] == 1

    sentiment_run(root, "undirected", {"m": base}, higher_is_better=None)
    for bad, says in ((("--baseline", "nope", "--candidate", "base:m"), "'nope'"),
                      (("--baseline", "undirected:m", "--candidate", "undirected:m"), "no metric to gate"),
                      (("--baseline", "base:m", "--candidate", "drop:m", "--rounds", "1"), "--rounds"),
                      (("--baseline", "base:m", "--candidate", "drop:m", "--margin", "sentiment/sentiment=lots"),
                       "--margin"),
                      (("--baseline", "base:m", "--candidate", "drop:m", "--margin", "sentiment/nothing=0.1"),
                       "sentiment/nothing"),
                      (("--baseline", "base:m", "--candidate", "drop:m", "--metrics", "kl/kl"), "kl/kl")):
        p = cli("regress", *bad, "--results-dir", root)
        assert p.returncode == 2, (bad, p.stdout, p.stderr)
        assert p.stderr.startswith("error:") and says in p.stderr and "Traceback" not in p.stderr


# ---------------------------------------------------------------- comparability and unpaired items
def test_incomparable_columns_refused_or_split(tmp_path: Path) -> None:
    res = tmp_path / "results"
    runs = []
    for name, rows, temperature in (("one", range(6), 1.0), ("two", range(3, 9), 1.0), ("cold", range(6), 0.7)):
        prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in rows],
                                tmp_path / f"{name}.jsonl")
        runs.append(run_eval(EvalConfig(models=["a"], prompts=str(prompts), judges=["sentiment"], backend="fake",
                                        temperature=temperature, max_new_tokens=8, results_dir=str(res),
                                        progress=False)).run_dir)
    for other, reason in ((runs[1], "task_version"), (runs[2], "decoding")):
        p = cli("compare", runs[0], other, "--results-dir", res)
        assert p.returncode == 2 and "not comparable" in p.stderr and reason in p.stderr, p.stderr
        assert "--allow-mixed" in p.stderr and "Traceback" not in p.stderr
        p = cli("compare", runs[0], other, "--allow-mixed", "--format", "json", "--results-dir", res)
        assert p.returncode == 0, p.stderr
        cols = {r["column"] for r in json.loads(p.stdout)["rows"] if r["metric"] == "sentiment"}
        assert len(cols) == 2 and all(f"[{reason}=" in c for c in cols)


def test_items_of_one_model_only_are_counted(tmp_path: Path) -> None:
    root = tmp_path / "results"
    a = base_values(prompts=10)
    b = {k: v for k, v in shifted(a, 0.05, noise=0.02).items() if k not in ("p1", "p4", "p7")}
    sentiment_run(root, "partial", {"a": a, "b": b})
    p = cli("compare", "partial", "--against", "a", "--format", "json", "--results-dir", root)
    assert p.returncode == 0, p.stderr
    r = rows_of(p.stdout)[("b", "sentiment", "sentiment")]
    assert r["n_paired"] == 7 and r["n_only_model"] == 0 and r["n_only_against"] == 3
    d = np.array([np.mean(b[k]) - np.mean(a[k]) for k in b])
    assert r["delta"] == pytest.approx(d.mean(), abs=1e-12)
    assert "unpaired 0+3" in cli("compare", "partial", "--against", "a", "--results-dir", root).stdout


# ---------------------------------------------------------------- history
def test_history_marks_a_constructed_drop_and_plots(tmp_path: Path) -> None:
    """The base, three checkpoints of one training run on the same prompts (the third drops by 0.1: marked,
    paired) and the first checkpoint of another run, tested against the base, not against the other run."""
    root = tmp_path / "results"
    base = base_values(prompts=30)
    sentiment_run(root, "sft", {"my-sft": base}, finished_at="2026-01-01T00:00:00Z")
    for run, step, values in (("dpo-beta0.1", 100, base), ("dpo-beta0.1", 200, shifted(base, 0.01, noise=0.02)),
                              ("dpo-beta0.1", 300, shifted(base, -0.1)), ("simpo-x", 100, shifted(base, -0.1))):
        ck = tmp_path / "ckpts" / run / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "evalharness_manifest.json").write_text(json.dumps(
            {"algorithm": run.split("-")[0], "step": step, "run_name": run, "base_model": "my-sft"}))
        name = f"{run}@{step}"
        sentiment_run(root, f"{run}-ck{step}", {name: values}, finished_at=f"2026-01-0{step // 100 + 1}T00:00:00Z",
                      models=[{"name": name, "spec": str(ck), "path": str(ck)}])
    plot = tmp_path / "trend"
    p = cli("history", "--model", "my-sft", "--task", "sentiment", "--metric", "sentiment", "--plot", plot,
            "--json", "--results-dir", root)
    assert p.returncode == 0, p.stderr
    points = json.loads(p.stdout)
    assert [(x["model"], x["step"]) for x in points] == [("my-sft", None), ("dpo-beta0.1@100", 100),
                                                          ("dpo-beta0.1@200", 200), ("dpo-beta0.1@300", 300),
                                                          ("simpo-x@100", 100)]
    assert [x["drop"] for x in points[1:]] == [False, False, True, True] and all(x["paired"] for x in points[1:])
    assert points[1]["delta_prev"] == 0.0 and points[4]["delta_prev"] == pytest.approx(-0.1, abs=1e-12)  # vs sft
    points = points[1:]
    assert points[2]["delta_prev"] == pytest.approx(-0.1 - np.mean([np.mean(v) for v in shifted(base, 0.01, noise=0.02).values()])
                                                    + np.mean([np.mean(v) for v in base.values()]), abs=1e-9)
    assert (tmp_path / "trend.png").stat().st_size > 0 and (tmp_path / "trend.svg").read_text().startswith("<?xml")
    text = cli("history", "--model", "my-sft", "--results-dir", root).stdout
    assert text.splitlines()[0] == "sentiment/sentiment" and text.count("DROP") == 2 and "(paired)" in text
    p = cli("history", "--model", "nobody", "--results-dir", root)
    assert p.returncode == 2 and p.stderr.startswith("error:")


def _sweep_spec(tmp_path: Path, model: Path) -> Path:
    words = ["write a short review", "review the movie", "write about the story", "the acting"]
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": w}]} for i, w in enumerate(words)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""\
name: tiny-history
base: {model}
data:
  on_policy: {{prompts: ./prompts.jsonl, judge: sentiment, k: 4, max_new_tokens: 8}}
train: {{learning_rate: 1.0e-2, max_steps: 2, batch_size: 2, save_every: 1, warmup_ratio: 0.0}}
algorithms:
  dpo: {{beta: 0.1}}
seeds: [0]
eval: {{prompts: ./prompts.jsonl, judges: [sentiment, kl], max_new_tokens: 8}}
""")
    return spec


def test_history_over_a_sweeps_checkpoints(tmp_path: Path, tiny_model: Path) -> None:
    from evalharness.workflows.sweep import load_train_spec, run_sweep
    spec, runs = load_train_spec(_sweep_spec(tmp_path, tiny_model))
    root = tmp_path / "results"
    res = run_sweep(spec, runs, results_dir=root, progress=False)
    [run_dir] = set(res.eval_runs.values())
    plot = tmp_path / "sweep-trend"
    p = cli("history", "--model", tiny_model, "--task", "sentiment", "--metric", "sentiment", "--plot", plot,
            "--json", "--results-dir", root)
    assert p.returncode == 0, p.stderr
    points = json.loads(p.stdout)
    scores = {s.model: s.value for s in RunStore(run_dir).scores() if s.metric == "sentiment"}
    # the base and its two checkpoints, oldest step first, each with its stored value and a paired drop test
    assert [x["step"] for x in points if x["algorithm"] == "dpo"] == [1, 2]
    assert {x["model"]: x["value"] for x in points} == scores and len(points) == 3
    assert all(x["paired"] and x["drop_p"] is not None for x in points[1:])
    # each checkpoint's point carries its training run's own logged loss at that step (the run is in the index)
    logged = {r["step"]: r["loss"] for r in read_jsonl(next((root / "train").glob("*/dpo*")) / "metrics.jsonl")}
    assert [x["training"]["loss"] for x in points if x["algorithm"] == "dpo"] == [logged[1], logged[2]]
    text = cli("history", "--model", tiny_model, "--task", "sentiment", "--metric", "sentiment", "--results-dir", root)
    assert "training run dpo" in text.stdout and "reward accuracy" in text.stdout
    assert [f.suffix for f in (tmp_path / "sweep-trend.png", tmp_path / "sweep-trend.svg") if f.stat().st_size] == \
        [".png", ".svg"]
    # the sweep's table against SFT is this module's table
    p = cli("compare", run_dir, "--against", "sft", "--format", "json", "--results-dir", root)
    assert p.returncode == 0, p.stderr
    steps = {r["model"]: r["step"] for r in json.loads(p.stdout)["rows"] if r["metric"] == "sentiment"}
    assert steps == {"sft": None, "dpo-beta0.1-s0@1": 1, "dpo-beta0.1-s0@2": 2}


# ---------------------------------------------------------------- no winner's curse
def _noisy_copy(src: Path, dst: Path, *, std: float, seed: int) -> Path:
    from transformers import AutoModelForCausalLM
    import torch
    shutil.copytree(src, dst)
    if std:
        model = AutoModelForCausalLM.from_pretrained(dst)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for w in model.parameters():
                w.add_(torch.randn(w.shape, generator=gen) * std)
        model.save_pretrained(dst)
    return dst


def test_no_winners_curse_copy_and_noise_checkpoints_do_not_beat_sft(tmp_path: Path, tiny_model: Path) -> None:
    sft = tiny_model
    cks = [_noisy_copy(sft, tmp_path / "copy", std=0.0, seed=0)]
    cks += [_noisy_copy(sft, tmp_path / f"noise{k}", std=0.02, seed=k) for k in range(1, 5)]
    words = ["the movie was", "the plot is", "the acting", "the music", "this review", "the story is",
             "it is not", "the cast", "a short review", "an fun story", "the music is", "the plot was"]
    prompts = write_prompts([{"id": f"q{i}", "prompt": w} for i, w in enumerate(words)], tmp_path / "p.jsonl")
    run = run_eval(EvalConfig(models=[str(sft), *map(str, cks)], prompts=str(prompts), judges=["sentiment"],
                              n=2, max_new_tokens=8, results_dir=str(tmp_path / "results"), progress=False)).run_dir
    table = compare.build_table(compare.resolve([str(run)], tmp_path / "results"), against=str(sft),
                                metrics=["sentiment/sentiment"])
    copy_cell = table.cells[(1, 0)]
    assert copy_cell.paired.delta == 0.0 and copy_cell.paired.n_paired == len(words)  # same weights, same samples
    noise = [table.cells[(i, 0)].paired for i in range(2, 6)]
    assert all(r.delta != 0.0 for r in noise)  # the noise changes the samples: k real tests to correct for
    v = compare.best_checkpoint(table, "sentiment")
    assert v is not None and v["k_checkpoints"] == 5 and v["beats_sft"] is False
    # The correction is over the 5 checkpoints: the chosen one's p is Holm-adjusted, never below its raw p.
    assert v["p_holm_over_checkpoints"] >= v["paired_delta"]["p_value"]
    assert "Holm-adjusted over the 5 checkpoint tests" in v["selection"]
    assert "does NOT clearly beat" in compare.verdict_line(v)
