"""Shared fixtures: offline benchmark data location, isolated cache and results folders."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def benchdata_dir() -> Path | None:
    """../shared/benchdata beside the checkout (or $EVALHARNESS_BENCHDATA); None when absent."""
    env = os.environ.get("EVALHARNESS_BENCHDATA")
    path = Path(env) if env else REPO.parent / "shared" / "benchdata"
    return path if path.is_dir() else None


@pytest.fixture
def benchdata() -> Path:
    path = benchdata_dir()
    if path is None:
        pytest.skip("offline benchmark data not found (../shared/benchdata or $EVALHARNESS_BENCHDATA)")
    return path


@pytest.fixture(autouse=True)
def _isolated_results(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Results of tests never land in the repo's results/; the model cache is shared across tests
    # (the bundled-model conversion is slow) unless a test overrides EVALHARNESS_CACHE itself.
    monkeypatch.setenv("EVALHARNESS_RESULTS", str(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import build_model
    return build_model(tmp_path_factory.mktemp("tiny") / "policy", seed=0, logit_scale=30.0)


@pytest.fixture(scope="session")
def tiny_ref_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny import build_model
    return build_model(tmp_path_factory.mktemp("tiny") / "reference", seed=1, logit_scale=30.0)


@pytest.fixture(autouse=True)
def _fp32_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default dtype is auto (bf16 mixed precision where the CPU or GPU has bf16 units). The suite's exact
    # numbers are fp32 ones, so auto means float32 here whatever the machine; a test that checks what users get
    # (the bundled quickstart) or the auto rule itself deletes this.
    monkeypatch.setenv("EVALHARNESS_AUTO_DTYPE", "float32")


@pytest.fixture(autouse=True)
def _torch_threads_unchanged() -> Iterator[None]:
    # In-process training is compared with killed-and-resumed subprocess runs to 1e-6; a test that left torch's
    # thread count changed would move the last bits of every later in-process run (it did: three PPO resume tests
    # failed in CI after an evaluation fitted its threads). The count is restored and the test that changed it fails.
    import torch

    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    if after != before:
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch's thread count at {after} (it was {before})")


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Hash memos and small caches go to a temp folder; the bundled model's converted checkpoint is
    # kept in the user cache (set EVALHARNESS_CACHE yourself to isolate that too).
    os.environ.setdefault("EVALHARNESS_CACHE", os.path.expanduser("~/.cache/evalharness"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="also run the `long` tests (make test-long; CI does not)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`long` tests (bundled-model runs of ten minutes and more) run only under --long: `make test-long`."""
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long bundled-model run: make test-long (pytest --long) runs it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
