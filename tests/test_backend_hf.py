"""The hf backend on tiny random models: parity with transformers, exact scoring, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from evalharness.backends.hf import HFBackend
from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest

CHATS = ["write a short review", "the movie was", "continue this review about the plot and the cast and music",
         "a"]


def _reqs(params: SamplingParams) -> list[GenRequest]:
    return [GenRequest(f"p{i}", messages=[{"role": "user", "content": c}], params=params) for i, c in enumerate(CHATS)]


def test_greedy_matches_transformers_generate(tiny_model):
    b = HFBackend(str(tiny_model), batch_size=4)
    gens = b.generate(_reqs(SamplingParams(temperature=0.0, max_new_tokens=12)))
    tok, model = b.tokenizer, b.model
    tok.padding_side = "left"
    batch = tok.apply_chat_template([[{"role": "user", "content": c}] for c in CHATS], add_generation_prompt=True,
                                    padding=True, return_tensors="pt", return_dict=True)
    ref = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id)
    for i, g in enumerate(gens):
        expected = ref[i, batch["input_ids"].shape[1]:].tolist()
        if tok.eos_token_id in expected:  # transformers pads after EOS; we stop at it
            expected = expected[:expected.index(tok.eos_token_id) + 1]
        assert g.token_ids == expected


def test_scored_ids_are_the_generated_ids(tiny_model):
    b = HFBackend(str(tiny_model), batch_size=3, score_batch_size=2)
    gens = b.generate(_reqs(SamplingParams(temperature=1.0, max_new_tokens=10, n=2, seed=3)))
    scored = b.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids, return_token_logprobs=True) for g in gens])
    for g, s in zip(gens, scored):
        assert s.n_tokens == len(g.token_ids)
        # per-token values from teacher forcing equal the values the sampler saw, token by token
        assert s.token_logprobs == pytest.approx(g.meta["token_logprobs"], abs=1e-4)
        assert s.logprob == pytest.approx(g.logprob, abs=1e-4)


def test_logprob_masks_prompt_and_padding(tiny_model):
    b = HFBackend(str(tiny_model), score_batch_size=8)
    tok = b.tokenizer
    p = tok("<|user|> the movie was <|assistant|>")["input_ids"]
    r = tok("great fun <eos>")["input_ids"]
    alone = b.logprobs([ScoreRequest("a", p, r, True)])[0]
    long_partner = ScoreRequest("b", p * 5, r * 3)
    together = b.logprobs([ScoreRequest("a", p, r, True), long_partner])[0]
    assert together.logprob == pytest.approx(alone.logprob, abs=1e-5)
    # by hand: full forward pass, sum of log-softmax at response positions only, EOS included
    ids = torch.tensor([p + r])
    with torch.no_grad():
        logp = torch.log_softmax(b.model(ids).logits[0].float(), -1)
    by_hand = sum(float(logp[len(p) - 1 + k, t]) for k, t in enumerate(r))
    assert alone.logprob == pytest.approx(by_hand, abs=1e-5)
    assert alone.n_tokens == 3 and r[-1] == tok.eos_token_id
    assert b.logprobs([ScoreRequest("e", p, [])])[0].logprob == 0.0


def test_sampling_is_seeded_and_batch_invariant(tiny_model):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=10, n=3, seed=7)
    a = HFBackend(str(tiny_model), batch_size=16).generate(_reqs(params))
    b = HFBackend(str(tiny_model), batch_size=1).generate(_reqs(params)[::-1])
    by_key = {(g.id, g.sample_index): g.token_ids for g in b}
    assert all(by_key[(g.id, g.sample_index)] == g.token_ids for g in a)
    assert [(g.id, g.sample_index) for g in a] == [(f"p{i}", s) for i in range(4) for s in range(3)]
    other = HFBackend(str(tiny_model)).generate(_reqs(SamplingParams(1.0, 0.9, 10, (), 3, seed=8)))
    assert [g.token_ids for g in other] != [g.token_ids for g in a]
    assert len({tuple(g.token_ids) for g in a if g.id == "p2"}) > 1  # samples differ within a prompt


def test_top_p_keeps_the_nucleus(tiny_model):
    from evalharness.backends.hf import _sample
    logits = torch.tensor([[3.0, 2.0, 1.0, -5.0]])
    probs = logits.softmax(-1)[0]
    gens = [torch.Generator().manual_seed(i) for i in range(1)]
    seen = {int(_sample(logits, SamplingParams(1.0, float(probs[0]) + 1e-4), [gens[0]])) for _ in range(200)}
    assert seen == {0, 1}  # mass of token 0 alone is short of top_p, so the nucleus is {0, 1}


def test_stop_strings_and_finish_reasons(tiny_model):
    b = HFBackend(str(tiny_model))
    free = b.generate(_reqs(SamplingParams(0.0, 1.0, 12)))
    word = free[0].text.split()[1]
    stopped = b.generate(_reqs(SamplingParams(0.0, 1.0, 12, stop=(word,))))[0]
    assert word not in stopped.text and stopped.finish_reason == "stop"
    assert free[0].text.startswith(stopped.text.rstrip())
    assert all(g.finish_reason in ("stop", "length") for g in free)
    assert all(len(g.token_ids) <= 12 for g in free)
    assert math.isfinite(free[0].logprob)


def test_dtype_auto_resolves_to_a_concrete_dtype(tiny_model, monkeypatch, tmp_path):
    from pathlib import Path

    from evalharness.core import models
    from evalharness.core.errors import EvalHarnessError
    from evalharness.core.models import resolve_dtype
    assert resolve_dtype("float32") == "float32"
    with pytest.raises(EvalHarnessError, match="unknown dtype"):
        resolve_dtype("fp8")
    assert resolve_dtype("auto") == "float32"  # the suite pins auto (conftest); the rule itself:
    monkeypatch.delenv("EVALHARNESS_AUTO_DTYPE")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real = Path.read_text
    for flags, want in (("fpu avx2 fma", "float32"), ("fpu avx512f avx512_bf16", "bfloat16"),
                        ("fpu amx_bf16 amx_tile", "bfloat16")):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, f=flags, **k: f"flags\t: {f}\n"
                            if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
        assert models.has_bf16_units() is (want == "bfloat16") and resolve_dtype("auto") == want
    monkeypatch.setattr(Path, "read_text", real)
    monkeypatch.setenv("EVALHARNESS_AUTO_DTYPE", "bfloat16")
    assert resolve_dtype("auto") == "bfloat16" and resolve_dtype("float32") == "float32"
    monkeypatch.setenv("EVALHARNESS_AUTO_DTYPE", "fp16")
    with pytest.raises(EvalHarnessError, match="EVALHARNESS_AUTO_DTYPE must be float32 or bfloat16"):
        resolve_dtype("auto")
    b = HFBackend(str(tiny_model), dtype="bfloat16")
    assert b.model.dtype == torch.bfloat16
    g = b.generate(_reqs(SamplingParams(0.0, 1.0, 4)))[0]
    assert math.isfinite(g.logprob)


def test_lora_adapter_directory_loads_on_its_base(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from evalharness.core.models import resolve
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")  # adapter_config.json names the base by path
    ref = resolve(str(tmp_path / "adapter"))
    assert ref.kind == "lora" and ref.base.path == str(tiny_model)
    req = [ScoreRequest("x", [5, 6, 7], [8, 9, 1])]
    lora = HFBackend(ref).logprobs(req)[0].logprob
    plain = HFBackend(str(tiny_model)).logprobs(req)[0].logprob
    assert lora != pytest.approx(plain, abs=1e-6)  # the adapter's weights are applied


def test_choice_logprobs_equal_scoring_each_choice_alone(tiny_model):
    """The shared-prompt label scorer (local judges) gives what scoring each continuation alone gives."""
    from evalharness.backends.hf import choice_logprobs
    from evalharness.core.records import ScoreRequest
    b = HFBackend(str(tiny_model))
    prompt = b.tokenizer("the movie was great and the plot", add_special_tokens=False)["input_ids"]
    choices = [b.tokenizer(c, add_special_tokens=False)["input_ids"]
               for c in ("good", "bad very bad", "not really fun", "a")]
    alone = [r.logprob for r in b.logprobs([ScoreRequest(str(i), prompt, c) for i, c in enumerate(choices)])]
    assert choice_logprobs(b.model, prompt, choices, b.pad_id) == pytest.approx(alone, abs=1e-4)
