"""Sweeps as data: algorithms x hyperparameter grid x seeds, expanded into named runs, then evaluated.

    name: sentiment-frontier
    base: smollm2-135m-instruct
    data:
      on_policy: {prompts: ./prompts_train.jsonl, judge: sentiment, k: 4, max_new_tokens: 40}
      # or: path: ./pairs.jsonl   (JSONL or hf:NAME[:SPLIT])
      # online algorithms (ppo) train on prompts: data.prompts, else the on_policy prompts
    train: {learning_rate: 1.0e-5, epochs: 2, batch_size: 8, save_every: 10}   # TrainConfig defaults
    algorithms:
      dpo: {beta: [0.1, 0.5]}          # hyperparameters (lists are grid axes) or TrainConfig fields
      simpo: {beta: 2.0, gamma: [0.5, 1.0], learning_rate: 5.0e-6}
    seeds: [0]
    eval: {prompts: ./prompts_heldout.jsonl, max_new_tokens: 40}   # judges: the pairs' judge and kl

Each run is named ``<algorithm>-<key><value>...-s<seed>`` from the keys its grid lists. Running the
spec again skips finished runs and finished evaluations. Every checkpoint (and the base model) is
evaluated on the held-out prompts through the same ``eval`` pipeline as any model: reward from the
judge, KL to the base. The sweep writes a comparison table and the reward/KL frontier plot.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from ..errors import EvalHarnessError, InputError
from ..paths import results_root
from ..spec import _line_of, _Strict, load_yaml_model, spec_path
from ..store import write_json_atomic
from .algorithms import ALGORITHMS, get_spec, make_config
from .trainer import TrainConfig, TrainResult

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"algorithm", "base", "data", "hparams",
                                                                     "run_name", "output_dir"}


class OnPolicySpec(_Strict):
    prompts: str
    judge: str = "sentiment"
    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int = 0
    min_gap: float = 0.0
    model: str | None = None  # default: the base model


class DataSpec(_Strict):
    path: str | None = None
    on_policy: OnPolicySpec | None = None
    prompts: str | None = None  # for online algorithms (ppo); default: on_policy.prompts


class EvalSpec(_Strict):
    prompts: str
    judges: list[str] | None = None  # default: the judge that built the on-policy pairs (else sentiment), and kl
    reward: str | None = None  # the metric on the frontier's y axis (default: the first non-KL judge)
    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int = 0
    checkpoints: str = "all"  # all | final
    dtype: str = "float32"
    batch_size: int = 16


class TrainSpec(_Strict):
    name: str
    base: str
    data: DataSpec
    train: dict[str, Any] = {}
    algorithms: dict[str, dict[str, Any] | None]
    seeds: list[int] = [0]
    eval: EvalSpec | None = None


@dataclass
class PlannedRun:
    name: str
    config: TrainConfig
    grid: dict[str, Any]  # the values this run takes on its grid's axes


@dataclass
class SweepResult:
    path: Path
    runs: list[tuple[PlannedRun, TrainResult]]
    eval_runs: dict[str, Path]  # model spec -> eval run folder
    table: list[dict[str, Any]]
    verdict: dict[str, Any] | None
    plots: list[Path]


def load_train_spec(path: str | Path) -> tuple[TrainSpec, list[PlannedRun]]:
    """Validate a sweep spec and expand it; any problem names the file, line and field."""
    path = Path(path)
    spec, lines = load_yaml_model(path, TrainSpec)
    where = lambda *loc: {"path": str(path), "line": _line_of(lines, loc), "field": ".".join(map(str, loc))}  # noqa: E731
    d = spec.data
    online = [a for a in spec.algorithms if a in ALGORITHMS and get_spec(a).online]
    if d.path is not None and d.on_policy is not None or (
            len(online) < len(spec.algorithms) and d.path is None and d.on_policy is None):
        raise InputError("give exactly one of data.path or data.on_policy", **where("data"))
    if online and d.prompts is None and d.on_policy is None:
        raise InputError(f"{', '.join(online)} train on prompts: give data.prompts (or data.on_policy)", **where("data"))
    if d.path:
        d.path = spec_path(path, d.path)
    if d.prompts:
        d.prompts = spec_path(path, d.prompts)
    if d.on_policy:
        d.on_policy.prompts = spec_path(path, d.on_policy.prompts)
    if spec.eval:
        spec.eval.prompts = spec_path(path, spec.eval.prompts)
    spec.base = spec_path(path, spec.base)
    return spec, expand(spec, where)


def expand(spec: TrainSpec, where: Callable[..., dict[str, Any]] | None = None) -> list[PlannedRun]:
    """The named runs of a spec: per algorithm, the product of its grid's axes, times the seeds."""
    where = where or (lambda *loc: {"field": ".".join(map(str, loc))})
    for key in spec.train:
        if key not in _TRAIN_FIELDS:
            raise InputError(f"unknown training option; known: {', '.join(sorted(_TRAIN_FIELDS))}", **where("train", key))
    if not spec.algorithms:
        raise InputError("list at least one algorithm", **where("algorithms"))
    runs: list[PlannedRun] = []
    for algo, grid in spec.algorithms.items():
        if algo not in ALGORITHMS:
            raise InputError(f"unknown algorithm; known: {', '.join(ALGORITHMS)}", **where("algorithms", algo))
        grid = grid or {}
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in grid.items()}
        for key, values in axes.items():
            if not values:
                raise InputError("an empty list of values", **where("algorithms", algo, key))
            if key not in _TRAIN_FIELDS:
                for v in values:  # hyperparameter names and values are checked before anything runs
                    try:
                        make_config(algo, **{key: v})
                    except EvalHarnessError as e:
                        raise InputError(str(e), **where("algorithms", algo, key)) from None
        for combo in itertools.product(*axes.values()):
            values = dict(zip(axes, combo))
            for seed in spec.seeds:
                hp = {k: v for k, v in values.items() if k not in _TRAIN_FIELDS}
                opts = {**spec.train, **{k: v for k, v in values.items() if k in _TRAIN_FIELDS}, "seed": seed}
                name = "-".join([algo] + [f"{k}{v}" for k, v in values.items()] + [f"s{seed}"])
                try:
                    cfg = pydantic.TypeAdapter(TrainConfig).validate_python(
                        {"algorithm": algo, "base": spec.base, "data": "", "hparams": hp, "run_name": name, **opts})
                except pydantic.ValidationError as e:
                    err = e.errors()[0]
                    key = str(err["loc"][0]) if err["loc"] else ""
                    loc = ("algorithms", algo, key) if key in values else ("train", key)
                    raise InputError(err["msg"], **where(*loc)) from None
                runs.append(PlannedRun(name, cfg, values))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError("two runs get the same name", **where("algorithms"))
    return runs


def run_sweep(spec: TrainSpec, runs: list[PlannedRun], *, results_dir: str | Path | None = None, progress: bool = True,
              log: Callable[[str], None] = lambda _: None) -> SweepResult:
    """Build the data (on-policy if asked), train every run, evaluate its checkpoints, compare, plot."""
    from .onpolicy import PairsConfig, pairs_file
    from .trainer import train
    root = Path(results_dir) if results_dir else results_root()
    sweep_dir = root / "train" / spec.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    offline = any(not get_spec(r.config.algorithm).online for r in runs)
    prompts = spec.data.prompts or (spec.data.on_policy.prompts if spec.data.on_policy else None)
    data = None
    if spec.data.on_policy and offline:
        op = spec.data.on_policy
        data = str(pairs_file(PairsConfig(model=op.model or spec.base, prompts=op.prompts, judge=op.judge, k=op.k,
                                          temperature=op.temperature, top_p=op.top_p, max_new_tokens=op.max_new_tokens,
                                          seed=op.seed, min_gap=op.min_gap), sweep_dir / "pairs.jsonl", log=log))
    elif spec.data.path:
        data = str(spec.data.path)
    done: list[tuple[PlannedRun, TrainResult]] = []
    for run in runs:
        source = prompts if get_spec(run.config.algorithm).online else data
        cfg = dataclasses.replace(run.config, data=str(source), output_dir=str(sweep_dir / run.name))
        done.append((run, train(cfg, log=log)))
    result = SweepResult(sweep_dir, done, {}, [], None, [])
    if spec.eval:
        evaluate_sweep(spec, result, root, progress=progress, log=log)
    write_json_atomic(sweep_dir / "sweep.json", {
        "name": spec.name, "spec": spec.model_dump(), "data": data, "prompts": prompts,
        "runs": [{"name": r.name, "grid": r.grid, "output_dir": str(t.output_dir),
                  "checkpoints": [str(c) for c in t.checkpoints]} for r, t in done],
        "eval_runs": {k: str(v) for k, v in result.eval_runs.items()}, "table": result.table,
        "verdict": result.verdict, "plots": [str(p) for p in result.plots]})
    return result


def evaluate_sweep(spec: TrainSpec, result: SweepResult, root: Path, *, progress: bool = True,
                   log: Callable[[str], None] = lambda _: None) -> None:
    """Each checkpoint and the base, on the held-out prompts: one eval run each (resumable), then compare."""
    from ..compare import comparison_table
    from ..evaluate import EvalConfig, run_eval
    from ..models import evict, resolve
    from ..plot import frontier
    ev = spec.eval
    assert ev is not None
    if ev.checkpoints not in ("all", "final"):
        raise EvalHarnessError(f"eval.checkpoints is all or final, not '{ev.checkpoints}'")
    judges = ev.judges or [spec.data.on_policy.judge if spec.data.on_policy else "sentiment", "kl"]
    models = [spec.base]
    for _, t in result.runs:
        cks = t.checkpoints if ev.checkpoints == "all" else t.checkpoints[-1:]
        models += [str(c.resolve()) for c in cks]
    for m in models:
        cfg = EvalConfig(models=[m], prompts=ev.prompts, judges=list(judges), reference=spec.base,
                         max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p, n=ev.n,
                         seed=ev.seed, dtype=ev.dtype, batch_size=ev.batch_size, task=Path(ev.prompts).stem,
                         results_dir=str(root), progress=progress)
        result.eval_runs[m] = run_eval(cfg, log=log).run_dir
        if m != spec.base:
            evict(resolve(m))  # checkpoints are evaluated one after another: keep one in memory
    reward = ev.reward or next((j for j in judges if j != "kl"), None)
    if reward is None:
        return
    metric = _metric_of(reward)
    runs = list(result.eval_runs.values())
    result.table, result.verdict = comparison_table(runs, base=spec.base, reward_metric=metric)
    if "kl" in judges:
        result.plots, _ = frontier(runs, result.path / "frontier", reward_metric=metric)
    write_json_atomic(result.path / "comparison.json", {"table": result.table, "verdict": result.verdict})


def _metric_of(judge: str) -> str:
    from ..judges import get_judge
    return str(get_judge(judge).metric)
