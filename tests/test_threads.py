"""Torch's threads fitted to the cores other processes leave free (evalharness.core.threads)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from evalharness.core import threads
from evalharness.core.errors import EvalHarnessError


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setenv("EVALHARNESS_THREADS", "fit")
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
    torch.set_num_threads(3)
    assert threads.fit() == 4 and torch.get_num_threads() == 4  # 0.5 s: too short to judge, the last decision holds


def test_never_below_one_nor_above_the_start(monkeypatch):
    torch.set_num_threads(2)
    _fake(monkeypatch, machine=[0.0, 10.0, 10.0], own=[0.0, 0.0, 0.0], clock=[0.0, 2.0, 4.0])
    threads.fit()
    assert threads.fit() == 1  # others used 5 cores' worth: still one thread
    assert threads.fit() == 2  # idle: the thread count torch started with, not more


def test_a_fixed_count_wins_and_unset_leaves_torch_alone(monkeypatch):
    monkeypatch.setenv("EVALHARNESS_THREADS", "1")
    assert threads.fit() == 1 and torch.get_num_threads() == 1
    torch.set_num_threads(2)
    _fake(monkeypatch, machine=[0.0, 10.0], own=[0.0, 0.0], clock=[0.0, 2.0])  # others: 5 cores busy
    for setting in ("0", ""):
        monkeypatch.setenv("EVALHARNESS_THREADS", setting)
        assert threads.fit() is None and torch.get_num_threads() == 2
    monkeypatch.delenv("EVALHARNESS_THREADS")
    assert threads.fit() is None and torch.get_num_threads() == 2  # the default: deterministic, whatever the load
    monkeypatch.setenv("EVALHARNESS_THREADS", "two")
    with pytest.raises(EvalHarnessError, match="EVALHARNESS_THREADS must be 'fit' or a whole number >= 0, got 'two'"):
        threads.fit()


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


def test_fitted_sets_the_count_for_its_body_only(monkeypatch):
    torch.set_num_threads(2)
    _fake(monkeypatch, machine=[0.0, 10.0], own=[0.0, 2.0], clock=[0.0, 4.0])
    threads.fit()  # opens the window
    with pytest.raises(RuntimeError, match="boom"), threads.fitted() as n:
        assert n == 1 and torch.get_num_threads() == 1  # others kept 2 cores busy
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2  # restored, even when the body raised


def test_why_fitting_is_opt_in_the_count_moves_last_bits():
    """A sum over a long vector splits the summed dimension over threads, so its last bits move with the count: a
    loss over a batch or a gradient norm would depend on the load (why training never fits and fitting is opt-in)."""
    long = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))
    got = {}
    for n in (1, 2):
        torch.set_num_threads(n)
        got[n] = long.sum()
    assert not torch.equal(got[1], got[2])


def _count_during(backend, monkeypatch) -> list[int]:
    seen: list[int] = []
    for name in ("_decode", "_score"):
        inner = getattr(backend, name)
        monkeypatch.setattr(backend, name, lambda *a, _f=inner: seen.append(torch.get_num_threads()) or _f(*a))
    return seen


def test_the_hf_backend_fits_each_batch_and_gives_the_count_back(tiny_model, monkeypatch):
    """An evaluation beside busy cores: one thread inside each batch, the count torch had after it, and the same
    generations as with two threads, log-probs equal to rounding (MKL's GEMM is not bitwise thread-invariant for
    every row count)."""
    from evalharness.backends.hf import HFBackend
    from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest

    torch.set_num_threads(2)
    reqs = [GenRequest(str(i), prompt_ids=[5 + i, 9, 17], params=SamplingParams(1.0, 1.0, 8, (), 2, 3)) for i in range(3)]
    base = HFBackend(str(tiny_model), batch_size=2)
    want = base.generate(reqs)
    want_lp = base.logprobs([ScoreRequest(id="s", prompt_ids=[5, 9], response_ids=[17, 4, 8])])
    monkeypatch.setenv("EVALHARNESS_THREADS", "1")  # what fit() decides beside a busy process, without the process
    b = HFBackend(str(tiny_model), batch_size=2)
    seen = _count_during(b, monkeypatch)
    got, got_lp = b.generate(reqs), b.logprobs([ScoreRequest(id="s", prompt_ids=[5, 9], response_ids=[17, 4, 8])])
    assert seen == [1, 1, 1, 1] and torch.get_num_threads() == 2
    assert [g.text for g in got] == [g.text for g in want]
    for g, w in zip(got, want):
        assert g.meta["token_logprobs"] == pytest.approx(w.meta["token_logprobs"], abs=1e-5)
    assert got_lp[0].logprob == pytest.approx(want_lp[0].logprob, abs=1e-5)


def test_a_trainers_rollout_backend_never_fits(tiny_model, monkeypatch):
    """PPO samples its rollouts through HFBackend.from_loaded: the count must stay what the run started with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evalharness.backends.hf import HFBackend
    from evalharness.core.records import GenRequest, SamplingParams

    torch.set_num_threads(2)
    monkeypatch.setenv("EVALHARNESS_THREADS", "1")
    b = HFBackend.from_loaded(AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model),
                              "policy", batch_size=2)
    seen = _count_during(b, monkeypatch)
    b.generate([GenRequest("a", prompt_ids=[5, 9], params=SamplingParams(1.0, 1.0, 4, (), 1, 0))])
    assert seen == [2]
