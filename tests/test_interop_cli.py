"""`evalharness metrics ...` on the official files reproduces the leaderboards and imports into the store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest


def _cli(*args, cwd):
    env = {**os.environ, "EVALHARNESS_RESULTS": str(cwd / "results")}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_arena_hard_battles_reproduce_and_import(benchdata, tmp_path):
    battles = next((benchdata / "arena_hard" / "battles").glob("*.jsonl"))
    r = _cli("metrics", "arena-hard", str(battles), "--bootstrap-rounds", "10", "--json", "--save", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["models"]
    assert round(m["gpt-3.5-turbo-0125"]["score"], 2) == 23.34 and round(m["gpt-4-0613"]["score"], 2) == 37.90
    with sqlite3.connect(tmp_path / "results" / "index.sqlite") as db:
        rows = dict(db.execute("SELECT model, value FROM scores WHERE task = 'arena_hard'").fetchall())
    assert rows["gpt-4-0613"] == pytest.approx(m["gpt-4-0613"]["score"])


def test_mt_bench_and_alpaca_eval_cli(benchdata, tmp_path):
    r = _cli("metrics", "mt-bench", str(benchdata / "mt_bench" / "model_judgment" / "official_derived"), "--json",
             cwd=tmp_path)
    m = json.loads(r.stdout)["models"]
    assert round(m["gpt-4"]["score"], 2) == 8.99 and round(m["alpaca-13b"]["score"], 2) == 4.53
    ann = benchdata / "alpaca_eval" / "results" / "alpaca-7b" / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
    r = _cli("metrics", "alpaca-eval", str(ann), cwd=tmp_path)
    assert r.returncode == 0 and "win_rate" in r.stdout and "2.5915" in r.stdout


def test_missing_file_fails_cleanly(tmp_path):
    r = _cli("metrics", "mt-bench", str(tmp_path / "nope.jsonl"), cwd=tmp_path)
    assert r.returncode == 2 and "nope.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_official_alpaca_eval_package_imports():
    """Users run the official alpaca_eval CLI beside ours, in the same venv (it needs pkg_resources)."""
    import importlib
    assert importlib.import_module("alpaca_eval.main").evaluate is not None
