"""Backends by name, imported lazily (lm-evaluation-harness style): ``hf``, ``vllm``, ``fake``, ``openai``.

A backend is one module with a class that has ``generate`` and ``logprobs`` (``base.Backend``), and one
``register(...)`` call that names it and declares what it can do (``Capabilities``)::

    register("mine", "mypackage.mine", "MyBackend",
             Capabilities(local_weights=False, scores_responses=False, api_key_option="api_key_env"))

The registry is all the rest of the harness knows about a backend: the spec and the CLI validate a
backend name against it, and the runner and the commands ask its capabilities (resolve a checkpoint
here? give log-probs for KL? which options, with which defaults? a key read from which variable?)
instead of branching on names. Nothing is imported until the backend is used.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from evalharness.backends.base import Backend
from evalharness.core.errors import InputError


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; the harness checks these instead of a backend's name."""

    local_weights: bool  # loads a checkpoint here: model refs are resolved (aliases, folders, LoRA) and hashed
    scores_responses: bool  # gives the log-prob of a given response (KL, preference accuracy)
    # Options a command may fill (its --dtype, its progress bar), with the backend's defaults; None: taken, no
    # default. Defaults here are part of a run's identity, so they change only with the numbers they change.
    options: dict[str, Any] = field(default_factory=dict)
    api_key_option: str | None = None  # the option naming the variable that holds its key (checked before a run)
    url_option: str | None = None  # the option holding its endpoint's URL (checked to answer before a run)


@dataclass(frozen=True)
class _Entry:
    module: str
    cls: str
    capabilities: Capabilities


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, module: str, cls: str, capabilities: Capabilities | None = None) -> None:
    """Make backend ``name`` available: class ``cls`` of ``module`` (imported on first use), with its capabilities
    (default: an endpoint-like backend that loads nothing and cannot score responses)."""
    _REGISTRY[name] = _Entry(module, cls, capabilities or Capabilities(local_weights=False, scores_responses=False))


register(
    "hf",
    "evalharness.backends.hf",
    "HFBackend",
    Capabilities(
        local_weights=True, scores_responses=True, options={"dtype": "float32", "batch_size": "auto", "progress": None}
    ),
)
register(
    "vllm",
    "evalharness.backends.vllm",
    "VLLMBackend",
    Capabilities(local_weights=True, scores_responses=True, options={"dtype": None, "progress": None}),
)
register("fake", "evalharness.backends.fake", "FakeBackend", Capabilities(local_weights=False, scores_responses=True))
register(
    "openai",
    "evalharness.backends.openai",
    "OpenAIBackend",
    Capabilities(
        local_weights=False,
        scores_responses=False,  # chat endpoints return no log-probs of a given response
        options={"progress": None},
        api_key_option="api_key_env",
        url_option="base_url",
    ),
)


def backend_names() -> list[str]:
    """Every registered backend name, sorted."""
    return sorted(_REGISTRY)


def scoring_backends() -> str:
    """The backends that give log-probs of given responses, as a comma list (for messages)."""
    return ", ".join(n for n in backend_names() if _REGISTRY[n].capabilities.scores_responses)


def capabilities(name: str) -> Capabilities:
    """What backend ``name`` can do; an unknown name is an error listing the known ones."""
    if name not in _REGISTRY:
        raise InputError(f"unknown backend '{name}'; available: {', '.join(backend_names())}", field="backend")
    return _REGISTRY[name].capabilities


def backend_options(name: str, given: dict[str, Any] | None = None, **defaults: Any) -> dict[str, Any]:
    """The options backend ``name`` is built with: its registered defaults, then ``defaults`` (a command's own,
    e.g. its ``--dtype``) where the backend takes that option, then ``given`` (the user's, passed as written)."""
    caps = capabilities(name)
    taken = {k: v for k, v in defaults.items() if k in caps.options and v is not None}
    merged = {**caps.options, **taken, **(given or {})}
    return {k: v for k, v in merged.items() if v is not None}


def backend_class(name: str) -> type:
    """The class registered as ``name`` (imported on first use)."""
    capabilities(name)
    entry = _REGISTRY[name]
    return getattr(importlib.import_module(entry.module), entry.cls)


def get_backend(name: str, model: Any, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``model`` (a spec string or ModelRef)."""
    return backend_class(name)(model, **options)


__all__ = [
    "Backend",
    "Capabilities",
    "backend_class",
    "backend_names",
    "backend_options",
    "capabilities",
    "get_backend",
    "register",
    "scoring_backends",
]
