"""What a manifest records about the environment: code version, packages, machine."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

_PACKAGES = (
    "evalharness",
    "torch",
    "transformers",
    "accelerate",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "vadersentiment",
    "alt-profanity-check",
    "alpaca-eval",
    "openai",
    "peft",
    "trl",
    "vllm",
)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def git_state() -> dict[str, Any]:
    """Commit and dirty flag of the evalharness source checkout (None outside a checkout)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            != ""
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def environment() -> dict[str, Any]:
    return {
        "git": git_state(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": sys.argv,
    }
