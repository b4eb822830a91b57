"""Run specs: plain YAML data, validated strictly (unknown keys are errors that name file, line, field).

    name: dpo-vs-simpo
    models: [smollm2-135m-instruct, {name: dpo-24, ref: results/train/quickstart-sentiment/dpo-beta0.1-s0/checkpoint-24}]
    # or  from_sweep: results/train/quickstart-sentiment   (its base, named sft, and every checkpoint)
    # or  model: ./checkpoints/simpo  (one model; model_name: names it)
    backend: hf                       # a registered backend: hf | vllm | openai (backend_options: base_url,
                                      # api_key_env) | fake; see evalharness.backends
    reference: smollm2-135m-instruct  # for kl
    generation: {max_new_tokens: 1024, temperature: 0.0, seed: 0}
    judge: {type: openai, model: gpt-4-1106-preview, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
    # or judge: [{model: gpt-4.1, ...}, {model: gemini-2.5-pro, ...}] with ensemble: mean | vote | arena_hard_v2
    controls: [null, longest]         # the floor (a constant-answer model) and the length confound (tasks.controls)
    tasks:
      sentiment: {prompts: ./sentiment/prompts_heldout.jsonl, generation: {max_new_tokens: 40, temperature: 1.0}}
      kl: {prompts: ./sentiment/prompts_heldout.jsonl}
      alpaca_eval: {limit: null}      # keys are the task module's Config fields
      arena_hard: {data_dir: ../benchdata}   # data_dir: the benchmark data root, laid out like shared/benchdata
                                             # (alpaca_eval/, arena_hard/, mt_bench/); default: pinned downloads
      helpfulness: {task: reward, judge: "hf:./my-reward-model", prompts: ./p.jsonl}   # task: picks the module
      summarize: {task: alpaca_eval, generation: {temperature: [0.0, 0.5, 1.0]}}   # one task per temperature:
                                                                                  # summarize@t0, @t0.5, @t1
    report_to: [wandb, mlflow]        # experiment trackers (evalharness/trackers.py); default none

Task paths written ``./x`` or ``../x`` are relative to the spec file. ``generation:`` holds the fields of
``evalharness.core.decoding.Decoding`` (one temperature); a temperature sweep goes under a task's ``generation:``.
Before anything runs, ``evalharness.pipeline.preflight`` checks the backend, every decoding value, API key variables,
that the judge's endpoint answers, and every ``data_dir``: a bad spec costs nothing and writes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict

from evalharness.core import decoding
from evalharness.core.errors import InputError, read_utf8
from evalharness.core.records import temperature_task
from evalharness.pipeline import presets
from evalharness.trackers import ReportTo


class Strict(BaseModel):
    """A spec section: unknown keys are errors (pydantic ``extra="forbid"``)."""

    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=BaseModel)


def _decoding_model() -> type[BaseModel]:
    """The spec's ``generation:`` section: ``evalharness.core.decoding.Decoding``'s fields, defaults and ranges."""
    types = {"int": int, "float": float}
    fields: dict[str, Any] = {
        f.name: (
            types[str(f.type)],
            pydantic.Field(f.default, description=f.metadata["help"], **decoding.bounds(f.name)),
        )
        for f in decoding.FIELDS
    }
    return pydantic.create_model("GenerationSpec", __base__=Strict, **fields)


if TYPE_CHECKING:

    class GenerationSpec(Strict):
        """What type checkers see of the model ``_decoding_model`` builds: Decoding's fields, each read as Any."""

        def __getattr__(self, name: str) -> Any: ...

else:
    GenerationSpec = _decoding_model()


def decoding_field(name: str, preset: decoding.Decoding) -> Any:
    """A pydantic field for decoding field ``name``, its default taken from ``preset`` and its range from
    ``Decoding`` (a sweep's ``eval:`` and ``on_policy:`` sections)."""
    return pydantic.Field(getattr(preset, name), **decoding.bounds(name))


def _one_temperature(value: Any) -> Any:
    """A temperature list at the run's level is a sweep written in the wrong place: say where sweeps go."""
    if isinstance(value, dict) and isinstance(value.get("temperature"), list):
        raise ValueError(
            "the run's generation takes one temperature; a temperature sweep goes under a task's "
            "generation (tasks: {NAME: {generation: {temperature: [0.0, 1.0]}}})"
        )
    return value


def _known_backend(name: str) -> str:
    from evalharness.backends import backend_names

    if name not in backend_names():
        raise ValueError(f"unknown backend '{name}'; available: {', '.join(backend_names())}")
    return name


class JudgeSpec(Strict):
    type: Literal["openai", "local"] = "openai"
    model: str
    base_url: str | None = None  # openai: the endpoint (OpenAI, vLLM serve, any compatible server)
    api_key_env: str | None = None  # the NAME of the variable holding the key; the key never lands in results
    concurrency: int = 16
    max_retries: int = 6
    timeout_s: float = 120.0
    prices: dict[str, tuple[float, float]] | None = None  # model -> USD per 1M (prompt, completion) tokens
    cache: bool = True  # the response cache ($EVALHARNESS_CACHE/responses); failures are never cached
    demo: bool = False  # label every score as coming from a demo judge
    dtype: str = "float32"  # local judges
    preset: str | None = None  # an official judge by name (pipeline/presets.py): model, endpoint, key, task settings
    # The run's judge budget, across its resumes (pipeline.budget, docs/budget.md): USD and HTTP requests.
    max_cost: float | None = pydantic.Field(None, gt=0)
    max_requests: int | None = pydantic.Field(None, gt=0)
    # The OpenAI Batch API (backends.batch): half price, results within the completion window.
    batch: bool = False
    batch_poll_s: float = pydantic.Field(30.0, gt=0)
    batch_completion_window: str = "24h"

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("preset") is None:
            return data
        try:
            return presets.judge_fields(data)
        except InputError as e:
            raise ValueError(e.reason) from None

    @pydantic.model_validator(mode="after")
    def _endpoint_only(self) -> JudgeSpec:
        if self.type == "local" and (self.batch or self.max_cost is not None or self.max_requests is not None):
            raise ValueError("batch, max_cost and max_requests are for an openai judge; a local judge is not billed")
        return self


def _inside_results(name: str | None) -> str | None:
    """A model name given in a spec names folders and files under the results root: refuse ``..`` segments and
    absolute paths outright (a name derived from a model path is made a file name instead: tasks.base.file_name)."""
    if name is None:
        return None
    parts = name.replace("\\", "/").split("/")
    if not name.strip() or name.startswith(("/", "~")) or ".." in parts or "\x00" in name:
        raise ValueError(
            f"model name '{name}' would name a path outside the results root "
            "(no '..' segments, absolute paths or empty names)"
        )
    return name


class ModelEntry(Strict):
    name: str
    ref: str

    _name_inside = pydantic.field_validator("name")(_inside_results)


class RunSpec(Strict):
    name: str
    models: list[str | ModelEntry] | None = None
    from_sweep: str | None = None  # a training sweep's folder (or its name under RESULTS/train)
    model: str | None = None  # one model (the earlier spec form)
    model_name: str | None = None  # how that one model is named in tables and official-format files

    _names_inside = pydantic.field_validator("model_name")(_inside_results)
    _backend_known = pydantic.field_validator("backend")(_known_backend)
    _generation_one = pydantic.field_validator("generation", mode="before")(_one_temperature)
    _null_control = pydantic.field_validator("controls", mode="before")(
        lambda v: ["null" if c is None else c for c in v] if isinstance(v, list) else v  # YAML reads null as None
    )
    reference: str | None = None  # the SFT model, for kl
    backend: str = "hf"  # a name registered in evalharness.backends (hf, vllm, openai, fake, ...)
    backend_options: dict[str, Any] = {}
    generation: GenerationSpec = GenerationSpec()
    judge: JudgeSpec | list[JudgeSpec] | None = None  # a list: an ensemble (evalharness.tasks.ensemble)
    ensemble: Literal["mean", "vote", "arena_hard_v2"] | None = None  # how a list of judges is combined
    controls: list[Literal["null", "longest"]] = []  # the benchmark's floor and length ruler (tasks.controls)
    null_answer: str | None = None  # the null control's constant answer; None: controls.NULL_ANSWER
    tasks: dict[str, dict[str, Any] | None]
    report_to: ReportTo = []  # experiment trackers the finished run is sent to: wandb, mlflow

    def identity(self) -> str:
        """Hash of the spec as written (the run id is a hash of what it resolves to; see runner.run)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True, default=str).encode()).hexdigest()[:10]


def _lines(
    node: yaml.Node, path: tuple[Any, ...] = (), out: dict[tuple[Any, ...], int] | None = None
) -> dict[tuple[Any, ...], int]:
    """Map each key path in a YAML document to its 1-based line."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            out[path + (k.value,)] = k.start_mark.line + 1
            _lines(v, path + (k.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _lines(v, path + (i,), out)
    return out


def line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    """The line of ``loc`` in a spec, or of its nearest parent that has one."""
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return None


def load_yaml_model(path: str | Path, cls: type[M]) -> tuple[M, dict[tuple[Any, ...], int]]:
    """Parse a YAML file into a strict pydantic model; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError("spec file not found", path=str(path))
    text = read_utf8(path)
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except RecursionError:
        raise InputError("malformed YAML: nested too deeply", path=str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(
            f"malformed YAML: {getattr(e, 'problem', e)}", path=str(path), line=mark.line + 1 if mark else None
        ) from e
    if not isinstance(data, dict):
        raise InputError("a spec is a YAML mapping", path=str(path), line=1)
    lines = _lines(node) if node is not None else {}
    try:
        return cls.model_validate(data), lines
    except pydantic.ValidationError as e:
        # A union field (str | ModelEntry) reports one error per branch: the value check's own message says more.
        err = next((x for x in e.errors() if x["type"] == "value_error"), e.errors()[0])
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x[:1].isupper()))  # no union branch names
        raise InputError(err["msg"], path=str(path), line=line_of(lines, loc), field=".".join(map(str, loc))) from e


def check_panel(spec: RunSpec, where: Callable[..., dict[str, Any]]) -> None:
    """A list of judges needs an ensemble rule and distinct judges; a rule needs a list of two or more."""
    panel = spec.judge if isinstance(spec.judge, list) else None
    if panel is not None and (len(panel) < 2 or spec.ensemble is None):
        raise InputError(
            "a list of judges needs two or more judges and ensemble: mean | vote | arena_hard_v2",
            **where("judge" if spec.ensemble is None or len(panel) < 2 else "ensemble"),
        )
    if panel is None and spec.ensemble is not None:
        raise InputError("ensemble combines a list of judges: give judge: [{...}, {...}]", **where("ensemble"))
    names = [j.model for j in panel or []]
    if len(set(names)) != len(names):
        raise InputError("the ensemble's judges must be distinct models", **where("judge"))
    for i, j in enumerate(panel or []):
        for key in ("max_cost", "max_requests", "batch"):
            if getattr(j, key):
                raise InputError(
                    f"{key} is not supported for an ensemble's judges yet: budget or batch one judge at a time",
                    **where("judge", i, key),
                )


def spec_path(spec_file: Path, value: str) -> str:
    """Paths written "./x" or "../x" in a spec are relative to the spec file, so specs travel with their data
    (also a reward-model judge's, ``rm:./x``)."""
    if value.startswith(("rm:./", "rm:../")):
        return "rm:" + spec_path(spec_file, value[3:])
    return str((spec_file.parent / value).resolve()) if value.startswith(("./", "../")) else value


def load_spec(path: str | Path) -> tuple[RunSpec, list[Any]]:
    """The validated spec and its tasks (``TaskSpec``s with each task module's Config object)."""
    path = Path(path)
    spec, lines = load_yaml_model(path, RunSpec)
    where: Callable[..., dict[str, Any]] = lambda *loc: {  # noqa: E731
        "path": str(path),
        "line": line_of(lines, loc),
        "field": ".".join(map(str, loc)),
    }
    judges = spec.judge if isinstance(spec.judge, list) else [spec.judge] if spec.judge else []
    for i, j in enumerate(judges):
        if j.type == "openai" and not j.base_url:
            loc = ("judge", i, "base_url") if isinstance(spec.judge, list) else ("judge", "base_url")
            raise InputError("an openai judge needs base_url", **where(*loc))
    check_panel(spec, where)
    given = [k for k in ("models", "from_sweep", "model") if getattr(spec, k)]
    if len(given) != 1:
        raise InputError(
            "give exactly one of models, from_sweep or model", **where(given[1] if len(given) > 1 else "name")
        )
    for key in ("model", "reference", "from_sweep"):
        if getattr(spec, key):
            setattr(spec, key, spec_path(path, getattr(spec, key)))
    if spec.models:
        spec.models = [
            spec_path(path, m) if isinstance(m, str) else ModelEntry(name=m.name, ref=spec_path(path, m.ref))
            for m in spec.models
        ]
    try:  # each judge's preset in turn; what an ensemble's presets set differently stays each judge's own
        tasks = presets.apply_all([j.preset for j in judges], spec.tasks)
    except InputError as e:
        raise InputError(e.reason, **where(*(e.field or "tasks").split("."))) from None
    return spec, parse_tasks(tasks, path, lines, ("tasks",))


def parse_tasks(
    tasks: dict[str, dict[str, Any] | None], path: Path, lines: dict[tuple[Any, ...], int], at: tuple[Any, ...]
) -> list[Any]:
    """``tasks:`` of a run spec or a sweep's ``eval:``: name -> options (the module's Config fields, plus
    ``task:`` to pick the module when the name is not one, and ``generation:`` to override decoding)."""
    from evalharness.tasks.base import TaskSpec, known_tasks, task_class

    if not tasks:
        raise InputError("list at least one task", path=str(path), line=line_of(lines, at), field=".".join(at))
    out = []
    for name, options in tasks.items():
        options = dict(options or {})
        loc = at + (name,)
        where: Callable[..., dict[str, Any]] = lambda *k: {  # noqa: E731
            "path": str(path),
            "line": line_of(lines, loc + k),  # noqa: B023  (called within its iteration)
            "field": ".".join(map(str, loc + k)),  # noqa: B023
        }
        module = options.pop("task", name)
        if module not in known_tasks():
            raise InputError(
                f"unknown task; known: {', '.join(known_tasks())}", **where(*(("task",) if module != name else ()))
            )
        generations: list[dict[str, Any] | None] = [None]
        names = [name]
        if "generation" in options:
            gen = dict(options.pop("generation") or {})
            temps = gen.pop("temperature", None)
            sweep = isinstance(temps, list)  # a temperature sweep: one task, one column, per temperature
            if sweep and (not temps or len(set(map(str, temps))) != len(temps)):
                raise InputError("a temperature list needs distinct values", **where("generation", "temperature"))
            generations, names = [], []
            for t in temps if sweep else [temps]:
                try:
                    g = GenerationSpec.model_validate({**gen, **({} if t is None else {"temperature": t})})
                except pydantic.ValidationError as e:
                    err = e.errors()[0]
                    raise InputError(err["msg"], **where("generation", *err["loc"])) from e
                generations.append(g.model_dump(exclude_unset=True))
                names.append(temperature_task(name, g.temperature) if sweep else name)
        cls = task_class(module).Config
        fields = {f.name for f in dataclasses.fields(cls)}
        options = {k: spec_path(path, v) if isinstance(v, str) else v for k, v in options.items()}
        for key in options:
            if key not in fields:
                raise InputError(
                    f"unknown key; {module} takes: {', '.join(sorted(fields | {'task', 'generation'}))}", **where(key)
                )
        try:
            config: Any = pydantic.TypeAdapter(cls).validate_python(options)
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            raise InputError(err["msg"], **where(*err["loc"][:1])) from e
        out += [TaskSpec(n, module, config, extra={"generation_overrides": g}) for n, g in zip(names, generations)]
    return out
