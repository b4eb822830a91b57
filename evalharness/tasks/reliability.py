"""How steady the judge is: position consistency, repeatability, and parse-failure and error rates.

These numbers describe the instrument, not the model, so they are Scores of the run (``run --json``, ``show``,
the index and the trackers carry them) with no direction (``higher_is_better`` None): the regression gate
never gates them unless asked by name, and ``compare`` shows them in their own section, never in a column
beside a model metric.

- **position consistency**: the share of items whose verdict is the same in both orders once the swap is
  undone. Arena-Hard: its two games (the baseline as A, then as B), on the policy's win / tie / loss.
  AlpacaEval with ``both_orders: true``: the official seeded order and the other one, on which output won; the
  other order's verdicts are stored under ``<task>#swapped`` and the win rates stay the official order's.
  MT-Bench grades one answer at a time: no order to swap.
- **repeatability** (a task's ``rejudge: {fraction, times, seed}``): a seeded subsample of the judged items is
  judged ``times`` more times, with new requests that the response cache never answers; the repeat verdicts
  are stored under ``<task>#rejudge`` so the task's own numbers are untouched. Reported as agreement with the
  primary verdict and Cohen's kappa (quadratic-weighted for MT-Bench's 1-10 ratings).
- **parse-failure and error rates** of the judge over the run's judgments.

Statistics: the item (question, instruction) is the unit. A repeated judgment of an item, and an item's two
games or two turns, are averaged within the item first; rates and agreements get a Wilson interval over items
(``stats.wilson_ci`` with the per-item shares as fractional successes: conservative, as a share's variance is at
most a Bernoulli's), kappa a cluster bootstrap over items.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from evalharness.backends.http import ChatRequest
from evalharness.core import stats
from evalharness.core.records import Score, Verdict, content_hash

REPEAT_SUFFIX = "#rejudge"  # repeat verdicts are stored under the task's name plus this
SWAPPED_SUFFIX = "#swapped"  # other-order verdicts (both_orders) likewise
RELIABILITY_METRICS = (
    "position_consistency",
    "repeat_agreement",
    "repeat_kappa",
    "parse_failure_rate",
    "error_rate",
)
KAPPA_ROUNDS = 1000
# Task options that add judgments of the judge (never a model number): not part of a run's identity.
JUDGE_CHECKS = ("rejudge", "both_orders")


@dataclass(frozen=True)
class Rejudge:
    """``rejudge: {fraction, times, seed}``: judge a seeded ``fraction`` of the items ``times`` more times."""

    fraction: float = 0.1
    times: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"rejudge.fraction must be in (0, 1], got {self.fraction}")
        if self.times < 1:
            raise ValueError(f"rejudge.times must be >= 1, got {self.times}")


def repeat_task(name: str) -> str:
    """The task name the repeat verdicts of task ``name`` are stored under."""
    return name + REPEAT_SUFFIX


def swapped_task(name: str) -> str:
    """The task name the other-order verdicts of task ``name`` (AlpacaEval ``both_orders``) are stored under."""
    return name + SWAPPED_SUFFIX


# ---------------------------------------------------------------- what a verdict's category is, per benchmark
def _sign_side(value: float) -> float:
    """AlpacaEval preference 1..2: which output won (1 baseline, 2 the model, 1.5 a tie)."""
    return 1.5 + 0.5 * float(np.sign(value - 1.5))


# module -> (kind, the verdict value's category): agreement is on categories; "rating" uses weighted kappa.
KINDS: dict[str, tuple[str, Callable[[float], float]]] = {
    "arena_hard": ("categorical", lambda v: float(v)),  # the policy's game score: 1 win, 0.5 tie, 0 loss
    "alpaca_eval": ("categorical", _sign_side),
    "mt_bench": ("rating", lambda v: float(round(v))),  # a G-Eval expected rating rounds to its nearest grade
}


def kind_of(module: str) -> tuple[str, Callable[[float], float]] | None:
    """(kind, category function) of an LLM-judged task module, or None for a task that is not one."""
    return KINDS.get(module.removesuffix(".task").rsplit(".", 1)[-1])


# ---------------------------------------------------------------- statistics
def cohen_kappa(a: Sequence[float], b: Sequence[float], *, weights: str | None = None) -> float:
    """Cohen's kappa of two label sequences (``weights='quadratic'``: the weighted kappa for ordinal ratings).
    NaN when chance agreement is total (one label everywhere)."""
    return float(_kappa_from_counts(*_confusion(a, b), weights=weights))


def _confusion(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array(sorted(set(a) | set(b)), dtype=float)
    index = {v: i for i, v in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b):
        counts[index[x], index[y]] += 1
    return counts, labels


def _kappa_from_counts(counts: np.ndarray, labels: np.ndarray, *, weights: str | None) -> np.ndarray:
    """Kappa of one confusion matrix (C x C) or of a stack of them (R x C x C): 1 - sum(w O) / sum(w E)."""
    k = len(labels)
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    if weights == "quadratic":
        w = (labels[i] - labels[j]) ** 2
    elif weights is None:
        w = (i != j).astype(float)
    else:
        raise ValueError(f"weights must be None or 'quadratic', got {weights!r}")
    total = counts.sum(axis=(-2, -1), keepdims=True)
    observed = counts / total
    expected = observed.sum(axis=-1, keepdims=True) * observed.sum(axis=-2, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 - (w * observed).sum(axis=(-2, -1)) / (w * expected).sum(axis=(-2, -1))


def kappa_ci(
    pairs: Sequence[tuple[Any, float, float]], *, weights: str | None = None, rounds: int = KAPPA_ROUNDS, seed: int = 0
) -> tuple[float, float, float, int]:
    """Kappa of (item, label a, label b) pairs, with a percentile bootstrap CI that resamples items (all of an
    item's pairs move together: a repeated judgment is not a new item). Returns (kappa, low, high, items)."""
    counts, labels = _confusion([p[1] for p in pairs], [p[2] for p in pairs])
    index = {v: i for i, v in enumerate(labels)}
    items = list(dict.fromkeys(p[0] for p in pairs))
    where = {it: n for n, it in enumerate(items)}
    per_item = np.zeros((len(items), len(labels), len(labels)))
    for it, x, y in pairs:
        per_item[where[it], index[x], index[y]] += 1
    kappa = float(_kappa_from_counts(counts, labels, weights=weights))
    if len(items) < 2:
        return kappa, math.nan, math.nan, len(items)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(items), size=(rounds, len(items)))
    weight = np.zeros((rounds, len(items)))
    np.add.at(weight, (np.arange(rounds)[:, None], draws), 1.0)
    boot = _kappa_from_counts(np.einsum("ri,ijk->rjk", weight, per_item), labels, weights=weights)
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return kappa, math.nan, math.nan, len(items)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return kappa, float(lo), float(hi), len(items)


def share_by_item(flags: Sequence[tuple[Any, bool]]) -> tuple[float, float, float, int]:
    """The mean over items of each item's share of true flags, with a Wilson CI over items (the item is the
    unit; its flags are averaged first). Returns (share, low, high, items)."""
    by_item: dict[Any, list[bool]] = defaultdict(list)
    for item, flag in flags:
        by_item[item].append(flag)
    n = len(by_item)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    shares = [sum(f) / len(f) for f in by_item.values()]
    lo, hi = stats.wilson_ci(sum(shares), n)
    return sum(shares) / n, lo, hi, n


# ---------------------------------------------------------------- the figures of one task and model
def position_pairs(verdicts: Sequence[Verdict]) -> tuple[list[tuple[str, float, float]], int]:
    """Arena-Hard: (question, game 1 verdict, game 2 verdict) on the policy's score for questions with both
    games scored, and the number of questions that lack one."""
    games: dict[str, dict[int, Verdict]] = defaultdict(dict)
    for v in verdicts:
        if v.meta.get("game") in (1, 2):
            games[v.item_id][int(v.meta["game"])] = v
    pairs, missing = [], 0
    for item, g in games.items():
        if all(k in g and g[k].status == "ok" for k in (1, 2)):
            pairs.append((item, float(g[1].value), float(g[2].value)))  # type: ignore[arg-type]
        else:
            missing += 1
    return pairs, missing


def repeat_pairs(
    primary: Sequence[Verdict], repeats: Sequence[Verdict], category: Callable[[float], float], *, sep: str = "#r"
) -> tuple[list[tuple[str, float, float]], int]:
    """(item, primary category, repeat category) for each scored repeat (key ``PRIMARY{sep}...``) of a scored
    primary verdict, and the number of repeats that failed or did not parse."""
    first = {v.key: v for v in primary if v.status == "ok"}
    pairs, bad = [], 0
    for r in repeats:
        base = first.get(r.key.rsplit(sep, 1)[0])
        if base is None:
            continue
        if r.status != "ok":
            bad += 1
            continue
        pairs.append((r.item_id, category(float(base.value)), category(float(r.value))))  # type: ignore[arg-type]
    return pairs, bad


@dataclass
class ScoreKeys:
    """The comparability keys reliability Scores share with their task's scores."""

    task: str
    model: str
    task_version: str
    judge_id: str
    judge_version: str


def _score(keys: ScoreKeys, metric: str, value: float, lo: float, hi: float, n: int, **extra: Any) -> Score:
    nan = isinstance(value, float) and math.isnan(value)
    return Score(
        task=keys.task,
        metric=metric,
        model=keys.model,
        value=None if nan else value,
        n=n,
        n_skipped=int(extra.pop("n_skipped", 0)),
        ci_low=None if math.isnan(lo) else lo,
        ci_high=None if math.isnan(hi) else hi,
        task_version=keys.task_version,
        judge_id=keys.judge_id,
        judge_version=keys.judge_version,
        higher_is_better=None,  # describes the judge: never gated as a model metric
        extra={"reliability": True, **extra},
    )


def reliability_scores(
    module: str,
    keys: ScoreKeys,
    verdicts: Sequence[Verdict],
    repeats: Sequence[Verdict],
    *,
    swapped: Sequence[Verdict] = (),
    seed: int = 0,
) -> list[Score]:
    """The judge-reliability Scores of one LLM-judged task and model from its current verdicts and its stored
    repeat verdicts; [] for a task that is not LLM-judged or has no verdict."""
    found = kind_of(module)
    if found is None or not verdicts:
        return []
    kind, category = found
    out = [
        _score(keys, metric, *share_by_item([(v.item_id, v.status == status) for v in verdicts]), unit="item")
        for metric, status in (("parse_failure_rate", "unparsed"), ("error_rate", "error"))
    ]
    if module.removesuffix(".task").endswith("arena_hard"):
        pairs, missing = position_pairs(verdicts)
        share = share_by_item([(item, a == b) for item, a, b in pairs])
        out.append(_score(keys, "position_consistency", *share, n_skipped=missing, orders="AB,BA"))
    elif swapped:  # both_orders: the official order's verdict against the other order's, both un-swapped
        pairs, missing = repeat_pairs(verdicts, swapped, category, sep="~swap")
        share = share_by_item([(item, a == b) for item, a, b in pairs])
        out.append(_score(keys, "position_consistency", *share, n_skipped=missing, orders="official,other"))
    if repeats:
        pairs, bad = repeat_pairs(verdicts, repeats, category)
        agree = share_by_item([(item, a == b) for item, a, b in pairs])
        out.append(_score(keys, "repeat_agreement", *agree, n_skipped=bad, n_judgments=len(pairs)))
        weights = "quadratic" if kind == "rating" else None
        kappa = kappa_ci(pairs, weights=weights, seed=seed) if pairs else (math.nan,) * 3 + (0,)
        out.append(_score(keys, "repeat_kappa", *kappa, n_skipped=bad, weights=weights or "none"))
    return out


# ---------------------------------------------------------------- which items are judged again
def chosen(item_id: str, fraction: float, seed: int) -> bool:
    """Whether item ``item_id`` is in the seeded subsample of share ``fraction`` (a hash: stable as items are
    added or removed, and every judgment of a chosen item is chosen with it)."""
    return int(content_hash("rejudge", seed, item_id), 16) / 16**16 < fraction


def repeat_payload(payload: Any, k: int) -> Any:
    """A judge payload whose chat request is asked as the ``k``-th repeat: the same messages and decoding, a
    distinct cache key (``sample_index`` -k, which no endpoint sees), so it neither reads nor overwrites the
    primary response. None where the payload asks the judge nothing (AlpacaEval's identical outputs)."""
    if isinstance(payload, ChatRequest):
        return replace(payload, id=f"{payload.id}#r{k}", sample_index=-k)
    if isinstance(payload, tuple):
        parts = [repeat_payload(p, k) if isinstance(p, ChatRequest) else p for p in payload]
        return tuple(parts) if any(isinstance(p, ChatRequest) for p in payload) else None
    return None
