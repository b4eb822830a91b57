"""Arena-Hard scores as lmarena/arena-hard-auto computes them (v0.1 ``show_result.py`` / ``utils_math.py``).

Data flow: judge text --parse_verdict--> label --> one Verdict per game --> battle rows (a decisive
``>>`` verdict repeated ``weight``=3 times) --> Bradley-Terry on the Elo scale --> win rate vs the
baseline, with a percentile bootstrap. Style control adds length/markdown covariates to the same fit.
The formulas and constants are the official ones; the code is ours (Newton's method instead of
sklearn's lbfgs: same maximum, tighter convergence, no deprecated ``penalty=None``). v2's show_result
reports other summaries (bootstrap median, 90% interval); ``ci_level=0.9`` gives its interval.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import yaml
from scipy.special import expit

from evalharness.core.errors import InputError
from evalharness.core.jsonl import iter_jsonl
from evalharness.core.records import Score, Verdict

SCALE, BASE, INIT_RATING = 400.0, 10.0, 1000.0  # compute_mle_elo defaults
DEFAULT_BASELINE = "gpt-4-0314"  # the v0.1 baseline, anchored at INIT_RATING
OFFICIAL_SEED = 42  # show_result.py: np.random.seed(42) before the bootstrap
DECISIVE_WEIGHT = 3  # show_result.py --weight: one A>>B game counts as three battles
LABEL_PATTERN = r"\[\[([AB<>=]+)\]\]"  # judge_config.yaml regex_pattern
# Label -> (score of assistant A, decisive). The aliases are those v2 show_result's label_to_score accepts.
LABELS = {
    "A>>B": (1.0, True),
    "A>B": (1.0, False),
    "A=B": (0.5, False),
    "B>A": (0.0, False),
    "B>>A": (0.0, True),
    "B<<A": (1.0, True),
    "B<A": (1.0, False),
    "B=A": (0.5, False),
    "A<B": (0.0, False),
    "A<<B": (0.0, True),
}
_CANONICAL = {
    label: next(c for c in ("A>>B", "A>B", "A=B", "B>A", "B>>A") if LABELS[c] == v) for label, v in LABELS.items()
}
STYLE_FEATURES = ("length", "headers", "lists", "bold")
_WINNERS = ("model_a", "model_b", "tie", "tie (bothbad)")


# Verdict rules, by name (the name enters the judge version: two rules never share a column). Each version's
# default is its official rule; "last" (the last label of the first pattern that finds one) is an option.
# "v0.1": the leaderboard's legacy gen_judgment.get_score (lmarena/arena-hard-auto@3071ef95, gen_judgment.py
#   l.22-32): each pattern on the text as written; no match -> None; one distinct match -> it; two or more
#   distinct -> None. Its show_result.get_battles_from_row (l.31-45) scores only the five canonical labels
#   (anything else weighs 0) and drops the one game. Not transcribed: its second judge call ("continue your
#   judgment ...") after a reply with no label; here such a game stays unparsed.
# "v2.0": HEAD's gen_judgment.get_score (lmarena/arena-hard-auto@196f6b82, gen_judgment.py l.21-31): patterns
#   in order (the config's [[X]] then [X]) on the upper-cased text; the LAST non-empty match of the first
#   pattern that finds one. show_result.load_judgments (l.31-32) then drops the whole question (both games)
#   when either game has no score; a match that is not a label (e.g. [[AB]]) is a KeyError there, unparsed here.
VERDICT_RULES = ("v0.1", "v2.0", "last")
LEGACY_LABELS = ("A>>B", "A>B", "A=B", "B>A", "B>>A")
LABEL_PATTERN_SINGLE = r"\[([AB<>=]+)\]"  # config/arena-hard-v2.0.yaml regex_patterns[1]
# The patterns each rule's official config holds (v0.1 judge_config.yaml regex_pattern; v2.0 regex_patterns).
RULE_PATTERNS = {"v0.1": (LABEL_PATTERN,), "v2.0": (LABEL_PATTERN, LABEL_PATTERN_SINGLE), "last": (LABEL_PATTERN,)}


def official_rule(bench: str) -> str:
    """The official verdict rule of a version, bench or category: v0.1 for "v0.1" / "arena-hard-v0.1", else v2.0."""
    return "v0.1" if bench in ("v0.1", "arena-hard-v0.1") else "v2.0"


def parse_verdict(judgment_text: str, patterns: Sequence[str] | None = None, rule: str = "v2.0") -> str | None:
    """The verdict label in ``judgment_text`` under ``rule`` (canonical form, e.g. ``"B>>A"``), or None if unparsed.

    ``patterns``: the judge config's regexes (None: those of the rule's official config, RULE_PATTERNS).
    """
    if rule not in VERDICT_RULES:
        raise InputError(
            f"unknown Arena-Hard verdict rule '{rule}' (one of {', '.join(VERDICT_RULES)})", field="parser"
        )
    patterns = RULE_PATTERNS[rule] if patterns is None else patterns
    text = judgment_text if rule == "v0.1" else judgment_text.upper()
    for pattern in patterns:
        matches = [m for m in re.findall(pattern, text) if m != ""]
        if rule == "last":
            matches = [m.strip() for m in matches if m.strip() in LABELS]
        if not matches:
            continue
        if rule == "v0.1":
            label = matches[0].strip("\n") if len(set(matches)) == 1 else None
            return label if label in LEGACY_LABELS else None
        return _CANONICAL.get(matches[-1].strip("\n" if rule == "v2.0" else None))
    return None


def whole_questions(verdicts: Sequence[Verdict]) -> set[tuple[str, str, str]]:
    """(model, question, baseline) whose two games both parsed: v2.0 show_result scores only these."""
    games: dict[tuple[str, str, str], list[bool]] = {}
    for v in verdicts:
        games.setdefault((v.meta["model"], v.item_id, v.meta["baseline"]), []).append(v.status == "ok")
    return {key for key, ok in games.items() if len(ok) == 2 and all(ok)}


def scored(verdicts: Sequence[Verdict], *, whole_question: bool = False) -> list[Verdict]:
    """The games that become battles: parsed ones, and with ``whole_question`` only those of a fully parsed question."""
    keep = whole_questions(verdicts) if whole_question else None
    return [
        v
        for v in verdicts
        if v.status == "ok" and (keep is None or (v.meta["model"], v.item_id, v.meta["baseline"]) in keep)
    ]


def _field(row: dict[str, Any], names: tuple[str, ...], path: Path, line: int) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise InputError("missing field", path=str(path), line=line, field=names[0])


def load_judgments(
    path: str | Path, *, baseline: str = DEFAULT_BASELINE, reparse: bool = False, rule: str | None = None
) -> list[Verdict]:
    """One Verdict per game from official judgment JSONL (``model_judgment/<judge>/<model>.jsonl``) or a folder.

    Official convention (gen_judgment.py): game 1 shows the baseline as A, game 2 swaps (model as A).
    ``value`` is the judged model's score (1 win, 0.5 tie, 0 loss); a game whose stored ``score`` (or,
    with ``reparse``, whose ``judgment`` text read under ``rule``) holds no label is ``unparsed`` and never
    scored. ``rule`` None: the official rule of the row's version, told by its ``category`` (absent or
    ``arena-hard-v0.1``: v0.1; a v2.0 category such as ``hard_prompt``: v2.0).
    Each verdict's ``meta["rule"]`` says which rule its file calls for.
    """
    path = Path(path)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    verdicts: list[Verdict] = []
    for file in files:
        for line, row in iter_jsonl(file):
            qid = str(_field(row, ("question_id", "uid"), file, line))
            model = str(_field(row, ("model",), file, line))
            games = _field(row, ("games",), file, line)
            if not isinstance(games, list) or not 1 <= len(games) <= 2:
                raise InputError("expected a list of 1 or 2 games", path=str(file), line=line, field="games")
            base = str(row.get("baseline") or baseline)
            for g, game in enumerate(games):
                if game is not None and not isinstance(game, dict):
                    raise InputError("a game must be an object or null", path=str(file), line=line, field="games")
                game = game or {}
                text = game.get("judgment") or ""
                if isinstance(text, dict):  # v2 files store {"answer": judge text, ...}
                    text = text.get("answer") or ""
                row_rule = rule or official_rule(str(row.get("category") or "arena-hard-v0.1"))
                raw = parse_verdict(str(text), rule=row_rule) if reparse else game.get("score")
                label = _CANONICAL.get(raw.strip()) if isinstance(raw, str) else None
                meta = {
                    "model": model,
                    "baseline": base,
                    "game": g + 1,
                    "label": label,
                    "decisive": label is not None and LABELS[label][1],
                    "rule": row_rule,
                }
                value = None
                if label is not None:  # the model is A only in game 2
                    value = LABELS[label][0] if g == 1 else 1.0 - LABELS[label][0]
                verdicts.append(
                    Verdict(
                        item_id=qid,
                        judge_id=str(row.get("judge", "")),
                        judge_version="",
                        status="ok" if label else "unparsed",
                        value=value,
                        raw=game.get("judgment", raw),
                        order="BA" if g == 1 else "AB",
                        meta=meta,
                    )
                )
    return verdicts


def battles_from_verdicts(
    verdicts: Sequence[Verdict], *, weight: int = DECISIVE_WEIGHT, whole_question: bool = False
) -> pd.DataFrame:
    """Battle rows (question_id, model_a=baseline, model_b=model, winner) as show_result.py builds them.

    A decisive game is repeated ``weight`` times; unparsed games contribute no row, and with ``whole_question``
    (v2.0) neither does the other game of their question.
    """
    rows = []
    for v in scored(verdicts, whole_question=whole_question):
        winner = {1.0: "model_b", 0.0: "model_a", 0.5: "tie"}[float(v.value)]  # type: ignore[arg-type]
        rows += [(v.item_id, v.meta["baseline"], v.meta["model"], winner)] * (weight if v.meta["decisive"] else 1)
    return pd.DataFrame(rows, columns=["question_id", "model_a", "model_b", "winner"])


def load_battles(path: str | Path) -> pd.DataFrame:
    """The official battles JSONL (``data/arena_hard_battles.jsonl``: question_id, model_a, model_b, winner)."""
    path, rows = Path(path), []
    for line, row in iter_jsonl(path):
        rec = [str(_field(row, (k,), path, line)) for k in ("question_id", "model_a", "model_b", "winner")]
        if rec[3] not in _WINNERS:
            raise InputError(f"winner must be one of {_WINNERS}", path=str(path), line=line, field="winner")
        rows.append(rec)
    return pd.DataFrame(rows, columns=["question_id", "model_a", "model_b", "winner"])


def _newton(X: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float, theta0: np.ndarray | None = None) -> np.ndarray:
    """argmin sum_i w_i [log(1+e^z_i) - y_i z_i] + ridge/2 |theta|^2, z = X theta (soft labels y).

    ``theta0`` starts the iteration there (a warm start); the loss is strictly convex, so the optimum
    reached is the same one to the solver's precision (Elo ratings agree to about 1e-6).
    """

    def loss(t: np.ndarray) -> float:
        z = X @ t
        return float(np.sum(w * (np.logaddexp(0.0, z) - y * z)) + 0.5 * ridge * t @ t)

    theta = np.zeros(X.shape[1]) if theta0 is None else np.array(theta0, dtype=float)
    current = loss(theta)
    for _ in range(100):
        p = expit(X @ theta)
        grad = X.T @ (w * (p - y)) + ridge * theta
        hess = (X.T * (w * p * (1 - p))) @ X + ridge * np.eye(X.shape[1])
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-6 and loss(theta - t * step) > current:
            t /= 2
        theta = theta - t * step
        current = loss(theta)
        if np.max(np.abs(t * step), initial=0.0) < 1e-10:
            break
    return theta


@dataclass(frozen=True)
class _Encoded:
    models: list[str]
    ia: np.ndarray
    ib: np.ndarray
    y: np.ndarray  # 1 model_a wins, 0 model_b wins, 0.5 tie


def _encode(battles: pd.DataFrame, baseline: str) -> _Encoded:
    models = sorted(set(battles.model_a) | set(battles.model_b))
    if baseline not in models:
        raise InputError(f"baseline '{baseline}' appears in no battle", field="baseline")
    index = {m: i for i, m in enumerate(models)}
    y = np.select([battles.winner == "model_a", battles.winner == "model_b"], [1.0, 0.0], 0.5)
    return _Encoded(models, battles.model_a.map(index).to_numpy(), battles.model_b.map(index).to_numpy(), y)


def _fit(
    enc: _Encoded,
    baseline: str,
    counts: np.ndarray,
    features: np.ndarray | None,
    ridge: float,
    theta0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elo ratings (baseline = INIT_RATING) and feature coefficients, as compute_mle_elo / fit_bt.

    compute_mle_elo duplicates every battle (a win is two A wins, a tie one A win + one B win) with
    columns +/-ln(BASE): that is a soft-label logistic loss with weight 2 per battle. ``ridge`` is
    sklearn's 1/C (fit_bt uses the default C=1 on the style matrix; compute_mle_elo uses none).
    Also returns the raw solution, which ``theta0`` accepts back as a warm start (ignored when the
    set of models present changed, so the shapes differ).
    """
    p, n = len(enc.models), len(enc.y)
    X = np.zeros((n, p))
    X[np.arange(n), enc.ia] += math.log(BASE)
    X[np.arange(n), enc.ib] -= math.log(BASE)
    present = np.bincount(np.r_[enc.ia, enc.ib], weights=np.r_[counts, counts], minlength=p) > 0
    base = enc.models.index(baseline)
    free = present & (np.arange(p) != base) if ridge == 0 else present  # unpenalised BT: anchor by omission
    design = X[:, free] if features is None else np.hstack([X[:, free], features])
    if theta0 is not None and theta0.shape != (design.shape[1],):
        theta0 = None
    theta = _newton(design, enc.y, 2.0 * counts, ridge, theta0)
    beta = np.full(p, np.nan)
    beta[free] = theta[: int(free.sum())]
    if ridge == 0:
        beta[base] = 0.0
    elo = SCALE * beta + INIT_RATING
    return elo + (INIT_RATING - elo[base]), theta[int(free.sum()) :], theta


def fit_bt(
    battles: pd.DataFrame, *, baseline: str = DEFAULT_BASELINE, features: np.ndarray | None = None, ridge: float = 0.0
) -> tuple[dict[str, float], np.ndarray]:
    """Bradley-Terry Elo ratings (baseline anchored at INIT_RATING) and style coefficients, if any.

    P(A beats B) = 1 / (1 + BASE ** ((r_B - r_A) / SCALE)), fitted by maximum likelihood on battle
    rows (ties as half a win each way), exactly the model of show_result.compute_mle_elo.
    """
    enc = _encode(battles, baseline)
    elo, coefs, _ = _fit(enc, baseline, np.ones(len(battles)), features, ridge)
    return dict(zip(enc.models, map(float, elo))), coefs


def win_rate(elo: float | np.ndarray, baseline_elo: float = INIT_RATING) -> Any:
    """P(model beats baseline) = 1 / (1 + BASE ** ((r_baseline - r) / SCALE)) (predict_win_rate)."""
    return 1.0 / (1.0 + BASE ** ((baseline_elo - np.asarray(elo)) / SCALE))


def bootstrap_elo(
    battles: pd.DataFrame,
    *,
    baseline: str = DEFAULT_BASELINE,
    rounds: int = 100,
    seed: int = OFFICIAL_SEED,
    unit: Literal["battle", "question"] = "battle",
    features: np.ndarray | None = None,
    ridge: float = 0.0,
    warm_start: bool = False,
) -> pd.DataFrame:
    """Elo ratings refitted on ``rounds`` resamples (rows: rounds, columns: models).

    ``unit="battle"`` draws battle rows with replacement exactly as ``battles.sample(frac=1.0,
    replace=True)`` under ``np.random.seed(seed)`` (legacy RandomState, same index stream), so the
    official seed 42 reproduces the official draws on the same battle table. ``unit="question"``
    draws questions and keeps all their battles (clusters the two games and the x3 repeats).
    ``warm_start`` starts each round's Newton fit at the previous round's solution: fewer steps, the
    same (strictly convex) optimum to the solver's tolerance.
    """
    enc = _encode(battles, baseline)
    rng = np.random.RandomState(seed)
    qcodes, quniq = pd.factorize(battles.question_id)
    out, theta = [], None
    for _ in range(rounds):
        if unit == "battle":
            counts = np.bincount(rng.randint(0, len(battles), size=len(battles)), minlength=len(battles))
        else:
            counts = np.bincount(rng.randint(0, len(quniq), size=len(quniq)), minlength=len(quniq))[qcodes]
        elo, _, solution = _fit(enc, baseline, counts.astype(float), features, ridge, theta)
        theta = solution if warm_start else None
        out.append(elo)
    return pd.DataFrame(out, columns=enc.models)


def style_metadata(answer_text: str, count_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Style metadata of one answer as utils/add_markdown_info.py computes it (code blocks removed first).

    ``count_tokens`` is the official tokenizer in practice (tiktoken, gpt-4o encoding) and is passed in
    because its vocabulary is a download.
    """
    text = answer_text
    for block in re.findall(r"```([^`]*)```", answer_text):
        text = text.replace(block, "")
    return {
        "token_len": count_tokens(answer_text),
        "header_count": {f"h{i}": len(re.findall(rf"^#{{{i}}}\s", text, re.M)) for i in range(1, 7)},
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", text, re.M)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.M)),
        },
        "bold_count": {"**": len(re.findall(r"\*\*[^*\n]+\*\*", text)), "__": len(re.findall(r"__[^_\n]+__", text))},
    }


def load_answer_metadata(paths: str | Path | Sequence[str | Path]) -> dict[str, dict[str, dict[str, Any]]]:
    """model -> question id -> style metadata, from answer JSONL files or folders (v0.1 and v2 formats)."""
    files: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        files += sorted(Path(p).glob("*.jsonl")) if Path(p).is_dir() else [Path(p)]
    meta: dict[str, dict[str, dict[str, Any]]] = {}
    for file in files:
        for line, row in iter_jsonl(file):
            model = str(_field(row, ("model", "model_id"), file, line))
            qid = str(_field(row, ("uid", "question_id"), file, line))
            meta.setdefault(model, {})[qid] = _field(row, ("metadata", "conv_metadata"), file, line)
    return meta


def style_features(
    battles: pd.DataFrame,
    metadata: Mapping[str, Mapping[str, Mapping[str, Any]]],
    variant: Literal["v0.1", "v2"] = "v0.1",
) -> np.ndarray:
    """Standardised style differences (A minus B) per battle row, columns STYLE_FEATURES.

    v0.1 (utils_math.construct_style_matrices): (a - b) / (a + b + 1) on token length and on header,
    list and bold counts; v2 (show_result.py): length (a - b) / (a + b), markdown as densities
    d = count / length with (d_a - d_b) / (d_a + d_b + 1). Columns are z-scored (v0.1 population std,
    v2 sample std); a constant column is set to 0 where the official would divide by zero. Centering
    makes a style-controlled score depend on the other models in the table, as in the official.
    """

    def vec(model: str, qid: str) -> list[float]:
        try:
            m = metadata[model][qid]
        except KeyError:
            raise InputError(f"no style metadata for model '{model}' question '{qid}'", field="metadata") from None
        return [
            float(v if isinstance(v, (int, float)) else sum(v.values()))
            for v in (m["token_len"], m["header_count"], m["list_count"], m["bold_count"])
        ]

    a = np.array([vec(m, q) for m, q in zip(battles.model_a, battles.question_id)])
    b = np.array([vec(m, q) for m, q in zip(battles.model_b, battles.question_id)])
    if variant == "v0.1":
        diff = (a - b) / (a + b + 1)
    else:
        da, db = a[:, 1:] / a[:, :1], b[:, 1:] / b[:, :1]
        diff = np.hstack([(a[:, :1] - b[:, :1]) / (a[:, :1] + b[:, :1]), (da - db) / (da + db + 1)])
    std = diff.std(axis=0, ddof=0 if variant == "v0.1" else 1)
    return np.where(std > 0, (diff - diff.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)


def _game_counts(battles: pd.DataFrame, baseline: str, weight: int) -> dict[str, tuple[int, int] | None]:
    """(n_games, n_unparsed) per model recovered from a battles file: with two games per question and
    weights 1 or ``weight``, a question's row count r decomposes uniquely (r in 1, 2, w, w+1, 2w).
    Questions with both games unparsed left no rows and cannot be counted; weight < 3 is ambiguous."""
    if weight < 3:
        return {str(m): None for m in set(battles.model_a) | set(battles.model_b) if m != baseline}
    table = {1: (1, 1), 2: (2, 0), weight: (1, 1), weight + 1: (2, 0), 2 * weight: (2, 0)}
    model = battles.model_b.where(battles.model_a == baseline, battles.model_a)
    out: dict[str, tuple[int, int] | None] = {}
    for m, sizes in battles.groupby([model, battles.question_id]).size().groupby(level=0):
        parts = [table.get(int(r)) for r in sizes]
        out[str(m)] = None if None in parts else cast("tuple[int, int]", tuple(map(sum, zip(*parts))))
    return out


def is_judgment_file(path: Path) -> bool:
    """Whether a JSONL file holds arena-hard-auto judgment rows (with ``games``), not battles."""
    for _, row in iter_jsonl(path):
        if "games" in row:
            return True
        if "winner" in row:
            return False
        raise InputError("neither a judgment row (games) nor a battle row (winner)", path=str(path), line=1)
    raise InputError("empty file", path=str(path))


def metrics_from_file(
    path: str | Path,
    *,
    baseline: str | None = None,
    bootstrap_rounds: int = 100,
    seed: int = OFFICIAL_SEED,
    bootstrap_unit: Literal["battle", "question"] = "battle",
    style_control: bool = False,
    style_variant: Literal["v0.1", "v2"] = "v0.1",
    answers: str | Path | Sequence[str | Path] | None = None,
    weight: int = DECISIVE_WEIGHT,
    reparse: bool = False,
    ci_level: float = 0.95,
    judge: str | None = None,
    bench: str = "arena-hard-v0.1",
    rule: str | None = None,
) -> dict[str, Any]:
    """Arena-Hard scores from a battles JSONL, a judgment JSONL, or a judgment folder.

    ``rule`` (VERDICT_RULES; None: the official rule of the rows' format) reads verdicts and, for v2.0,
    drops a question with an unparsed game.

    Per model: ``score`` = 100 * win_rate(BT Elo) vs the baseline and its percentile bootstrap CI
    (Elo percentiles mapped through win_rate, as show_result.py does), Elo, battle and game counts.
    Style control needs ``answers`` (answer files carrying official style metadata). ``baseline`` defaults to the
    one judgment rows record (our runs and v2 files write it; v0.1 files do not: gpt-4-0314), else gpt-4-0314.
    """
    path = Path(path)
    counts: dict[str, tuple[int, int] | None]
    if path.is_dir() or is_judgment_file(path):
        verdicts = load_judgments(path, baseline=baseline or DEFAULT_BASELINE, reparse=reparse, rule=rule)
        baseline = baseline or _recorded_baseline(verdicts, path)
        whole = bool(verdicts) and all(v.meta["rule"] == "v2.0" for v in verdicts)
        battles = battles_from_verdicts(verdicts, weight=weight, whole_question=whole)
        judge = judge or next((v.judge_id for v in verdicts if v.judge_id), None)
        counts = verdict_counts(verdicts, whole_question=whole)
    else:
        baseline = baseline or DEFAULT_BASELINE
        battles = load_battles(path)
        counts = _game_counts(battles, baseline, weight)
    if battles.empty:
        raise InputError("no parsed game to score", path=str(path))
    metadata = None
    if style_control:
        if answers is None:
            raise InputError("style control needs the model answers' style metadata", field="answers")
        metadata = load_answer_metadata(answers)
    return score_battles(
        battles,
        counts,
        baseline=baseline,
        bootstrap_rounds=bootstrap_rounds,
        seed=seed,
        bootstrap_unit=bootstrap_unit,
        style_metadata=metadata,
        style_variant=style_variant,
        ci_level=ci_level,
        judge=judge,
        bench=bench,
    )


def _recorded_baseline(verdicts: Sequence[Verdict], path: Path) -> str:
    """The baseline every judgment row names (rows without one: gpt-4-0314); several are refused."""
    bases = sorted({str(v.meta["baseline"]) for v in verdicts})
    if len(bases) > 1:
        raise InputError(
            f"judgments against {len(bases)} baselines ({', '.join(bases)}); pick one with --baseline",
            path=str(path),
            field="baseline",
        )
    return bases[0] if bases else DEFAULT_BASELINE


def verdict_counts(verdicts: Sequence[Verdict], *, whole_question: bool = False) -> dict[str, tuple[int, int] | None]:
    """model -> (games, games not scored): unparsed and failed games both count as unparsed, as the official
    judgment file has them; with ``whole_question`` (v2.0) so does the parsed partner of such a game."""
    counts: dict[str, tuple[int, int] | None] = {}
    kept = {id(v) for v in scored(verdicts, whole_question=whole_question)}
    for v in verdicts:
        n, bad = counts.get(v.meta["model"]) or (0, 0)
        counts[v.meta["model"]] = (n + 1, bad + (id(v) not in kept))
    return counts


def score_battles(
    battles: pd.DataFrame,
    counts: Mapping[str, tuple[int, int] | None],
    *,
    baseline: str = DEFAULT_BASELINE,
    bootstrap_rounds: int = 100,
    seed: int = OFFICIAL_SEED,
    bootstrap_unit: Literal["battle", "question"] = "battle",
    style_metadata: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    style_variant: Literal["v0.1", "v2"] = "v0.1",
    ci_level: float = 0.95,
    judge: str | None = None,
    bench: str = "arena-hard-v0.1",
) -> dict[str, Any]:
    """The one Arena-Hard metric computation, for official files and for our own runs' verdicts alike.

    Per model: ``score`` = 100 * win_rate(BT Elo) vs the baseline and its percentile bootstrap CI
    (Elo percentiles mapped through win_rate, as show_result.py does), Elo, battle and game counts
    (``counts``: model -> (games, unparsed games) or None where the battles cannot tell).
    ``style_metadata`` (model -> question -> official style metadata) turns on style control.
    """
    features, ridge = None, 0.0
    if style_metadata is not None:
        features = style_features(battles, style_metadata, style_variant)
        ridge = 1.0 if style_variant == "v0.1" else 0.0
    elo, coefs = fit_bt(battles, baseline=baseline, features=features, ridge=ridge)
    boot = bootstrap_elo(
        battles,
        baseline=baseline,
        rounds=bootstrap_rounds,
        seed=seed,
        unit=bootstrap_unit,
        features=features,
        ridge=ridge,
    )
    models = _model_rows(
        battles, elo, boot, counts, baseline=baseline, ci_level=ci_level, bootstrapped=bool(bootstrap_rounds)
    )
    totals = [c for c in counts.values() if c is not None]
    known = len(totals) == len(counts)
    return {
        "task": "arena_hard",
        "bench": bench,
        "baseline": baseline,
        "judge": judge,
        "models": models,
        "n_games": sum(c[0] for c in totals) if known else None,
        "n_unparsed": sum(c[1] for c in totals) if known else None,
        "bootstrap": {"rounds": bootstrap_rounds, "seed": seed, "unit": bootstrap_unit, "ci_level": ci_level},
        "style_control": (
            {"variant": style_variant, "coefficients": dict(zip(STYLE_FEATURES, map(float, coefs)))}
            if style_metadata is not None
            else None
        ),
    }


def _model_rows(
    battles: pd.DataFrame,
    elo: Mapping[str, float],
    boot: pd.DataFrame,
    counts: Mapping[str, tuple[int, int] | None],
    *,
    baseline: str,
    ci_level: float,
    bootstrapped: bool,
) -> dict[str, Any]:
    """Per model but the baseline: score and CI in percent (Elo percentiles through win_rate), Elo and counts."""
    q = [50 * (1 - ci_level), 50 * (1 + ci_level)]
    models: dict[str, Any] = {}
    for m, rating in elo.items():
        if m == baseline:
            continue
        lo, hi = (float(x) for x in np.nanpercentile(boot[m], q)) if bootstrapped else (None, None)
        n_games, n_unparsed = counts.get(m) or (None, None)
        pct = lambda e: None if e is None else 100 * float(win_rate(e))  # noqa: E731
        models[m] = {
            "score": pct(rating),
            "ci_low": pct(lo),
            "ci_high": pct(hi),
            "elo": rating,
            "elo_ci": [lo, hi],
            "n_battles": int(((battles.model_a == m) | (battles.model_b == m)).sum()),
            "n_games": n_games,
            "n_unparsed": n_unparsed,
        }
    return models


def to_scores(metrics: Mapping[str, Any]) -> list[Score]:
    """One Score per judged model (value in percent, with its baseline)."""
    sc = metrics.get("style_control")
    # n counts scored games only (a failed or unparsed game is in n_skipped, never in n as well).
    return [
        Score(
            task="arena_hard",
            metric="score_style_controlled" if sc else "score",
            model=m,
            value=r["score"],
            n=r["n_games"] - (r["n_unparsed"] or 0) if r["n_games"] is not None else r["n_battles"],
            n_skipped=r["n_unparsed"] or 0,
            ci_low=r["ci_low"],
            ci_high=r["ci_high"],
            ci_level=metrics["bootstrap"]["ci_level"],
            task_version=metrics["bench"],
            judge_id=metrics.get("judge") or "",
            baseline=metrics["baseline"],
            extra={
                "elo": r["elo"],
                "n_battles": r["n_battles"],
                "bootstrap": metrics["bootstrap"],
                **({"style_control": sc} if sc else {}),
            },
        )
        for m, r in metrics["models"].items()
    ]


@dataclass(frozen=True)
class JudgeConfig:
    """What the judge sees: system prompt, user template(s), and the verdict regexes, read from official config."""

    system_prompt: str
    prompt_templates: tuple[str, ...]
    regex_patterns: tuple[str, ...]
    judge_model: str | None = None
    baseline: str | None = None
    bench_name: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None


def load_judge_config(
    path: str | Path, *, settings: str | Path | None = None, category: str | None = None
) -> JudgeConfig:
    """Read an official judge config: v0.1 ``judge_config.yaml`` (system_prompt inside) or a
    ``config/arena-hard-v*.yaml`` whose system prompt and baseline live in ``settings`` (JUDGE_SETTINGS
    of utils/judge_utils.py, as JSON), keyed by ``category`` (default: the config's bench_name)."""
    path = Path(path)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML ({e})", path=str(path)) from None
    if not isinstance(cfg, dict) or "prompt_template" not in cfg:
        raise InputError("missing field", path=str(path), field="prompt_template")
    templates = cfg["prompt_template"]
    templates = tuple(templates) if isinstance(templates, list) else (templates,)
    patterns = cfg.get("regex_patterns") or [cfg.get("regex_pattern") or LABEL_PATTERN]
    system, baseline = cfg.get("system_prompt"), cfg.get("baseline_model")
    if system is None:
        if settings is None:
            raise InputError(
                "no system_prompt here: pass settings= (JUDGE_SETTINGS JSON)", path=str(path), field="system_prompt"
            )
        table = json.loads(Path(settings).read_text(encoding="utf-8"))
        table = table.get("JUDGE_SETTINGS", table)
        key = category or cfg.get("bench_name")
        if key not in table:
            raise InputError(f"no settings for category '{key}'", path=str(settings), field="JUDGE_SETTINGS")
        system, baseline = table[key]["system_prompt"], table[key].get("baseline")
    return JudgeConfig(
        system_prompt=system,
        prompt_templates=templates,
        regex_patterns=tuple(patterns),
        judge_model=cfg.get("judge_model"),
        baseline=baseline,
        bench_name=cfg.get("bench_name"),
        temperature=cfg.get("temperature"),
        max_tokens=cfg.get("max_tokens"),
    )


def render_judge_messages(question: str, answer_a: str, answer_b: str, config: JudgeConfig) -> list[dict[str, str]]:
    """Chat messages for one game. Official order: game 1 passes the baseline as A, game 2 the model.

    Both placeholder styles are filled: v0.1 ``{question_1}/{answer_1}/{answer_2}`` and v2
    ``{QUESTION}/{ANSWER_A}/{ANSWER_B}``.
    """
    args = {
        "question_1": question,
        "answer_1": answer_a,
        "answer_2": answer_b,
        "QUESTION": question,
        "ANSWER_A": answer_a,
        "ANSWER_B": answer_b,
    }
    return [
        {"role": "system", "content": config.system_prompt},
        *({"role": "user", "content": t.format(**args)} for t in config.prompt_templates),
    ]


def format_report(metrics: Mapping[str, Any]) -> str:
    """A plain-text table for the CLI."""
    b = metrics["bootstrap"]
    lines = [
        f"Arena-Hard ({metrics['bench']}) vs {metrics['baseline']}, judge {metrics.get('judge') or '?'}, "
        f"{b['rounds']} bootstrap rounds by {b['unit']}, {100 * b['ci_level']:.0f}% CI"
        + (f", style control {metrics['style_control']['variant']}" if metrics.get("style_control") else "")
    ]
    for m, r in sorted(metrics["models"].items(), key=lambda kv: -kv[1]["score"]):
        ci = f"({r['ci_low']:.2f}, {r['ci_high']:.2f})" if r["ci_low"] is not None else "(no bootstrap)"
        lines.append(f"{m:<40} {r['score']:6.2f}  {ci}  games {r['n_games']}  unparsed {r['n_unparsed']}")
    return "\n".join(lines)
