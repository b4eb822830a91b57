"""Judge faults: 805 AlpacaEval-style judgments through the one run loop (fake policy, real HTTP to the
fake judge server) with 429s (with and without Retry-After), 5xx, timeouts, connection resets, malformed
JSON, bodies without choices and truncated bodies injected into 20% and 60% of requests; then a rerun
with a healthy endpoint; then an endpoint that is down for a whole run."""

from __future__ import annotations

import hashlib
import json
import random
import socket
import sqlite3
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from common import DEMO, cli, run_to_end
from kill9 import judge_responder

from evalharness.backends.client import ClientConfig, JudgeClient
from evalharness.pipeline.runner import plan_from_spec, run
from evalharness.store import RunStore, read_jsonl
from evalharness.testing import FakeOpenAI, Fault

N = 805
TIMEOUT_S = 0.8
KINDS = ("429 Retry-After", "429", "5xx", "timeout", "connection reset", "malformed JSON", "no choices", "truncated")


def fault(kind: str, rng: random.Random) -> Fault:
    return {"429 Retry-After": lambda: Fault.http(429, retry_after=0.05), "429": lambda: Fault.http(429),
            "5xx": lambda: Fault.http(rng.choice((500, 502, 503, 504))), "timeout": lambda: Fault.delay(TIMEOUT_S + 0.4),
            "connection reset": Fault.connection_reset, "malformed JSON": Fault.malformed,
            "no choices": Fault.no_choices, "truncated": Fault.truncated}[kind]()


class Faulty:
    """A responder failing a fraction of requests with a uniform mix of the fault kinds; counts what it sent."""

    def __init__(self, rate: float, seed: int) -> None:
        self.rate, self.rng, self.lock = rate, random.Random(seed), threading.Lock()
        self.injected: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # successful answers per distinct judgment

    def __call__(self, body: dict[str, Any]) -> Any:
        with self.lock:
            kind = self.rng.choice(KINDS) if self.rng.random() < self.rate else None
            if kind:
                self.injected[kind] += 1
                return fault(kind, self.rng)
            self.answered[hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest()] += 1
        return judge_responder(body)


def write_data(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    instructions = [f"Instruction {i}: explain topic {i % 97} to a new student in a few lines." for i in range(N)]
    eval_set = folder / "eval_set.json"
    eval_set.write_text(json.dumps([{"instruction": s, "dataset": "reliability"} for s in instructions]))
    baseline = folder / "baseline.json"
    baseline.write_text(json.dumps([{"instruction": s, "output": f"A baseline answer to {i}.", "generator": "base",
                                     "dataset": "reliability"} for i, s in enumerate(instructions)]))
    return eval_set, baseline


def spec(folder: Path, url: str, eval_set: Path, baseline: Path, judge_extra: str = "") -> Path:
    path = folder / "spec.yaml"
    path.write_text(f"""\
name: faults
model: a
backend: fake
generation: {{max_new_tokens: 24}}
judge: {{type: openai, model: judge-x, base_url: "{url}"{judge_extra}}}
tasks:
  alpaca_eval: {{eval_set: {eval_set}, baseline: {baseline}, lc_support_dir: {DEMO}/alpaca_eval}}
""")
    return path


def faulty_run(folder: Path, rate: float, seed: int) -> dict[str, Any]:
    """One run at ``rate``, then a rerun against a healthy endpoint (same URL, same cache)."""
    eval_set, baseline = write_data(folder)
    responder = Faulty(rate, seed)
    with FakeOpenAI(responder) as server:
        path = spec(folder, server.url, eval_set, baseline)

        def one() -> tuple[Any, JudgeClient]:
            plan = plan_from_spec(path, results_dir=folder / "results", progress=False)
            client = JudgeClient(ClientConfig(base_url=server.url, model="judge-x", concurrency=32, max_retries=6,
                                              timeout_s=TIMEOUT_S, backoff_base_s=0.02, backoff_max_s=0.3,
                                              cache_dir=folder / "cache"))
            plan.chat_judge = (client, "judge-x")
            return run(plan), client

        first, client = one()
        usage, requests = client.usage, server.requests
        client.close()
        store = RunStore(first.path)
        rows = read_jsonl(first.path / "verdicts.jsonl")
        keys = Counter(r["key"] for r in rows)
        verdicts = store.verdicts("alpaca_eval", "a")
        score = next(s for s in first.scores if s.metric == "win_rate")
        failed = sum(v.status == "error" for v in verdicts)
        responder.rate = 0.0  # the endpoint recovers
        server.reset()
        second, client2 = one()
        client2.close()
        rerun_requests = server.requests
        final = RunStore(second.path).verdicts("alpaca_eval", "a")
        rescore = next(s for s in second.scores if s.metric == "win_rate")
    return {"fault_rate": rate, "judgments": N, "faults_injected": dict(responder.injected),
            "completed": sum(v.status == "ok" for v in verdicts), "retried": usage["retries"],
            "failed_and_counted": failed, "failed_counted_in_score": score.n_skipped == failed and score.n == N - failed,
            "lost": N - len(keys), "duplicated": sum(c - 1 for c in keys.values() if c > 1),
            "judge_answers_used_twice": sum(c - 1 for c in responder.answered.values() if c > 1),
            "requests": requests, "requests_per_judgment": round(requests / N, 3),
            "rerun_requests": rerun_requests, "rerun_completed": sum(v.status == "ok" for v in final),
            "rerun_completes_every_failed_item": len(final) == N and all(v.status == "ok" for v in final)
            and rerun_requests == failed and rescore.n == N}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint_down(folder: Path) -> dict[str, Any]:
    """The whole run against a closed port (CLI), then again once the endpoint is up at the same URL."""
    eval_set, baseline = write_data(folder)
    port = free_port()
    path = spec(folder, f"http://127.0.0.1:{port}/v1", eval_set, baseline, ", max_retries: 1, timeout_s: 5")
    extra = {"EVALHARNESS_CACHE": str(folder / "cache")}
    rc, _ = run_to_end(cli("run", str(path), "--results-dir", "results"), folder, extra, log=folder / "down.log")
    log = (folder / "down.log").read_text(errors="replace")
    db = folder / "cache" / "responses" / "chat.sqlite"
    cached = 0
    if db.is_file():
        with sqlite3.connect(db) as c:
            cached = c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    run_dir = next((folder / "results").glob("faults-*"))
    down_verdicts = RunStore(run_dir).verdicts("alpaca_eval", "a")
    with FakeOpenAI(judge_responder, port=port) as server:
        rc2, _ = run_to_end(cli("run", str(path), "--results-dir", "results", "--json"), folder, extra,
                            log=folder / "up.log")
        later = RunStore(run_dir).verdicts("alpaca_eval", "a")
        requests = server.requests
    lines = [l for l in log.splitlines() if "fail" in l.lower() or "error" in l.lower()]
    return {"exit_code_down": rc, "message": lines[-3:], "traceback": "Traceback" in log,
            "verdicts_down": {"ok": sum(v.status == "ok" for v in down_verdicts),
                              "error": sum(v.status == "error" for v in down_verdicts)},
            "cached_results_while_down": cached, "later_run_exit_code": rc2, "later_run_requests": requests,
            "later_run_completed": sum(v.status == "ok" for v in later), "later_run_completes": rc2 == 0
            and len(later) == N and all(v.status == "ok" for v in later)}


def main(work: Path, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    out: dict[str, Any] = {"mixes": []}
    for k, rate in enumerate((0.2, 0.6)):
        log(f"judge faults: {N} judgments, {rate:.0%} of requests faulty ({', '.join(KINDS)})")
        r = faulty_run(work / f"rate{int(rate * 100)}", rate, seed + k)
        log(f"  completed {r['completed']}, retried {r['retried']}, failed-and-counted {r['failed_and_counted']} "
            f"(in the score's n_skipped: {r['failed_counted_in_score']}), lost {r['lost']}, duplicated {r['duplicated']}, "
            f"requests/judgment {r['requests_per_judgment']}; rerun: {r['rerun_requests']} requests, "
            f"completes every failed item: {r['rerun_completes_every_failed_item']}")
        out["mixes"].append(r)
    log("judge endpoint down for a whole run")
    d = endpoint_down(work / "down")
    log(f"  exit {d['exit_code_down']}, message {d['message']!r}, traceback {d['traceback']}, "
        f"cached as results {d['cached_results_while_down']}; later run: exit {d['later_run_exit_code']}, "
        f"completed {d['later_run_completed']}/{N}")
    out["endpoint_down"] = d
    return out
