"""Everything that can be checked before a run spends anything: one function that ``run``, ``eval``,
``generate`` and ``train`` all call, so a bad spec or flag costs nothing and writes nothing.

It checks the backend's name against the registry and its options, every decoding value (the run's and
each task's), the variables that hold API keys, that a judge's (or an endpoint backend's) URL answers a
cheap ``GET /models``, and that every ``data_dir`` a task names is a folder. Items themselves (prompt
files, benchmark questions) are read by each task's ``setup``, which the run loop calls before it
creates the run folder.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evalharness.backends import Capabilities, capabilities
from evalharness.backends.http import read_api_key
from evalharness.backends.probe import check_endpoint
from evalharness.core import decoding
from evalharness.core.errors import InputError
from evalharness.pipeline.spec import JudgeSpec


def check_backend(name: str, options: dict[str, Any] | None = None, *, probe: bool = True) -> Capabilities:
    """The capabilities of backend ``name``, after checking its options: batch sizes, its key variable, its URL."""
    caps = capabilities(name)  # an unknown name: the registry's error lists the known ones
    options = options or {}
    for key in ("batch_size", "score_batch_size"):
        value = options.get(key)
        if (
            value is not None
            and value != "auto"
            and (isinstance(value, bool) or not isinstance(value, int) or value < 1)
        ):
            raise InputError(f"{key} must be an integer >= 1 or 'auto', got {value!r}", field=f"backend_options.{key}")
    if caps.api_key_option and options.get(caps.api_key_option):
        _key(options[caps.api_key_option], f"backend_options.{caps.api_key_option}")
    if probe and caps.url_option:
        url = options.get(caps.url_option)
        if not url:
            raise InputError(f"the {name} backend needs {caps.url_option}", field=f"backend_options.{caps.url_option}")
        check_endpoint(url, api_key_env=options.get(caps.api_key_option or ""), field="backend_options")
    return caps


def check_judge(judge: JudgeSpec | None, *, probe: bool = True) -> list[str]:
    """A chat judge's key variable is set and its endpoint answers; returns notes (e.g. an unlisted model)."""
    if judge is None or judge.type != "openai":
        return []
    if judge.api_key_env:
        try:
            _key(judge.api_key_env, "judge.api_key_env")
        except InputError as e:
            if judge.preset is None:
                raise
            raise InputError(f"judge preset '{judge.preset}': {e.reason}; nothing was sent", field=e.field) from None
    if not judge.base_url:
        raise InputError("an openai judge needs base_url", field="judge.base_url")
    if not probe:
        return []
    return check_endpoint(
        judge.base_url, judge.model, api_key_env=judge.api_key_env, timeout_s=min(judge.timeout_s, 10.0), field="judge"
    )


def check_data_dirs(tasks: Iterable[Any]) -> None:
    """Every ``data_dir`` a task's config names is an existing folder (a wrong one is named, not downloaded)."""
    for ts in tasks:
        data_dir = getattr(ts.config, "data_dir", None)
        if data_dir is not None and not Path(data_dir).is_dir():
            raise InputError(
                "data_dir is not a folder (give the benchmark data root, laid out like "
                "shared/benchdata: alpaca_eval/, arena_hard/, mt_bench/)",
                path=str(data_dir),
                field=f"tasks.{ts.name}.data_dir",
            )


def preflight(
    *,
    backend: str,
    backend_options: dict[str, Any] | None = None,
    generation: decoding.Decoding | dict[str, Any] | None = None,
    judge: JudgeSpec | None = None,
    tasks: Iterable[Any] = (),
    probe: bool = True,
) -> list[str]:
    """Check everything a run needs before it starts: backend, decoding (the run's and each task's), judge, data
    folders. Raises ``InputError`` naming the field; returns notes worth showing the user."""
    check_backend(backend, backend_options, probe=probe)
    tasks = list(tasks)
    for values, at in [
        (generation, "generation."),
        *((getattr(ts, "generation", None), f"tasks.{ts.name}.generation.") for ts in tasks),
    ]:
        if values is not None:
            decoding.check(values if isinstance(values, dict) else vars(values), at=at)
    check_data_dirs(tasks)
    return check_judge(judge, probe=probe)


def _key(variable: str, field: str) -> None:
    try:
        read_api_key(variable)
    except InputError as e:
        raise InputError(e.reason, field=field) from None
