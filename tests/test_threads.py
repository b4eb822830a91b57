"""Torch's threads fitted to the cores other processes leave free (evalharness.core.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from evalharness.core import threads


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.delenv("EVALHARNESS_THREADS", raising=False)
    monkeypatch.setattr(threads, "_state", {})
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _fake(monkeypatch, machine: list[float], own: list[float], clock: list[float]) -> None:
    monkeypatch.setattr(threads, "_machine_busy_s", lambda: machine.pop(0))
    monkeypatch.setattr(threads, "_own_busy_s", lambda: own.pop(0))
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock.pop(0))


def test_threads_follow_the_cores_others_leave(monkeypatch):
    """By hand: 4 threads at start; over a 2 s window the machine used 5 core-seconds of which we used 3, so others
    kept 1 core busy -> 3 threads; then others idle -> back to 4; a window under 1 s keeps the last decision."""
    torch.set_num_threads(4)
    _fake(monkeypatch, machine=[100.0, 105.0, 113.0, 113.1], own=[50.0, 53.0, 61.0, 61.1],
          clock=[10.0, 12.0, 14.0, 14.5])
    assert threads.fit() is None and torch.get_num_threads() == 4  # the first call opens the window
    assert threads.fit() == 3 and torch.get_num_threads() == 3
    assert threads.fit() == 4 and torch.get_num_threads() == 4  # 8 of 8 core-seconds were ours
    assert threads.fit() is None and torch.get_num_threads() == 4  # 0.5 s: too short to judge


def test_never_below_one_nor_above_the_start(monkeypatch):
    torch.set_num_threads(2)
    _fake(monkeypatch, machine=[0.0, 10.0, 10.0], own=[0.0, 0.0, 0.0], clock=[0.0, 2.0, 4.0])
    threads.fit()
    assert threads.fit() == 1  # others used 5 cores' worth: still one thread
    assert threads.fit() == 2  # idle: the thread count torch started with, not more


def test_a_fixed_count_wins(monkeypatch):
    monkeypatch.setenv("EVALHARNESS_THREADS", "1")
    assert threads.fit() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("EVALHARNESS_THREADS", "0")
    torch.set_num_threads(2)
    assert threads.fit() is None and torch.get_num_threads() == 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores")
def test_a_busy_process_beside_takes_a_thread_away():
    """A real CPU-bound process beside this one, measured from /proc over a real window."""
    torch.set_num_threads(2)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        threads.fit()
        time.sleep(1.2)
        assert threads.fit() == 1
    finally:
        busy.kill()
        busy.wait()


def test_the_thread_count_changes_no_number(tiny_model):
    """What makes fitting threads safe for exact results: logits and gradients are bitwise equal at 1 and 2 threads
    (torch's CPU GEMMs split rows and columns over threads, never the summed dimension). A torch build where this
    fails would make results depend on the machine's load: this test is the guard."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ids = torch.randint(0, model.config.vocab_size, (4, 40), generator=torch.Generator().manual_seed(0))
    got = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        model.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        got[n] = (out.logits.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.equal(got[1][0], got[2][0]) and torch.equal(got[1][1], got[2][1])
