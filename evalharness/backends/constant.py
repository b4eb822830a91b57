"""A model that answers every request with one fixed text: the ``null`` control of a run (a benchmark's floor).

It loads nothing and tokenizes nothing; the judge sees exactly ``text``. Its ``model_id`` hashes the text, so a
changed answer is a different model to every cache and record key.
"""

from __future__ import annotations

import hashlib

from evalharness.core.records import Generation, GenRequest, ScoreRequest, SeqLogprobs


class ConstantBackend:
    """Every sample of every request is ``text``."""

    name = "constant"
    tokenizer = None

    def __init__(self, text: str) -> None:
        self.text = text
        self.model_id = f"constant:{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        return [Generation(r.id, si, self.text, meta={"n_tokens": 0}) for r in requests for si in range(r.params.n)]

    def logprobs(self, requests: list[ScoreRequest]) -> list[SeqLogprobs]:
        raise NotImplementedError("a constant answer has no log-probabilities: the null control runs judged tasks only")
