"""One trainer for every offline preference algorithm: full fine-tuning or LoRA, on CPU or GPUs.

- Reference log-probs are computed once, before training, by the base model itself (or the given
  reference), so no reference model is in memory while training.
- Only response positions get logits (left padding puts every response at the right edge), so the
  LM head runs on B*R positions instead of B*L: the same scoring function as evaluation.
- Chosen and rejected run in one forward pass (concatenated batch).
- Data order is a seeded permutation per epoch; LoRA initialisation is seeded too.
- ``accelerate launch`` runs it data-parallel on several GPUs: each process takes its slice of every
  step's examples; gradients are all-reduced by DDP; only the main process writes.

Each checkpoint is a loadable model folder (``save_pretrained``; an adapter folder for LoRA) with an
``evalharness_manifest.json``: algorithm, every hyperparameter, data hash, base model, step, metrics.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import provenance
from ..errors import EvalHarnessError, InputError
from ..models import ModelRef, resolve
from ..paths import atomic_dir, results_root
from ..prompts import PromptItem, render
from ..store import read_jsonl, write_json_atomic
from .algorithms import get_spec, make_config
from .data import PreferencePair, UnpairedExample, data_hash, load_preferences, load_unpaired

MANIFEST = "evalharness_manifest.json"
TRAIN_MANIFEST = "train_manifest.json"


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
    # Bookkeeping, not identity:
    run_name: str | None = None
    output_dir: str | None = None
    log_every: int = 1

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("run_name", "output_dir", "log_every"):
            d.pop(k)
        return d


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


def _encode(tok: Any, prompt: PromptItem, text: str, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Prompt ids (rendered as at evaluation) and response ids + EOS, truncated to the length limits."""
    p = render(tok, prompt)[-cfg.max_prompt_length:]
    r = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
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


def _save_checkpoint(model: Any, tok: Any, path: Path, manifest: dict[str, Any]) -> None:
    """A loadable model folder, written to a temporary sibling and renamed: never half-written."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)


def _base_spec(ref: ModelRef) -> str:
    """A spec that resolves from anywhere: the alias or hub id, or the absolute folder."""
    return ref.spec if ref.kind in ("bundled", "hub") else str(Path(ref.path).resolve())


def train(cfg: TrainConfig, log: Callable[[str], None] = lambda _: None) -> TrainResult:
    """Train one run; a finished run with the same identity is skipped, an unfinished one restarts."""
    import torch

    _check(cfg)
    spec = get_spec(cfg.algorithm)
    if spec.online:  # PPO samples its own responses from prompts: its loop is in ppo.py, on this file's helpers
        from .ppo import train_ppo
        return train_ppo(cfg, log)
    algo_cfg = make_config(cfg.algorithm, **cfg.hparams)
    hparams = asdict(algo_cfg)
    data = load_unpaired(cfg.data) if spec.unpaired else load_preferences(cfg.data)
    if spec.needs_scores:
        missing = [e.id for e in data if isinstance(e, PreferencePair) and e.score_chosen is None]
        if missing:
            raise InputError(f"{cfg.algorithm} needs score_chosen and score_rejected on every pair; "
                             f"{len(missing)} lack them (first: id '{missing[0]}')", path=cfg.data, field="score_chosen")
    base = resolve(cfg.base)
    reference = resolve(cfg.reference) if cfg.reference else base
    run_name = cfg.run_name or default_run_name(cfg)
    out = Path(cfg.output_dir) if cfg.output_dir else results_root() / "train" / run_name
    ident = {**cfg.identity(), "hparams": hparams, "data_hash": data_hash(data), "base_revision": base.revision,
             "reference_revision": reference.revision if spec.needs_reference else None}
    done = _finished(out, ident)
    if done is not None:
        log(f"{run_name}: already trained ({out})")
        return done

    from accelerate import Accelerator
    # Mixed precision is our own autocast (not Accelerator(mixed_precision=...)): accelerate's state is a
    # process-wide singleton, and one process may train runs of different precisions one after another.
    accel = Accelerator(cpu=not torch.cuda.is_available())
    main = accel.is_main_process
    if main:
        if out.exists():
            shutil.rmtree(out)  # an unfinished run restarts from step 0
        out.mkdir(parents=True)
        write_json_atomic(out / TRAIN_MANIFEST, {
            "run_name": run_name, "status": "running", "identity": ident, "algorithm": cfg.algorithm,
            "hparams": hparams, "paper": spec.paper, "base_model": _base_spec(base), "base": base.to_dict(),
            "reference": reference.to_dict() if spec.needs_reference else None,
            "data": {"source": cfg.data, "hash": ident["data_hash"], "n_examples": len(data)},
            "started_at": provenance.now(), **provenance.environment(), "checkpoints": []})
    accel.wait_for_everyone()
    try:
        torch.manual_seed(cfg.seed)

        from ..models import load_fresh
        model, tok = load_fresh(base, dtype="float32")
        _disable_dropout(model)
        examples = _examples(tok, data, cfg, spec.unpaired)
        device = accel.device
        model.to(device)

        ref_logps = None
        if spec.needs_reference:
            ref_model = model if reference is base else _disable_dropout(load_fresh(reference, dtype="float32")[0]).to(device)
            ref_logps = _reference_logps(ref_model, examples, spec.unpaired, tok.pad_token_id, cfg, accel, log)
            del ref_model

        if cfg.lora:
            try:
                from peft import LoraConfig, get_peft_model
            except ImportError as e:
                from ..errors import MissingExtraError
                raise MissingExtraError("peft", "train") from e
            model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                                     target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM"))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            if cfg.lora:
                model.enable_input_require_grads()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = _adamw(params, cfg)
        P = accel.num_processes
        global_batch = cfg.batch_size * cfg.grad_accum * P
        steps_per_epoch = math.ceil(len(examples) / global_batch)
        total = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, total))
        model, opt = accel.prepare(model, opt)

        # The index stream: one seeded permutation per epoch, concatenated, cut into equal global batches.
        g = torch.Generator().manual_seed(cfg.seed)
        stream: list[int] = []
        while len(stream) < total * global_batch:
            stream += torch.randperm(len(examples), generator=g).tolist()

        log(f"{run_name}: {cfg.algorithm} on {len(examples)} examples, {total} steps of {global_batch}"
            f" ({'LoRA' if cfg.lora else 'full'}, {cfg.dtype}, {P} process{'es' if P > 1 else ''}) -> {out}")
        checkpoints: list[Path] = []
        history: list[dict[str, Any]] = []
        since_save: list[dict[str, Any]] = []
        t_start = time.perf_counter()
        for step in range(total):
            t0 = time.perf_counter()
            idx = stream[step * global_batch:(step + 1) * global_batch]
            parts: list[dict[str, Any]] = []
            for micro in range(cfg.grad_accum):
                lo = (micro * P + accel.process_index) * cfg.batch_size
                batch_idx = idx[lo:lo + cfg.batch_size]
                sync = micro == cfg.grad_accum - 1
                ctx = accel.no_sync(model) if not sync and P > 1 else _null()
                with ctx:
                    loss, metrics = _loss(model, [examples[i] for i in batch_idx], batch_idx, ref_logps, cfg,
                                          hparams, spec.unpaired, tok.pad_token_id, accel)
                    accel.backward(loss / cfg.grad_accum)
                parts.append(metrics)
            grad_norm = accel.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
            lr = sched.get_last_lr()[0]  # the rate this step used
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            row = _reduce(parts, accel)
            dt = time.perf_counter() - t0
            row.update(step=step + 1, epoch=(step + 1) / steps_per_epoch, lr=lr,
                       grad_norm=float(grad_norm) if grad_norm is not None else None, step_time_s=dt,
                       samples_per_s=global_batch / dt, elapsed_s=time.perf_counter() - t_start)
            history.append(row)
            since_save.append(row)
            if main and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
                with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                extra = (f" margin {row['rewards/margins']:.3f} acc {row['rewards/accuracies']:.2f}"
                         if row.get("rewards/margins") is not None else f" kl {row['kl']:.3f}")
                log(f"{run_name} step {step + 1}/{total}: loss {row['loss']:.4f}{extra} ({dt:.1f}s)")
            if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == total:
                accel.wait_for_everyone()
                if main:
                    ck = out / f"checkpoint-{step + 1}"
                    _save_checkpoint(accel.unwrap_model(model), tok, ck, {
                        "kind": "checkpoint", "run_name": run_name, "algorithm": cfg.algorithm, "hparams": hparams,
                        "paper": spec.paper, "step": step + 1, "epoch": row["epoch"], "total_steps": total,
                        "samples_seen": (step + 1) * global_batch, "base_model": _base_spec(base),
                        "base_revision": base.revision, "reference_model": _base_spec(reference) if spec.needs_reference else None,
                        "lora": cfg.lora, "data": {"source": cfg.data, "hash": ident["data_hash"], "n_examples": len(data)},
                        "train_config": cfg.identity(), "metrics": row, "metrics_since_last_checkpoint": _mean_rows(since_save),
                        "created_at": provenance.now(), **provenance.environment()})
                    checkpoints.append(ck)
                    man = json.loads((out / TRAIN_MANIFEST).read_text())
                    man["checkpoints"] = [c.name for c in checkpoints]
                    write_json_atomic(out / TRAIN_MANIFEST, man)
                since_save = []
        if main:
            man = json.loads((out / TRAIN_MANIFEST).read_text())
            man.update(status="finished", finished_at=provenance.now(), train_time_s=time.perf_counter() - t_start,
                       final_metrics=history[-1])
            write_json_atomic(out / TRAIN_MANIFEST, man)
        accel.wait_for_everyone()
        return TrainResult(out, checkpoints, history)
    except BaseException as e:  # the manifest says what happened; nothing is left marked "running"
        if main and (out / TRAIN_MANIFEST).is_file():
            man = json.loads((out / TRAIN_MANIFEST).read_text())
            man.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                       error=f"{type(e).__name__}: {e}", finished_at=provenance.now())
            write_json_atomic(out / TRAIN_MANIFEST, man)
        raise


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


def _adamw(params: list[Any], cfg: TrainConfig) -> Any:
    """AdamW, fused where torch has the kernel (measured 5x faster per step than the default on this CPU)."""
    import torch
    try:
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
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
    """(N, 2) reference log-probs: chosen/rejected, or completion/KL-mismatch for KTO. One pass, no grad."""
    import torch
    log(f"reference log-probs for {len(examples)} examples")
    model.eval()
    out = torch.zeros(len(examples), 2, dtype=torch.float32)
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].prompt_ids) - len(examples[i].chosen_ids))
    bs = max(1, cfg.batch_size)
    with torch.no_grad(), _autocast(cfg, accel):
        for s in range(0, len(order), bs):
            chunk = order[s:s + bs]
            lp, _ = _seq_logps(model, [examples[i] for i in chunk], unpaired, pad_id)
            out[chunk, 0] = lp[:len(chunk)].float().cpu()
            out[chunk, 1] = lp[len(chunk):].float().cpu()
    model.train()
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
