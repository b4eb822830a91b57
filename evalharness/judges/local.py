"""A chat judge on a local transformers model: the JudgeClient interface, fully offline.

A 135M model asked for a free-text judgment rarely writes a parsable verdict (Arena-Hard's
``[[A>B]]``, MT-Bench's ``[[7]]``). So where a request carries its benchmark's label space
(``ChatRequest.choices``), this judge answers in it: it renders the judge prompt with the model's chat
template, starts the assistant turn with ``choice_prefix``, and scores every allowed continuation
by its summed log-probability, as AlpacaEval's weighted annotator reads ``m``/``M`` from log-probs
and G-Eval reads a rating distribution. The result carries every label's log-prob
(``choice_logprobs``) and the text of the most likely one; tasks decide how to read them (argmax
label, expected rating). The judge version records the protocol (``label-logprobs``), so these
verdicts never share a column with a generating judge's. Meant for demos and tests.
"""

from __future__ import annotations

import math
from typing import Any

from evalharness.backends.http import ChatRequest, ChatResult
from evalharness.core.errors import EvalHarnessError
from evalharness.core.models import resolve
from evalharness.core.prompts import PromptItem
from evalharness.core.records import GenRequest, SamplingParams


class LocalChatJudge:
    """``complete(list[ChatRequest]) -> list[ChatResult]`` backed by an in-process model (loaded on first use)."""

    protocol = "label-logprobs"

    def __init__(
        self, model: str, *, dtype: str = "float32", batch_size: int | str = "auto", progress: bool = False
    ) -> None:
        self.ref = resolve(model)
        self.model_id = f"{self.ref.spec}@{self.ref.revision}"
        self.dtype, self.batch_size, self.progress = dtype, batch_size, progress
        self._backend: Any = None
        self.usage: dict[str, Any] = {"items": 0, "requests": 0, "failures": 0}

    @property
    def backend(self) -> Any:
        if self._backend is None:
            from evalharness.backends.hf import HFBackend

            self._backend = HFBackend(self.ref, dtype=self.dtype, batch_size=self.batch_size, progress=self.progress)
        return self._backend

    def complete(self, requests: list[ChatRequest], progress: bool = False) -> list[ChatResult]:
        self.usage["items"] += len(requests)
        self.usage["requests"] += len(requests)
        out: dict[int, ChatResult] = {}
        labelled = [i for i, r in enumerate(requests) if r.choices]
        free = [i for i, r in enumerate(requests) if not r.choices]
        for i, res in zip(labelled, self._score_labels([requests[i] for i in labelled])):
            out[i] = res
        for i, res in zip(free, self._generate([requests[i] for i in free])):
            out[i] = res
        return [out[i] for i in range(len(requests))]

    def _generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        if not requests:
            return []
        gen_reqs = [
            GenRequest(
                r.id,
                messages=r.messages,
                params=SamplingParams(
                    temperature=r.temperature,
                    top_p=r.top_p,
                    max_new_tokens=r.max_tokens,
                    stop=tuple(r.stop),
                    n=1,
                    seed=r.seed or 0,
                    top_logprobs=(r.top_logprobs or 0) if r.logprobs else 0,
                ),
            )
            for r in requests
        ]
        out = []
        for r, g in zip(requests, self.backend.generate(gen_reqs)):
            out.append(
                ChatResult(
                    r.id,
                    "ok",
                    g.text,
                    [g.text],
                    g.finish_reason,
                    top_logprobs=g.meta.get("top_logprobs"),
                    usage={"prompt_tokens": len(g.prompt_ids or []), "completion_tokens": len(g.token_ids or [])},
                )
            )
        return out

    def _score_labels(self, requests: list[ChatRequest]) -> list[ChatResult]:
        from evalharness.backends.hf import choice_logprobs

        b = self.backend
        tok = b.tokenizer
        out = []
        for r in requests:
            item = PromptItem(r.id, messages=tuple((m["role"], m["content"]) for m in r.messages))
            prompt = b.render(item) + (
                tok(r.choice_prefix, add_special_tokens=False)["input_ids"] if r.choice_prefix else []
            )
            ids = {c: tuple(tok(c, add_special_tokens=False)["input_ids"]) for c in r.choices}
            if len(set(ids.values())) < len(ids):  # e.g. every label an <unk>: its verdicts would mean nothing
                raise EvalHarnessError(
                    f"local judge {self.model_id}: its tokenizer cannot tell the labels "
                    f"{list(r.choices)} apart; use a judge whose vocabulary has them"
                )
            got = dict(zip(r.choices, choice_logprobs(b.model, prompt, [list(ids[c]) for c in r.choices], b.pad_id)))
            best = max(got, key=lambda c: got[c])
            out.append(
                ChatResult(
                    r.id,
                    "ok",
                    r.choice_prefix + best,
                    [r.choice_prefix + best],
                    "stop",
                    choice_logprobs=got,
                    usage={"prompt_tokens": len(prompt)},
                )
            )
        return out


def choice_probabilities(logprobs: dict[str, float]) -> dict[str, float]:
    """Normalised probabilities over the allowed labels (softmax of their summed log-probs)."""
    top = max(logprobs.values())
    z = sum(math.exp(v - top) for v in logprobs.values())
    return {k: math.exp(v - top) / z for k, v in logprobs.items()}
