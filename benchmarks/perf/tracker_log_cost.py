"""What a tracker costs a training run: seconds to start a tracker run, and milliseconds per ``metrics.jsonl`` row
(the 13 numbers of a DPO step) sent through ``trackers.Trackers.log_row``, for W&B offline and MLflow on its
default local SQLite store. Each tracker is started twice: the first start pays the import and, for MLflow, the
database's creation.

    python benchmarks/perf/tracker_log_cost.py [--rows 100]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from evalharness import trackers

RESULTS = Path(__file__).resolve().parent / "results" / "tracker_log_cost.json"
ROW = {"loss": 0.69, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2,
       "rewards/accuracies": 1.0, "logps/chosen": -10.0, "logps/rejected": -11.0, "grad_norm": 1.2, "lr": 5e-6,
       "epoch": 0.1, "step_time_s": 1.0, "samples_per_s": 8.0, "elapsed_s": 3.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("wandb", "mlflow"):
            for attempt in ("first", "second"):
                info = trackers.RunInfo(f"bench-{attempt}", "train", Path(tmp) / name / attempt, Path(tmp))
                t0 = time.perf_counter()
                t = trackers.start([name], info)
                t1 = time.perf_counter()
                for step in range(1, args.rows + 1):
                    t.log_row({**ROW, "step": step})
                t2 = time.perf_counter()
                t.finish()
                out[f"{name}/{attempt}"] = {"start_s": t1 - t0, "ms_per_row": 1000 * (t2 - t1) / args.rows,
                                            "finish_s": time.perf_counter() - t2}
    out["load_average"] = {"1min": os.getloadavg()[0]}  # type: ignore[dict-item]
    for k, v in out.items():
        print(k, {m: round(x, 3) for m, x in v.items()})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
