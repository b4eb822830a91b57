"""``evalharness train --dry-run``: what a training sweep (or one run) would do, before any model is loaded.

Per run: its examples, optimizer steps (``training.loop.total_steps``, one process), sequences through the policy
(each pair is a chosen and a rejected sequence), reference log-prob passes, and checkpoints. For on-policy data:
the samples to generate (prompts x k) and the judgments of the pairs' judge, with their output tokens at most
(max_new_tokens each). Token counts are upper bounds (max_length per sequence); no time is estimated for training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from evalharness.core.prompts import load_prompts
from evalharness.training.algorithms import get_spec
from evalharness.training.config import TrainConfig
from evalharness.training.data import load_preferences, load_unpaired
from evalharness.training.loop import total_steps


@dataclass
class TrainRunPlan:
    name: str
    algorithm: str
    examples: int  # pairs, KTO rows or PPO prompts
    steps: int
    global_batch: int
    sequences: int  # forward-backward sequences through the policy (a pair is two)
    sequence_tokens: int  # at most: sequences x max_length
    reference_passes: int  # sequences scored once by the reference (precomputed table)
    checkpoints: int


@dataclass
class TrainPlan:
    name: str
    runs: list[TrainRunPlan]
    onpolicy: dict[str, Any] = field(default_factory=dict)  # generations, judgments, judge, output tokens at most
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_plan(cfg: TrainConfig, examples: int, name: str | None = None) -> TrainRunPlan:
    """One training run's counts for ``examples`` training examples (one process)."""
    spec = get_spec(cfg.algorithm)
    global_batch = cfg.batch_size * cfg.grad_accum
    steps, _ = total_steps(cfg, examples, global_batch)
    per_example = 1 if spec.unpaired or spec.online else 2
    sequences = steps * global_batch * per_example
    reference = examples * per_example if spec.needs_reference and not spec.online else 0
    saves = steps // cfg.save_every if cfg.save_every else 0
    checkpoints = saves + (0 if cfg.save_every and steps % cfg.save_every == 0 else 1)
    return TrainRunPlan(
        name=name or cfg.run_name or cfg.algorithm,
        algorithm=cfg.algorithm,
        examples=examples,
        steps=steps,
        global_batch=global_batch,
        sequences=sequences,
        sequence_tokens=sequences * cfg.max_length,
        reference_passes=reference,
        checkpoints=checkpoints,
    )


def count_examples(cfg: TrainConfig, data: str) -> int:
    """The training examples in ``data`` as the algorithm reads it (pairs, unpaired rows or prompts)."""
    spec = get_spec(cfg.algorithm)
    if spec.online:
        return len(load_prompts(data))
    return len(load_unpaired(data) if spec.unpaired else load_preferences(data))


def sweep_plan(spec: Any, runs: Sequence[Any]) -> TrainPlan:
    """A sweep spec's plan (``workflows.sweep.load_train_spec``'s spec and runs): on-policy pairs are counted from
    their prompts (at most one pair per prompt: min_gap may drop some)."""
    op = spec.data.on_policy
    prompts = spec.data.prompts or (op.prompts if op else None)
    onpolicy: dict[str, Any] = {}
    notes = ["one process; sequence tokens are at most max_length each; training time is not estimated"]
    if op is not None:
        n = len(load_prompts(op.prompts))
        onpolicy = {
            "prompts": n,
            "generations": n * op.k,
            "generation_tokens": n * op.k * op.max_new_tokens,
            "judgments": n * op.k,
            "judge": op.judge,
            "judge_requests": 0,
        }
        notes.append(f"on-policy pairs: at most {n} (one per prompt), judged by {op.judge} (no chat judge requests)")
    out = []
    for r in runs:
        algo = get_spec(r.config.algorithm)
        if algo.online:
            examples = len(load_prompts(str(prompts))) if prompts else 0
        elif op is not None:
            examples = onpolicy["prompts"]
        else:
            examples = count_examples(r.config, str(spec.data.path))
        out.append(run_plan(r.config, examples, r.name))
    if spec.eval is not None:
        models = 1 + sum(r.checkpoints if spec.eval.checkpoints == "all" else 1 for r in out)
        notes.append(
            f"evaluation: {models} models (the base and the checkpoints); `evalharness plan` on its run spec gives "
            "its judge requests, tokens and cost"
        )
    return TrainPlan(spec.name, out, onpolicy, notes)


def render_train_plan(plan: TrainPlan) -> str:
    """The training plan as text: one row per run, the on-policy data, the notes."""
    header = ["run", "algorithm", "examples", "steps", "batch", "sequences", "tokens (max)", "ref passes", "ckpts"]
    rows = [
        [r.name, r.algorithm, *map(str, (r.examples, r.steps, r.global_batch, r.sequences))]
        + [f"{r.sequence_tokens:,}", str(r.reference_passes), str(r.checkpoints)]
        for r in plan.runs
    ]
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    lines = [f"training plan of {plan.name}: {len(plan.runs)} runs"]
    lines += [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    if plan.onpolicy:
        lines.append("on-policy data: " + ", ".join(f"{k} {v}" for k, v in plan.onpolicy.items()))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def single_plan(cfg: TrainConfig) -> TrainPlan:
    """One run from options (``train --algorithm ... --data ...``)."""
    run = run_plan(cfg, count_examples(cfg, cfg.data))
    return TrainPlan(run.name, [run], notes=["one process; sequence tokens are at most max_length each"])
