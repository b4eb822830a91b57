"""Judges by name. ``sentiment``, ``toxicity``, ``hf:MODEL[:LABEL]``, ``rm:MODEL[?options]`` (a reward model on
prompt and response, evalharness.judges.reward_model); ``kl`` is measured by evalharness.judges.kl.

A judge has ``judge(generations, prompts=None) -> list[Verdict]``; ``prompts`` maps a generation's id to its
``PromptItem``: a text judge ignores it, a reward model needs it."""

from __future__ import annotations

from typing import Any

from evalharness.core.errors import EvalHarnessError

CLASSIFIER_JUDGES = ("sentiment", "toxicity")


def get_judge(spec: str) -> Any:
    """A judge from its spec; ``hf:MODEL[:LABEL]`` loads a Hugging Face classifier, ``rm:MODEL`` a reward model."""
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
    if spec.startswith("rm:"):
        from evalharness.judges.reward_model import reward_model_judge

        return reward_model_judge(spec)
    raise EvalHarnessError(f"unknown judge '{spec}'; known: sentiment, toxicity, kl, hf:MODEL[:LABEL], rm:MODEL")
