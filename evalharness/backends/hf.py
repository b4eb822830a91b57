"""Hugging Face transformers backend: batched, left-padded decoding and exact response scoring.

Decoding is our own short loop over the KV cache rather than ``model.generate`` so that each
sample draws from its own RNG stream seeded by (seed, request id, sample index): a sample does not
change when the batch around it changes, which keeps resumed runs and caches coherent.
"""

from __future__ import annotations

import hashlib
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from evalharness.backends.base import request_prompt_ids
from evalharness.core import threads
from evalharness.core.models import ModelRef, load, resolve, resolve_dtype
from evalharness.core.prompts import PromptItem, render
from evalharness.core.records import Generation, GenRequest, SamplingParams, ScoreRequest, SeqLogprobs


def sample_seed(seed: int, request_id: str, sample_index: int) -> int:
    """The RNG seed of one sample: independent of batch composition and order."""
    digest = hashlib.sha256(f"{seed}\x00{request_id}\x00{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class HFBackend:
    """transformers causal LM on CPU (or whatever device the model is on)."""

    name = "hf"

    def __init__(
        self,
        model: str | ModelRef,
        *,
        dtype: str = "float32",
        batch_size: int | str = "auto",
        score_batch_size: int | str = "auto",
        progress: bool = False,
        memory_budget_gb: float = 2.0,
    ) -> None:
        self.ref = resolve(model) if isinstance(model, str) else model
        dtype = resolve_dtype(dtype)
        self.model, self.tokenizer = load(self.ref, dtype=dtype)
        self.model_id = f"{self.ref.spec}@{self.ref.revision}"
        self.dtype, self.batch_size, self.score_batch_size, self.progress = (
            dtype,
            batch_size,
            score_batch_size,
            progress,
        )
        self.memory_budget = memory_budget_gb * 2**30
        self.fit_threads = True  # threads fitted to the free cores per batch (core/threads.py)
        self._set_stop_ids()

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, model_id: str, *, batch_size: int = 16) -> HFBackend:
        """A backend over a model already in memory, e.g. a trainer's policy sampling its rollouts (PPO).

        Its threads are never fitted to the machine's load: a training run must not depend on it."""
        self = cls.__new__(cls)
        self.ref, self.model, self.tokenizer, self.model_id = None, model, tokenizer, model_id  # type: ignore[assignment]
        self.dtype, self.batch_size, self.score_batch_size, self.progress = "float32", batch_size, batch_size, False
        self.memory_budget = 2.0 * 2**30
        self.fit_threads = False
        self._set_stop_ids()
        return self

    def _set_stop_ids(self) -> None:
        self.pad_id = int(self.tokenizer.pad_token_id)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos_ids = {int(e) for e in eos if e is not None}

    # Batches are sized for throughput, bounded by memory: CPU decoding of a small model is bound by
    # reading the weights once per step, so tokens/s grows with the batch until the KV cache (or the
    # B x R x V logits of scoring) outgrows the budget.
    MAX_BATCH = 64

    def _kv_bytes_per_token(self) -> int:
        c = self.model.config
        heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        width = 2 if self.dtype == "bfloat16" else 4
        return 2 * c.num_hidden_layers * heads * head_dim * width

    def _gen_batch(self, length: int) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        return max(1, min(self.MAX_BATCH, int(self.memory_budget // (self._kv_bytes_per_token() * max(1, length)))))

    def _score_batch(self, response_len: int) -> int:
        if self.score_batch_size != "auto":
            return int(self.score_batch_size)
        per_row = (response_len + 1) * self.model.config.vocab_size * 4 * 3  # logits, log-softmax, grad-free copy
        return max(1, min(self.MAX_BATCH, int(self.memory_budget // per_row)))

    def render(self, item: PromptItem) -> list[int]:
        return render(self.tokenizer, item)

    def _prompt_ids(self, req: GenRequest) -> list[int]:
        return request_prompt_ids(self.tokenizer, req)

    def _threads(self) -> AbstractContextManager[int | None]:
        return threads.fitted() if self.fit_threads else nullcontext()

    # -- generation -------------------------------------------------------------------------
    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        jobs: dict[SamplingParams, list[tuple[int, int, list[int]]]] = {}
        for ri, req in enumerate(requests):
            ids = self._prompt_ids(req)
            for si in range(req.params.n):
                jobs.setdefault(req.params, []).append((ri, si, ids))
        out: dict[tuple[int, int], Generation] = {}
        batches = []
        for params, group in jobs.items():
            group.sort(key=lambda j: -len(j[2]))  # similar lengths together: less padding
            size = self._gen_batch(len(group[0][2]) + params.max_new_tokens)
            batches += [(params, group[i : i + size]) for i in range(0, len(group), size)]
        for params, batch in _progress(batches, self.progress, "generate"):
            seeds = [sample_seed(params.seed, requests[ri].id, si) for ri, si, _ in batch]
            with self._threads():
                decoded = self._decode([j[2] for j in batch], params, seeds)
            for (ri, si, ids), (toks, lps, finish, tops) in zip(batch, decoded):
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                for s in params.stop:
                    if s in text:
                        text = text[: text.index(s)]
                meta: dict[str, Any] = {"token_logprobs": lps}
                if params.top_logprobs:
                    meta["top_logprobs"] = [[(self.tokenizer.decode([t]), lp) for t, lp in step] for step in tops]
                out[(ri, si)] = Generation(requests[ri].id, si, text, toks, ids, finish, float(sum(lps)), meta=meta)
        return [out[(ri, si)] for ri, req in enumerate(requests) for si in range(req.params.n)]

    @torch.inference_mode()
    def _decode(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int]
    ) -> list[tuple[list[int], list[float], str, list[list[tuple[int, float]]]]]:
        B = len(prompts)
        ids, attn, pos = left_pad(prompts, self.pad_id)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
        tokens: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(B)]
        finish = ["length"] * B
        done = torch.zeros(B, dtype=torch.bool)
        for step in range(params.max_new_tokens):
            logits = out.logits[:, -1, :].float()
            logp = torch.log_softmax(logits, -1)
            nxt = _sample(logits, params, gens)
            chosen = logp.gather(1, nxt[:, None])[:, 0].tolist()
            if params.top_logprobs:
                top_v, top_i = logp.topk(params.top_logprobs, -1)
                step_tops = [list(zip(i, v)) for i, v in zip(top_i.tolist(), top_v.tolist())]
            for i, t in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                tokens[i].append(t)
                lps[i].append(chosen[i])
                if params.top_logprobs:
                    tops[i].append(step_tops[i])
                if t in self.eos_ids or (params.stop and self._stopped(tokens[i], params.stop)):
                    done[i] = True
                    finish[i] = "stop"
            if bool(done.all()) or step == params.max_new_tokens - 1:
                break
            nxt = nxt.masked_fill(done, self.pad_id)
            attn = torch.cat([attn, torch.ones((B, 1), dtype=torch.long)], 1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=nxt[:, None],
                attention_mask=attn,
                position_ids=pos,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return list(zip(tokens, lps, finish, tops))

    def _stopped(self, toks: list[int], stop: tuple[str, ...]) -> bool:
        text = self.tokenizer.decode(toks[-64:], skip_special_tokens=True)
        return any(s in text for s in stop)

    # -- scoring ----------------------------------------------------------------------------
    @torch.inference_mode()
    def logprobs(self, requests: list[ScoreRequest]) -> list[SeqLogprobs]:
        order = sorted(
            range(len(requests)), key=lambda i: -(len(requests[i].prompt_ids) + len(requests[i].response_ids))
        )
        out: dict[int, SeqLogprobs] = {}
        size = self._score_batch(max((len(r.response_ids) for r in requests), default=1)) if requests else 1
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        for chunk in _progress(chunks, self.progress, "score"):
            with self._threads():
                scored = self._score([requests[i] for i in chunk])
            for i, res in zip(chunk, scored):
                out[i] = res
        return [out[i] for i in range(len(requests))]

    def _score(self, reqs: list[ScoreRequest]) -> list[SeqLogprobs]:
        tok_lp, _ = response_logprobs(
            self.model, [list(r.prompt_ids) for r in reqs], [list(r.response_ids) for r in reqs], self.pad_id
        )
        R = tok_lp.shape[1]
        results = []
        for i, r in enumerate(reqs):
            n = len(r.response_ids)
            vals = tok_lp[i, R - n :] if n else tok_lp[i, :0]
            results.append(
                SeqLogprobs(r.id, float(vals.double().sum()), n, vals.tolist() if r.return_token_logprobs else None)
            )
        return results


@torch.inference_mode()
def choice_logprobs(model: Any, prompt: list[int], choices: list[list[int]], pad_id: int) -> list[float]:
    """Summed log-prob of each continuation in ``choices`` after one shared ``prompt``: the prompt runs once,
    its KV cache is repeated for the choices, which run in one batch (a label-space judge scores 2-10
    short labels after a long judge prompt: 5-10x less work than scoring each as its own sequence)."""
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    longest = max(len(c) for c in choices)
    if longest == 1:
        return [float(first[c[0]]) for c in choices]
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(choices))
    rest = [c[:-1] + [pad_id] * (longest - len(c)) for c in choices]  # right-padded: pads follow real tokens
    mask = torch.tensor([[1] * len(prompt) + [1] * (len(c) - 1) + [0] * (longest - len(c)) for c in choices])
    pos = torch.arange(len(prompt), len(prompt) + longest - 1)[None, :].expand(len(choices), -1)
    logits = model(
        input_ids=torch.tensor(rest), attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=False
    ).logits.float()
    logp = torch.log_softmax(logits, -1)
    return [float(first[c[0]] + sum(logp[i, t - 1, c[t]] for t in range(1, len(c)))) for i, c in enumerate(choices)]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input ids, attention mask and position ids (counting real tokens only) of left-padded rows."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s) :] = torch.tensor(s, dtype=torch.long)
        attn[i, L - len(s) :] = 1
    return ids, attn, (attn.cumsum(-1) - 1).clamp(min=0)


def response_logprobs(
    model: Any, prompts: list[list[int]], responses: list[list[int]], pad_id: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of each response given its prompt, shape (B, R), and the mask of real tokens.

    Left padding aligns every response to the right edge, so only the last R+1 positions' logits are
    computed (R = longest response): memory is B*R*V, not B*L*V. The same function scores for
    evaluation (under inference mode) and for training (with gradients), so both use one convention:
    response tokens only, prompt and padding masked. Padded entries of the result are 0. With a
    ``temperature``, log-probs are of logits / temperature: the distribution a sample at that temperature
    came from (what PPO's ratios and KL penalty need).
    """
    R = max(1, max(len(r) for r in responses))
    device = next(model.parameters()).device
    ids, attn, pos = (t.to(device) for t in left_pad([p + r for p, r in zip(prompts, responses)], pad_id))
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=R + 1).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    target = ids[:, -R:]
    # cross_entropy = logsumexp - gather, fused: ~10% faster forward+backward than spelling it out
    tok_lp = -torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none"
    ).view(target.shape)
    lengths = torch.tensor([len(r) for r in responses], device=device)
    mask = torch.arange(R, device=device)[None, :] >= (R - lengths)[:, None]
    return tok_lp.masked_fill(~mask, 0.0), mask


def _sample(logits: torch.Tensor, params: SamplingParams, gens: list[torch.Generator]) -> torch.Tensor:
    """Greedy at temperature 0; else temperature + nucleus (top_p) sampling, one RNG per row."""
    if params.greedy:
        return logits.argmax(-1)
    scaled = logits / params.temperature
    if params.top_p < 1.0:
        sorted_logits, idx = scaled.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > params.top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = scaled.softmax(-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(gens)])


def _progress(items: list[Any], enabled: bool, desc: str) -> Any:
    if not enabled or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False)
