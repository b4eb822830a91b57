"""On-policy preference pairs: sample k responses per prompt, score them with a judge, keep best vs worst.

This is how the DPO paper builds its controlled-sentiment data (samples from the SFT model, ranked by
a sentiment classifier) and how ODPO gets the score gap it turns into an offset, so the scores are
kept. Ties (best == worst, within ``min_gap``) carry no preference and are dropped; samples whose
judgment failed are left out and counted, never scored.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import EvalHarnessError
from ..judges import get_judge
from ..models import ModelRef, resolve
from ..prompts import load_prompts, render
from ..records import GenRequest, SamplingParams
from ..store import write_json_atomic, write_jsonl_atomic
from .data import PreferencePair, data_hash


@dataclass
class PairsConfig:
    """How on-policy pairs are built; every field lands in the sidecar manifest."""

    model: str
    prompts: str
    judge: str = "sentiment"
    k: int = 4  # samples per prompt
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    min_gap: float = 0.0  # best - worst must exceed this, else the prompt is a tie and dropped
    dtype: str = "float32"
    batch_size: int | str = "auto"  # "auto": sized from a memory budget (evalharness.backends.hf)


def build_pairs(cfg: PairsConfig, *, log: Callable[[str], None] = lambda _: None) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Pairs and statistics (prompts, kept, ties, failed judgments, mean score gap)."""
    from ..backends import get_backend
    if cfg.k < 2:
        raise EvalHarnessError(f"on-policy pairs need k >= 2 samples per prompt, got {cfg.k}")
    items = load_prompts(cfg.prompts)
    judge = get_judge(cfg.judge)
    ref = resolve(cfg.model) if isinstance(cfg.model, str) else cfg.model
    backend = get_backend("hf", ref, dtype=cfg.dtype, batch_size=cfg.batch_size)
    params = SamplingParams(cfg.temperature, cfg.top_p, cfg.max_new_tokens, (), cfg.k, cfg.seed)
    log(f"sampling {cfg.k} responses for each of {len(items)} prompts from {ref.spec}")
    gens = backend.generate([GenRequest(it.id, prompt_ids=render(backend.tokenizer, it), params=params) for it in items])
    gens = [g for g in gens if g.finish_reason != "error" and g.text.strip()]
    verdicts = judge.judge(gens)
    by_prompt: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    failed = 0
    for g, v in zip(gens, verdicts):
        if v.status == "ok" and v.value is not None:
            by_prompt[g.id].append((v.value, g.sample_index, g.text))
        else:
            failed += 1
    pairs, ties, too_few, gaps = [], 0, 0, []
    for it in items:
        scored = by_prompt.get(it.id, [])
        if len(scored) < 2:
            too_few += 1
            continue
        best = max(scored, key=lambda s: (s[0], -s[1]))  # highest score; first sample on a tie
        worst = min(scored, key=lambda s: (s[0], s[1]))
        if best[0] - worst[0] <= cfg.min_gap or best[2] == worst[2]:
            ties += 1
            continue
        gaps.append(best[0] - worst[0])
        pairs.append(PreferencePair(it.id, it, best[2], worst[2], best[0], worst[0]))
    stats = {"prompts": len(items), "pairs": len(pairs), "ties_dropped": ties, "too_few_scored": too_few,
             "failed_judgments": failed, "samples": len(gens),
             "mean_gap": sum(gaps) / len(gaps) if gaps else None,
             "judge": {"id": judge.judge_id, "version": judge.judge_version},
             "model": ref.to_dict() if isinstance(ref, ModelRef) else ref}
    log(f"kept {len(pairs)} pairs ({ties} ties, {too_few} prompts with < 2 scored samples, {failed} failed judgments)")
    return pairs, stats


def write_pairs(pairs: list[PreferencePair], path: str | Path, cfg: PairsConfig | None = None,
                stats: dict[str, Any] | None = None, identity: dict[str, Any] | None = None) -> Path:
    """Pairs as JSONL, with a sidecar ``<file>.meta.json`` saying how they were made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(path, [p.to_dict() for p in pairs])
    write_json_atomic(path.with_name(path.name + ".meta.json"),
                      {"config": asdict(cfg) if cfg else None, "identity": identity, "stats": stats,
                       "data_hash": data_hash(pairs)})
    return path


def pairs_file(cfg: PairsConfig, path: str | Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """Build pairs into ``path`` unless it already holds pairs built the same way (resume)."""
    from ..prompts import file_hash
    path = Path(path)
    meta = path.with_name(path.name + ".meta.json")
    ident = {**{k: v for k, v in asdict(cfg).items() if k != "batch_size"},  # batching changes no sample
             "prompts_hash": file_hash(cfg.prompts), "model_revision": resolve(cfg.model).revision}
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("identity") == ident:
        log(f"on-policy pairs already built: {path}")
        return path
    pairs, stats = build_pairs(cfg, log=log)
    if not pairs:
        raise EvalHarnessError(f"no preference pairs: every prompt was a tie or unscored ({stats})")
    return write_pairs(pairs, path, cfg, stats, identity=ident)
