"""The quickstart, phase by phase: each phase's wall time beside its compute floor on this machine.

Phases are read from the files a finished quickstart leaves (their timestamps and the manifests' times):
  pairs       the SFT model samples 128 prompts x 4 at temperature 1, VADER scores them (inputs written -> pairs.jsonl)
  reference   one forward of the reference over every pair (DPO's run start -> reference_logps.pt)
  train       the optimizer steps and checkpoints of each run (also the sum of the logged step times)
  evaluation  SFT and every checkpoint answer the held-out prompts; sentiment and KL (the eval run's start -> last record)
  report      comparison table, frontier plot, report.html
  other       whatever lies between them (model loads, process start)
The compute floor of a phase is its matrix-multiply FLOPs over this machine's measured matmul peak (a 2048^3 GEMM in
the dtype the phase ran in, the process's default thread count, measured in this run). FLOPs count what the phase
must compute, not what a kernel wastes: per token 2 x (non-embedding weights) for the transformer body, plus
2 x vocab x hidden for the LM head where a token's logits are needed (each generated token; each scored response
token); a backward pass is twice its forward; attention's score matmuls (under 2% at these lengths) and padding are
left out. Token counts come from the run's own files (generations with their prompt and token ids; the pairs
re-tokenized with the model's chat template; a sample's length in the pairs phase is the mean of its prompt's chosen
and rejected answers). share = floor / measured time: 1.0 would be the machine's peak.

    python benchmarks/perf/quickstart_profile.py RESULTS_DIR           # profile a finished quickstart
    python benchmarks/perf/quickstart_profile.py --run [RESULTS_DIR]    # run `evalharness quickstart` first (a fresh
                                                                         # temp folder by default), then profile it
    ... --run --beside-load          # with one single-threaded CPU-bound process running beside it the whole time
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

SWEEP = "quickstart-sentiment"


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


def matmul_peak(dtype: str, n: int = 2048, reps: int = 8) -> float:
    """GFLOP/s of an n x n x n GEMM in ``dtype`` with torch's default threads (best of three timings)."""
    import torch

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


class Flops:
    """Matmul FLOPs of the bundled model's forward passes (see the module docstring)."""

    def __init__(self, model_path: str) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        self.body = sum(p.numel() for n, p in model.model.layers.named_parameters() if p.dim() == 2)
        self.head = cfg.vocab_size * cfg.hidden_size
        self.n_params = sum(p.numel() for p in model.parameters())

    def forward(self, tokens: int, logit_tokens: int) -> float:
        return 2.0 * self.body * tokens + 2.0 * self.head * logit_tokens

    def generate(self, prompt: int, new: int) -> float:  # prefill (last position's logits) + decoding
        return self.forward(prompt + new, 1 + new)


def _pairs_tokens(sweep: Path, tok: Any) -> list[tuple[int, int, int]]:
    """(prompt, chosen + EOS, rejected + EOS) token counts of every pair, as the trainer tokenizes them."""
    from evalharness.core.prompts import PromptItem, render, render_response

    out = []
    for line in (sweep / "pairs.jsonl").read_text().splitlines():
        row = json.loads(line)
        msgs = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
        p = len(render(tok, PromptItem(row["id"], messages=tuple((m["role"], m["content"]) for m in msgs))))
        c, r = (len(render_response(tok, row[k])) for k in ("chosen", "rejected"))
        out.append((p, c, r))
    return out


def profile(root: Path) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from evalharness.core.models import resolve
    from evalharness.workflows.quickstart import BUNDLED, TRAIN

    sweep = root / "train" / SWEEP
    path = resolve(BUNDLED).path
    fl, tok = Flops(path), AutoTokenizer.from_pretrained(path)
    pairs = _pairs_tokens(sweep, tok)
    meta = json.loads((sweep / "pairs.jsonl.meta.json").read_text())
    k = meta["config"]["k"]
    t0 = min(_mtime(p) for p in (root / "inputs").glob("*_train.jsonl"))
    phases: list[dict[str, Any]] = []

    def phase(name: str, start: float, end: float, flops: float, dtype: str, note: str = "") -> None:
        phases.append({"phase": name, "start": start, "end": end, "seconds": end - start, "gflop": flops / 1e9,
                       "dtype": dtype, "note": note})

    sample_flops = sum(k * fl.generate(p, (c + r) / 2) for p, c, r in pairs)
    phase("pairs", t0, _mtime(sweep / "pairs.jsonl"), sample_flops, meta["identity"]["dtype"],
          f"{len(pairs)} prompts x {k} samples")
    score = sum(fl.forward(2 * p + c + r, c + r) for p, c, r in pairs)  # chosen and rejected, each with its prompt
    runs = [(json.loads(m.read_text()), m.parent) for m in sweep.glob("*/train_manifest.json")]
    runs.sort(key=lambda r: str(r[0]["started_at"]))
    for man, run in runs:
        start, end = _ts(man["started_at"]), _ts(man["finished_at"])
        dtype = man["identity"]["dtype"]
        ref = run / "reference_logps.pt"
        if ref.is_file():
            phase(f"reference ({man['algorithm']})", start, _mtime(ref), score, dtype, f"{len(pairs)} pairs")
            start = _mtime(ref)
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [m for m in metrics if "step_time_s" in m]
        epochs = float(TRAIN["epochs"])
        phase(f"train ({man['algorithm']})", start, end, 3 * score * epochs, dtype,
              f"{len(steps)} steps, median {sorted(m['step_time_s'] for m in steps)[len(steps) // 2]:.2f} s/step, "
              f"steps sum {sum(m['step_time_s'] for m in steps):.0f} s")
    evals = sorted(root.glob(f"{SWEEP}-eval-*/manifest.json"))
    if evals:
        man = json.loads(evals[-1].read_text())
        edir = evals[-1].parent
        gens = [json.loads(x) for x in (edir / "generations.jsonl").read_text().splitlines()]
        flops = sum(fl.generate(len(g["prompt_ids"]), len(g["token_ids"])) for g in gens)
        flops += sum(2 * fl.forward(len(g["prompt_ids"]) + len(g["token_ids"]), len(g["token_ids"])) for g in gens)
        end = max(_mtime(p) for p in edir.iterdir())
        models = len({g["model"] for g in gens})
        dtype = man.get("config", {}).get("backend_options", {}).get("dtype") or meta["identity"]["dtype"]
        phase("evaluation", _ts(man["started_at"]), end, flops, dtype,
              f"{models} models x {len(gens) // max(models, 1)} answers, sentiment + KL (model and reference)")
        final = [sweep / n for n in ("comparison.json", "report.html", "frontier.png") if (sweep / n).is_file()]
        if final:
            phase("report", end, max(map(_mtime, final)), 0.0, "-", "table, frontier plot, report.html")
    total = max(p["end"] for p in phases) - t0
    phases.append({"phase": "other", "seconds": total - sum(p["seconds"] for p in phases), "gflop": 0.0,
                   "dtype": "-", "note": "model loads, process start, gaps between phases"})
    return {"phases": phases, "total_s": total, "model_params": fl.n_params, "pairs": len(pairs)}


def run_quickstart(root: Path, beside_load: bool) -> dict[str, Any]:
    """`evalharness quickstart --results-dir root` in a subprocess (optionally beside a busy single-threaded process)."""
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if beside_load else None
    try:
        t = time.time()
        subprocess.run([sys.executable, "-m", "evalharness.cli", "quickstart", "--results-dir", str(root)], check=True)
        wall = time.time() - t
    finally:
        if load is not None:
            load.kill()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024
    return {"wall_s": wall, "peak_rss_gb": peak, "beside_load": beside_load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results_dir", nargs="?", help="a quickstart's --results-dir (with --run: where to run it)")
    ap.add_argument("--run", action="store_true", help="run the quickstart first")
    ap.add_argument("--beside-load", action="store_true", help="with --run: a busy single-threaded process beside it")
    ap.add_argument("--peak-gflops", type=float, help="the fp32 peak to use instead of measuring it now (a peak "
                    "measured while other work runs is too low)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "quickstart_profile.json"))
    args = ap.parse_args()
    if not args.run and not args.results_dir:
        ap.error("give a finished quickstart's results folder, or --run")
    root = Path(args.results_dir or tempfile.mkdtemp(prefix="quickstart-profile-"))
    ran = run_quickstart(root, args.beside_load) if args.run else None

    from evalharness.core.models import has_bf16_units

    prof = profile(root)
    peaks = {"float32": args.peak_gflops or matmul_peak("float32")}
    if has_bf16_units():
        peaks["bfloat16"] = matmul_peak("bfloat16")
    import torch

    print(f"quickstart in {root}: {prof['total_s'] / 60:.1f} min; torch threads {torch.get_num_threads()}; "
          f"matmul peak " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peaks.items())
          + ("" if "bfloat16" in peaks else " (no bf16 units: bf16 is emulated here)"))
    print(f"{'phase':<18} {'time':>7} {'share':>6} {'GFLOP':>8} {'GFLOP/s':>8} {'floor':>7}  dtype     note")
    for p in prof["phases"]:
        peak = peaks.get(p["dtype"])
        p["floor_s"] = p["gflop"] / peak if peak else None
        p["share_of_floor"] = p["floor_s"] / p["seconds"] if p["floor_s"] and p["seconds"] > 0 else None
        floor = f"{p['floor_s']:.0f}s" if p["floor_s"] else "-"
        share = f"{p['share_of_floor']:.2f}" if p["share_of_floor"] else "-"
        print(f"{p['phase']:<18} {int(p['seconds'] // 60)}:{int(p['seconds'] % 60):02d}".ljust(26)
              + f" {share:>6} {p['gflop']:>8.0f} {p['gflop'] / max(p['seconds'], 1e-9):>8.1f} {floor:>7}  "
              f"{p['dtype']:<9} {p['note']}")
    floor_total = sum(p["floor_s"] or 0 for p in prof["phases"])
    print(f"{'whole job':<18} {int(prof['total_s'] // 60)}:{int(prof['total_s'] % 60):02d}   "
          f"{floor_total / prof['total_s']:.2f} floor {floor_total / 60:.1f} min")
    out = {"results_dir": str(root), "peaks_gflops": peaks, "threads": torch.get_num_threads(),
           "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
           "run": ran, **prof, "floor_total_s": floor_total}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
