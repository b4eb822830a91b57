"""PPO on the bundled SmolLM2-135M-Instruct with the VADER judge: held-out sentiment beats SFT beyond its CI (slow)."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.slow

# Short enough for CI: 12 rollout batches of 8 movie-review openings (96 episodes), 2 PPO epochs each.
PPO_FAST = {"reward": "sentiment", "kl_coef": 0.05, "response_length": 40, "temperature": 1.0, "num_ppo_epochs": 2}


@pytest.mark.timeout(900)
def test_ppo_beats_sft_on_heldout_sentiment(tmp_path):
    from evalharness.compare import comparison_table
    from evalharness.data.movie_reviews import movie_review_split
    from evalharness.evaluate import EvalConfig, run_eval
    from evalharness.prompts import write_prompts
    from evalharness.quickstart import BUNDLED
    from evalharness.train.trainer import TrainConfig, train
    train_prompts = write_prompts(movie_review_split("train"), tmp_path / "train.jsonl")
    heldout = write_prompts(movie_review_split("heldout"), tmp_path / "heldout.jsonl")
    t0 = time.perf_counter()
    res = train(TrainConfig(algorithm="ppo", base=BUNDLED, data=str(train_prompts), hparams=PPO_FAST,
                            learning_rate=3e-5, max_steps=12, batch_size=8, warmup_ratio=0.0, schedule="constant",
                            max_length=160, dtype="bfloat16", output_dir=str(tmp_path / "ppo")), log=print)
    t_train = time.perf_counter() - t0
    ck = str(res.checkpoints[-1].resolve())
    ev = run_eval(EvalConfig(models=[BUNDLED, ck], prompts=str(heldout), judges=["sentiment"], max_new_tokens=40,
                             temperature=1.0, seed=0, results_dir=str(tmp_path / "results"), progress=False))
    table, verdict = comparison_table([ev.run_dir], base=BUNDLED, reward_metric="sentiment")
    print(json.dumps({"train_s": t_train, "total_s": time.perf_counter() - t0, "verdict": verdict,
                      "train_scores": [round(m["objective/scores"], 3) for m in res.metrics],
                      "kl": [round(m["objective/kl"], 2) for m in res.metrics]}, indent=1))
    assert verdict["best_model"] == ck and verdict["beats_sft"], verdict
    assert verdict["paired_delta"]["ci_low"] > 0 and verdict["best_reward"] - verdict["sft_reward"] > verdict["sft_ci_halfwidth"]
