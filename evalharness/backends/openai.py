"""``openai`` backend: a policy served by any OpenAI-compatible chat endpoint (vLLM, OpenAI, ...).

Generation goes through the JudgeClient wrapper (cache, retries, bounded concurrency). Chat
endpoints return no log-probabilities of a given response, so ``logprobs`` is refused: KL needs
the ``hf`` backend. They return no token ids either: a response's length in tokens is the endpoint's
``usage.completion_tokens``, or, from an endpoint that reports no usage, its whitespace-separated words.
"""

from __future__ import annotations

from typing import Any

from evalharness.backends.client import ClientConfig, JudgeClient
from evalharness.backends.http import ChatRequest
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import Generation, GenRequest, ScoreRequest, SeqLogprobs


class OpenAIBackend:
    name = "openai"
    tokenizer: Any = None
    scores_responses = False  # chat endpoints return no log-probs of a given response

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        api_key_env: str | None = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout_s: float = 120.0,
        cache: bool = True,
        progress: bool = False,
        **client_options: Any,
    ) -> None:
        self.client = JudgeClient(
            ClientConfig(
                base_url=base_url,
                model=model,
                api_key_env=api_key_env,
                concurrency=concurrency,
                max_retries=max_retries,
                timeout_s=timeout_s,
                cache=cache,
                **client_options,
            )
        )
        self.model_id = f"{model}@{base_url}"
        self.progress = progress

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        chats, index = [], []
        for r in requests:
            if r.messages is None and r.prompt is None:
                raise EvalHarnessError(
                    f"request '{r.id}': the openai backend needs messages or a prompt, not token ids"
                )
            messages = r.messages or [{"role": "user", "content": r.prompt or ""}]
            p = r.params
            for si in range(p.n):
                chats.append(
                    ChatRequest(
                        r.id,
                        messages,
                        temperature=p.temperature,
                        top_p=p.top_p,
                        max_tokens=p.max_new_tokens,
                        seed=p.seed,
                        stop=tuple(p.stop),
                        sample_index=si,
                    )
                )
                index.append(si)
        out = []
        for si, res in zip(index, self.client.complete(chats, progress=self.progress)):
            if res.status == "ok":
                n_tokens, source = response_tokens(res.text or "", res.usage)
                out.append(
                    Generation(
                        res.id,
                        si,
                        res.text or "",
                        None,
                        None,
                        res.finish_reason or "stop",
                        meta={
                            "usage": res.usage,
                            "n_tokens": n_tokens,
                            "n_tokens_from": source,
                            **({"reasoning": res.reasoning} if res.reasoning else {}),
                        },
                    )
                )
            else:
                out.append(Generation(res.id, si, "", None, None, "error", error=res.error))
        return out

    def logprobs(self, requests: list[ScoreRequest]) -> list[SeqLogprobs]:
        raise EvalHarnessError(
            "the openai backend cannot score given responses (chat endpoints return no "
            "prompt log-probs); use the hf backend for KL"
        )


def response_tokens(text: str, usage: dict[str, int]) -> tuple[int, str]:
    """A response's length in tokens and where it came from: the endpoint's ``completion_tokens`` (each request
    asks one sample, so it is this response's), else the stated fallback, whitespace-separated words."""
    if usage.get("completion_tokens"):
        return int(usage["completion_tokens"]), "usage.completion_tokens"
    return len(text.split()), "whitespace words"
