"""Throughput of JudgeClient on an AlpacaEval-sized judging job against the fake OpenAI server.

805 pairwise judgments (AlpacaEval 2's eval-set size), each a logprob-weighted request of the kind
``weighted_alpaca_eval_gpt4_turbo`` makes (max_tokens=1, top_logprobs=5), served over real HTTP with
a fixed latency per request. Runs the same job sequentially (concurrency 1) and concurrently, side by
side, then again from the response cache, which must make zero requests.

The server runs in its own process (``FakeOpenAIProcess``), as a real endpoint would: in-process, its
handler threads would take the GIL from the client and the ratio would time both. The goal is 0.9x
of the latency-only ideal speed-up, ceil(n / concurrency) rounds of one latency each against n
latencies, at concurrency 32; the other concurrencies are reported.

    python benchmarks/perf/judge_client_throughput.py [--n 805] [--latency-ms 50] [--concurrency 32 128]
        [--out benchmarks/perf/results/judge_client_throughput.json]
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
import zlib
from pathlib import Path
from typing import Any

import aiohttp

from evalharness.backends.client import ChatRequest, ClientConfig, JudgeClient
from evalharness.testing import FakeOpenAIProcess, Reply
from evalharness.testing.fake_openai import request_text

GOAL_OF_IDEAL = 0.9  # of the latency-only ideal speed-up, at the first concurrency given
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "judge_client_throughput.json"

SYSTEM = "You are a highly efficient assistant, who evaluates and selects the best large language model (LLMs)."
TEMPLATE = """I require a leaderboard for various large language models. I'll provide you with prompts given to \
these models and their corresponding outputs. Your task is to assess these responses, and select the model that \
produces the best output from a human perspective.

## Instruction

{{"instruction": "{instruction}"}}

## Model Outputs

{{"model_identifier": "m", "output": "{output_1}"}}
{{"model_identifier": "M", "output": "{output_2}"}}

## Task

Evaluate the models based on the quality and relevance of their outputs, and select the model that generated \
the best output. Answer by providing the model identifier of the best model. Output only "m" or "M"."""


def judgment_requests(n: int) -> list[ChatRequest]:
    """``n`` distinct pairwise judgments shaped like AlpacaEval 2's logprob-weighted annotator calls."""
    requests = []
    for i in range(n):
        prompt = TEMPLATE.format(instruction=f"Instruction {i}: explain topic {i % 97} to a new student.",
                                 output_1=f"Baseline answer {i}. " * 20, output_2=f"Policy answer {i}. " * 25)
        requests.append(ChatRequest(id=f"alpaca-{i}", model="fake-judge", max_tokens=1, logprobs=True,
                                    top_logprobs=5, template_version="alpaca_eval_clf_gpt4_turbo",
                                    messages=[{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": prompt}]))
    return requests


def judge(body: dict[str, Any]) -> Reply:
    """Prefer m or M by a stable function of the prompt, with top-5 alternatives for the one token."""
    first, second = ("m", "M") if zlib.crc32(request_text(body).encode()) % 2 else ("M", "m")
    return Reply(first, top_logprobs=[[(first, -0.2), (second, -1.7), ("The", -6.0), ("**", -7.5), ("\n", -9.0)]])


def timed_run(server: FakeOpenAIProcess, requests: list[ChatRequest], concurrency: int, cache_dir: Path,
              name: str) -> dict[str, Any]:
    """One full pass of the job with a fresh client; the server's counters are reset first."""
    server.reset()
    client = JudgeClient(ClientConfig(base_url=server.url, model="fake-judge", concurrency=concurrency,
                                      cache_dir=cache_dir, timeout_s=30.0))
    load = os.getloadavg()[0]
    server_cpu = server.cpu_s
    started, cpu = time.perf_counter(), time.process_time()
    results = client.complete(requests)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    client.close()
    # CPU per request tells what bounds a run on a machine shared with other work: the client's own
    # (this process) against the server's, and the load average says how contended the cores were.
    return {"name": name, "concurrency": concurrency, "wall_s": round(wall, 3),
            "requests_per_s": round(len(requests) / wall, 1), "ok": sum(r.status == "ok" for r in results),
            "server_requests": server.requests, "server_max_in_flight": server.max_in_flight,
            "client_cpu_ms_per_request": round(1000 * cpu / len(requests), 3),
            "server_cpu_ms_per_request": round(1000 * (server.cpu_s - server_cpu) / len(requests), 3),
            "load_avg_1m_at_start": round(load, 2), "usage": client.usage}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=805, help="number of judgments (AlpacaEval 2: 805)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="fixed server latency per request")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128],
                        help="concurrencies to run; the goal applies to the first")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the result JSON")
    args = parser.parse_args(argv)

    requests = judgment_requests(args.n)
    latency = args.latency_ms / 1000
    # Separate cache folders: a concurrent run must not be served by an earlier run's answers.
    with tempfile.TemporaryDirectory(prefix="judge-bench-") as tmp, \
            FakeOpenAIProcess(judge, latency_s=latency) as server:
        sequential = timed_run(server, requests, 1, Path(tmp, "seq"), "sequential")
        concurrent = [timed_run(server, requests, c, Path(tmp, f"c{c}"), f"concurrency {c}") for c in args.concurrency]
        first = args.concurrency[0]
        cached = timed_run(server, requests, first, Path(tmp, f"c{first}"), "cache re-run")
    runs = [sequential, *concurrent, cached]
    for run in concurrent:
        c = run["concurrency"]
        run["speedup"] = round(sequential["wall_s"] / run["wall_s"], 2)
        run["ideal_speedup"] = round(args.n / math.ceil(args.n / c), 2)
        run["of_ideal"] = round(run["speedup"] / run["ideal_speedup"], 3)
    goal = concurrent[0]

    print(f"{args.n} judgment requests, {args.latency_ms:g} ms server latency each, "
          f"fake OpenAI server in its own process on 127.0.0.1")
    print(f"{'run':<18}{'wall s':>9}{'req/s':>9}{'server reqs':>13}{'max in flight':>15}{'cache hits':>12}"
          f"{'client ms cpu/req':>19}{'load':>6}{'speed-up':>10}{'ideal':>8}{'of ideal':>10}")
    for run in runs:
        tail = (f"{run['speedup']:>9.1f}x{run['ideal_speedup']:>7.1f}x{run['of_ideal']:>10.2f}"
                if "speedup" in run else "")
        print(f"{run['name']:<18}{run['wall_s']:>9.2f}{run['requests_per_s']:>9.1f}{run['server_requests']:>13}"
              f"{run['server_max_in_flight']:>15}{run['usage']['cache_hits']:>12}"
              f"{run['client_cpu_ms_per_request']:>19.2f}{run['load_avg_1m_at_start']:>6.1f}{tail}")
    met = goal["of_ideal"] >= GOAL_OF_IDEAL
    print(f"concurrency {goal['concurrency']} vs 1: {goal['speedup']:.1f}x = {goal['of_ideal']:.2f} of the "
          f"latency-only ideal {goal['ideal_speedup']:.1f}x (goal >= {GOAL_OF_IDEAL:g}: {'met' if met else 'NOT met'})")
    print(f"cache re-run: {cached['server_requests']} requests received by the server")

    result = {"benchmark": "judge_client_throughput", "n_requests": args.n, "latency_ms": args.latency_ms,
              "concurrency": args.concurrency, "runs": runs, "speedup": goal["speedup"],
              "ideal_speedup": goal["ideal_speedup"], "of_ideal": goal["of_ideal"],
              "goal_of_ideal": GOAL_OF_IDEAL, "meets_goal": met,
              "cache_rerun_server_requests": cached["server_requests"],
              "environment": {"python": platform.python_version(), "platform": platform.platform(),
                              "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                              "aiohttp": aiohttp.__version__}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")

    if cached["server_requests"] != 0:
        print("FAIL: the cache re-run reached the server", file=sys.stderr)
        return 1
    if any(run["ok"] != args.n for run in runs):
        print("FAIL: some judgments failed against the fake server", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
