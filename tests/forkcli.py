"""`evalharness ARGS` in a forked child process: a real process, with its own exit code, stdout and stderr, that
starts in milliseconds because it inherits this process's imports (a fresh interpreter spends seconds on torch).

Only for commands that run no torch computation (errors, the fake backend, readers): a fork of a process whose
OpenMP threads are live can hang in the child's first matmul; a command that runs a model needs a subprocess."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import evalharness.cli

# What the commands import lazily, imported once here so every child inherits it instead of importing it again.
for _name in ("evalharness.analysis.interop", "evalharness.tasks.alpaca_eval.metric", "evalharness.tasks.arena_hard.metric",
              "evalharness.tasks.mt_bench.metric", "evalharness.pipeline.runner", "evalharness.pipeline.spec", "evalharness.pipeline.evaluate",
              "evalharness.analysis.text", "evalharness.training.trainer", "evalharness.workflows.sweep", "evalharness.backends.fake",
              "evalharness.tasks.sentiment", "evalharness.tasks.mt_bench.task", "evalharness.tasks.arena_hard.task",
              "evalharness.tasks.kl"):
    importlib.import_module(_name)


@dataclass
class Done:
    code: int | None  # the exit code; -9 when SIGKILLed; None if still running at the timeout (then killed)
    stdout: str
    stderr: str


def _child(args: list[str], cwd: str, env: dict[str, str], out: str) -> None:
    os.chdir(cwd)
    os.environ.update(env)
    sys.stdout, sys.stderr = open(out, "w"), open(out + ".err", "w")  # noqa: SIM115 (the process ends below)
    sys.argv = ["evalharness", *args]
    code = 0
    try:
        evalharness.cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start(args: list[str], cwd: Path, env: dict[str, str], out: Path) -> multiprocessing.process.BaseProcess:
    """The child, started: ``evalharness ARGS`` run in ``cwd`` with ``env`` added; its output to ``out``(.err)."""
    p = multiprocessing.get_context("fork").Process(target=_child, args=(list(args), str(cwd), env, str(out)))
    p.start()
    return p


def finish(p: multiprocessing.process.BaseProcess, out: Path, timeout: float = 120) -> Done:
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        return Done(None, out.read_text(), Path(str(out) + ".err").read_text())
    return Done(p.exitcode, out.read_text(), Path(str(out) + ".err").read_text())


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> Done:
    out = cwd / ".forkcli-out"
    return finish(start(args, cwd, env, out), out, timeout)
