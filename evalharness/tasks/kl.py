"""KL(policy || reference) in nats, from policy samples at temperature 1: the x axis of the reward/KL frontier.

The task fixes its decoding (temperature 1, no top-p): the estimate is unbiased only for samples from
the policy itself. With the run's decoding at temperature 1 the samples are the reward task's own
(same request, same key), as in the DPO paper, where reward and KL are measured on the same samples.
k1 = log pi(y|x) - log pi_ref(y|x) per sample, and k3 beside it (see evalharness.judges.kl).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from evalharness.core.records import Generation, Score, Verdict
from evalharness.judges.kl import KL_JUDGE_VERSION, check_same_tokenizer, kl_verdicts
from evalharness.tasks.base import Display, ModelRecords, Pending, Session
from evalharness.tasks.prompted import PromptSetTask, paired_samples, prompt_means


@dataclass
class Config:
    prompts: str  # JSONL with id and prompt or messages


class KLTask(PromptSetTask):
    Config = Config
    VERSION = "1"
    needs_reference = True

    def params(self) -> Any:
        return self.generation.params(temperature=1.0, top_p=1.0, n=self.generation.n)

    def decoding_overrides(self) -> dict[str, Any]:
        return {"temperature": 1.0, "top_p": 1.0}

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "reference": self.env.reference_name}

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        assert self.env.reference is not None
        reference = self.env.reference()
        check_same_tokenizer(session.backend, reference)
        gens = [
            Generation(p.item_id, p.sample_index, p.payload.text, p.payload.token_ids, p.payload.prompt_ids)
            for p in pending
        ]
        version = self.judge_version(KL_JUDGE_VERSION)
        return [
            replace(v, key=p.key, judge_id=self._judge_id, judge_version=version)
            for p, v in zip(pending, kl_verdicts(session.backend, reference, gens))
        ]

    @property
    def _reference(self) -> str:
        """Who judges: the reference's identity (content hash or revision), not its name in this run, so one
        reference under two names is one judge. Runs before this stored ``kl:NAME`` and the name as baseline."""
        return str(self.env.reference_id or self.env.reference_name)

    @property
    def _judge_id(self) -> str:
        return f"kl:{self._reference}"

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        keys = {"judge_id": self._judge_id, "baseline": self._reference, "higher_is_better": False}
        k1, skipped = self.by_prompt(session, verdicts)
        k3, _ = self.by_prompt(session, verdicts, value=lambda v: v.meta["k3"])
        out = []
        for metric, values, estimator in (("kl", k1, "k1"), ("kl_k3", k3, "k3")):
            s = self.clustered(
                session, metric, values, skipped, judge_version=self.judge_version(KL_JUDGE_VERSION, estimator), **keys
            )
            s.extra["judge_desc"] = f"{KL_JUDGE_VERSION};{estimator}"  # readable, for axis labels
            s.extra["reference_name"] = self.env.reference_name  # the reference's row in this run's tables
            out.append(s)
        return out


def _value(metric: str) -> Any:
    return (lambda v: v.meta.get("k3")) if metric == "kl_k3" else (lambda v: v.value)


def paired(metric: str, a: ModelRecords, b: ModelRecords, **_: Any) -> Any:
    """Per-prompt difference of the sample means of k1 (``kl``) or k3 (``kl_k3``)."""
    return paired_samples(a, b, _value(metric))


def unit_values(metric: str, records: ModelRecords) -> dict[str, float]:
    """Per-prompt sample means of k1 or k3: the method-level statistics' per-item values."""
    return prompt_means(records, _value(metric))


DISPLAY = Display(labels={"kl": "KL (nats)", "kl_k3": "KL k3 (nats)"}, digits=1)

TASK_CLASS = KLTask
