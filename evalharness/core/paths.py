"""Where evalharness keeps converted models, downloaded benchmark data and response caches."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """The user cache root (``$EVALHARNESS_CACHE``, default ``~/.cache/evalharness``), or a sub-folder of it."""
    root = os.environ.get("EVALHARNESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "evalharness"
    )
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_root() -> Path:
    """Default output root for runs: ``$EVALHARNESS_RESULTS`` or ``./results``."""
    return Path(os.environ.get("EVALHARNESS_RESULTS") or "results")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``): setting it to read
    it back would, for that instant, give files other threads create (a tracker's, a logger's) mode 0666."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path | str, write: Callable[[Any], None], *, binary: bool = False) -> Path:
    """``write(file)`` into a temporary sibling, fsync, rename: a reader sees the old file or the whole new one, and
    if ``write`` raises (a full disk, a failed checksum) nothing is left at ``path`` or beside it. The file gets the
    mode a plain ``open`` would give (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """A temporary sibling folder that replaces ``target`` only when the block finishes: never half-written."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make every checkpoint private
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
