"""The CLI as a user calls it: real subprocesses, exit codes, messages, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EVALHARNESS_RESULTS": str(cwd / "results")}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _prompts(tmp_path: Path, n: int = 6) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": f"review {i}"}]}) + "\n"
                         for i in range(n)))
    return p


def test_eval_json_then_show(tmp_path):
    p = _prompts(tmp_path)
    r = _run("eval", "--backend", "fake", "--model", "a", "--model", "b", "--reference", "a", "--prompts", str(p),
             "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    metrics = {(s["model"], s["metric"]) for s in summary["scores"]}
    assert {("a", "sentiment"), ("b", "toxicity"), ("a", "kl"), ("b", "kl_k3"), ("a", "length")} <= metrics
    kl_a = next(s for s in summary["scores"] if s["model"] == "a" and s["metric"] == "kl")
    assert kl_a["value"] == 0.0 and kl_a["n"] == 6 and kl_a["baseline"] == "a" and kl_a["judge_id"] == "kl:a"
    shown = _run("show", summary["run_id"], "--json", cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout) == summary
    table = _run("show", summary["run_id"], cwd=tmp_path)
    assert "sentiment" in table.stdout and "95% CI" in table.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = _run("show", summary["run_id"], "--results-dir", str(tmp_path / "results"), "--json", cwd=elsewhere)
    assert shown.returncode == 0 and json.loads(shown.stdout) == summary


def test_generate_writes_jsonl(tmp_path, tiny_model):
    p = _prompts(tmp_path, 3)
    out = tmp_path / "out" / "gens.jsonl"
    r = _run("generate", "--model", str(tiny_model), "--prompts", str(p), "--out", str(out), "--n", "2",
             "--temperature", "1", "--max-new-tokens", "5", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["sample_index"]) for x in rows] == [(f"r{i}", s) for i in range(3) for s in range(2)]
    assert all(1 <= x["n_tokens"] <= 5 and x["params"]["seed"] == 1 for x in rows)


def test_bad_inputs_fail_cleanly(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "promt": "y"}\n')
    r = _run("eval", "--backend", "fake", "--model", "a", "--prompts", str(bad), "--judges", "sentiment", cwd=tmp_path)
    assert r.returncode == 2 and f"{bad}:2" in r.stderr and "prompt" in r.stderr and "Traceback" not in r.stderr
    r = _run("eval", "--model", "no-such-model", "--prompts", str(_prompts(tmp_path)), "--judges", "sentiment",
             cwd=tmp_path)
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr
    r = _run("eval", "--model", str(tmp_path), "--prompts", str(_prompts(tmp_path)), "--judges", "sentiment", cwd=tmp_path)
    assert r.returncode == 2 and "not a model directory" in r.stderr
    r = _run("eval", "--backend", "fake", "--model", "a", "--prompts", str(_prompts(tmp_path)), "--judges", "kl",
             cwd=tmp_path)
    assert r.returncode == 2 and "--reference" in r.stderr
    r = _run("show", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "no run 'nope'" in r.stderr
    assert not (tmp_path / "results").exists()  # nothing half-written
