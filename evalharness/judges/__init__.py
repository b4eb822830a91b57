"""Judges by name. ``sentiment``, ``toxicity``, ``hf:MODEL[:LABEL]``; ``kl`` is measured by evalharness.judges.kl."""

from __future__ import annotations

from typing import Any

from evalharness.core.errors import EvalHarnessError

CLASSIFIER_JUDGES = ("sentiment", "toxicity")


def get_judge(spec: str) -> Any:
    """A text judge from its spec; ``hf:MODEL[:LABEL]`` loads a Hugging Face classifier."""
    from evalharness.judges.classifiers import HFClassifierJudge, SentimentJudge, ToxicityJudge

    if spec == "sentiment":
        return SentimentJudge()
    if spec == "toxicity":
        return ToxicityJudge()
    if spec.startswith("hf:"):
        model, label = spec[3:], None
        head, sep, tail = model.rpartition(":")
        if sep and head and "/" not in tail:
            model, label = head, tail
        return HFClassifierJudge(model, label=label)
    raise EvalHarnessError(f"unknown judge '{spec}'; known: sentiment, toxicity, kl, hf:MODEL[:LABEL]")
