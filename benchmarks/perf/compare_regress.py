"""Seconds of `evalharness compare` and `evalharness regress` over 10 runs of three benchmarks.

Ten finished runs (one checkpoint each: ckpt-0 .. ckpt-9) are written through the real store API
(``RunStore.open`` / ``add_verdicts`` / ``finish``, AlpacaEval's annotations in the official layout
``<run>/alpaca_eval/<model>/annotations.json``), with synthetic per-item data shaped like the real
files (seeded): AlpacaEval 2 (805 instructions, length-dependent preferences), MT-Bench (80 questions
x 2 turns, 1-10 ratings) and Arena-Hard (500 questions x 2 games against one baseline, decisive
verdicts weighted x3). Then it times the library calls the CLI makes:

- ``compare``: ``resolve`` + ``build_table(--against ckpt-0)`` + ``render`` over the 10 runs, for the
  headline columns: AlpacaEval WR (paired t) and LC (paired bootstrap, GLM refit per round), MT-Bench
  (clustered paired t), Arena-Hard (paired cluster bootstrap, Bradley-Terry refit, 1000 rounds).
- ``regress``: ``resolve`` + ``regress`` of each of the 9 candidates against ckpt-0, as a CI job runs it.

The LC bootstrap dominates (each round refits both models' GLMs with their CV). To keep the script
minutes long on a shared machine it runs at 2 and at ``--lc-rounds`` (default 10) rounds, and the
seconds at its default 200 rounds are extrapolated from the line through those two (fixed cost + cost
per round; marked as extrapolated); everything else runs at its real default. The Arena-Hard paired bootstrap against the official one is
``arena_hard_paired_bootstrap.py``.

    python benchmarks/perf/compare_regress.py [--lc-rounds 10] [--arena-rounds 1000]
        [--out benchmarks/perf/results/compare_regress.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.analysis import compare
from evalharness.core import provenance
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.tasks.arena_hard import metric as ah
from evalharness.tasks.alpaca_eval.paired_stats import LC_ROUNDS
from evalharness.core.records import SCHEMA_VERSION, Score, Verdict
from evalharness.core.stats import cluster_means, mean_ci
from evalharness.store import RunStore, write_json_atomic
from evalharness.testing.lc_support import write_synthetic_lc_support

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "compare_regress.json"
N_RUNS, N_AE, N_MT, N_AH = 10, 805, 80, 500
AH_BASELINE = ah.DEFAULT_BASELINE
# The judged model's outcome per game, worst to best, and the official label for it in each game
# (the model is B in game 1, A in game 2: arena-hard-auto's swap).
OUTCOMES = ((0.0, True), (0.0, False), (0.5, False), (1.0, False), (1.0, True))
LABELS = (("A>>B", "A>B", "A=B", "B>A", "B>>A"), ("B>>A", "B>A", "A=B", "A>B", "A>>B"))


def build_runs(root: Path, lc_dir: Path, seed: int = 0) -> list[str]:
    """Ten finished runs, one checkpoint each, with per-item records of all three benchmarks."""
    rng = np.random.default_rng(seed)
    support = ae.load_lc_support(lc_dir)
    item = rng.normal(0, 1, N_AE)  # instruction difficulty shared by the checkpoints: what pairing removes
    len1 = rng.integers(200, 2000, N_AE)
    q_effect = rng.normal(0, 1.5, N_MT)
    hard = rng.normal(0, 1, N_AH)
    runs = []
    for k in range(N_RUNS):
        name, run_id = f"ckpt-{k}", f"perf-ckpt-{k}"
        manifest = {"run_id": run_id, "kind": "run", "schema_version": SCHEMA_VERSION, "started_at": provenance.now(),
                    "config": {"perf": run_id, "tasks": {"alpaca_eval": {"config": {"lc_support_dir": str(lc_dir)}}}},
                    "tasks": {t: {"module": f"evalharness.tasks.{t}", "version": "2" if t == "alpaca_eval" else "1"}
                              for t in ("alpaca_eval", "mt_bench", "arena_hard")},
                    "models": [{"name": name, "spec": name}]}
        store = RunStore.open(run_id, manifest, root)
        # AlpacaEval 2: a preference in [1, 2] per instruction, longer answers preferred (what LC removes).
        len2 = rng.integers(200, 3000, N_AE)
        z = 0.9 * np.tanh((len2 - len1) / 800) + item + 0.05 * k + rng.normal(0, 0.7, N_AE)
        rows = [{"instruction": f"instruction {i}", "output_1": "b" * int(len1[i]), "output_2": "m" * int(len2[i]),
                 "generator_1": ae.BASELINE, "generator_2": name, "preference": float(1 + 1 / (1 + math.exp(-z[i])))}
                for i in range(N_AE)]
        write_json_atomic(store.path / "alpaca_eval" / name / "annotations.json", rows)
        wins = np.array([r["preference"] - 1 for r in rows])
        lc = ae.length_controlled_winrate(rows, support)["length_controlled_winrate"]
        # MT-Bench: a 1-10 rating per (question, turn).
        ratings = {(q, t): float(np.clip(np.round(6 + q_effect[q] + 0.1 * k + rng.normal(0, 1.5)), 1, 10))
                   for q in range(N_MT) for t in (1, 2)}
        verdicts = [Verdict(item_id=str(q), judge_id="gpt-4", judge_version="single-v1", status="ok", value=v,
                            meta={"model": name, "question_id": q, "turn": t}, task="mt_bench", model=name,
                            key=f"{q}:t{t}") for (q, t), v in ratings.items()]
        # Arena-Hard: two games per question against the baseline.
        outcome = np.clip(np.round(2 + hard[:, None] + 0.1 * k + rng.normal(0, 1, (N_AH, 2))), 0, 4).astype(int)
        for q in range(N_AH):
            for g in range(2):
                value, decisive = OUTCOMES[outcome[q, g]]
                verdicts.append(Verdict(item_id=f"q{q}", judge_id="gpt-4-1106-preview", judge_version="arena-hard-v0.1",
                                        status="ok", value=value, order="BA" if g else "AB", task="arena_hard",
                                        model=name, key=f"q{q}:g{g + 1}",
                                        meta={"model": name, "baseline": AH_BASELINE, "game": g + 1,
                                              "label": LABELS[g][outcome[q, g]], "decisive": decisive}))
        store.add_verdicts(verdicts)
        elo, _ = ah.fit_bt(ah.battles_from_verdicts([v for v in verdicts if v.task == "arena_hard"]), baseline=AH_BASELINE)
        ae_keys = dict(task="alpaca_eval", task_version="2", model=name, judge_id=ae.ANNOTATOR,
                       judge_version=ae.JUDGE_MODEL, baseline=ae.BASELINE, higher_is_better=True)
        wr, se, lo, hi = mean_ci(100 * wins)
        per_q = cluster_means(list(ratings.values()), [q for q, _ in ratings])
        mt, mse, mlo, mhi = mean_ci(list(per_q.values()))
        scores = [Score(metric="win_rate", value=wr, n=N_AE, stderr=se, ci_low=lo, ci_high=hi, **ae_keys),
                  Score(metric="length_controlled_winrate", value=lc, n=N_AE, **ae_keys),
                  Score(task="mt_bench", metric="score", model=name, value=mt, n=2 * N_MT, stderr=mse, ci_low=mlo,
                        ci_high=mhi, judge_id="gpt-4", judge_version="single-v1", higher_is_better=True),
                  Score(task="arena_hard", metric="score", model=name, value=float(100 * ah.win_rate(elo[name])),
                        n=2 * N_AH, judge_id="gpt-4-1106-preview", judge_version="arena-hard-v0.1",
                        baseline=AH_BASELINE, higher_is_better=True)]
        store.finish(scores, {"run_id": run_id, "scores": [s.to_dict() for s in scores]}, provenance.now())
        runs.append(run_id)
    return runs


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lc-rounds", type=int, default=10, help="LC bootstrap rounds actually run (default 10)")
    ap.add_argument("--arena-rounds", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, lc_dir = Path(tmp) / "results", Path(tmp) / "lc"
        lc_dir.mkdir()
        write_synthetic_lc_support(lc_dir, n=N_AE)
        runs, build_s = timed(lambda: build_runs(root, lc_dir))
        head = ["alpaca_eval/win_rate", "mt_bench/score", "arena_hard/score"]
        lc = ["alpaca_eval/length_controlled_winrate"]

        def compare_once(metrics: list[str], rounds: int) -> str:
            table = compare.build_table(compare.resolve(runs, root), against="ckpt-0", metrics=metrics, rounds=rounds)
            return compare.render(table, "table")

        text, compare_s = timed(lambda: compare_once(head, args.arena_rounds))
        _, compare_lc0 = timed(lambda: compare_once(lc, 2))
        _, compare_lc_s = timed(lambda: compare_once(lc, args.lc_rounds))

        def regress_all(metrics: list[str], rounds: int) -> list[list[dict[str, Any]]]:
            [base] = compare.resolve([runs[0]], root)
            return [compare.regress(base, compare.resolve([r], root)[0], metrics=metrics, rounds=rounds)
                    for r in runs[1:]]

        verdicts, regress_s = timed(lambda: regress_all(head, args.arena_rounds))
        _, regress_lc0 = timed(lambda: regress_all(lc, 2))
        _, regress_lc_s = timed(lambda: regress_all(lc, args.lc_rounds))

    def at_default(t2: float, tn: float) -> float:  # the line through (2, t2) and (lc_rounds, tn), at 200 rounds
        return tn + (tn - t2) / (args.lc_rounds - 2) * (LC_ROUNDS - args.lc_rounds)

    compare_lc_200, regress_lc_200 = at_default(compare_lc0, compare_lc_s), at_default(regress_lc0, regress_lc_s)
    result = {
        "runs": N_RUNS, "items": {"alpaca_eval": N_AE, "mt_bench": f"{N_MT} x 2", "arena_hard": f"{N_AH} x 2"},
        "arena_rounds": args.arena_rounds, "lc_rounds_run": args.lc_rounds, "lc_rounds_default": LC_ROUNDS,
        "build_runs_s": build_s,
        "compare_s": {"wr_mt_arena": compare_s, "lc_2_rounds": compare_lc0, "lc_measured": compare_lc_s,
                      "lc_at_default_rounds_extrapolated": compare_lc_200,
                      "total_at_defaults_extrapolated": compare_s + compare_lc_200},
        "regress_9_candidates_s": {"wr_mt_arena": regress_s, "lc_2_rounds": regress_lc0, "lc_measured": regress_lc_s,
                                   "lc_at_default_rounds_extrapolated": regress_lc_200,
                                   "total_at_defaults_extrapolated": regress_s + regress_lc_200},
        "regress_verdicts": {f"ckpt-{k}": {f"{r['task']}/{r['metric']}": r["verdict"] for r in v}
                             for k, v in enumerate(verdicts, 1)},
        "python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(text, end="")
    print(f"compare, 10 runs, WR + MT-Bench + Arena-Hard ({args.arena_rounds} rounds): {compare_s:.2f} s")
    print(f"compare, LC at 2 / {args.lc_rounds} rounds: {compare_lc0:.2f} / {compare_lc_s:.2f} s (at {LC_ROUNDS}: "
          f"~{compare_lc_200:.0f} s, extrapolated)")
    print(f"regress, 9 candidates, WR + MT-Bench + Arena-Hard: {regress_s:.2f} s ({regress_s / 9:.2f} s each)")
    print(f"regress, LC at 2 / {args.lc_rounds} rounds: {regress_lc0:.2f} / {regress_lc_s:.2f} s (at {LC_ROUNDS}: "
          f"~{regress_lc_200:.0f} s, extrapolated)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
