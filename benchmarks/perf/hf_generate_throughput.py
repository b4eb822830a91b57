"""Generation throughput of evalharness's ``hf`` backend against plain transformers, side by side.

Peers, identical settings (same model, prompts rendered by the same chat template, greedy decoding,
same max_new_tokens, same batch size, float32 unless --dtype):
  * plain:   ``model.generate`` on left-padded batches          goal: ours >= 0.9x
  * loop:    ``model.generate`` one prompt at a time             goal: ours >= 3x
Throughput = generated tokens / wall seconds (EOS counted; padding after EOS not counted).

    python benchmarks/perf/hf_generate_throughput.py [--prompts 32] [--max-new-tokens 64] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats per method (best is kept)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "hf_generate_throughput.json"))
    args = ap.parse_args()

    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from evalharness.backends.hf import HFBackend
    from evalharness.data.movie_reviews import movie_review_prompts
    from evalharness.core.prompts import load_prompts, render, write_prompts
    from evalharness.core.records import GenRequest, SamplingParams

    tmp = write_prompts(movie_review_prompts(args.prompts), Path("/tmp/evalharness-perf-prompts.jsonl"))
    b = HFBackend(args.model, dtype=args.dtype, batch_size=args.batch_size)
    model, tok = b.model, b.tokenizer
    items = load_prompts(tmp)
    ids = [render(tok, it) for it in items]
    params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    eos = tok.eos_token_id

    def ours() -> int:
        gens = b.generate([GenRequest(it.id, prompt_ids=i, params=params) for it, i in zip(items, ids)])
        return sum(len(g.token_ids) for g in gens)

    def hf_batched(batch_size: int) -> int:
        total = 0
        order = sorted(range(len(ids)), key=lambda k: -len(ids[k]))  # same length-sorting as ours
        for s in range(0, len(order), batch_size):
            chunk = [ids[k] for k in order[s:s + batch_size]]
            L = max(map(len, chunk))
            x = torch.tensor([[tok.pad_token_id] * (L - len(c)) + c for c in chunk])
            m = torch.tensor([[0] * (L - len(c)) + [1] * len(c) for c in chunk])
            with torch.inference_mode():
                out = model.generate(input_ids=x, attention_mask=m, do_sample=False, max_new_tokens=args.max_new_tokens,
                                     pad_token_id=tok.pad_token_id)
            for row in out[:, L:].tolist():
                total += row.index(eos) + 1 if eos in row else len(row)
        return total

    methods = {"evalharness hf backend": ours, "transformers generate (batched)": lambda: hf_batched(args.batch_size),
               "transformers generate (one at a time)": lambda: hf_batched(1)}
    ours()  # warm-up
    rows = {}
    for name, fn in methods.items():
        best = None
        for _ in range(args.repeats if "one at a time" not in name else 1):
            t = time.perf_counter()
            n = fn()
            dt = time.perf_counter() - t
            best = (n, dt) if best is None or n / dt > best[0] / best[1] else best
        rows[name] = {"tokens": best[0], "seconds": round(best[1], 3), "tokens_per_s": round(best[0] / best[1], 1)}
        print(f"{name:40s} {best[0]:6d} tokens {best[1]:8.2f} s {best[0] / best[1]:8.1f} tok/s", flush=True)
    if args.dtype == "float32":  # bf16 on this hardware, for information (changes the numbers slightly)
        b16 = HFBackend(args.model, dtype="bfloat16", batch_size=args.batch_size)
        b16.generate([GenRequest(it.id, prompt_ids=i, params=params) for it, i in zip(items, ids)][:4])  # warm-up
        t = time.perf_counter()
        n = sum(len(g.token_ids) for g in b16.generate([GenRequest(it.id, prompt_ids=i, params=params)
                                                         for it, i in zip(items, ids)]))
        dt = time.perf_counter() - t
        rows["evalharness hf backend, bfloat16"] = {"tokens": n, "seconds": round(dt, 3), "tokens_per_s": round(n / dt, 1)}
        print(f"{'evalharness hf backend, bfloat16':40s} {n:6d} tokens {dt:8.2f} s {n / dt:8.1f} tok/s", flush=True)
    o = rows["evalharness hf backend"]["tokens_per_s"]
    result = {"settings": vars(args), "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
              "results": rows,
              "ratio_vs_batched_generate": round(o / rows["transformers generate (batched)"]["tokens_per_s"], 3),
              "ratio_vs_one_at_a_time": round(o / rows["transformers generate (one at a time)"]["tokens_per_s"], 3)}
    if "evalharness hf backend, bfloat16" in rows:
        result["bf16_speedup"] = round(rows["evalharness hf backend, bfloat16"]["tokens_per_s"] / o, 3)
        print(f"bf16 vs fp32 (ours):       {result['bf16_speedup']:.2f}x")
    print(f"ratio vs batched generate: {result['ratio_vs_batched_generate']:.2f}x (goal >= 0.9)")
    print(f"ratio vs one-at-a-time:    {result['ratio_vs_one_at_a_time']:.2f}x (goal >= 3)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
