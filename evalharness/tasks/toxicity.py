"""Toxicity (alt-profanity-check's P(offensive); lower is better): the ODPO paper's toxicity control. See ``reward``."""

from __future__ import annotations

from dataclasses import dataclass

from evalharness.tasks.reward import RewardTask, paired


@dataclass
class Config:
    prompts: str  # JSONL with id and prompt or messages
    judge: str = "toxicity"


class ToxicityTask(RewardTask):
    Config = Config


TASK_CLASS = ToxicityTask

__all__ = ["TASK_CLASS", "Config", "paired"]  # paired: the reward task's comparison, found by task name
