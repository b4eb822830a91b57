"""Run specs: plain YAML data, validated strictly (unknown keys are errors that name file, line, field).

    name: alpaca-eval2
    model: ./checkpoints/simpo        # the policy (any model ref)
    backend: hf                       # hf | vllm | openai (backend_options: base_url, api_key_env) | fake
    generation: {max_new_tokens: 1024, temperature: 0.0, seed: 0}
    judge: {type: openai, model: gpt-4-1106-preview, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
    tasks:
      alpaca_eval: {limit: null}      # keys are the task module's Config fields

Task paths written ``./x`` or ``../x`` are relative to the spec file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from pathlib import Path
from typing import Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict

from .errors import InputError

TASKS = ("alpaca_eval", "arena_hard", "mt_bench")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


M = TypeVar("M", bound=BaseModel)


class GenerationSpec(_Strict):
    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


class JudgeSpec(_Strict):
    type: Literal["openai", "local"] = "openai"
    model: str
    base_url: str | None = None  # openai: the endpoint (OpenAI, vLLM serve, any compatible server)
    api_key_env: str | None = None  # the NAME of the variable holding the key; the key never lands in results
    concurrency: int = 16
    max_retries: int = 6
    timeout_s: float = 120.0
    prices: dict[str, tuple[float, float]] | None = None  # model -> USD per 1M (prompt, completion) tokens
    demo: bool = False  # label every score as coming from a demo judge
    dtype: str = "float32"  # local judges


class RunSpec(_Strict):
    name: str
    model: str
    model_name: str | None = None  # how the policy is named in tables and official-format files
    backend: Literal["hf", "vllm", "openai", "fake"] = "hf"
    backend_options: dict[str, Any] = {}
    generation: GenerationSpec = GenerationSpec()
    judge: JudgeSpec | None = None
    tasks: dict[str, dict[str, Any]]

    def identity(self) -> str:
        """Hash of everything that changes a number (the run id suffix)."""
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True, default=str).encode()).hexdigest()[:10]


def _lines(node: yaml.Node, path: tuple[Any, ...] = (), out: dict[tuple[Any, ...], int] | None = None) -> dict[tuple[Any, ...], int]:
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


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int | None:
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return None


def load_yaml_model(path: str | Path, cls: type[M]) -> tuple[M, dict[tuple[Any, ...], int]]:
    """Parse a YAML file into a strict pydantic model; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError("spec file not found", path=str(path))
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"malformed YAML: {getattr(e, 'problem', e)}", path=str(path),
                         line=mark.line + 1 if mark else None) from e
    if not isinstance(data, dict):
        raise InputError("a spec is a YAML mapping", path=str(path), line=1)
    lines = _lines(node) if node is not None else {}
    try:
        return cls.model_validate(data), lines
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        raise InputError(err["msg"], path=str(path), line=_line_of(lines, loc),
                         field=".".join(map(str, loc))) from e


def spec_path(spec_file: Path, value: str) -> str:
    """Paths written "./x" or "../x" in a spec are relative to the spec file, so specs travel with their data."""
    return str((spec_file.parent / value).resolve()) if value.startswith(("./", "../")) else value


def load_spec(path: str | Path) -> tuple[RunSpec, dict[str, Any]]:
    """The validated spec and each task's Config object."""
    path = Path(path)
    spec, lines = load_yaml_model(path, RunSpec)
    if spec.judge and spec.judge.type == "openai" and not spec.judge.base_url:
        raise InputError("an openai judge needs base_url", path=str(path), line=_line_of(lines, ("judge",)),
                         field="judge.base_url")
    configs = {}
    for name, options in spec.tasks.items():
        options = {k: spec_path(path, v) if isinstance(v, str) else v for k, v in (options or {}).items()}
        where = dict(path=str(path), line=_line_of(lines, ("tasks", name)))
        if name not in TASKS:
            raise InputError(f"unknown task; known: {', '.join(TASKS)}", field=f"tasks.{name}", **where)
        cls = importlib.import_module(f"evalharness.tasks.{name}").Config
        fields = {f.name for f in dataclasses.fields(cls)}
        for key in options or {}:
            if key not in fields:
                raise InputError(f"unknown key; {name} takes: {', '.join(sorted(fields))}", path=str(path),
                                 line=_line_of(lines, ("tasks", name, key)), field=f"tasks.{name}.{key}")
        try:
            configs[name] = pydantic.TypeAdapter(cls).validate_python(options or {})
        except pydantic.ValidationError as e:
            err = e.errors()[0]
            key = err["loc"][0] if err["loc"] else None
            raise InputError(err["msg"], path=str(path), line=_line_of(lines, ("tasks", name) + ((key,) if key else ())),
                             field=f"tasks.{name}" + (f".{key}" if key else "")) from e
    return spec, configs
