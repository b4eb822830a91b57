"""MT-Bench in one folder: the task (``task``), the official metric (``metric``), its paired statistics."""

from evalharness.tasks.mt_bench.task import DISPLAY, TASK_CLASS, paired

__all__ = ["DISPLAY", "TASK_CLASS", "paired"]
