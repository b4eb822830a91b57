"""The one training loop that every algorithm drives: plan, resume point, step, log, fault points, checkpoint, finish.

An algorithm supplies a set-up function (models, optimizer, resumed state) that returns a ``Steps`` object and the
run's ``Course`` (steps, global batch, the seeded index stream, where a resumed run starts); ``run`` does the rest:

- a finished run with the same identity is skipped; an unfinished one resumes from its newest complete checkpoint
  (the same on every process), and the store puts its folder back to that checkpoint;
- each step: ``Steps.step``, the ``after_optimizer`` fault point, the row logged to ``metrics.jsonl`` and the
  trackers, the ``before_checkpoint`` fault point, and every ``save_every`` steps a checkpoint (``save_resumable``:
  weights, optimizer, scheduler, per-process RNG, the algorithm's own state; ``state.json`` written last);
- the store's run lifecycle records how the run ended (finished, failed, interrupted) and indexes it.

The offline trainer (``trainer.py``) and PPO (``ppo.py``) both run here; neither imports the other's internals.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

from evalharness import trackers
from evalharness.core import provenance
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.models import ModelRef, load_fresh, resolve, resolve_dtype
from evalharness.core.paths import atomic_dir, results_root, write_atomic
from evalharness.core.prompts import file_hash, load_prompts
from evalharness.store import (
    TRAIN_MANIFEST,
    TRAIN_METRICS,
    append_train_metrics,
    fail_train_run,
    finish_train_run,
    read_jsonl,
    read_train_manifest,
    record_train_checkpoint,
    resume_train_run,
    start_train_run,
    write_json_atomic,
)
from evalharness.training.algorithms import get_spec, make_config
from evalharness.training.config import TrainConfig, TrainResult, default_run_name
from evalharness.training.data import PreferencePair, UnpairedExample, data_hash, load_preferences, load_unpaired

MANIFEST = "evalharness_manifest.json"
STATE_DIR = "training_state"  # inside a checkpoint: what resuming needs beyond the weights
REFERENCE_LOGPS = "reference_logps.pt"  # (N, 2), computed once per run
KILL_ENV = "EVALHARNESS_TEST_KILL"
# The files only a resume reads, kept by the newest checkpoint alone: the optimizer state, PPO's critic. state.json
# says which a checkpoint still has (its key is the file's stem).
RESUME_ONLY = ("optimizer.pt", "critic.safetensors")

__all__ = [
    "TRAIN_MANIFEST",
    "TRAIN_METRICS",
    "MANIFEST",
    "STATE_DIR",
    "REFERENCE_LOGPS",
    "KILL_ENV",
    "TrainConfig",
    "TrainResult",
    "Plan",
    "make_plan",
    "Steps",
    "Course",
    "run",
    "drive",
]


def check_config(cfg: TrainConfig) -> None:
    """Reject a config that cannot train, before anything is loaded."""
    if cfg.schedule not in ("cosine", "linear", "constant"):
        raise EvalHarnessError(f"schedule must be cosine, linear or constant, got '{cfg.schedule}'")
    if cfg.dtype not in ("auto", "float32", "bfloat16"):
        raise EvalHarnessError(f"training dtype must be auto, float32 or bfloat16 (mixed precision), got '{cfg.dtype}'")
    for name in ("batch_size", "grad_accum", "max_length", "max_prompt_length"):
        if getattr(cfg, name) < 1:
            raise EvalHarnessError(f"{name} must be >= 1")
    if cfg.learning_rate <= 0 or not 0 <= cfg.warmup_ratio < 1 or (cfg.max_steps is None and cfg.epochs <= 0):
        raise EvalHarnessError("need learning_rate > 0, 0 <= warmup_ratio < 1, and epochs > 0 or max_steps")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise EvalHarnessError("max_steps must be >= 1")
    trackers.check(cfg.report_to)  # an unknown tracker or a missing package fails before anything runs


def base_spec(ref: ModelRef) -> str:
    """A spec that resolves from anywhere: the alias or hub id, or the absolute folder."""
    return ref.spec if ref.kind in ("bundled", "hub") else str(Path(ref.path).resolve())


@dataclass
class Plan:
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
        """The train manifest's description of the run (status and checkpoints are added by the store)."""
        return {
            "run_name": self.run_name,
            "identity": self.ident,
            "algorithm": self.cfg.algorithm,
            "hparams": self.hparams,
            "paper": self.spec.paper,
            **self.extra,
            "base_model": base_spec(self.base),
            "base": self.base.to_dict(),
            "reference": self.reference.to_dict() if self.spec.needs_reference else None,
            "data": self.data_info(),
            "started_at": provenance.now(),
            **provenance.environment(),
        }

    def data_info(self) -> dict[str, Any]:
        """The data's source, hash and size (and kind, for prompts)."""
        info = {"source": self.cfg.data, "hash": self.ident["data_hash"], "n_examples": len(self.data)}
        return {**info, "kind": "prompts"} if self.spec.online else info


def make_plan(cfg: TrainConfig, extra: dict[str, Any] | None = None) -> Plan:
    """The run's plan; ``extra`` (PPO's reward judge) joins its identity and manifests."""
    check_config(cfg)
    cfg = replace(cfg, dtype=resolve_dtype(cfg.dtype))  # identity and manifests carry the dtype actually used
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
            raise InputError(
                f"{cfg.algorithm} needs score_chosen and score_rejected on every pair; "
                f"{len(missing)} lack them (first: id '{missing[0]}')",
                path=cfg.data,
                field="score_chosen",
            )
    base = resolve(cfg.base)
    reference = resolve(cfg.reference) if cfg.reference else base
    run_name = cfg.run_name or default_run_name(cfg)
    out = Path(cfg.output_dir) if cfg.output_dir else results_root() / "train" / run_name
    ident = {
        **cfg.identity(),
        "hparams": hparams,
        "data_hash": dhash,
        "base_revision": base.revision,
        "reference_revision": reference.revision if spec.needs_reference else None,
        **(extra or {}),
    }
    return Plan(cfg, spec, hparams, data, base, reference, run_name, out, ident, dict(extra or {}))


# -- the loop ---------------------------------------------------------------------------------------------------


class Steps(Protocol):
    """What an algorithm plugs into the loop."""

    def step(self, step: int, idx: list[int]) -> dict[str, Any]:
        """One optimizer step (PPO: one rollout batch) on the step's global batch of data indices: its metrics."""

    def describe(self, row: dict[str, Any]) -> str:
        """The log line's numbers for one step's row."""

    def parallel(self) -> dict[str, Any]:
        """How the run is spread over processes, for the checkpoint manifest."""

    def checkpoint_extra(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """An algorithm's own fields for the checkpoint manifest and for state.json."""

    def save(self, ck: Path, manifest: dict[str, Any], state: dict[str, Any]) -> None:
        """Write checkpoint ``ck`` (every process calls it; ``save_resumable`` does the writing)."""

    def finish_extra(self) -> dict[str, Any]:
        """An algorithm's own fields for the finished train manifest."""


@dataclass
class Course:
    """The run's steps: how many, of how many examples, in which order, and where a resumed run starts."""

    total: int
    global_batch: int
    steps_per_epoch: int
    stream: list[int]  # data indices, global_batch per step
    rate_key: str = "samples_per_s"  # the throughput column of a row (PPO: eps, episodes per second)
    start: int = 0
    elapsed_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def index_stream(n: int, total: int, global_batch: int, seed: int) -> list[int]:
    """One seeded permutation of ``range(n)`` per epoch, concatenated, long enough for ``total`` steps. It depends
    only on the seed, the data and the global batch, so a resumed run continues it at step * global_batch."""
    import torch

    g = torch.Generator().manual_seed(seed)
    stream: list[int] = []
    while len(stream) < total * global_batch:
        stream += torch.randperm(n, generator=g).tolist()
    return stream


def total_steps(cfg: TrainConfig, n: int, global_batch: int) -> tuple[int, int]:
    """(steps in all, steps per epoch) for ``n`` examples; ``max_steps`` overrides the epochs."""
    steps_per_epoch = math.ceil(n / global_batch)
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch)), steps_per_epoch


# (accel, resume checkpoint, its state.json, global batch) -> the algorithm's steps and course
Setup = Callable[[Any, "Path | None", "dict[str, Any] | None", int], "tuple[Steps, Course]"]


def run(plan: Plan, local_batch: int, setup: Setup, log: Callable[[str], None]) -> TrainResult:
    """Train ``plan``: skip a finished run; choose the resume point (the same on every process) and have the store
    put the run folder back to it, or start a fresh one; set up; drive the loop; record how it ended.
    ``local_batch`` is the examples (PPO: episodes) per step per process."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    out = plan.out
    done = finished(out, plan.ident)
    if done is not None:
        log(f"{plan.run_name}: already trained ({out})")
        return done
    # Mixed precision is our own autocast (not Accelerator(mixed_precision=...)): accelerate's state is a
    # process-wide singleton, and one process may train runs of different precisions one after another.
    accel = Accelerator(cpu=not torch.cuda.is_available())
    main = accel.is_main_process
    global_batch = local_batch * accel.num_processes
    # Every process must resume from the same checkpoint: rank 0 decides, before anything on disk changes.
    resume = resume_point(out, plan.ident, plan.reference_table)
    if accel.num_processes > 1:
        resume = broadcast_object_list([resume])[0]
    state = read_state(resume, global_batch) if resume is not None else None
    if main:
        open_run_dir(plan, resume, state, log)
    accel.wait_for_everyone()
    try:
        with trackers.start_training(plan.cfg.report_to if main else [], out, results_root(), log) as tracker:
            steps, course = setup(accel, resume, state, global_batch)
            return drive(plan, accel, steps, course, tracker, log)
    except BaseException as e:  # the manifest says what happened; nothing is left marked "running"
        if main:
            fail_train_run(out, e)
        raise


def drive(
    plan: Plan, accel: Any, steps: Steps, course: Course, tracker: trackers.Trackers, log: Callable[[str], None]
) -> TrainResult:
    """Step from ``course.start`` to the end: log, checkpoint every ``save_every`` steps and at the end, finish."""
    cfg, out, rank = plan.cfg, plan.out, accel.process_index
    G, total = course.global_batch, course.total
    history = course.history
    checkpoints = list_checkpoints(out) if course.start else []
    since_save: list[dict[str, Any]] = []
    t_start = time.perf_counter() - course.elapsed_s
    for step in range(course.start + 1, total + 1):
        t0 = time.perf_counter()
        row = steps.step(step, course.stream[(step - 1) * G : step * G])
        fault("after_optimizer", step, rank)
        dt = time.perf_counter() - t0
        row.update(step=step, epoch=step / course.steps_per_epoch, step_time_s=dt, **{course.rate_key: G / dt})
        row["elapsed_s"] = time.perf_counter() - t_start
        history.append(row)
        since_save.append(row)
        if accel.is_main_process and (step % cfg.log_every == 0 or step == total):
            append_train_metrics(out, row)  # the record first, then the same row to the trackers
            tracker.log_row(row)
            log(f"{plan.run_name} step {step}/{total}: {steps.describe(row)} ({dt:.1f}s)")
        fault("before_checkpoint", step, rank)
        if (cfg.save_every and step % cfg.save_every == 0) or step == total:
            ck = out / f"checkpoint-{step}"
            man_extra, state_extra = steps.checkpoint_extra()
            steps.save(
                ck,
                {
                    **checkpoint_manifest(plan, step, total, G, row, steps.parallel()),
                    **man_extra,
                    "metrics_since_last_checkpoint": mean_rows(since_save),
                },
                {
                    "step": step,
                    "samples_seen": step * G,
                    "global_batch": G,
                    "num_processes": accel.num_processes,
                    "elapsed_s": row["elapsed_s"],
                    "total_steps": total,
                    **state_extra,
                },
            )
            if accel.is_main_process:
                checkpoints.append(ck)
                fault("after_checkpoint", step, 0)
                record_train_checkpoint(out, [c.name for c in checkpoints])
            since_save = []
    if accel.is_main_process:
        finish_train_run(
            out, train_time_s=time.perf_counter() - t_start, final_metrics=history[-1], **steps.finish_extra()
        )
    accel.wait_for_everyone()
    return TrainResult(out, checkpoints, history)


def resumed_course(
    plan: Plan,
    course: Course,
    resume: Path | None,
    state: dict[str, Any] | None,
    restored: tuple[bool, dict[str, Any]] | None,
    log: Callable[[str], None],
    note: str = "",
) -> Course:
    """``course`` starting after the resumed checkpoint's step, with the rows logged up to it; ``restored`` is
    what ``restore`` gave (whether the optimizer state was there)."""
    if resume is None:
        return course
    assert state is not None and restored is not None
    course.start, course.elapsed_s = state["step"], state["elapsed_s"]
    course.history = [r for r in read_jsonl(plan.out / TRAIN_METRICS) if r["step"] <= course.start]
    log(
        f"{plan.run_name}: resuming after step {course.start} from {resume.name}"
        + ("" if restored[0] else " (no optimizer state saved: Adam moments start again from zero)")
        + note
    )
    return course


def checkpoint_manifest(
    plan: Plan, step: int, total: int, global_batch: int, row: dict[str, Any], parallel: dict[str, Any]
) -> dict[str, Any]:
    """What a checkpoint folder says about itself (``evalharness_manifest.json``)."""
    cfg = plan.cfg
    return {
        "kind": "checkpoint",
        "run_name": plan.run_name,
        "algorithm": cfg.algorithm,
        "hparams": plan.hparams,
        "paper": plan.spec.paper,
        **plan.extra,
        "step": step,
        "epoch": row["epoch"],
        "total_steps": total,
        "samples_seen": step * global_batch,
        "base_model": base_spec(plan.base),
        "base_revision": plan.base.revision,
        "reference_model": base_spec(plan.reference) if plan.spec.needs_reference else None,
        "lora": cfg.lora,
        "parallel": parallel,
        "data": plan.data_info(),
        "train_config": cfg.identity(),
        "metrics": row,
        "created_at": provenance.now(),
        **provenance.environment(),
    }


def mean_rows(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The mean of every numeric column over ``rows`` (a column's None entries left out)."""
    keys = [k for k in rows[0] if isinstance(rows[0][k], (int, float))] if rows else []
    out = {}
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = sum(vals) / len(vals)
    return out


# -- the run folder ---------------------------------------------------------------------------------------------


def finished(out: Path, ident: dict[str, Any]) -> TrainResult | None:
    """The finished run in ``out``, if it has this identity; a finished run of another identity is an error."""
    man = read_train_manifest(out)
    if man is None or man.get("status") != "finished":
        return None
    if man.get("identity") != json.loads(json.dumps(ident)):
        raise EvalHarnessError(
            f"{out} holds a finished run with a different configuration; give another --run-name or --output-dir"
        )
    metrics = read_jsonl(out / TRAIN_METRICS)
    return TrainResult(out, [out / c for c in man["checkpoints"]], metrics, skipped=True)


def list_checkpoints(out: Path) -> list[Path]:
    """Complete checkpoint folders in step order. A half-written one is a hidden temporary (``atomic_dir``) whose
    name never matches; ``state.json``, written last, marks a folder the loop finished."""
    found = [
        p
        for p in out.glob("checkpoint-*")
        if p.name.removeprefix("checkpoint-").isdigit() and (p / STATE_DIR / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint-")))


def resume_point(out: Path, ident: dict[str, Any], needs_reference: bool) -> Path | None:
    """The newest complete checkpoint of an unfinished run with this identity; None: start from step 0."""
    man = read_train_manifest(out)
    if man is None or man.get("identity") != json.loads(json.dumps(ident)):
        return None
    if needs_reference and not (out / REFERENCE_LOGPS).is_file():
        return None
    cks = list_checkpoints(out)
    return cks[-1] if cks else None


def read_state(ck: Path, global_batch: int) -> dict[str, Any]:
    """A checkpoint's state.json, refused when it was written with another global batch."""
    state = json.loads((ck / STATE_DIR / "state.json").read_text())
    if state["global_batch"] != global_batch:
        raise EvalHarnessError(
            f"{ck} was written with a global batch of {state['global_batch']} ({state['num_processes']} processes); "
            f"this launch has {global_batch}: resume with the same number of processes, or give another --output-dir"
        )
    return state


def open_run_dir(plan: Plan, resume: Path | None, state: dict[str, Any] | None, log: Callable[[str], None]) -> None:
    """Rank 0: a fresh run folder, or the killed run's folder put back to its checkpoint: temporaries removed,
    metrics after the checkpoint's step cut (they are recomputed), the resume recorded in the manifest."""
    import shutil

    out = plan.out
    if resume is None:
        if out.exists():
            log(f"{plan.run_name}: no resumable checkpoint in {out}; starting from step 0")
        start_train_run(out, plan.manifest())
        return
    assert state is not None
    for tmp in out.glob(".checkpoint-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    resume_train_run(
        out,
        state["step"],
        [c.name for c in list_checkpoints(out)],
        {"from": resume.name, "step": state["step"], "at": provenance.now(), "optimizer": state["optimizer"]},
    )


def fault(point: str, step: int, rank: int) -> None:
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


# -- checkpoints ------------------------------------------------------------------------------------------------


def save_checkpoint(
    model: Any,
    tok: Any,
    path: Path,
    manifest: dict[str, Any],
    *,
    state_dict: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """A loadable model folder, written to a temporary sibling and renamed: never half-written. ``state_dict`` is
    the full state gathered from a sharded model; ``extra`` writes more files into the folder before the rename."""
    with atomic_dir(path) as tmp:
        extra_kw = {"state_dict": state_dict} if state_dict is not None else {}
        model.save_pretrained(tmp, safe_serialization=True, **extra_kw)
        tok.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)


def save_resumable(
    accel: Any,
    model: Any,
    tok: Any,
    opt: Any,
    sched: Any,
    ck: Path,
    manifest: dict[str, Any],
    state: dict[str, Any],
    *,
    save_optimizer: bool,
    full: dict[str, Any] | None = None,
    actor: Any = None,
    more: dict[str, Any] | None = None,
    files: Callable[[Path], None] | None = None,
) -> None:
    """A checkpoint a run resumes from. Every process takes part (optimizer state and RNG gathered to rank 0);
    rank 0 writes the folder atomically: the model (``actor`` when the unwrapped ``model`` holds more, as PPO's
    actor and critic; ``full``: its gathered state dict), and ``training_state/``: the optimizer state, the
    scheduler, every process's RNG and ``more`` (an algorithm's own state) in trainer_state.pt, the files that
    ``files(folder)`` writes, and state.json last."""
    import torch

    optim = optimizer_state(model, opt, accel) if save_optimizer else None
    rng = rng_state()
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
        fault("in_checkpoint", state["step"], 0)
        if optim is not None:
            torch.save(optim, st / "optimizer.pt")
        if files is not None:
            files(st)
        torch.save({"scheduler": sched.state_dict(), "rng": ranks, **(more or {})}, st / "trainer_state.pt")
        write_json_atomic(st / "state.json", {**state, "optimizer": optim is not None})  # written last

    save_checkpoint(model if actor is None else actor, tok, ck, manifest, state_dict=full, extra=training_state)
    drop_older_resume_state(ck.parent)


def drop_older_resume_state(out: Path) -> None:
    """A resume starts from the newest checkpoint only: older ones keep their weights, scheduler and RNG state
    but not the optimizer state (2x the trainable weights) or PPO's critic, so a run holds one copy of them."""
    for older in list_checkpoints(out)[:-1]:
        st = older / STATE_DIR
        gone = [st / name for name in RESUME_ONLY if (st / name).is_file()]
        if gone:
            state = json.loads((st / "state.json").read_text())
            write_json_atomic(st / "state.json", {**state, **{p.stem: False for p in gone}})
            for p in gone:
                p.unlink()


def optimizer_state(model: Any, opt: Any, accel: Any) -> dict[str, Any] | None:
    """The full optimizer state keyed by parameter name (gathered from FSDP shards), on rank 0; None under
    DeepSpeed, whose engine owns its partitioned state."""
    from accelerate.utils import DistributedType

    if accel.distributed_type == DistributedType.DEEPSPEED:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, getattr(opt, "optimizer", opt), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def restore(ck: Path, model: Any, opt: Any, sched: Any, accel: Any, sharded: bool) -> tuple[bool, dict[str, Any]]:
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
        set_optimizer_state_dict(
            model, inner, osd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0)
        )
    for group, lr in zip(inner.param_groups, sched.get_last_lr()):
        group["lr"] = lr
    rng = trainer_state["rng"]
    set_rng_state(rng[accel.process_index] if accel.process_index < len(rng) else rng[0])
    return has_optim, trainer_state


def rng_state() -> dict[str, Any]:
    """This process's Python, NumPy, torch and CUDA RNG states."""
    import random

    import numpy as np
    import torch

    npst = cast(tuple[Any, ...], np.random.get_state())  # the legacy (default) form: a tuple
    return {
        "python": random.getstate(),
        "numpy": [npst[0], npst[1].tolist(), *npst[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(s: dict[str, Any]) -> None:
    """Put back what ``rng_state`` took."""
    import random

    import numpy as np
    import torch

    random.setstate(s["python"])
    np.random.set_state((s["numpy"][0], np.array(s["numpy"][1], dtype=np.uint32), *s["numpy"][2:]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save_tensor(t: Any, path: Path) -> None:
    """torch.save, atomically."""
    import torch

    write_atomic(path, lambda f: torch.save(t, f), binary=True)


# -- models and optimizers --------------------------------------------------------------------------------------


def load_policy(plan: Plan, resume: Path | None) -> tuple[Any, Any]:
    """The model to train, on CPU: the base, or the resumed checkpoint's weights (LoRA: base + saved adapter)."""
    cfg = plan.cfg
    source = plan.base
    if resume is not None and not cfg.lora:  # the checkpoint folder is a full model: load it instead of the base
        source = ModelRef(str(resume), "local", str(resume), "resume")
    model, tok = load_fresh(source, dtype="float32")
    disable_dropout(model)
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
        from evalharness.core.errors import MissingExtraError

        raise MissingExtraError("peft", "train") from e
    return get_peft_model(
        model,
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_target_modules),
            task_type=task_type,
        ),
    )


def disable_dropout(model: Any) -> Any:
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


def adamw(params: list[Any], cfg: TrainConfig, fused: bool = True) -> Any:
    """AdamW, fused where torch has the kernel (measured 5x faster per step than the default on this CPU;
    ``fused=False`` for FSDP2's DTensor parameters on CPU)."""
    import torch

    if fused:
        try:
            return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def lr_lambda(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier per step: linear warmup, then cosine, linear or constant."""
    warmup = int(round(cfg.warmup_ratio * total))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else max(0.0, 1 - progress)

    return f


def scheduler(opt: Any, cfg: TrainConfig, total: int) -> Any:
    """The run's LambdaLR over ``opt`` (stepped once per optimizer step; PPO: once per rollout batch, as TRL)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))


def autocast(cfg: TrainConfig, accel: Any) -> Any:
    """bf16 autocast on the run's device when ``cfg.dtype`` is bfloat16, else a no-op context."""
    import torch

    return torch.autocast(accel.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16")


class NullContext:
    """A context manager that does nothing (where a wrapper's ``no_sync`` or autocast is not wanted)."""

    def __enter__(self) -> None: ...
    def __exit__(self, *a: Any) -> None: ...
