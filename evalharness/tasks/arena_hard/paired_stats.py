"""Arena-Hard's paired statistics: a paired bootstrap over questions that refits the Bradley-Terry model on the
same draws for both models."""

from __future__ import annotations

import numpy as np
import pandas as pd

from evalharness.tasks.arena_hard import metric as ah
from evalharness.tasks.paired import LEVEL, PairedResult, bootstrap_result

ARENA_ROUNDS = 1000  # a comparison defaults to 1000 rounds (the official leaderboard CI uses 100)


def _questions(battles: pd.DataFrame, model: str) -> set[str]:
    return set(battles.question_id[(battles.model_a == model) | (battles.model_b == model)])


def _paired_questions(battles: pd.DataFrame, a: str, b: str, baseline: str) -> tuple[set[str], set[str]]:
    """The questions each model has battles on (the baseline, as anchor, has the other model's questions)."""
    qa, qb = _questions(battles, a), _questions(battles, b)
    if baseline in (a, b):  # the anchor plays every question of the other model; it lacks none
        qa = qb if a == baseline else qa
        qb = qa if b == baseline else qb
    if not qa or not qb:
        raise ValueError(f"no battle for {a if not qa else b!r}")
    return qa, qb


def _shared_battles(
    battles: pd.DataFrame, models: set[str], questions: set[str], features: np.ndarray | None
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """The battles among ``models`` on ``questions`` (renumbered from 0), and their rows of ``features``."""
    keep = (
        battles.model_a.isin(models) & battles.model_b.isin(models) & battles.question_id.isin(questions)
    ).to_numpy()
    sub = battles[keep].reset_index(drop=True)
    feats = None if features is None else np.asarray(features)[keep]
    return sub, feats


def arena_hard_paired_bootstrap(
    battles: pd.DataFrame,
    a: str,
    b: str,
    *,
    baseline: str = ah.DEFAULT_BASELINE,
    rounds: int = ARENA_ROUNDS,
    seed: int = ah.OFFICIAL_SEED,
    level: float = LEVEL,
    features: np.ndarray | None = None,
    ridge: float = 0.0,
    warm_start: bool = True,
) -> PairedResult:
    """Arena-Hard score (percent): paired cluster bootstrap over questions, Bradley-Terry refit.

    Only battles among a, b and the baseline on questions both models have are kept. Each round
    draws questions with replacement (both games of a question, and the x3 repeats of a decisive
    verdict, move together) and refits one BT over both models
    (:func:`metrics.arena_hard.bootstrap_elo`, ``unit="question"``), so both see the same draws;
    delta = 100 (win_rate(elo_a) - win_rate(elo_b)). ``features`` (style control) are rows of
    ``battles``. ``n_paired`` counts questions, ``n_only_*`` questions one model lacks.
    """
    qa, qb = _paired_questions(battles, a, b, baseline)
    sub, feats = _shared_battles(battles, {a, b, baseline}, qa & qb, features)
    elo, _ = ah.fit_bt(sub, baseline=baseline, features=feats, ridge=ridge)
    boot = ah.bootstrap_elo(
        sub,
        baseline=baseline,
        rounds=rounds,
        seed=seed,
        unit="question",
        features=feats,
        ridge=ridge,
        warm_start=warm_start,
    )
    score = lambda e: 100 * ah.win_rate(e)  # noqa: E731
    n = len(qa & qb)
    return bootstrap_result(
        float(score(elo[a])),
        float(score(elo[b])),
        score(boot[a].to_numpy()),
        score(boot[b].to_numpy()),
        n,
        len(qa) - n,
        len(qb) - n,
        "paired cluster bootstrap over questions, Bradley-Terry refit",
        level,
        rounds,
        seed,
    )
