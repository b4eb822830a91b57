"""Judges that need no LLM: VADER sentiment, profanity/toxicity, any HF text classifier.

Each scores a batch of generations and returns one Verdict per generation; an exception on one
text becomes a Verdict with status 'error' (counted, never a number).
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import Generation, Verdict


def _pkg_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "unknown"


class _TextJudge:
    """Shared batching and failure handling; subclasses give ``_score_batch``."""

    judge_id = ""
    judge_version = ""
    metric = ""
    higher_is_better = True

    def _score_batch(self, texts: list[str]) -> list[float]:
        raise NotImplementedError

    def judge(self, generations: list[Generation], prompts: Mapping[str, Any] | None = None) -> list[Verdict]:
        """One Verdict per generation, from its text alone (``prompts`` is for judges that read them)."""
        return judge_each(
            generations, [g.text for g in generations], self._score_batch, self.judge_id, self.judge_version
        )


def judge_each(
    generations: list[Generation],
    inputs: list[Any],
    score: Callable[[list[Any]], list[float]],
    judge_id: str,
    version: str,
) -> list[Verdict]:
    """One Verdict per generation from ``score(inputs)``, batched; if the batch raises, each input is scored alone,
    so one bad input is one failed Verdict (status 'error', counted) and never sinks the batch."""
    try:
        values: list[float | Exception] = list(score(inputs))
    except Exception:
        values = []
        for x in inputs:
            try:
                values.append(score([x])[0])
            except Exception as e:
                values.append(e)
    out = []
    for g, v in zip(generations, values):
        if isinstance(v, Exception):
            out.append(
                Verdict(
                    g.id,
                    judge_id,
                    version,
                    "error",
                    None,
                    sample_index=g.sample_index,
                    error=f"{type(v).__name__}: {v}",
                )
            )
        else:
            out.append(Verdict(g.id, judge_id, version, "ok", float(v), sample_index=g.sample_index))
    return out


class SentimentJudge(_TextJudge):
    """VADER sentiment as a reward in [0, 1]: reward = (compound + 1) / 2.

    VADER's compound score is a normalised sum of lexicon valences in [-1, 1]; the affine map keeps
    its ordering and makes 0.5 neutral, so it reads like a classifier's P(positive).
    """

    metric = "sentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._sia = SentimentIntensityAnalyzer()
        self.judge_id = "vader"
        self.judge_version = f"vadersentiment=={_pkg_version('vadersentiment')};reward=(compound+1)/2"

    def _score_batch(self, texts: list[str]) -> list[float]:
        return [(self._sia.polarity_scores(t)["compound"] + 1.0) / 2.0 for t in texts]


class ToxicityJudge(_TextJudge):
    """Probability of offensive/profane language from alt-profanity-check's linear SVM (in [0, 1])."""

    metric = "toxicity"
    higher_is_better = False

    def __init__(self) -> None:
        import profanity_check

        self._predict: Callable[[list[str]], Any] = profanity_check.predict_prob
        self.judge_id = "alt-profanity-check"
        self.judge_version = f"alt-profanity-check=={_pkg_version('alt-profanity-check')};p(offensive)"

    def _score_batch(self, texts: list[str]) -> list[float]:
        return [float(p) for p in self._predict(texts)]


class HFClassifierJudge(_TextJudge):
    """Any Hugging Face sequence classifier (id or local path).

    The score is sum_label p(label) * label_scores[label]; by default the probability of ``label``
    (or of the last label, which is 'positive'/'toxic' for the usual binary heads).
    """

    def __init__(
        self,
        model: str,
        *,
        label: str | None = None,
        label_scores: dict[str, float] | None = None,
        metric: str | None = None,
        batch_size: int = 16,
        max_length: int = 512,
    ) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(model)
            self._model = AutoModelForSequenceClassification.from_pretrained(model).eval()
        except OSError as e:
            raise EvalHarnessError(f"cannot load classifier '{model}': {str(e).splitlines()[0]}") from e
        id2label = {int(k): str(v) for k, v in self._model.config.id2label.items()}
        names = [id2label[i] for i in range(len(id2label))]
        if label_scores is None:
            target = label if label is not None else names[-1]
            if target not in names:
                raise EvalHarnessError(f"classifier '{model}' has no label '{target}'; labels: {names}")
            label_scores = {target: 1.0}
        unknown = set(label_scores) - set(names)
        if unknown:
            raise EvalHarnessError(f"classifier '{model}' has no label(s) {sorted(unknown)}; labels: {names}")
        self._weights = torch.tensor([label_scores.get(n, 0.0) for n in names])
        self.batch_size, self.max_length = batch_size, max_length
        self.metric = metric or f"p({'+'.join(sorted(label_scores))})"
        rev = hashlib.sha256(json.dumps(sorted(label_scores.items())).encode()).hexdigest()[:8]
        local = Path(model)
        self.judge_id = f"hf-classifier:{model}"
        self.judge_version = f"labels={json.dumps(label_scores, sort_keys=True)}:{rev}" + (
            f";weights={_dir_rev(local)}" if local.is_dir() else ""
        )

    def _score_batch(self, texts: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self._tok(
                    texts[i : i + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                probs = self._model(**enc).logits.float().softmax(-1)
                out += (probs @ self._weights).tolist()
        return out


def _dir_rev(path: Path) -> str:
    from evalharness.core.models import directory_hash

    return directory_hash(path)
