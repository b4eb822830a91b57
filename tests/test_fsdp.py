"""FSDP2 on CPU: two torchrun processes (gloo) shard the tiny model with torch's fully_shard and reproduce one
process's losses; checkpoints are full model folders gathered from the shards; reference log-probs are split
across the processes; a killed sharded run resumes (optimizer state broadcast from rank 0)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from trainkit import (SCRIPT, assert_rows_match, assert_same_weights, base, child_env, pairs,  # noqa: F401
                      torchrun, weights)

from evalharness.training.trainer import TrainConfig, train

OPTS = dict(algorithm="dpo", learning_rate=5e-3, max_steps=6, save_every=2, warmup_ratio=0.2)
TOL = 1e-5  # the sums of a sharded step run in another order (reduce-scatter vs one process): float error only


@pytest.fixture(scope="module")
def one_process(base, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    return train(TrainConfig(**OPTS, base=str(base), data=str(pairs), batch_size=4, output_dir=str(out)))


def launch(base: Path, pairs: Path, out: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    """Two processes, two examples each per step (global batch 4, as the one-process run), FSDP2 on."""
    script = out.parent / "run.py"
    script.write_text(SCRIPT)
    opts = {**OPTS, "base": str(base), "data": str(pairs), "batch_size": 2, "output_dir": str(out), "fsdp": True}
    return subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", str(script), json.dumps(opts),
                           str(out)], env=child_env(kill), capture_output=True, text=True, timeout=300)


def assert_matches(out: Path, want) -> None:
    for rank in (0, 1):
        assert_rows_match(json.loads(Path(f"{out}.rank{rank}").read_text()), want.metrics, TOL, f"rank {rank}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_rows_match(rows, want.metrics, TOL, "metrics.jsonl")
    assert_same_weights(out / "checkpoint-6", want.output_dir / "checkpoint-6", TOL)


def test_fsdp2_two_processes_reproduce_one_process(base, pairs, tmp_path, one_process):
    out = tmp_path / "fsdp"
    res = launch(base, pairs, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_matches(out, one_process)
    # the sharded path really ran: FSDP2 named in the log and the checkpoint manifest
    man = json.loads((out / "checkpoint-6" / "evalharness_manifest.json").read_text())
    assert man["parallel"] == {"processes": 2, "strategy": "fsdp2"}
    # full checkpoints from sharded state: every tensor at its full shape, loadable by transformers as is
    from transformers import AutoModelForCausalLM
    full = {k: tuple(v.shape) for k, v in weights(base).items()}
    assert {k: tuple(v.shape) for k, v in weights(out / "checkpoint-6").items()} == full
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint-6")
    assert sum(p.numel() for p in model.parameters()) == sum(int(torch.tensor(s).prod()) for s in full.values())
    # the full optimizer state (gathered from the shards) is what one process saves
    opt = torch.load(out / "checkpoint-6" / "training_state" / "optimizer.pt", weights_only=True)
    opt0 = torch.load(one_process.output_dir / "checkpoint-6" / "training_state" / "optimizer.pt", weights_only=True)
    assert opt["state"].keys() == opt0["state"].keys()
    for k, s in opt["state"].items():
        assert s["exp_avg_sq"].shape == opt0["state"][k]["exp_avg_sq"].shape
        assert torch.allclose(s["exp_avg"], opt0["state"][k]["exp_avg"], atol=TOL)
    # reference log-probs: each process scored its half, and the gathered table is one process's
    for rank in (0, 1):
        log = Path(f"{out}.log{rank}").read_text()
        assert f"reference log-probs for 12 examples: 6 on process {rank} of 2" in log and "fsdp2" in log
    ref = torch.load(out / "reference_logps.pt", weights_only=True)
    ref0 = torch.load(one_process.output_dir / "reference_logps.pt", weights_only=True)
    assert ref.shape == (12, 2) and torch.allclose(ref, ref0, atol=TOL)


def test_fsdp2_killed_run_resumes(base, pairs, tmp_path, one_process):
    out = tmp_path / "fsdp"
    killed = launch(base, pairs, out, kill="after_optimizer:4:0")
    assert killed.returncode != 0 and "exitcode: -9" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = launch(base, pairs, out)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after step 2 from checkpoint-2" in Path(f"{out}.log1").read_text()
    assert_matches(out, one_process)
