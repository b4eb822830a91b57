"""Shared pieces of the trainer tests: the tiny preference data, child trainer processes, run comparisons."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from evalharness.train.trainer import KILL_ENV

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "write a short review about the movie"}]
TIMING = ("step_time_s", "samples_per_s", "elapsed_s", "rollout_time_s", "eps")  # wall-clock fields (PPO: the last two): the only ones allowed to differ

# A child trainer: TrainConfig fields as JSON in argv[1]; under torchrun each rank writes its metrics (and its log
# lines) beside argv[2], as the stdout lines of two ranks can interleave.
SCRIPT = """
import json, os, sys
from evalharness.train.trainer import TrainConfig, train
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
