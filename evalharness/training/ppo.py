"""PPO for language models, the online RLHF baseline (TRL's PPOTrainer, "The N implementation details of RLHF
with PPO", Huang et al. 2024), on the one training loop (``loop.py``): manifests, checkpoints, LoRA, bf16, data parallelism.

One training step is one rollout batch:

1. **Rollouts.** Each process samples responses for its slice of the step's prompts from the current policy at
   ``temperature`` (seeded per sample, so a sample does not depend on how prompts are split across processes).
   The reward judge scores each response (a text judge its text, a reward model ``rm:`` prompt and response); a
   response without EOS loses ``missing_eos_penalty``. A failed judgment never becomes a score: its row stays in
   the batch with an empty mask and is counted.
2. **Old log-probs, reference log-probs, values**, from no-grad forwards; every log-prob from logits / temperature.
   The processes then share their rollouts, so each one holds the whole batch: advantages are whitened over the
   global batch and minibatches are the same whatever the number of processes.
3. **Per-token reward** r_t = -kl_coef * kl_t (k1 or k3), plus the judge's score at the last response token;
   GAE with V = 0 after the last token; returns R = A + V_old; advantages whitened.
4. **num_ppo_epochs** passes over freshly shuffled minibatches, one optimizer step each; the loss
   policy_loss + vf_coef * value_loss is a masked mean over the minibatch's response tokens, so gradient
   accumulation and data parallelism give the gradient of one big minibatch.
5. The adaptive KL controller (if on) moves kl_coef toward ``target_kl``.

With ``log_rollouts`` N (a bookkeeping field of TrainConfig), steps 1..N also save their rollout batch, with the
rewards, advantages and returns computed from it, to ``rollouts/step-NNNNNN.pt`` in the run folder (``write_rollouts``).

Tensors are ``[batch, tokens]`` with responses right-aligned (left padding, as everywhere in evalharness), so every
row's last response token is the last column; the public functions only assume each row's mask is contiguous.

Resident while training: the actor (policy, from SFT), the critic (the SFT body with a zeroed scalar head), the
reference (a frozen SFT copy; with LoRA none: the actor with its adapter disabled) and the judge; bf16 runs without
LoRA add a bf16 copy of the actor to sample from (``_sampler``: half the actor's fp32 size). Checkpoints are
the actor only, loadable model folders (adapter folders for LoRA) with ``evalharness_manifest.json``; a killed run
resumes through the loop (``loop.run``, ``save_resumable``): the checkpoint's ``training_state/``
adds to the loop's the critic's trainable weights (``critic.safetensors``), the adaptive KL coefficient and the
minibatch generator, and its optimizer state covers actor and critic (one optimizer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from evalharness.core.errors import EvalHarnessError
from evalharness.core.prompts import PromptItem, render
from evalharness.training.algorithms import PPOConfig, make_config
from evalharness.training.loop import (
    STATE_DIR,
    Course,
    NullContext,
    Plan,
    TrainConfig,
    TrainResult,
    adamw,
    autocast,
    check_config,
    disable_dropout,
    index_stream,
    load_policy,
    lora_wrap,
    make_plan,
    restore,
    resumed_course,
    run,
    save_resumable,
    scheduler,
    total_steps,
)

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["PPOConfig", "gae", "whiten", "policy_loss", "value_loss", "kl_penalty", "update_kl_coef", "train_ppo"]


# -- the PPO functions ------------------------------------------------------------------------------------------


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (the batch's response tokens)."""
    import torch

    m = mask.bool()
    return torch.where(m, x, torch.zeros_like(x)).sum() / m.sum()


def whiten(x: Tensor, mask: Tensor, *, shift_mean: bool = True) -> Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, with the unbiased variance (TRL's masked_whiten);
    ``shift_mean=False`` keeps the mean (whitening rewards rescales them without recentring). 0 outside the mask."""
    import torch

    m = mask.bool()
    n = m.sum()
    if int(n) < 2:
        raise EvalHarnessError(f"whiten needs at least 2 masked entries, got {int(n)}")
    mean = masked_mean(x, m)
    var = torch.where(m, (x - mean) ** 2, torch.zeros_like(x)).sum() / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros_like(out))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eq. 16): delta_t = r_t + gamma V_{t+1} - V_t with
    V = 0 after the last response token, A_t = delta_t + gamma lam A_{t+1}; returns R = A + V. 0 outside the mask."""
    import torch

    m = mask.to(values.dtype)
    v, r = values * m, rewards * m
    T = r.shape[1]
    last = torch.zeros_like(v[:, 0])
    out = []
    for t in reversed(range(T)):
        nxt = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        last = (r[:, t] + gamma * nxt - v[:, t] + gamma * lam * last) * m[:, t]
        out.append(last)
    adv = torch.stack(out[::-1], dim=1)
    return adv, (adv + v) * m


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, *, cliprange: float
) -> tuple[Tensor, Tensor]:
    """The clipped surrogate (Schulman et al. 2017, Eq. 7, as a loss): masked mean of
    max(-A rho, -A clip(rho, 1 - eps, 1 + eps)), rho = exp(log pi - log pi_old); and the fraction of tokens clipped."""
    import torch

    m = mask.bool()
    ratio = torch.exp(torch.where(m, logprobs - old_logprobs, torch.zeros_like(logprobs)))
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return masked_mean(torch.max(pg1, pg2), m), masked_mean((pg2 > pg1).to(logprobs.dtype), m).detach()


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, *, cliprange_value: float) -> Tensor:
    """The clipped value loss (TRL, OpenAI's lm-human-preferences): 0.5 * masked mean of
    max((V - R)^2, (clip(V, V_old - eps_v, V_old + eps_v) - R)^2)."""
    return _value_loss(values, old_values, returns, mask, cliprange_value)[0]


def _value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """value_loss and the fraction of tokens where the clipped term is the larger (TRL's val/clipfrac)."""
    import torch

    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    l1, l2 = (values - returns) ** 2, (clipped - returns) ** 2
    return 0.5 * masked_mean(torch.max(l1, l2), mask), masked_mean((l2 > l1).to(values.dtype), mask).detach()


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str) -> Tensor:
    """Per-token KL estimate (Schulman, "Approximating KL Divergence"): k1 = log pi - log pi_ref, or
    k3 = (r - 1) - log r with r = pi_ref / pi (non-negative, lower variance). 0 outside the mask."""
    import torch

    logr = torch.where(mask.bool(), ref_logprobs - logprobs, torch.zeros_like(logprobs))
    return -logr if estimator == "k1" else torch.expm1(logr) - logr


def update_kl_coef(kl_coef: float, kl: float, *, target: float, horizon: float, n_episodes: int) -> float:
    """The adaptive KL controller of Ziegler et al. 2019 (Sec. 2.2; TRL <= 0.11 AdaptiveKLController):
    kl_coef * (1 + clip(KL / target - 1, -0.2, 0.2) * n_episodes / horizon), KL the batch's mean sequence KL."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_episodes / horizon)


# -- models -----------------------------------------------------------------------------------------------------


def _critic_class() -> type:
    import torch

    class Critic(torch.nn.Module):
        """V(s_t) at every response position: the SFT body (no LM head) and a scalar head initialised to zero,
        so V = 0 before the first update (the issue's "head zeroed"; TRL initialises a value head from a reward model)."""

        def __init__(self, body: Any, hidden: int) -> None:
            super().__init__()
            self.body = body
            self.head = torch.nn.Linear(hidden, 1)
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def forward(self, prompts: list[list[int]], responses: list[list[int]], pad_id: int) -> Tensor:
            from evalharness.backends.hf import left_pad

            R = max(1, max(len(r) for r in responses))
            dev = self.head.weight.device
            ids, attn, pos = (t.to(dev) for t in left_pad([p + r for p, r in zip(prompts, responses)], pad_id))
            h = self.body(input_ids=ids, attention_mask=attn, position_ids=pos).last_hidden_state[:, -R - 1 : -1]
            return self.head(h).squeeze(-1).float()  # position t-1's state is the one that chooses token t

    return Critic


def _wrapper_class() -> type:
    import torch

    class PolicyAndValue(torch.nn.Module):
        """Actor and critic as one module: one DDP wrapper, one optimizer, one gradient clip (TRL's PolicyAndValueWrapper)."""

        def __init__(self, policy: Any, critic: Any) -> None:
            super().__init__()
            self.policy, self.critic = policy, critic

        def forward(
            self, prompts: list[list[int]], responses: list[list[int]], pad_id: int, temperature: float
        ) -> tuple[Tensor, Tensor]:
            from evalharness.backends.hf import response_logprobs

            lp, _ = response_logprobs(self.policy, prompts, responses, pad_id, temperature)
            return lp, self.critic(prompts, responses, pad_id)

    return PolicyAndValue


# -- rollouts ---------------------------------------------------------------------------------------------------


@dataclass
class _Rollout:
    """One sampled response and what the update needs, per response token (EOS included when produced)."""

    prompt_ids: list[int]
    response_ids: list[int]
    eos: bool
    score: float | None  # the judge's reward (missing-EOS penalty applied); None: the judgment failed
    logprobs: list[float]
    ref_logprobs: list[float]
    values: list[float]


def _sampler(policy: Any, cfg: TrainConfig) -> Any | None:
    """A bf16 copy of the policy to sample rollouts from, for bf16 runs without LoRA (None otherwise).

    Decoding runs matmuls with a handful of rows, where autocast's per-call weight casts cost more than the matmul
    (measured on one CPU core: 8 samples of 40 tokens from SmolLM2-135M take about 3x longer under autocast than
    in fp32, and a projection of 8 rows is 2x faster with weights already in bf16). Autocast's matmuls take the weights rounded to bf16 anyway,
    so the copy samples from the policy the bf16 update computes; the old log-probs still come from the policy's
    own forward, so PPO's ratio is exact. The copy is refreshed from the policy before every rollout batch."""
    import copy

    import torch

    if cfg.dtype != "bfloat16" or cfg.lora:
        return None
    return copy.deepcopy(policy).to(torch.bfloat16).eval().requires_grad_(False)


def _sync_sampler(sampler: Any, policy: Any) -> None:
    import torch

    with torch.no_grad():
        for dst, src in zip(sampler.parameters(), policy.parameters(), strict=True):
            dst.copy_(src)


def _rollouts(
    model: Any,
    ref_model: Any | None,
    tok: Any,
    judge: Any,
    prompts: list[tuple[str, list[int]]],
    hp: PPOConfig,
    seed: int,
    cfg: TrainConfig,
    accel: Any,
    sampler: Any | None = None,
    items: dict[str, PromptItem] | None = None,
) -> list[_Rollout]:
    """Sample (from ``sampler`` when given, else the policy), judge and score this process's prompts under the
    current policy (no gradients); ``items`` (request key -> prompt) is for a judge that reads the prompt."""
    import torch

    from evalharness.backends.hf import HFBackend, response_logprobs
    from evalharness.core.records import GenRequest, SamplingParams

    if not prompts:
        return []
    policy, critic = model.policy, model.critic
    backend = HFBackend.from_loaded(policy if sampler is None else sampler, tok, "ppo-policy", batch_size=len(prompts))
    params = SamplingParams(temperature=hp.temperature, top_p=1.0, max_new_tokens=hp.response_length, seed=seed)
    with autocast(cfg, accel) if sampler is None else NullContext():
        gens = backend.generate([GenRequest(key, prompt_ids=ids, params=params) for key, ids in prompts])
    verdicts = judge.judge(gens, prompts=items)
    P = [ids for _, ids in prompts]
    Rs = [list(g.token_ids or []) for g in gens]
    out: list[_Rollout] = []
    bs = cfg.batch_size
    with torch.no_grad(), autocast(cfg, accel):
        for s in range(0, len(P), bs):
            p, r = P[s : s + bs], Rs[s : s + bs]
            lp, _ = response_logprobs(policy, p, r, tok.pad_token_id, hp.temperature)
            if ref_model is None:  # LoRA: the reference is the base, i.e. the policy with its adapter disabled
                with policy.disable_adapter():
                    ref_lp, _ = response_logprobs(policy, p, r, tok.pad_token_id, hp.temperature)
            else:
                ref_lp, _ = response_logprobs(ref_model, p, r, tok.pad_token_id, hp.temperature)
            v = critic(p, r, tok.pad_token_id)
            for i in range(len(p)):
                n, g, verdict = len(r[i]), gens[s + i], verdicts[s + i]
                score = None
                if verdict.status == "ok" and verdict.value is not None:
                    score = float(verdict.value) if judge.higher_is_better else 1.0 - float(verdict.value)
                    if g.finish_reason != "stop":
                        score -= hp.missing_eos_penalty
                cut = lambda t: t[i, t.shape[1] - n :].float().tolist()  # noqa: E731, B023  (called within its iteration) (right-aligned)
                out.append(_Rollout(p[i], r[i], g.finish_reason == "stop", score, cut(lp), cut(ref_lp), cut(v)))
    return out


def _buffer(rows: list[_Rollout]) -> dict[str, Any]:
    """The batch as right-aligned [N, R] tensors; a row whose judgment failed gets an all-zero mask."""
    import torch

    N, R = len(rows), max(len(r.response_ids) for r in rows)
    t = {k: torch.zeros(N, R) for k in ("logprobs", "ref_logprobs", "values")}
    mask = torch.zeros(N, R, dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r.response_ids)
        for k in t:
            t[k][i, R - n :] = torch.tensor(getattr(r, k))
        mask[i, R - n :] = r.score is not None
    ok = torch.tensor([r.score is not None for r in rows])
    scores = torch.tensor([r.score if r.score is not None else 0.0 for r in rows])
    return {**t, "mask": mask, "ok": ok, "scores": scores}


def write_rollouts(
    out: Path,
    step: int,
    idx: list[int],
    kl_coef: float,
    rows: list[_Rollout],
    buf: dict[str, Any],
    derived: dict[str, Tensor],
) -> Path:
    """Save one step's rollout batch (``log_rollouts``) to ``out/rollouts/step-NNNNNN.pt`` (``torch.load`` with
    ``weights_only=True`` reads it): per row the data index of its prompt, prompt and response token ids (EOS
    included when produced), whether it ended in EOS and its score (missing-EOS penalty applied; NaN where the
    judgment failed); as right-aligned ``[rows, tokens]`` float tensors the old (rollout) and reference log-probs,
    the values, the mask, and ``derived`` (per-token KL, its reward part, the reward GAE sees, the whitened
    advantages, the returns); and the step's kl_coef."""
    import torch

    data = {
        "step": step,
        "kl_coef": kl_coef,
        "prompt_index": list(idx),
        "prompt_ids": [r.prompt_ids for r in rows],
        "response_ids": [r.response_ids for r in rows],
        "eos": [r.eos for r in rows],
        "scores": torch.tensor([float("nan") if r.score is None else r.score for r in rows]),
        **{k: buf[k] for k in ("logprobs", "ref_logprobs", "values", "mask")},
        **{k: v.detach().cpu() for k, v in derived.items()},
    }
    path = out / "rollouts" / f"step-{step:06d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    return path


# -- the steps --------------------------------------------------------------------------------------------------

CRITIC = "critic.safetensors"  # in training_state/: the critic's trainable weights (body + head, or adapter + head)
STATS = ("pg", "vf", "pg_clip", "vf_clip", "approxkl", "ratio")  # token-weighted sums of an update, then the count


def train_ppo(cfg: TrainConfig, log: Callable[[str], None] = lambda _: None) -> TrainResult:
    """Train a policy with PPO on ``cfg.data`` (a prompts JSONL) against the judge ``hparams['reward']``; a finished
    run with the same identity is skipped, an unfinished one resumes from its newest complete checkpoint (the
    training loop's machinery: actor, critic, optimizer, scheduler, KL coefficient, RNG, prompt-stream position)."""
    from evalharness.judges import get_judge

    check_config(cfg)
    hp: PPOConfig = make_config(cfg.algorithm, **cfg.hparams)
    judge = get_judge(hp.reward)
    reward = {
        "spec": hp.reward,
        "id": judge.judge_id,
        "version": judge.judge_version,
        "direction": "score" if judge.higher_is_better else "1 - score",
    }
    plan = make_plan(cfg, {"reward": reward})
    local = cfg.batch_size * cfg.grad_accum * hp.num_mini_batches  # TRL's local_batch_size
    return run(plan, local, lambda *a: _setup(plan, hp, judge, *a, log=log), log)


def _load_models(plan: Plan, resume: Path | None, accel: Any) -> tuple[Any, Any, Any]:
    """(actor and critic as one module, the frozen reference or None with LoRA, tokenizer), on the device. The actor
    is the trainer's policy (the resumed checkpoint's weights); the critic's weights come back from the checkpoint's
    training_state when it has them."""
    from safetensors.torch import load_file

    from evalharness.core.models import load_fresh

    cfg = plan.cfg
    policy, tok = load_policy(plan, resume)
    lm = disable_dropout(load_fresh(plan.base, dtype="float32")[0])
    body = getattr(lm, lm.base_model_prefix)  # the SFT body; its LM head is dropped
    if cfg.lora:
        body = lora_wrap(body, cfg, None)
    if cfg.gradient_checkpointing:
        body.gradient_checkpointing_enable()
        if cfg.lora:
            body.enable_input_require_grads()
    critic = _critic_class()(body, lm.config.hidden_size)
    del lm
    if resume is not None and (resume / STATE_DIR / CRITIC).is_file():
        saved = load_file(str(resume / STATE_DIR / CRITIC))
        trainable = {n for n, p in critic.named_parameters() if p.requires_grad}
        if set(saved) != trainable:
            raise EvalHarnessError(
                f"{resume / STATE_DIR / CRITIC} does not hold this run's critic "
                f"({len(set(saved) ^ trainable)} tensors differ)"
            )
        critic.load_state_dict(saved, strict=False)
    ref_model = None
    if not (cfg.lora and plan.reference is plan.base):
        ref_model = disable_dropout(load_fresh(plan.reference, dtype="float32")[0]).to(accel.device).eval()
        ref_model.requires_grad_(False)
    return _wrapper_class()(policy, critic).to(accel.device), ref_model, tok


def _critic_weights(critic: Any) -> dict[str, Any]:
    """What a resume needs of the critic: its trainable tensors (full: body and head; LoRA: adapter and head)."""
    return {n: p.detach().cpu().contiguous() for n, p in critic.named_parameters() if p.requires_grad}


def _setup(
    plan: Plan,
    hp: PPOConfig,
    judge: Any,
    accel: Any,
    resume: Path | None,
    state: dict[str, Any] | None,
    G: int,
    *,
    log: Callable[[str], None],
) -> tuple[_PPOSteps, Course]:
    """Actor, critic, reference, optimizer and resumed state: the steps the loop drives, and their course (G is
    the episodes per step over all processes)."""
    import torch

    cfg, items, P = plan.cfg, cast("list[PromptItem]", plan.data), accel.num_processes  # PPO's data: prompts
    torch.manual_seed(cfg.seed)
    model, ref_model, tok = _load_models(plan, resume, accel)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, cfg)
    total, steps_per_epoch = total_steps(cfg, len(items), G)
    sched = scheduler(opt, cfg, total)  # one value per rollout batch, as TRL
    wrapped, opt = accel.prepare(model, opt)
    prompt_len = max(1, min(cfg.max_prompt_length, cfg.max_length - hp.response_length))
    # The prompt stream depends only on the seed, the data and G, so a resumed run continues it at step * G; the
    # minibatch shuffles draw from their own generator, whose state a checkpoint keeps.
    steps = _PPOSteps(
        plan,
        hp,
        judge,
        accel,
        model,
        wrapped,
        ref_model,
        tok,
        opt,
        sched,
        params,
        _sampler(model.policy, cfg),
        [render(tok, it)[-prompt_len:] for it in items],
        torch.Generator().manual_seed(cfg.seed + 1),
        hp.kl_coef,
        G // P,
    )
    course = Course(total, G, steps_per_epoch, index_stream(len(items), total, G, cfg.seed), rate_key="eps")
    course = _resume(plan, steps, course, resume, state, log)
    log(
        f"{plan.run_name}: ppo on {len(items)} prompts, {total} steps of {G} episodes, {hp.num_ppo_epochs} epochs x "
        f"{hp.num_mini_batches} minibatches each, reward {plan.extra['reward']['id']} "
        f"({'LoRA' if cfg.lora else 'full'}, {cfg.dtype}, {P} process{'es' if P > 1 else ''}) -> {plan.out}"
    )
    return steps, course


def _resume(
    plan: Plan,
    steps: _PPOSteps,
    course: Course,
    resume: Path | None,
    state: dict[str, Any] | None,
    log: Callable[[str], None],
) -> Course:
    """Restore a checkpoint's optimizer, scheduler, RNG, KL coefficient and minibatch generator into ``steps``, and
    continue ``course`` after its step (unchanged without ``resume``)."""
    restored = (
        restore(resume, steps.model, steps.opt, steps.sched, steps.accel, sharded=False) if resume is not None else None
    )
    if restored is not None:
        steps.kl_coef = restored[1]["ppo"]["kl_coef"]
        steps.g_mb.set_state(restored[1]["ppo"]["minibatch_rng"])
    no_critic = state is not None and not state.get("critic")
    return resumed_course(
        plan,
        course,
        resume,
        state,
        restored,
        log,
        " (no critic saved: it starts again from its zeroed head)" if no_critic else "",
    )


@dataclass
class _PPOSteps:
    """One process's live PPO state; a step is a rollout batch: roll out, compute advantages, update, log."""

    plan: Plan
    hp: PPOConfig
    judge: Any
    accel: Any
    model: Any  # actor and critic, unwrapped
    wrapped: Any  # as prepared (DDP)
    ref_model: Any | None
    tok: Any
    opt: Any
    sched: Any
    params: list[Any]
    sampler: Any | None
    rendered: list[list[int]]  # every prompt's ids, cut to the prompt length
    g_mb: Any  # the minibatch shuffles' generator
    kl_coef: float
    local: int  # episodes per step on this process

    def step(self, step: int, idx: list[int]) -> dict[str, Any]:
        """One rollout batch on the prompts ``idx``: rollouts, advantages, num_ppo_epochs of updates; its row."""
        hp = self.hp
        t0 = time.perf_counter()
        rows = self.rollout(step, idx)
        t_rollout = time.perf_counter() - t0
        buf = _buffer(rows)
        if not bool(buf["ok"].any()):
            raise EvalHarnessError(f"step {step}: every judgment of the batch failed ({len(rows)} responses)")
        kl, non_score, rewards, adv, returns = self.advantages(buf)
        if step <= self.plan.cfg.log_rollouts and self.accel.is_main_process:
            extra = {"kl": kl, "non_score_reward": non_score, "rewards": rewards, "advantages": adv, "returns": returns}
            write_rollouts(self.plan.out, step, idx, self.kl_coef, rows, buf, extra)
        stats, grad_norm = self.update(rows, buf, adv, returns)
        lr = self.sched.get_last_lr()[0]
        self.sched.step()
        row = self.metrics(step, rows, buf, kl, non_score, stats)
        row.update(lr=lr, grad_norm=grad_norm, rollout_time_s=t_rollout)
        if hp.adaptive_kl:
            self.kl_coef = update_kl_coef(
                self.kl_coef, row["objective/kl"], target=hp.target_kl, horizon=hp.horizon, n_episodes=len(rows)
            )
        return row

    def rollout(self, step: int, idx: list[int]) -> list[_Rollout]:
        """This process's share of the step's prompts sampled, judged and scored; then every process's rows."""
        from accelerate.utils import gather_object

        items, rank = self.plan.data, self.accel.process_index
        # the request key is the position in the step's batch: unique even if a prompt repeats, and the same
        # whichever process samples it; the sampling seed is the step's, so a resumed step samples the same
        mine = [(f"{j}:{items[i].id}", self.rendered[i]) for j, i in enumerate(idx)]
        mine = mine[rank * self.local : (rank + 1) * self.local]
        self.model.eval()
        if self.sampler is not None:
            _sync_sampler(self.sampler, self.model.policy)
        rows = _rollouts(
            self.model,
            self.ref_model,
            self.tok,
            self.judge,
            mine,
            self.hp,
            self.plan.cfg.seed * 1_000_003 + step - 1,
            self.plan.cfg,
            self.accel,
            self.sampler,
            {f"{j}:{items[i].id}": cast("PromptItem", items[i]) for j, i in enumerate(idx)},
        )
        self.model.train()
        return gather_object(rows) if self.accel.num_processes > 1 else rows

    def advantages(self, buf: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per-token KL, the KL part of the reward, the reward GAE sees, whitened GAE advantages and the returns."""
        import torch

        hp, mask = self.hp, buf["mask"]
        with torch.no_grad():
            kl = kl_penalty(buf["logprobs"], buf["ref_logprobs"], mask, hp.kl_estimator)
            non_score = -self.kl_coef * kl
            rewards = non_score.clone()
            rewards[:, -1] += buf["scores"] * buf["ok"]  # right-aligned: the last column is every row's last token
            if hp.whiten_rewards:
                rewards = whiten(rewards, mask, shift_mean=False)
            adv, returns = gae(rewards, buf["values"], mask, gamma=hp.gamma, lam=hp.lam)
            adv = whiten(adv, mask) if int(mask.sum()) >= 2 else adv
        return kl, non_score, rewards, adv, returns

    def update(
        self, rows: list[_Rollout], buf: dict[str, Any], adv: Tensor, returns: Tensor
    ) -> tuple[Tensor, float | None]:
        """num_ppo_epochs passes over freshly shuffled minibatches, one optimizer step each: the token-weighted
        sums of the losses and fractions (``STATS``) over all processes, and the last gradient norm."""
        import torch

        hp, cfg, accel = self.hp, self.plan.cfg, self.accel
        stats = torch.zeros(len(STATS) + 1, dtype=torch.float64)
        grad_norm = None
        M = self.local // hp.num_mini_batches * accel.num_processes  # global minibatch
        for _ in range(hp.num_ppo_epochs):
            perm = torch.randperm(len(rows), generator=self.g_mb)
            for mb in range(hp.num_mini_batches):
                mb_idx = perm[mb * M : (mb + 1) * M]
                n_mb = int(buf["mask"][mb_idx].sum())
                if n_mb == 0:
                    continue  # every judgment of the minibatch failed: nothing to learn from (the same on all ranks)
                for micro in range(cfg.grad_accum):
                    part = self.micro_batch(rows, buf, adv, returns, mb_idx, micro, n_mb)
                    if part is not None:
                        stats += part
                gn = accel.clip_grad_norm_(self.params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
                grad_norm = float(gn) if gn is not None else None
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        if accel.num_processes > 1:
            stats = accel.reduce(stats.to(accel.device), reduction="sum").cpu()
        return stats, grad_norm

    def micro_batch(
        self,
        rows: list[_Rollout],
        buf: dict[str, Any],
        adv: Tensor,
        returns: Tensor,
        mb_idx: Tensor,
        micro: int,
        n_mb: int,
    ) -> Tensor | None:
        """Forward and backward of this process's slice of one micro-batch; its token-weighted stats (None when
        every row of it failed)."""
        import torch

        hp, cfg, accel, P = self.hp, self.plan.cfg, self.accel, self.accel.num_processes
        lo = (micro * P + accel.process_index) * cfg.batch_size
        rr = mb_idx[lo : lo + cfg.batch_size]
        sync = micro == cfg.grad_accum - 1
        stats = None
        with accel.no_sync(self.wrapped) if not sync and P > 1 else NullContext():
            with autocast(cfg, accel):
                new_lp, new_v = self.wrapped(
                    [rows[i].prompt_ids for i in rr],
                    [rows[i].response_ids for i in rr],
                    self.tok.pad_token_id,
                    hp.temperature,
                )
            R, dev = new_lp.shape[1], accel.device  # this micro-batch's longest response: the buffer's last R columns
            m = buf["mask"][rr, -R:].to(dev)
            old_lp, old_v = buf["logprobs"][rr, -R:].to(dev), buf["values"][rr, -R:].to(dev)
            a, ret = adv[rr, -R:].to(dev), returns[rr, -R:].to(dev)
            n = int(m.sum())
            if n:
                pg, pg_clip = policy_loss(new_lp, old_lp, a, m, cliprange=hp.cliprange)
                vf, vf_clip = _value_loss(new_v, old_v, ret, m, hp.cliprange_value)
                # sum over this micro-batch's tokens / the minibatch's tokens, times P against DDP's mean
                loss = (pg + hp.vf_coef * vf) * (n / n_mb * P)
                with torch.no_grad():
                    diff = torch.where(m, new_lp - old_lp, torch.zeros_like(new_lp))
                    approxkl = 0.5 * masked_mean(diff**2, m)
                    ratio = masked_mean(torch.exp(diff), m)
                    stats = torch.tensor(
                        [float(x) * n for x in (pg, vf, pg_clip, vf_clip, approxkl, ratio)] + [n], dtype=torch.float64
                    )
            else:  # every row failed: still a backward, so DDP's gradient all-reduce lines up
                loss = new_lp.sum() * 0.0 + new_v.sum() * 0.0
            accel.backward(loss)
        return stats

    def metrics(
        self, step: int, rows: list[_Rollout], buf: dict[str, Any], kl: Tensor, non_score: Tensor, stats: Tensor
    ) -> dict[str, Any]:
        """The step's row: TRL's PPO metric names, means over the responses whose judgment succeeded."""
        hp, mask, ok = self.hp, buf["mask"], buf["ok"]
        n_ok = int(ok.sum())
        s = stats[: len(STATS)] / max(1.0, float(stats[len(STATS)]))
        okf = ok.float()
        seq_kl = (kl.sum(1) * okf).sum() / n_ok
        seq_ns = (non_score.sum(1) * okf).sum() / n_ok
        score = (buf["scores"] * okf).sum() / n_ok
        return {
            "step": step,
            "episode": step * len(rows),
            "epoch": None,
            "loss": float(s[0] + hp.vf_coef * s[1]),
            "objective/kl": float(seq_kl),
            "objective/entropy": float((-buf["logprobs"] * mask).sum() / n_ok),
            "objective/non_score_reward": float(seq_ns),
            "objective/rlhf_reward": float(seq_ns + score),
            "objective/scores": float(score),
            "objective/kl_coef": self.kl_coef,
            "policy/approxkl_avg": float(s[4]),
            "policy/clipfrac_avg": float(s[2]),
            "loss/policy_avg": float(s[0]),
            "loss/value_avg": float(s[1]),
            "val/clipfrac_avg": float(s[3]),
            "val/ratio": float(s[5]),
            "val/num_eos_tokens": sum(r.eos for r in rows),
            "val/response_length": float(mask.sum() / n_ok),
            "failed_judgments": len(rows) - n_ok,
        }

    def describe(self, row: dict[str, Any]) -> str:
        """Score, KL and its coefficient, the two losses, the rollouts' time."""
        return (
            f"score {row['objective/scores']:.3f} kl {row['objective/kl']:.3f} (coef {row['objective/kl_coef']:.4f})"
            f" pg {row['loss/policy_avg']:.4f} vf {row['loss/value_avg']:.4f}, rollouts {row['rollout_time_s']:.1f}s"
        )

    def parallel(self) -> dict[str, Any]:
        """Processes and strategy, for the checkpoint manifest."""
        return {"processes": self.accel.num_processes, "strategy": "ddp" if self.accel.num_processes > 1 else "single"}

    def checkpoint_extra(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The KL coefficient in the manifest; state.json says the critic is there."""
        return {"kl_coef": self.kl_coef}, {"critic": True}

    def save(self, ck: Path, manifest: dict[str, Any], state: dict[str, Any]) -> None:
        """The actor as the model folder; the critic, the KL coefficient and the minibatch generator for a resume."""
        from safetensors.torch import save_file

        save_resumable(
            self.accel,
            self.model,
            self.tok,
            self.opt,
            self.sched,
            ck,
            manifest,
            state,
            save_optimizer=self.plan.cfg.save_optimizer,
            actor=self.model.policy,
            more={"ppo": {"kl_coef": self.kl_coef, "minibatch_rng": self.g_mb.get_state()}},
            files=lambda st: save_file(_critic_weights(self.model.critic), str(st / CRITIC)),
        )

    def finish_extra(self) -> dict[str, Any]:
        """The final KL coefficient, for the train manifest."""
        return {"final_kl_coef": self.kl_coef}
