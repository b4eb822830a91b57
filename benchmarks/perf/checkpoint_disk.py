"""Disk cost of resumable checkpoints (``save_optimizer: true``, the default) on the bundled SmolLM2-135M-Instruct.

Trains one DPO step, full fine-tuning and LoRA (r 16 on q/k/v/o), and reports each checkpoint's bytes: the model
(or adapter) files, the optimizer state (AdamW: two fp32 moments per trainable weight), and the small trainer state
(scheduler, per-process RNG, data position). The ratio optimizer / weights is what ``save_optimizer`` costs.

    python benchmarks/perf/checkpoint_disk.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from evalharness.training.trainer import STATE_DIR, TrainConfig, train

RESULTS = Path(__file__).resolve().parent / "results" / "checkpoint_disk.json"


def _size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def main() -> None:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pairs.jsonl"
        data.write_text("".join(json.dumps({"id": f"p{i}", "prompt": "Write a short movie review.",
                                            "chosen": "A warm, funny film with a great cast.",
                                            "rejected": "Dull and far too long."}) + "\n" for i in range(4)))
        for name, kw in (("full", {}), ("lora", {"lora": True})):
            res = train(TrainConfig(algorithm="dpo", base="smollm2-135m-instruct", data=str(data), max_steps=1,
                                    batch_size=2, max_length=64, output_dir=str(Path(tmp) / name), **kw))
            ck = res.checkpoints[-1]
            weights = _size([p for p in ck.iterdir() if p.suffix == ".safetensors"])
            optim = _size([ck / STATE_DIR / "optimizer.pt"])
            state = _size([ck / STATE_DIR / "trainer_state.pt", ck / STATE_DIR / "state.json"])
            total = _size([p for p in ck.rglob("*")])
            out[name] = {"weights_mb": weights / 1e6, "optimizer_mb": optim / 1e6, "trainer_state_kb": state / 1e3,
                         "checkpoint_mb": total / 1e6, "optimizer_over_weights": optim / weights,
                         "without_optimizer_mb": (total - optim) / 1e6}
            print(f"{name:5s}: weights {weights / 1e6:8.1f} MB  optimizer {optim / 1e6:8.1f} MB "
                  f"({optim / weights:.2f}x)  trainer state {state / 1e3:.1f} kB  checkpoint {total / 1e6:8.1f} MB "
                  f"(without optimizer {(total - optim) / 1e6:.1f} MB)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"model": "smollm2-135m-instruct", "dtype": "float32", **out}, indent=2) + "\n")
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
