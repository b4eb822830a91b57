"""``evalharness generate``: sample responses for a prompt file into a JSONL file (atomically)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalharness.backends import backend_options, get_backend
from evalharness.core.decoding import PREVIEW, Decoding
from evalharness.core.models import resolve
from evalharness.core.prompts import load_prompts, prompt_hash, render, template_hash
from evalharness.core.records import GenRequest
from evalharness.pipeline.preflight import check_backend
from evalharness.store import write_jsonl_atomic


@dataclass
class GenerateConfig:
    model: str
    prompts: str
    out: str
    # Decoding: the quick greedy preset (evalharness.core.decoding.PREVIEW).
    max_new_tokens: int = PREVIEW.max_new_tokens
    temperature: float = PREVIEW.temperature
    top_p: float = PREVIEW.top_p
    n: int = PREVIEW.n
    seed: int = PREVIEW.seed
    backend: str = "hf"
    batch_size: int = 16
    dtype: str = "float32"
    backend_options: dict[str, Any] = field(default_factory=dict)  # e.g. base_url, api_key_env (openai)

    def decoding(self) -> Decoding:
        """The decoding fields as the one decoding config (checked: a bad value names its field)."""
        return Decoding(self.max_new_tokens, self.temperature, self.top_p, self.seed, self.n)


def generate_file(cfg: GenerateConfig) -> Path:
    """Sample ``cfg.n`` responses per prompt into ``cfg.out``; everything is checked before the model loads."""
    params = cfg.decoding().params(n=cfg.n)
    caps = check_backend(cfg.backend, {"batch_size": cfg.batch_size, **cfg.backend_options})
    items = load_prompts(cfg.prompts)
    ref = resolve(cfg.model) if caps.local_weights else cfg.model
    b = get_backend(
        cfg.backend,
        ref,
        **backend_options(cfg.backend, cfg.backend_options, dtype=cfg.dtype, batch_size=cfg.batch_size, progress=True),
    )
    if b.tokenizer is None:  # a chat endpoint renders its own prompts: it gets the messages
        reqs = [GenRequest(it.id, messages=it.chat(), prompt=it.prompt, params=params) for it in items]
        ids: dict[str, list[int]] = {}
    else:
        ids = {it.id: render(b.tokenizer, it) for it in items}
        reqs = [GenRequest(it.id, prompt_ids=ids[it.id], params=params) for it in items]
    gens = b.generate(reqs)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    th = template_hash(b.tokenizer)
    write_jsonl_atomic(
        out,
        (
            {
                "id": g.id,
                "sample_index": g.sample_index,
                "text": g.text,
                "model": cfg.model,
                "model_id": b.model_id,
                "n_tokens": len(g.token_ids or []),
                "finish_reason": g.finish_reason,
                "prompt_hash": prompt_hash(ids[g.id]) if ids else None,
                "chat_template_hash": th,
                "params": params.to_dict(),
            }
            for g in gens
        ),
    )
    return out
