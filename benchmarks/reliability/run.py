"""The reliability suite (``make reliability``): kill -9 at random moments, judge faults, hostile inputs,
disk full and the security checks; prints the figures, writes them to benchmarks/reliability/results/,
exits 1 if a goal is missed."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (puts this checkout first on sys.path)
import diskfull  # noqa: E402
import faults  # noqa: E402
import hostile  # noqa: E402
import kill9  # noqa: E402
import security  # noqa: E402


def goals(name: str, r: dict[str, Any]) -> list[str]:
    """The goals a section missed (empty: all met)."""
    missed = []
    if name == "kill9":
        for st in (s["summary"] for s in r["stages"]):
            for k in ("mismatches", "corrupt_files", "duplicated_records", "lost_records", "extra_judge_requests"):
                if st.get(k, 0):
                    missed.append(f"{st['stage']}: {k} = {st[k]}")
    elif name == "faults":
        for m in r["mixes"]:
            for k in ("lost", "duplicated"):
                if m[k]:
                    missed.append(f"{m['fault_rate']:.0%}: {k} = {m[k]}")
            if not (m["rerun_completes_every_failed_item"] and m["failed_counted_in_score"]):
                missed.append(f"{m['fault_rate']:.0%}: failed items not counted or not completed by the rerun")
        d = r["endpoint_down"]
        if d["cached_results_while_down"] or not d["later_run_completes"] or d["traceback"]:
            missed.append("endpoint down: cached a failure, left a traceback, or a later run did not complete")
    elif name == "hostile":
        for k in ("tracebacks", "half_written", "unnamed"):
            if r[k]:
                missed.append(f"{k} = {r[k]}")
    elif name == "diskfull" and r.get("measured"):
        if r["exit_code_full"] == 0 or r["traceback"] or r["corrupt_after_full"] or r["corrupt_after_resume"] \
                or not r["scores_equal_uninterrupted"] or r["duplicated"] or r["lost"]:
            missed.append("disk full: unclear stop, corrupt record, or a resume that differs")
    elif name == "security":
        if r["canary_hits"] or r["names_escaping"] or not r["cache_private"] or not r["canary_requests_carrying_key"]:
            missed.append("canary found, a name escaped, a cache readable by others, or the key was never sent")
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials per fast stage (eval, run)")
    parser.add_argument("--slow-trials", type=int, default=20, help="kill -9 trials of pair building and training (tiny hf model)")
    parser.add_argument("--examples", type=int, default=100, help="hypothesis examples per parser")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None,
                        choices=["kill9", "faults", "hostile", "diskfull", "security"])
    args = parser.parse_args(argv)
    sections = {
        "kill9": lambda w: kill9.main(w, args.trials, args.slow_trials, args.seed),
        "faults": lambda w: faults.main(w, args.seed),
        "hostile": lambda w: hostile.main(w, args.examples),
        "diskfull": lambda w: diskfull.main(w),
        "security": lambda w: security.main(w),
    }
    missed: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="evalharness-reliability-") as tmp:
        for name, fn in sections.items():
            if args.only and name not in args.only:
                continue
            print(f"== {name}", flush=True)
            t0 = time.monotonic()
            result = fn(Path(tmp) / name)
            result["wall_s"] = round(time.monotonic() - t0, 1)
            result["goals_missed"] = missed[name] = goals(name, result)
            path = common.write_result(name, result)
            print(f"  goals: {'all met' if not missed[name] else '; '.join(missed[name])}  ({result['wall_s']} s, {path})",
                  flush=True)
    bad = {k: v for k, v in missed.items() if v}
    print("reliability: every goal met" if not bad else f"reliability: goals missed in {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
