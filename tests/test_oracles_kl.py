"""The KL task's stored numbers recomputed independently, and a self-KL of 0 that is measured, not shared.

From the run's stored generations, each sample is scored again by the policy and by the reference, both loaded
apart with ``AutoModelForCausalLM.from_pretrained`` (one plain forward pass, the sum of response-token log-probs,
EOS included where the sample stopped on it). k1 = log pi - log pi_ref and k3 = (r - 1) - log r, r = pi_ref / pi,
are averaged per prompt, then over prompts, with the SE and scipy's t interval over prompts (the clustering).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from evalharness.pipeline.runner import run_spec

PROMPTS = [
    {"id": "a", "messages": [{"role": "user", "content": "write a short review about the movie"}]},
    {"id": "b", "messages": [{"role": "user", "content": "continue this review the plot"}]},
    {"id": "c", "prompt": "the movie was"},
    {"id": "d", "messages": [{"role": "user", "content": "write about the music"}]},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tiny import build_model

    d = tmp_path_factory.mktemp("klmodels")
    return build_model(d / "policy", seed=0, logit_scale=3.0), build_model(d / "reference", seed=1, logit_scale=3.0)


def _run(tmp: Path, policy: Path, reference: Path) -> Path:
    (tmp / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    spec = tmp / "spec.yaml"
    spec.write_text(f"""\
name: kl-oracle
models: [{{name: policy, ref: "{policy}"}}]
reference: "{reference}"
backend: hf
generation: {{max_new_tokens: 8, n: 3, seed: 0}}
tasks:
  kl: {{prompts: "{tmp / "prompts.jsonl"}"}}
""")
    return run_spec(spec, results_dir=tmp / "results", progress=False).path


class Scorer:
    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def prompt_ids(self, p: dict) -> list[int]:
        if "messages" in p:
            out = self.tok.apply_chat_template(p["messages"], add_generation_prompt=True, tokenize=True)
            return list(out["input_ids"] if hasattr(out, "keys") else out)
        return self.tok(p["prompt"])["input_ids"]

    def logprob(self, prompt: list[int], response: list[int]) -> float:
        with torch.no_grad():
            lp = torch.log_softmax(self.model(torch.tensor([prompt + response])).logits[0].double(), -1)
        return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(response))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _clustered(per_prompt: dict[str, list[float]]) -> tuple[float, float, float, float]:
    """Mean over prompts of the per-prompt sample mean; SE and 95% t interval over prompts (scipy)."""
    x = np.array([np.mean(v) for v in per_prompt.values()])
    m, se = float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x)))
    lo, hi = scipy.stats.t.interval(0.95, len(x) - 1, loc=m, scale=se)
    return m, se, float(lo), float(hi)


def test_kl_scores_recomputed_from_stored_generations(models, tmp_path):
    policy, reference = models
    run = _run(tmp_path, policy, reference)
    pol, ref = Scorer(policy), Scorer(reference)
    gens = [g for g in _rows(run / "generations.jsonl") if g["status"] == "ok"]
    assert len(gens) == 3 * len(PROMPTS)
    eos = pol.tok.eos_token_id
    assert any(g["token_ids"][-1] == eos for g in gens) and any(g["token_ids"][-1] != eos for g in gens)
    by_id = {p["id"]: p for p in PROMPTS}
    k1: dict[str, list[float]] = {}
    k3: dict[str, list[float]] = {}
    for g in gens:
        prompt = pol.prompt_ids(by_id[g["item_id"]])
        assert g["prompt_ids"] == prompt  # rendered as the model's own chat template renders it
        if g["finish_reason"] == "stop":
            assert g["token_ids"][-1] == eos  # a sample that stopped keeps its EOS, which is scored
        lp, lr = pol.logprob(prompt, g["token_ids"]), ref.logprob(prompt, g["token_ids"])
        d = lr - lp
        k1.setdefault(g["item_id"], []).append(lp - lr)
        k3.setdefault(g["item_id"], []).append(math.expm1(d) - d)
    scores = {s["metric"]: s for s in _rows(run / "scores.jsonl") if s["task"] == "kl"}
    for metric, values in (("kl", k1), ("kl_k3", k3)):
        s = scores[metric]
        m, se, lo, hi = _clustered(values)
        assert s["n"] == 12 and s["extra"]["n_prompts"] == 4
        got = (s["value"], s["stderr"], s["ci_low"], s["ci_high"])
        assert got == pytest.approx((m, se, lo, hi), abs=2e-4), metric
    assert abs(scores["kl"]["value"]) > 0.05  # different models: the test is not about a zero


def test_self_kl_is_zero_when_the_reference_is_loaded_separately(models, tmp_path):
    """The same weights under another path: the runner cannot share one backend object, so 0 is measured."""
    policy, _ = models
    twin = tmp_path / "twin"
    shutil.copytree(policy, twin)
    run = _run(tmp_path, policy, twin)
    manifest = json.loads((run / "manifest.json").read_text())
    assert str(twin) in json.dumps(manifest["reference"])  # the reference is the copy, a model of its own
    verdicts = [v for v in _rows(run / "verdicts.jsonl") if v["task"] == "kl"]
    assert len(verdicts) == 12 and all(v["status"] == "ok" for v in verdicts)
    for v in verdicts:
        assert v["meta"]["lp_policy"] < -1  # real log-probs, not a short-cut 0 - 0
        assert v["value"] == pytest.approx(0, abs=1e-4) and v["meta"]["k3"] == pytest.approx(0, abs=1e-6)
    scores = {s["metric"]: s for s in _rows(run / "scores.jsonl") if s["task"] == "kl"}
    # judged by the reference's identity (its content hash), the name kept beside it
    assert scores["kl"]["judge_id"].startswith("kl:sha256:") and scores["kl"]["extra"]["reference_name"] == str(twin)
    assert scores["kl"]["value"] == pytest.approx(0, abs=1e-5) and scores["kl_k3"]["value"] == pytest.approx(
        0, abs=1e-6
    )
