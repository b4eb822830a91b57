"""A deterministic backend with no model: fast pipeline tests, registered like the real ones."""

from __future__ import annotations

import hashlib
import random

from evalharness.core.records import Generation, GenRequest, ScoreRequest, SeqLogprobs

_WORDS = (
    "the movie was great wonderful boring terrible fine acting plot loved hated and a "
    "bit slow fun moving awful brilliant dull story cast music"
).split()
EOS = 1


class FakeTokenizer:
    """Byte-level ids (offset 2; 0 pad, 1 EOS) with a trivial chat template."""

    chat_template = "{role}: {content}\n ... assistant: "
    pad_token_id, eos_token_id = 0, EOS

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        # Byte ids have no special tokens to add; the keyword is taken as HF tokenizers take it (render_response).
        return {"input_ids": [b + 2 for b in text.encode()]}

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True, tokenize: bool = True
    ) -> list[int]:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self(text)["input_ids"]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - 2 for i in ids if i >= 2).decode(errors="replace")


def _h(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x00".join(map(str, parts)).encode()).digest()[:8], "little")


class FakeBackend:
    """Words drawn from a seeded RNG; log-probs a fixed function of (model, context, token)."""

    name = "fake"

    def __init__(self, model: str = "fake", **_: object) -> None:
        self.model_id = f"fake:{model}"
        self.tokenizer = FakeTokenizer()

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        out = []
        for req in requests:
            ids = (
                req.prompt_ids
                if req.prompt_ids is not None
                else (
                    self.tokenizer.apply_chat_template(req.messages)
                    if req.messages
                    else self.tokenizer(req.prompt or "")["input_ids"]
                )
            )
            p = req.params
            for si in range(p.n):
                rng = random.Random(_h(self.model_id, ids, p.seed, p.temperature, p.top_p, 0 if p.greedy else si))
                text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
                toks = self.tokenizer(text)["input_ids"]
                finish = "stop"
                if len(toks) >= p.max_new_tokens:
                    toks, finish = toks[: p.max_new_tokens], "length"
                    text = self.tokenizer.decode(toks)
                else:
                    toks = toks + [EOS]
                lp = self._score(ids, toks)
                out.append(Generation(req.id, si, text, toks, list(ids), finish, sum(lp)))
        return out

    def _score(self, prompt: list[int], response: list[int]) -> list[float]:
        ctx = _h(self.model_id, prompt)
        return [-(0.5 + (_h(ctx, i, t) % 1000) / 500) for i, t in enumerate(response)]

    def logprobs(self, requests: list[ScoreRequest]) -> list[SeqLogprobs]:
        res = []
        for r in requests:
            lp = self._score(r.prompt_ids, r.response_ids)
            res.append(SeqLogprobs(r.id, float(sum(lp)), len(lp), lp if r.return_token_logprobs else None))
        return res
