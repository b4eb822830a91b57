"""Hostile and malformed inputs, property-based (hypothesis), through the CLI (typer's CliRunner, as
``evalharness.cli.main`` reports errors): every parser gets truncated, empty, binary, deeply nested,
huge-line, wrong-type and random inputs derived from a valid file. Each case must end in a clean
``error:`` (an EvalHarnessError) naming the file, a non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

import json
import shutil
import tempfile
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from evalharness.cli import app
from evalharness.core.errors import EvalHarnessError

PAIRS = [{"id": f"p{i}", "prompt": "the movie was", "chosen": " great fun", "rejected": " dull bad"} for i in range(4)]
ANNOTATIONS = [{"instruction": f"task {i}", "output_1": "base answer", "generator_1": "base", "output_2": f"answer {i}",
                "generator_2": "mine", "annotator": "weighted_alpaca_eval_gpt4_turbo", "preference": 1.0 + i % 2 * 0.7}
               for i in range(4)]
JUDGMENTS = [{"uid": f"u{i}", "category": "arena-hard-v0.1", "judge": "j", "model": "mine", "baseline": "base",
              "games": [{"score": "B>A", "judgment": {"answer": "[[B>A]]"}}, {"score": "A=B", "judgment": {"answer": "[[A=B]]"}}]}
             for i in range(4)]
BATTLES = [{"question_id": f"u{i}", "model_a": "base", "model_b": "mine", "winner": w}
           for i, w in enumerate(["model_a", "model_b", "tie", "model_b"])]
MT = [{"question_id": 81 + i, "model": "mine", "judge": ["gpt-4", "single-v1"], "judgment": "Rating: [[7]]",
       "score": 7.0, "turn": 1, "tstamp": 0.0} for i in range(4)]


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=20),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=10)


def _replace_somewhere(data: Any, value: Any, path: list[int]) -> Any:
    """``data`` with one node (chosen by ``path`` of indices) replaced by ``value``: a wrong type in a valid shape."""
    if not path or not isinstance(data, (dict, list)) or not data:
        return value
    keys = list(data) if isinstance(data, dict) else list(range(len(data)))
    k = keys[path[0] % len(keys)]
    out = dict(data) if isinstance(data, dict) else list(data)
    out[k] = _replace_somewhere(data[k], value, path[1:])
    return out


def hostile(seed: bytes, kind: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """Inputs derived from a valid file; ``kind`` is json, jsonl or yaml."""
    load = (lambda b: yaml.safe_load(b)) if kind == "yaml" else (lambda b: [json.loads(l) for l in b.splitlines()]) \
        if kind == "jsonl" else json.loads
    dump = (lambda d: yaml.safe_dump(d).encode()) if kind == "yaml" else jsonl if kind == "jsonl" else \
        (lambda d: json.dumps(d).encode())
    valid = load(seed)
    nest = st.integers(50, 200_000).map(lambda n: ("deeply nested", (b"[" * n + b"]" * n) if n % 2 else b"{\"a\":" * n))
    return st.one_of(
        st.integers(0, max(0, len(seed) - 1)).map(lambda k: ("truncated", seed[:k])),
        st.just(("empty", b"")),
        st.binary(min_size=1, max_size=300).map(lambda b: ("binary", b)),
        nest,
        st.integers(100_000, 3_000_000).map(lambda n: ("huge line", seed.rstrip(b"\n") + b" " * 0 + b"\n"
                                                        + b'{"x": "' + b"x" * n + b'"\n')),
        st.tuples(json_values, st.lists(st.integers(0, 50), min_size=1, max_size=3)).map(
            lambda t: ("wrong type", dump(_replace_somewhere(valid, t[0], t[1])))),
        st.text(max_size=200).map(lambda s: ("random text", s.encode("utf-8", "surrogatepass"))),
    )


class Case:
    """One parser: the file it reads, how the CLI is called on it, where outputs would land."""

    def __init__(self, name: str, file_name: str, seed: bytes, kind: str,
                 args: Callable[[Path, Path], list[str]]) -> None:
        self.name, self.file_name, self.seed, self.kind, self.args = name, file_name, seed, kind, args


def cases(work: Path, model: Path) -> list[Case]:
    prompts = work / "good_prompts.jsonl"
    prompts.write_bytes(jsonl([{"id": "q1", "prompt": "the movie"}, {"id": "q2", "prompt": "a plot"}]))
    pairs = work / "good_pairs.jsonl"
    pairs.write_bytes(jsonl(PAIRS))
    run_seed = yaml.safe_dump({"name": "h", "models": ["a"], "backend": "fake", "generation": {"max_new_tokens": 8},
                               "tasks": {"sentiment": {"prompts": str(prompts)}}}).encode()
    sweep_seed = yaml.safe_dump({"name": "s", "base": str(work / "no-such-model"), "data": {"path": str(pairs)},
                                 "algorithms": {"dpo": {"beta": 0.1}}, "seeds": [0],
                                 "train": {"max_steps": 1, "batch_size": 2}}).encode()
    return [
        Case("prompts JSONL (eval)", "prompts.jsonl", jsonl([{"id": "q1", "prompt": "the movie"},
                                                            {"id": "q2", "messages": [{"role": "user", "content": "hi"}]}]),
             "jsonl", lambda f, r: ["eval", "--model", "a", "--backend", "fake", "--judges", "sentiment",
                                    "--prompts", str(f), "--results-dir", str(r)]),
        Case("pairs JSONL (train)", "pairs.jsonl", jsonl(PAIRS), "jsonl",
             lambda f, r: ["train", "--algorithm", "dpo", "--base", str(model), "--data", str(f), "--max-steps", "1",
                           "--batch-size", "2", "--results-dir", str(r), "--output-dir", str(r / "train")]),
        Case("run spec", "spec.yaml", run_seed, "yaml", lambda f, r: ["run", str(f), "--results-dir", str(r)]),
        Case("sweep spec", "sweep.yaml", sweep_seed, "yaml", lambda f, r: ["train", str(f), "--results-dir", str(r)]),
        Case("AlpacaEval annotations", "annotations.json", json.dumps(ANNOTATIONS).encode(), "json",
             lambda f, r: ["metrics", "alpaca-eval", str(f), "--save", "--results-dir", str(r)]),
        Case("Arena-Hard judgments", "judgment.jsonl", jsonl(JUDGMENTS), "jsonl",
             lambda f, r: ["metrics", "arena-hard", str(f), "--baseline", "base", "--bootstrap-rounds", "5",
                           "--save", "--results-dir", str(r)]),
        Case("Arena-Hard battles", "arena_hard_battles.jsonl", jsonl(BATTLES), "jsonl",
             lambda f, r: ["metrics", "arena-hard", str(f), "--baseline", "base", "--bootstrap-rounds", "5",
                           "--save", "--results-dir", str(r)]),
        Case("MT-Bench judgments", "gpt-4_single.jsonl", jsonl(MT), "jsonl",
             lambda f, r: ["metrics", "mt-bench", str(f), "--save", "--results-dir", str(r)]),
    ]


runner = CliRunner()


def invoke(args: list[str]) -> tuple[str, str, int]:
    """Outcome (error, accepted, traceback), the message, and the exit code ``cli.main`` would give."""
    res = runner.invoke(app, args, catch_exceptions=True)
    exc = res.exception
    if exc is None or (isinstance(exc, SystemExit) and res.exit_code == 0):
        return "accepted", "", 0
    if isinstance(exc, EvalHarnessError):
        return "error", f"error: {exc}", 2
    if isinstance(exc, SystemExit):  # typer's own usage errors
        return ("error", res.output.strip()[-300:], res.exit_code) if res.exit_code else ("accepted", "", 0)
    return "traceback", "".join(traceback.format_exception(exc))[-2000:], 1


def run_case(case: Case, work: Path, label: str, data: bytes, stats: dict[str, Any]) -> None:
    folder = Path(tempfile.mkdtemp(dir=work))
    try:
        f = folder / case.file_name
        f.write_bytes(data)
        results = folder / "results"
        outcome, message, code = invoke(case.args(f, results))
        stats["tried"] += 1
        stats["kinds"][label] += 1
        stats["outcomes"][outcome] += 1
        if outcome == "error" and "unknown model" in message and "no-such-model" in message:
            outcome = "accepted"  # a valid sweep spec: it failed on its (deliberately absent) base model
            stats["outcomes"]["error"] -= 1
            stats["outcomes"]["accepted"] += 1
        if outcome == "traceback":
            stats["tracebacks"].append({"kind": label, "input": data[:200].decode("utf-8", "replace"), "trace": message})
        elif outcome == "error":
            if str(f) not in message and case.file_name not in message:
                stats["unnamed"].append({"kind": label, "message": message[:300]})
            if ":" in message.split(case.file_name, 1)[-1][:3] or "field" in message:
                stats["with_line_or_field"] += 1
            written = [str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()] if results.exists() else []
            if written:
                stats["half_written"].append({"kind": label, "files": written[:5], "message": message[:200]})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(work: Path, examples: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    from tiny import build_model
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work / "tiny-model", seed=0, logit_scale=30.0)
    out = []
    for case in cases(work, model):
        stats: dict[str, Any] = {"parser": case.name, "tried": 0, "kinds": Counter(), "outcomes": Counter(),
                                 "tracebacks": [], "unnamed": [], "half_written": [], "with_line_or_field": 0}

        @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(hostile(case.seed, case.kind))
        def prop(sample: tuple[str, bytes]) -> None:
            run_case(case, work, sample[0], sample[1], stats)

        prop()
        s = {**stats, "kinds": dict(stats["kinds"]), "outcomes": dict(stats["outcomes"]),
             "n_tracebacks": len(stats["tracebacks"]), "n_half_written": len(stats["half_written"]),
             "n_unnamed": len(stats["unnamed"])}
        log(f"  {case.name:26s} cases {s['tried']:4d}  clean errors {s['outcomes'].get('error', 0):4d}  "
            f"accepted {s['outcomes'].get('accepted', 0):3d}  tracebacks {s['n_tracebacks']}  "
            f"half-written {s['n_half_written']}  errors not naming the file {s['n_unnamed']}")
        out.append(s)
    return {"parsers": out, "cases": sum(s["tried"] for s in out), "tracebacks": sum(s["n_tracebacks"] for s in out),
            "half_written": sum(s["n_half_written"] for s in out), "unnamed": sum(s["n_unnamed"] for s in out)}
