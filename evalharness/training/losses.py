"""Preference losses per pair (DPO family, SimPO, ORPO, CPO), KTO's per example, and the implicit rewards they log.

Log-probs are SUMS over response tokens, shape (B,); lengths count response tokens. Losses come back unreduced so
the trainer owns the reduction. Hyperparameter names, defaults, ranges and the formulas themselves are in
algorithms.py (one row per algorithm), nowhere else.
Throughout, h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), the summed log-ratio difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch

from evalharness.core.errors import EvalHarnessError
from evalharness.training.algorithms import REWARDS, get_spec, make_config

Tensor = torch.Tensor
Number = Tensor | float | int

_REFERENCE = ("ref_chosen_logps", "ref_rejected_logps")
_LENGTHS = ("chosen_lengths", "rejected_lengths")
_SCORES = ("chosen_scores", "rejected_scores")


@dataclass
class _Pair:
    """The inputs of one batch of pairs, as tensors of the policy log-probs' dtype and device."""

    chosen: Tensor
    rejected: Tensor
    ref_chosen: Tensor | None
    ref_rejected: Tensor | None
    len_chosen: Tensor | None
    len_rejected: Tensor | None
    score_chosen: Tensor | None
    score_rejected: Tensor | None

    def h(self) -> Tensor:
        return (self.chosen - self.ref_chosen) - (self.rejected - self.ref_rejected)  # type: ignore[operator]


def _as_tensor(name: str, value: Number, like: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() != 0 and t.shape != like.shape:  # a (B, 1) against (B,) would silently broadcast to (B, B)
        raise EvalHarnessError(f"{name} has shape {tuple(t.shape)}; expected {tuple(like.shape)} or a scalar")
    return t


def _prepare(algorithm: str, hparams: dict[str, Any], args: dict[str, Any], *, for_loss: bool) -> tuple[Any, _Pair]:
    """Validate the algorithm, its hyperparameters and that every input it uses is given; convert the inputs."""
    if algorithm == "kto":
        raise EvalHarnessError(
            "kto is unpaired (one response per example, labelled desirable or undesirable): "
            "use kto_loss(logps=..., ref_logps=..., desirable=..., kl=..., beta=...)"
        )
    spec = get_spec(algorithm)
    if spec.online:
        raise EvalHarnessError(
            f"{algorithm} trains on its own rollouts, not pairs: use evalharness.training.ppo "
            "(policy_loss, value_loss, gae, whiten)"
        )
    cfg = make_config(algorithm, **hparams)
    need = list(_REFERENCE) if spec.needs_reference else []
    if for_loss:
        if spec.needs_lengths or getattr(cfg, "length_normalized", False):  # IPO's per-token variant
            need += _LENGTHS
        if spec.needs_scores:
            need += _SCORES
    elif spec.reward_uses_lengths:
        need += _LENGTHS
    missing = [n for n in need if args[n] is None]
    if missing:
        uses = ", ".join(["chosen_logps", "rejected_logps", *need])
        raise EvalHarnessError(f"{algorithm} needs {', '.join(missing)} (missing); its inputs: {uses}")
    chosen = args["chosen_logps"]
    if not (isinstance(chosen, Tensor) and chosen.is_floating_point()):
        raise EvalHarnessError("chosen_logps must be a floating-point tensor of summed response log-probs")
    conv = {n: (_as_tensor(n, args[n], chosen) if args[n] is not None else None) for n in args if n != "chosen_logps"}
    for n in _LENGTHS:
        lengths = conv[n]
        if lengths is not None and bool((lengths <= 0).any()):
            raise EvalHarnessError(f"{algorithm}: {n} must count response tokens (> 0)")
    return cfg, _Pair(
        chosen,
        cast(Tensor, conv["rejected_logps"]),  # a required argument (typed Tensor) of every caller
        conv["ref_chosen_logps"],
        conv["ref_rejected_logps"],
        conv["chosen_lengths"],
        conv["rejected_lengths"],
        conv["chosen_scores"],
        conv["rejected_scores"],
    )


def preference_loss(
    algorithm: str,
    *,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    chosen_lengths: Number | None = None,
    rejected_lengths: Number | None = None,
    chosen_scores: Number | None = None,
    rejected_scores: Number | None = None,
    **hparams: Any,
) -> Tensor:
    """Per-pair loss of ``algorithm``, shape (B,), unreduced, in the input dtype; unset hparams take the defaults.

    With h the summed log-ratio difference (module docstring) and |y| a response's token count:
      dpo    -log s(beta h)                                                Rafailov et al. 2023, Eq. 7
      cdpo   -(1-eps) log s(beta h) - eps log s(-beta h)                   Mitchell 2023, Eq. 3
      hinge  relu(1 - beta h)                                              SLiC-HF, as TRL loss_type="hinge"
      ipo    (h - 1/(2 beta))^2 on summed log-ratios (Azar et al. Eq. 17, beta as tau); with
             length_normalized=True each log-prob is first divided by its |y| (TRL's per-token IPO)
      odpo   -log s(beta h - alpha f(s_w - s_l)), f in {log, identity}     Amini et al. 2024
             f = log follows the official code, log(s_w - s_l) unclamped; where s_w <= s_l (official: -inf offset
             at a tie, NaN below) the loss is its tie limit, exactly 0 with zero gradient. f = identity is defined
             everywhere (a tie gives DPO). alpha = 0 is DPO for both.
      simpo  -log s(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma), no reference (Meng et al. Eq. 6);
             gamma is the absolute margin, not SimPO code's gamma_beta_ratio (= gamma / beta)
      rdpo   -log s(beta h + alpha (|y_w| - |y_l|))                        Park et al. 2024
             from the length-penalised reward beta*log-ratio - alpha |y|: positive alpha penalises length (a
             longer chosen answer needs a smaller margin). Some code writes -alpha(|y_w| - |y_l|) with alpha < 0.
      orpo   -log pi(y_w)/|y_w| - lam log s(log odds(y_w) - log odds(y_l)), odds from the token-mean
             log-prob a: log odds = a - log(1 - e^a)                       Hong et al. 2024, Eq. 6-7
      cpo    -log s(beta (log pi(y_w) - log pi(y_l))) + nll_weight (-log pi(y_w)/|y_w|), no reference
                                                                           Xu et al. 2024, Eq. 6-8
    KTO is unpaired: use kto_loss.
    """
    args = {
        "chosen_logps": chosen_logps,
        "rejected_logps": rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
        "chosen_scores": chosen_scores,
        "rejected_scores": rejected_scores,
    }
    cfg, pair = _prepare(algorithm, hparams, args, for_loss=True)
    return get_spec(algorithm).loss(cfg, pair)  # type: ignore[misc]  # None only for kto and ppo, refused above


def implicit_rewards(
    algorithm: str,
    *,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None = None,
    ref_rejected_logps: Tensor | None = None,
    chosen_lengths: Number | None = None,
    rejected_lengths: Number | None = None,
    chosen_scores: Number | None = None,
    rejected_scores: Number | None = None,
    **hparams: Any,
) -> tuple[Tensor, Tensor]:
    """Detached (chosen, rejected) rewards per pair, the quantity each loss compares (TRL's logging convention).

    Each algorithm's row in ``algorithms.ALGORITHMS`` names its definition in ``REWARDS`` and scale: reference-based
    (dpo cdpo hinge ipo odpo rdpo): beta (log pi - log pi_ref) on summed log-probs, also for length-normalized IPO;
    simpo: beta log pi / |y|; cpo: beta log pi; orpo: lam log pi / |y|. Scores are not used.
    """
    args = {
        "chosen_logps": chosen_logps,
        "rejected_logps": rejected_logps,
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "chosen_lengths": chosen_lengths,
        "rejected_lengths": rejected_lengths,
        "chosen_scores": chosen_scores,
        "rejected_scores": rejected_scores,
    }
    c, p = _prepare(algorithm, hparams, args, for_loss=False)
    definition, scale = get_spec(algorithm).reward
    w, l = REWARDS[definition](getattr(c, scale), p)
    return w.detach(), l.detach()


def reward_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, float]:
    """Batch means of the rewards, their margin, and the fraction of pairs with chosen STRICTLY above rejected."""
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.numel() == 0:
        raise EvalHarnessError(
            f"reward_metrics needs two equal, non-empty shapes; got {tuple(chosen_rewards.shape)} "
            f"and {tuple(rejected_rewards.shape)}"
        )
    w, l = chosen_rewards.detach().double(), rejected_rewards.detach().double()
    return {
        "rewards/chosen": w.mean().item(),
        "rewards/rejected": l.mean().item(),
        "rewards/margins": (w - l).mean().item(),
        "rewards/accuracies": (w > l).double().mean().item(),
    }


def kto_loss(
    *,
    logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tensor:
    """KTO loss per example (Ethayarajh et al. 2024, Eq. 8), unreduced, in the input dtype.

    z = max(kl, 0), detached: the reference point is a batch KL estimate that the policy must not push on.
    Desirable: lambda_D (1 - s(beta (log-ratio - z))); undesirable: lambda_U (1 - s(beta (z - log-ratio))).
    """
    c = make_config("kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    if not (isinstance(logps, Tensor) and logps.is_floating_point()):
        raise EvalHarnessError("kto: logps must be a floating-point tensor of summed response log-probs")
    ref = _as_tensor("ref_logps", ref_logps, logps)
    if not (isinstance(desirable, Tensor) and desirable.dtype == torch.bool and desirable.shape == logps.shape):
        raise EvalHarnessError(f"kto: desirable must be a bool tensor of shape {tuple(logps.shape)}")
    z = torch.as_tensor(kl, dtype=logps.dtype, device=logps.device).detach()
    if z.numel() != 1:
        raise EvalHarnessError(f"kto: kl must be a scalar (the batch KL estimate); got shape {tuple(z.shape)}")
    z = z.reshape(()).clamp(min=0)
    ratio = logps - ref
    return torch.where(
        desirable,
        c.desirable_weight * (1 - torch.sigmoid(c.beta * (ratio - z))),
        c.undesirable_weight * (1 - torch.sigmoid(c.beta * (z - ratio))),
    )


def kto_rewards(logps: Tensor, ref_logps: Tensor, beta: float) -> Tensor:
    """KTO's implicit reward beta (log pi - log pi_ref), detached."""
    c = make_config("kto", beta=beta)
    return (c.beta * (logps - ref_logps)).detach()
