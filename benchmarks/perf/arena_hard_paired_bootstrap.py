"""Speed of the paired statistics: Arena-Hard's paired bootstrap against the official bootstrap, and
a compare-style set of paired tests over 10 models.

Part 1 times one round of ``evalharness.tasks.ah_paired.arena_hard_paired_bootstrap`` (draw questions, refit
one Bradley-Terry over both models, warm-started) against one round of the official arena-hard-auto
bootstrap (``battles.sample(frac=1.0, replace=True)`` then ``compute_mle_elo`` with sklearn's
LogisticRegression), on the same official battles file, and prints the ratio (goal >= 1.0x).

Part 2 times the paired tests a ``compare --against`` of 10 models runs (9 comparisons each):
AlpacaEval 2 (805 instructions: win-rate paired t, discrete McNemar, LC paired bootstrap),
MT-Bench (80 questions x 2 turns: overall, turn 1, turn 2) and Arena-Hard (500 questions x 2 games,
1000 rounds), then Holm over all of them. The data are synthetic (seeded), shaped like the real files.

    python benchmarks/perf/arena_hard_paired_bootstrap.py [--rounds 1000] [--official-rounds 100]
        [--lc-rounds 200] [--out benchmarks/perf/results/arena_hard_paired_bootstrap.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
from sklearn.linear_model import LogisticRegression

from evalharness.core import stats
from evalharness.tasks import paired
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.tasks.alpaca_eval import paired_stats as ae_paired
from evalharness.tasks.arena_hard import metric as ah
from evalharness.tasks.arena_hard import paired_stats as ah_paired
from evalharness.tasks.mt_bench import paired_stats as mt_paired
from evalharness.testing.lc_support import write_synthetic_lc_support

GOAL_SPEEDUP = 1.0
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "arena_hard_paired_bootstrap.json"
BATTLES = "arena_hard/battles/arena_hard_battles.gpt-4-1106-preview.gpt-3.5-turbo-0125+gpt-4-0613.jsonl"
MODEL_A, MODEL_B = "gpt-4-0613", "gpt-3.5-turbo-0125"
N_MODELS = 10


# ---------------------------------------------------------------- the official bootstrap (the peer)
# lmarena/arena-hard-auto, utils_math.py at commit 0489bf384abd010906014dec7b903f7c438eabba (the v0.1
# show_result.py pipeline): compute_mle_elo and get_bootstrap_result, copied in procedure; only the
# tqdm progress bar is left out, and sklearn >= 1.8 gets C=inf for the deprecated penalty=None (the
# same unpenalised fit). show_result.py calls get_bootstrap_result(battles, compute_mle_elo, num_rounds,
# baseline) after utils_math's module-level np.random.seed(42).
_NO_PENALTY = ({"penalty": None} if tuple(map(int, re.findall(r"\d+", sklearn.__version__)[:2])) < (1, 8)
               else {"C": np.inf})


def official_compute_mle_elo(df: pd.DataFrame, SCALE: int = 400, BASE: int = 10, INIT_RATING: int = 1000,
                             baseline_model: str = "gpt-4-0314") -> pd.Series:
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    models = pd.Series(np.arange(len(models)), index=models)

    # duplicate battles
    df = pd.concat([df, df], ignore_index=True)
    p = len(models.index)
    n = df.shape[0]

    X = np.zeros([n, p])
    X[np.arange(n), models[df["model_a"]]] = +math.log(BASE)
    X[np.arange(n), models[df["model_b"]]] = -math.log(BASE)

    # one A win => two A win
    Y = np.zeros(n)
    Y[df["winner"] == "model_a"] = 1.0

    # one tie => one A win + one B win
    tie_idx = (df["winner"] == "tie") | (df["winner"] == "tie (bothbad)")
    tie_idx[len(tie_idx) // 2:] = False
    Y[tie_idx] = 1.0

    lr = LogisticRegression(fit_intercept=False, tol=1e-8, **_NO_PENALTY)
    lr.fit(X, Y)

    elo_scores = SCALE * lr.coef_[0] + INIT_RATING

    # set anchor as gpt-4-0314 = 1000
    if baseline_model in models.index:
        elo_scores += 1000 - elo_scores[models[baseline_model]]
    return pd.Series(elo_scores, index=models.index).sort_values(ascending=False)


def official_get_bootstrap_result(battles: pd.DataFrame, func_compute_elo: Any, num_round: int,
                                  baseline_model: str = "gpt-4-0314") -> pd.DataFrame:
    rows = []
    kwargs = {}
    if baseline_model in inspect.signature(func_compute_elo).parameters:  # sic: tests the model name
        kwargs[baseline_model] = baseline_model
    for _ in range(num_round):
        rows.append(func_compute_elo(battles.sample(frac=1.0, replace=True), **kwargs))
    df = pd.DataFrame(rows)
    return df[df.median().sort_values(ascending=False).index]


# ---------------------------------------------------------------- part 1: per round, ours vs official
def per_round(battles: pd.DataFrame, rounds: int, official_rounds: int) -> dict[str, Any]:
    full_official = official_compute_mle_elo(battles)
    full_ours, _ = ah.fit_bt(battles)
    max_elo_diff = max(abs(full_official[m] - full_ours[m]) for m in full_ours)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.random.seed(ah.OFFICIAL_SEED)
        t = time.perf_counter()
        boot = official_get_bootstrap_result(battles, official_compute_mle_elo, official_rounds)
        official_s = (time.perf_counter() - t) / official_rounds
    t = time.perf_counter()
    ours = ah_paired.arena_hard_paired_bootstrap(battles, MODEL_A, MODEL_B, rounds=rounds)
    ours_s = (time.perf_counter() - t) / rounds
    t = time.perf_counter()
    cold = ah_paired.arena_hard_paired_bootstrap(battles, MODEL_A, MODEL_B, rounds=rounds, warm_start=False)
    cold_s = (time.perf_counter() - t) / rounds
    official_delta = 100 * (ah.win_rate(boot[MODEL_A]) - ah.win_rate(boot[MODEL_B]))
    return {
        "battles": len(battles), "questions": int(battles.question_id.nunique()),
        "ours_rounds": rounds, "official_rounds": official_rounds,
        "ours_s_per_round": ours_s, "ours_cold_start_s_per_round": cold_s, "official_s_per_round": official_s,
        "speedup": official_s / ours_s, "speedup_cold_start": official_s / cold_s, "goal": GOAL_SPEEDUP,
        "full_fit_max_elo_difference_vs_official": max_elo_diff,
        "warm_vs_cold_max_ci_difference": max(abs(ours.ci_low - cold.ci_low), abs(ours.ci_high - cold.ci_high)),
        "ours_paired": ours.to_dict(),
        "official_battle_bootstrap_delta_ci": [float(np.percentile(official_delta, 2.5)),
                                               float(np.percentile(official_delta, 97.5))],
    }


# ---------------------------------------------------------------- part 2: a 10-model comparison set
def lc_support(n: int) -> ae.LCSupport:
    """The synthetic LC side files the tests use (the real ones are a download)."""
    with tempfile.TemporaryDirectory() as d:
        return ae.load_lc_support(write_synthetic_lc_support(d, n=n))


def synthetic_data(rng: np.random.Generator) -> dict[str, Any]:
    names = [f"ckpt-{i}" for i in range(N_MODELS)]
    n_ae, n_q = 805, 500
    item = rng.normal(0, 1, n_ae)
    len1 = rng.integers(200, 2000, n_ae)
    alpaca = {}
    for k, name in enumerate(names):
        len2 = rng.integers(200, 3000, n_ae)
        z = 0.9 * np.tanh((len2 - len1) / 800) + item + 0.05 * k + rng.normal(0, 0.7, n_ae)
        alpaca[name] = [{"instruction": f"instruction {i}", "output_1": "b" * int(len1[i]),
                         "output_2": "m" * int(len2[i]), "generator_1": ae.BASELINE, "generator_2": name,
                         "preference": float(1 + 1 / (1 + math.exp(-z[i])))} for i in range(n_ae)]
    q_effect = rng.normal(0, 1.5, 80)
    mt = {name: {(str(q), t): float(np.clip(np.round(6 + q_effect[q] + 0.1 * k + rng.normal(0, 1.5)), 1, 10))
                 for q in range(80) for t in (1, 2)} for k, name in enumerate(names)}
    labels = np.array(["model_a", "model_a", "tie", "model_b", "model_b"])
    decisive = np.array([True, False, False, False, True])
    hard = rng.normal(0, 1, n_q)
    rows = []
    for k, name in enumerate(names):
        z = np.clip(np.round(2 + hard[:, None] + 0.1 * k + rng.normal(0, 1, (n_q, 2))), 0, 4).astype(int)
        for q in range(n_q):
            for g in range(2):
                rows += [(f"q{q}", ah.DEFAULT_BASELINE, name, labels[z[q, g]])] * (3 if decisive[z[q, g]] else 1)
    arena = pd.DataFrame(rows, columns=["question_id", "model_a", "model_b", "winner"])
    return {"names": names, "alpaca": alpaca, "mt": mt, "arena": arena,
            "lc_support": lc_support(n_ae)}


def compare_set(data: dict[str, Any], arena_rounds: int, lc_rounds: int) -> dict[str, Any]:
    ref, others = data["names"][0], data["names"][1:]
    seconds: dict[str, float] = {}
    results: list[paired.PairedResult] = []

    t = time.perf_counter()
    for m in others:
        results.append(ae_paired.alpaca_winrate_paired(data["alpaca"][m], data["alpaca"][ref]))
        results.append(ae_paired.alpaca_discrete_paired(data["alpaca"][m], data["alpaca"][ref]))
    seconds["alpaca_eval_winrate_and_discrete"] = time.perf_counter() - t
    t = time.perf_counter()
    lc = ae_paired.alpaca_lc_against(data["alpaca"][ref], {m: data["alpaca"][m] for m in others}, data["lc_support"],
                                  rounds=lc_rounds)
    results += lc.values()
    seconds["alpaca_eval_lc_bootstrap"] = time.perf_counter() - t
    t = time.perf_counter()
    for m in others:
        for turn in (None, 1, 2):
            results.append(mt_paired.mt_bench_paired(data["mt"][m], data["mt"][ref], turn=turn))
    seconds["mt_bench"] = time.perf_counter() - t
    t = time.perf_counter()
    for m in others:
        results.append(ah_paired.arena_hard_paired_bootstrap(data["arena"], m, ref, rounds=arena_rounds))
    seconds["arena_hard_bootstrap"] = time.perf_counter() - t
    t = time.perf_counter()
    holm = stats.holm([r.p_value for r in results])
    seconds["holm"] = time.perf_counter() - t
    seconds["total"] = sum(seconds.values())
    return {"models": N_MODELS, "comparisons_per_metric": len(others), "tests": len(results),
            "arena_rounds": arena_rounds, "lc_rounds": lc_rounds, "seconds": seconds,
            "significant_after_holm": int(sum(p < 0.05 for p in holm))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=ah_paired.ARENA_ROUNDS, help="our bootstrap rounds (part 1 and 2)")
    ap.add_argument("--official-rounds", type=int, default=100, help="official bootstrap rounds (its default)")
    ap.add_argument("--lc-rounds", type=int, default=ae_paired.LC_ROUNDS, help="LC bootstrap rounds in part 2")
    ap.add_argument("--benchdata", type=Path,
                    default=Path(os.environ.get("EVALHARNESS_BENCHDATA", REPO.parent / "shared" / "benchdata")))
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    path = args.benchdata / BATTLES
    if not path.is_file():
        sys.exit(f"official battles not found: {path} (set --benchdata)")
    part1 = per_round(ah.load_battles(path), args.rounds, args.official_rounds)
    print(f"Arena-Hard bootstrap, {part1['battles']} official battles, {part1['questions']} questions")
    print(f"  ours (paired, question clusters, warm start): {1e3 * part1['ours_s_per_round']:.2f} ms/round "
          f"({args.rounds} rounds); cold start {1e3 * part1['ours_cold_start_s_per_round']:.2f} ms/round")
    print(f"  official (battles.sample + compute_mle_elo): {1e3 * part1['official_s_per_round']:.2f} ms/round "
          f"({args.official_rounds} rounds)")
    print(f"  speedup {part1['speedup']:.1f}x (cold start {part1['speedup_cold_start']:.1f}x; "
          f"goal >= {GOAL_SPEEDUP}x); "
          f"full-data Elo vs official max |diff| {part1['full_fit_max_elo_difference_vs_official']:.2e}; "
          f"warm vs cold CI max |diff| {part1['warm_vs_cold_max_ci_difference']:.2e}")
    r = part1["ours_paired"]
    print(f"  {MODEL_A} - {MODEL_B}: {r['delta']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] "
          f"p {r['p_value']:.2g} (percentile p {r['p_percentile']:.2g})")

    part2 = compare_set(synthetic_data(np.random.default_rng(0)), args.rounds, args.lc_rounds)
    s = part2["seconds"]
    print(f"compare over {N_MODELS} models ({part2['tests']} paired tests against one reference):")
    for key, value in s.items():
        print(f"  {key:<34} {value:8.2f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"per_round": part1, "compare": part2, "python": platform.python_version(),
                                    "sklearn": sklearn.__version__, "numpy": np.__version__, "cpus": os.cpu_count(),
                                    "machine": platform.machine()}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
