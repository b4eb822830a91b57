"""Command line: parses arguments and calls the library; no logic lives here."""

from __future__ import annotations

import errno
import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from evalharness.core.decoding import FRONTIER, PAIRS, PREVIEW, Decoding
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.records import MAX_SKIPPED_SHARE, check_max_skipped

if TYPE_CHECKING:
    from evalharness.analysis.compare import Entry
    from evalharness.pipeline.runner import ModelSpec
    from evalharness.training.config import TrainConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Evaluate preference-optimized checkpoints: generate, judge, measure KL, compare.",
)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


# $EVALHARNESS_RESULTS is read here, at the edge, and the folder passed down as an argument.
_RESULTS = Annotated[
    Path | None, typer.Option(envvar="EVALHARNESS_RESULTS", show_envvar=True, help="results root (default ./results)")
]
_BACKEND_HELP = "a registered backend: hf, vllm, openai, fake (evalharness.backends)"
_MAX_SKIPPED = Annotated[
    float,
    typer.Option(
        help="largest share of a task's judgments that may fail or go unparsed before it counts as not measured "
        "(exit 3)"
    ),
]

_REPORT_TO = Annotated[
    str | None,
    typer.Option(
        help="experiment trackers, comma list: wandb, mlflow, or none (default: the spec's report_to, else none)"
    ),
]


def _trackers(value: str | None) -> list[str] | None:
    from evalharness.trackers import parse_report_to

    return None if value is None else parse_report_to(value)


def _decoding_options(
    preset: Decoding, skip: tuple[str, ...] = ()
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command one option per ``Decoding`` field (help and range from the field, default from ``preset``)
    and call it with a checked ``decoding=Decoding(...)``: the options are built from the config, not copied.
    A field in ``skip`` gets no option and keeps the preset's value (``pairs`` samples ``--k``, not ``--n``)."""
    import functools
    import inspect
    from typing import get_type_hints

    from evalharness.core.decoding import FIELDS

    def wrap(command: Callable[..., None]) -> Callable[..., None]:
        types = {"int": int, "float": float}
        added = {
            f.name: Annotated[types[str(f.type)], typer.Option(help=f.metadata["help"])]
            for f in FIELDS
            if f.name not in skip
        }
        sig = inspect.signature(command, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != "decoding"]
        params += [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=getattr(preset, name), annotation=kind)
            for name, kind in added.items()
        ]

        @functools.wraps(command)
        def run(**kwargs: object) -> None:
            values = {f.name: kwargs.pop(f.name) if f.name in added else getattr(preset, f.name) for f in FIELDS}
            try:
                chosen = Decoding(**values)  # type: ignore[arg-type]
            except InputError as e:  # name the flag the user typed
                raise InputError(e.reason, field="--" + (e.field or "").replace("_", "-")) from None
            command(decoding=chosen, **kwargs)

        hints = {k: v for k, v in get_type_hints(command, include_extras=True).items() if k != "decoding"}
        run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {**hints, **added}
        return run

    return wrap


def _quiet_libraries() -> None:
    import os

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


@app.command()
@_decoding_options(PREVIEW)
def generate(
    model: Annotated[str, typer.Option(help="bundled alias, local directory or HF id")],
    prompts: Annotated[Path, typer.Option(help="JSONL with id and prompt or messages")],
    out: Annotated[Path, typer.Option(help="output JSONL of generations")],
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "hf",
    batch_size: Annotated[int, typer.Option(help="prompts per batch (hf)")] = 16,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, or auto (bf16 where the hardware has it)")] = "float32",
    *,
    decoding: Decoding,
) -> None:
    """Sample responses for a prompt file."""
    from evalharness.pipeline.generate import GenerateConfig, generate_file

    _quiet_libraries()
    d = decoding
    path = generate_file(
        GenerateConfig(
            model,
            str(prompts),
            str(out),
            d.max_new_tokens,
            d.temperature,
            d.top_p,
            d.n,
            d.seed,
            backend,
            batch_size,
            dtype,
        )
    )
    _err(f"wrote {path}")


@app.command("eval")
@_decoding_options(FRONTIER)
def eval_(
    model: Annotated[list[str], typer.Option(help="policy to evaluate (repeatable)")],
    prompts: Annotated[Path, typer.Option(help="JSONL with id and prompt or messages")],
    reference: Annotated[str | None, typer.Option(help="reference (SFT) model for KL")] = None,
    judges: Annotated[
        str, typer.Option(help="comma list: sentiment, toxicity, kl, hf:MODEL[:LABEL], rm:MODEL")
    ] = "sentiment,toxicity,kl",
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP + " (KL scores responses: not an openai endpoint)")] = "hf",
    batch_size: Annotated[int | None, typer.Option(help="default: sized from a memory budget")] = None,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16, or auto (bf16 where the hardware has it)")] = "float32",
    run_id: Annotated[str | None, typer.Option(help="name of the run folder (default: hash of the config)")] = None,
    results_dir: _RESULTS = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    report_to: _REPORT_TO = None,
    max_skipped: _MAX_SKIPPED = MAX_SKIPPED_SHARE,
    *,
    decoding: Decoding,
) -> None:
    """Generate, judge and measure KL for one or more models; print a table of scores.
    Exit 3 when a judge failed on too many samples (see --max-skipped), 2 on bad input."""
    from evalharness import trackers
    from evalharness.analysis.compare import report_to_trackers
    from evalharness.analysis.text import print_scores
    from evalharness.pipeline.evaluate import EvalConfig, run_eval
    from evalharness.pipeline.runner import check_judging

    _quiet_libraries()
    names = _trackers(report_to) or []
    trackers.check(names)  # a missing tracker package fails before anything runs
    d = decoding
    cfg = EvalConfig(
        models=model,
        prompts=str(prompts),
        judges=judges.split(","),
        reference=reference,
        backend=backend,
        temperature=d.temperature,
        top_p=d.top_p,
        max_new_tokens=d.max_new_tokens,
        n=d.n,
        seed=d.seed,
        dtype=dtype,
        batch_size=batch_size,
        run_id=run_id,
        results_dir=results_dir,
        progress=not json_out,
    )
    res = run_eval(cfg, log=_err)
    if json_out:
        typer.echo(json.dumps(res.summary, indent=2))
    else:
        print_scores(res.scores, title=f"{res.summary['task']} — run {res.run_dir.name}")
        _err(f"results: {res.run_dir}")
    report_to_trackers(names, res.run_dir, log=_err)  # after the table: a tracker failure must not hide it
    check_judging(res.run_dir, max_skipped, log=_err)


@app.command()
def show(
    run: Annotated[str, typer.Argument(help="run id or run folder")],
    results_dir: _RESULTS = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Print a finished run's scores (runs written before schema 2 too)."""
    from evalharness.analysis.text import print_scores
    from evalharness.store import RunStore, find_run, read_json_object

    store = RunStore(find_run(run, results_dir))
    scores = store.scores()  # checks the summary: a damaged one is an error naming the file
    summary = read_json_object(store.path / "summary.json")
    if json_out:
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        print_scores(scores, title=f"{summary.get('task', '')} — run {store.run_id}")
        _print_side_by_side(store.path, False)


@app.command()
def quickstart(
    algorithms: Annotated[
        str | None,
        typer.Option(help="comma list, or 'all' for every algorithm (default: dpo,simpo; dpo,odpo for toxicity)"),
    ] = None,
    results_dir: _RESULTS = None,
    seed: int = 0,
    task: Annotated[str, typer.Option(help="sentiment (higher is better) or toxicity (lower is better)")] = "sentiment",
    seeds: Annotated[int, typer.Option(help="training seeds per algorithm (2+: method rows with seed variance)")] = 1,
) -> None:
    """The main job: DPO vs SimPO on the bundled SmolLM2 with on-policy sentiment pairs; table + frontier plot.
    --task toxicity: DPO vs ODPO on rant openings, pairs and verdict by lower toxicity."""
    from evalharness.workflows.quickstart import quickstart as run

    _quiet_libraries()
    res = run(
        algorithms=algorithms,
        seed=seed,
        seeds=seeds,
        task=task,
        results_dir=str(results_dir) if results_dir else None,
        log=_err,
    )
    typer.echo(f"quickstart: SmolLM2-135M-Instruct, {task} control, held-out prompts")
    _print_sweep(res)


def _print_sweep(res: object) -> None:
    from evalharness.analysis.compare import render, verdict_line

    if getattr(res, "comparison", None) is not None:
        typer.echo(render(res.comparison))  # type: ignore[attr-defined]
    if getattr(res, "verdict", None):
        typer.echo(verdict_line(res.verdict))  # type: ignore[attr-defined]
    if getattr(res, "methods", None) is not None:
        from evalharness.analysis.methods import render_methods

        typer.echo(render_methods(res.methods), nl=False)  # type: ignore[attr-defined]
    for p in getattr(res, "plots", []):
        typer.echo(f"frontier plot: {p}")
    if getattr(res, "report", None) is not None:
        typer.echo(f"report: {res.report}")  # type: ignore[attr-defined]
    typer.echo(f"results written to {res.path}")  # type: ignore[attr-defined]


def _config_options(fn: Callable[..., None]) -> Callable[..., None]:
    """Give a command that takes ``**options`` one option per ``TrainConfig`` field, built from the dataclass: the
    field's name (and older flag names), type, default and help. Required fields become optional flags, since a
    spec file may give them instead; lists are comma lists; ``hparams`` is the repeatable ``--hp KEY=VALUE``."""
    import dataclasses
    import inspect
    import typing

    from evalharness.training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    params = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
    for f in dataclasses.fields(TrainConfig):
        hint, decls = hints[f.name], list(f.metadata["flags"]) or [f"--{f.name.replace('_', '-')}"]
        origin = typing.get_origin(hint)
        default = None if f.default is dataclasses.MISSING or origin in (list, dict) else f.default
        if hint is bool:
            decls = [f"--{f.name.replace('_', '-')}/--no-{f.name.replace('_', '-')}"]
        elif origin is dict:
            hint = Optional[list[str]]  # noqa: UP045  (a runtime type for typer)
        elif origin is list:
            hint = Optional[str]  # noqa: UP045
        elif default is None:
            hint = Optional[next(a for a in typing.get_args(hint) or (hint,) if a is not type(None))]  # noqa: UP045
        option = typer.Option(*decls, help=f.metadata["help"])
        params.append(
            inspect.Parameter(
                f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, option]
            )
        )
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in params}
    return fn


def _config_from_options(options: dict[str, object]) -> TrainConfig:
    """The ``TrainConfig`` of the options given (an option left out keeps the field's default)."""
    import dataclasses
    import typing

    from evalharness.training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    values: dict[str, object] = {}
    for f in dataclasses.fields(TrainConfig):
        value, origin = options.get(f.name), typing.get_origin(hints[f.name])
        if value is None:
            continue
        if origin is dict:
            value = _hparams(value)  # type: ignore[arg-type]
        elif f.name == "report_to":
            value = _trackers(value)  # type: ignore[arg-type]
        elif origin is list:
            value = [v.strip() for v in str(value).split(",") if v.strip()]
        values[f.name] = value
    return TrainConfig(**values)  # type: ignore[arg-type]


def _hparams(items: list[str]) -> dict[str, object]:
    hparams = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise EvalHarnessError(f"--hp takes KEY=VALUE, got '{item}'")
        hparams[key.strip()] = _scalar(value.strip())
    return hparams


@app.command("train")
@_config_options
def train_(
    spec: Annotated[
        Path | None, typer.Argument(help="sweep spec YAML (algorithms x grid x seeds); or use the options")
    ] = None,
    results_dir: _RESULTS = None,
    max_skipped: _MAX_SKIPPED = MAX_SKIPPED_SHARE,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the training plan and stop")] = False,
    **options: object,
) -> None:
    """Train checkpoints: a sweep spec, or one run from options. Finished runs are skipped; killed ones resume."""
    _quiet_libraries()
    if spec is not None:
        if options.get("algorithm") or options.get("base") or options.get("data"):
            raise EvalHarnessError("give a spec file or --algorithm/--base/--data, not both")
        from evalharness.workflows.sweep import load_train_spec, run_sweep

        sweep, runs = load_train_spec(spec)
        if dry_run:
            from evalharness.workflows.trainplan import render_train_plan, sweep_plan

            typer.echo(render_train_plan(sweep_plan(sweep, runs)))
            return
        if options.get("report_to") is not None:
            sweep.report_to = _trackers(str(options["report_to"]))  # type: ignore[assignment]
        _err(f"{sweep.name}: {len(runs)} runs: {', '.join(r.name for r in runs)}")
        res = run_sweep(sweep, runs, results_dir=results_dir, log=_err)  # checks its evaluation first (preflight)
        typer.echo(f"{sweep.name}: evaluation")
        _print_sweep(res)
        from evalharness.pipeline.runner import check_judging

        for path in dict.fromkeys(res.eval_runs.values()):
            check_judging(path, max_skipped, log=_err)
        return
    if not (options.get("algorithm") and options.get("base") and options.get("data")):
        raise EvalHarnessError("give a spec file, or all of --algorithm, --base and --data")
    from evalharness.training.trainer import default_run_name, train

    cfg = _config_from_options(options)
    if dry_run:
        from evalharness.workflows.trainplan import render_train_plan, single_plan

        typer.echo(render_train_plan(single_plan(cfg)))
        return
    if results_dir and not cfg.output_dir:  # the results root is passed down, not set in the environment
        cfg.output_dir = str(results_dir / "train" / (cfg.run_name or default_run_name(cfg)))
    trained = train(cfg, log=_err)
    for c in trained.checkpoints:
        typer.echo(str(c))
    _err(("already trained: " if trained.skipped else "checkpoints in ") + str(trained.output_dir))


def _scalar(text: str) -> object:
    """A --hp value as YAML reads it: 0.1 -> float, true -> bool, log -> str."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


@app.command()
@_decoding_options(PAIRS, skip=("n",))
def pairs(
    model: Annotated[str, typer.Option(help="policy to sample from (the SFT model for on-policy data)")],
    prompts: Annotated[Path, typer.Option(help="JSONL with id and prompt or messages")],
    out: Annotated[Path, typer.Option(help="output pairs JSONL (a .meta.json sidecar records how)")],
    judge: Annotated[str, typer.Option(help="sentiment, toxicity, hf:MODEL[:LABEL], rm:MODEL[?options]")] = "sentiment",
    k: Annotated[int, typer.Option(help="samples per prompt")] = 4,
    min_gap: Annotated[float, typer.Option(help="best - worst must exceed this (else a tie, dropped)")] = 0.0,
    dtype: str = "float32",
    backend: Annotated[str, typer.Option(help="hf or vllm")] = "hf",
    rank: Annotated[str, typer.Option(help="score (--judge), or a chat judge: rating | pairwise")] = "score",
    judge_model: Annotated[str | None, typer.Option(help="chat judge: endpoint model, or local model path")] = None,
    judge_base_url: Annotated[str | None, typer.Option(help="chat judge endpoint (OpenAI-compatible)")] = None,
    judge_api_key_env: Annotated[str | None, typer.Option(help="NAME of the variable holding its key")] = None,
    judge_type: Annotated[str, typer.Option(help="openai (an endpoint) or local (an in-process model)")] = "openai",
    *,
    decoding: Decoding,
) -> None:
    """Build on-policy preference pairs: sample k responses, score them, keep best vs worst (scores kept)."""
    from evalharness.workflows.onpolicy import PairsConfig, pairs_file

    _quiet_libraries()
    chat = (
        None
        if judge_model is None
        else {"type": judge_type, "model": judge_model, "base_url": judge_base_url, "api_key_env": judge_api_key_env}
    )
    path = pairs_file(
        PairsConfig(
            model=model,
            prompts=str(prompts),
            judge=judge,
            k=k,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            max_new_tokens=decoding.max_new_tokens,
            seed=decoding.seed,
            min_gap=min_gap,
            dtype=dtype,
            backend=backend,
            rank=rank,
            chat_judge=chat,
        ),
        out,
        log=_err,
    )
    _err(f"wrote {path}")


plot_app = typer.Typer(no_args_is_help=True, help="Plots from finished eval runs.")
app.add_typer(plot_app, name="plot")


@plot_app.command("frontier")
def plot_frontier(
    runs: Annotated[list[str], typer.Argument(help="eval run ids or folders (checkpoints and the SFT model)")],
    out: Annotated[Path, typer.Option(help="output path without suffix; writes .png and .svg")] = Path("frontier"),
    reward_metric: Annotated[str | None, typer.Option(help="y axis metric (default: the one reward present)")] = None,
    results_dir: _RESULTS = None,
) -> None:
    """Reward vs KL to the reference: one colour per algorithm, one point per checkpoint, Pareto fronts."""
    from evalharness.analysis.plot import frontier, frontier_table
    from evalharness.analysis.text import render_grid

    paths, points = frontier(runs, out, reward_metric=reward_metric, results_dir=results_dir)
    rows = frontier_table(points)
    _err(render_grid(list(rows[0]), [[str(v) for v in r.values()] for r in rows], left=len(rows[0])).rstrip("\n"))
    for p in paths:
        typer.echo(str(p))


@plot_app.command("temperature")
def plot_temperature(
    runs: Annotated[list[str], typer.Argument(help="finished run ids or folders with a temperature-swept task")],
    out: Annotated[Path, typer.Option(help="output path without suffix; writes .png and .svg")] = Path("temperature"),
    task: Annotated[str | None, typer.Option(help="the swept task (default: the one present)")] = None,
    metric: Annotated[str | None, typer.Option(help="y axis metric (default: the task's first)")] = None,
) -> None:
    """A metric vs sampling temperature, a line per model with 95% CIs (tasks with generation: {temperature: [...]})."""
    from evalharness.analysis.plot import temperature_plot

    paths, points, meta = temperature_plot(runs, out, task=task, metric=metric)
    for p in points:
        _err(
            f"{meta['task']} {meta['metric']}  {p.model:<24} T={p.temperature:<5g} {p.value:.4f} "
            f"[{p.lo:.4f}, {p.hi:.4f}]  n={p.n}"
        )
    for path in paths:
        typer.echo(str(path))


_SEQUENTIAL_GATE = Annotated[
    str | None,
    typer.Option(
        help="RUN:MODEL, a finished run of the same tasks: judge in a seeded order and stop each model's "
        "judging once the sequential gate against it decides (the same command without it completes the run)"
    ),
]
_GATE_MARGIN = Annotated[
    list[str] | None, typer.Option(help="--sequential-gate: TASK/METRIC=DELTA, a drop within DELTA passes")
]


@app.command("run")
def run_(
    spec: Annotated[Path, typer.Argument(help="run spec YAML (see benchmarks/*.yaml)")],
    results_dir: _RESULTS = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    report_to: _REPORT_TO = None,
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=REF: one more model to evaluate beside the spec's (repeatable); regress and history "
            "find it by NAME"
        ),
    ] = None,
    rejudge: Annotated[
        str | None,
        typer.Option(help="ask stored judgments again, past the response cache: unparsed, failed or all-bad"),
    ] = None,
    max_skipped: _MAX_SKIPPED = MAX_SKIPPED_SHARE,
    sequential_gate: _SEQUENTIAL_GATE = None,
    gate_margin: _GATE_MARGIN = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan (evalharness plan) and stop")] = False,
) -> None:
    """Run models through the tasks of a spec (rewards, KL, AlpacaEval 2, Arena-Hard, MT-Bench) into one run.
    Exit 0 when every task is measured, 3 when a task's judging failed (see --max-skipped), 2 on bad input,
    4 when the judge budget (judge.max_cost, max_requests) stopped it: rerun with a bigger one to resume."""
    from evalharness.analysis.text import print_scores
    from evalharness.pipeline.runner import check_judging, model_option, run_spec

    _quiet_libraries()
    extra = [model_option(m) for m in model or []]
    if dry_run:
        _print_plan(spec, results_dir, json_out, extra, rejudge)
        return
    from evalharness.analysis.sequential import LiveGate

    gate = None
    if sequential_gate is not None:
        gate = LiveGate(
            _one_model("--sequential-gate", sequential_gate, results_dir), margins=_margins(gate_margin or [])
        )
    res = run_spec(
        spec,
        results_dir=results_dir,
        progress=not json_out,
        report_to=_trackers(report_to),
        log=_err,
        extra_models=extra,
        rejudge=rejudge,
        stops=[gate] if gate else None,
        judge_order=gate.order if gate else None,
    )
    if json_out:
        typer.echo((res.path / "summary.json").read_text())
    else:
        print_scores(res.scores, title=f"{spec.name} — run {res.path.name}")
        _err(f"results: {res.path}")
    from evalharness.analysis.compare import report_to_trackers

    report_to_trackers(res.report_to, res.path, log=_err)  # after the table: a tracker failure must not hide it
    _print_side_by_side(res.path, json_out)
    check_judging(res.path, max_skipped, log=_err)


@app.command("plan")
def plan_(
    spec: Annotated[Path, typer.Argument(help="run spec YAML")],
    results_dir: _RESULTS = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Before anything is sent: per task and model the generations and judge requests still missing, their
    tokens, cost and time, and the minimum detectable difference of each comparison. Sends and writes nothing."""
    _quiet_libraries()
    _print_plan(spec, results_dir, json_out, [])


def _print_plan(
    spec: Path, results_dir: Path | None, json_out: bool, extra: list[ModelSpec], rejudge: str | None = None
) -> None:
    from evalharness.pipeline.plan import render
    from evalharness.pipeline.runner import REJUDGE, plan_from_spec, plan_run

    if rejudge is not None and rejudge not in REJUDGE:
        raise InputError(f"must be one of {', '.join(REJUDGE)}, got {rejudge!r}", field="--rejudge")
    run_plan = plan_from_spec(spec, results_dir=results_dir, progress=False, extra_models=extra)
    run_plan.rejudge = rejudge
    plan = plan_run(run_plan, log=_err)
    typer.echo(json.dumps(plan.to_dict(), indent=2) if json_out else render(plan))


def _print_side_by_side(path: Path, json_out: bool) -> None:
    from evalharness.pipeline.plan import side_by_side

    text = side_by_side(path)
    if text:
        (_err if json_out else typer.echo)(text)


_RUNS = Annotated[list[str], typer.Argument(help="runs (id or folder: all their models), RUN:MODEL, or MODEL")]


@app.command()
def compare(
    refs: _RUNS,
    against: Annotated[str | None, typer.Option(help="the reference row: paired differences to it")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, latex, csv or json")] = "table",
    metrics: Annotated[str | None, typer.Option(help="comma list of TASK/METRIC or METRIC (default: headline)")] = None,
    allow_mixed: Annotated[bool, typer.Option(help="show incomparable scores in separate labelled columns")] = False,
    rounds: Annotated[
        int | None, typer.Option(help="bootstrap rounds of refit metrics (default: Arena-Hard 1000, AlpacaEval LC 200)")
    ] = None,
    seed: int = 0,
    results_dir: _RESULTS = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(help="NAME=ROW,ROW (repeat), or a YAML file: group rows into methods (default: manifests)"),
    ] = None,
    method_against: Annotated[str | None, typer.Option(help="the reference method (default: every pair)")] = None,
) -> None:
    """The SimPO-paper table: a row per model, value [95% CI] per (task, metric), paired Δ to --against; then a
    row per method (checkpoints across training seeds) with its mean over seeds and method differences."""
    from evalharness.analysis.compare import build_table, resolve
    from evalharness.analysis.methods import build_methods, parse_groups, render_compare

    table = build_table(
        resolve(refs, results_dir),
        against=against,
        allow_mixed=allow_mixed,
        rounds=rounds,
        seed=seed,
        metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
        log=_err,
    )
    found = build_methods(table, groups=parse_groups(methods) if methods else None, against=method_against)
    typer.echo(render_compare(table, found, fmt), nl=False)
    if fmt in ("table", "markdown"):  # the judge's own figures, never in a model metric's column
        from evalharness.analysis.reliability import reliability_section

        typer.echo(reliability_section(table.rows, fmt), nl=False)


@app.command()
def report(
    refs: _RUNS,
    out: Annotated[Path, typer.Option(help="the HTML file to write (one self-contained page)")],
    against: Annotated[str | None, typer.Option(help="the reference row: paired differences to it")] = None,
    results_dir: _RESULTS = None,
) -> None:
    """One self-contained HTML page: compare's table, the figures, a per-prompt viewer of two models, provenance."""
    from evalharness.analysis.html_report import write_report

    typer.echo(f"report: {write_report(refs, out, against=against, results_dir=results_dir, log=_err)}")


_SEQUENTIAL = Annotated[
    bool, typer.Option(help="replay the stored verdicts in a seeded order, chunk by chunk, and stop when decided")
]
_REPLAYS = Annotated[int, typer.Option(help="--sequential: seeded orders to replay (the first gives the verdict)")]


def _one_model(option: str, ref: str, results_dir: Path | None) -> Entry:
    """The one model ``ref`` names (RUN:MODEL, MODEL, or a run with one model), else an error naming ``option``."""
    from evalharness.analysis.compare import resolve

    found = resolve([ref], results_dir)
    if len(found) != 1:
        raise EvalHarnessError(f"{option} {ref!r} names {len(found)} models; use RUN:MODEL")
    return found[0]


@app.command()
def regress(
    baseline: Annotated[str, typer.Option(help="RUN:MODEL, MODEL, or a run with one model")],
    candidate: Annotated[str, typer.Option(help="RUN:MODEL, MODEL, or a run with one model")],
    metrics: Annotated[
        str | None, typer.Option(help="comma list of TASK/METRIC (default: all with a direction)")
    ] = None,
    margin: Annotated[list[str] | None, typer.Option(help="TASK/METRIC=DELTA: a drop within DELTA passes")] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 on INCONCLUSIVE too")] = False,
    max_skipped: Annotated[
        float | None,
        typer.Option(help="largest share of failed or unparsed judgments a measured score may have (default 0.1)"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    rounds: Annotated[
        int | None, typer.Option(help="bootstrap rounds (default: Arena-Hard 1000, AlpacaEval LC 200)")
    ] = None,
    sequential: _SEQUENTIAL = False,
    chunk: Annotated[int, typer.Option(help="--sequential: items a chunk (a look after each)")] = 50,
    seed: Annotated[int, typer.Option(help="--sequential: the seed of the item order")] = 0,
    replays: _REPLAYS = 1,
    results_dir: _RESULTS = None,
    drift_check: Annotated[
        bool, typer.Option(help="across runs of an API judge, ask today's judge again about a subsample (drift)")
    ] = True,
    drift_sample: Annotated[int, typer.Option(help="items of the older run asked again in the drift check")] = 50,
) -> None:
    """Gate a candidate against a baseline: FAIL (significantly worse, Holm), PASS, INCONCLUSIVE (MDE), or NOT
    MEASURED (nothing scored, too many failed judgments, or one side lacks the metric). Exit 0 on PASS and
    INCONCLUSIVE, 1 on FAIL (or, with --strict, INCONCLUSIVE), 2 on bad input, 3 on NOT MEASURED (FAIL wins)."""
    from evalharness.analysis.compare import gate_exit
    from evalharness.analysis.compare import regress as gate
    from evalharness.analysis.sequential import sequential_line, sequential_regress
    from evalharness.core.records import MAX_SKIPPED_SHARE

    if max_skipped is not None:
        check_max_skipped(max_skipped)
    pair = [_one_model(f"--{w}", ref, results_dir) for w, ref in (("baseline", baseline), ("candidate", candidate))]
    seq = lambda *a, **k: sequential_regress(*a, chunk=chunk, seed=seed, replays=replays, **k)  # noqa: E731
    rows = (seq if sequential else gate)(
        pair[0],
        pair[1],
        metrics=[m.strip() for m in metrics.split(",")] if metrics else None,
        margins=_margins(margin or []),
        rounds=rounds,
        log=_err,
        max_skipped=MAX_SKIPPED_SHARE if max_skipped is None else max_skipped,
    )
    drifts = []
    if drift_check:  # a significant judge drift turns PASS / FAIL into INCONCLUSIVE (workflows.drift)
        from evalharness.workflows.drift import apply_drift, drift_checks

        drifts = drift_checks(pair[0], pair[1], [r["task"] for r in rows], sample=drift_sample, log=_err)
        apply_drift(rows, drifts)
    if json_out:
        typer.echo(json.dumps(rows, indent=2, default=str))
    elif sequential:
        typer.echo("\n".join(sequential_line(r) for r in rows))
    else:
        _print_gate(rows, drifts)
    raise typer.Exit(gate_exit(rows, strict=strict))


def _print_gate(rows: list[dict], drifts: list) -> None:
    """The gate's text output: the judge-drift lines, then one line per metric."""
    for d in drifts:
        typer.echo(d.line())
    for r in rows:
        if "delta" not in r:
            typer.echo(f"{r['verdict']:12s} {r['task']}/{r['metric']}: {r['reason']}")
            continue
        g = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731  (None: undefined, e.g. one item)
        extra = f" (MDE {g(r['mde'], '.3g')})" if r["verdict"] == "INCONCLUSIVE" else ""
        if r.get("inconclusive_reason"):
            extra = f" (judge drift; without it {r['verdict_without_drift']})"
        typer.echo(
            f"{r['verdict']:12s} {r['task']}/{r['metric']}: Δ {g(r['delta'], '+.4g')} "
            f"[{g(r['delta_ci_low'], '+.4g')}, {g(r['delta_ci_high'], '+.4g')}], p(drop) Holm "
            f"{g(r['p_holm'], '.3g')}, n={r['n_paired']}{extra}"
        )


def _margins(items: list[str]) -> dict[str, float]:
    margins = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            margins[key.strip()] = float(value)
        except ValueError:
            raise EvalHarnessError(f"--margin takes TASK/METRIC=DELTA, got '{item}'") from None
        if not sep:
            raise EvalHarnessError(f"--margin takes TASK/METRIC=DELTA, got '{item}'")
    return margins


@app.command()
def history(
    model: Annotated[
        str | None, typer.Option(help="a model name; its lineage: it and checkpoints trained from it")
    ] = None,
    task: str | None = None,
    metric: str | None = None,
    plot: Annotated[Path | None, typer.Option(help="write a trend plot (PNG and SVG) per series")] = None,
    max_skipped: Annotated[
        float, typer.Option(help="largest share of failed or unparsed judgments a measured point may have")
    ] = MAX_SKIPPED_SHARE,
    json_out: Annotated[bool, typer.Option("--json")] = False,
    results_dir: _RESULTS = None,
    drift_check: Annotated[
        bool, typer.Option(help="a drop across runs of an API judge: check the judge's drift")
    ] = True,
    drift_sample: Annotated[int, typer.Option(help="items of the older run asked again in the drift check")] = 50,
) -> None:
    """Every indexed score of a lineage over training step and time; drops from the previous point tested.
    Incomparable scores (task version, judge, baseline, decoding) are separate series; points that are not
    measurements are marked with their reason and not tested."""
    from evalharness.analysis.compare import history as query
    from evalharness.analysis.text import render_grid

    check_max_skipped(max_skipped)
    points = query(model, task=task, metric=metric, results_dir=results_dir, max_skipped=max_skipped, log=_err)
    if not points:
        raise EvalHarnessError("no score matches" + (f" model {model!r}" if model else ""))
    series: dict[str, list[dict]] = {}
    for p in points:
        series.setdefault(p["series"], []).append(p)
    _mark_series(series, plot, drift_sample if drift_check else None)
    training = _training_of(points, results_dir)
    for p in points:  # a checkpoint's point carries its training run's own logged metrics at that step
        row = next((r for r in training.get(p["model"].split("@")[0], []) if r["step"] == p["step"]), None)
        if row is not None:
            p["training"] = {k: row[k] for k in ("loss", "reward_accuracy", "kl")}
    if json_out:
        typer.echo(json.dumps(points, indent=2, default=str))
        return
    for name, pts in series.items():
        typer.echo(name)
        typer.echo(
            render_grid(
                ["model", "step", "value", "95% CI", "run", ""], [_history_row(p) for p in pts], left=2, width=240
            ),
            nl=False,
        )
    for run, rows in training.items():
        _print_training(run, rows, {p["step"] for p in points if p["model"].split("@")[0] == run})


def _mark_series(series: dict[str, list[dict]], plot: Path | None, drift_sample: int | None) -> None:
    """Each series' drops (with a drift check of a drop across runs unless ``drift_sample`` is None), and its plot."""
    from evalharness.analysis.compare import mark_drops
    from evalharness.analysis.plot import plot_history

    used: set[str] = set()
    for name, pts in series.items():
        mark_drops(pts, higher_is_better=pts[-1]["higher_is_better"])
        if drift_sample is not None:
            from evalharness.workflows.drift import history_drift

            history_drift(pts, sample=drift_sample, log=_err)
        if plot is not None:
            stem = f"{plot.name}-{pts[0]['task']}-{pts[0]['metric']}"
            stem += f"-{sum(u.startswith(stem) for u in used) + 1}" if stem in used else ""
            used.add(stem)
            out = plot if len(series) == 1 else plot.with_name(stem)
            files = plot_history(pts, out, title=name)
            for f in files:
                _err(f"trend plot: {f}")
            if not files:
                _err(f"no trend plot for {name}: no measured point")


def _print_training(run: str, rows: list[dict], steps: set[int]) -> None:
    """A training run's own logged metrics at its evaluated steps and its last step."""
    from evalharness.analysis.text import render_grid

    def g(x: object) -> str:
        return "—" if x is None else format(x, ".4g")

    typer.echo(f"training run {run} (its own log)")
    shown = [r for r in rows if r["step"] in steps | {rows[-1]["step"]}]
    cells = [[str(r["step"]), g(r["loss"]), g(r["reward_accuracy"]), g(r["kl"])] for r in shown]
    typer.echo(render_grid(["step", "loss", "reward accuracy", "kl"], cells, left=2, width=240), nl=False)


def _training_of(points: list[dict], results_dir: Path | None) -> dict[str, list[dict]]:
    """The indexed training runs whose checkpoints are among ``points``, with their logged metrics per step."""
    from evalharness.store import train_metrics, train_runs

    names = {p["model"].split("@")[0] for p in points}
    out = {}
    for run in train_runs(results_dir):
        if run.get("run_name") in names:
            rows = train_metrics(run["path"], results_dir)
            if rows:
                out[run["run_name"]] = rows
    return out


def _history_row(p: dict) -> list[str]:
    g = lambda x: "—" if x is None else format(x, ".4g")  # noqa: E731  (None: not computed)
    ci = f"[{g(p['ci_low'])}, {g(p['ci_high'])}]" if p["ci_low"] is not None else ""
    mark = f"DROP p={p['drop_p']:.3g}{' (paired)' if p.get('paired') else ''}" if p.get("drop") else ""
    if p.get("drop_without_drift"):
        mark = f"INCONCLUSIVE: a drop, but the judge drifted (shift {p['judge_drift']['shift']:+.3g})"
    if p.get("not_measured"):
        mark = f"NOT MEASURED: {p['not_measured']}"
    return [p["model"], str(p["step"] if p["step"] is not None else "—"), g(p["value"]), ci, p["run"], mark]


metrics_app = typer.Typer(no_args_is_help=True, help="Recompute official metrics from the official tools' files.")
app.add_typer(metrics_app, name="metrics")


def _metrics(bench: str, file: Path, json_out: bool, save: bool, results_dir: Path | None, **opts: object) -> None:
    from evalharness.analysis.interop import compute, import_run
    from evalharness.analysis.text import print_scores

    metrics, scores = compute(bench, file, **opts)
    if json_out:
        typer.echo(json.dumps(metrics, indent=2, default=str))
    else:
        print_scores(scores, title=f"{bench}: {file}")
    if save:
        _err(f"imported into {import_run(bench, file, metrics, scores, results_dir)}")


_JSON = Annotated[bool, typer.Option("--json", help="print the metrics as JSON")]
_SAVE = Annotated[bool, typer.Option("--save", help="import the scores into the results store")]


@metrics_app.command("alpaca-eval")
def metrics_alpaca_eval(
    file: Annotated[Path, typer.Argument(help="official annotations.json")],
    model: Annotated[str | None, typer.Option(help="generator_2 to select when the file holds several")] = None,
    lc_support_dir: Annotated[
        Path | None, typer.Option(help="folder with instruction_difficulty.csv and df_gamed.csv")
    ] = None,
    eval_set: Annotated[Path | None, typer.Option(help="eval set to check instructions against")] = None,
    model_outputs: Annotated[Path | None, typer.Option(help="model_outputs.json (avg_length as official)")] = None,
    lc_bootstrap_rounds: int = 0,
    json_out: _JSON = False,
    save: _SAVE = False,
    results_dir: _RESULTS = None,
) -> None:
    """AlpacaEval 2: win rate, SE, counts, discrete win rate, avg length (and LC with support files)."""
    _metrics(
        "alpaca-eval",
        file,
        json_out,
        save,
        results_dir,
        model=model,
        lc_support_dir=lc_support_dir,
        eval_set=eval_set,
        model_outputs=model_outputs,
        lc_bootstrap_rounds=lc_bootstrap_rounds,
    )


@metrics_app.command("arena-hard")
def metrics_arena_hard(
    file: Annotated[Path, typer.Argument(help="battles JSONL, judgment JSONL, or a judgment folder")],
    baseline: Annotated[
        str | None, typer.Option(help="default: the one the judgment rows record, else gpt-4-0314")
    ] = None,
    bootstrap_rounds: int = 100,
    seed: int = 42,
    bootstrap_unit: Annotated[str, typer.Option(help="battle (official) or question")] = "battle",
    style_control: bool = False,
    answers: Annotated[list[Path] | None, typer.Option(help="answer files with style metadata (style control)")] = None,
    json_out: _JSON = False,
    save: _SAVE = False,
    results_dir: _RESULTS = None,
) -> None:
    """Arena-Hard: Bradley-Terry score vs the baseline with bootstrap CI (optionally style-controlled)."""
    _metrics(
        "arena-hard",
        file,
        json_out,
        save,
        results_dir,
        baseline=baseline,
        bootstrap_rounds=bootstrap_rounds,
        seed=seed,
        bootstrap_unit=bootstrap_unit,
        style_control=style_control,
        answers=answers or None,
    )


@metrics_app.command("mt-bench")
def metrics_mt_bench(
    file: Annotated[Path, typer.Argument(help="official single-grading judgment JSONL (or folder)")],
    model: str | None = None,
    json_out: _JSON = False,
    save: _SAVE = False,
    results_dir: _RESULTS = None,
) -> None:
    """MT-Bench: per-turn and overall 1-10 scores; unparsed ratings counted, not scored."""
    _metrics("mt-bench", file, json_out, save, results_dir, model=model)


def main() -> None:
    try:
        app()
    except EvalHarnessError as e:
        _err(f"error: {e}")
        sys.exit(getattr(e, "exit_code", 2))  # 3: a run whose judging failed (runner.JudgingFailed)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _err(
            f"error: no space left on the device of {e.filename or 'the results folder'}; records written so far "
            "are kept: free space and run the same command again to resume"
        )
        sys.exit(2)
    except sqlite3.OperationalError as e:
        if "full" not in str(e):
            raise
        _err(f"error: the results index or a cache: {e}; free space and run the same command again to resume")
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:  # typer turns Ctrl-C inside a command into exit 130 itself
            _interrupted()
        raise
    except KeyboardInterrupt:
        _interrupted()
        sys.exit(130)


def _interrupted() -> None:
    import shlex

    _err(f"interrupted; records written so far are kept. Resume with: evalharness {shlex.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
