"""Sentiment reward (VADER, (compound + 1) / 2): the DPO paper's controlled-sentiment task. See ``reward``."""

from __future__ import annotations

from dataclasses import dataclass

from evalharness.tasks.reward import RewardTask, paired, unit_values


@dataclass
class Config:
    prompts: str  # JSONL with id and prompt or messages
    judge: str = "sentiment"


class SentimentTask(RewardTask):
    Config = Config


TASK_CLASS = SentimentTask

__all__ = ["TASK_CLASS", "Config", "paired", "unit_values"]  # the reward task's, found by task name
