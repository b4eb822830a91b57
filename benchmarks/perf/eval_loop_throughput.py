"""The run loop's generation throughput against the memory-bandwidth limit of CPU decoding, side by side.

Decoding a small model on a CPU reads every weight once per step, whatever the batch: a step costs
about weight_bytes / bandwidth seconds, so the bound is tokens/s <= batch x bandwidth / weight_bytes
(compute is far from the limit at these batch sizes). This script measures, in one process:

  * bandwidth: a skinny fp32 matmul (1 x d by d x 8d, 512 MiB of weights) timed as bytes read / s;
  * the loop (``evalharness eval``'s path: runner -> sentiment + kl tasks -> hf backend) on the
    quickstart's 64 held-out prompts, 40 new tokens at temperature 1, batch 16 and the default
    (memory-budget sized) batch, with tokens/s and the fraction of the bound each reaches;
  * that both batch sizes give identical samples (per-sample seeds: a batch never changes a sample).

    python benchmarks/perf/eval_loop_throughput.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def bandwidth_gbs(repeats: int = 10) -> float:
    """Bytes of weights read per second by a 1-row fp32 matmul (the shape of a decode step), on 512 MiB of
    weights (the model's size, far past any cache, as in decoding)."""
    d = 4096
    w = torch.randn(d, 8 * d)
    x = torch.randn(1, d)
    for _ in range(5):
        x @ w
    t = time.perf_counter()
    for _ in range(repeats):
        x @ w
    return w.numel() * 4 * repeats / (time.perf_counter() - t) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_loop_throughput.json"))
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    from evalharness.data.movie_reviews import movie_review_split
    from evalharness.pipeline.evaluate import EvalConfig, run_eval
    from evalharness.core.models import load, resolve
    from evalharness.core.prompts import write_prompts
    from evalharness.store import RunStore

    tmp = Path(tempfile.mkdtemp(prefix="evalharness-perf-"))
    prompts = write_prompts(movie_review_split("heldout"), tmp / "heldout.jsonl")
    model, _ = load(resolve("smollm2-135m-instruct"))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = bandwidth_gbs()
    rows, samples = {}, {}
    for label, batch in (("batch 16", 16), ("default", None)):
        best = None
        for r in range(args.repeats):
            cfg = EvalConfig(models=["smollm2-135m-instruct"], reference="smollm2-135m-instruct", prompts=str(prompts),
                             judges=["sentiment"], max_new_tokens=40, batch_size=batch, results_dir=str(tmp / f"{label}-{r}"),
                             progress=False)
            t = time.perf_counter()
            res = run_eval(cfg)
            dt = time.perf_counter() - t
            gens = RunStore(res.run_dir).generations()
            tokens = sum(g.n_tokens for g in gens)
            best = min(best or dt, dt)
            samples[label] = [g.token_ids for g in sorted(gens, key=lambda g: g.item_id)]
        used = batch or 64  # the memory budget allows the 64 prompts in one batch
        limit = used * bw * 1e9 / weight_bytes
        rows[label] = {"batch": used, "seconds": best, "tokens": tokens, "tokens_per_s": tokens / best,
                       "bound_tokens_per_s": limit, "fraction_of_bound": tokens / best / limit}
    out = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
           "bandwidth_gb_s": bw, "weight_bytes": weight_bytes, "rows": rows,
           "speedup_default_vs_16": rows["default"]["tokens_per_s"] / rows["batch 16"]["tokens_per_s"],
           "identical_samples": samples["batch 16"] == samples["default"]}
    for label, r in rows.items():
        print(f"{label:9s} batch {r['batch']:3d}: {r['tokens_per_s']:7.1f} tokens/s "
              f"({r['fraction_of_bound']:.2f} of the {r['bound_tokens_per_s']:.0f} tokens/s bandwidth bound; "
              f"{r['seconds']:.1f} s, {r['tokens']} tokens)")
    print(f"bandwidth {bw:.1f} GB/s, weights {weight_bytes / 1e6:.0f} MB; default vs batch 16: "
          f"{out['speedup_default_vs_16']:.2f}x; identical samples: {out['identical_samples']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
