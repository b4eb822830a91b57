"""Named presets for the current official judges: ``judge: {preset: NAME}`` in a run spec.

A preset fixes the judge model, its endpoint and key variable, and the settings the official tool runs that
judge with (each task's Config values), read from the official configs cited in ``source``. The preset's
name is part of the judge's name, so a preset's numbers never share a column with another judge's (the
judge id is in the comparability key), and its settings are part of each task's judge version. Nothing is
sent without the user's key: the key variable is checked in preflight, before any request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from evalharness.core.errors import InputError

OPENAI = "https://api.openai.com/v1"
# Google's OpenAI-compatible Gemini endpoint (arena-hard-auto calls Gemini through Vertex AI instead; the
# model, prompt, temperature and token limit are the official ones, the transport is not).
GEMINI = "https://generativelanguage.googleapis.com/v1beta/openai"


@dataclass(frozen=True)
class Preset:
    """One official judge: model, endpoint, key variable, and the task settings its official tool uses."""

    name: str
    model: str
    base_url: str
    api_key_env: str
    tasks: Mapping[str, Mapping[str, Any]]  # task module -> its Config values under this judge
    source: str  # where each setting is read from (repository@commit:path)
    notes: tuple[str, ...] = field(default=())


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # tatsu-lab/alpaca_eval@cd543a14:src/alpaca_eval/evaluators_configs/weighted_alpaca_eval_gpt4.1/configs.yaml
        # (not in the alpaca-eval 0.6.6 wheel): the weighted_alpaca_eval_gpt4_turbo template and parser, one token,
        # temperature 1, top-5 logprobs; only the model differs. AlpacaEval 2's baseline stays gpt4_1106_preview.
        Preset(
            name="alpaca_eval_gpt4.1",
            model="gpt-4.1-2025-04-14",
            base_url=OPENAI,
            api_key_env="OPENAI_API_KEY",
            tasks={"alpaca_eval": {"judge_temperature": 1.0, "judge_max_tokens": 1, "judge_top_logprobs": 5}},
            source="tatsu-lab/alpaca_eval@cd543a149df8:src/alpaca_eval/evaluators_configs/"
            "weighted_alpaca_eval_gpt4.1/configs.yaml",
        ),
        # lmarena/arena-hard-auto@196f6b82:config/arena-hard-v2.0.yaml (judge_model gpt-4.1, temperature 0.0,
        # max_tokens 16000; gen_judgment.py sets both from this file over api_config.yaml's).
        Preset(
            name="arena_hard_v2_gpt4.1",
            model="gpt-4.1",
            base_url=OPENAI,
            api_key_env="OPENAI_API_KEY",
            tasks={"arena_hard": {"version": "v2.0", "judge_temperature": 0.0, "judge_max_tokens": 16000}},
            source="lmarena/arena-hard-auto@196f6b826783:config/arena-hard-v2.0.yaml",
        ),
        # The same file's commented-out Gemini judge (temperature 1.0, max_tokens 32000) and config/api_config.yaml's
        # gemini-2.5 entry (model gemini-2.5-pro-preview-03-25).
        Preset(
            name="arena_hard_v2_gemini2.5",
            model="gemini-2.5-pro-preview-03-25",
            base_url=GEMINI,
            api_key_env="GEMINI_API_KEY",
            tasks={"arena_hard": {"version": "v2.0", "judge_temperature": 1.0, "judge_max_tokens": 32000}},
            source="lmarena/arena-hard-auto@196f6b826783:config/arena-hard-v2.0.yaml, config/api_config.yaml",
            notes=("served through Google's OpenAI-compatible endpoint; the official tool calls Vertex AI",),
        ),
        # lm-sys/FastChat@0e6d3e4b: gen_judgment.py --judge-model default "gpt-4"; common.run_judge_single calls it
        # at temperature 0 (fixed in the task) and max_tokens 2048.
        Preset(
            name="mt_bench_gpt4",
            model="gpt-4",
            base_url=OPENAI,
            api_key_env="OPENAI_API_KEY",
            tasks={"mt_bench": {"judge_max_tokens": 2048, "parser": "official"}},
            source="lm-sys/FastChat@0e6d3e4beaab:fastchat/llm_judge/gen_judgment.py, common.py",
        ),
    )
}


def get(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an error listing the known ones."""
    if name not in PRESETS:
        raise InputError(f"unknown judge preset '{name}'; known: {', '.join(sorted(PRESETS))}", field="judge.preset")
    return PRESETS[name]


def judge_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """A ``judge:`` mapping with its preset's model, endpoint and key variable filled in.

    ``base_url`` and ``api_key_env`` may be given (a proxy to the same model, a key held in another variable);
    ``model`` may not differ from the preset's, nor ``type`` be other than openai: the preset's name would lie.
    """
    preset = get(str(data["preset"]))
    for key, value in (("model", preset.model), ("type", "openai")):
        if data.get(key) not in (None, value):
            raise InputError(f"judge preset '{preset.name}' fixes {key} to '{value}'", field=f"judge.{key}")
    return {
        **data,
        "type": "openai",
        "model": preset.model,
        "base_url": data.get("base_url") or preset.base_url,
        "api_key_env": data.get("api_key_env") or preset.api_key_env,
    }


def own_settings(preset_names: list[str | None]) -> list[dict[str, dict[str, Any]]]:
    """For a list of judges: per judge, the task settings its preset gives a value no other judge's preset gives
    (task module -> settings), e.g. Arena-Hard v2.0's GPT-4.1 at temperature 0 and Gemini-2.5 at 1. These
    stay each judge's own (``tasks.ensemble.Panel`` applies them to that judge's copy of the task); the
    settings all the presets agree on go into the task itself (``apply``)."""
    found = [get(n) if n else None for n in preset_names]
    out: list[dict[str, dict[str, Any]]] = []
    for preset in found:
        mine: dict[str, dict[str, Any]] = {}
        for module, settings in (preset.tasks if preset else {}).items():
            split = differing(found, module)
            if any(k in split for k in settings):
                mine[module] = {k: v for k, v in settings.items() if k in split}
        out.append(mine)
    return out


def differing(found: list[Preset | None], module: str) -> set[str]:
    """The settings of task ``module`` that the presets ``found`` set to different values."""
    values: dict[str, set[str]] = {}
    for preset in found:
        for key, value in ((preset.tasks.get(module) or {}) if preset else {}).items():
            values.setdefault(key, set()).add(repr(value))
    return {k for k, v in values.items() if len(v) > 1}


def apply_all(
    preset_names: list[str | None], tasks: Mapping[str, Mapping[str, Any] | None]
) -> dict[str, dict[str, Any] | None]:
    """``apply`` for each judge's preset in turn, leaving out the settings the presets set differently (those
    are each judge's own: ``own_settings``); a task that sets one of those itself is an error."""
    found = [get(n) for n in preset_names if n]
    out: dict[str, dict[str, Any] | None] = dict(tasks)  # type: ignore[arg-type]
    for name in preset_names:
        out = apply(name, out, skip=lambda module: differing(list(found), module))
    return out


def apply(
    preset_name: str | None,
    tasks: Mapping[str, Mapping[str, Any] | None],
    skip: Any = lambda module: set(),
) -> dict[str, dict[str, Any] | None]:
    """Each task's options with the preset's settings for its module merged in.

    A task that gives one of those settings another value is an error (field named): the preset would not be
    the official judge any more. A judged task the preset is not for is refused too: its judge would be the
    preset's model under settings no official tool uses.
    """
    out: dict[str, dict[str, Any] | None] = dict(tasks)  # type: ignore[arg-type]
    if preset_name is None:
        return out
    from evalharness.tasks.base import known_tasks, task_class

    preset = get(preset_name)
    for name, options in tasks.items():
        module = str((options or {}).get("task", name))
        if module not in known_tasks():
            continue  # parse_tasks names the unknown task
        settings = preset.tasks.get(module)
        if settings is None:
            if getattr(task_class(module), "needs_judge", False):
                raise InputError(
                    f"judge preset '{preset.name}' is for {', '.join(preset.tasks)}, not {module}",
                    field=f"tasks.{name}",
                )
            continue
        split = skip(module)
        for key, value in settings.items():
            if key in split and key in (options or {}):
                raise InputError(
                    f"the ensemble's presets set {key} differently per judge; leave it out of the task",
                    field=f"tasks.{name}.{key}",
                )
            if key in (options or {}) and (options or {})[key] != value:
                raise InputError(
                    f"judge preset '{preset.name}' sets {key}: {value!r} (from {preset.source})",
                    field=f"tasks.{name}.{key}",
                )
        out[name] = {**(options or {}), **{k: v for k, v in settings.items() if k not in split}}
    return out


def judge_name(model: str, preset_name: str | None) -> str:
    """The judge's name in scores: the model, and the preset that fixed its settings."""
    return f"{model} (preset {preset_name})" if preset_name else model
