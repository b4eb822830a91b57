"""Shared by the tasks that sample a prompt file (classifier rewards, KL): items, requests, clustered scores.

Samples of one prompt are not independent (DESIGN: the unit of resampling is the prompt), so a score
is the mean over prompts of the per-prompt sample mean, with a t interval over prompts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from evalharness.core.prompts import PromptItem, file_hash, load_prompts
from evalharness.core.records import GenRecord, GenRequest, Score, Verdict
from evalharness.core.stats import mean_ci
from evalharness.tasks.base import ModelRecords, Pending, Session, Task


class PromptSetTask(Task):
    """A task over a prompt file (``Config.prompts``): one request per prompt, ``n`` samples each."""

    def setup(self) -> None:
        self.items: list[PromptItem] = load_prompts(self.cfg.prompts)
        self.prompts_hash = file_hash(self.cfg.prompts)
        self._requests = [
            GenRequest(it.id, messages=it.chat(), prompt=it.prompt, params=self.params()) for it in self.items
        ]

    def params(self) -> Any:
        return self.generation.params(n=self.generation.n)

    @property
    def task_version(self) -> str:
        # Another prompt set is another benchmark: never one column with this one.
        return f"{self.VERSION};prompts={self.prompts_hash[:12]}"

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "prompts_hash": self.prompts_hash}

    def requests(self, session: Session) -> list[GenRequest]:
        return self._requests

    def samples(self, session: Session) -> list[tuple[GenRequest, int, GenRecord | None]]:
        return [(req, si, g) for req in self._requests for si, g in enumerate(session.samples(req))]

    def judgments(self, session: Session) -> list[Pending]:
        """One judgment per stored sample; a failed generation is never judged (it is counted as skipped)."""
        return [Pending(g.key, req.id, g, si) for req, si, g in self.samples(session) if g is not None]

    def clustered(
        self, session: Session, metric: str, values: dict[str, list[float]], n_skipped: int, **keys: Any
    ) -> Score:
        """Mean over prompts of the per-prompt mean, SE and t-CI over prompts; n counts samples."""
        n = sum(len(v) for v in values.values())
        common = dict(
            task=self.name,
            metric=metric,
            model=session.name,
            task_version=self.task_version,
            decoding=self.generation.decoding(**self.decoding_overrides()),
            **keys,
        )
        if not values:
            return Score(value=None, n=0, n_skipped=n_skipped, **common)
        m, se, lo, hi = mean_ci([float(np.mean(v)) for v in values.values()])
        return Score(
            value=m,
            n=n,
            n_skipped=n_skipped,
            stderr=se,
            ci_low=lo,
            ci_high=hi,
            extra={"n_prompts": len(values), "prompts": str(self.cfg.prompts)},
            **common,
        )

    def decoding_overrides(self) -> dict[str, Any]:
        return {}

    def by_prompt(
        self, session: Session, verdicts: list[Verdict], value: Any = lambda v: v.value
    ) -> tuple[dict[str, list[float]], int]:
        """Per-prompt values of the ok verdicts on this task's current samples, and how many samples have
        no ok verdict (failed generation, failed or missing judgment)."""
        by_key = {v.key: v for v in verdicts}
        values: dict[str, list[float]] = defaultdict(list)
        skipped = 0
        for req, _, g in self.samples(session):
            v = by_key.get(g.key) if g is not None else None
            if v is None or v.status != "ok":
                skipped += 1
            else:
                values[req.id].append(float(value(v)))
        return values, skipped

    def lengths(self, session: Session) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for req, _, g in self.samples(session):
            if g is not None:
                out[req.id].append(g.n_tokens)
        return out


def per_prompt(records: ModelRecords, value: Any = lambda v: v.value) -> dict[str, list[float]]:
    """prompt id -> the values of its ok samples (``value`` reads a verdict)."""
    out: dict[str, list[float]] = defaultdict(list)
    for v in records.verdicts():
        if v.status == "ok":
            x = value(v)
            if x is not None:
                out[v.item_id].append(float(x))
    return out


def prompt_means(records: ModelRecords, value: Any = lambda v: v.value) -> dict[str, float]:
    """prompt id -> the mean of its ok samples' values: the unit a prompt-set score averages over."""
    return {k: sum(v) / len(v) for k, v in per_prompt(records, value).items() if v}


def paired_samples(a: ModelRecords, b: ModelRecords, value: Any = lambda v: v.value) -> Any:
    """Per-prompt difference of sample means, paired t over prompts (evalharness.tasks.paired)."""
    from evalharness.tasks.paired import sample_means_paired

    return sample_means_paired(per_prompt(a, value), per_prompt(b, value))
