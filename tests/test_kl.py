"""KL to the reference: exactly zero for one model, and converging to the exact value on a toy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from evalharness.backends.hf import HFBackend
from evalharness.judges.kl import kl_verdicts, summarize_kl
from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest
from tiny import build_model


def test_identical_models_give_zero(tiny_model, tmp_path):
    import shutil
    copy = tmp_path / "reference"
    shutil.copytree(tiny_model, copy)
    pol = HFBackend(str(tiny_model))
    ref = HFBackend(str(copy))  # the same weights, loaded separately: 0 is measured, not a short-cut
    assert ref.model is not pol.model and ref.model_id != pol.model_id
    gens = pol.generate([GenRequest("x", messages=[{"role": "user", "content": "the movie"}],
                                    params=SamplingParams(1.0, 1.0, 10, (), 8, 0))])
    vs = kl_verdicts(pol, ref, gens)
    s = summarize_kl([v.meta["lp_policy"] for v in vs], [v.meta["lp_ref"] for v in vs])
    assert all(v.status == "ok" for v in vs)
    assert abs(s["k1"]) < 1e-9 and abs(s["k3"]) < 1e-12


def test_estimate_converges_to_exact_kl(tmp_path):
    """Tiny vocabulary, 3 new tokens: the sequence distribution is small enough to enumerate."""
    words = ["a", "b"]
    pol = HFBackend(str(build_model(tmp_path / "p", seed=0, words=words, logit_scale=12.0)), batch_size=256)
    ref = HFBackend(str(build_model(tmp_path / "r", seed=1, words=words, logit_scale=12.0)), batch_size=256)
    prompt = pol.tokenizer("<|user|> a b <|assistant|>")["input_ids"]
    vocab, eos, T = list(range(len(pol.tokenizer))), pol.tokenizer.eos_token_id, 3
    seqs = [list(s[:k]) + [eos] for k in range(T) for s in itertools.product([v for v in vocab if v != eos], repeat=k)]
    seqs += [list(s) for s in itertools.product([v for v in vocab if v != eos], repeat=T)]
    reqs = [ScoreRequest(str(i), prompt, s) for i, s in enumerate(seqs)]
    lp = np.array([r.logprob for r in pol.logprobs(reqs)])
    lq = np.array([r.logprob for r in ref.logprobs(reqs)])
    assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-5)  # enumeration covers the whole support
    exact = float(np.sum(np.exp(lp) * (lp - lq)))
    assert exact > 0.05, exact

    n = 3000
    gens = pol.generate([GenRequest("x", prompt_ids=prompt, params=SamplingParams(1.0, 1.0, T, (), n, seed=11))])
    vs = kl_verdicts(pol, ref, gens)
    s = summarize_kl([v.meta["lp_policy"] for v in vs], [v.meta["lp_ref"] for v in vs])
    assert s["n"] == n
    assert abs(s["k1"] - exact) < 4 * s["k1_se"]
    assert abs(s["k3"] - exact) < 4 * s["k3_se"]
    var_k1 = float(np.sum(np.exp(lp) * (lp - lq) ** 2) - exact**2)
    assert s["k1_se"] == pytest.approx(math.sqrt(var_k1 / n), rel=0.15)


def test_k3_is_nonnegative_and_k1_sign():
    s = summarize_kl([-1.0, -2.0, -3.0], [-1.5, -1.0, -3.0])
    assert s["k1"] == pytest.approx(np.mean([0.5, -1.0, 0.0]))
    k3 = [math.expm1(d) - d for d in (-0.5, 1.0, 0.0)]
    assert s["k3"] == pytest.approx(np.mean(k3)) and min(k3) >= 0
