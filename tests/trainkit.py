"""Shared pieces of the trainer tests: the tiny preference data, child trainer processes, run comparisons."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import pytest
import torch

from evalharness.training.trainer import KILL_ENV, TrainConfig, TrainResult, train

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "write a short review about the movie"}]
# wall-clock fields (PPO's: rollout_time_s, eps): the only ones allowed to differ
TIMING = ("step_time_s", "samples_per_s", "elapsed_s", "rollout_time_s", "eps")

# A child trainer: TrainConfig fields as JSON in argv[1]; under torchrun each rank writes its metrics (and its log
# lines) beside argv[2], as the stdout lines of two ranks can interleave.
SCRIPT = """
import json, os, sys
from evalharness.training.trainer import TrainConfig, train
rank = os.environ.get("RANK")
log = (lambda m: open(sys.argv[2] + ".log" + rank, "a").write(m + "\\n")) if rank is not None else (lambda m: None)
r = train(TrainConfig(**json.loads(sys.argv[1])), log=log)
if rank is not None:
    open(sys.argv[2] + ".rank" + rank, "w").write(json.dumps(r.metrics))
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The preference data file of a test module (import this fixture into the module)."""
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.jsonl")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base model of a test module."""
    from tiny import build_model
    return build_model(tmp_path_factory.mktemp("tinybase") / "m", seed=3)


def write_pairs(path: Path) -> Path:
    """12 movie-review pairs with scores (ODPO needs them; the other algorithms ignore them)."""
    good = ["the movie was great and i loved it", "really fun story and good music", "the cast was very good"]
    bad = ["the movie was terrible and dull", "i hated the plot", "bad acting and a dull story"]
    rows = [{"id": f"p{i}", "prompt": CHAT, "chosen": good[i % 3], "rejected": bad[(i + 1) % 3],
             "score_chosen": 0.9 - 0.01 * i, "score_rejected": 0.2} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def child_env(kill: str | None = None) -> dict[str, str]:
    """The environment of a child trainer: this checkout first on its path (a script's own folder would otherwise
    come first, and the editable install's copy be imported), and the trainer's kill point, if any."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if kill:
        env[KILL_ENV] = kill
    return env


def torchrun() -> str:
    path = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("torchrun not found next to the interpreter")
    return path


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def assert_rows_match(got: list[dict[str, Any]], want: list[dict[str, Any]], tol: float, what: str = "") -> None:
    """Every logged metric of every step equal to ``tol`` (timing aside), and no step missing or repeated."""
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, len(want) + 1)), what
    for a, b in zip(got, want):
        assert set(a) == set(b), what
        for k in a:
            if k not in TIMING and a[k] is not None:
                assert a[k] == pytest.approx(b[k], abs=tol, rel=tol), (what, a["step"], k)


def assert_same_weights(a: Path, b: Path, tol: float) -> None:
    w, w0 = weights(a), weights(b)
    assert w.keys() == w0.keys()
    assert max(float((w[k] - w0[k]).abs().max()) for k in w) <= tol


def killed_run(opts: dict, kill: str | None = None, *, until_lines: int | None = None) -> subprocess.CompletedProcess:
    """Run the trainer in a child process and SIGKILL it: at a named point (the trainer's test hook), or from
    outside once metrics.jsonl has ``until_lines`` lines."""
    env = child_env(kill)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(opts)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if until_lines is not None:
        metrics = Path(opts["output_dir"]) / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= until_lines:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def torchrun_killed_then_resumed(tmp_path: Path, opts: dict, kill: str, want: TrainResult, tol: float) -> TrainResult:
    """The child trainer under ``torchrun --nproc_per_node 2``, SIGKILLed at ``kill`` (torchrun then ends the other
    rank) after the step-2 checkpoint and before the step-4 one, then the same command again: it resumes from
    checkpoint-2, and each rank's metrics equal ``want``'s to ``tol``. The resumed run, for more checks."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = Path(opts["output_dir"])

    def launch(kill: str | None) -> subprocess.CompletedProcess:
        return subprocess.run([torchrun(), "--standalone", "--nproc_per_node", "2", str(script), json.dumps(opts),
                               str(out)], env=child_env(kill), capture_output=True, text=True, timeout=600)

    killed = launch(kill)
    assert killed.returncode != 0 and "exitcode: -9" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = launch(None)
    assert again.returncode == 0, again.stderr[-3000:]
    ranks = [json.loads(out.with_name(f"{out.name}.rank{rank}").read_text()) for rank in (0, 1)]
    for rank, got in enumerate(ranks):
        assert_rows_match(got, want.metrics, tol, f"rank {rank}")
    man = json.loads((out / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-2"]
    return TrainResult(out, [out / c for c in man["checkpoints"]], ranks[0])


def assert_same_run(got: TrainResult, want: TrainResult, tol: float = 1e-6) -> None:
    """Equal final weights and equal logged metrics, step for step, with no step missing or repeated (6 steps,
    a checkpoint every 2)."""
    out = got.output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert_rows_match(rows, want.metrics, tol, "metrics.jsonl")
    assert_rows_match(got.metrics, want.metrics, tol, "TrainResult.metrics")
    assert_same_weights(out / "checkpoint-6", want.output_dir / "checkpoint-6", tol)
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "finished" and man["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [c.name for c in got.checkpoints] == man["checkpoints"]
    assert not list(out.glob(".checkpoint-*"))


# The trainer's named kill points in a 6-step run saving every 2 steps, and the checkpoint each resumes from
KILL_POINTS = [
    ("after_optimizer:4", "checkpoint-2"),  # step 4's update applied, its checkpoint never written
    ("in_checkpoint:4", "checkpoint-2"),  # checkpoint-4 half-written: weights on disk, training state not
    ("after_checkpoint:4", "checkpoint-4"),  # checkpoint-4 complete, the train manifest not yet updated
]


def kill_then_resume(opts: dict, kill: str) -> TrainResult:
    """SIGKILL a child trainer at ``kill`` (checking what it left: a run marked running, a half-written checkpoint
    never renamed), then run the same configuration again in this process."""
    out = Path(opts["output_dir"])
    killed_run(opts, kill)
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "running"  # SIGKILL leaves no chance to record anything
    if kill.startswith("in_checkpoint"):
        step = kill.split(":")[1]
        half = list(out.glob(f".checkpoint-{step}.*"))
        assert half and (half[0] / "model.safetensors").is_file()  # the half-written folder is really there
        assert not (out / f"checkpoint-{step}").exists()
    resumed = train(TrainConfig(**opts))
    assert not resumed.skipped
    return resumed


def assert_lora_resume(opts: Callable[[Path], dict], tmp_path: Path, kill: str, resumes_from: str) -> None:
    """A LoRA run (``opts(output_dir)``) killed at ``kill`` resumes from ``resumes_from`` to the metrics and final
    adapter of the same run never interrupted (trained in ``tmp_path / "full"``)."""
    from safetensors.torch import load_file
    want = train(TrainConfig(**opts(tmp_path / "full")))
    killed_run(opts(tmp_path / "run"), kill)
    got = train(TrainConfig(**opts(tmp_path / "run")))
    man = json.loads((tmp_path / "run" / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == [resumes_from]
    assert_rows_match(got.metrics, want.metrics, 1e-6)
    a = load_file(str(tmp_path / "run" / "checkpoint-6" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "full" / "checkpoint-6" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
