"""A fake judge with known noise, for checking judge-reliability figures against theory.

``FlipJudge`` is a ``FakeOpenAI`` responder. Each request gets the judge's "true" verdict, or, with
probability ``p`` (a seeded draw per request, so repeated identical requests are independent), the other one:

- Arena-Hard: the true verdict prefers the policy on even-numbered questions (``Question N``), the baseline on
  odd ones; a flip prefers the other answer. The baseline's answers are recognised by ``baseline_mark``.
- MT-Bench: the true rating is a fixed function of the judge prompt (3 to 8); a flip answers 11 minus it.
- AlpacaEval: the true verdict prefers the output shown as ``m`` (probability 0.8); a flip prefers ``M``.

Two independent judgments of one item then agree with probability (1 - p)^2 + p^2, and, with the true
verdicts balanced, Cohen's kappa of two judgments is (1 - 2p)^2. ``bias`` changes Arena-Hard's truth (a judge whose
behaviour changed): with probability ``bias`` > 0 the policy wins on an odd question too, with probability
``-bias`` > 0 it loses on an even one. With ``concurrency: 1`` the draws are deterministic.
"""

from __future__ import annotations

import math
import random
import re
import threading
import zlib
from typing import Any

from evalharness.testing.fake_openai import Item, Reply, request_text

_QUESTION = re.compile(r"Question (\d+)")
_ANSWER_A = re.compile(r"<\|The Start of Assistant A's Answer\|>\n(.*?)\n<\|The End of Assistant A's Answer\|>", re.S)


class FlipJudge:
    """A seeded responder whose verdict flips with probability ``p`` (see the module docstring)."""

    def __init__(self, p: float, *, seed: int = 0, baseline_mark: str = "BASELINE", bias: float = 0.0) -> None:
        self.p, self.baseline_mark, self.bias = p, baseline_mark, bias
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests = 0

    def _flip(self) -> tuple[bool, float]:
        with self._lock:
            self.requests += 1
            return self._rng.random() < self.p, self._rng.random()

    def __call__(self, body: dict[str, Any]) -> Item:
        text = request_text(body)
        flip, u = self._flip()
        if "Assistant A" in text:
            found = _QUESTION.search(text)
            policy_better = int(found.group(1)) % 2 == 0 if found else True
            if u < abs(self.bias):
                policy_better = self.bias > 0
            answer_a = _ANSWER_A.search(text)
            a_is_baseline = answer_a is not None and self.baseline_mark in answer_a.group(1)
            a_wins = policy_better != a_is_baseline
            return "My final verdict is: [[A>B]]" if a_wins != flip else "My final verdict is: [[B>A]]"
        if '"model_identifier": "M"' in text:
            m_first = not flip
            p_m = 0.8 if m_first else 0.2
            return Reply("m" if m_first else "M", top_logprobs=[[("m", math.log(p_m)), ("M", math.log(1 - p_m))]])
        rating = 3 + zlib.crc32(text.encode()) % 6
        return f"Rating: [[{11 - rating if flip else rating}]]"
