"""``evalharness eval``: prompts -> samples -> classifier rewards and KL -> scores, a front on the one run loop.

Each judge becomes a task of ``evalharness.pipeline.runner`` over the same prompt file: ``sentiment``,
``toxicity``, ``hf:MODEL[:LABEL]`` (the ``reward`` task) and ``kl``. Everything that can fail on bad
input (prompt file, model names, judge names) is checked before the run folder is created.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalharness.core.decoding import FRONTIER, Decoding
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import Score
from evalharness.pipeline.preflight import check_backend
from evalharness.pipeline.runner import ModelSpec, RunPlan, run
from evalharness.tasks.base import TaskSpec


@dataclass
class EvalConfig:
    """One entry point, one config object. Fields that change numbers land in the manifest."""

    models: list[str]
    prompts: str
    judges: list[str] = field(default_factory=lambda: ["sentiment", "toxicity", "kl"])
    reference: str | None = None
    backend: str = "hf"
    # Decoding: the reward/KL-frontier preset (evalharness.core.decoding.FRONTIER: the policy sampled at T=1).
    temperature: float = FRONTIER.temperature
    top_p: float = FRONTIER.top_p
    max_new_tokens: int = FRONTIER.max_new_tokens
    n: int = FRONTIER.n
    seed: int = FRONTIER.seed
    dtype: str = "float32"  # or bfloat16, or auto (bf16 where the hardware has it; resolved before the run)
    # Not part of the result's identity:
    batch_size: int | None = None  # None: sized per batch from the KV-cache budget (hf backend)
    chunk_size: int = 64  # prompts per append: what a kill can lose, and the progress bar's step
    run_id: str | None = None
    results_dir: str | Path | None = None
    progress: bool = True

    def decoding(self) -> Decoding:
        """The decoding fields as the one decoding config (checked: a bad value names its field)."""
        return Decoding(self.max_new_tokens, self.temperature, self.top_p, self.seed, self.n)


@dataclass
class EvalResult:
    run_dir: Path
    scores: list[Score]
    summary: dict[str, Any]


def judge_tasks(judges: list[str], prompts: str) -> list[TaskSpec]:
    """``--judges`` as tasks: a task module by name, or the ``reward`` task for ``hf:MODEL[:LABEL]`` and ``rm:MODEL``."""
    from evalharness.tasks.base import task_class

    out = []
    for j in (j.strip() for j in judges):
        if not j:
            continue
        if j.startswith(("hf:", "rm:")):
            name, module, options = j, "reward", {"prompts": prompts, "judge": j}
        else:
            name, module, options = j, j, {"prompts": prompts}
        try:
            cls = task_class(module).Config
        except EvalHarnessError:
            raise EvalHarnessError(f"unknown judge '{j}'; known: sentiment, toxicity, kl, hf:MODEL[:LABEL]") from None
        out.append(TaskSpec(name, module, cls(**options)))
    return out


def run_eval(cfg: EvalConfig, log: Callable[[str], None] = lambda _: None) -> EvalResult:
    """Generate, judge and measure KL for every model; resume a run with the same identity."""
    if not cfg.models:
        raise EvalHarnessError("no --model given")
    caps = check_backend(cfg.backend, {"batch_size": cfg.batch_size}, probe=False)  # before any file is read
    generation = cfg.decoding()
    tasks = judge_tasks(cfg.judges, cfg.prompts)
    if any(t.module == "kl" for t in tasks) and not cfg.reference:
        raise EvalHarnessError("the 'kl' judge needs --reference (the SFT model)")
    options = {
        k: v
        for k, v in {"dtype": cfg.dtype, "batch_size": cfg.batch_size}.items()
        if v is not None and k in caps.options
    }  # what the backend takes; the runner adds its defaults
    plan = RunPlan(
        name="eval",
        models=[ModelSpec(m, m) for m in dict.fromkeys(cfg.models)],
        tasks=tasks,
        backend=cfg.backend,
        backend_options=options,
        reference=cfg.reference,
        kind="eval",
        generation=generation,
        run_id=cfg.run_id,
        results_dir=cfg.results_dir,
        progress=cfg.progress,
        chunk_size=cfg.chunk_size,
    )
    res = run(plan, log=log)
    return EvalResult(res.path, res.scores, res.summary)
