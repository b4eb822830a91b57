"""Torch's CPU threads fitted to the cores other processes leave free.

Every torch op on the CPU splits its work evenly over its threads and waits for the slowest. When another process
takes one of two cores, the thread that shares that core runs at half speed and every op waits for it: measured
here, a DPO step or a decoding batch with two threads beside one busy process is slower than with one thread
(``benchmarks/perf/under_load.py``). ``fit()`` is called between generation and scoring batches of the hf
backend (not between training steps: PPO's kill-and-resume tests, exact to 1e-6, failed under load with it
there). From the CPU time the machine and this process used since the last call (``/proc/stat`` and
``os.times()``, no sampling delay) it sees how many cores others kept busy, and sets torch's threads to the cores
left, between 1 and the thread count torch started with (``OMP_NUM_THREADS`` or one per core).
``EVALHARNESS_THREADS=N`` fixes the count instead (``0``: leave torch alone).
"""

from __future__ import annotations

import os
import time

from evalharness.core.errors import EvalHarnessError

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_MIN_WINDOW_S = 1.0  # shorter windows are noise: keep the last decision
_state: dict[str, float] = {}  # the last window's start: t, machine, own; and top, the thread count at start


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
    """Set torch's intra-op threads to the cores others leave free; the count set (None: unchanged)."""
    fixed = os.environ.get("EVALHARNESS_THREADS")
    import torch

    if fixed is not None:
        if not fixed.isdigit():
            raise EvalHarnessError(f"EVALHARNESS_THREADS must be a whole number >= 0, got '{fixed}'")
        n = int(fixed)
        if n > 0 and torch.get_num_threads() != n:
            torch.set_num_threads(n)
        return n or None
    top = int(_state.setdefault("top", torch.get_num_threads()))
    others = others_busy_cores()
    if others is None or top <= 1:
        return None
    n = max(1, min(top, top - int(others + 0.5)))
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
