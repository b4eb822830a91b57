"""evalharness: evaluate preference-optimized checkpoints end to end.

The library's entry points, imported on first use so that ``import evalharness`` stays light:

    from evalharness import load_spec, run_spec, run, train, resolve, build_table, regress

The packages below are layers that import only downward (docs/architecture.md):
``cli → workflows → analysis | pipeline → tasks → train → judges → backends → trackers → store → core``.
"""

from __future__ import annotations

import importlib
from typing import Any

_ENTRY_POINTS = {
    "load_spec": "evalharness.pipeline.spec",
    "run": "evalharness.pipeline.runner",
    "run_spec": "evalharness.pipeline.runner",
    "plan_from_spec": "evalharness.pipeline.runner",
    "RunPlan": "evalharness.pipeline.runner",
    "resolve": "evalharness.analysis.compare",
    "train": "evalharness.training.trainer",
    "build_table": "evalharness.analysis.compare",
    "regress": "evalharness.analysis.compare",
}

__all__ = sorted(_ENTRY_POINTS)


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    raise AttributeError(f"module 'evalharness' has no attribute {name!r}")
