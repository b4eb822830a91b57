"""The sequential regression gate replayed on the official AlpacaEval 2 annotations.

The seven models of ``../shared/benchdata/alpaca_eval/results`` were each judged by the official GPT-4-Turbo
annotator (weighted_alpaca_eval_gpt4_turbo) against gpt4_1106_preview on the same 805 instructions, so each
of the 21 pairs is a real paired comparison. Each official file is imported into a temporary results store
(``evalharness metrics alpaca-eval FILE --save``'s library calls), then ``regress --sequential``'s library
call (``analysis.sequential.sequential_regress``) gates the pair's win rate (the later model of the pair as
candidate) in ``--replays`` seeded orders. Per pair it prints the full-data (fixed-n) verdict, the share of
items the sequential gate used on average, and how often it reached the same verdict; then the averages.

    python benchmarks/sequential_replay.py [--benchdata ../shared/benchdata] [--replays 200]
        [--chunk 50] [--margin 0] [--out benchmarks/perf/results/sequential_replay.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from evalharness.analysis.compare import ALPHA, resolve
from evalharness.analysis.interop import compute, import_run
from evalharness.analysis.sequential import item_changes, sequential_regress
from evalharness.core.sequential import checkpoints, confidence_sequence

MODELS = (
    "gpt4_1106_preview",
    "claude-2.1",
    "FuseChat-Llama-3.1-8B-Instruct",
    "gpt-3.5-turbo-1106",
    "OpenHermes-2.5-Mistral-7B",
    "alpaca-7b",
    "NullModel",
)
METRIC = "alpaca_eval/win_rate"


def import_models(benchdata: Path, results: Path) -> dict[str, str]:
    """model -> the run it was imported as."""
    runs = {}
    for m in MODELS:
        path = benchdata / "alpaca_eval" / "results" / m / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
        metrics, scores = compute("alpaca-eval", path)
        runs[m] = import_run("alpaca-eval", path, metrics, scores, results).name
    return runs


def replay_pairs(
    runs: dict[str, str], results: Path, *, replays: int, chunk: int, margin: float
) -> list[dict[str, Any]]:
    out = []
    for base, cand in itertools.combinations(MODELS, 2):
        b, c = (resolve([runs[m]], results)[0] for m in (base, cand))
        (row,) = sequential_regress(
            b, c, metrics=[METRIC], margins={METRIC: margin}, chunk=chunk, replays=replays, seed=0
        )
        out.append(
            {
                "baseline": base,
                "candidate": cand,
                "delta": row["delta"],
                "ci": [row["delta_ci_low"], row["delta_ci_high"]],
                "full_verdict": row["full_verdict"],
                "mean_share_used": row["replays"]["mean_share_used"],
                "agreement": row["replays"]["agreement"],
                "decisions": row["replays"]["decisions"],
            }
        )
    return out


def null_rates(changes: np.ndarray, *, reps: int, chunk: int, seed: int = 0) -> tuple[float, float, float]:
    """False-FAIL rates under the null, each per-item change multiplied by a fair random sign (so the true mean
    is 0 and the per-item spread is the real one): the sequential gate looking after every chunk, a one-sided
    t test at alpha re-run at every look (the fixed-n gate's FAIL rule, peeked at), and that test run once."""
    n = changes.size
    d = changes * np.random.default_rng(seed).choice([-1.0, 1.0], size=(reps, n))
    _, upper = confidence_sequence(d, -100.0, 100.0, alpha_lower=ALPHA / 2, alpha_upper=ALPHA)
    looks = np.array(checkpoints(n, chunk)) - 1
    t = np.arange(1, n + 1)
    mean = np.cumsum(d, axis=1) / t
    var = (np.cumsum(d**2, axis=1) - t * mean**2) / np.maximum(t - 1, 1)
    t_upper = mean + sps.t.ppf(1 - ALPHA, np.maximum(t - 1, 1)) * np.sqrt(var / t)
    return (
        float((upper[:, looks] < 0).any(axis=1).mean()),
        float((t_upper[:, looks[looks > 0]] < 0).any(axis=1).mean()),
        float((t_upper[:, -1] < 0).mean()),
    )


def null_table(runs: dict[str, str], results: Path, *, reps: int, chunk: int) -> str:
    lines = [
        f"null simulation: per-item changes of each pair with random signs, {reps} sequences per pair, a look "
        f"every {chunk} items; false-FAIL rate (nominal {ALPHA})",
        "",
        "| baseline | candidate | sequential gate | repeated t test (every look) | t test once (all items) |",
        "|---|---|---|---|---|",
    ]
    rates = []
    for base, cand in itertools.combinations(MODELS, 2):
        b, c = (resolve([runs[m]], results)[0] for m in (base, cand))
        changes, _, _ = item_changes("alpaca_eval", "win_rate", b, c)
        if not changes.any():
            continue
        r = null_rates(changes, reps=reps, chunk=chunk)
        rates.append(r)
        lines.append(f"| {base} | {cand} | " + " | ".join(f"{100 * x:.2f}%" for x in r) + " |")
    avg = np.mean(rates, axis=0)
    se = np.sqrt(ALPHA * (1 - ALPHA) / reps)
    lines += [
        "",
        f"mean over {len(rates)} pairs: sequential {100 * avg[0]:.2f}%, repeated t {100 * avg[1]:.2f}%, "
        f"t once {100 * avg[2]:.2f}% (binomial SE of one pair's rate at {ALPHA}: {100 * se:.2f} points)",
    ]
    return "\n".join(lines)


def table(rows: list[dict[str, Any]], *, replays: int, chunk: int, margin: float) -> str:
    lines = [
        f"win rate (percent points), margin {margin:g}, chunk {chunk}, {replays} seeded orders per pair",
        "",
        "| baseline | candidate | Δ WR [95% CI] | full data | items used (mean) | same verdict | sequential verdicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['baseline']} | {r['candidate']} | {r['delta']:+.1f} [{r['ci'][0]:+.1f}, {r['ci'][1]:+.1f}] | "
            f"{r['full_verdict']} | {100 * r['mean_share_used']:.0f}% | {100 * r['agreement']:.1f}% | "
            + ", ".join(f"{k} {v}" for k, v in r["decisions"].items())
            + " |"
        )
    decisive = [r for r in rows if r["full_verdict"] != "INCONCLUSIVE"]
    lines += [
        "",
        f"all {len(rows)} pairs: {100 * np.mean([r['mean_share_used'] for r in rows]):.1f}% of items, "
        f"{100 * np.mean([r['agreement'] for r in rows]):.1f}% same verdict",
        f"{len(decisive)} pairs decisive on the full data: "
        f"{100 * np.mean([r['mean_share_used'] for r in decisive]):.1f}% of items, "
        f"{100 * np.mean([r['agreement'] for r in decisive]):.1f}% same verdict",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchdata", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "benchdata")
    ap.add_argument("--replays", type=int, default=200)
    ap.add_argument("--chunk", type=int, default=50)
    ap.add_argument("--margin", type=float, default=0.0)
    ap.add_argument("--null-reps", type=int, default=2000, help="null sequences per pair (0: skip)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not (args.benchdata / "alpaca_eval" / "results").is_dir():
        sys.exit(f"no AlpacaEval results under {args.benchdata}: pass --benchdata")
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        runs = import_models(args.benchdata, results)
        rows = replay_pairs(runs, results, replays=args.replays, chunk=args.chunk, margin=args.margin)
        print(table(rows, replays=args.replays, chunk=args.chunk, margin=args.margin))
        if args.null_reps:
            print("\n" + null_table(runs, results, reps=args.null_reps, chunk=args.chunk))
    if args.out:
        args.out.write_text(
            json.dumps({"replays": args.replays, "chunk": args.chunk, "margin": args.margin, "pairs": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
