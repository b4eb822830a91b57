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
model, step, metrics. The loop around the steps (resume, log, checkpoint, finish) is ``loop.py``, shared with PPO.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalharness.core.models import load_fresh
from evalharness.core.prompts import PromptItem, render, render_response
from evalharness.training.algorithms import get_spec
from evalharness.training.data import PreferencePair, UnpairedExample
from evalharness.training.loop import (
    KILL_ENV,
    MANIFEST,
    REFERENCE_LOGPS,
    STATE_DIR,
    TRAIN_MANIFEST,
    Course,
    NullContext,
    Plan,
    TrainConfig,
    TrainResult,
    adamw,
    autocast,
    default_run_name,
    disable_dropout,
    index_stream,
    list_checkpoints,
    load_policy,
    make_plan,
    restore,
    resumed_course,
    run,
    save_resumable,
    save_tensor,
    scheduler,
    total_steps,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "default_run_name",
    "MANIFEST",
    "TRAIN_MANIFEST",
    "STATE_DIR",
    "REFERENCE_LOGPS",
    "KILL_ENV",
]

_checkpoints = list_checkpoints  # the resume tests' name for it


@dataclass
class _Example:
    prompt_ids: list[int]
    chosen_ids: list[int]  # or the completion (KTO)
    rejected_ids: list[int] | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None
    desirable: bool | None = None
    kl_ids: list[int] | None = None  # KTO: a completion from another example, for the KL reference point


def _encode(tok: Any, prompt: PromptItem, text: str, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Prompt ids (rendered as at evaluation) and response ids + EOS, truncated to the length limits."""
    p = render(tok, prompt)[-cfg.max_prompt_length :]
    r = render_response(tok, text)
    return p, r[: max(1, cfg.max_length - len(p))]


def _examples(
    tok: Any, data: list[PreferencePair] | list[UnpairedExample], cfg: TrainConfig, unpaired: bool
) -> list[_Example]:
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
            out[a].kl_ids = out[b].chosen_ids[: max(1, cfg.max_length - len(out[a].prompt_ids))]
    return out


def _sequences(batch: list[_Example], unpaired: bool) -> tuple[list[list[int]], list[list[int]]]:
    """Prompts and responses of one concatenated forward: chosen then rejected (or completion then KL)."""
    prompts = [e.prompt_ids for e in batch] * 2
    second = [e.kl_ids if unpaired else e.rejected_ids for e in batch]
    return prompts, [e.chosen_ids for e in batch] + second  # type: ignore[operator]


def train(cfg: TrainConfig, log: Callable[[str], None] = lambda _: None) -> TrainResult:
    """Train one run. A finished run with the same identity is skipped; an unfinished one resumes from its newest
    complete checkpoint (weights, optimizer, scheduler, RNG, data position), or starts again if it has none."""
    if get_spec(cfg.algorithm).online:  # PPO samples its own responses from prompts: ppo.py, on the same loop
        from evalharness.training.ppo import train_ppo

        return train_ppo(cfg, log)
    plan = make_plan(cfg)
    return run(plan, cfg.batch_size * cfg.grad_accum, lambda *a: _setup(plan, *a, log=log), log)


def _setup(
    plan: Plan,
    accel: Any,
    resume: Path | None,
    state: dict[str, Any] | None,
    global_batch: int,
    *,
    log: Callable[[str], None],
) -> tuple[_Session, Course]:
    """Model, sharding, reference log-probs and resumed state: the session the loop steps, and its course."""
    import torch

    cfg, P = plan.cfg, accel.num_processes
    torch.manual_seed(cfg.seed)
    model, tok = load_policy(plan, resume)
    examples = _examples(tok, plan.data, cfg, plan.spec.unpaired)
    total, steps_per_epoch = total_steps(cfg, len(examples), global_batch)
    model, opt, sched, params, sharded = _prepare(model, cfg, accel, total, log)
    session = _Session(plan, accel, model, tok, opt, sched, params, examples, sharded)
    session.ref_logps = _reference_table(session, resume, log)
    restored = restore(resume, accel.unwrap_model(model), opt, sched, accel, sharded) if resume is not None else None
    course = Course(total, global_batch, steps_per_epoch, index_stream(len(examples), total, global_batch, cfg.seed))
    course = resumed_course(plan, course, resume, state, restored, log)
    log(
        f"{plan.run_name}: {cfg.algorithm} on {len(examples)} examples, {total} steps of {global_batch}"
        f" ({'LoRA' if cfg.lora else 'full'}, {cfg.dtype}, {P} process{'es' if P > 1 else ''}, {session.strategy})"
        f" -> {plan.out}"
    )
    return session, course


@dataclass
class _Session:
    """One process's live training state, which every step and every checkpoint uses."""

    plan: Plan
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
        return (
            "deepspeed"
            if self.deepspeed
            else "fsdp2"
            if self.sharded
            else "ddp"
            if self.accel.num_processes > 1
            else "single"
        )

    def step(self, step: int, idx: list[int]) -> dict[str, Any]:
        """One optimizer step on a global batch of example indices (this process takes its slice of each
        micro-batch); the metrics reduced over micro-batches and processes, with the lr and grad norm."""
        cfg, accel, P = self.plan.cfg, self.accel, self.accel.num_processes
        parts: list[dict[str, Any]] = []
        for micro in range(cfg.grad_accum):
            lo = (micro * P + accel.process_index) * cfg.batch_size
            batch_idx = idx[lo : lo + cfg.batch_size]
            sync = micro == cfg.grad_accum - 1
            # FSDP reduce-scatters every micro-batch (correct, and its shards are small); DDP defers to the last
            ctx = accel.no_sync(self.model) if not sync and P > 1 and not self.sharded else NullContext()
            with ctx:
                loss, metrics = _loss(
                    self.model,
                    [self.examples[i] for i in batch_idx],
                    batch_idx,
                    self.ref_logps,
                    cfg,
                    self.plan.hparams,
                    self.plan.spec.unpaired,
                    self.tok.pad_token_id,
                    accel,
                )
                accel.backward(loss if self.deepspeed else loss / cfg.grad_accum)  # DeepSpeed divides by its count
            parts.append(metrics)
        grad_norm = _full(accel.clip_grad_norm_(self.params, cfg.max_grad_norm)) if cfg.max_grad_norm > 0 else None
        lr = self.sched.get_last_lr()[0]  # the rate this step used
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return {**_reduce(parts, accel), "lr": lr, "grad_norm": float(grad_norm) if grad_norm is not None else None}

    def describe(self, row: dict[str, Any]) -> str:
        """Loss, and the reward margin and accuracy (KTO: the KL reference point)."""
        extra = (
            f" margin {row['rewards/margins']:.3f} acc {row['rewards/accuracies']:.2f}"
            if row.get("rewards/margins") is not None
            else f" kl {row['kl']:.3f}"
        )
        return f"loss {row['loss']:.4f}{extra}"

    def parallel(self) -> dict[str, Any]:
        """Processes and strategy, for the checkpoint manifest."""
        return {"processes": self.accel.num_processes, "strategy": self.strategy}

    def checkpoint_extra(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Nothing of its own beyond the loop's fields."""
        return {}, {}

    def finish_extra(self) -> dict[str, Any]:
        """Nothing of its own beyond the loop's fields."""
        return {}

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
        save_resumable(
            accel,
            unwrapped,
            self.tok,
            self.opt,
            self.sched,
            ck,
            manifest,
            state,
            save_optimizer=self.plan.cfg.save_optimizer,
            full=full,
        )


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
    ref_model = (
        accel.unwrap_model(run.model)
        if own
        else disable_dropout(load_fresh(plan.reference, dtype="float32")[0]).to(accel.device)
    )
    table = _reference_logps(ref_model, run.examples, plan.spec.unpaired, run.tok.pad_token_id, plan.cfg, accel, log)
    if accel.is_main_process:
        save_tensor(table, plan.out / REFERENCE_LOGPS)
    return table


def _prepare(
    model: Any, cfg: TrainConfig, accel: Any, total: int, log: Callable[[str], None]
) -> tuple[Any, Any, Any, list[Any], bool]:
    """(model, optimizer, scheduler, trainable params, sharded?) ready to train: FSDP2 of our own when ``cfg.fsdp``
    under torchrun; else accelerate's wrapping (DDP, or its FSDP2 / DeepSpeed plugin under ``accelerate launch``).
    The scheduler drives the plain torch optimizer, whose param groups every wrapper shares."""
    from accelerate.utils import DistributedType

    managed = accel.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if cfg.fsdp and not managed and accel.num_processes == 1:
        log("fsdp: one process, nothing to shard; training unsharded")
    if cfg.fsdp and not managed and accel.num_processes > 1:
        model = _fully_shard(model.to(accel.device), accel)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = adamw(params, cfg, fused=False)
        return model, opt, scheduler(opt, cfg, total), params, True
    if accel.distributed_type == DistributedType.DEEPSPEED:
        # No dataloader goes through accelerate, so DeepSpeed learns the batch geometry and clipping from us.
        ds = accel.state.deepspeed_plugin.deepspeed_config
        ds.update(
            train_micro_batch_size_per_gpu=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            gradient_clipping=cfg.max_grad_norm,
            train_batch_size=cfg.batch_size * cfg.grad_accum * accel.num_processes,
        )
    model.to(accel.device)
    opt = adamw([p for p in model.parameters() if p.requires_grad], cfg)
    sched = scheduler(opt, cfg, total)
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


def _seq_logps(model: Any, batch: list[_Example], unpaired: bool, pad_id: int) -> tuple[Any, Any]:
    """Summed response log-probs (2B,) and response lengths (2B,) of one concatenated forward."""
    from evalharness.backends.hf import response_logprobs

    prompts, responses = _sequences(batch, unpaired)
    tok_lp, mask = response_logprobs(model, prompts, responses, pad_id)
    return tok_lp.sum(-1), mask.sum(-1).to(tok_lp.dtype)


def _reference_logps(
    model: Any,
    examples: list[_Example],
    unpaired: bool,
    pad_id: int,
    cfg: TrainConfig,
    accel: Any,
    log: Callable[[str], None],
) -> Any:
    """(N, 2) reference log-probs: chosen/rejected, or completion/KL-mismatch for KTO. One pass, no grad, split
    across processes: rank r scores examples r, r+P, ..., then one all-gather gives every process the table.
    Every rank runs the same number of forwards (its share padded with a repeat), as a sharded model's forward
    is collective."""
    import torch

    P, rank = accel.num_processes, accel.process_index
    mine = list(range(rank, len(examples), P)) or [0]
    log(
        f"reference log-probs for {len(examples)} examples"
        + (f": {len(mine)} on process {rank} of {P}" if P > 1 else "")
    )
    mine += mine[-1:] * (math.ceil(len(examples) / P) - len(mine))
    order = sorted(mine, key=lambda i: -len(examples[i].prompt_ids) - len(examples[i].chosen_ids))
    local = torch.zeros(len(order), 2, dtype=torch.float32)
    bs = max(1, cfg.batch_size)
    model.eval()
    with torch.no_grad(), autocast(cfg, accel):
        for s in range(0, len(order), bs):
            chunk = order[s : s + bs]
            lp, _ = _seq_logps(model, [examples[i] for i in chunk], unpaired, pad_id)
            local[s : s + len(chunk), 0] = lp[: len(chunk)].float().cpu()
            local[s : s + len(chunk), 1] = lp[len(chunk) :].float().cpu()
    model.train()
    index = torch.tensor(order)
    if P > 1:
        local = accel.gather(local.to(accel.device)).cpu()
        index = accel.gather(index.to(accel.device)).cpu()
    out = torch.zeros(len(examples), 2, dtype=torch.float32)
    out[index] = local
    return out


def _loss(
    model: Any,
    batch: list[_Example],
    batch_idx: list[int],
    ref: Any,
    cfg: TrainConfig,
    hp: dict[str, Any],
    unpaired: bool,
    pad_id: int,
    accel: Any,
) -> tuple[Any, dict[str, float | None]]:
    """A micro-batch's mean loss and its metrics: the forward passes under autocast, the loss outside it."""
    import torch

    with autocast(cfg, accel):
        if unpaired:
            from evalharness.backends.hf import response_logprobs

            tok_lp, _ = response_logprobs(model, [e.prompt_ids for e in batch], [e.chosen_ids for e in batch], pad_id)
            logps = tok_lp.sum(-1)
            with torch.no_grad():
                kl_lp, _ = response_logprobs(model, [e.prompt_ids for e in batch], [e.kl_ids for e in batch], pad_id)  # type: ignore[misc]
        else:
            logps, lengths = _seq_logps(model, batch, unpaired, pad_id)
    if unpaired:
        return _kto_loss(batch, batch_idx, ref, hp, accel, logps, kl_lp)
    return _pair_loss(batch, batch_idx, ref, cfg, hp, accel, logps, lengths)


def _kto_loss(
    batch: list[_Example],
    batch_idx: list[int],
    ref: Any,
    hp: dict[str, Any],
    accel: Any,
    logps: Any,
    kl_lp: Any,
) -> tuple[Any, dict[str, float | None]]:
    """KTO's mean loss and metrics from the completions' and the KL-mismatch pairs' token log-probs."""
    import torch

    from evalharness.training.losses import kto_loss, kto_rewards

    B = len(batch)
    dev = accel.device
    r = ref[batch_idx].to(dev)
    kl = (kl_lp.sum(-1).float() - r[:, 1]).mean().detach()
    kl = accel.reduce(kl, reduction="mean") if accel.num_processes > 1 else kl
    desirable = torch.tensor([bool(e.desirable) for e in batch], device=dev)
    losses = kto_loss(logps=logps.float(), ref_logps=r[:, 0], desirable=desirable, kl=kl, **hp)
    rewards = kto_rewards(logps.detach().float(), r[:, 0], hp["beta"])
    d, u = rewards[desirable], rewards[~desirable]
    metrics = {
        "loss": float(losses.detach().mean()),
        "kl": float(kl),
        "logps/chosen": float(logps.detach().mean()),
        "rewards/desirable": float(d.mean()) if len(d) else None,
        "rewards/undesirable": float(u.mean()) if len(u) else None,
        "n": B,
    }
    return losses.mean(), metrics


def _pair_loss(
    batch: list[_Example],
    batch_idx: list[int],
    ref: Any,
    cfg: TrainConfig,
    hp: dict[str, Any],
    accel: Any,
    logps: Any,
    lengths: Any,
) -> tuple[Any, dict[str, float | None]]:
    """A pairwise preference loss's mean and metrics from the sequence log-probs (chosen first, then rejected)."""
    import torch

    from evalharness.training.losses import implicit_rewards, preference_loss, reward_metrics

    B = len(batch)
    dev = accel.device
    logps = logps.float()
    kw: dict[str, Any] = {
        "chosen_logps": logps[:B],
        "rejected_logps": logps[B:],
        "chosen_lengths": lengths[:B].float(),
        "rejected_lengths": lengths[B:].float(),
    }
    if ref is not None:
        r = ref[batch_idx].to(dev)
        kw.update(ref_chosen_logps=r[:, 0], ref_rejected_logps=r[:, 1])
    if batch[0].score_chosen is not None:
        kw.update(
            chosen_scores=torch.tensor([e.score_chosen for e in batch], device=dev),
            rejected_scores=torch.tensor([e.score_rejected for e in batch], device=dev),
        )
    losses = preference_loss(cfg.algorithm, **kw, **hp)
    with torch.no_grad():
        rc, rr = implicit_rewards(cfg.algorithm, **{k: v.detach() for k, v in kw.items()}, **hp)
    metrics: dict[str, float | None] = {
        "loss": float(losses.detach().mean()),
        **reward_metrics(rc, rr),
        "logps/chosen": float(logps[:B].detach().mean()),
        "logps/rejected": float(logps[B:].detach().mean()),
        "n": B,
    }
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
