"""The judge-reliability figures of docs/reliability.md: a fake judge over real HTTP whose verdict flips with a
known probability p, measured position consistency, repeat agreement and kappa against theory; then a judge-drift
regress between two runs of a judge changed in between. Runs in about a minute:

    PYTHONPATH=. python benchmarks/reliability/judge_figures.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from test_drift import two_runs  # noqa: E402
from test_judge_reliability import arena_spec, by_metric  # noqa: E402

from evalharness import cli  # noqa: E402
from evalharness.pipeline.runner import run_spec  # noqa: E402
from evalharness.testing import FakeOpenAI  # noqa: E402
from evalharness.testing.flip_judge import FlipJudge  # noqa: E402

METRICS = ("position_consistency", "repeat_agreement", "repeat_kappa")


def line(rs: dict) -> str:
    return "; ".join(f"{m} {rs[m].value:.3f} [{rs[m].ci_low:.3f}, {rs[m].ci_high:.3f}] n={rs[m].n}" for m in METRICS)


def arena() -> None:
    for p in (0.0, 0.1, 0.2, 0.3):
        tmp = Path(tempfile.mkdtemp())
        with FakeOpenAI(FlipJudge(p, seed=3)) as s:
            spec = arena_spec(tmp, "f", s.url, 200, "{fraction: 1.0, times: 1}")
            rs = by_metric(run_spec(spec, results_dir=tmp / "r", progress=False).scores)
        print(f"arena_hard p={p}: theory agreement {(1 - p) ** 2 + p**2:.3f} kappa {(1 - 2 * p) ** 2:.3f} | {line(rs)}")


def alpaca(n: int = 150) -> None:
    tmp = Path(tempfile.mkdtemp())
    ev = [{"instruction": f"Instruction {i}: write about {i}.", "dataset": "demo"} for i in range(n)]
    base = [{"instruction": e["instruction"], "output": f"BASELINE {i}", "generator": "base"} for i, e in enumerate(ev)]
    (tmp / "ev.json").write_text(json.dumps(ev))
    (tmp / "base.json").write_text(json.dumps(base))
    (tmp / "no-lc").mkdir()
    for p in (0.1, 0.2):
        with FakeOpenAI(FlipJudge(p, seed=4)) as server:
            spec = tmp / f"ae{p}.yaml"
            spec.write_text(f"""name: ae{p}
models: [a]
backend: fake
generation: {{max_new_tokens: 8, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{server.url}", max_retries: 0, concurrency: 1, cache: false}}
tasks:
  alpaca_eval: {{eval_set: {tmp}/ev.json, baseline: {tmp}/base.json, lc_support_dir: {tmp}/no-lc,
                 both_orders: true, rejudge: {{fraction: 1.0, times: 1}}}}
""")
            rs = by_metric(run_spec(spec, results_dir=tmp / "r", progress=False).scores)
        print(
            f"alpaca_eval p={p}: theory position {2 * p * (1 - p):.3f} agreement {(1 - p) ** 2 + p**2:.3f} | {line(rs)}"
        )


def drift() -> None:
    runs = two_runs(Path(tempfile.mkdtemp()), changed=True)
    for extra in ([], ["--no-drift-check"]):
        sys.argv = [
            "evalharness",
            "regress",
            "--baseline",
            f"{runs['old']}:a",
            "--candidate",
            f"{runs['new']}:a",
            "--metrics",
            "arena_hard/score",
            "--drift-sample",
            "30",
            "--results-dir",
            str(runs["results"]),
            *extra,
        ]
        print("$", " ".join(sys.argv[1:]))
        try:
            cli.main()
        except SystemExit as e:
            print("exit", e.code)
    runs["server"].close()


if __name__ == "__main__":
    arena()
    alpaca()
    drift()
