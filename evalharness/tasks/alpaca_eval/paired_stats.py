"""AlpacaEval 2's paired statistics: the win rate (paired t over instructions), the discrete win rate (exact
McNemar), and the length-controlled win rate (a paired bootstrap that refits both models' GLMs on the same draws)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.tasks.paired import LEVEL, PairedResult, bootstrap_result, mcnemar_paired, paired_t

LC_ROUNDS = 200  # each round refits each model's GLM with its CV: about 0.1 s a model on one core


def alpaca_wins(annotations: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per-instruction win (preference - 1) and discrete win of a model's annotations (parsed rows
    only), by instruction. A repeated instruction is an error: pairing needs one row each."""
    win, discrete = ae.item_wins([r["preference"] for r in annotations])
    out: tuple[dict[str, float], dict[str, float]] = ({}, {})
    seen: set[str] = set()
    for i, r in enumerate(annotations):
        if r["instruction"] in seen:
            raise ValueError(f"annotation {i}: instruction repeated, cannot pair: {r['instruction'][:80]!r}")
        seen.add(r["instruction"])
        if not math.isnan(win[i]):
            out[0][r["instruction"]], out[1][r["instruction"]] = float(win[i]), float(discrete[i])
    return out


def _check_same_baseline(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> None:
    refs = {str(r["generator_1"]) for r in [*a, *b] if r.get("generator_1") is not None}
    if len(refs) > 1:
        raise ValueError(f"annotations against different baselines {sorted(refs)}: not comparable")


def alpaca_winrate_paired(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], *, level: float = LEVEL
) -> PairedResult:
    """AlpacaEval 2 win rate (percent): the per-instruction preference difference, paired t.

    Both models' annotations are against the same baseline; an unparsed judgment leaves its
    instruction unpaired (counted in ``n_only_*``).
    """
    _check_same_baseline(a, b)
    wa, wb = alpaca_wins(a)[0], alpaca_wins(b)[0]
    return paired_t(
        {k: 100 * v for k, v in wa.items()},
        {k: 100 * v for k, v in wb.items()},
        level=level,
        method="paired t over per-instruction preferences",
    )


def alpaca_discrete_paired(
    a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]], *, level: float = LEVEL
) -> PairedResult:
    """AlpacaEval 2 discrete win rate (percent): difference with a t interval, exact McNemar p."""
    _check_same_baseline(a, b)
    return mcnemar_paired(alpaca_wins(a)[1], alpaca_wins(b)[1], scale=100.0, level=level)


def alpaca_lc_paired_bootstrap(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    support: ae.LCSupport,
    *,
    rounds: int = LC_ROUNDS,
    level: float = LEVEL,
    seed: int = 0,
) -> PairedResult:
    """AlpacaEval 2 LC win rate (percent): paired bootstrap over instructions with the GLM refit.

    Each round draws one resample of the instructions and refits both models' GLMs on it
    (:func:`metrics.alpaca_eval.lc_winrate_resampled`: the draws and fit of ``lc_winrate_bootstrap_ci``
    for the same seed). The official GLM looks instruction difficulty up by row, so both annotation
    lists must hold the same instructions in the same (eval-set) order; an unparsed judgment is a
    row like any other there, as in the official LC. The point delta is the two official LCs.
    """
    return alpaca_lc_against(b, {"a": a}, support, rounds=rounds, level=level, seed=seed)["a"]


def alpaca_lc_against(
    reference: Sequence[Mapping[str, Any]],
    models: Mapping[str, Sequence[Mapping[str, Any]]],
    support: ae.LCSupport,
    *,
    rounds: int = LC_ROUNDS,
    level: float = LEVEL,
    seed: int = 0,
) -> dict[str, PairedResult]:
    """:func:`alpaca_lc_paired_bootstrap` of each model against one reference (delta = model -
    reference), all on the same draws, the reference's bootstrap refits done once for all."""
    order = [r["instruction"] for r in reference]
    for name, rows in models.items():
        _check_same_baseline(rows, reference)
        if [r["instruction"] for r in rows] != order:
            raise ValueError(
                f"LC pairing needs {name!r} and the reference over the same instructions in the "
                "same (eval-set) order: the GLM looks instruction difficulty up by row"
            )
    n = len(order)
    if n < 2:
        raise ValueError("LC needs at least two instructions")
    draws = np.random.default_rng(seed).integers(0, n, size=(rounds, n))

    def run(rows: Sequence[Mapping[str, Any]]) -> tuple[float, np.ndarray]:
        return (
            ae.length_controlled_winrate(rows, support)["length_controlled_winrate"],
            np.array([ae.lc_winrate_resampled(rows, support, d) for d in draws]),
        )

    ref_point, ref_series = run(reference)
    out = {}
    for name, rows in models.items():
        point, series = run(rows)
        out[name] = bootstrap_result(
            point,
            ref_point,
            series,
            ref_series,
            n,
            0,
            0,
            "paired bootstrap over instructions, GLM refit",
            level,
            rounds,
            seed,
        )
    return out
