"""Shared helpers of the reliability suite: the CLI as a subprocess, integrity checks of a results tree."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "benchmarks" / "demo_data"
RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny.py builds the tiny random models


def env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on sys.path, no tokenizer threads."""
    return {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", **extra}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "evalharness.cli", *args]


def popen(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
          log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(args, cwd=cwd, env=env(**(extra_env or {})), stdout=out, stderr=out)


def run_to_end(args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, log: Path | None = None,
               timeout: float = 1200) -> tuple[int, float]:
    t0 = time.monotonic()
    p = popen(args, cwd, extra_env, log)
    return p.wait(timeout=timeout), time.monotonic() - t0


def corrupt_files(root: Path) -> list[str]:
    """Every .jsonl line and .json file under ``root`` that does not parse (torn trailing lines included:
    the store repairs them on resume, so a finished tree must have none); temp files left behind too."""
    bad = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        if path.name.startswith(".") and path.name not in (".lock",):
            bad.append(f"{path}: temp file left behind")
            continue
        if path.suffix == ".json":
            try:
                json.loads(path.read_text())
            except (ValueError, UnicodeDecodeError) as e:
                bad.append(f"{path}: {e}")
        elif path.suffix == ".jsonl":
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                bad.append(f"{path}: torn last line")
                data = data[: data.rfind(b"\n") + 1]
            for i, line in enumerate(data.splitlines(), 1):
                try:
                    json.loads(line)
                except ValueError as e:
                    bad.append(f"{path}:{i}: {e}")
    return bad


def environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**data, "environment": environment()}, indent=2, default=str) + "\n")
    return path
