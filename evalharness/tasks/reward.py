"""A classifier reward on sampled continuations: ``judge`` is sentiment, toxicity, hf:MODEL[:LABEL] or rm:MODEL.

The DPO and ODPO papers' controlled-generation rewards: the policy continues each prompt (``n``
samples at the run's decoding), a classifier (or a reward model, which reads the prompt too) scores
each sample, and the score is the mean over prompts of the per-prompt mean. The response length in tokens (EOS included) is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from evalharness.core.records import Generation, Score, Verdict
from evalharness.judges import get_judge
from evalharness.tasks.base import ModelRecords, Pending, Session
from evalharness.tasks.prompted import PromptSetTask, paired_samples, prompt_means


@dataclass
class Config:
    prompts: str  # JSONL with id and prompt or messages
    judge: str = "sentiment"  # sentiment | toxicity | hf:MODEL[:LABEL] | rm:MODEL[?options]


class RewardTask(PromptSetTask):
    Config: ClassVar[type] = Config
    VERSION = "1"

    def setup(self) -> None:
        super().setup()
        self.classifier: Any = get_judge(self.cfg.judge)

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "judge": [self.classifier.judge_id, self.classifier.judge_version]}

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        gens = [Generation(p.item_id, p.sample_index, p.payload.text) for p in pending]
        version = self.judge_version(self.classifier.judge_version)
        verdicts = self.classifier.judge(gens, prompts={it.id: it for it in self.items})
        return [
            replace(v, key=p.key, judge_version=version, meta={**v.meta, "n_tokens": p.payload.n_tokens})
            for p, v in zip(pending, verdicts)
        ]

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        c = self.classifier
        values, skipped = self.by_prompt(session, verdicts)
        reward = self.clustered(
            session,
            c.metric,
            values,
            skipped,
            judge_id=c.judge_id,
            judge_version=self.judge_version(c.judge_version),
            higher_is_better=c.higher_is_better,
        )
        reward.extra["judge_desc"] = c.judge_version  # readable: package version and transform (plot axis labels)
        length = self.clustered(
            session,
            "length",
            self.lengths(session),
            0,
            judge_id="tokens",
            judge_version="response tokens incl. EOS",
            higher_is_better=None,
        )
        return [reward, length]


def _value(metric: str) -> Any:
    """A verdict's number for ``metric``: the reward, or the response's length in tokens."""
    return (lambda v: v.meta.get("n_tokens")) if metric == "length" else (lambda v: v.value)


def paired(metric: str, a: ModelRecords, b: ModelRecords, **_: Any) -> Any:
    """The reward: per-prompt difference of sample means; ``length``: the same over response tokens."""
    return paired_samples(a, b, _value(metric))


def unit_values(metric: str, records: ModelRecords) -> dict[str, float]:
    """Per-prompt sample means (the score is their mean): the method-level statistics' per-item values."""
    return prompt_means(records, _value(metric))


TASK_CLASS = RewardTask
