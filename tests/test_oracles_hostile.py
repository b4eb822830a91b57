"""Hostile files at every reader, through the CLI in a child process (what `make reliability` found, kept found).

Each reader gets a binary file, a non-UTF-8 one, an empty one, one with a 3 MB broken line and one nested 100,000
deep (YAML, which pyyaml parses at about 100 KB/s here: 200 KB and 5,000 deep, still five times Python's recursion
limit). Each must end in a clean `error:` naming the file, exit 2, print no traceback and write nothing under a
fresh results folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import forkcli
import pytest
import yaml

PAIRS = [{"id": f"p{i}", "prompt": "the movie was", "chosen": " great fun", "rejected": " dull bad"} for i in range(4)]

KINDS = {
    "binary": lambda kind: bytes(range(256)) * 8,
    "non-utf8": lambda kind: {"yaml": b"name: caf\xe9\nmodels: [a]\n", "json": b'[{"instruction": "caf\xe9"}]',
                              "jsonl": b'{"id": "q1", "prompt": "caf\xe9", "question_id": "caf\xe9"}\n'}[kind],
    "empty": lambda kind: b"",
    "huge-line": lambda kind: (b'name: "' + b"x" * 200_000 if kind == "yaml" else b'{"x": "' + b"x" * 3_000_000) + b"\n",
    "deeply-nested": lambda kind: (b"[" * 5_000 + b"]" * 5_000) if kind == "yaml" else b"[" * 100_000 + b"]" * 100_000,
}


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import build_model
    d = tmp_path_factory.mktemp("hostile")
    build_model(d / "model", seed=0)
    (d / "good_prompts.jsonl").write_text(_jsonl([{"id": "q1", "prompt": "the movie"}]))
    (d / "good_pairs.jsonl").write_text(_jsonl(PAIRS))
    return d


def _run_spec(prompts: Path) -> str:
    return yaml.safe_dump({"name": "h", "models": ["a"], "backend": "fake", "generation": {"max_new_tokens": 8},
                           "tasks": {"sentiment": {"prompts": str(prompts)}}})


# reader: (file name, kind of content, CLI arguments for (hostile file, results dir, work dir))
READERS = {
    "eval prompts": ("prompts.jsonl", "jsonl", lambda f, r, w: [
        "eval", "--model", "a", "--backend", "fake", "--judges", "sentiment", "--prompts", str(f),
        "--results-dir", str(r)]),
    "run spec": ("spec.yaml", "yaml", lambda f, r, w: ["run", str(f), "--results-dir", str(r)]),
    "run spec's prompts": ("prompts.jsonl", "jsonl", lambda f, r, w: [
        "run", str(_write(f.with_name("spec.yaml"), _run_spec(f))), "--results-dir", str(r)]),
    "sweep spec": ("sweep.yaml", "yaml", lambda f, r, w: ["train", str(f), "--results-dir", str(r)]),
    "pairs (train data)": ("pairs.jsonl", "jsonl", lambda f, r, w: [
        "train", "--algorithm", "dpo", "--base", str(w / "model"), "--data", str(f), "--max-steps", "1",
        "--batch-size", "2", "--results-dir", str(r), "--output-dir", str(r / "train")]),
    "pairs prompts": ("prompts.jsonl", "jsonl", lambda f, r, w: [
        "pairs", "--model", str(w / "model"), "--prompts", str(f), "--out", str(r / "pairs.jsonl")]),
    "MT-Bench questions": ("questions.jsonl", "jsonl", lambda f, r, w: [
        "run", str(_task_spec(f, "mt_bench.questions")), "--results-dir", str(r)]),
    "MT-Bench judge prompts": ("judge_prompts.jsonl", "jsonl", lambda f, r, w: [
        "run", str(_task_spec(f, "mt_bench.judge_prompts")), "--results-dir", str(r)]),
    "Arena-Hard questions": ("questions.jsonl", "jsonl", lambda f, r, w: [
        "run", str(_task_spec(f, "arena_hard.questions")), "--results-dir", str(r)]),
    "AlpacaEval annotations": ("annotations.json", "json", lambda f, r, w: [
        "metrics", "alpaca-eval", str(f), "--save", "--results-dir", str(r)]),
    "Arena-Hard judgments": ("judgment.jsonl", "jsonl", lambda f, r, w: [
        "metrics", "arena-hard", str(f), "--baseline", "base", "--bootstrap-rounds", "5", "--save",
        "--results-dir", str(r)]),
    "Arena-Hard battles": ("arena_hard_battles.jsonl", "jsonl", lambda f, r, w: [
        "metrics", "arena-hard", str(f), "--baseline", "base", "--bootstrap-rounds", "5", "--save",
        "--results-dir", str(r)]),
    "MT-Bench judgments": ("gpt-4_single.jsonl", "jsonl", lambda f, r, w: [
        "metrics", "mt-bench", str(f), "--save", "--results-dir", str(r)]),
}


def _task_spec(f: Path, task: str) -> Path:
    """A run spec whose one task reads the hostile file ``f`` (the other inputs are the demo data's)."""
    demo = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"
    files = {"mt_bench": {"questions": demo / "mt_bench/questions.jsonl",
                          "judge_prompts": demo / "mt_bench/judge_prompts.jsonl",
                          "reference_answers": demo / "mt_bench/reference_answer/demo-reference.jsonl"},
             "arena_hard": {"data_dir": demo / "arena_hard", "questions": demo / "arena_hard/questions.jsonl",
                            "baseline": "demo-baseline"}}[task.split(".")[0]]
    files[task.split(".")[1]] = f
    spec = {"name": "h", "model": "a", "backend": "fake", "generation": {"max_new_tokens": 8},
            "judge": {"type": "openai", "model": "j", "base_url": "http://127.0.0.1:9"},
            "tasks": {task.split(".")[0]: {k: str(v) for k, v in files.items()}}}
    return _write(f.with_name("spec.yaml"), yaml.safe_dump(spec))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("reader", list(READERS))
def test_hostile_file_is_a_clean_error_naming_it(work, tmp_path, reader, kind):
    name, fmt, args = READERS[reader]
    f = tmp_path / name
    f.write_bytes(KINDS[kind](fmt))
    results = tmp_path / "results"
    done = forkcli.run(args(f, results, work), tmp_path,
                       {"EVALHARNESS_RESULTS": str(results), "EVALHARNESS_CACHE": str(tmp_path / "cache")}, timeout=60)
    assert done.code == 2, (done.code, done.stderr[-2000:])
    assert "Traceback" not in done.stderr and "error:" in done.stderr, done.stderr[-2000:]
    assert str(f) in done.stderr or name in done.stderr, done.stderr[-500:]
    written = [p for p in results.rglob("*") if p.is_file()] if results.exists() else []
    assert not written, written
