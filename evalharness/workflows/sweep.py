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
    report_to: [mlflow]              # experiment trackers (wandb, mlflow): every training run, and the evaluation

Each run is named ``<algorithm>-<key><value>...-s<seed>`` from the keys its grid lists. Running the
spec again skips finished runs and finished evaluations. Every checkpoint (and the base model) is
evaluated on the held-out prompts through the same ``eval`` pipeline as any model: reward from the
judge, KL to the base. The sweep writes a comparison table, the reward/KL frontier plot and report.html
(``evalharness.analysis.html_report``) beside it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from evalharness import trackers
from evalharness.core.decoding import PAIRS, Decoding
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.paths import results_root
from evalharness.pipeline import presets
from evalharness.pipeline.spec import (
    JudgeSpec,
    Strict,
    decoding_field,
    line_of,
    load_yaml_model,
    parse_tasks,
    spec_path,
)
from evalharness.store import RunStore, write_json_atomic
from evalharness.training.algorithms import ALGORITHMS, get_spec, make_config
from evalharness.training.trainer import TrainConfig, TrainResult

_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {
    "algorithm",
    "base",
    "data",
    "hparams",
    "run_name",
    "output_dir",
    "report_to",
}


class OnPolicySpec(Strict):
    prompts: str
    judge: str = "sentiment"
    k: int = pydantic.Field(4, ge=2)
    temperature: float = decoding_field("temperature", PAIRS)
    top_p: float = decoding_field("top_p", PAIRS)
    max_new_tokens: int = decoding_field("max_new_tokens", PAIRS)
    seed: int = PAIRS.seed
    min_gap: float = 0.0
    model: str | None = None  # default: the base model


class DataSpec(Strict):
    path: str | None = None
    on_policy: OnPolicySpec | None = None
    prompts: str | None = None  # for online algorithms (ppo); default: on_policy.prompts


class EvalSpec(Strict):
    prompts: str | None = None  # with judges: the held-out prompts
    judges: list[str] | None = None  # default: the judge that built the on-policy pairs (else sentiment), and kl
    tasks: dict[str, dict[str, Any] | None] | None = None  # any tasks, as a run spec's tasks: (instead of judges)
    judge: JudgeSpec | None = None  # the chat judge of LLM-judged tasks
    reward: str | None = None  # the metric on the frontier's y axis (default: the first reward)
    max_new_tokens: int = decoding_field("max_new_tokens", PAIRS)
    temperature: float = decoding_field("temperature", PAIRS)
    top_p: float = decoding_field("top_p", PAIRS)
    n: int = decoding_field("n", PAIRS)
    seed: int = PAIRS.seed
    checkpoints: str = "all"  # all | final
    dtype: str = "auto"  # bfloat16 where the hardware has bf16 units, else float32 (the run records which)
    batch_size: int | None = pydantic.Field(default=None, ge=1)  # None: sized from a memory budget


class TrainSpec(Strict):
    name: str
    base: str
    data: DataSpec
    train: dict[str, Any] = {}
    algorithms: dict[str, dict[str, Any] | None]
    seeds: list[int] = [0]
    eval: EvalSpec | None = None
    report_to: trackers.ReportTo = []


@dataclass
class PlannedRun:
    name: str
    config: TrainConfig
    grid: dict[str, Any]  # the values this run takes on its grid's axes


@dataclass
class SweepResult:
    path: Path
    runs: list[tuple[PlannedRun, TrainResult]]
    eval_runs: dict[str, Path]  # model name -> the evaluation run folder (one run for all)
    table: list[dict[str, Any]]  # compare.records of the comparison: one record per (model, metric)
    verdict: dict[str, Any] | None
    plots: list[Path]
    comparison: Any = None  # the compare.Table itself (rendered by the CLI)
    report: Path | None = None  # report.html beside the frontier plot (evalharness.analysis.html_report)
    methods: Any = None  # analysis.methods.MethodTable: the checkpoints grouped across seeds (None: no trained rows)


def load_train_spec(path: str | Path) -> tuple[TrainSpec, list[PlannedRun]]:
    """Validate a sweep spec and expand it; any problem names the file, line and field."""
    path = Path(path)
    spec, lines = load_yaml_model(path, TrainSpec)
    where: Callable[..., dict[str, Any]] = lambda *loc: {  # noqa: E731
        "path": str(path),
        "line": line_of(lines, loc),
        "field": ".".join(map(str, loc)),
    }
    d = spec.data
    online = [a for a in spec.algorithms if a in ALGORITHMS and get_spec(a).online]
    if (
        d.path is not None
        and d.on_policy is not None
        or (len(online) < len(spec.algorithms) and d.path is None and d.on_policy is None)
    ):
        raise InputError("give exactly one of data.path or data.on_policy", **where("data"))
    if online and d.prompts is None and d.on_policy is None:
        raise InputError(
            f"{', '.join(online)} train on prompts: give data.prompts (or data.on_policy)", **where("data")
        )
    if d.path:
        d.path = spec_path(path, d.path)
    if d.prompts:
        d.prompts = spec_path(path, d.prompts)
    if d.on_policy:
        d.on_policy.prompts = spec_path(path, d.on_policy.prompts)
        d.on_policy.judge = spec_path(path, d.on_policy.judge)  # rm:./x
    if spec.eval:
        ev = spec.eval
        if (ev.prompts is None) == (ev.tasks is None):
            raise InputError("give eval.prompts (with judges) or eval.tasks, not both", **where("eval"))
        if ev.prompts:
            ev.prompts = spec_path(path, ev.prompts)
        if ev.tasks:
            try:  # a judge preset's task settings, as a run spec gets them (pipeline/presets.py)
                ev.tasks = presets.apply(ev.judge.preset if ev.judge else None, ev.tasks)
            except InputError as e:
                raise InputError(e.reason, **where("eval", *(e.field or "tasks").split("."))) from None
            parse_tasks(ev.tasks, path, lines, ("eval", "tasks"))  # every error named before anything trains
            ev.tasks = {
                name: {k: spec_path(path, v) if isinstance(v, str) else v for k, v in (o or {}).items()}
                for name, o in ev.tasks.items()
            }
        if ev.judge and ev.judge.type == "local":
            ev.judge.model = spec_path(path, ev.judge.model)
    spec.base = spec_path(path, spec.base)
    return spec, expand(spec, where)


def expand(spec: TrainSpec, where: Callable[..., dict[str, Any]] | None = None) -> list[PlannedRun]:
    """The named runs of a spec: per algorithm, the product of its grid's axes, times the seeds."""
    where = where or (lambda *loc: {"field": ".".join(map(str, loc))})
    for key in spec.train:
        if key not in _TRAIN_FIELDS:
            raise InputError(
                f"unknown training option; known: {', '.join(sorted(_TRAIN_FIELDS))}", **where("train", key)
            )
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
            setting = dict(zip(axes, combo))
            for seed in spec.seeds:
                hp = {k: v for k, v in setting.items() if k not in _TRAIN_FIELDS}
                opts = {**spec.train, **{k: v for k, v in setting.items() if k in _TRAIN_FIELDS}, "seed": seed}
                name = "-".join([algo] + [f"{k}{v}" for k, v in setting.items()] + [f"s{seed}"])
                try:
                    cfg = pydantic.TypeAdapter(TrainConfig).validate_python(
                        {"algorithm": algo, "base": spec.base, "data": "", "hparams": hp, "run_name": name, **opts}
                    )
                except pydantic.ValidationError as e:
                    err = e.errors()[0]
                    key = str(err["loc"][0]) if err["loc"] else ""
                    loc = ("algorithms", algo, key) if key in setting else ("train", key)
                    raise InputError(err["msg"], **where(*loc)) from None
                runs.append(PlannedRun(name, cfg, setting))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise InputError("two runs get the same name", **where("algorithms"))
    return runs


def run_sweep(
    spec: TrainSpec,
    runs: list[PlannedRun],
    *,
    results_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> SweepResult:
    """Build the data (on-policy if asked), train every run, evaluate its checkpoints, compare, plot."""
    from evalharness.training.trainer import train

    trackers.check(spec.report_to)
    for note in preflight_sweep(spec):
        log(note)
    root = Path(results_dir) if results_dir else results_root()
    sweep_dir = root / "train" / spec.name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    prompts = spec.data.prompts or (spec.data.on_policy.prompts if spec.data.on_policy else None)
    data = _offline_data(spec, runs, sweep_dir, log)
    done: list[tuple[PlannedRun, TrainResult]] = []
    for run in runs:
        source = prompts if get_spec(run.config.algorithm).online else data
        cfg = dataclasses.replace(
            run.config, data=str(source), output_dir=str(sweep_dir / run.name), report_to=list(spec.report_to)
        )
        done.append((run, train(cfg, log=log)))
    result = SweepResult(sweep_dir, done, {}, [], None, [])
    if spec.eval:
        evaluate_sweep(spec, result, root, progress=progress, log=log)
    _write_sweep_json(spec, sweep_dir, data, prompts, done, result)
    if result.eval_runs:
        from evalharness.analysis.compare import report_to_trackers
        from evalharness.analysis.methods import method_rows

        report_to_trackers(
            spec.report_to,
            next(iter(result.eval_runs.values())),
            table=result.comparison,
            figures=result.plots,
            against="sft",
            group=spec.name,
            log=log,
            methods=method_rows(result.methods) if result.methods is not None else None,
        )
    return result


def _offline_data(spec: TrainSpec, runs: list[PlannedRun], sweep_dir: Path, log: Callable[[str], None]) -> str | None:
    """The offline algorithms' preference data: on-policy pairs built (or found built) in the sweep folder when
    some run needs pairs, else the spec's data path (None without one)."""
    from evalharness.workflows.onpolicy import PairsConfig, pairs_file

    offline = any(not get_spec(r.config.algorithm).online for r in runs)
    data = None
    if spec.data.on_policy and offline:
        op = spec.data.on_policy
        data = str(
            pairs_file(
                PairsConfig(
                    model=op.model or spec.base,
                    prompts=op.prompts,
                    judge=op.judge,
                    k=op.k,
                    temperature=op.temperature,
                    top_p=op.top_p,
                    max_new_tokens=op.max_new_tokens,
                    seed=op.seed,
                    min_gap=op.min_gap,
                ),
                sweep_dir / "pairs.jsonl",
                log=log,
            )
        )
    elif spec.data.path:
        data = str(spec.data.path)
    return data


def _write_sweep_json(
    spec: TrainSpec,
    sweep_dir: Path,
    data: str | None,
    prompts: str | None,
    done: list[tuple[PlannedRun, TrainResult]],
    result: SweepResult,
) -> None:
    """Write sweep.json: the spec, the data trained on, every run's checkpoints, the eval runs, table and plots."""
    write_json_atomic(
        sweep_dir / "sweep.json",
        {
            "name": spec.name,
            "spec": spec.model_dump(),
            "data": data,
            "prompts": prompts,
            "runs": [
                {
                    "name": r.name,
                    "grid": r.grid,
                    "output_dir": str(t.output_dir),
                    "checkpoints": [str(c) for c in t.checkpoints],
                }
                for r, t in done
            ],
            "eval_runs": {k: str(v) for k, v in result.eval_runs.items()},
            "table": result.table,
            "verdict": result.verdict,
            "plots": [str(p) for p in result.plots],
        },
    )


def evaluate_sweep(
    spec: TrainSpec,
    result: SweepResult,
    root: Path,
    *,
    progress: bool = True,
    log: Callable[[str], None] = lambda _: None,
) -> None:
    """The base (named ``sft``) and every checkpoint through the eval tasks in one run (the reference
    loaded once, each checkpoint loaded once), then the comparison table and the frontier plot."""
    from evalharness.analysis.compare import best_checkpoint, build_table, records, run_entries
    from evalharness.analysis.html_report import write_report
    from evalharness.analysis.methods import build_methods, method_records
    from evalharness.analysis.plot import frontier
    from evalharness.pipeline.runner import ModelSpec, RunPlan, run

    ev = spec.eval
    assert ev is not None
    tasks, generation, options = eval_setup(spec)
    models = [ModelSpec("sft", spec.base)]
    for planned, t in result.runs:
        cks = t.checkpoints if ev.checkpoints == "all" else t.checkpoints[-1:]
        models += [ModelSpec(f"{planned.name}@{c.name.rsplit('-', 1)[-1]}", str(c.resolve())) for c in cks]
    res = run(
        RunPlan(
            name=f"{spec.name}-eval",
            models=models,
            tasks=tasks,
            backend_options=options,
            generation=generation,
            reference=spec.base,
            judge=ev.judge,
            results_dir=root,
            progress=progress,
            meta={"sweep": str(result.path)},
        ),
        log=log,
    )
    result.eval_runs = {m.name: res.path for m in models}
    metric = ev.reward or _reward_metric(res.scores)
    if metric is None:
        return
    shown = [metric] + [m for m in ("kl", "length") if any(s.metric == m for s in res.scores)]
    result.comparison = build_table(run_entries(RunStore(res.path)), against="sft", metrics=shown)
    result.table, result.verdict = records(result.comparison), best_checkpoint(result.comparison, metric)
    result.methods = build_methods(result.comparison)
    if any(s.metric == "kl" for s in res.scores):
        result.plots, _ = frontier([res.path], result.path / "frontier", reward_metric=metric)
    result.report = write_report([str(res.path)], result.path / "report.html", against="sft", results_dir=root)
    methods = method_records(result.methods) if result.methods is not None else None
    write_json_atomic(
        result.path / "comparison.json", {"table": result.table, "verdict": result.verdict, "methods": methods}
    )


def eval_setup(spec: TrainSpec) -> tuple[list[Any], Decoding, dict[str, Any]]:
    """The sweep's evaluation tasks (each with its decoding), the run's decoding and the backend options."""
    from evalharness.pipeline.evaluate import judge_tasks
    from evalharness.pipeline.runner import apply_task_generation

    ev = spec.eval
    assert ev is not None
    if ev.checkpoints not in ("all", "final"):
        raise EvalHarnessError(f"eval.checkpoints is all or final, not '{ev.checkpoints}'")
    if ev.tasks:
        tasks = parse_tasks(ev.tasks, Path("."), {}, ("eval", "tasks"))
    else:
        judges = ev.judges or [spec.data.on_policy.judge if spec.data.on_policy else "sentiment", "kl"]
        tasks = judge_tasks(judges, str(ev.prompts))
    generation = Decoding(ev.max_new_tokens, ev.temperature, ev.top_p, ev.seed, ev.n)
    apply_task_generation(tasks, generation)
    return tasks, generation, {"dtype": ev.dtype, **({"batch_size": ev.batch_size} if ev.batch_size else {})}


def preflight_sweep(spec: TrainSpec) -> list[str]:
    """Check the sweep's evaluation (decoding, judge key and endpoint, data folders) before anything trains."""
    from evalharness.pipeline.preflight import preflight

    if spec.eval is None:
        return []
    tasks, generation, options = eval_setup(spec)
    return preflight(backend="hf", backend_options=options, generation=generation, judge=spec.eval.judge, tasks=tasks)


def _reward_metric(scores: list[Any]) -> str | None:
    """The frontier's default y axis: the first classifier reward of the run (higher or lower is better)."""
    return next(
        (
            s.metric
            for s in scores
            if s.task not in ("kl",)
            and s.metric not in ("length", "kl", "kl_k3")
            and s.extra.get("judge_desc") is not None
        ),
        None,
    )
