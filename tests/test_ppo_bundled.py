"""PPO on the bundled SmolLM2-135M-Instruct with the VADER judge: held-out sentiment beats SFT beyond its CI (slow).

The user's path: a sweep spec through `evalharness train`, its checkpoints and SFT through the one run loop, the
verdict from `compare.best_checkpoint` (corrected for picking the best checkpoint). 12 rollout batches of 8, not
the quickstart's 32, yet still a `long` test (`make test-long`, not CI), as the quickstart's own PPO runs are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.long]
REPO = Path(__file__).resolve().parents[1]

SPEC = """
name: ppo-bundled
base: smollm2-135m-instruct
data: {{prompts: {train}}}
train: {{learning_rate: 1.0e-4, max_steps: 12, batch_size: 8, save_every: 6, max_length: 160, warmup_ratio: 0.0,
        schedule: constant, dtype: bfloat16}}
algorithms:
  ppo: {{reward: sentiment, kl_coef: 0.05, response_length: 40, temperature: 1.0, num_ppo_epochs: 4}}
seeds: [0]
eval: {{prompts: {heldout}, judges: [sentiment, kl], max_new_tokens: 40, seed: 0}}
"""


# Measured 2026-12-02 (2 shared cores): 12 batches at lr 3e-5 / 2 PPO epochs gave 0.627 vs SFT 0.588; at lr 1e-4 /
# 4 epochs 0.648, paired Δ +0.059 [−0.011, +0.130]: not beyond the CI. The claim is open (issue: PPO).
@pytest.mark.xfail(reason="PPO has not yet beaten SFT beyond the CI in 12 rollout batches of 8 (see README)", strict=False)
@pytest.mark.timeout(3900)
def test_ppo_beats_sft_on_heldout_sentiment(tmp_path):
    spec = tmp_path / "ppo.yaml"
    spec.write_text(SPEC.format(train=REPO / "benchmarks/sentiment/prompts_train.jsonl",
                                heldout=REPO / "benchmarks/sentiment/prompts_heldout.jsonl"))
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "train", str(spec), "--results-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=3800, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = tmp_path / "train" / "ppo-bundled"
    comparison = json.loads((sweep / "comparison.json").read_text())
    v = comparison["verdict"]
    print(json.dumps(v, indent=1))
    run = next(d for d in sweep.iterdir() if d.is_dir() and d.name.startswith("ppo"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    print("train scores", [round(m["objective/scores"], 3) for m in metrics])
    assert v["k_checkpoints"] == 2 and v["best_model"].startswith("ppo")
    assert v["beats_sft"] and v["paired_delta"]["ci_low"] > 0, v
    assert v["best_reward"] - v["sft_reward"] > v["sft_ci_halfwidth"]
    kl = {r["model"]: r["value"] for r in comparison["table"] if r["metric"] == "kl"}
    assert kl["sft"] == 0.0 and all(x > 0 for m, x in kl.items() if m != "sft")
