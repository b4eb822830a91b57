"""Backends by name, imported lazily (lm-evaluation-harness style): ``hf``, ``vllm``, ``fake``, ``openai``."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import EvalHarnessError
from .base import Backend

_REGISTRY = {"hf": ("evalharness.backends.hf", "HFBackend"),
             "fake": ("evalharness.backends.fake", "FakeBackend"),
             "openai": ("evalharness.backends.endpoint", "OpenAIBackend"),
             "vllm": ("evalharness.backends.vllm", "VLLMBackend")}


def register(name: str, module: str, cls: str) -> None:
    _REGISTRY[name] = (module, cls)


def backend_class(name: str) -> type:
    """The class registered as ``name`` (imported on first use)."""
    if name not in _REGISTRY:
        raise EvalHarnessError(f"unknown backend '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]


def get_backend(name: str, model: Any, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``model`` (a spec string or ModelRef)."""
    return backend_class(name)(model, **options)  # type: ignore[no-any-return]


__all__ = ["Backend", "backend_class", "get_backend", "register"]
