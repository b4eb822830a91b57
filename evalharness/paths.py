"""Where evalharness keeps converted models, downloaded benchmark data and response caches."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The user cache root (``$EVALHARNESS_CACHE``, default ``~/.cache/evalharness``), or a sub-folder of it."""
    root = os.environ.get("EVALHARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "evalharness")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_root() -> Path:
    """Default output root for runs: ``$EVALHARNESS_RESULTS`` or ``./results``."""
    return Path(os.environ.get("EVALHARNESS_RESULTS") or "results")


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``target`` only when the block finishes: never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
