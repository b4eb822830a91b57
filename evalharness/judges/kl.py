"""KL(policy || reference) from policy samples, at the sequence level, in nats.

With y ~ pi(.|x) sampled at temperature 1 (no top-p), and r = pi_ref(y|x) / pi(y|x):
  k1 = log pi(y|x) - log pi_ref(y|x)      unbiased, can be negative per sample
  k3 = (r - 1) - log r                    unbiased, never negative, lower variance when KL is small
(Schulman, "Approximating KL divergence", 2020). DESIGN: sequence sums, never token means.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from evalharness.backends.base import Backend
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import Generation, ScoreRequest, Verdict
from evalharness.core.stats import mean_ci

KL_JUDGE_ID = "kl"
KL_JUDGE_VERSION = "sequence-sum;k1,k3;nats"


def check_same_tokenizer(policy: Backend, reference: Backend) -> None:
    """Log-probs of the same token ids are only comparable under the same vocabulary."""
    a, b = policy.tokenizer, reference.tokenizer
    va = a.get_vocab() if hasattr(a, "get_vocab") else type(a).__name__
    vb = b.get_vocab() if hasattr(b, "get_vocab") else type(b).__name__
    if va != vb:
        raise EvalHarnessError(f"KL needs one tokenizer: {policy.model_id} and {reference.model_id} differ")


def kl_verdicts(policy: Backend, reference: Backend, generations: list[Generation]) -> list[Verdict]:
    """One Verdict per sample: value k1 = log pi - log pi_ref; both log-probs and k3 in meta."""
    reqs = [
        ScoreRequest(f"{g.id}#{g.sample_index}", list(g.prompt_ids or []), list(g.token_ids or [])) for g in generations
    ]
    lp_pol = policy.logprobs(reqs)
    lp_ref = reference.logprobs(reqs)  # measured even when reference is policy: 0 is a result, not a short-cut
    out = []
    for g, p, r in zip(generations, lp_pol, lp_ref):
        if not (math.isfinite(p.logprob) and math.isfinite(r.logprob)):
            out.append(
                Verdict(
                    g.id,
                    KL_JUDGE_ID,
                    KL_JUDGE_VERSION,
                    "error",
                    sample_index=g.sample_index,
                    error=f"non-finite log-prob (policy {p.logprob}, reference {r.logprob})",
                )
            )
            continue
        d = r.logprob - p.logprob
        out.append(
            Verdict(
                g.id,
                KL_JUDGE_ID,
                KL_JUDGE_VERSION,
                "ok",
                -d,
                sample_index=g.sample_index,
                meta={
                    "lp_policy": p.logprob,
                    "lp_ref": r.logprob,
                    "n_tokens": p.n_tokens,
                    "k3": float(math.expm1(d) - d) if d < 700 else math.inf,
                },
            )
        )
    return out


def summarize_kl(policy_lp: list[float] | np.ndarray, ref_lp: list[float] | np.ndarray) -> dict[str, Any]:
    """k1 and k3 means with standard errors and 95% t-intervals."""
    lp, lr = np.asarray(policy_lp, float), np.asarray(ref_lp, float)
    d = lr - lp
    k1 = -d
    k3 = np.expm1(d) - d
    m1, se1, lo1, hi1 = mean_ci(k1)
    m3, se3, lo3, hi3 = mean_ci(k3)
    return {"k1": m1, "k1_se": se1, "k1_ci": [lo1, hi1], "k3": m3, "k3_se": se3, "k3_ci": [lo3, hi3], "n": int(k1.size)}
