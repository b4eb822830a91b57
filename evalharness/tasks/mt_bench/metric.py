"""MT-Bench single-answer grading as lm-sys/FastChat ``fastchat/llm_judge`` computes it.

Data flow: judge text --parse_rating--> a 1-10 rating or None --> one Verdict per (model, question,
turn) --> per-turn and overall means over parsed rows (``show_result.py --mode single``). Judge prompt
choice and the answer-generation temperatures follow ``common.py`` and ``gen_judgment.py``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from evalharness.core.errors import InputError
from evalharness.core.jsonl import iter_jsonl
from evalharness.core.records import Score, Verdict
from evalharness.core.stats import mean_ci

# common.py: one_score_pattern and its backup.
RATING_PATTERN = r"\[\[(\d+\.?\d*)\]\]"
RATING_PATTERN_BACKUP = r"\[(\d+\.?\d*)\]"
UNPARSED_SCORE = -1  # the official sentinel for "no rating found"; read as unparsed, never averaged
NEED_REF_CATS = ("math", "reasoning", "coding")  # common.py: reference-guided grading
# common.py temperature_config: sampling temperature for model answers per question category.
TEMPERATURE_CONFIG = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}


# Verdict rules, by name: the name enters the judge version, so two rules never share a column.
# "official": FastChat common.run_judge_single (lm-sys/FastChat@0e6d3e4b, fastchat/llm_judge/common.py
# l.175-183): the FIRST ``[[N]]`` (re.search), else the first ``[N]``. On real GPT-4 judgments the first is
# the rating ("a revised answer would earn [[10]]" comes after it). "last": the last ``[[N]]``, no ``[N]``
# fallback (stricter: code such as ``array[0]`` is never read as a 0); an option, never the default.
RATING_RULES = ("official", "last")
# common.run_judge_pair, output_format "[[A]]" (same commit, l.282-290): the first of [[A]], [[B]], [[C]]
# found in that order of checking, not in text order.
PAIR_LABELS = (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"))


def parse_rating(text: str, rule: str = "official") -> float | None:
    """The judge's 1-10 rating under ``rule`` (see RATING_RULES), or None when there is none."""
    if rule == "official":
        match = re.search(RATING_PATTERN, text) or re.search(RATING_PATTERN_BACKUP, text)
        return float(match.group(1)) if match else None
    if rule == "last":
        matches = re.findall(RATING_PATTERN, text)
        return float(matches[-1]) if matches else None
    raise InputError(f"unknown MT-Bench verdict rule '{rule}' (one of {', '.join(RATING_RULES)})", field="parser")


def parse_pair(text: str) -> str | None:
    """FastChat's pairwise winner: "A", "B" or "tie" (the first of [[A]], [[B]], [[C]] present), or None."""
    return next((winner for label, winner in PAIR_LABELS if label in text), None)


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) from official judgment JSONL or the derived TSV transcription."""
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8") as f:
            for line_no, row in enumerate(csv.DictReader(f, delimiter="\t"), 2):
                yield line_no, dict(row)
        return
    yield from iter_jsonl(path)


def load_judgments(path: str | Path, *, reparse: bool = False, rule: str = "official") -> list[Verdict]:
    """One Verdict per judgment row of ``model_judgment/<judge>_single.jsonl`` (or a .tsv, or a folder).

    A stored score of -1 is ``unparsed``. With ``reparse`` the rating is re-read from the ``judgment``
    text by ``parse_rating`` under ``rule`` instead of trusting the stored (FastChat first-match) score.
    """
    path = Path(path)
    files = sorted([*path.glob("*.jsonl"), *path.glob("*.tsv")]) if path.is_dir() else [path]
    verdicts = []
    for file in files:
        for line, row in _rows(file):
            where: dict[str, Any] = {"path": str(file), "line": line}
            for name in ("question_id", "model", "turn"):
                if row.get(name) in (None, ""):
                    raise InputError("missing field", field=name, **where)
            # The TSV transcription has no judge column; FastChat names files <judge>_single.jsonl.
            judge = row.get("judge") or [
                file.name.split("_single")[0] if "_single" in file.name else "",
                row.get("judge_prompt", ""),
            ]
            if not isinstance(judge, (list, tuple)) or len(judge) < 2:
                raise InputError("judge must be [judge model, prompt name]", field="judge", **where)
            if reparse:
                if not isinstance(row.get("judgment"), str):
                    raise InputError("reparse needs the judgment text", field="judgment", **where)
                rating = parse_rating(row["judgment"], rule)
            else:
                try:
                    rating = float(row["score"])
                except (KeyError, TypeError, ValueError):
                    raise InputError("score must be a number", field="score", **where) from None
                rating = None if rating == UNPARSED_SCORE else rating
            try:
                turn = int(row["turn"])
            except (TypeError, ValueError):
                raise InputError("turn must be 1 or 2", field="turn", **where) from None
            verdicts.append(
                Verdict(
                    item_id=f"{row['question_id']}:{turn}",
                    judge_id=str(judge[0]),
                    judge_version=str(judge[1]),
                    status="ok" if rating is not None else "unparsed",
                    value=rating,
                    raw=row.get("judgment"),
                    meta={"model": str(row["model"]), "question_id": str(row["question_id"]), "turn": turn},
                )
            )
    return verdicts


def aggregate(
    verdicts: Sequence[Verdict], *, model: str | None = None, turns: Sequence[int] | None = None
) -> dict[str, dict[str, Any]]:
    """Per model: overall and per-turn means over parsed rows, as show_result.display_result_single.

    The official filters ``score != -1`` and takes ``groupby(model).mean()`` over rows, so the overall
    score is the mean over all parsed rows (not the mean of the two turn means). We add counts, the
    standard error and a t interval of the overall mean. One departure: when a turn that was asked
    (``turns``; default those the verdicts hold) has no parsed row, the overall mean would silently be the
    other turn's mean, so it is None (not measured), with its counts.
    """
    by_model: dict[str, list[Verdict]] = {}
    for v in verdicts:
        if model is None or v.meta["model"] == model:
            by_model.setdefault(v.meta["model"], []).append(v)
    out = {}
    for m, vs in sorted(by_model.items()):
        ok = [v for v in vs if v.status == "ok"]
        asked = set(turns) if turns is not None else {int(v.meta["turn"]) for v in vs}
        by_turn = {t: [float(v.value) for v in ok if v.meta["turn"] == t] for t in (1, 2)}  # type: ignore[arg-type]
        values = [float(v.value) for v in ok]  # type: ignore[arg-type]
        mean, se, lo, hi = (None if math.isnan(x) else x for x in mean_ci(values)) if values else [None] * 4
        if any(not by_turn.get(t) for t in asked):
            mean, se, lo, hi = None, None, None, None
        bad = {t: sum(v.status != "ok" and v.meta["turn"] == t for v in vs) for t in (1, 2)}
        out[m] = {
            "score": mean,
            "turn1": sum(by_turn[1]) / len(by_turn[1]) if by_turn[1] else None,
            "turn2": sum(by_turn[2]) / len(by_turn[2]) if by_turn[2] else None,
            "n": len(ok),
            "n_turn1": len(by_turn[1]),
            "n_turn2": len(by_turn[2]),
            "n_unparsed": len(vs) - len(ok),
            "n_unparsed_turn1": bad[1],
            "n_unparsed_turn2": bad[2],
            "stderr": se,
            "ci_low": lo,
            "ci_high": hi,
        }
    return out


def metrics_from_file(
    path: str | Path, *, model: str | None = None, reparse: bool = False, rule: str = "official"
) -> dict[str, Any]:
    """MT-Bench scores per model from an official judgment file (JSONL or derived TSV) or a folder of them."""
    verdicts = load_judgments(path, reparse=reparse, rule=rule)
    if not verdicts:  # an empty file is a mistake, not a model with no scores (as Arena-Hard and AlpacaEval say)
        raise InputError("no judgments in the file (empty)", path=str(path))
    judges = sorted({(v.judge_id, v.judge_version) for v in verdicts})
    models = aggregate(verdicts, model=model)
    if model is not None and not models:
        raise InputError(f"no judgment for model '{model}'", path=str(path), field="model")
    return {
        "task": "mt_bench",
        "judge": judges[0][0] if judges else "",
        "judge_prompts": [j[1] for j in judges],
        "reparsed": reparse,
        **({"rule": rule} if reparse else {}),
        "models": models,
    }


def to_scores(metrics: Mapping[str, Any]) -> list[Score]:
    """Scores ``score`` (overall, with its t interval), ``turn1`` and ``turn2`` per model."""
    scores = []
    for m, r in metrics["models"].items():
        for metric, n in (("score", r["n"]), ("turn1", r["n_turn1"]), ("turn2", r["n_turn2"])):
            overall = metric == "score"
            # Each row counts its own unparsed judgments (metrics written before the per-turn counts: none).
            skipped = r["n_unparsed"] if overall else r.get(f"n_unparsed_{metric}", 0)
            scores.append(
                Score(
                    task="mt_bench",
                    metric=metric,
                    model=m,
                    value=r[metric],
                    n=n,
                    n_skipped=skipped,
                    stderr=r["stderr"] if overall else None,
                    ci_low=r["ci_low"] if overall else None,
                    ci_high=r["ci_high"] if overall else None,
                    judge_id=metrics["judge"],
                    judge_version=",".join(metrics["judge_prompts"]),
                )
            )
    return scores


def load_judge_prompts(path: str | Path) -> dict[str, dict[str, Any]]:
    """name -> prompt record from FastChat's ``judge_prompts.jsonl`` (common.load_judge_prompts)."""
    path, prompts = Path(path), {}
    for line, row in _rows(path):
        if "name" not in row:
            raise InputError("missing field", path=str(path), line=line, field="name")
        prompts[row["name"]] = row
    return prompts


def select_judge_prompt(category: str, turn: int, judge_prompts: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any]:
    """single-v1 / single-math-v1 (reference-guided for NEED_REF_CATS), ``-multi-turn`` for turn 2."""
    if turn not in (1, 2):
        raise InputError("turn must be 1 or 2", field="turn")
    name = ("single-math-v1" if category in NEED_REF_CATS else "single-v1") + ("-multi-turn" if turn == 2 else "")
    if name not in judge_prompts:
        raise InputError(f"judge prompt '{name}' not in the prompt file", field="name")
    return judge_prompts[name]


def render_judge_messages(
    question: Mapping[str, Any],
    answers: Sequence[str],
    turn: int,
    judge_prompts: Mapping[str, Mapping[str, Any]],
    reference: Sequence[str] | None = None,
) -> list[dict[str, str]]:
    """System and user messages for grading ``answers`` (the model's turns) at ``turn``, as run_judge_single.

    ``question`` is an official question record (``category``, ``turns``); ``reference`` holds the
    reference answer's turns, required for math, reasoning and coding.
    """
    prompt = select_judge_prompt(question["category"], turn, judge_prompts)
    kwargs: dict[str, str] = {}
    if question["category"] in NEED_REF_CATS:
        if not reference or len(reference) < turn:
            raise InputError(f"category '{question['category']}' needs reference answers", field="reference")
        kwargs = {f"ref_answer_{i + 1}": r for i, r in enumerate(reference[:2])}
    if len(answers) < turn or len(question["turns"]) < turn:
        raise InputError(f"turn {turn} needs {turn} question and answer turns", field="turns")
    if turn == 1:
        kwargs |= {"question": question["turns"][0], "answer": answers[0]}
    else:
        kwargs |= {
            "question_1": question["turns"][0],
            "question_2": question["turns"][1],
            "answer_1": answers[0],
            "answer_2": answers[1],
        }
    return [
        {"role": "system", "content": prompt["system_prompt"]},
        {"role": "user", "content": prompt["prompt_template"].format(**kwargs)},
    ]


def format_report(metrics: Mapping[str, Any]) -> str:
    """A plain-text table for the CLI."""
    lines = [
        f"MT-Bench, judge {metrics['judge'] or '?'}"
        + (f" (re-parsed: rule {metrics.get('rule', 'official')})" if metrics["reparsed"] else "")
    ]
    for m, r in sorted(metrics["models"].items(), key=lambda kv: -(kv[1]["score"] or 0)):
        fmt = lambda x: "  n/a" if x is None else f"{x:5.2f}"  # noqa: E731
        lines.append(
            f"{m:<40} {fmt(r['score'])}  turn1 {fmt(r['turn1'])}  turn2 {fmt(r['turn2'])}  "
            f"n {r['n']}  unparsed {r['n_unparsed']}"
        )
    return "\n".join(lines)
