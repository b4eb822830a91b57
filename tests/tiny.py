"""Tiny random causal LMs with a word-level tokenizer, built at test time (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<pad>", "<eos>", "<|user|>", "<|assistant|>", "<unk>"]
WORDS = ("the movie was great terrible fine good bad plot acting a an and it is not very really "
         "loved hated story cast music fun dull review write short about continue this").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def build_tokenizer(words: list[str] = WORDS):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(path: Path, *, seed: int = 0, words: list[str] = WORDS, logit_scale: float = 1.0,
                layers: int = 2) -> Path:
    """Save a tiny Llama + tokenizer to ``path`` and return it (a loadable model directory)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(words)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


NEG_INF_WORD = "dull"  # the token whose logit build_vllm_model makes -inf everywhere


def build_vllm_model(path: Path, *, seed: int = 0) -> Path:
    """A tiny Llama that vLLM's CPU kernels take (head size 64) and whose logit for NEG_INF_WORD is -inf at
    every position, so a prompt log-prob of that token is -inf (vLLM replies -9999.0 for it).

    The residual stream's coordinate 0 is a constant 0.05 (embedding column 0; no layer writes to it), so
    the final norm's h_0 > 0 and lm_head's -inf at [NEG_INF_WORD, 0] gives -inf, never NaN."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        model.model.embed_tokens.weight[:, 0] = 0.05
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        model.lm_head.weight[tok.convert_tokens_to_ids(NEG_INF_WORD), 0] = float("-inf")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
