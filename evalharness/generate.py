"""``evalharness generate``: sample responses for a prompt file into a JSONL file (atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backends import get_backend
from .errors import EvalHarnessError
from .models import resolve
from .prompts import load_prompts, prompt_hash, render, template_hash
from .records import GenRequest, SamplingParams
from .store import write_jsonl_atomic


@dataclass
class GenerateConfig:
    model: str
    prompts: str
    out: str
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    backend: str = "hf"
    batch_size: int = 16
    dtype: str = "float32"


def generate_file(cfg: GenerateConfig) -> Path:
    items = load_prompts(cfg.prompts)
    if cfg.n < 1 or cfg.max_new_tokens < 1:
        raise EvalHarnessError("need n >= 1 and max_new_tokens >= 1")
    ref = resolve(cfg.model) if cfg.backend in ("hf", "vllm") else cfg.model
    opts: dict[str, object] = {"dtype": cfg.dtype, "progress": True} if cfg.backend in ("hf", "vllm") else {}
    if cfg.backend == "hf":
        opts["batch_size"] = cfg.batch_size
    b = get_backend(cfg.backend, ref, **opts)
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens, (), cfg.n, cfg.seed)
    ids = {it.id: render(b.tokenizer, it) for it in items}
    gens = b.generate([GenRequest(it.id, prompt_ids=ids[it.id], params=params) for it in items])
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    th = template_hash(b.tokenizer)
    write_jsonl_atomic(out, ({"id": g.id, "sample_index": g.sample_index, "text": g.text, "model": cfg.model,
                              "model_id": b.model_id, "n_tokens": len(g.token_ids or []), "finish_reason": g.finish_reason,
                              "prompt_hash": prompt_hash(ids[g.id]), "chat_template_hash": th,
                              "params": params.to_dict()} for g in gens))
    return out
