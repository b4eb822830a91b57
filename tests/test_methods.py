"""Method-level comparison across training seeds (issue 20, point 1).

Runs are built through the real store (test_compare's ``sentiment_run``), their checkpoints described by
manifests as training writes them. The estimator is checked against the classical two-way ANOVA expected
mean squares computed in plain Python with scipy's t, and its coverage by simulation against the truth.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as st
from test_compare import cli, sentiment_run
from test_html_report import _open, browser  # noqa: F401  (the headless Chromium fixture)

from evalharness.analysis.compare import build_table, resolve
from evalharness.analysis.methods import UNSUPPORTED, build_methods, parse_groups, render_methods
from evalharness.core.errors import InputError
from evalharness.core.method_stats import method_difference, method_mean
from evalharness.core.stats import holm


# ---------------------------------------------------------------- the estimator, by an independent route
def anova_by_hand(y: list[list[float]]) -> tuple[float, float, float]:
    """Grand mean, its variance and Satterthwaite df from the two-way ANOVA mean squares (Searle, Casella and
    McCulloch, ch. 4): Var(grand mean) = (MS_seed + MS_prompt - MS_res) / (S n), loops in plain Python."""
    S, n = len(y), len(y[0])
    g = sum(map(sum, y)) / (S * n)
    row = [sum(r) / n for r in y]
    col = [sum(y[s][i] for s in range(S)) / S for i in range(n)]
    ms_s = n * sum((r - g) ** 2 for r in row) / (S - 1)
    ms_p = S * sum((c - g) ** 2 for c in col) / (n - 1)
    ms_r = sum((y[s][i] - row[s] - col[i] + g) ** 2 for s in range(S) for i in range(n)) / ((S - 1) * (n - 1))
    var = (ms_s + ms_p - ms_r) / (S * n)
    df = (ms_s + ms_p - ms_r) ** 2 / (ms_s**2 / (S - 1) + ms_p**2 / (n - 1) + ms_r**2 / ((S - 1) * (n - 1)))
    return g, var, df


def test_method_mean_matches_the_anova_route_and_scipy_t() -> None:
    y = [[0.61, 0.35, 0.80, 0.52, 0.47], [0.70, 0.41, 0.86, 0.55, 0.60], [0.58, 0.30, 0.77, 0.49, 0.42]]
    g, var, df = anova_by_hand(y)
    r = method_mean(np.array(y))
    half = st.t.ppf(0.975, df) * math.sqrt(var)
    assert float(r.estimate) == pytest.approx(g, abs=1e-12)
    assert float(r.se) == pytest.approx(math.sqrt(var), rel=1e-10) and float(r.df) == pytest.approx(df, rel=1e-10)
    assert (float(r.ci_low), float(r.ci_high)) == pytest.approx((g - half, g + half), rel=1e-10)
    assert float(r.p_value) == pytest.approx(2 * st.t.sf(g / math.sqrt(var), df), rel=1e-10)


def test_method_difference_matches_a_hand_computation() -> None:
    """Seed means' variances per method, the per-prompt differences' variance, minus each residual MS / (S n)."""
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, (3, 8)) + rng.normal(0, 1, (3, 1))
    b = rng.normal(0.5, 1, (2, 8)) + rng.normal(0, 1, (2, 1))
    va = np.var([r.mean() for r in a], ddof=1) / 3
    vb = np.var([r.mean() for r in b], ddof=1) / 2
    vd = np.var(a.mean(0) - b.mean(0), ddof=1) / 8
    # each method's residual mean square over (S n), in loops
    res = [
        sum((x[s][i] - x[s].mean() - x[:, i].mean() + x.mean()) ** 2 for s in range(len(x)) for i in range(8))
        / ((len(x) - 1) * 7)
        / (len(x) * 8)
        for x in (a, b)
    ]
    var = max(va + vb + vd - res[0] - res[1], va + vb, vd)
    terms = [(va, 2), (vb, 1), (vd, 7), (res[0], 14), (res[1], 7)]
    df = (va + vb + vd - res[0] - res[1]) ** 2 / sum(v**2 / d for v, d in terms)
    r = method_difference(a, b)
    delta = a.mean() - b.mean()
    assert float(r.estimate) == pytest.approx(delta, abs=1e-12) and float(r.se) ** 2 == pytest.approx(var, rel=1e-10)
    assert var == va + vb + vd - res[0] - res[1]  # no floor in this example: the df is Satterthwaite's
    assert float(r.df) == pytest.approx(max(df, 1.0), rel=1e-10)
    assert float(r.p_value) == pytest.approx(2 * st.t.sf(abs(delta) / math.sqrt(var), float(r.df)), rel=1e-10)


def test_no_variation_gives_a_zero_width_interval_not_nan() -> None:
    """Every response at the token cap (a constant length): CI [x, x], p 1 for equal methods, 0 otherwise
    (as ``stats.t_p_value`` for a zero SE), never NaN (which the bundled sweep once wrote as null)."""
    y = np.full((3, 8), 8.0)
    m, same, apart = method_mean(y), method_difference(y, y), method_difference(y + 1, y)
    assert (float(m.ci_low), float(m.ci_high), float(m.df)) == (8.0, 8.0, 1.0)
    assert (float(same.p_value), float(apart.p_value), float(apart.ci_low)) == (1.0, 0.0, 1.0)


# ---------------------------------------------------------------- coverage by simulation
def _coverage_script() -> Any:
    """benchmarks/method_coverage.py, whose figures docs/methods.md prints: the test runs the same simulation."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "method_coverage.py"
    spec = importlib.util.spec_from_file_location("method_coverage", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("scenario", ["issue", "seed-heavy"])
def test_method_ci_covers_at_its_nominal_rate_where_the_checkpoint_ci_does_not(scenario: str) -> None:
    """2000 simulated experiments at 3 seeds (known seed, prompt and interaction SDs, true difference 2): the
    method CIs cover the truth at least 93% of the time; a one-seed checkpoint CI far less often."""
    sim = _coverage_script()
    cov = sim.simulate(3, sim.SCENARIOS[scenario])
    assert cov["method mean"] >= 0.93 and cov["method diff"] >= 0.93
    assert cov["checkpoint diff"] < 0.75 and cov["checkpoint mean"] < 0.85


def test_a_two_seed_hierarchical_bootstrap_is_too_narrow() -> None:
    """Resampling 2 seeds gives 3 distinct seed sets: the percentile interval of the difference undercovers."""
    sim = _coverage_script()
    cov = sim.simulate(2, sim.SCENARIOS["seed-heavy"], experiments=300, rounds=200, seed=1)
    assert cov["bootstrap diff"] < 0.88 and cov["method diff"] >= 0.92


# ---------------------------------------------------------------- grouping from manifests, through the store
def _checkpoint(root: Path, algorithm: str, seed: int, step: int = 8, **hp: Any) -> dict[str, Any]:
    run = f"{algorithm}-" + "".join(f"{k}{v}" for k, v in hp.items()) + f"-s{seed}"
    ck = root / "ckpts" / run / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "evalharness_manifest.json").write_text(
        json.dumps(
            {
                "algorithm": algorithm,
                "step": step,
                "run_name": run,
                "base_model": "sft",
                "hparams": hp,
                "data": {"hash": "d1"},
                "train_config": {"algorithm": algorithm, "seed": seed, "lr": 1e-5, "hparams": hp},
            }
        )
    )
    return {"name": f"{run}@{step}", "spec": str(ck), "path": str(ck)}


TWO = (("dpo", 0.0, {"beta": 0.1}), ("simpo", 0.1, {"gamma": 0.5}))


def sweep_run(root: Path, seeds: list[int], *, algos: Any = TWO, seed_sd: float = 0.02, prompts: int = 30) -> Path:
    """sft and each (algorithm, true shift, hyperparameters) of ``algos`` with ``seeds``, one shared prompt set."""
    rng = np.random.default_rng(7)
    level = rng.uniform(0.2, 0.8, prompts)
    models = [{"name": "sft", "spec": "sft"}]
    values = {"sft": {f"p{i}": [level[i]] for i in range(prompts)}}
    for algo, shift, hp in algos:
        for s in seeds:
            m = _checkpoint(root, algo, s, **hp)
            models.append(m)
            off = shift + rng.normal(0, seed_sd)
            values[m["name"]] = {f"p{i}": list(level[i] + off + rng.normal(0, 0.05, 2)) for i in range(prompts)}
    return sentiment_run(root / "results", "sweep-eval", values, models=models)


def test_grouping_from_manifests_and_the_stats_from_the_files(tmp_path: Path) -> None:
    path = sweep_run(tmp_path, [0, 1, 2])
    table = build_table(resolve([str(path)]), against="sft")
    mt = build_methods(table)
    assert mt is not None and mt.supported
    assert [(m.name, m.seeds) for m in mt.methods] == [("dpo-beta0.1@8", [0, 1, 2]), ("simpo-gamma0.5@8", [0, 1, 2])]
    # the per-prompt sample means, read back from the stored verdicts, through the ANOVA route and scipy's t
    y = {}
    for m in mt.methods:
        y[m.name] = []
        for i in m.rows:
            per: dict[str, list[float]] = {}
            for v in table.rows[i].store.verdicts("sentiment", table.rows[i].model):
                per.setdefault(v.item_id, []).append(v.value)
            y[m.name].append([np.mean(per[f"p{k}"]) for k in range(30)])
    g, var, df = anova_by_hand(y["dpo-beta0.1@8"])
    cell = mt.cells[(0, 0)]
    assert cell.result is not None and float(cell.result.estimate) == pytest.approx(g, abs=1e-12)
    assert float(cell.result.se) ** 2 == pytest.approx(var, rel=1e-9) and float(cell.result.df) == pytest.approx(df)
    half = st.t.ppf(0.975, df) * math.sqrt(var)
    assert (cell.result.ci_low, cell.result.ci_high) == pytest.approx((g - half, g + half), rel=1e-9)
    (c,) = mt.comparisons
    assert (mt.methods[c.a].name, mt.methods[c.b].name) == ("simpo-gamma0.5@8", "dpo-beta0.1@8")
    ref = method_difference(np.array(y["simpo-gamma0.5@8"]), np.array(y["dpo-beta0.1@8"]))
    assert c.result is not None and float(c.result.estimate) == pytest.approx(float(ref.estimate), abs=1e-12)
    assert c.significant and c.p_holm == pytest.approx(float(ref.p_value))
    text = render_methods(mt)
    assert "simpo-gamma0.5@8 vs dpo-beta0.1@8 on sentiment: simpo-gamma0.5@8 is better" in text
    assert UNSUPPORTED not in text


def test_one_seed_says_unsupported_in_text_and_json(tmp_path: Path) -> None:
    path = sweep_run(tmp_path, [0])
    p = cli("compare", path, "--against", "sft", "--results-dir", tmp_path / "results")
    assert p.returncode == 0, p.stderr
    assert UNSUPPORTED in p.stdout and "is better" not in p.stdout
    assert "simpo-gamma0.5-s0@8" in p.stdout  # the checkpoint-level rows are there
    p = cli("compare", path, "--against", "sft", "--format", "json", "--results-dir", tmp_path / "results")
    out = json.loads(p.stdout)
    assert out["methods"]["supported"] is False and out["methods"]["message"] == UNSUPPORTED
    assert out["methods"]["comparisons"] == [] and out["methods"]["verdicts"] == [f"method-level: {UNSUPPORTED}"]
    assert {(m["method"], m["n_seeds"], m["mean"], m["why_not"]) for m in out["methods"]["methods"]} == {
        (name, 1, None, "seed variance unknown") for name in ("dpo-beta0.1@8", "simpo-gamma0.5@8")
    }
    assert {r["model"] for r in out["rows"]} >= {"dpo-beta0.1-s0@8", "simpo-gamma0.5-s0@8"}


def test_three_seeds_through_the_cli_with_holm_by_hand(tmp_path: Path) -> None:
    path = sweep_run(tmp_path, [0, 1, 2], algos=(*TWO, ("ipo", 0.02, {"tau": 0.1})))
    p = cli("compare", path, "--against", "sft", "--format", "json", "--results-dir", tmp_path / "results")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)["methods"]
    comps = out["comparisons"]
    assert [(c["method"], c["against"]) for c in comps] == [
        ("simpo-gamma0.5@8", "dpo-beta0.1@8"),
        ("ipo-tau0.1@8", "dpo-beta0.1@8"),
        ("ipo-tau0.1@8", "simpo-gamma0.5@8"),
    ]
    ps = [c["p_value"] for c in comps if c["p_value"] is not None]
    m = len(ps)
    order = sorted(range(m), key=lambda k: ps[k])
    hand = [0.0] * m
    running = 0.0
    for rank, k in enumerate(order):  # Holm step-down by hand
        running = max(running, min(1.0, (m - rank) * ps[k]))
        hand[k] = running
    got = [c["p_holm"] for c in comps if c["p_value"] is not None]
    assert got == pytest.approx(hand) and got == pytest.approx(holm(ps))
    assert len(out["verdicts"]) == 3 and all(" vs " in v and "Holm p" in v for v in out["verdicts"])
    text = cli("compare", path, "--against", "sft", "--results-dir", tmp_path / "results").stdout
    assert "method mean sentiment" in text and "Δ method sentiment" in text


def test_explicit_grouping_and_bad_input(tmp_path: Path) -> None:
    path = sweep_run(tmp_path, [0, 1])
    table = build_table(resolve([str(path)]))
    groups = parse_groups(["A=dpo-beta0.1-s0@8,dpo-beta0.1-s1@8", "B=simpo-gamma0.5-s0@8,simpo-gamma0.5-s1@8"])
    mt = build_methods(table, groups=groups, against="A")
    assert mt is not None and [m.name for m in mt.methods] == ["A", "B"] and mt.comparisons[0].a == 1
    yaml_file = tmp_path / "methods.yaml"
    yaml_file.write_text("A: [dpo-beta0.1-s0@8, dpo-beta0.1-s1@8]\nB: [simpo-gamma0.5-s0@8]\n")
    assert parse_groups([str(yaml_file)]) == {
        "A": ["dpo-beta0.1-s0@8", "dpo-beta0.1-s1@8"],
        "B": ["simpo-gamma0.5-s0@8"],
    }
    with pytest.raises(InputError, match="--methods"):
        parse_groups(["A"])
    with pytest.raises(InputError, match="names 0 rows"):
        build_methods(table, groups={"A": ["nope"]})
    p = cli("compare", path, "--methods", "A=nope", "--results-dir", tmp_path / "results")
    assert p.returncode == 2 and "nope" in p.stderr and "Traceback" not in p.stderr
    # two seeds against one: the one-seed side has no interval and the pair is not compared
    mixed = build_methods(table, groups={"A": ["dpo-beta0.1-s0@8", "dpo-beta0.1-s1@8"], "B": ["simpo-gamma0.5-s0@8"]})
    assert mixed is not None and mixed.supported and mixed.cells[(1, 0)].result is None
    assert mixed.cells[(0, 0)].result is not None
    assert render_methods(mixed).count("not compared (seed variance unknown)") == 1
    with pytest.raises(InputError, match="--method-against"):
        build_methods(build_table(resolve([str(path) + ":sft"])), against="A")


# ---------------------------------------------------------------- sweeps with seeds end in method rows
def _seed_sweep(tmp_path: Path, base: Path | str, seeds: list[int], steps: int = 2) -> Path:
    words = [
        "write a short review",
        "review the movie",
        "write about the story",
        "continue this review",
        "the acting",
        "the music",
        "the ending",
        "the director",
    ]
    prompts = [{"id": f"q{i}", "messages": [{"role": "user", "content": w}]} for i, w in enumerate(words)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    spec = tmp_path / f"seeds{len(seeds)}.yaml"
    spec.write_text(f"""\
name: seed-sweep-{len(seeds)}
base: {base}
data:
  on_policy: {{prompts: ./prompts.jsonl, judge: sentiment, k: 4, max_new_tokens: 8}}
train: {{learning_rate: 1.0e-2, max_steps: {steps}, batch_size: 2, save_every: {steps}, warmup_ratio: 0.0}}
algorithms:
  dpo: {{beta: 0.1}}
  simpo: {{gamma: 0.5}}
seeds: {seeds}
eval: {{prompts: ./prompts.jsonl, judges: [sentiment, kl], max_new_tokens: 8, checkpoints: final}}
""")
    return spec


def _check_sweep(spec_path: Path, results: Path, seeds: int) -> None:
    from evalharness.workflows.sweep import load_train_spec, run_sweep

    spec, runs = load_train_spec(spec_path)
    res = run_sweep(spec, runs, results_dir=results, progress=False)
    mt = res.methods
    assert mt is not None and [len(m.rows) for m in mt.methods] == [seeds, seeds]
    assert [m.algorithm for m in mt.methods] == ["dpo", "simpo"]
    saved = json.loads((res.path / "comparison.json").read_text())["methods"]
    text = render_methods(mt)
    if seeds == 1:
        assert not mt.supported and saved["message"] == UNSUPPORTED and UNSUPPORTED in text
        return
    assert mt.supported and saved["comparisons"] and all(m["ci_low"] is not None for m in saved["methods"])
    verdict = [v for v in saved["verdicts"] if " on sentiment:" in v]
    assert len(verdict) == 1 and verdict[0].startswith("simpo-gamma0.5@") and " vs dpo-beta0.1@" in verdict[0]
    assert ("is better" in verdict[0]) or ("no significant difference" in verdict[0] and "MDE" in verdict[0])


@pytest.mark.slow  # two sweeps: 45 s on the shared 2-core machine
def test_a_tiny_sweep_with_three_seeds_ends_in_method_rows(tmp_path: Path, tiny_model: Path) -> None:
    _check_sweep(_seed_sweep(tmp_path, tiny_model, [0, 1, 2]), tmp_path / "results", 3)
    _check_sweep(_seed_sweep(tmp_path, tiny_model, [0]), tmp_path / "results", 1)


@pytest.mark.slow
def test_bundled_sweep_dpo_vs_simpo_three_seeds_then_one(tmp_path: Path) -> None:
    """The issue's "done": 3 seeds of DPO and SimPO on the bundled model end in method rows with a verdict;
    with one seed the same sweep says the method-level claim is unsupported."""
    _check_sweep(_seed_sweep(tmp_path, "smollm2-135m-instruct", [0, 1, 2], steps=2), tmp_path / "results", 3)
    _check_sweep(_seed_sweep(tmp_path, "smollm2-135m-instruct", [0], steps=2), tmp_path / "results", 1)


def test_report_and_tracker_rows_carry_the_method_section(tmp_path: Path) -> None:
    """The HTML report's data and the trackers' ``methods`` table are the same section as compare's."""
    from evalharness.analysis.html_report import report_data
    from evalharness.analysis.methods import method_records, method_rows

    path = sweep_run(tmp_path, [0, 1, 2])
    data = report_data([str(path)], against="sft", results_dir=tmp_path / "results")
    table = build_table(resolve([str(path)]), against="sft")
    mt = build_methods(table)
    assert mt is not None
    text = render_methods(mt)
    means, diffs = data["methods"]["means"], data["methods"]["differences"]
    assert [r[0] for r in means["body"]] == ["dpo-beta0.1@8", "simpo-gamma0.5@8"] and means["body"][0][3] in text
    assert diffs["body"][0][0] == "simpo-gamma0.5@8 − dpo-beta0.1@8" and diffs["body"][0][1] in text
    assert data["methods"]["lines"][0] in text and "checkpoint" not in means["head"][3]
    rows = method_rows(mt)
    recs = method_records(mt)
    assert [r["kind"] for r in rows] == ["mean", "mean", "difference"]
    assert rows[2]["value"] == recs["comparisons"][0]["delta"] and rows[0]["value"] == recs["methods"][0]["mean"]
    assert len({tuple(r) for r in rows}) == 1  # one set of keys: a tracker table


def test_the_report_page_shows_the_method_section(tmp_path: Path, browser: Any) -> None:  # noqa: F811
    """In headless Chromium: the page draws the method means, the difference and the verdict, as text."""
    from selenium.webdriver.common.by import By

    from evalharness.analysis.html_report import write_report

    path = sweep_run(tmp_path, [0, 1, 2])
    out = write_report([str(path)], tmp_path / "r.html", against="sft", results_dir=tmp_path / "results")
    _open(browser, {"out": out})
    section = browser.find_element(By.ID, "methods")
    rows = [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in section.find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    mt = build_methods(build_table(resolve([str(path)]), against="sft"))
    assert mt is not None
    text = render_methods(mt)
    assert [r[0] for r in rows] == ["dpo-beta0.1@8", "simpo-gamma0.5@8", "simpo-gamma0.5@8 − dpo-beta0.1@8"]
    assert all(cell in text for r in rows for cell in r[1:])
    assert "simpo-gamma0.5@8 is better" in section.text
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_quickstart_seeds_make_one_run_per_algorithm_and_seed(tmp_path: Path) -> None:
    from evalharness.workflows.quickstart import quickstart_spec
    from evalharness.workflows.sweep import expand

    spec = quickstart_spec(tmp_path, seed=5, seeds=3)
    assert spec.seeds == [5, 6, 7]
    names = [r.name for r in expand(spec)]
    assert len(names) == 6 and {n.rsplit("-", 1)[1] for n in names} == {"s5", "s6", "s7"}
    with pytest.raises(InputError, match="--seeds"):
        quickstart_spec(tmp_path, seeds=0)
