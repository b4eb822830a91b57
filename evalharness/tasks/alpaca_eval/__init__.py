"""AlpacaEval 2 in one folder: the task (``task``), the official metric (``metric``), its paired statistics."""

from evalharness.tasks.alpaca_eval.task import DISPLAY, TASK_CLASS, paired

__all__ = ["DISPLAY", "TASK_CLASS", "paired"]
