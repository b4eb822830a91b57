"""Every preference-optimization algorithm: its config dataclass, its loss formula, and its row in ``ALGORITHMS``,
the one table of algorithm facts that the trainer, the losses, preference accuracy, plots and the quickstart read.

The configs are the single source of truth for hyperparameter names, defaults and valid ranges (TRL style:
every field documented, the class docstring names the paper equation the loss implements). A row carries the
loss formula, what the algorithm needs (reference log-probs, scores, unpaired data, online rollouts, lengths),
its implicit reward (a definition in ``REWARDS`` and the hyperparameter that scales it), its display name and
colour, and its quickstart settings.

Adding an offline paired algorithm:

1. a config dataclass (``_Config``) whose docstring names the paper equation, every field commented;
2. its loss formula ``_name(c, p)`` below (per pair, unreduced; the comment names the equation), and a line for it
   in ``losses.preference_loss``'s docstring;
3. one row in ``ALGORITHMS``: needs, paper, formula, reward, display name, colour, quickstart settings;
4. a test in tests/test_losses.py that computes the loss by hand on a few pairs.

The trainer, ``implicit_rewards``, ``evalharness train --algorithm``, preference accuracy's own reward, the plots
and ``quickstart --algorithms`` pick it up from the row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from evalharness.core.errors import EvalHarnessError

OFFSET_FNS = ("log", "identity")
KL_ESTIMATORS = ("k1", "k3")


class _Config:
    """Checks types from the field annotations, then ranges; so a config built directly is as safe as make_config's."""

    _name = ""

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.type == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    self._fail(f.name, f"must be a finite number, got {v!r}")
                setattr(self, f.name, float(v))
            elif f.type == "bool" and not isinstance(v, bool):
                self._fail(f.name, f"must be true or false, got {v!r}")
            elif f.type == "str" and not isinstance(v, str):
                self._fail(f.name, f"must be a string, got {v!r}")
        if getattr(self, "beta", 1.0) <= 0:
            self._fail("beta", f"must be > 0, got {self.beta}")  # type: ignore[attr-defined]
        self._check()

    def _check(self) -> None:
        """Algorithm-specific ranges; overridden where there are any."""

    def _nonnegative(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) < 0:
                self._fail(name, f"must be >= 0, got {getattr(self, name)}")

    def _fail(self, name: str, why: str) -> None:
        raise EvalHarnessError(f"{self._name}: hyperparameter '{name}' {why}")


@dataclass
class DPOConfig(_Config):
    """DPO, Rafailov et al. 2023, Eq. 7: -log sigma(beta * h), h the summed log-ratio difference."""

    _name = "dpo"
    # KL-penalty strength: larger beta keeps the policy closer to the reference.
    beta: float = 0.1


@dataclass
class CDPOConfig(_Config):
    """Conservative DPO, Mitchell 2023 (ericmitchell.ai/cdpo.pdf) Eq. 3; TRL's sigmoid loss with label_smoothing."""

    _name = "cdpo"
    # KL-penalty strength, as in DPO.
    beta: float = 0.1
    # Assumed probability that a preference label is flipped; 0 gives DPO, 0.5 makes the loss symmetric.
    label_smoothing: float = 0.0

    def _check(self) -> None:
        if not 0.0 <= self.label_smoothing <= 0.5:
            self._fail("label_smoothing", f"must be in [0, 0.5], got {self.label_smoothing}")


@dataclass
class HingeConfig(_Config):
    """SLiC-HF hinge (Zhao et al. 2023) on the DPO log-ratio, as TRL's loss_type="hinge": relu(1 - beta * h)."""

    _name = "hinge"
    # Inverse target margin: the loss is zero once h >= 1 / beta.
    beta: float = 0.1


@dataclass
class IPOConfig(_Config):
    """IPO, Azar et al. 2023 (A General Theoretical Paradigm...), Eq. 17: (h - 1 / (2 beta))^2; beta plays tau."""

    _name = "ipo"
    # Regularization tau: the regression target for h is 1 / (2 beta).
    beta: float = 0.1
    # Divide each log-prob by its response length first (TRL's per-token variant); needs lengths.
    length_normalized: bool = False


@dataclass
class ODPOConfig(_Config):
    """ODPO, Amini et al. 2024 (DPO with an Offset): -log sigma(beta * h - alpha * f(score_w - score_l))."""

    _name = "odpo"
    # KL-penalty strength, as in DPO.
    beta: float = 0.1
    # Scale of the offset; 0 gives DPO. Must be >= 0 so a larger score gap asks for a larger margin.
    alpha: float = 1.0
    # f applied to the score difference: "log" (the paper's and the official code's choice) or "identity".
    offset_fn: str = "log"

    def _check(self) -> None:
        self._nonnegative("alpha")
        if self.offset_fn not in OFFSET_FNS:
            self._fail("offset_fn", f"must be one of {', '.join(OFFSET_FNS)}, got {self.offset_fn!r}")


@dataclass
class SimPOConfig(_Config):
    """SimPO, Meng et al. 2024, Eq. 6: -log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)."""

    _name = "simpo"
    # Scale of the length-averaged log-prob reward.
    beta: float = 2.0
    # ABSOLUTE target reward margin (the paper's gamma); SimPO's code takes gamma_beta_ratio = gamma / beta instead.
    gamma: float = 1.0


@dataclass
class RDPOConfig(_Config):
    """R-DPO, Park et al. 2024 (Disentangling Length from Quality in DPO): DPO with the reward r - alpha |y|."""

    _name = "rdpo"
    # KL-penalty strength, as in DPO.
    beta: float = 0.1
    # Length penalty per response token; positive alpha penalizes length (see losses.preference_loss).
    alpha: float = 0.01


@dataclass
class ORPOConfig(_Config):
    """ORPO, Hong et al. 2024, Eq. 6-7: token-mean NLL of y_w + lam * -log sigma(log odds(y_w) - log odds(y_l))."""

    _name = "orpo"
    # Weight of the odds-ratio term against the NLL (the paper's lambda; TRL calls it beta).
    lam: float = 0.1

    def _check(self) -> None:
        self._nonnegative("lam")


@dataclass
class CPOConfig(_Config):
    """CPO, Xu et al. 2024, Eq. 6-8: -log sigma(beta (log pi(y_w) - log pi(y_l))) + nll_weight * token-mean NLL."""

    _name = "cpo"
    # Scale of the summed log-prob difference inside the sigmoid.
    beta: float = 0.1
    # Weight of the behaviour-cloning NLL on y_w (Eq. 8 uses 1).
    nll_weight: float = 1.0

    def _check(self) -> None:
        self._nonnegative("nll_weight")


@dataclass
class KTOConfig(_Config):
    """KTO, Ethayarajh et al. 2024, Eq. 8: unpaired; a value 1 - sigma(.) around the KL reference point."""

    _name = "kto"
    # Scale of the log-ratio against the reference point.
    beta: float = 0.1
    # lambda_D: weight of desirable examples.
    desirable_weight: float = 1.0
    # lambda_U: weight of undesirable examples.
    undesirable_weight: float = 1.0

    def _check(self) -> None:
        self._nonnegative("desirable_weight", "undesirable_weight")


@dataclass
class PPOConfig(_Config):
    """PPO for language models (Schulman et al. 2017, Eq. 7; Ziegler et al. 2019; Ouyang et al. 2022): the clipped
    surrogate and clipped value loss over rollouts sampled from the policy, reward = judge score - kl_coef * KL.

    Defaults are TRL's last ``PPOConfig`` (trl.experimental.ppo, TRL 1.12, the last release that has it) unless a
    field says otherwise; the loop and the losses are in ``evalharness/train/ppo.py``.
    """

    _name = "ppo"
    # The reward judge, any judge spec (sentiment, toxicity, hf:MODEL[:LABEL], rm:MODEL): its score on the response
    # text is added at the last response token. A lower-is-better judge (toxicity) gives 1 - p, so rewards stay
    # in [0, 1] like sentiment's. No TRL equivalent (TRL's reward_model_path is a model).
    reward: str = "sentiment"
    # KL-penalty coefficient beta of the per-token reward r_t = -beta * kl_t. TRL PPOConfig.kl_coef = 0.05.
    kl_coef: float = 0.05
    # kl_t estimator: k1 = log pi - log pi_ref, or k3 = (r - 1) - log r with r = pi_ref / pi (Schulman's "Approximating
    # KL Divergence"). TRL PPOConfig.kl_estimator = "k1".
    kl_estimator: str = "k1"
    # The adaptive KL controller of Ziegler et al. 2019 (Sec. 2.2): kl_coef *= 1 + clip(KL / target_kl - 1, -0.2, 0.2)
    # * n / horizon after each rollout batch of n episodes. TRL <= 0.11 PPOConfig.adap_kl_ctrl (default True there);
    # off here, as in TRL's current trainer, which has only the fixed coefficient.
    adaptive_kl: bool = False
    # Target sequence KL (nats) of the adaptive controller. TRL <= 0.11 PPOConfig.target = 6.
    target_kl: float = 6.0
    # Horizon (episodes) of the adaptive controller. TRL <= 0.11 PPOConfig.horizon = 10000.
    horizon: float = 10000.0
    # epsilon of the clipped surrogate, ratio clipped to [1 - eps, 1 + eps]. TRL PPOConfig.cliprange = 0.2.
    cliprange: float = 0.2
    # epsilon_v of the clipped value loss, V clipped to V_old +- eps_v. TRL PPOConfig.cliprange_value = 0.2.
    cliprange_value: float = 0.2
    # Weight of the value loss in pg_loss + vf_coef * vf_loss. TRL PPOConfig.vf_coef = 0.1.
    vf_coef: float = 0.1
    # Discount gamma of GAE. TRL PPOConfig.gamma = 1.
    gamma: float = 1.0
    # GAE lambda. TRL PPOConfig.lam = 0.95.
    lam: float = 0.95
    # Passes (PPO epochs) over each rollout batch, each in freshly shuffled minibatches. TRL num_ppo_epochs = 4.
    num_ppo_epochs: int = 4
    # Minibatches (optimizer steps) per PPO epoch; rollout batch = batch_size * grad_accum * num_mini_batches per
    # process, as in TRL (local_batch_size). TRL OnPolicyConfig.num_mini_batches = 1.
    num_mini_batches: int = 1
    # Whiten the per-token rewards (scale only) before GAE. TRL PPOConfig.whiten_rewards = False.
    whiten_rewards: bool = False
    # Subtracted from the judge score of a response that hit response_length without EOS; 0 = off (TRL's None).
    # TRL OnPolicyConfig.missing_eos_penalty = None.
    missing_eos_penalty: float = 0.0
    # Maximum new tokens per rollout response. TRL OnPolicyConfig.response_length = 53.
    response_length: int = 53
    # Sampling temperature of the rollouts; every log-prob (policy, old, reference) is taken from logits / temperature.
    # TRL OnPolicyConfig.temperature = 0.7.
    temperature: float = 0.7

    def _check(self) -> None:
        self._nonnegative("kl_coef", "cliprange", "cliprange_value", "vf_coef", "missing_eos_penalty")
        if self.kl_estimator not in KL_ESTIMATORS:
            self._fail("kl_estimator", f"must be one of {', '.join(KL_ESTIMATORS)}, got {self.kl_estimator!r}")
        for name in ("gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                self._fail(name, f"must be in [0, 1], got {getattr(self, name)}")
        for name in ("target_kl", "horizon", "temperature"):
            if getattr(self, name) <= 0:
                self._fail(name, f"must be > 0, got {getattr(self, name)}")
        for name in ("num_ppo_epochs", "num_mini_batches", "response_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                self._fail(name, f"must be an integer >= 1, got {v!r}")
        if not isinstance(self.reward, str) or not self.reward or self.reward == "kl":
            self._fail("reward", f"must name a text judge (sentiment, toxicity, hf:MODEL[:LABEL]), got {self.reward!r}")


# -- loss formulas ----------------------------------------------------------------------------------------------
# Each takes the algorithm's config ``c`` and a batch of pairs ``p`` (losses._Pair: summed log-probs chosen/rejected,
# the reference's, lengths |y|, scores; h() the summed log-ratio difference) and returns the per-pair loss, unreduced.
# torch is imported inside, so reading the table (names, colours, quickstart settings) does not load it.


def _dpo(c: Any, p: Any) -> Any:
    import torch.nn.functional as F

    return -F.logsigmoid(c.beta * p.h())  # Rafailov et al. Eq. 7


def _cdpo(c: Any, p: Any) -> Any:
    import torch.nn.functional as F

    z, eps = c.beta * p.h(), c.label_smoothing
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)  # Mitchell note Eq. 3: labels flipped w.p. eps


def _hinge(c: Any, p: Any) -> Any:
    import torch

    return torch.relu(1 - c.beta * p.h())  # SLiC-HF calibration hinge, TRL loss_type="hinge"


def _ipo(c: Any, p: Any) -> Any:
    h = p.h()
    if c.length_normalized:  # TRL's IPO: every log-prob averaged over its response tokens before the difference
        h = (p.chosen - p.ref_chosen) / p.len_chosen - (p.rejected - p.ref_rejected) / p.len_rejected
    return (h - 1 / (2 * c.beta)) ** 2  # Azar et al. Eq. 17, beta in the role of tau


def _odpo(c: Any, p: Any) -> Any:
    import torch
    import torch.nn.functional as F

    z = c.beta * p.h()
    diff = p.score_chosen - p.score_rejected
    if c.offset_fn == "identity":
        return -F.logsigmoid(z - c.alpha * diff)
    if c.alpha == 0:  # 0 * log(0) would be NaN; alpha = 0 is DPO by definition
        return -F.logsigmoid(z)
    # Official code (rycolab/odpo trainers.py): offset = alpha * log(s_w - s_l), unclamped. At s_w == s_l the offset
    # is -inf and its loss is exactly 0 with zero gradient; we return that limit without forming inf, and give
    # s_w < s_l (NaN there) the same: a pair whose scores do not favour y_w carries no signal under f = log.
    ok = diff > 0
    offset = c.alpha * torch.log(torch.where(ok, diff, torch.ones_like(diff)))
    return torch.where(ok, -F.logsigmoid(z - offset), torch.zeros_like(z))


def _simpo(c: Any, p: Any) -> Any:
    import torch.nn.functional as F

    z = c.beta * p.chosen / p.len_chosen - c.beta * p.rejected / p.len_rejected
    return -F.logsigmoid(z - c.gamma)  # Meng et al. Eq. 6, gamma absolute


def _rdpo(c: Any, p: Any) -> Any:
    import torch.nn.functional as F

    # Reward beta*log-ratio - alpha*|y| in the Bradley-Terry loss: the length terms enter as +alpha(|y_w| - |y_l|).
    return -F.logsigmoid(c.beta * p.h() + c.alpha * (p.len_chosen - p.len_rejected))


def log_odds(logps: Any, lengths: Any) -> Any:
    """log(p / (1 - p)) with log p = a the token-averaged log-prob (ORPO Eq. 7), stable as a -> 0."""
    import torch

    a = logps / lengths
    # a == 0 (p = 1) has infinite odds and would give inf - inf = NaN; clamp to the largest representable a < 0.
    a = a.clamp(max=-torch.finfo(a.dtype).eps)
    return a - torch.log(-torch.expm1(a))  # log(1 - e^a) = log(-expm1(a)), accurate near a = 0 unlike log1p(-exp(a))


def _orpo(c: Any, p: Any) -> Any:
    import torch.nn.functional as F

    nll = -p.chosen / p.len_chosen
    ratio = log_odds(p.chosen, p.len_chosen) - log_odds(p.rejected, p.len_rejected)
    return nll - c.lam * F.logsigmoid(ratio)  # Hong et al. Eq. 6 (total) with L_OR from Eq. 7


def _cpo(c: Any, p: Any) -> Any:
    import torch.nn.functional as F

    nll = -p.chosen / p.len_chosen
    return -F.logsigmoid(c.beta * (p.chosen - p.rejected)) + c.nll_weight * nll  # Xu et al. Eq. 6 + Eq. 7 -> Eq. 8


# -- implicit rewards -------------------------------------------------------------------------------------------
# The quantity each loss compares (TRL's logging convention), named by the algorithm that defines it; ``s`` is the
# scale (the row's reward hyperparameter). The DPO family's extra terms (R-DPO's length term, ODPO's offset, cDPO's
# smoothing, IPO's target) are margins in the loss, not parts of the reward. tasks/preference_accuracy scores
# checkpoints under each definition.
REWARDS: dict[str, Callable[[float, Any], tuple[Any, Any]]] = {
    "dpo": lambda s, p: (s * (p.chosen - p.ref_chosen), s * (p.rejected - p.ref_rejected)),  # summed log-ratio
    "simpo": lambda s, p: (s * p.chosen / p.len_chosen, s * p.rejected / p.len_rejected),  # length-averaged log-prob
    "cpo": lambda s, p: (s * p.chosen, s * p.rejected),  # summed log-prob, reference-free
}
REWARD_USES_LENGTHS = ("simpo",)


# -- the table --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlgorithmSpec:
    """Every fact about one algorithm that the trainer, losses, evaluation, plots and quickstart need."""

    name: str
    config_cls: type
    needs_reference: bool  # reference-model log-probs of both responses
    needs_scores: bool  # a scalar score per response (ODPO's offset)
    unpaired: bool  # single examples labelled desirable/undesirable, not pairs (use kto_loss)
    needs_lengths: bool  # response token counts (ipo needs them only with length_normalized=True)
    paper: str
    loss: Callable[[Any, Any], Any] | None  # (config, pairs) -> per-pair loss; None: KTO (kto_loss), PPO (ppo.py)
    # The implicit reward: (definition in REWARDS, the hyperparameter that scales it). PPO's policy, regularized by
    # kl_coef * KL, has the reward kl_coef * log(pi / pi_ref) + const (the DPO paper's Eq. 5); KTO's is Eq. 8's.
    reward: tuple[str, str]
    display: str  # in plots and tables
    colour: str  # one fixed colour per algorithm, so it keeps it from plot to plot
    quick: dict[str, Any]  # the quickstart's settings: hyperparameters, and training fields that override its own
    online: bool = False  # trains on prompts, sampling its own responses (PPO): evalharness/train/ppo.py

    @property
    def reward_uses_lengths(self) -> bool:
        """Whether the implicit reward is length-normalized (needs response lengths)."""
        return self.reward[0] in REWARD_USES_LENGTHS


# One row per algorithm, so the table reads as one.
# fmt: off
ALGORITHMS: dict[str, AlgorithmSpec] = {s.name: s for s in [
    AlgorithmSpec("dpo", DPOConfig, True, False, False, False, "Rafailov et al. 2023, arXiv:2305.18290, Eq. 7",
                  _dpo, ("dpo", "beta"), "DPO", "#1f77b4", {"beta": 0.1}),
    AlgorithmSpec("cdpo", CDPOConfig, True, False, False, False, "Mitchell 2023, ericmitchell.ai/cdpo.pdf, Eq. 3",
                  _cdpo, ("dpo", "beta"), "cDPO", "#393b79", {"beta": 0.1, "label_smoothing": 0.1}),
    AlgorithmSpec("hinge", HingeConfig, True, False, False, False, "Zhao et al. 2023 (SLiC-HF), arXiv:2305.10425",
                  _hinge, ("dpo", "beta"), "hinge", "#637939", {"beta": 0.1}),
    AlgorithmSpec("ipo", IPOConfig, True, False, False, False, "Azar et al. 2023, arXiv:2310.12036, Eq. 17",
                  _ipo, ("dpo", "beta"), "IPO", "#ff7f0e", {"beta": 0.1}),
    AlgorithmSpec("odpo", ODPOConfig, True, True, False, False, "Amini et al. 2024, arXiv:2402.10571",
                  _odpo, ("dpo", "beta"), "ODPO", "#2ca02c", {"beta": 0.1, "alpha": 1.0, "offset_fn": "identity"}),
    AlgorithmSpec("simpo", SimPOConfig, False, False, False, True, "Meng et al. 2024, arXiv:2405.14734, Eq. 6",
                  _simpo, ("simpo", "beta"), "SimPO", "#d62728", {"beta": 2.0, "gamma": 1.0}),
    AlgorithmSpec("rdpo", RDPOConfig, True, False, False, True, "Park et al. 2024, arXiv:2403.19159",
                  _rdpo, ("dpo", "beta"), "R-DPO", "#9467bd", {"beta": 0.1, "alpha": 0.01}),
    # ORPO's reward is lam times the average log-probability (TRL's ORPO logging; its log-odds are monotone in it).
    AlgorithmSpec("orpo", ORPOConfig, False, False, False, True, "Hong et al. 2024, arXiv:2403.07691, Eq. 6-7",
                  _orpo, ("simpo", "lam"), "ORPO", "#e377c2", {"lam": 0.1}),
    AlgorithmSpec("cpo", CPOConfig, False, False, False, True, "Xu et al. 2024, arXiv:2401.08417, Eq. 6-8",
                  _cpo, ("cpo", "beta"), "CPO", "#bcbd22", {"beta": 0.1}),
    AlgorithmSpec("kto", KTOConfig, True, False, True, False, "Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 8",
                  None, ("dpo", "beta"), "KTO", "#8c564b", {"beta": 0.1}),
    # PPO at three KL coefficients (the DPO paper's PPO points), on the pairs' training prompts with their judge;
    # rollouts at temperature 1 like the evaluation's samples. Rollout batches of 32 (8 x 4 minibatches; batches of
    # 8 were too noisy to move the held-out reward beyond its CI), 24 of them (6 passes over the 128 prompts),
    # 2 PPO epochs, a constant learning rate, bf16 (rollouts sampled from a bf16 copy of the actor) to keep it within
    # about an hour per run. tests/test_ppo_bundled.py is the kl_coef 0.05 point.
    AlgorithmSpec("ppo", PPOConfig, True, False, False, False,
                  "Schulman et al. 2017, arXiv:1707.06347, Eq. 7; Ziegler et al. 2019, arXiv:1909.08593",
                  None, ("dpo", "kl_coef"), "PPO", "#17becf",
                  {"reward": "sentiment", "kl_coef": [0.02, 0.05, 0.2], "response_length": 40, "temperature": 1.0,
                   "num_ppo_epochs": 2, "num_mini_batches": 4, "learning_rate": 5.0e-5, "max_steps": 24,
                   "warmup_ratio": 0.0, "schedule": "constant", "dtype": "bfloat16"}, online=True),
]}
# fmt: on


def get_spec(algorithm: str) -> AlgorithmSpec:
    """The registry entry for ``algorithm``; an unknown name is an error listing the valid ones."""
    try:
        return ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        raise EvalHarnessError(f"unknown algorithm {algorithm!r}; valid: {', '.join(ALGORITHMS)}") from None


def make_config(algorithm: str, **hparams: Any) -> Any:
    """The algorithm's config, ``hparams`` over its defaults; unknown names, wrong types, bad ranges are errors."""
    cls = get_spec(algorithm).config_cls
    valid = [f.name for f in fields(cls)]
    for key in hparams:
        if key not in valid:
            raise EvalHarnessError(f"{algorithm}: unknown hyperparameter {key!r}; valid: {', '.join(valid)}")
    return cls(**hparams)
