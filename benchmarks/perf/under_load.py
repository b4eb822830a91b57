"""How the quickstart's two kinds of work slow down beside one busy single-threaded process, per thread setting.

Work (the bundled SmolLM2-135M, fp32, as the quickstart runs it):
  train    a DPO-sized step: forward + backward over 16 sequences of 80 tokens (8 pairs), AdamW step
  decode   sampling 40 tokens for 32 prompts with the hf backend (the pairs' and the evaluation's generation)
Settings, each in a fresh process (OpenMP reads its environment once):
  threads=2            torch's default here (one thread per core)
  threads=2 passive    OMP_WAIT_POLICY=PASSIVE: threads that wait at a barrier sleep instead of spinning
  threads=1            one thread
  fitted               EVALHARNESS_THREADS=fit (opt-in): ``evalharness.core.threads.fit()`` before each unit
                       sets the threads to the cores other processes left free over the last unit
Each setting runs idle, then with ``python -c "while True: pass"`` beside it (not niced: the scheduler's fair share
gives that process a core's worth of time). Reported: median seconds per unit of work, and beside / idle, and
beside / (threads=2 idle), the figure a user feels.

    python benchmarks/perf/under_load.py [--reps 3] [--work train,decode]   # about 15 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {"threads=2": {"OMP_NUM_THREADS": "2", "EVALHARNESS_THREADS": "2"},
            "threads=2 passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE", "EVALHARNESS_THREADS": "2"},
            "threads=1": {"OMP_NUM_THREADS": "1", "EVALHARNESS_THREADS": "1"},
            "fitted": {"OMP_NUM_THREADS": "2", "EVALHARNESS_THREADS": "fit"}}  # threads.fit() before each unit


def worker(kind: str, reps: int) -> list[float]:
    import torch

    from evalharness.backends.hf import HFBackend
    from evalharness.core import threads
    from evalharness.core.records import GenRequest, SamplingParams

    backend = HFBackend("smollm2-135m-instruct", dtype="float32", batch_size=32)
    times = []
    if kind == "train":
        model = backend.model
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        ids = torch.randint(0, model.config.vocab_size, (16, 80))
        for _ in range(reps + 1):
            threads.fit()
            t = time.perf_counter()
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t)
    else:
        reqs = [GenRequest(str(i), messages=[{"role": "user", "content": f"Continue this movie review ({i}): The"}],
                           params=SamplingParams(1.0, 1.0, 40, (), 1, 0)) for i in range(32)]
        for _ in range(reps + 1):
            t = time.perf_counter()
            backend.generate(reqs)
            times.append(time.perf_counter() - t)
    return times[1:]  # the first is warm-up


def measure(kind: str, setting: str, beside: bool, reps: int) -> float:
    env = {**os.environ, **SETTINGS[setting]}
    load = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if beside else None
    try:
        out = subprocess.run([sys.executable, __file__, "--worker", kind, "--reps", str(reps)], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if load is not None:
            load.kill()
    return statistics.median(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", choices=["train", "decode"])
    ap.add_argument("--work", default="train,decode", help="which work to measure, comma list")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="which settings, comma list")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "under_load.json"))
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.reps)))
        return
    rows = []
    for kind in args.work.split(","):
        base = None
        for setting in args.settings.split(","):
            idle, busy = measure(kind, setting, False, args.reps), measure(kind, setting, True, args.reps)
            base = base or idle
            rows.append({"work": kind, "setting": setting, "idle_s": idle, "beside_s": busy,
                         "beside_over_idle": busy / idle, "beside_over_default_idle": busy / base})
            r = rows[-1]
            print(f"{kind:<7} {setting:<18} idle {idle:6.2f} s  beside {busy:6.2f} s  "
                  f"x{r['beside_over_idle']:.2f} of its idle, x{r['beside_over_default_idle']:.2f} of threads=2 idle",
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    old = json.loads(out.read_text())["rows"] if out.is_file() else []
    rows += [r for r in old if r["work"] not in {x["work"] for x in rows}]  # keep the other work's last figures
    out.write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
