"""A training run killed by SIGKILL resumes from its newest complete checkpoint to the weights and metrics of a run
that was never interrupted: single process, and two processes under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evalharness.train.trainer import KILL_ENV, TrainConfig, TrainResult, train

REPO = Path(__file__).resolve().parents[1]

CHAT = [{"role": "user", "content": "write a short review about the movie"}]
TIMING = ("step_time_s", "samples_per_s", "elapsed_s")  # wall-clock fields: the only ones allowed to differ
OPTS = dict(algorithm="dpo", learning_rate=5e-3, max_steps=6, save_every=2, batch_size=4, warmup_ratio=0.2)

SCRIPT = """
import json, os, sys
from evalharness.train.trainer import TrainConfig, train
r = train(TrainConfig(**json.loads(sys.argv[1])))
rank = os.environ.get("RANK")
if rank is not None:
    open(sys.argv[2] + ".rank" + rank, "w").write(json.dumps(r.metrics))
"""


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    good = ["the movie was great and i loved it", "really fun story and good music", "the cast was very good"]
    bad = ["the movie was terrible and dull", "i hated the plot", "bad acting and a dull story"]
    rows = [{"id": f"p{i}", "prompt": CHAT, "chosen": good[i % 3], "rejected": bad[(i + 1) % 3]} for i in range(12)]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from tiny import build_model
    return build_model(tmp_path_factory.mktemp("tinybase") / "m", seed=3)


def options(base: Path, pairs: Path, out: Path, **kw) -> dict:
    return {**OPTS, "base": str(base), "data": str(pairs), "output_dir": str(out), **kw}


@pytest.fixture(scope="module")
def uninterrupted(base, pairs, tmp_path_factory):
    return train(TrainConfig(**options(base, pairs, tmp_path_factory.mktemp("full") / "run")))


def child_env(kill: str | None) -> dict[str, str]:
    """The environment of a child trainer: this checkout first on its path (a script's own folder would otherwise
    come first, and the editable install's copy be imported), and the kill point, if any."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if kill:
        env[KILL_ENV] = kill
    return env


def killed_run(opts: dict, kill: str | None = None, *, until_lines: int | None = None) -> subprocess.CompletedProcess:
    """Run the trainer in a child process and SIGKILL it: at a named point (the trainer's test hook), or from
    outside once metrics.jsonl has ``until_lines`` lines."""
    env = child_env(kill)
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, json.dumps(opts)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if until_lines is not None:
        metrics = Path(opts["output_dir"]) / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= until_lines:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == -signal.SIGKILL, f"rc {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


def assert_same_run(got, want, tol: float = 1e-6) -> None:
    """Equal final weights and equal logged metrics, step for step, with no step missing or repeated."""
    out = got.output_dir
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert [r["step"] for r in got.metrics] == list(range(1, 7))
    for a, b in zip(rows, want.metrics):
        assert set(a) == set(b)
        for k in a:
            if k not in TIMING and a[k] is not None:
                assert a[k] == pytest.approx(b[k], abs=tol, rel=tol), (a["step"], k)
    w, w0 = weights(out / "checkpoint-6"), weights(want.output_dir / "checkpoint-6")
    assert w.keys() == w0.keys()
    assert max(float((w[k] - w0[k]).abs().max()) for k in w) <= tol
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "finished" and man["checkpoints"] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [c.name for c in got.checkpoints] == man["checkpoints"]
    assert not list(out.glob(".checkpoint-*"))


@pytest.mark.parametrize("kill, resumes_from", [
    ("after_optimizer:4", "checkpoint-2"),  # step 4's update applied, its checkpoint never written
    ("in_checkpoint:4", "checkpoint-2"),  # checkpoint-4 half-written: weights on disk, training state not
    ("after_checkpoint:4", "checkpoint-4"),  # checkpoint-4 complete, the train manifest not yet updated
])
def test_sigkill_at_a_chosen_point_resumes_to_the_same_run(base, pairs, tmp_path, uninterrupted, kill, resumes_from):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, kill)
    man = json.loads((out / "train_manifest.json").read_text())
    assert man["status"] == "running"  # SIGKILL leaves no chance to record anything
    if kill.startswith("in_checkpoint"):
        half = list(out.glob(".checkpoint-4.*"))
        assert half and (half[0] / "model.safetensors").is_file()  # the half-written folder is really there
        assert not (out / "checkpoint-4").exists()
    resumed = train(TrainConfig(**opts))
    assert not resumed.skipped
    man = json.loads((out / "train_manifest.json").read_text())
    assert [(r["from"], r["optimizer"]) for r in man["resumed"]] == [(resumes_from, True)]
    assert_same_run(resumed, uninterrupted)


def test_sigkill_from_outside_at_an_unplanned_moment(base, pairs, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, until_lines=3)
    assert (out / "checkpoint-2").is_dir()
    assert_same_run(train(TrainConfig(**opts)), uninterrupted)


def test_twice_killed_run_resumes_twice(base, pairs, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, "before_checkpoint:2")  # no complete checkpoint: the second launch starts from step 0
    assert not list(out.glob("checkpoint-*"))
    killed_run(opts, "after_optimizer:5")
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    res = train(TrainConfig(**opts))
    man = json.loads((out / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-4"]
    assert_same_run(res, uninterrupted)


def test_without_optimizer_state_it_resumes_weights_and_costs_a_third(base, pairs, tmp_path, uninterrupted):
    out = tmp_path / "run"
    opts = options(base, pairs, out, save_optimizer=False)
    killed_run(opts, "after_checkpoint:4")
    ck = out / "checkpoint-4"
    assert not (ck / "training_state" / "optimizer.pt").exists()
    res = train(TrainConfig(**opts))
    man = json.loads((out / "train_manifest.json").read_text())
    assert [(r["from"], r["optimizer"]) for r in man["resumed"]] == [("checkpoint-4", False)]
    assert [m["step"] for m in res.metrics] == list(range(1, 7))
    # steps 1-4 are the uninterrupted run's; step 5 starts with fresh Adam moments, so it differs
    assert res.metrics[3]["loss"] == pytest.approx(uninterrupted.metrics[3]["loss"], abs=1e-6)
    assert abs(res.metrics[5]["loss"] - uninterrupted.metrics[5]["loss"]) > 1e-6
    # the disk cost of save_optimizer: AdamW keeps two fp32 moments per trainable weight, plus a few hundred
    # bytes of pickle per tensor (which dominate only on a model this tiny)
    full = uninterrupted.output_dir / "checkpoint-4"
    opt_bytes = (full / "training_state" / "optimizer.pt").stat().st_size
    w = weights(full)
    moments = 2 * sum(t.numel() * t.element_size() for t in w.values())
    assert moments < opt_bytes < moments + 1024 * len(w)


def test_a_changed_launch_is_refused_not_mixed(base, pairs, tmp_path):
    out = tmp_path / "run"
    opts = options(base, pairs, out)
    killed_run(opts, "after_checkpoint:2")
    state = json.loads((out / "checkpoint-2" / "training_state" / "state.json").read_text())
    assert state["step"] == 2 and state["samples_seen"] == 8 and state["global_batch"] == 4
    state["global_batch"] = 8  # as if written by two processes
    (out / "checkpoint-2" / "training_state" / "state.json").write_text(json.dumps(state))
    from evalharness.errors import EvalHarnessError
    with pytest.raises(EvalHarnessError, match="same number of processes"):
        train(TrainConfig(**opts))
    assert (out / "checkpoint-2").is_dir()  # nothing deleted


def test_two_processes_killed_resume_to_the_same_run(base, pairs, tmp_path, uninterrupted):
    """torchrun, 2 processes (gloo): rank 0 SIGKILLs itself between step 4's update and its checkpoint; torchrun
    ends rank 1; the same command again resumes both ranks from checkpoint-2. Compared with the uninterrupted
    one-process run of the same global batch (2 x 2 = 4): DDP's all-reduce changes the sums' order, so to 1e-5."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"

    def launch(kill: str | None) -> subprocess.CompletedProcess:
        return subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(script),
                               json.dumps(options(base, pairs, out, batch_size=2)), str(out)],
                              env=child_env(kill), capture_output=True, text=True, timeout=300)

    killed = launch("after_optimizer:4:0")
    assert killed.returncode != 0 and "exitcode: -9" in killed.stderr, killed.stderr[-3000:]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = launch(None)
    assert again.returncode == 0, again.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"run.rank{rank}").read_text())
        assert [r["step"] for r in got] == list(range(1, 7))
        for a, b in zip(got, uninterrupted.metrics):
            for k in a:
                if k not in TIMING and a[k] is not None:
                    assert a[k] == pytest.approx(b[k], abs=1e-5, rel=1e-5), (rank, a["step"], k)
    man = json.loads((out / "train_manifest.json").read_text())
    assert [r["from"] for r in man["resumed"]] == ["checkpoint-2"]
    assert_same_run(TrainResult(out, [out / c for c in man["checkpoints"]], got), uninterrupted, tol=1e-5)
