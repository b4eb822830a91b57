"""The sequential regression gate, replayed on finished or imported runs (``regress --sequential``).

The shared items are put in a seeded random order and their stored per-item changes (candidate - baseline,
oriented so + is better) are fed to the anytime-valid confidence sequence of ``core.sequential`` chunk by
chunk; the gate stops at the first chunk where FAIL or PASS holds at the metric's margin (or where neither
can be reached). Beside it stands the full-data decision of ``compare.regress``, the fixed-n gate, so a
user sees what the sequential gate would have saved and whether it would have said the same.

A metric takes part when it is a mean of bounded per-item values: AlpacaEval's win rates (0-100 per
instruction), MT-Bench ratings (1-10, the two turns of a question one unit), and classifier rewards (0-1 per
prompt). Refit metrics (AlpacaEval LC, Arena-Hard's Bradley-Terry) have no per-item mean: they keep the
full-data verdict and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from evalharness.analysis.compare import ALPHA, Entry, regress, stored_task
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import MAX_SKIPPED_SHARE
from evalharness.core.sequential import SequentialResult, confidence_sequence, look, sequential_gate
from evalharness.tasks.base import ModelRecords, Pending, Task, display_of
from evalharness.tasks.paired import pair_items

DEFAULT_CHUNK = 50
REWARD_MODULES = ("sentiment", "toxicity", "reward")
METHOD = "predictable plug-in empirical-Bernstein confidence sequence (Waudby-Smith & Ramdas 2023)"


def _alpaca(metric: str, records: ModelRecords) -> dict[Any, float]:
    from evalharness.tasks.alpaca_eval.paired_stats import alpaca_wins
    from evalharness.tasks.alpaca_eval.task import annotations_of

    win, discrete = alpaca_wins(annotations_of(records))
    return {k: 100 * v for k, v in (win if metric == "win_rate" else discrete).items()}


def _mt_bench(metric: str, records: ModelRecords) -> dict[Any, float]:
    from evalharness.tasks.mt_bench.paired_stats import mt_bench_scores

    ratings = mt_bench_scores(records.verdicts(), records.model)
    turn = {"score": None, "turn1": 1, "turn2": 2}[metric]
    return {k: v for k, v in ratings.items() if turn is None or k[1] == turn}


def _reward(metric: str, records: ModelRecords) -> dict[Any, float]:
    from evalharness.tasks.prompted import per_prompt

    return {k: float(np.mean(xs)) for k, xs in per_prompt(records).items() if xs}


# (module, metric) -> (per-item values of one model, the bounds of one item's value)
_SOURCES: dict[tuple[str, str], tuple[Callable[[str, ModelRecords], dict[Any, float]], float, float]] = {
    **{("alpaca_eval", m): (_alpaca, 0.0, 100.0) for m in ("win_rate", "discrete_win_rate")},
    **{("mt_bench", m): (_mt_bench, 1.0, 10.0) for m in ("score", "turn1", "turn2")},
    **{(mod, mod): (_reward, 0.0, 1.0) for mod in REWARD_MODULES},
}


def item_changes(task: str, metric: str, baseline: Entry, candidate: Entry) -> tuple[np.ndarray, float, float]:
    """Candidate - baseline per shared unit (sorted by unit, so the order is set by the seed alone), with the
    bounds of one change. MT-Bench's unit is the question: the mean over the turns both models have.
    Raises ValueError where the metric has no bounded per-item mean."""
    module, name_b, config_b = stored_task(baseline.store, task, metric)
    _, name_c, config_c = stored_task(candidate.store, task, metric)
    source = _SOURCES.get((module, metric))
    if source is None:
        raise ValueError(f"{task}/{metric} is not a mean of bounded per-item values (a refit metric)")
    read, lo, hi = source
    b = read(metric, ModelRecords(baseline.store, baseline.model, name_b, config_b))
    c = read(metric, ModelRecords(candidate.store, candidate.model, name_c, config_c))
    common, _, _ = pair_items(c, b)
    units: dict[Any, list[float]] = {}
    for k in sorted(common, key=str):
        unit = k[0] if module == "mt_bench" else k
        units.setdefault(unit, []).append(c[k] - b[k])
    changes = np.array([np.mean(v) for v in units.values()], dtype=float)
    return changes, lo - hi, hi - lo


def replay_orders(n: int, seed: int, replays: int) -> list[np.ndarray]:
    """The seeded item orders: replay r is the permutation of ``default_rng([seed, r])``."""
    return [np.random.default_rng([seed, r]).permutation(n) for r in range(replays)]


def _sequential_row(
    row: dict[str, Any], changes: np.ndarray, lo: float, hi: float, orders: list[np.ndarray], **gate: Any
) -> dict[str, Any]:
    sign = -1.0 if row.get("higher_is_better") is False else 1.0
    results: list[SequentialResult] = [sequential_gate(sign * changes[o], lo, hi, **gate) for o in orders]
    first = results[0]
    full = row["verdict"]
    out = {
        **row,
        "verdict": first.decision,
        "full_verdict": full,
        "sequential": {
            "n_used": first.n_used,
            "n_total": first.n_total,
            "share_used": first.share_used,
            "requests_saved": 1 - first.share_used,
            "change_mean": first.mean,
            "change_lower": first.lower,
            "change_upper": first.upper,
            "reason": first.reason,
            "method": METHOD,
            **{k: gate[k] for k in ("chunk", "alpha_fail", "alpha_pass")},
        },
    }
    if len(results) > 1:
        out["replays"] = {
            "count": len(results),
            "mean_share_used": float(np.mean([r.share_used for r in results])),
            "agreement": float(np.mean([r.decision == full for r in results])),
            "decisions": {d: sum(r.decision == d for r in results) for d in sorted({r.decision for r in results})},
        }
    return out


def sequential_regress(
    baseline: Entry,
    candidate: Entry,
    *,
    metrics: list[str] | None = None,
    margins: dict[str, float] | None = None,
    chunk: int = DEFAULT_CHUNK,
    seed: int = 0,
    replays: int = 1,
    rounds: int | None = None,
    max_skipped: float = MAX_SKIPPED_SHARE,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """``compare.regress``'s rows, each measured metric replayed by the sequential gate in ``replays`` seeded
    orders: ``verdict`` is the sequential decision of the first order, ``full_verdict`` the fixed-n one.
    FAIL is one-sided at alpha / (metrics gated sequentially), a Bonferroni bound on the fixed-n gate's Holm."""
    if chunk < 1:
        from evalharness.core.errors import InputError

        raise InputError(f"--chunk {chunk}: need at least 1 item a chunk", field="--chunk")
    if replays < 1:
        from evalharness.core.errors import InputError

        raise InputError(f"--replays {replays}: need at least 1", field="--replays")
    rows = regress(
        baseline,
        candidate,
        metrics=metrics,
        margins=margins,
        rounds=rounds,
        seed=seed,
        max_skipped=max_skipped,
        log=log,
    )
    measured: dict[int, tuple[np.ndarray, float, float]] = {}
    for i, row in enumerate(rows):
        if "delta" not in row:
            continue
        try:
            measured[i] = item_changes(row["task"], row["metric"], baseline, candidate)
        except ValueError as e:
            row["sequential_reason"] = f"judged in full: {e}"
    out = list(rows)
    for i, (changes, lo, hi) in measured.items():
        gate = {
            "margin": rows[i]["margin"],
            "chunk": chunk,
            "alpha_fail": ALPHA / len(measured),
            "alpha_pass": ALPHA / 2,
        }
        out[i] = _sequential_row(rows[i], changes, lo, hi, replay_orders(changes.size, seed, replays), **gate)
    return out


def sequential_line(r: dict[str, Any]) -> str:
    """One row of ``regress --sequential``'s text output."""
    s = r.get("sequential")
    if s is None:
        why = r.get("sequential_reason") or r.get("reason") or ""
        return f"{r['verdict']:12s} {r['task']}/{r['metric']}: {why}"
    line = (
        f"{r['verdict']:12s} {r['task']}/{r['metric']}: change {s['change_mean']:+.4g} in "
        f"[{s['change_lower']:+.4g}, {s['change_upper']:+.4g}] (anytime-valid) after {s['n_used']} of "
        f"{s['n_total']} items ({100 * s['requests_saved']:.0f}% of judge requests saved); full data: {r['full_verdict']}"
    )
    rep = r.get("replays")
    if rep:
        line += (
            f"; {rep['count']} seeded orders: {100 * rep['mean_share_used']:.0f}% of items on average, "
            f"{100 * rep['agreement']:.0f}% agree with the full data"
        )
    return line


# ---------------------------------------------------------------- live: stop judging once decided
PRIMARY = {"alpaca_eval": "win_rate", "mt_bench": "score", **{m: m for m in REWARD_MODULES}}


def verdict_units(verdicts: list[Any], module: str) -> dict[str, float]:
    """Unit -> the mean of its ok verdicts on the task's readable per-item scale (``Display.item_scale``,
    ``Display.unit_of``: AlpacaEval's win in percent per instruction, MT-Bench's rating per question)."""
    shown = display_of(module)
    scale, unit_of = shown.item_scale or (lambda v: v), shown.unit_of or (lambda i: i)
    units: dict[str, list[float]] = {}
    for v in verdicts:
        if v.status == "ok":
            units.setdefault(unit_of(v.item_id), []).append(scale(float(v.value)))
    return {u: float(np.mean(xs)) for u, xs in units.items()}


def _rank(seed: int, item: str) -> str:
    import hashlib

    return hashlib.sha256(f"{seed}\x00{item}".encode()).hexdigest()


class LiveGate:
    """``run --sequential-gate BASELINE``: judge each task's items in a seeded random order and stop a model's
    judging once the sequential gate against ``baseline`` (a finished run of the same task) decides its
    headline metric (``PRIMARY``). A unit enters the sequence when all its judgments are in; units of one
    chunk enter in their seeded order. FAIL is one-sided at alpha / (tasks gated)."""

    def __init__(self, baseline: Entry, *, margins: dict[str, float] | None = None, seed: int = 0) -> None:
        self.baseline, self.margins, self.seed = baseline, margins or {}, seed
        self.sequence: dict[tuple[str, str], list[str]] = {}  # (task, model) -> units in the order they entered
        self.base: dict[str, dict[str, float]] = {}
        self.gated = {s.task: s for s in baseline.scores if s.metric == PRIMARY.get(self._module(s.task) or "")}
        if not self.gated:
            raise EvalHarnessError(
                f"--sequential-gate {baseline.label or baseline.model}: no score of "
                f"{', '.join(f'{t}/{m}' for t, m in PRIMARY.items())} to gate against"
            )

    def _module(self, task: str) -> str | None:
        try:
            return stored_task(self.baseline.store, task)[0]
        except EvalHarnessError:
            return None

    def order(self, task: Task, pending: list[Pending]) -> list[Pending]:
        """Units in seeded random order (the turns of a question together)."""
        unit_of = display_of(self._module(task.name) or "").unit_of or (lambda i: i)
        return sorted(pending, key=lambda p: (_rank(self.seed, unit_of(p.item_id)), p.item_id, p.key))

    def __call__(self, progress: Any) -> str | None:
        """A ``pipeline.stops.StopCheck`` (analysis does not import pipeline: the CLI hands it over)."""
        name, model = progress.task.name, progress.session.name
        score = self.gated.get(name)
        module = self._module(name)
        if (
            score is None
            or module is None
            or (model == self.baseline.model and progress.store.path == self.baseline.store.path)
        ):
            return None
        if name not in self.base:  # the baseline is finished: read once
            self.base[name] = verdict_units(list(self.baseline.store.verdicts(name, self.baseline.model)), module)
        base = self.base[name]
        cand = verdict_units(list(progress.store.verdicts(name, model)), module)
        unit_of = display_of(module).unit_of or (lambda i: i)
        open_units = {unit_of(p.item_id) for p in progress.left}
        seq = self.sequence.setdefault((name, model), [])
        seen = set(seq)
        seq += sorted(
            (u for u in cand if u in base and u not in open_units and u not in seen), key=lambda u: _rank(self.seed, u)
        )
        if not seq:
            return None
        sign = -1.0 if score.higher_is_better is False else 1.0
        _, lo, hi = _SOURCES[(module, score.metric)]
        change = sign * np.array([cand[u] - base[u] for u in seq])
        try:
            lower, upper = confidence_sequence(
                change, lo - hi, hi - lo, alpha_lower=ALPHA / 2, alpha_upper=ALPHA / len(self.gated)
            )
        except ValueError as e:  # a per-item value off its scale: the gate cannot hold, say so rather than go on
            raise EvalHarnessError(f"--sequential-gate: {name}/{score.metric}: {e}") from None
        margin = self.margins.get(f"{name}/{score.metric}", self.margins.get(score.metric, 0.0))
        res = look(float(change.mean()), float(lower[-1]), float(upper[-1]), len(seq), len(base), margin)
        if res is None:
            return None
        return f"sequential gate vs {self.baseline.label or self.baseline.model}: {name}/{score.metric} {res.decision}, {res.reason}"
