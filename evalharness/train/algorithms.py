"""One config dataclass per preference-optimization algorithm, and the registry the losses read.

The configs are the single source of truth for hyperparameter names, defaults and valid ranges (TRL style:
every field documented, the class docstring names the paper equation the loss implements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import EvalHarnessError

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
    # The reward judge, any text judge spec (sentiment, toxicity, hf:MODEL[:LABEL]): its score on the response
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


@dataclass(frozen=True)
class AlgorithmSpec:
    """What an algorithm needs from the data and the models, so a trainer can check before it computes."""

    name: str
    config_cls: type
    needs_reference: bool  # reference-model log-probs of both responses
    needs_scores: bool  # a scalar score per response (ODPO's offset)
    unpaired: bool  # single examples labelled desirable/undesirable, not pairs (use kto_loss)
    needs_lengths: bool  # response token counts (ipo needs them only with length_normalized=True)
    paper: str
    online: bool = False  # trains on prompts, sampling its own responses (PPO): evalharness/train/ppo.py


ALGORITHMS: dict[str, AlgorithmSpec] = {s.name: s for s in [
    AlgorithmSpec("dpo", DPOConfig, True, False, False, False, "Rafailov et al. 2023, arXiv:2305.18290, Eq. 7"),
    AlgorithmSpec("cdpo", CDPOConfig, True, False, False, False, "Mitchell 2023, ericmitchell.ai/cdpo.pdf, Eq. 3"),
    AlgorithmSpec("hinge", HingeConfig, True, False, False, False, "Zhao et al. 2023 (SLiC-HF), arXiv:2305.10425"),
    AlgorithmSpec("ipo", IPOConfig, True, False, False, False, "Azar et al. 2023, arXiv:2310.12036, Eq. 17"),
    AlgorithmSpec("odpo", ODPOConfig, True, True, False, False, "Amini et al. 2024, arXiv:2402.10571"),
    AlgorithmSpec("simpo", SimPOConfig, False, False, False, True, "Meng et al. 2024, arXiv:2405.14734, Eq. 6"),
    AlgorithmSpec("rdpo", RDPOConfig, True, False, False, True, "Park et al. 2024, arXiv:2403.19159"),
    AlgorithmSpec("orpo", ORPOConfig, False, False, False, True, "Hong et al. 2024, arXiv:2403.07691, Eq. 6-7"),
    AlgorithmSpec("cpo", CPOConfig, False, False, False, True, "Xu et al. 2024, arXiv:2401.08417, Eq. 6-8"),
    AlgorithmSpec("kto", KTOConfig, True, False, True, False, "Ethayarajh et al. 2024, arXiv:2402.01306, Eq. 8"),
    AlgorithmSpec("ppo", PPOConfig, True, False, False, False,
                  "Schulman et al. 2017, arXiv:1707.06347, Eq. 7; Ziegler et al. 2019, arXiv:1909.08593", online=True),
]}


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
