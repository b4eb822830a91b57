"""A training run's config: every field documented once, with its default and help text.

The dataclass is the single source of the run's options: ``evalharness train`` builds one command-line option per
field from it (name, type, default, help, and any older flag name), and sweep specs take the same field names.
This module imports nothing heavy, so the command line can read it at start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any


def _opt(
    default: Any = MISSING, help: str = "", *, factory: Callable[[], Any] | None = None, flags: tuple[str, ...] = ()
) -> Any:
    """A field with its help text; ``flags``: command-line names it also answers to (the first is its own)."""
    meta = {"help": help, "flags": flags}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """One training run. Every field except the bookkeeping ones is part of the run's identity."""

    algorithm: str = _opt(help="dpo cdpo hinge ipo odpo simpo rdpo orpo cpo kto ppo")
    base: str = _opt(help="the SFT model: bundled alias, local directory or HF id")
    data: str = _opt(help="pairs JSONL (unpaired rows for KTO) or hf:NAME[:SPLIT]; prompts JSONL for PPO")
    hparams: dict[str, Any] = _opt(
        factory=dict,
        flags=("--hp",),
        help="the algorithm's hyperparameter KEY=VALUE (repeatable), e.g. beta=0.1; "
        "the rest take their defaults (algorithms.py)",
    )
    reference: str | None = _opt(None, "reference model (default: the base)")
    learning_rate: float = _opt(5e-6, "peak learning rate", flags=("--learning-rate", "--lr"))
    epochs: float = _opt(1.0, "passes over the data (fractions allowed)")
    max_steps: int | None = _opt(None, "optimizer steps; overrides epochs")
    batch_size: int = _opt(8, "examples (pairs, or KTO rows) per micro-batch per process")
    grad_accum: int = _opt(1, "micro-batches per optimizer step")
    schedule: str = _opt("cosine", "cosine | linear | constant (after linear warmup)")
    warmup_ratio: float = _opt(0.1, "share of the steps in linear warmup")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient clipping norm; 0 = off")
    max_length: int = _opt(512, "prompt + response tokens")
    max_prompt_length: int = _opt(256, "prompts are cut from the left beyond this")
    seed: int = _opt(0, "data order, LoRA initialisation, sampling")
    save_every: int = _opt(0, "steps between checkpoints; 0 = final only")
    dtype: str = _opt(
        "auto",
        "auto (bfloat16 where the hardware has bf16 units, else float32), float32, or bfloat16 = mixed precision "
        "(fp32 master weights, bf16 autocast); the manifest records the resolved one",
    )
    lora: bool = _opt(False, "train a LoRA adapter instead of all weights")
    lora_r: int = _opt(16, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    lora_dropout: float = _opt(0.0, "LoRA dropout")
    lora_target_modules: list[str] = _opt(
        factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], help="modules that get a LoRA adapter, comma list"
    )
    gradient_checkpointing: bool = _opt(False, "recompute activations in backward (less memory)")
    # Bookkeeping, not identity (they change no number beyond float tolerance):
    run_name: str | None = _opt(None, "the run's folder name (default: algorithm, hyperparameters, seed)")
    output_dir: str | None = _opt(None, "default: RESULTS/train/RUN_NAME")
    log_every: int = _opt(1, "steps between logged metric rows")
    # Checkpoints also hold the optimizer state (Adam: twice the trainable weights), so a resumed run continues
    # exactly; without it a resume restarts the Adam moments from zero.
    save_optimizer: bool = _opt(True, "checkpoints hold the optimizer state: exact resume, ~3x disk")
    # FSDP2 (torch fully_shard) of our own when launched with torchrun: parameters, gradients and optimizer state
    # sharded over the processes. Under `accelerate launch` with an FSDP or DeepSpeed config, accelerate shards.
    fsdp: bool = _opt(False, "FSDP2-shard the model over torchrun's processes")
    report_to: list[str] = _opt(
        factory=list,
        help="experiment trackers, comma list: wandb, mlflow, or none (default: the spec's report_to, else none)",
    )
    # PPO only: each of the first N steps' rollout batch (token ids, old/reference log-probs, values, scores, masks,
    # and the rewards, advantages and returns computed from them) to OUTPUT_DIR/rollouts/step-NNNNNN.pt.
    log_rollouts: int = _opt(0, "PPO: save the rollouts of the first N steps to OUT/rollouts/; 0 = off")

    def identity(self) -> dict[str, Any]:
        """The fields that make the run what it is (a finished run with the same identity is not trained again)."""
        d = asdict(self)
        for k in BOOKKEEPING:
            d.pop(k)
        return d


BOOKKEEPING = ("run_name", "output_dir", "log_every", "save_optimizer", "fsdp", "report_to", "log_rollouts")


@dataclass
class TrainResult:
    """A run's folder, its checkpoints in step order, and its metric rows."""

    output_dir: Path
    checkpoints: list[Path]
    metrics: list[dict[str, Any]]
    skipped: bool = False  # already finished with the same identity


def default_run_name(cfg: TrainConfig) -> str:
    """algorithm, hyperparameters and seed, e.g. ``dpo-beta0.1-s0``."""
    hp = "-".join(f"{k}{v}" for k, v in sorted(cfg.hparams.items()))
    return f"{cfg.algorithm}{'-' + hp if hp else ''}-s{cfg.seed}"
