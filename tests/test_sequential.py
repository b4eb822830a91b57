"""The sequential regression gate: its confidence sequence checked by simulation and by a loop written from the
paper's formulas, its error rate under peeking against a naive repeated test, and ``regress --sequential``
replayed on runs in the real store and on the official AlpacaEval annotations."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from test_compare import sentiment_run
from test_gate import cli

from evalharness.core.sequential import FAIL, INCONCLUSIVE, PASS, checkpoints, confidence_sequence, sequential_gate

N, CHUNK, ALPHA = 805, 50, 0.05


def _looks() -> np.ndarray:
    return np.array(checkpoints(N, CHUNK)) - 1


def _null_differences(reps: int, seed: int) -> np.ndarray:
    """Per-item differences of two exchangeable judges' preferences in [0, 1]: mean 0, bounded in [-1, 1],
    with ties and a heavy mass at +-1 like AlpacaEval's."""
    rng = np.random.default_rng(seed)
    pa, pb = (rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=(reps, N), p=[0.35, 0.1, 0.1, 0.1, 0.35]) for _ in "ab")
    return pa - pb


def test_the_sequence_is_the_papers_formula_step_by_step() -> None:
    """Waudby-Smith & Ramdas (2023) eqs. (13)-(15), one item at a time in plain Python, against the vectorised code."""
    x = np.random.default_rng(3).uniform(-1, 1, 60)
    a = 0.05
    z, log_a = (x + 1) / 2, math.log(1 / a)
    mu_prev, s2_prev, s_lam, s_lamx, s_vpsi, s_x, s_dev = 0.5, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0
    lows = []
    for t, zt in enumerate(z, start=1):
        lam = min(math.sqrt(2 * log_a / (s2_prev * t * math.log(1 + t))), 0.5)
        s_lam, s_lamx = s_lam + lam, s_lamx + lam * zt
        s_vpsi += 4 * (zt - mu_prev) ** 2 * (-math.log(1 - lam) - lam) / 4
        s_x += zt
        mu = (0.5 + s_x) / (t + 1)
        s_dev += (zt - mu) ** 2
        mu_prev, s2_prev = mu, (0.25 + s_dev) / (t + 1)
        low = max(0.0, s_lamx / s_lam - (log_a + s_vpsi) / s_lam)
        lows.append(max(low, lows[-1] if lows else 0.0))
    lower, _ = confidence_sequence(x, -1, 1, alpha_lower=a, alpha_upper=a)
    np.testing.assert_allclose(lower, 2 * np.array(lows) - 1, atol=1e-12)


def test_false_fails_under_the_null_stay_nominal_while_a_repeated_t_test_inflates() -> None:
    """No true difference, a look after every chunk of 50 of 805 items: the sequential gate's false-FAIL rate
    is at most alpha (plus 3 binomial SEs), a one-sided t test at alpha re-run at each look is far above it."""
    reps = 4000
    d = _null_differences(reps, seed=0)
    _, upper = confidence_sequence(d, -1, 1, alpha_lower=ALPHA / 2, alpha_upper=ALPHA)
    looks = _looks()
    seq_fail = (upper[:, looks] < 0).any(axis=1).mean()
    t = np.arange(1, N + 1)
    mean = np.cumsum(d, axis=1) / t
    var = (np.cumsum(d**2, axis=1) - t * mean**2) / np.maximum(t - 1, 1)
    t_upper = mean + sps.t.ppf(1 - ALPHA, t - 1) * np.sqrt(var / t)  # the fixed-n gate's p(drop) < alpha
    naive_fail = (t_upper[:, looks] < 0).any(axis=1).mean()
    fixed_once = (t_upper[:, -1] < 0).mean()
    tol = 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps)
    assert seq_fail <= ALPHA + tol, seq_fail
    assert abs(fixed_once - ALPHA) <= tol, fixed_once  # one look at the end: the t test is right
    assert naive_fail > ALPHA + 3 * tol, naive_fail  # 17 looks: well over alpha


def test_the_sequence_covers_the_true_mean_at_every_item() -> None:
    """Skewed bounded data with mean 0.3: both one-sided bounds hold at all 805 items at once in at least
    1 - alpha of 2000 simulated sequences (3 binomial SEs)."""
    reps = 2000
    rng = np.random.default_rng(1)
    x = np.where(rng.uniform(size=(reps, N)) < 0.65, 1.0, -1.0) * rng.uniform(0.5, 1.0, size=(reps, N))
    true = 0.65 * 0.75 - 0.35 * 0.75
    lower, upper = confidence_sequence(x, -1, 1, alpha_lower=ALPHA / 2, alpha_upper=ALPHA / 2)
    miss = ((lower > true) | (upper < true)).any(axis=1).mean()
    assert miss <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / reps), miss


def test_at_the_end_it_is_wider_than_the_fixed_n_interval_and_decides_early_when_clear() -> None:
    rng = np.random.default_rng(2)
    d = np.clip(rng.normal(0.0, 0.5, N), -1, 1)
    lower, upper = confidence_sequence(d, -1, 1, alpha_lower=0.025, alpha_upper=0.025)
    half_t = sps.t.ppf(0.975, N - 1) * d.std(ddof=1) / math.sqrt(N)
    assert upper[-1] - lower[-1] > 2 * half_t  # the price of looking at will
    clear = np.clip(rng.normal(-0.3, 0.5, N), -1, 1)
    res = sequential_gate(clear, -1, 1, chunk=CHUNK)
    assert res.decision == FAIL and res.n_used <= 200 and res.upper < 0
    res = sequential_gate(-clear, -1, 1, chunk=CHUNK)
    assert res.decision == PASS and res.n_used <= 200 and res.lower >= 0
    res = sequential_gate(d, -1, 1, chunk=CHUNK, futility=False)
    assert res.decision == INCONCLUSIVE and res.n_used == N
    assert sequential_gate(np.zeros(N), -1, 1, margin=0.1, chunk=CHUNK).decision == PASS  # the margin is honoured
    with pytest.raises(ValueError, match="outside their bounds"):
        sequential_gate(np.full(10, 2.0), -1, 1)


# ---------------------------------------------------------------- regress --sequential on stored runs
def _values(shift: float, prompts: int = 400) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    level = rng.uniform(0.2, 0.8, prompts)
    noise = rng.normal(0, 0.05, (prompts, 2))
    return {f"p{i}": list(np.clip(level[i] + shift + noise[i], 0, 1)) for i in range(prompts)}


def test_regress_sequential_replays_stored_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    base = _values(0.0)
    sentiment_run(root, "base", {"m": base})
    sentiment_run(root, "drop", {"m": _values(-0.1)})
    sentiment_run(root, "same", {"m": base})
    args = ("--results-dir", root, "--chunk", "25", "--seed", "7")
    code, out, _ = cli(capsys, "regress", "--baseline", "base:m", "--candidate", "drop:m", "--sequential", *args)
    assert code == 1 and out.startswith("FAIL") and "full data: FAIL" in out, out
    code, out, _ = cli(
        capsys,
        "regress",
        "--baseline",
        "base:m",
        "--candidate",
        "drop:m",
        "--sequential",
        "--json",
        "--replays",
        "20",
        *args,
    )
    (row,) = json.loads(out)
    seq = row["sequential"]
    assert code == 1 and row["verdict"] == row["full_verdict"] == FAIL
    assert seq["n_total"] == 400 and seq["n_used"] % 25 == 0 and seq["n_used"] < 400
    assert seq["change_upper"] < 0 and seq["requests_saved"] == pytest.approx(1 - seq["n_used"] / 400)
    # the per-prompt mean change by hand: every prompt moved by -0.1 except where the clip at 0 or 1 bites
    diffs = [np.mean(_values(-0.1)[p]) - np.mean(base[p]) for p in sorted(base)]
    assert row["delta"] == pytest.approx(float(np.mean(diffs)))
    assert row["replays"]["count"] == 20 and row["replays"]["agreement"] == 1.0
    # an identical candidate: INCONCLUSIVE at margin 0 (exit 0, 1 with --strict), PASS at a margin
    code, out, _ = cli(
        capsys, "regress", "--baseline", "base:m", "--candidate", "same:m", "--sequential", "--json", *args
    )
    assert code == 0 and json.loads(out)[0]["verdict"] == INCONCLUSIVE
    code, _, _ = cli(
        capsys, "regress", "--baseline", "base:m", "--candidate", "same:m", "--sequential", "--strict", *args
    )
    assert code == 1
    code, out, _ = cli(
        capsys,
        "regress",
        "--baseline",
        "base:m",
        "--candidate",
        "same:m",
        "--sequential",
        "--json",
        "--margin",
        "sentiment=0.05",
        *args,
    )
    (row,) = json.loads(out)
    assert code == 0 and row["verdict"] == PASS and row["sequential"]["n_used"] < 400
    code, _, err = cli(
        capsys,
        "regress",
        "--baseline",
        "base:m",
        "--candidate",
        "same:m",
        "--sequential",
        "--chunk",
        "0",
        "--results-dir",
        root,
    )
    assert code == 2 and "--chunk" in err


def test_replay_of_official_alpaca_eval_annotations_agrees_with_the_full_data(
    tmp_path: Path, benchdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """claude-2.1 against gpt-3.5-turbo-1106 on the official GPT-4-Turbo annotations: a real drop of about 6.6
    points, FAIL on all 805 instructions; the sequential gate says FAIL in every one of 20 orders, on fewer."""
    res = tmp_path / "results"
    runs = []
    for m in ("claude-2.1", "gpt-3.5-turbo-1106"):
        f = benchdata / "alpaca_eval" / "results" / m / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
        code, _, err = cli(capsys, "metrics", "alpaca-eval", f, "--save", "--results-dir", res)
        assert code == 0, err
        runs.append(err.strip().splitlines()[-1].split("imported into ")[1].rsplit("/", 1)[-1])
    code, out, err = cli(
        capsys,
        "regress",
        "--baseline",
        runs[0],
        "--candidate",
        runs[1],
        "--sequential",
        "--json",
        "--replays",
        "20",
        "--metrics",
        "alpaca_eval/win_rate",
        "--results-dir",
        res,
    )
    (row,) = json.loads(out)
    assert code == 1, err
    assert row["full_verdict"] == FAIL and row["n_paired"] == 805
    assert row["replays"]["agreement"] == 1.0 and row["replays"]["mean_share_used"] < 0.6
    prefs = [
        {
            r["instruction"]: r["preference"]
            for r in json.loads(
                (
                    benchdata / "alpaca_eval" / "results" / m / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
                ).read_text()
            )
        }
        for m in ("claude-2.1", "gpt-3.5-turbo-1106")
    ]
    by_hand = 100 * np.mean([prefs[1][k] - prefs[0][k] for k in prefs[0]])
    assert row["sequential"]["n_total"] == 805 and row["delta"] == pytest.approx(by_hand)


# ---------------------------------------------------------------- live: run --sequential-gate
ITEMS = 160


def _alpaca_spec(tmp: Path, name: str, url: str) -> Path:
    """One model on a 160-instruction AlpacaEval-format set against a baseline whose answers say BASELINE."""
    data = tmp / "data"
    if not data.exists():
        data.mkdir()
        rows = [{"instruction": f"Question number {i}: say something.", "dataset": "t"} for i in range(ITEMS)]
        (data / "eval_set.json").write_text(json.dumps(rows))
        base = [{**r, "output": f"BASELINE ANSWER {i}", "generator": "base-gen"} for i, r in enumerate(rows)]
        (data / "baseline.json").write_text(json.dumps(base))
        (data / "no-lc").mkdir()
    spec = tmp / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\nmodels: [a]\nbackend: fake\ngeneration: {{max_new_tokens: 8, n: 1}}\n"
        f'judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 0, concurrency: 4, cache: false}}\n'
        f"tasks:\n  alpaca_eval: {{eval_set: {data}/eval_set.json, baseline: {data}/baseline.json, "
        f"lc_support_dir: {data}/no-lc}}\n"
    )
    return spec


def _judge_with_win_rate(percent: int, salt: str) -> Any:
    """An AlpacaEval judge that prefers the policy's answer (p 0.9) on ``percent`` of the instructions, by a
    hash of the instruction, and the baseline's (p 0.9) on the rest; whichever position each answer is in."""
    import hashlib
    import re

    from evalharness.testing.fake_openai import Reply, request_text

    def respond(body: dict[str, Any]) -> Any:
        text = request_text(body)
        at_m, at_big_m = text.index('"model_identifier": "m"'), text.index('"model_identifier": "M"')
        policy, other = ("M", "m") if at_m < text.index("BASELINE ANSWER") < at_big_m else ("m", "M")
        number = re.search(r"Question number (\d+)", text).group(1)  # type: ignore[union-attr]
        wins = int(hashlib.sha256(f"{salt}{number}".encode()).hexdigest(), 16) % 100 < percent
        best, worst = (policy, other) if wins else (other, policy)
        return Reply(best, top_logprobs=[[(best, math.log(0.9)), (worst, math.log(0.1))]])

    return respond


def test_live_gate_stops_judging_once_decided_and_a_plain_rerun_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from evalharness.pipeline.runner import run_spec
    from evalharness.store import RunStore
    from evalharness.testing import FakeOpenAI

    res = tmp_path / "results"
    with FakeOpenAI(_judge_with_win_rate(50, "base")) as server:
        base = run_spec(_alpaca_spec(tmp_path, "base", server.url), results_dir=res, progress=False).path
        assert server.requests == ITEMS
    with FakeOpenAI(_judge_with_win_rate(15, "cand")) as server:
        spec = _alpaca_spec(tmp_path, "cand", server.url)
        code, _, err = cli(capsys, "run", spec, "--sequential-gate", f"{base.name}:a", "--results-dir", res)
        asked = server.requests
        assert 0 < asked < ITEMS / 2 and asked % 64 == 0, (asked, err)
        assert "stopped after" in err and "alpaca_eval/win_rate FAIL" in err
        (run,) = [p for p in res.iterdir() if p.name.startswith("cand-")]
        stop = RunStore(run).manifest()["stopped_early"]["alpaca_eval"]["a"]
        assert stop["judged"] == asked and stop["total"] == ITEMS and "FAIL" in stop["reason"]
        score = next(s for s in RunStore(run).scores() if s.metric == "win_rate")
        assert score.extra["stopped_early"] == stop and score.value < 40
        code, out, _ = cli(
            capsys,
            "regress",
            "--baseline",
            f"{base.name}:a",
            "--candidate",
            f"{run.name}:a",
            "--metrics",
            "alpaca_eval/win_rate",
            "--results-dir",
            res,
            "--no-drift-check",  # the baseline's judge server is gone; drift is tests/test_drift.py's subject
        )
        assert code == 1 and out.startswith("FAIL"), (out, score)
        # the same command without the gate judges the rest and clears the mark
        code, _, err = cli(capsys, "run", spec, "--results-dir", res)
        assert server.requests == ITEMS, err
        assert "stopped_early" not in RunStore(run).manifest().get("stopped_early", {}).get("alpaca_eval", {})
        score = next(s for s in RunStore(run).scores() if s.metric == "win_rate")
        assert "stopped_early" not in score.extra and score.n == ITEMS


def test_replay_of_official_mt_bench_ratings_pairs_turns_within_questions(
    tmp_path: Path, benchdata: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """gpt-4 against alpaca-13b on the official GPT-4 single-grading scores: the unit is the question (the mean
    of the turns both have), 80 of them, a change of about -4.5 on the 1-10 scale: FAIL by the second chunk of 20."""
    folder = benchdata / "mt_bench" / "model_judgment" / "official_derived"
    res, runs, ratings = tmp_path / "results", [], {}
    for m in ("gpt-4", "alpaca-13b"):
        path = folder / f"gpt-4_single.scores.{m}.tsv"
        code, _, err = cli(capsys, "metrics", "mt-bench", path, "--save", "--results-dir", res)
        assert code == 0, err
        runs.append(err.strip().splitlines()[-1].split("imported into ")[1].rsplit("/", 1)[-1])
        lines = path.read_text().splitlines()
        head = lines[0].split("\t")
        rows = [dict(zip(head, ln.split("\t"))) for ln in lines[1:]]
        ratings[m] = {(r["question_id"], r["turn"]): float(r["score"]) for r in rows if float(r["score"]) != -1}
    code, out, err = cli(
        capsys,
        "regress",
        "--baseline",
        runs[0],
        "--candidate",
        runs[1],
        "--sequential",
        "--json",
        "--chunk",
        "20",
        "--metrics",
        "mt_bench/score",
        "--results-dir",
        res,
    )
    (row,) = json.loads(out)
    assert code == 1 and row["verdict"] == row["full_verdict"] == FAIL, err
    a, b = ratings["alpaca-13b"], ratings["gpt-4"]
    per_q: dict[str, list[float]] = {}
    for k in a.keys() & b.keys():
        per_q.setdefault(k[0], []).append(a[k] - b[k])
    by_hand = np.mean([np.mean(v) for v in per_q.values()])
    assert row["sequential"]["n_total"] == len(per_q) == 80 and row["delta"] == pytest.approx(by_hand)
    assert row["sequential"]["n_used"] <= 40 and row["sequential"]["change_upper"] < 0  # half the questions at most
