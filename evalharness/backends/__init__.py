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


def get_backend(name: str, model: Any, **options: Any) -> Backend:
    """Instantiate backend ``name`` for ``model`` (a spec string or ModelRef)."""
    if name not in _REGISTRY:
        raise EvalHarnessError(f"unknown backend '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(model, **options)


__all__ = ["Backend", "get_backend", "register"]
