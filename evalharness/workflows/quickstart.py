"""The main job on the bundled model, offline: DPO vs SimPO for sentiment control, as in the DPO paper.

1. On-policy pairs: the SFT model (SmolLM2-135M-Instruct) continues 128 movie-review openings 4 times
   each at temperature 1; VADER scores them; best vs worst is a pair (ties dropped, scores kept).
2. DPO and SimPO train on those pairs, with checkpoints along training.
3. Every checkpoint and the SFT model answer 64 held-out prompts (films never seen in training):
   sentiment reward and sequence-level KL to SFT, each with a 95% CI.
4. A comparison table (paired difference to SFT), the reward/KL frontier plot (PNG and SVG) and report.html,
   the whole comparison with a per-prompt viewer in one self-contained page.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.paths import results_root
from evalharness.core.prompts import write_prompts
from evalharness.data.movie_reviews import movie_review_split
from evalharness.data.rude_prompts import rude_prompt_split
from evalharness.training.algorithms import ALGORITHMS
from evalharness.workflows.sweep import DataSpec, EvalSpec, OnPolicySpec, SweepResult, TrainSpec, expand, run_sweep

BUNDLED = "smollm2-135m-instruct"

# Settings chosen so the whole job takes minutes on 2 CPU cores and the effect is well outside the CI.
# Hyperparameters follow the papers' recommendations scaled to a tiny model and a short run.
TRAIN = {
    "learning_rate": 5.0e-5,
    "epochs": 2,
    "batch_size": 8,
    "save_every": 8,
    "max_length": 160,
    "warmup_ratio": 0.1,
    "schedule": "cosine",
}
# Each algorithm's own quickstart settings are its row's ``quick`` (train/algorithms.py).
QUICK_ALGORITHMS: dict[str, dict[str, Any]] = {name: spec.quick for name, spec in ALGORITHMS.items()}


# --task: which control experiment. sentiment: the DPO paper's (VADER, higher is better); toxicity: the ODPO
# paper's (alt-profanity-check P(offensive), lower is better) on rant openings that invite an insult, with DPO
# against ODPO (its offset from the pairs' score gap). Pairs rank by the judge's direction (train.onpolicy).
QUICK_TASKS: dict[str, tuple[Callable[[str], list[dict[str, Any]]], str, str]] = {
    "sentiment": (movie_review_split, "movie_reviews", "dpo,simpo"),
    "toxicity": (rude_prompt_split, "rude_prompts", "dpo,odpo"),
}


def quickstart_spec(
    root: Path, algorithms: str | None = None, seed: int = 0, task: str = "sentiment", seeds: int = 1
) -> TrainSpec:
    """The quickstart as a sweep spec (``benchmarks/sentiment_frontier.yaml`` and ``toxicity_frontier.yaml``
    are the same in YAML); ``algorithms`` None is the task's pair (dpo,simpo; dpo,odpo for toxicity);
    ``seeds`` training seeds per algorithm (seed, seed + 1, ...), for method-level rows."""
    if seeds < 1:
        raise InputError(f"{seeds}: at least one training seed", field="--seeds")
    if task not in QUICK_TASKS:
        raise EvalHarnessError(f"unknown quickstart task '{task}'; choose from {', '.join(QUICK_TASKS)}")
    split, stem, default = QUICK_TASKS[task]
    algorithms = algorithms or default
    names = list(ALGORITHMS) if algorithms.strip() == "all" else [a.strip() for a in algorithms.split(",") if a.strip()]
    unknown = [a for a in names if a not in QUICK_ALGORITHMS]
    if unknown or not names:
        raise EvalHarnessError(f"unknown algorithm(s) {unknown}; choose from {', '.join(ALGORITHMS)} or 'all'")
    train_prompts = write_prompts(split("train"), root / "inputs" / f"{stem}_train.jsonl")
    heldout = write_prompts(split("heldout"), root / "inputs" / f"{stem}_heldout.jsonl")
    chosen: dict[str, dict[str, Any] | None] = {
        a: {**QUICK_ALGORITHMS[a], **({"reward": task} if "reward" in QUICK_ALGORITHMS[a] else {})} for a in names
    }  # PPO's reward is the task's judge
    return TrainSpec(
        name=f"quickstart-{task}",
        base=BUNDLED,
        data=DataSpec(
            on_policy=OnPolicySpec(prompts=str(train_prompts), judge=task, k=4, max_new_tokens=40, seed=seed)
        ),
        train=TRAIN,
        algorithms=chosen,
        seeds=[seed + k for k in range(seeds)],
        eval=EvalSpec(prompts=str(heldout), judges=[task, "kl"], max_new_tokens=40, seed=seed),
    )


def quickstart(
    *,
    algorithms: str | None = None,
    seed: int = 0,
    task: str = "sentiment",
    seeds: int = 1,
    results_dir: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> SweepResult:
    """Run the sentiment- (or toxicity-) control sweep on the bundled model; resumes where a previous run stopped."""
    root = Path(results_dir) if results_dir else results_root()
    spec = quickstart_spec(root, algorithms, seed, task, seeds)
    return run_sweep(spec, expand(spec), results_dir=root, progress=progress, log=log)
