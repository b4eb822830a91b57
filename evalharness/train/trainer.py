"""One trainer for every offline preference algorithm: full fine-tuning or LoRA, on CPU or GPUs.

- Reference log-probs are computed once per run, before the first step, by the base model itself (or the given
  reference), split across processes; they are kept in the run folder, so no reference model is in memory while
  training and a resumed run never recomputes them.
- Only response positions get logits (left padding puts every response at the right edge), so the
  LM head runs on B*R positions instead of B*L: the same scoring function as evaluation.
- Chosen and rejected run in one forward pass (concatenated batch).
- Data order is a seeded permutation per epoch; LoRA initialisation is seeded too.
- ``accelerate launch`` or ``torchrun`` runs it data-parallel: each process takes its slice of every step's
  examples; gradients are all-reduced by DDP, or reduce-scattered by FSDP2 (``fsdp: true`` under torchrun, or
  accelerate's FSDP2 / DeepSpeed ZeRO-3 plugins); only the main process writes.
- A killed run resumes: each checkpoint also holds ``training_state/`` (optimizer, scheduler, per-process RNG,
  data position), written inside the same atomic folder, so a resumed run continues exactly.

Each checkpoint is a loadable model folder (``save_pretrained``, gathered to full tensors from sharded state; an
adapter folder for LoRA) with an ``evalharness_manifest.json``: algorithm, every hyperparameter, data hash, base
model, step, metrics.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import provenance, trackers
from ..errors import EvalHarnessError, InputError
from ..models import ModelRef, load_fresh, resolve
from ..paths import atomic_dir, results_root, write_atomic
from ..prompts import PromptItem, file_hash, load_prompts, render, render_response
from ..store import read_jsonl, write_json_atomic, write_jsonl_atomic
from .algorithms import get_spec, make_config
from .data import PreferencePair, UnpairedExample, data_hash, load_preferences, load_unpaired

MANIFEST = "evalharness_manifest.json"
TRAIN_MANIFEST = "train_manifest.json"
STATE_DIR = "training_state"  # inside a checkpoint: what resuming needs beyond the weights
REFERENCE_LOGPS = "reference_logps.pt"  # (N, 2), computed once per run
KILL_ENV = "EVALHARNESS_TEST_KILL"


@dataclass
class TrainConfig:
    """One training run. Every field except the bookkeeping ones is part of the run's identity."""

    algorithm: str
    base: str  # the SFT model: bundled alias, local directory, HF id
    data: str  # JSONL of pairs (or unpaired rows for KTO), or hf:NAME[:SPLIT]
    hparams: dict[str, Any] = field(default_factory=dict)  # the algorithm's (see algorithms.py); defaults filled in
    reference: str | None = None  # default: the base model
    learning_rate: float = 5e-6
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 8  # examples (pairs, or KTO rows) per micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    schedule: str = "cosine"  # cosine | linear | constant, after linear warmup
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 512  # prompt + response tokens
    max_prompt_length: int = 256  # prompts are cut from the left beyond this
    seed: int = 0
    save_every: int = 0  # steps between checkpoints; 0: only the final one
    dtype: str = "float32"  # float32, or bfloat16 = mixed precision (fp32 master weights, bf16 autocast)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    gradient_checkpointing: bool = False
    # Bookkeeping, not identity (they change no number beyond float tolerance):
    run_name: str | None = None
    output_dir: str | None = None
    log_every: int = 1
    # Checkpoints also hold the optimizer state (Adam: twice the trainable weights), so a resumed run continues
    # exactly; without it a resume restarts the Adam moments from zero.
    save_optimizer: bool = True
    # FSDP2 (torch fully_shard) of our own when launched with torchrun: parameters, gradients and optimizer state
    # sharded over the processes. Under `accelerate launch` with an FSDP or DeepSpeed config, accelerate shards.
    fsdp: bool = False
    # Experiment trackers the main process copies metrics.jsonl rows and the train manifest to (trackers.py).
    report_to: list[str] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _BOOKKEEPING:
            d.pop(k)
        return d


_BOOKKEEPING = ("run_name", "output_dir", "log_every", "save_optimizer", "fsdp", "report_to")


@dataclass
class TrainResult:
    output_dir: Path
    checkpoints: list[Path]
    metrics: list[dict[str, Any]]
    skipped: bool = False  # already finished with the same identity


@dataclass
class _Example:
    prompt_ids: list[int]
    chosen_ids: list[int]  # or the completion (KTO)
    rejected_ids: list[int] | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None
    desirable: bool | None = None
    kl_ids: list[int] | None = None  # KTO: a completion from another example, for the KL reference point


def default_run_name(cfg: TrainConfig) -> str:
    hp = "-".join(f"{k}{v}" for k, v in sorted(cfg.hparams.items()))
    return f"{cfg.algorithm}{'-' + hp if hp else ''}-s{cfg.seed}"


def _check(cfg: TrainConfig) -> None:
    if cfg.schedule not in ("cosine", "linear", "constant"):
        raise EvalHarnessError(f"schedule must be cosine, linear or constant, got '{cfg.schedule}'")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise EvalHarnessError(f"training dtype must be float32 or bfloat16 (mixed precision), got '{cfg.dtype}'")
    for name in ("batch_size", "grad_accum", "max_length", "max_prompt_length"):
        if getattr(cfg, name) < 1:
            raise EvalHarnessError(f"{name} must be >= 1")
    if cfg.learning_rate <= 0 or not 0 <= cfg.warmup_ratio < 1 or (cfg.max_steps is None and cfg.epochs <= 0):
        raise EvalHarnessError("need learning_rate > 0, 0 <= warmup_ratio < 1, and epochs > 0 or max_steps")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise EvalHarnessError("max_steps must be >= 1")
    trackers.check(cfg.report_to)  # an unknown tracker or a missing package fails before anything runs


def _encode(tok: Any, prompt: PromptItem, text: str, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Prompt ids (rendered as at evaluation) and response ids + EOS, truncated to the length limits."""
    p = render(tok, prompt)[-cfg.max_prompt_length:]
    r = render_response(tok, text)
    return p, r[:max(1, cfg.max_length - len(p))]


def _examples(tok: Any, data: list[PreferencePair] | list[UnpairedExample], cfg: TrainConfig,
              unpaired: bool) -> list[_Example]:
    out = []
    for ex in data:
        if unpaired:
            assert isinstance(ex, UnpairedExample)
            p, c = _encode(tok, ex.prompt, ex.completion, cfg)
            out.append(_Example(p, c, desirable=ex.desirable))
        else:
            assert isinstance(ex, PreferencePair)
            p, c = _encode(tok, ex.prompt, ex.chosen, cfg)
            _, r = _encode(tok, ex.prompt, ex.rejected, cfg)
            out.append(_Example(p, c, r, ex.score_chosen, ex.score_rejected))
    if unpaired:
        # KTO's reference point (Ethayarajh et al. 2024, Sec. 4.1): KL estimated on mismatched pairs
        # (x_i, y_j). A fixed seeded derangement, so its reference log-probs can be precomputed.
        import torch
        perm = torch.randperm(len(out), generator=torch.Generator().manual_seed(cfg.seed + 7919)).tolist()
        for a, b in zip(perm, perm[1:] + perm[:1]):
            out[a].kl_ids = out[b].chosen_ids[:max(1, cfg.max_length - len(out[a].prompt_ids))]
    return out


def _sequences(batch: list[_Example], unpaired: bool) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and responses of one concatenated forward: chosen then rejected (or completion then KL)."""
    prompts = [e.prompt_ids for e in batch] * 2
    second = [e.kl_ids if unpaired else e.rejected_ids for e in batch]
    return prompts, [e.chosen_ids for e in batch] + second  # type: ignore[operator]


def _lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    warmup = int(round(cfg.warmup_ratio * total))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else max(0.0, 1 - progress)
    return f


def _save_checkpoint(model: Any, tok: Any, path: Path, manifest: dict[str, Any], *,
                     state_dict: dict[str, Any] | None = None, extra: Callable[[Path], None] | None = None) -> None:
    """A loadable model folder, written to a temporary sibling and renamed: never half-written. ``state_dict`` is
    the full state gathered from a sharded model; ``extra`` writes more files into the folder before the rename."""
    with atomic_dir(path) as tmp:
        extra_kw = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(tmp, safe_serialization=True, **extra_kw)
        tok.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)


def _base_spec(ref: ModelRef) -> str:
    """A spec that resolves from anywhere: the alias or hub id, or the absolute folder."""
    return ref.spec if ref.kind in ("bundled", "hub") else str(Path(ref.path).resolve())


@dataclass
class _Plan:
    """What a run is, decided before any model is loaded: the data, the models, where it goes, its identity."""

    cfg: TrainConfig
    spec: Any  # AlgorithmSpec
    hparams: dict[str, Any]
    data: list[PreferencePair] | list[UnpairedExample]
    base: ModelRef
    reference: ModelRef
    run_name: str
    out: Path
    ident: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # an algorithm's own identity fields (PPO: its reward)

    @property
    def reference_table(self) -> bool:
        """Whether the run keeps precomputed reference log-probs (PPO scores its fresh samples as it goes)."""
        return self.spec.needs_reference and not self.spec.online

    def manifest(self) -> dict[str, Any]:
        """The train manifest's description of the run (status and checkpoints are added by the caller)."""
        return {"run_name": self.run_name, "identity": self.ident, "algorithm": self.cfg.algorithm,
                "hparams": self.hparams, "paper": self.spec.paper, **self.extra, "base_model": _base_spec(self.base),
                "base": self.base.to_dict(),
                "reference": self.reference.to_dict() if self.spec.needs_reference else None,
                "data": self.data_info(), "started_at": provenance.now(), **provenance.environment()}

    def data_info(self) -> dict[str, Any]:
        info = {"source": self.cfg.data, "hash": self.ident["data_hash"], "n_examples": len(self.data)}
        return {**info, "kind": "prompts"} if self.spec.online else info


def _plan(cfg: TrainConfig, extra: dict[str, Any] | None = None) -> _Plan:
    """The run's plan; ``extra`` (PPO's reward judge) joins its identity and manifests."""
    _check(cfg)
    spec = get_spec(cfg.algorithm)
    hparams = asdict(make_config(cfg.algorithm, **cfg.hparams))
    if spec.online:  # prompts, hashed as a file (PPO samples its own responses)
        data: Any = load_prompts(cfg.data)
        dhash = file_hash(cfg.data)
    else:
        data = load_unpaired(cfg.data) if spec.unpaired else load_preferences(cfg.data)
        dhash = data_hash(data)
    if spec.needs_scores:
        missing = [e.id for e in data if isinstance(e, PreferencePair) and e.score_chosen is None]
        if missing:
            raise InputError(f"{cfg.algorithm} needs score_chosen and score_rejected on every pair; "
                             f"{len(missing)} lack them (first: id '{missing[0]}')", path=cfg.data, field="score_chosen")
    base = resolve(cfg.base)
    reference = resolve(cfg.reference) if cfg.reference else base
    run_name = cfg.run_name or default_run_name(cfg)
    out = Path(cfg.output_dir) if cfg.output_dir else results_root() / "train" / run_name
    ident = {**cfg.identity(), "hparams": hparams, "data_hash": dhash, "base_revision": base.revision,
             "reference_revision": reference.revision if spec.needs_reference else None, **(extra or {})}
    return _Plan(cfg, spec, hparams, data, base, reference, run_name, out, ident, dict(extra or {}))


def train(cfg: TrainConfig, log: Callable[[str], None] = lambda _: None) -> TrainResult:
    """Train one run. A finished run with the same identity is skipped; an unfinished one resumes from its newest
    complete checkpoint (weights, optimizer, scheduler, RNG, data position), or starts again if it has none."""
    if get_spec(cfg.algorithm).online:  # PPO samples its own responses from prompts: ppo.py, on this file's helpers
        from .ppo import train_ppo
        return train_ppo(cfg, log)
    plan = _plan(cfg)
    return run_resumable(plan, cfg.batch_size * cfg.grad_accum,
                         lambda accel, resume, state, gb, tracker: _train(plan, accel, resume, state, gb, tracker, log), log)


# (accel, resume, state, global batch, the run's trackers)
Loop = Callable[[Any, Path | None, dict[str, Any] | None, int, trackers.Trackers], TrainResult]


def run_resumable(plan: _Plan, local_batch: int, loop: Loop, log: Callable[[str], None]) -> TrainResult:
    """What every algorithm's run does around its training loop: skip a finished run; choose the resume point (the
    same on every process) and put the run folder back to it, or start a fresh one; then
    ``loop(accel, resume, state, global_batch, tracker)``, recording in the manifest how it ended. ``local_batch`` is the
    examples (PPO: episodes) per step per process."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list
    out = plan.out
    done = _finished(out, plan.ident)
    if done is not None:
        log(f"{plan.run_name}: already trained ({out})")
        return done
    # Mixed precision is our own autocast (not Accelerator(mixed_precision=...)): accelerate's state is a
    # process-wide singleton, and one process may train runs of different precisions one after another.
    accel = Accelerator(cpu=not torch.cuda.is_available())
    main = accel.is_main_process
    P = accel.num_processes
    global_batch = local_batch * P
    # Every process must resume from the same checkpoint: rank 0 decides, before anything on disk changes.
    resume = broadcast_object_list([_resume_point(out, plan.ident, plan.reference_table)])[0] if P > 1 \
        else _resume_point(out, plan.ident, plan.reference_table)
    state = _read_state(resume, global_batch) if resume is not None else None
    if main:
        _open_run_dir(plan, resume, state, log)
    accel.wait_for_everyone()
    try:
        with trackers.start_training(plan.cfg.report_to if main else [], out, results_root(), log) as tracker:
            return loop(accel, resume, state, global_batch, tracker)
    except BaseException as e:  # the manifest says what happened; nothing is left marked "running"
        if main and (out / TRAIN_MANIFEST).is_file():
            man = json.loads((out / TRAIN_MANIFEST).read_text())
            man.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                       error=f"{type(e).__name__}: {e}", finished_at=provenance.now())
            write_json_atomic(out / TRAIN_MANIFEST, man)
        raise


def _train(plan: _Plan, accel: Any, resume: Path | None, state: dict[str, Any] | None, global_batch: int,
           tracker: trackers.Trackers, log: Callable[[str], None]) -> TrainResult:
    """Set up (model, sharding, reference log-probs, resumed state), then step and checkpoint until the end."""
    import torch

    cfg, out, P = plan.cfg, plan.out, accel.num_processes
    torch.manual_seed(cfg.seed)
    model, tok = _load_policy(plan, resume)
    examples = _examples(tok, plan.data, cfg, plan.spec.unpaired)
    steps_per_epoch = math.ceil(len(examples) / global_batch)
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
    model, opt, sched, params, sharded = _prepare(model, cfg, accel, total, log)
    run = _Session(plan, accel, model, tok, opt, sched, params, examples, sharded)
    run.ref_logps = _reference_table(run, resume, log)

    start, history, elapsed0 = 0, [], 0.0
    if resume is not None:
        assert state is not None
        start, elapsed0 = state["step"], state["elapsed_s"]
        exact, _ = _restore(resume, accel.unwrap_model(model), opt, sched, accel, sharded)
        history = [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] <= start]
        log(f"{plan.run_name}: resuming after step {start} from {resume.name}"
            + ("" if exact else " (no optimizer state saved: Adam moments start again from zero)"))

    # The index stream: one seeded permutation per epoch, concatenated, cut into equal global batches. It depends
    # only on the seed, the data and the global batch, so a resumed run continues it at step * global_batch.
    g = torch.Generator().manual_seed(cfg.seed)
    stream: list[int] = []
    while len(stream) < total * global_batch:
        stream += torch.randperm(len(examples), generator=g).tolist()

    log(f"{plan.run_name}: {cfg.algorithm} on {len(examples)} examples, {total} steps of {global_batch}"
        f" ({'LoRA' if cfg.lora else 'full'}, {cfg.dtype}, {P} process{'es' if P > 1 else ''}, {run.strategy})"
        f" -> {out}")
    checkpoints = _checkpoints(out) if resume is not None else []
    since_save: list[dict[str, Any]] = []
    t_start = time.perf_counter() - elapsed0
    for step in range(start + 1, total + 1):
        t0 = time.perf_counter()
        row = run.step(stream[(step - 1) * global_batch:step * global_batch])
        _fault("after_optimizer", step, accel.process_index)
        dt = time.perf_counter() - t0
        row.update(step=step, epoch=step / steps_per_epoch, step_time_s=dt, samples_per_s=global_batch / dt,
                   elapsed_s=time.perf_counter() - t_start)
        history.append(row)
        since_save.append(row)
        if accel.is_main_process and (step % cfg.log_every == 0 or step == total):
            _log_row(out, row, tracker)
            extra = (f" margin {row['rewards/margins']:.3f} acc {row['rewards/accuracies']:.2f}"
                     if row.get("rewards/margins") is not None else f" kl {row['kl']:.3f}")
            log(f"{plan.run_name} step {step}/{total}: loss {row['loss']:.4f}{extra} ({dt:.1f}s)")
        _fault("before_checkpoint", step, accel.process_index)
        if (cfg.save_every and step % cfg.save_every == 0) or step == total:
            ck = out / f"checkpoint-{step}"
            run.save(ck, {**run.checkpoint_manifest(step, total, global_batch, row),
                          "metrics_since_last_checkpoint": _mean_rows(since_save)},
                     {"step": step, "samples_seen": step * global_batch, "global_batch": global_batch,
                      "num_processes": P, "elapsed_s": row["elapsed_s"], "total_steps": total})
            if accel.is_main_process:
                _record_checkpoint(out, checkpoints, ck, step)
            since_save = []
    if accel.is_main_process:
        _record_finish(out, history, time.perf_counter() - t_start)
    accel.wait_for_everyone()
    return TrainResult(out, checkpoints, history)


def _record_checkpoint(out: Path, checkpoints: list[Path], ck: Path, step: int) -> None:
    """Rank 0, once checkpoint ``ck`` is complete: list it in the train manifest."""
    checkpoints.append(ck)
    _fault("after_checkpoint", step, 0)
    man = json.loads((out / TRAIN_MANIFEST).read_text())
    man["checkpoints"] = [c.name for c in checkpoints]
    write_json_atomic(out / TRAIN_MANIFEST, man)


def _record_finish(out: Path, history: list[dict[str, Any]], train_time_s: float, **extra: Any) -> None:
    man = json.loads((out / TRAIN_MANIFEST).read_text())
    man.update(status="finished", finished_at=provenance.now(), train_time_s=train_time_s, final_metrics=history[-1],
               **extra)
    write_json_atomic(out / TRAIN_MANIFEST, man)


@dataclass
class _Session:
    """One process's live training state, which every step and every checkpoint uses."""

    plan: _Plan
    accel: Any
    model: Any  # as prepared: DDP-wrapped, FSDP2-sharded, a DeepSpeed engine, or plain
    tok: Any
    opt: Any
    sched: Any
    params: list[Any]  # the trainable parameters of the prepared model
    examples: list[_Example]
    sharded: bool
    ref_logps: Any = None

    @property
    def deepspeed(self) -> bool:
        from accelerate.utils import DistributedType
        return bool(self.accel.distributed_type == DistributedType.DEEPSPEED)

    @property
    def strategy(self) -> str:
        return ("deepspeed" if self.deepspeed else "fsdp2" if self.sharded
                else "ddp" if self.accel.num_processes > 1 else "single")

    def step(self, idx: list[int]) -> dict[str, Any]:
        """One optimizer step on a global batch of example indices (this process takes its slice of each
        micro-batch); the metrics reduced over micro-batches and processes, with the lr and grad norm."""
        cfg, accel, P = self.plan.cfg, self.accel, self.accel.num_processes
        parts: list[dict[str, Any]] = []
        for micro in range(cfg.grad_accum):
            lo = (micro * P + accel.process_index) * cfg.batch_size
            batch_idx = idx[lo:lo + cfg.batch_size]
            sync = micro == cfg.grad_accum - 1
            # FSDP reduce-scatters every micro-batch (correct, and its shards are small); DDP defers to the last
            ctx = accel.no_sync(self.model) if not sync and P > 1 and not self.sharded else _null()
            with ctx:
                loss, metrics = _loss(self.model, [self.examples[i] for i in batch_idx], batch_idx, self.ref_logps,
                                      cfg, self.plan.hparams, self.plan.spec.unpaired, self.tok.pad_token_id, accel)
                accel.backward(loss if self.deepspeed else loss / cfg.grad_accum)  # DeepSpeed divides by its count
            parts.append(metrics)
        grad_norm = _full(accel.clip_grad_norm_(self.params, cfg.max_grad_norm)) if cfg.max_grad_norm > 0 else None
        lr = self.sched.get_last_lr()[0]  # the rate this step used
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return {**_reduce(parts, accel), "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None}

    def checkpoint_manifest(self, step: int, total: int, global_batch: int, row: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint folder says about itself (``evalharness_manifest.json``)."""
        return checkpoint_manifest(self.plan, step, total, global_batch, row,
                                   {"processes": self.accel.num_processes, "strategy": self.strategy})

    def save(self, ck: Path, manifest: dict[str, Any], state: dict[str, Any]) -> None:
        """Every process takes part (sharded state is gathered to rank 0); rank 0 writes the folder atomically."""
        accel = self.accel
        unwrapped = accel.unwrap_model(self.model)
        full = None
        if self.deepspeed:
            full = accel.get_state_dict(self.model)  # ZeRO-3 partitions gathered (zero3_save_16bit_model)
        elif self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            full = get_model_state_dict(unwrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        save_resumable(accel, unwrapped, self.tok, self.opt, self.sched, ck, manifest, state,
                       save_optimizer=self.plan.cfg.save_optimizer, full=full)


def checkpoint_manifest(plan: _Plan, step: int, total: int, global_batch: int, row: dict[str, Any],
                        parallel: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint folder says about itself (``evalharness_manifest.json``)."""
    cfg = plan.cfg
    return {"kind": "checkpoint", "run_name": plan.run_name, "algorithm": cfg.algorithm, "hparams": plan.hparams,
            "paper": plan.spec.paper, **plan.extra, "step": step, "epoch": row["epoch"], "total_steps": total,
            "samples_seen": step * global_batch, "base_model": _base_spec(plan.base),
            "base_revision": plan.base.revision,
            "reference_model": _base_spec(plan.reference) if plan.spec.needs_reference else None,
            "lora": cfg.lora, "parallel": parallel, "data": plan.data_info(), "train_config": cfg.identity(),
            "metrics": row, "created_at": provenance.now(), **provenance.environment()}


def save_resumable(accel: Any, model: Any, tok: Any, opt: Any, sched: Any, ck: Path, manifest: dict[str, Any],
                   state: dict[str, Any], *, save_optimizer: bool, full: dict[str, Any] | None = None,
                   actor: Any = None, more: dict[str, Any] | None = None,
                   files: Callable[[Path], None] | None = None) -> None:
    """A checkpoint a run resumes from. Every process takes part (optimizer state and RNG gathered to rank 0);
    rank 0 writes the folder atomically: the model (``actor`` when the unwrapped ``model`` holds more, as PPO's
    actor and critic; ``full``: its gathered state dict), and ``training_state/``: the optimizer state, the
    scheduler, every process's RNG and ``more`` (an algorithm's own state) in trainer_state.pt, the files that
    ``files(folder)`` writes, and state.json last."""
    import torch
    optim = _optimizer_state(model, opt, accel) if save_optimizer else None
    rng = _rng_state()
    if accel.num_processes > 1:
        import torch.distributed as dist
        ranks: list[Any] = [None] * accel.num_processes
        dist.all_gather_object(ranks, rng)
    else:
        ranks = [rng]
    accel.wait_for_everyone()
    if not accel.is_main_process:
        return

    def training_state(folder: Path) -> None:
        st = folder / STATE_DIR
        st.mkdir()
        _fault("in_checkpoint", state["step"], 0)
        if optim is not None:
            torch.save(optim, st / "optimizer.pt")
        if files is not None:
            files(st)
        torch.save({"scheduler": sched.state_dict(), "rng": ranks, **(more or {})}, st / "trainer_state.pt")
        write_json_atomic(st / "state.json", {**state, "optimizer": optim is not None})  # written last

    _save_checkpoint(model if actor is None else actor, tok, ck, manifest, state_dict=full, extra=training_state)
    _drop_older_resume_state(ck.parent)


# The files only a resume reads, kept by the newest checkpoint alone: the optimizer state, PPO's critic. state.json
# says which a checkpoint still has (its key is the file's stem).
_RESUME_ONLY = ("optimizer.pt", "critic.safetensors")


def _drop_older_resume_state(out: Path) -> None:
    """A resume starts from the newest checkpoint only: older ones keep their weights, scheduler and RNG state
    but not the optimizer state (2x the trainable weights) or PPO's critic, so a run holds one copy of them."""
    for older in _checkpoints(out)[:-1]:
        st = older / STATE_DIR
        gone = [st / name for name in _RESUME_ONLY if (st / name).is_file()]
        if gone:
            state = json.loads((st / "state.json").read_text())
            write_json_atomic(st / "state.json", {**state, **{p.stem: False for p in gone}})
            for p in gone:
                p.unlink()


def _reference_table(run: _Session, resume: Path | None, log: Callable[[str], None]) -> Any:
    """The run's reference log-probs: read back on resume (computed once, by the untrained reference, never again
    from trained weights); else computed now, by the policy itself before its first step or by the given
    reference, and kept in the run folder. None when the algorithm has no reference."""
    import torch
    plan, accel = run.plan, run.accel
    if not plan.spec.needs_reference:
        return None
    if resume is not None:
        return torch.load(plan.out / REFERENCE_LOGPS, weights_only=True)
    own = plan.reference is plan.base
    ref_model = accel.unwrap_model(run.model) if own else \
        _disable_dropout(load_fresh(plan.reference, dtype="float32")[0]).to(accel.device)
    table = _reference_logps(ref_model, run.examples, plan.spec.unpaired, run.tok.pad_token_id, plan.cfg, accel, log)
    if accel.is_main_process:
        _save_tensor(table, plan.out / REFERENCE_LOGPS)
    return table


def _load_policy(plan: _Plan, resume: Path | None) -> tuple[Any, Any]:
    """The model to train, on CPU: the base, or the resumed checkpoint's weights (LoRA: base + saved adapter)."""
    cfg = plan.cfg
    source = plan.base
    if resume is not None and not cfg.lora:  # the checkpoint folder is a full model: load it instead of the base
        source = ModelRef(str(resume), "local", str(resume), "resume")
    model, tok = load_fresh(source, dtype="float32")
    _disable_dropout(model)
    if cfg.lora:
        model = lora_wrap(model, cfg, "CAUSAL_LM")
        if resume is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file
            set_peft_model_state_dict(model, load_file(str(resume / "adapter_model.safetensors")))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.lora:
            model.enable_input_require_grads()
    model.train()
    return model, tok


def lora_wrap(model: Any, cfg: TrainConfig, task_type: str | None) -> Any:
    """``model`` with a fresh LoRA adapter of the run's rank, alpha, dropout and target modules (peft)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        from ..errors import MissingExtraError
        raise MissingExtraError("peft", "train") from e
    return get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=list(cfg.lora_target_modules), task_type=task_type))


def _prepare(model: Any, cfg: TrainConfig, accel: Any, total: int,
             log: Callable[[str], None]) -> tuple[Any, Any, Any, list[Any], bool]:
    """(model, optimizer, scheduler, trainable params, sharded?) ready to train: FSDP2 of our own when ``cfg.fsdp``
    under torchrun; else accelerate's wrapping (DDP, or its FSDP2 / DeepSpeed plugin under ``accelerate launch``).
    The scheduler drives the plain torch optimizer, whose param groups every wrapper shares."""
    import torch
    from accelerate.utils import DistributedType
    managed = accel.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if cfg.fsdp and not managed and accel.num_processes == 1:
        log("fsdp: one process, nothing to shard; training unsharded")
    if cfg.fsdp and not managed and accel.num_processes > 1:
        model = _fully_shard(model.to(accel.device), accel)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = _adamw(params, cfg, fused=False)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total)), params, True
    if accel.distributed_type == DistributedType.DEEPSPEED:
        # No dataloader goes through accelerate, so DeepSpeed learns the batch geometry and clipping from us.
        ds = accel.state.deepspeed_plugin.deepspeed_config
        ds.update(train_micro_batch_size_per_gpu=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
                  gradient_clipping=cfg.max_grad_norm,
                  train_batch_size=cfg.batch_size * cfg.grad_accum * accel.num_processes)
    model.to(accel.device)
    opt = _adamw([p for p in model.parameters() if p.requires_grad], cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
    model, opt = accel.prepare(model, opt)
    params = [p for p in model.parameters() if p.requires_grad]  # accelerate's FSDP2 swaps parameters for DTensors
    return model, opt, sched, params, _is_fsdp(model)


def _fully_shard(model: Any, accel: Any) -> Any:
    """FSDP2 over a 1-D mesh of every process (gloo on CPU, NCCL on GPUs): one unit per decoder layer (the model's
    ``_no_split_modules``, as accelerate's auto-wrap policy picks them), then the root for embeddings and head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(accel.device.type, (accel.num_processes,))
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = set(getattr(inner, "_no_split_modules", None) or ())
    for m in list(model.modules()):
        if type(m).__name__ in layer_types:
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _is_fsdp(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _full(value: Any) -> Any:
    """A DTensor's full value (a sharded model's grad norm), else the value."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _optimizer_state(model: Any, opt: Any, accel: Any) -> dict[str, Any] | None:
    """The full optimizer state keyed by parameter name (gathered from FSDP shards), on rank 0; None under
    DeepSpeed, whose engine owns its partitioned state."""
    from accelerate.utils import DistributedType
    if accel.distributed_type == DistributedType.DEEPSPEED:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, getattr(opt, "optimizer", opt),
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _restore(ck: Path, model: Any, opt: Any, sched: Any, accel: Any, sharded: bool) -> tuple[bool, dict[str, Any]]:
    """Optimizer, scheduler and this process's RNG from a checkpoint (the weights were loaded with the model).
    True when the optimizer state was there to restore; and trainer_state.pt (with an algorithm's own state)."""
    import torch
    st = ck / STATE_DIR
    trainer_state = torch.load(st / "trainer_state.pt", weights_only=True)
    sched.load_state_dict(trainer_state["scheduler"])
    inner = getattr(opt, "optimizer", opt)
    has_optim = (st / "optimizer.pt").is_file()
    if has_optim:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        # Sharded: rank 0 reads the file and broadcasts each tensor, so no other process holds the full state.
        from_rank0 = sharded and accel.num_processes > 1
        osd = torch.load(st / "optimizer.pt", weights_only=True) if accel.is_main_process or not from_rank0 else {}
        set_optimizer_state_dict(model, inner, osd, options=StateDictOptions(full_state_dict=True,
                                                                             broadcast_from_rank0=from_rank0))
    for group, lr in zip(inner.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    rng = trainer_state["rng"]
    _set_rng_state(rng[accel.process_index] if accel.process_index < len(rng) else rng[0])
    return has_optim, trainer_state


def _rng_state() -> dict[str, Any]:
    import random

    import numpy as np
    import torch
    npst = np.random.get_state()
    return {"python": random.getstate(), "numpy": [npst[0], npst[1].tolist(), *npst[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch
    random.setstate(s["python"])
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _save_tensor(t: Any, path: Path) -> None:
    import torch
    write_atomic(path, lambda f: torch.save(t, f), binary=True)


def _checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders in step order. A half-written one is a hidden temporary (``atomic_dir``) whose
    name never matches; ``state.json``, written last, marks a folder this trainer finished."""
    found = [p for p in out.glob("checkpoint-*")
             if p.name.removeprefix("checkpoint-").isdigit() and (p / STATE_DIR / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint-")))


def _resume_point(out: Path, ident: dict[str, Any], needs_reference: bool) -> Path | None:
    """The newest complete checkpoint of an unfinished run with this identity; None: start from step 0."""
    try:
        man = json.loads((out / TRAIN_MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if man.get("identity") != json.loads(json.dumps(ident)):
        return None
    if needs_reference and not (out / REFERENCE_LOGPS).is_file():
        return None
    cks = _checkpoints(out)
    return cks[-1] if cks else None


def _read_state(ck: Path, global_batch: int) -> dict[str, Any]:
    state = json.loads((ck / STATE_DIR / "state.json").read_text())
    if state["global_batch"] != global_batch:
        raise EvalHarnessError(
            f"{ck} was written with a global batch of {state['global_batch']} ({state['num_processes']} processes); "
            f"this launch has {global_batch}: resume with the same number of processes, or give another --output-dir")
    return state


def _open_run_dir(plan: _Plan, resume: Path | None, state: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """Rank 0: a fresh run folder, or the killed run's folder put back to its checkpoint: temporaries removed,
    metrics after the checkpoint's step cut (they are recomputed), the resume recorded in the manifest."""
    out = plan.out
    if resume is None:
        if out.exists():
            log(f"{plan.run_name}: no resumable checkpoint in {out}; starting from step 0")
            shutil.rmtree(out)
        out.mkdir(parents=True)
        write_json_atomic(out / TRAIN_MANIFEST, {**plan.manifest(), "status": "running", "checkpoints": []})
        return
    assert state is not None
    for tmp in out.glob(".checkpoint-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    write_jsonl_atomic(out / "metrics.jsonl", [r for r in read_jsonl(out / "metrics.jsonl") if r["step"] <= state["step"]])
    man = json.loads((out / TRAIN_MANIFEST).read_text())
    man.pop("error", None)
    man.update(status="running", checkpoints=[c.name for c in _checkpoints(out)],
               resumed=[*man.get("resumed", []), {"from": resume.name, "step": state["step"], "at": provenance.now(),
                                                   "optimizer": state["optimizer"]}])
    write_json_atomic(out / TRAIN_MANIFEST, man)


def _fault(point: str, step: int, rank: int) -> None:
    """Test hook: ``EVALHARNESS_TEST_KILL=point:step[:rank]`` SIGKILLs this process there, so the resume tests
    kill a run exactly between two writes (points: after_optimizer, before_checkpoint, in_checkpoint,
    after_checkpoint). Unset, it costs one dictionary lookup."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    at, _, who = rest.partition(":")
    if name == point and int(at) == step and int(who or 0) == rank:
        os.kill(os.getpid(), signal.SIGKILL)


def _disable_dropout(model: Any) -> Any:
    """Dropout off, as in the DPO reference code and TRL: the reference log-probs (computed without dropout)
    must equal the policy's at step 0, and the loss should not be noisier than the data."""
    import torch
    keys = ("attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout")
    for m in [model, *model.modules()]:
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for obj in (m, getattr(m, "config", None)):  # functional dropout reads a float attribute (Llama attention)
            for key in keys:
                if obj is not None and isinstance(getattr(obj, key, None), float):
                    setattr(obj, key, 0.0)
    return model


def _adamw(params: list[Any], cfg: TrainConfig, fused: bool = True) -> Any:
    """AdamW, fused where torch has the kernel (measured 5x faster per step than the default on this CPU;
    ``fused=False`` for FSDP2's DTensor parameters on CPU)."""
    import torch
    if fused:
        try:
            return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _autocast(cfg: TrainConfig, accel: Any) -> Any:
    import torch
    return torch.autocast(accel.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")


class _null:
    def __enter__(self) -> None: ...
    def __exit__(self, *a: Any) -> None: ...


def _finished(out: Path, ident: dict[str, Any]) -> TrainResult | None:
    path = out / TRAIN_MANIFEST
    if not path.is_file():
        return None
    man = json.loads(path.read_text())
    if man.get("status") != "finished":
        return None
    if man.get("identity") != json.loads(json.dumps(ident)):
        raise EvalHarnessError(f"{out} holds a finished run with a different configuration; "
                               "give another --run-name or --output-dir")
    metrics = read_jsonl(out / "metrics.jsonl")
    return TrainResult(out, [out / c for c in man["checkpoints"]], metrics, skipped=True)


def _seq_logps(model: Any, batch: list[_Example], unpaired: bool, pad_id: int) -> tuple[Any, Any]:
    """Summed response log-probs (2B,) and response lengths (2B,) of one concatenated forward."""
    from ..backends.hf import response_logprobs
    prompts, responses = _sequences(batch, unpaired)
    tok_lp, mask = response_logprobs(model, prompts, responses, pad_id)
    return tok_lp.sum(-1), mask.sum(-1).to(tok_lp.dtype)


def _reference_logps(model: Any, examples: list[_Example], unpaired: bool, pad_id: int, cfg: TrainConfig,
                     accel: Any, log: Callable[[str], None]) -> Any:
    """(N, 2) reference log-probs: chosen/rejected, or completion/KL-mismatch for KTO. One pass, no grad, split
    across processes: rank r scores examples r, r+P, ..., then one all-gather gives every process the table.
    Every rank runs the same number of forwards (its share padded with a repeat), as a sharded model's forward
    is collective."""
    import torch
    P, rank = accel.num_processes, accel.process_index
    mine = list(range(rank, len(examples), P)) or [0]
    log(f"reference log-probs for {len(examples)} examples" +
        (f": {len(mine)} on process {rank} of {P}" if P > 1 else ""))
    mine += mine[-1:] * (math.ceil(len(examples) / P) - len(mine))
    order = sorted(mine, key=lambda i: -len(examples[i].prompt_ids) - len(examples[i].chosen_ids))
    local = torch.zeros(len(order), 2, dtype=torch.float32)
    bs = max(1, cfg.batch_size)
    model.eval()
    with torch.no_grad(), _autocast(cfg, accel):
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            lp, _ = _seq_logps(model, [examples[i] for i in chunk], unpaired, pad_id)
            local[s:s + len(chunk), 0] = lp[:len(chunk)].float().cpu()
            local[s:s + len(chunk), 1] = lp[len(chunk):].float().cpu()
    model.train()
    index = torch.tensor(order)
    if P > 1:
        local = accel.gather(local.to(accel.device)).cpu()
        index = accel.gather(index.to(accel.device)).cpu()
    out = torch.zeros(len(examples), 2, dtype=torch.float32)
    out[index] = local
    return out


def _loss(model: Any, batch: list[_Example], batch_idx: list[int], ref: Any, cfg: TrainConfig, hp: dict[str, Any],
          unpaired: bool, pad_id: int, accel: Any) -> tuple[Any, dict[str, float]]:
    import torch

    from .losses import implicit_rewards, kto_loss, kto_rewards, preference_loss, reward_metrics
    B = len(batch)
    dev = accel.device
    with _autocast(cfg, accel):
        if unpaired:
            from ..backends.hf import response_logprobs
            tok_lp, _ = response_logprobs(model, [e.prompt_ids for e in batch], [e.chosen_ids for e in batch], pad_id)
            logps = tok_lp.sum(-1)
            with torch.no_grad():
                kl_lp, _ = response_logprobs(model, [e.prompt_ids for e in batch], [e.kl_ids for e in batch], pad_id)  # type: ignore[misc]
        else:
            logps, lengths = _seq_logps(model, batch, unpaired, pad_id)
    if unpaired:
        r = ref[batch_idx].to(dev)
        kl = (kl_lp.sum(-1).float() - r[:, 1]).mean().detach()
        kl = accel.reduce(kl, reduction="mean") if accel.num_processes > 1 else kl
        desirable = torch.tensor([bool(e.desirable) for e in batch], device=dev)
        losses = kto_loss(logps=logps.float(), ref_logps=r[:, 0], desirable=desirable, kl=kl, **hp)
        rewards = kto_rewards(logps.detach().float(), r[:, 0], hp["beta"])
        d, u = rewards[desirable], rewards[~desirable]
        metrics = {"loss": float(losses.detach().mean()), "kl": float(kl), "logps/chosen": float(logps.detach().mean()),
                   "rewards/desirable": float(d.mean()) if len(d) else None,
                   "rewards/undesirable": float(u.mean()) if len(u) else None, "n": B}
        return losses.mean(), metrics
    logps = logps.float()
    kw: dict[str, Any] = {"chosen_logps": logps[:B], "rejected_logps": logps[B:],
                          "chosen_lengths": lengths[:B].float(), "rejected_lengths": lengths[B:].float()}
    if ref is not None:
        r = ref[batch_idx].to(dev)
        kw.update(ref_chosen_logps=r[:, 0], ref_rejected_logps=r[:, 1])
    if batch[0].score_chosen is not None:
        kw.update(chosen_scores=torch.tensor([e.score_chosen for e in batch], device=dev),
                  rejected_scores=torch.tensor([e.score_rejected for e in batch], device=dev))
    losses = preference_loss(cfg.algorithm, **kw, **hp)
    with torch.no_grad():
        rc, rr = implicit_rewards(cfg.algorithm, **{k: v.detach() for k, v in kw.items()}, **hp)
    metrics = {"loss": float(losses.detach().mean()), **reward_metrics(rc, rr),
               "logps/chosen": float(logps[:B].detach().mean()), "logps/rejected": float(logps[B:].detach().mean()),
               "n": B}
    return losses.mean(), metrics


def _reduce(parts: list[dict[str, Any]], accel: Any) -> dict[str, Any]:
    """Example-weighted means of micro-batch metrics (a metric a micro-batch lacks is None there),
    averaged over processes."""
    import torch
    keys = [k for k in parts[0] if k != "n"]
    means = []
    for k in keys:
        have = [p for p in parts if p[k] is not None]
        n = sum(p["n"] for p in have)
        means.append(sum(p[k] * p["n"] for p in have) / n if n else float("nan"))
    vals = torch.tensor(means, dtype=torch.float64)
    if accel.num_processes > 1:
        vals = accel.reduce(vals.to(accel.device), reduction="mean").cpu()
    return {k: (None if math.isnan(v) else float(v)) for k, v in zip(keys, vals.tolist())}


def _mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = sum(vals) / len(vals)
    return out


def _log_row(out: Path, row: dict[str, Any], tracker: trackers.Trackers) -> None:
    """One step's metrics: appended to metrics.jsonl (the record) first, then the same row to the trackers."""
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    tracker.log_row(row)
