"""Preference accuracy: how often a model's implicit reward ranks the chosen response above the rejected one on
held-out pairs, and how that order relates to the average log-likelihood order (the SimPO paper's reward accuracy
and its reward / likelihood contingency table, Meng et al. 2024, arXiv:2405.14734, Sec. 4 and Fig. 4).

Nothing is generated. Each pair's chosen and rejected responses are scored under the model and under the run's
reference (``reference:``, the SFT model): summed response log-probs and token counts, the prompt rendered once by
the harness (``prompts.render``) and each response tokenized as the trainer does (``prompts.render_response``:
the text's tokens, then EOS). One verdict per pair keeps those six numbers, so every metric below, and the paired
difference between two models, is computed from the store. These are the trainer's ids (``trainer._encode``), except
that the trainer cuts prompts beyond ``max_prompt_length`` (from the left) and responses beyond ``max_length``;
here nothing is cut, so every checkpoint is scored on the same whole responses.

Three reward definitions, each ``implicit_rewards`` of ``train/losses.py`` (what the trainer logs):

* ``dpo``: beta (log pi(y|x) - log pi_ref(y|x)), sums over response tokens (DPO's implicit reward);
* ``simpo``: beta / |y| log pi(y|x), length-normalized, reference-free (SimPO Eq. 4);
* ``cpo``: beta log pi(y|x), summed, reference-free (CPO's reference-free DPO).

``reward_acc_dpo``, ``reward_acc_simpo`` and ``reward_acc_cpo`` score every model under each definition (beta > 0
scales a reward and never changes an order, so these need no beta), so checkpoints of different algorithms compare
on one definition. ``reward_acc_own`` uses the checkpoint's own training reward, read from its
``evalharness_manifest.json`` (``OWN``: every algorithm of ``train/algorithms.py`` mapped to a definition and the
hyperparameter that scales it; ``Config.beta`` overrides the scale). A model without a manifest (the base/SFT
model) has no own reward and gets only the three fixed definitions; scored against itself as the reference, its
DPO-style reward is exactly 0 for every response (the same log-probs are subtracted), so every pair is a tie and
``reward_acc_dpo`` is 0.5 exactly. **A tie counts half** in every accuracy; the CI is Wilson's score interval.

Under the own reward, the 2x2 table of reward order against average log-likelihood order (log pi(y|x) / |y|):
``contingency_XY`` counts pairs whose reward ranks X higher and whose average log-likelihood ranks Y higher (w the
chosen, l the rejected); pairs tied on either side are left out of the table (``n_tied`` in its extra).
``reward_loglik_agreement`` = (ww + ll) / (ww + wl + lw + ll) with a Wilson CI. SimPO reports about 50% for DPO and
100% for SimPO. For SimPO the 100% holds by construction: its reward is beta times the average log-likelihood,
beta > 0, and gamma is a target margin in the loss (r_w - r_l > gamma is what the loss pushes for), not part of the
reward, so it changes no order. (Rounding beta * x is monotone: a strict order can become a tie, which leaves the
table, but never flips.) ORPO's reward (lam times the average log-likelihood, as its log-odds are monotone in it)
agrees by construction too.

The margin r_w - r_l under the own reward: ``reward_margin`` (mean, t CI over pairs) and ``reward_margin_q10`` ...
``q90`` (percentile bootstrap CIs over pairs, 1000 rounds).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from evalharness.core.errors import EvalHarnessError, InputError, parse_json
from evalharness.core.prompts import render, render_response
from evalharness.core.records import Score, ScoreRequest, Verdict, content_hash
from evalharness.core.stats import bootstrap_ci, mean_ci, wilson_ci
from evalharness.judges.kl import check_same_tokenizer
from evalharness.tasks.base import ModelRecords, Pending, Session, Task
from evalharness.training.algorithms import ALGORITHMS
from evalharness.training.data import PreferencePair, data_hash, load_preferences
from evalharness.training.trainer import MANIFEST

DEFINITIONS = {
    "dpo": "beta (log pi - log pi_ref), summed",
    "simpo": "beta / |y| log pi, reference-free",
    "cpo": "beta log pi, summed, reference-free",
}
REFERENCE_BASED = {"dpo"}
# algorithm -> (reward definition, the manifest hyperparameter that is its scale): each algorithm's implicit reward,
# from its row in train/algorithms.py (the trainer's logged rewards, implicit_rewards). The DPO family's extra terms
# are margins or offsets in the loss, not parts of the reward. PPO's manifest kl_coef is the coefficient reached
# (adaptive_kl moves it).
OWN: dict[str, tuple[str, str]] = {name: spec.reward for name, spec in ALGORITHMS.items()}
QUANTILES = (10, 25, 50, 75, 90)
CELLS = ("ww", "wl", "lw", "ll")  # (the response the reward ranks higher, the one with higher average log-lik)
BOOTSTRAP_ROUNDS = 1000


@dataclass
class Config:
    pairs: str  # held-out preference pairs, train/data.py's format (JSONL or hf:NAME[:SPLIT])
    beta: float | None = None  # scale of the own reward (margins only); default: the checkpoint manifest's
    split: str = "test"  # the split of an hf: source without one


class PreferenceAccuracyTask(Task):
    Config = Config
    VERSION = "1"
    needs_reference = True

    def setup(self) -> None:
        beta = self.cfg.beta
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0):
            raise InputError(f"must be a number > 0, got {self.cfg.beta!r}", field="beta")
        self.pairs: list[PreferencePair] = load_preferences(self.cfg.pairs, split=self.cfg.split)
        self.pairs_hash = data_hash(self.pairs)
        self._keys = {p.id: content_hash(p.to_dict()) for p in self.pairs}
        self._own: dict[str, dict[str, Any] | None] = {}

    @property
    def task_version(self) -> str:
        return f"{self.VERSION};pairs={self.pairs_hash[7:19]}"  # another pair set is another benchmark

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "pairs_hash": self.pairs_hash, "reference": self.env.reference_name}

    def judgments(self, session: Session) -> list[Pending]:
        return [Pending(self._keys[p.id], p.id, p) for p in self.pairs]

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        assert self.env.reference is not None
        policy, reference = session.backend, self.env.reference()
        check_same_tokenizer(policy, reference)
        own = self.own_reward(session)
        tok = policy.tokenizer
        reqs = []
        for p in pending:
            prompt = render(tok, p.payload.prompt)
            reqs += [
                ScoreRequest(f"{p.item_id}/chosen", prompt, render_response(tok, p.payload.chosen)),
                ScoreRequest(f"{p.item_id}/rejected", prompt, render_response(tok, p.payload.rejected)),
            ]
        lp = policy.logprobs(reqs)
        # The reference model scored as a policy: its own numbers, so every DPO-style reward is exactly 0.
        ref = lp if reference is policy else reference.logprobs(reqs)
        version = self.judge_version("logprobs;sum,count")
        out = []
        for k, p in enumerate(pending):
            w, l, rw, rl = lp[2 * k], lp[2 * k + 1], ref[2 * k], ref[2 * k + 1]
            if not all(math.isfinite(x.logprob) for x in (w, l, rw, rl)):
                out.append(
                    Verdict(
                        p.item_id,
                        self._judge_id,
                        version,
                        "error",
                        key=p.key,
                        error=f"non-finite log-prob (policy {w.logprob}, {l.logprob}; reference "
                        f"{rw.logprob}, {rl.logprob})",
                    )
                )
                continue
            meta = {
                "logp_chosen": w.logprob,
                "logp_rejected": l.logprob,
                "ref_logp_chosen": rw.logprob,
                "ref_logp_rejected": rl.logprob,
                "n_chosen": w.n_tokens,
                "n_rejected": l.n_tokens,
                "own": own,
            }
            # value: the average log-likelihood margin, defined for every model and every beta
            out.append(
                Verdict(
                    p.item_id,
                    self._judge_id,
                    version,
                    "ok",
                    w.logprob / w.n_tokens - l.logprob / l.n_tokens,
                    key=p.key,
                    meta=meta,
                )
            )
        return out

    @property
    def _judge_id(self) -> str:
        return f"logprobs:{self.env.reference_name}"

    def own_reward(self, session: Session) -> dict[str, Any] | None:
        """The checkpoint's training reward from its manifest: algorithm, definition, beta; None without one."""
        if session.name in self._own:
            return self._own[session.name]
        model_ref = getattr(session.backend, "ref", None)
        path = Path(model_ref.path) / MANIFEST if model_ref is not None else None
        own = None
        if path is not None and path.is_file():
            manifest = parse_json(path.read_bytes(), path=path, what="malformed checkpoint manifest")
            own = own_from_manifest(manifest, str(path), self.cfg.beta)
            if own["definition"] in REFERENCE_BASED:
                trained = manifest.get("reference_model")
                own["trained_against_this_reference"] = self._same_reference(trained)
                if own["trained_against_this_reference"] is False:
                    self.env.log(
                        f"{session.name}: trained against {trained}, scored against "
                        f"{self.env.reference_name}: its own reward is taken against the run's reference"
                    )
        else:
            self.env.log(
                f"{session.name}: no checkpoint manifest: no own reward (reference-free definitions, "
                "and the DPO-style one against the run's reference)"
            )
        self._own[session.name] = own
        return own

    def _same_reference(self, spec: str | None) -> bool | None:
        from evalharness.core.models import resolve

        run_ref = getattr(self.env.reference(), "ref", None) if self.env.reference else None
        if not spec or run_ref is None:
            return None
        try:
            trained = resolve(spec)
        except EvalHarnessError:
            return None
        return bool(trained.path == run_ref.path and trained.revision == run_ref.revision)

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        keys = set(self._keys.values())
        table = PairTable.of(verdicts, keys)
        skipped = len(self.pairs) - len(table.ids)
        common: dict[str, Any] = {
            "task": self.name,
            "model": session.name,
            "task_version": self.task_version,
            "judge_id": self._judge_id,
            "n_skipped": skipped,
        }
        self_ref = session.name == self.env.reference_name
        out = []
        for definition in DEFINITIONS:
            extra: dict[str, Any] = {"definition": DEFINITIONS[definition]}
            if self_ref and definition in REFERENCE_BASED:
                extra["note"] = "the model is its own reference: every reward is 0, every pair a tie (0.5)"
            out.append(
                self._accuracy(
                    f"reward_acc_{definition}", table.values(f"reward_acc_{definition}"), definition, common, extra
                )
            )
        own = table.own
        if own is None:
            return out
        extra = {k: own[k] for k in ("algorithm", "definition", "beta")}
        out.append(self._accuracy("reward_acc_own", table.values("reward_acc_own"), "own", common, extra))
        out += self._contingency_scores(table, common, extra)
        out += self._margin_scores(table, common, extra)
        return out

    def _contingency_scores(self, table: PairTable, common: dict[str, Any], extra: dict[str, Any]) -> list[Score]:
        """Under the own reward: its agreement with the average log-likelihood order, then the 2x2 table's cells."""
        cells = {c: int(sum(table.values(f"contingency_{c}").values())) for c in CELLS}
        strict = sum(cells.values())
        extra_t = {
            **extra,
            "table": cells,
            "n_tied": len(table.ids) - strict,
            "rows": "reward ranks w|l higher",
            "columns": "average log-likelihood ranks w|l higher",
        }
        agree = self._accuracy(
            "reward_loglik_agreement", table.values("reward_loglik_agreement"), "own", common, extra_t
        )
        out = [agree]
        for c in CELLS:
            out.append(
                Score(
                    metric=f"contingency_{c}",
                    value=float(cells[c]) if strict else None,
                    n=strict,
                    judge_version=self.judge_version("contingency", c),
                    baseline=self.env.reference_name,
                    higher_is_better=None,
                    extra=extra_t,
                    **common,
                )
            )
        return out

    def _margin_scores(self, table: PairTable, common: dict[str, Any], extra: dict[str, Any]) -> list[Score]:
        """Under the own reward: the mean margin r_w - r_l (t CI), then its quantiles (percentile bootstrap CIs)."""
        out: list[Score] = []
        margins = np.array(list(table.values("reward_margin").values()))
        # One column across algorithms, like reward_acc_own: each row in its own reward's units (its extra says
        # which); the paired difference refuses two different definitions or betas.
        keys_m: dict[str, Any] = {
            "judge_version": self.judge_version("margin", "own"),
            "baseline": self.env.reference_name,
            "higher_is_better": None,
        }
        if margins.size:
            m, se, lo, hi = mean_ci(cast("Sequence[float]", margins))  # mean_ci takes any array-like (np.asarray)
            out.append(
                Score(
                    metric="reward_margin",
                    value=m,
                    n=margins.size,
                    stderr=se,
                    ci_low=lo,
                    ci_high=hi,
                    extra={**extra, "quantiles": {f"q{q}": float(np.percentile(margins, q)) for q in QUANTILES}},
                    **keys_m,
                    **common,
                )
            )
            for q in QUANTILES:

                def quantile(x: np.ndarray, q: int = q) -> float:
                    return float(np.percentile(x, q))

                lo, hi = bootstrap_ci(margins, quantile, rounds=BOOTSTRAP_ROUNDS)
                out.append(
                    Score(
                        metric=f"reward_margin_q{q}",
                        value=float(np.percentile(margins, q)),
                        n=margins.size,
                        ci_low=lo,
                        ci_high=hi,
                        extra={**extra, "ci": "percentile bootstrap over pairs"},
                        **keys_m,
                        **common,
                    )
                )
        return out

    def _accuracy(
        self, metric: str, values: dict[str, float], definition: str, common: dict[str, Any], extra: dict[str, Any]
    ) -> Score:
        """Share of pairs won (a tie counts half), its Wilson 95% CI; n counts pairs."""
        keys: dict[str, Any] = {
            "judge_version": self.judge_version(metric, definition),
            "higher_is_better": True,
            "baseline": self.env.reference_name if definition in REFERENCE_BASED | {"own"} else None,
        }
        x = np.array(list(values.values()), dtype=float)
        extra = {**extra, "ties": "count half", "n_ties": int((x == 0.5).sum()), "ci": "Wilson score"}
        if not x.size:
            return Score(metric=metric, value=None, n=0, extra=extra, **keys, **common)
        lo, hi = wilson_ci(float(x.sum()), x.size)
        se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
        return Score(
            metric=metric,
            value=float(x.mean()),
            n=x.size,
            stderr=se,
            ci_low=lo,
            ci_high=hi,
            extra=extra,
            **keys,
            **common,
        )


def own_from_manifest(manifest: dict[str, Any], where: str, beta: float | None = None) -> dict[str, Any]:
    """A checkpoint's own reward (``OWN``): algorithm, definition, beta (``beta`` overrides the manifest's)."""
    algorithm = manifest.get("algorithm")
    if algorithm not in OWN:
        raise InputError(
            f"algorithm {algorithm!r} has no reward definition (known: {', '.join(OWN)})", path=where, field="algorithm"
        )
    definition, param = OWN[algorithm]
    scale = beta
    if scale is None:
        scale = (
            manifest.get("kl_coef")
            if algorithm == "ppo" and manifest.get("kl_coef") is not None
            else (manifest.get("hparams") or {}).get(param)
        )
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise InputError(
            f"the own reward of {algorithm} needs hparams.{param} > 0, got {scale!r}; set the task's beta",
            path=where,
            field=f"hparams.{param}",
        )
    return {"algorithm": algorithm, "definition": definition, "beta": float(scale)}


@dataclass
class PairTable:
    """The scored pairs of one model (one ok verdict each), and every per-pair quantity of the metrics."""

    ids: list[str]
    own: dict[str, Any] | None
    per_pair: dict[str, np.ndarray]  # metric -> one value per pair (NaN: the pair does not count for it)

    @classmethod
    def of(cls, verdicts: list[Verdict], keys: set[str] | None = None) -> PairTable:
        latest: dict[str, Verdict] = {}
        for v in verdicts:  # later rows win: an error retried on a later run
            latest[v.key] = v
        ok = [v for k, v in latest.items() if v.status == "ok" and (keys is None or k in keys)]
        owns = {json.dumps(v.meta.get("own"), sort_keys=True) for v in ok}
        if len(owns) > 1:
            raise EvalHarnessError("verdicts of one model disagree on its own reward")
        own = ok[0].meta.get("own") if ok else None
        return cls([v.item_id for v in ok], own, _per_pair(ok, own))

    def values(self, metric: str) -> dict[str, float]:
        """pair id -> the metric's per-pair value, for the pairs it counts."""
        if metric not in self.per_pair:
            raise EvalHarnessError(
                f"no per-pair values of {metric}" + (" (no own reward: not a checkpoint)" if self.own is None else "")
            )
        return {i: float(x) for i, x in zip(self.ids, self.per_pair[metric]) if not math.isnan(x)}


def _rewards(definition: str, beta: float, m: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(r_w, r_l) under a definition: the trainer's ``implicit_rewards``, in float64."""
    import torch

    from evalharness.training.losses import implicit_rewards

    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in m.items()}
    w, l = implicit_rewards(
        definition,
        chosen_logps=t["logp_chosen"],
        rejected_logps=t["logp_rejected"],
        ref_chosen_logps=t["ref_logp_chosen"],
        ref_rejected_logps=t["ref_logp_rejected"],
        chosen_lengths=t["n_chosen"],
        rejected_lengths=t["n_rejected"],
        beta=beta,
    )
    return w.numpy(), l.numpy()


def _won(w: np.ndarray, l: np.ndarray) -> np.ndarray:
    return np.where(w > l, 1.0, np.where(w == l, 0.5, 0.0))


def _per_pair(ok: list[Verdict], own: dict[str, Any] | None) -> dict[str, np.ndarray]:
    fields = ("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected", "n_chosen", "n_rejected")
    m = {f: np.array([float(v.meta[f]) for v in ok], dtype=float) for f in fields}
    out: dict[str, np.ndarray] = {}
    if not ok:
        return {f"reward_acc_{d}": np.zeros(0) for d in DEFINITIONS}
    for d in DEFINITIONS:  # beta 1: a positive scale changes no order
        out[f"reward_acc_{d}"] = _won(*_rewards(d, 1.0, m))
    if own is None:
        return out
    w, l = _rewards(own["definition"], own["beta"], m)
    out["reward_acc_own"] = _won(w, l)
    out["reward_margin"] = w - l
    reward = np.sign(w - l)
    loglik = np.sign(m["logp_chosen"] / m["n_chosen"] - m["logp_rejected"] / m["n_rejected"])
    strict = (reward != 0) & (loglik != 0)
    out["reward_loglik_agreement"] = np.where(strict, (reward == loglik).astype(float), np.nan)
    for c in CELLS:
        want = (1.0 if c[0] == "w" else -1.0, 1.0 if c[1] == "w" else -1.0)
        out[f"contingency_{c}"] = np.where(strict, ((reward == want[0]) & (loglik == want[1])).astype(float), np.nan)
    return out


def paired(metric: str, a: ModelRecords, b: ModelRecords, **_: Any) -> Any:
    """Accuracies, agreement and contingency cells: per-pair outcomes, exact McNemar (a cell's delta in counts
    over the shared pairs); ``reward_margin``: paired t over pairs, only under one reward definition and beta."""
    from evalharness.tasks.paired import mcnemar_paired, pair_items, paired_t

    ta, tb = PairTable.of(a.verdicts()), PairTable.of(b.verdicts())
    if metric.startswith("reward_margin_q"):
        raise EvalHarnessError("no paired test of a margin quantile: compare reward_margin")
    va, vb = ta.values(metric), tb.values(metric)
    if metric == "reward_margin":
        assert ta.own is not None and tb.own is not None  # values("reward_margin") raised above without an own reward
        da, db = ({k: own[k] for k in ("definition", "beta")} for own in (ta.own, tb.own))
        if da != db:
            raise EvalHarnessError(f"margins in different reward units ({da} vs {db}): compare reward_acc_*")
        return paired_t(va, vb, method="paired t over pairs")
    scale = float(len(pair_items(va, vb)[0])) if metric.startswith("contingency_") else 1.0
    return mcnemar_paired(va, vb, scale=scale)


TASK_CLASS = PreferenceAccuracyTask
