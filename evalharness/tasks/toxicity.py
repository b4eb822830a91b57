"""Toxicity (alt-profanity-check's P(offensive); lower is better): the ODPO paper's toxicity control. See ``reward``."""

from __future__ import annotations

from dataclasses import dataclass

from evalharness.tasks.reward import RewardTask, paired, unit_values


@dataclass
class Config:
    prompts: str  # JSONL with id and prompt or messages
    judge: str = "toxicity"


class ToxicityTask(RewardTask):
    Config = Config


TASK_CLASS = ToxicityTask

__all__ = ["TASK_CLASS", "Config", "paired", "unit_values"]  # the reward task's, found by task name
