"""Evaluation jobs launched side by side (one SLURM array task per checkpoint) share one results root."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from evalharness.core.errors import EvalHarnessError
from evalharness.core.prompts import write_prompts
from evalharness.store import RunStore, read_jsonl


def test_concurrent_jobs_share_one_results_root(tmp_path: Path) -> None:
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film {i} was"} for i in range(40)], tmp_path / "p.jsonl")
    root = tmp_path / "results"
    env = {**os.environ, "EVALHARNESS_RESULTS": str(root)}
    jobs = [subprocess.Popen([sys.executable, "-m", "evalharness", "eval", "--backend", "fake", "--model", f"ckpt-{i}",
                              "--reference", "ckpt-0", "--prompts", str(prompts), "--judges", "sentiment,kl", "--n", "3",
                              "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(6)]
    outs = [j.communicate(timeout=300) for j in jobs]
    assert all(j.returncode == 0 for j in jobs), [e[-500:] for _, e in outs]
    run_ids = {json.loads(o)["run_id"] for o, _ in outs}
    assert len(run_ids) == 6  # one folder per job: run ids never collide
    with sqlite3.connect(root / "index.sqlite") as db:
        indexed = {r for (r,) in db.execute("SELECT run_id FROM runs WHERE status = 'complete'")}
        n_scores = db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]
    assert indexed == run_ids and n_scores == 6 * 4  # sentiment, length, kl, kl_k3 of each job's model
    for rid in run_ids:
        store = RunStore(root / rid)
        assert store.manifest()["status"] == "complete"
        for name in ("generations", "verdicts"):  # every line parses; nothing torn, nothing duplicated
            text = (store.path / f"{name}.jsonl").read_text()
            rows = read_jsonl(store.path / f"{name}.jsonl")
            assert len(rows) == text.count("\n") and len({json.dumps(r, sort_keys=True) for r in rows}) == len(rows)
        assert len(store.generations()) == 40 * 3


def test_one_run_folder_has_one_writer(tmp_path: Path) -> None:
    manifest = {"run_id": "r", "config": {"x": 1}}
    first = RunStore.open("r", manifest, tmp_path)
    with pytest.raises(EvalHarnessError, match="being written by another process"):
        RunStore.open("r", manifest, tmp_path)
    first.finish([], {"scores": []}, "now")
    RunStore.open("r", manifest, tmp_path)  # free again once the first writer finished


@pytest.mark.parametrize("bad", ["../escape", "/abs/path", "a/b", "..", ""])
def test_run_ids_stay_inside_the_results_root(tmp_path: Path, bad: str) -> None:
    with pytest.raises(EvalHarnessError, match="cannot be a folder name"):
        RunStore.open(bad, {"run_id": bad, "config": {}}, tmp_path / "results")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "results").exists()
