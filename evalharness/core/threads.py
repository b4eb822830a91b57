"""Torch's CPU threads fitted to the cores other processes leave free, one inference batch at a time: opt-in.

Every torch op on the CPU splits its work evenly over its threads and waits for the slowest. When another process
takes one of two cores, the thread that shares that core runs at half speed and every op waits for it: measured
here, a DPO step or a decoding batch with two threads beside one busy process is slower than with one thread
(``benchmarks/perf/under_load.py``). With ``EVALHARNESS_THREADS=fit``, ``fitted()`` wraps each generation and
scoring batch of an evaluation backend: from the CPU time the machine and this process used since the last call
(``/proc/stat`` and ``os.times()``, no sampling delay) it sees how many cores others kept busy, sets torch's
threads to the cores left (between 1 and the count torch started with: ``OMP_NUM_THREADS`` or one per core) and
restores the count after the batch, so nothing else in the process (a trainer, a test) runs with a count it did
not choose. ``EVALHARNESS_THREADS=N`` fixes the count for inference batches; unset (or ``0``), torch's count is
left alone.

Why fitting is not the default: the thread count moves the last bits of some results. A full reduction (a loss
summed over a batch, a gradient norm) splits its sum over threads, and MKL's GEMM takes a thread-dependent path for
some row counts (5-11 rows here: a decoding batch of that size), so log-probs differ by ~1e-6 between one and two
threads (``tests/test_threads.py``) and a sampled token at a near-tie can flip: the same spec would give records
that depend on the machine's load. Training never fits, whatever the setting (PPO samples its rollouts through an
hf backend made with ``fit_threads=False``): a run must be the same run, killed and resumed or not.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from evalharness.core.errors import EvalHarnessError

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MIN_WINDOW_S = 1.0  # shorter windows are noise: keep the last decision
_state: dict[str, float] = {}  # the last window's start (t, machine, own), top (the count at start), n (the last fit)


def _machine_busy_s() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_busy_s() -> float:
    t = os.times()
    return t.user + t.system


def others_busy_cores() -> float | None:
    """Cores other processes kept busy since the previous call (None: no window yet, or no /proc)."""
    now, machine, own = time.monotonic(), _machine_busy_s(), _own_busy_s()
    if machine is None:
        return None
    last = dict(_state)
    if "t" in last and now - last["t"] < _MIN_WINDOW_S:
        return None
    _state.update(t=now, machine=machine, own=own)
    if "t" not in last:
        return None
    return max(0.0, (machine - last["machine"]) - (own - last["own"])) / (now - last["t"])


def fit() -> int | None:
    """Set torch's intra-op threads as ``EVALHARNESS_THREADS`` says (``fit``: the cores others leave free); the count set
    (None: unchanged)."""
    setting = os.environ.get("EVALHARNESS_THREADS", "").strip()
    import torch

    if setting != "fit":
        if not setting.isdigit() and setting:
            raise EvalHarnessError(f"EVALHARNESS_THREADS must be 'fit' or a whole number >= 0, got '{setting}'")
        n = int(setting or 0)
        if n > 0 and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n or None
    top = int(_state.setdefault("top", torch.get_num_threads()))
    others = others_busy_cores()
    if top <= 1 or (others is None and "n" not in _state):
        return None
    if others is not None:  # else the window is too short to judge: the last decision holds
        _state["n"] = max(1, min(top, top - int(others + 0.5)))
    n = int(_state["n"])
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


@contextmanager
def fitted() -> Iterator[int | None]:
    """Threads fitted (``fit()``) for the body only: torch's count before it is restored after it."""
    import torch

    before = torch.get_num_threads()
    try:
        yield fit()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
