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
from functools import partial
from pathlib import Path
from typing import Any

from evalharness.core.decoding import PAIRS, Decoding
from evalharness.core.errors import EvalHarnessError
from evalharness.core.models import ModelRef, resolve, resolve_dtype
from evalharness.core.prompts import load_prompts, render
from evalharness.core.records import GenRequest
from evalharness.judges import CLASSIFIER_JUDGES, get_judge
from evalharness.store import write_json_atomic, write_jsonl_atomic
from evalharness.training.data import PreferencePair, data_hash

RANK_MODES = ("score", "rating", "pairwise")


@dataclass
class PairsConfig:
    """How on-policy pairs are built; every field lands in the sidecar manifest."""

    model: str
    prompts: str
    judge: str = "sentiment"
    k: int = 4  # samples per prompt
    # Decoding: the on-policy pairs preset (evalharness.core.decoding.PAIRS).
    temperature: float = PAIRS.temperature
    top_p: float = PAIRS.top_p
    max_new_tokens: int = PAIRS.max_new_tokens
    seed: int = PAIRS.seed
    min_gap: float = 0.0  # best - worst must exceed this, else the prompt is a tie and dropped
    dtype: str = "auto"  # bfloat16 where the hardware has bf16 units, else float32 (resolved before hashing)
    batch_size: int | str = "auto"  # "auto": sized from a memory budget (evalharness.backends.hf)
    backend: str = "hf"  # or vllm (samples rendered to the same token ids)
    # How samples are ranked: "score" (the text judge above), or a chat judge (chat_judge: JudgeSpec fields):
    # "rating" (MT-Bench-style single-answer 1-10 rating of each sample) or "pairwise" (every two samples judged
    # in both orders; a sample's score is its share of the points, a tie counting half).
    rank: str = "score"
    chat_judge: dict[str, Any] | None = None


def build_pairs(
    cfg: PairsConfig, *, log: Callable[[str], None] = lambda _: None
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Pairs and statistics (prompts, kept, ties, failed judgments, mean score gap)."""
    from evalharness.backends import backend_options, capabilities, get_backend

    _check_config(cfg)
    items = load_prompts(cfg.prompts)
    judge = get_judge(cfg.judge) if cfg.rank == "score" else None
    caps = capabilities(cfg.backend)
    ref = resolve(cfg.model) if isinstance(cfg.model, str) and caps.local_weights else cfg.model
    backend = get_backend(cfg.backend, ref, **backend_options(cfg.backend, dtype=cfg.dtype, batch_size=cfg.batch_size))
    params = Decoding(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed, cfg.k).params(n=cfg.k)
    log(f"sampling {cfg.k} responses for each of {len(items)} prompts from {getattr(ref, 'spec', ref)}")
    gens = backend.generate(
        [GenRequest(it.id, prompt_ids=render(backend.tokenizer, it), params=params) for it in items]
    )
    gens = [g for g in gens if g.finish_reason != "error" and g.text.strip()]
    values, judge_info = _text_judge_scores(judge, items, gens) if judge is not None else chat_scores(cfg, items, gens)
    pairs, ties, too_few, failed, gaps = _best_vs_worst(cfg, items, gens, values)
    stats = {
        "prompts": len(items),
        "pairs": len(pairs),
        "ties_dropped": ties,
        "too_few_scored": too_few,
        "failed_judgments": failed,
        "samples": len(gens),
        "mean_gap": sum(gaps) / len(gaps) if gaps else None,
        "judge": judge_info,
        "model": ref.to_dict() if isinstance(ref, ModelRef) else ref,
    }
    log(f"kept {len(pairs)} pairs ({ties} ties, {too_few} prompts with < 2 scored samples, {failed} failed judgments)")
    return pairs, stats


def _check_config(cfg: PairsConfig) -> None:
    """Reject a config that cannot make pairs: fewer than two samples, an unknown rank, a judge of the wrong kind."""
    if cfg.k < 2:
        raise EvalHarnessError(f"on-policy pairs need k >= 2 samples per prompt, got {cfg.k}")
    if cfg.rank not in RANK_MODES:
        raise EvalHarnessError(f"rank must be one of {', '.join(RANK_MODES)}, got '{cfg.rank}'")
    if (cfg.rank == "score") != (cfg.chat_judge is None):
        raise EvalHarnessError("rank 'rating' or 'pairwise' needs a chat judge, and rank 'score' takes none")


def _text_judge_scores(judge: Any, items: list[Any], gens: list[Any]) -> tuple[list[float | None], dict[str, Any]]:
    """One reward per generation from a text judge or a reward model (None: a failed judgment), and the judge's
    identity."""
    # Pairs rank by reward, higher is better: a lower-is-better judge (toxicity) is read as 1 - p, as PPO's
    # reward is, so the chosen sample is the less toxic one and ODPO's offset s_w - s_l stays positive.
    flip = not judge.higher_is_better
    verdicts = judge.judge(gens, prompts={it.id: it for it in items})
    values = [(1.0 - v.value if flip else v.value) if v.status == "ok" else None for v in verdicts]
    judge_info: dict[str, Any] = {
        "id": judge.judge_id,
        "version": judge.judge_version,
        "score": f"1 - {judge.metric}" if flip else judge.metric,
    }
    return values, judge_info


def _best_vs_worst(
    cfg: PairsConfig, items: list[Any], gens: list[Any], values: list[float | None]
) -> tuple[list[PreferencePair], int, int, int, list[float]]:
    """Each prompt's best vs worst scored sample as a pair; with the ties dropped, the prompts with fewer than
    two scored samples, the failed judgments, and the kept pairs' score gaps."""
    by_prompt: dict[str, list[tuple[float, int, str]]] = defaultdict(list)
    failed = 0
    for g, value in zip(gens, values):
        if value is not None:
            by_prompt[g.id].append((value, g.sample_index, g.text))
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
    return pairs, ties, too_few, failed, gaps


def write_pairs(
    pairs: list[PreferencePair],
    path: str | Path,
    cfg: PairsConfig | None = None,
    stats: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """Pairs as JSONL, with a sidecar ``<file>.meta.json`` saying how they were made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(path, [p.to_dict() for p in pairs])
    write_json_atomic(
        path.with_name(path.name + ".meta.json"),
        {"config": asdict(cfg) if cfg else None, "identity": identity, "stats": stats, "data_hash": data_hash(pairs)},
    )
    return path


def pairs_file(cfg: PairsConfig, path: str | Path, log: Callable[[str], None] = lambda _: None) -> Path:
    """Build pairs into ``path`` unless it already holds pairs built the same way (resume)."""
    from evalharness.core.prompts import file_hash

    path = Path(path)
    meta = path.with_name(path.name + ".meta.json")
    ident = {
        **{k: v for k, v in asdict(cfg).items() if k != "batch_size"},  # batching changes no sample
        "dtype": resolve_dtype(cfg.dtype),  # auto as resolved here: pairs sampled in another precision are rebuilt
        "prompts_hash": file_hash(cfg.prompts),
        "model_revision": resolve(cfg.model).revision,
    }
    if cfg.rank == "score" and cfg.judge in CLASSIFIER_JUDGES and not get_judge(cfg.judge).higher_is_better:
        ident["score"] = f"1 - {cfg.judge}"  # pairs once ranked by the raw score (more toxic chosen) are rebuilt
    if cfg.rank == "score" and cfg.judge.startswith("rm:"):
        ident["judge_version"] = get_judge(cfg.judge).judge_version  # a changed reward model is another ranking
    if path.is_file() and meta.is_file() and json.loads(meta.read_text()).get("identity") == ident:
        log(f"on-policy pairs already built: {path}")
        return path
    pairs, stats = build_pairs(cfg, log=log)
    if not pairs:
        raise EvalHarnessError(f"no preference pairs: every prompt was a tie or unscored ({stats})")
    return write_pairs(pairs, path, cfg, stats, identity=ident)


# Judge prompts in MT-Bench's formats (single-answer grading with a [[rating]]; pairwise with [[A]], [[B]] or
# [[C]] for a tie); their hash is the ranker's version in the pairs' sidecar, so a changed prompt is another ranker.
_RATING_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the "
    "user question displayed below. Consider helpfulness, relevance, accuracy, depth and level of detail. Begin with a "
    'short explanation, then rate the response on a scale of 1 to 10 in exactly this format: "[[rating]]", for '
    'example "Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
    "[The End of Assistant's Answer]"
)
_PAIRWISE_PROMPT = (
    "Please act as an impartial judge and compare the responses of two AI assistants to the user question below. "
    "Do not let the order of the responses, their length or the assistants' names influence you. After a short "
    'explanation, give your verdict in exactly this format: "[[A]]" if assistant A is better, "[[B]]" if '
    'assistant B is better, "[[C]]" for a tie.\n\n[User Question]\n{question}\n\n'
    "[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
)


def parse_pairwise(text: str) -> str | None:
    """FastChat's pairwise rule (mt_bench.metric.parse_pair: [[A]], else [[B]], else [[C]]) as "A", "B" or "C"."""
    from evalharness.tasks.mt_bench.metric import parse_pair

    return {"A": "A", "B": "B", "tie": "C", None: None}[parse_pair(text or "")]


def chat_scores(cfg: PairsConfig, items: list[Any], gens: list[Any]) -> tuple[list[float | None], dict[str, Any]]:
    """One score per generation from a chat judge (None: no parsed judgment), and the judge's identity and counts.

    A failed request or an unparsed reply is counted and never becomes a score. In pairwise mode every two samples
    of a prompt are judged twice, positions swapped (position bias cancels), and a sample scores its share of the
    points of its parsed games (win 1, tie 1/2); a sample none of whose games parsed is unscored.
    """
    import hashlib

    from evalharness.pipeline.runner import make_judge
    from evalharness.pipeline.spec import JudgeSpec
    from evalharness.tasks.mt_bench.metric import parse_rating

    client, name = make_judge(JudgeSpec(**(cfg.chat_judge or {})), False)
    question = {it.id: it.messages[-1][1] if it.messages else str(it.prompt) for it in items}
    template = _RATING_PROMPT if cfg.rank == "rating" else _PAIRWISE_PROMPT
    version = hashlib.sha256(f"{template}|parser:fastchat".encode()).hexdigest()[:12]  # the rule is in the version
    ask = partial(_chat_request, version=version)
    counts = {"ok": 0, "failed": 0, "unparsed": 0}

    def parsed(res: Any, parse: Callable[[str], Any]) -> Any:
        value = parse(res.text or "") if res.status == "ok" else None
        counts["failed" if res.status != "ok" else "unparsed" if value is None else "ok"] += 1
        return value

    if cfg.rank == "rating":
        requests = [
            ask(f"{g.id}#{g.sample_index}", template.format(question=question[g.id], answer=g.text)) for g in gens
        ]
        scores: list[float | None] = [parsed(r, parse_rating) for r in client.complete(requests)]
    else:
        games = _pairwise_games(gens)
        requests = [
            ask(
                f"{gens[a].id}#{gens[a].sample_index}-{gens[b].sample_index}",
                template.format(question=question[gens[a].id], a=gens[a].text, b=gens[b].text),
            )
            for a, b in games
        ]
        verdicts = [parsed(res, parse_pairwise) for _, res in zip(games, client.complete(requests))]
        scores = _pairwise_scores(games, verdicts, len(gens))
    return scores, {
        "id": name,
        "version": f"{cfg.rank}:{version}",
        "mode": cfg.rank,
        "judgments": {"requests": len(requests), **counts},
    }


def _chat_request(key: str, text: str, *, version: str) -> Any:
    """One judge request: ``text`` as the user turn, greedy, under the judge prompt's ``version``."""
    from evalharness.backends.http import ChatRequest

    return ChatRequest(
        id=key,
        messages=[{"role": "user", "content": text}],
        temperature=0.0,
        max_tokens=512,
        template_version=version,
    )


def _pairwise_games(gens: list[Any]) -> list[tuple[int, int]]:
    """Every two samples of a prompt (indices into ``gens``), each pair in both orders, positions swapped."""
    by_prompt: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(gens):
        by_prompt[g.id].append(i)
    return [
        (a, b)
        for rows in by_prompt.values()
        for x, i in enumerate(rows)
        for j in rows[x + 1 :]
        for a, b in ((i, j), (j, i))
    ]


def _pairwise_scores(games: list[tuple[int, int]], verdicts: list[str | None], n: int) -> list[float | None]:
    """Each of ``n`` samples' share of the points of its parsed games (win 1, tie 1/2); None where none parsed."""
    points, played = [0.0] * n, [0] * n
    for (a, b), verdict in zip(games, verdicts):
        if verdict is not None:
            win_a = {"A": 1.0, "B": 0.0, "C": 0.5}[verdict]
            points[a], points[b] = points[a] + win_a, points[b] + 1.0 - win_a
            played[a], played[b] = played[a] + 1, played[b] + 1
    return [points[i] / played[i] if played[i] else None for i in range(n)]
