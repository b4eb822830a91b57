"""AlpacaEval 2 metrics as the official tool (tatsu-lab/alpaca_eval 0.6.6) computes them.

Sources, under ``src/alpaca_eval/``: win rates from ``metrics/helpers.py`` (describe_head2head) and
``metrics/winrate.py``; the length-controlled (LC) win rate from ``metrics/glm_winrate.py``
(get_length_controlled_winrate, GLM ``length_controlled_v1``); the judge from
``evaluators_configs/weighted_alpaca_eval_gpt4_turbo`` (``logprob_parser``, the output swap of
``processors.RandomSwitchTwoColumnsProcessor``, ``utils.make_prompts`` and ``utils.prompt_to_chatml``).
Formulas and constants carry over; the code is ours and never imports alpaca_eval.

Preferences use the official 1..2 scale: 1 = baseline (output_1) wins, 2 = model (output_2) wins,
1.5 = tie (legacy 0 = tie too); None/NaN = unparsed, counted in ``n_skipped`` and never scored.
"""

from __future__ import annotations

import importlib.util
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sklearn
import yaml
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold

from evalharness.core import stats
from evalharness.core.errors import EvalHarnessError, InputError, parse_json, read_utf8
from evalharness.core.records import Score, Verdict

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
JUDGE_MODEL = "gpt-4-1106-preview"
BASELINE = "gpt4_1106_preview"
SWAP_SEED = 0  # annotators/base.py: BaseAnnotator(seed=0) hands its seed to the swap processor
_SWITCH_COLUMN = "is_switched_outputs"  # the processor's _switch_column, part of the seed string
_PLACEHOLDER = r"{([^ \s]+?)}"  # utils.make_prompts
# GLM length_controlled_v1; column names as patsy writes them in the official metrics/weights CSVs.
LC_FEATURES = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")
LC_LAMBDA = 0.2  # regularize_to_baseline_lambda; gamed rows weigh LC_LAMBDA / 2 (two gamed baselines)
LC_N_SPLITS, LC_SEED, LC_CS = 5, 123, np.logspace(-4, 4, 10)  # GroupKFold, liblinear seed, LogisticRegressionCV grid
HF_DATASET = "tatsu-lab/alpaca_eval"  # home of the GLM's side files (pinned in evalharness.tasks.benchdata)
LC_SUPPORT_FILES = {
    "df_gamed.csv": "alpaca_eval/lc/df_gamed",
    "instruction_difficulty.csv": "alpaca_eval/lc/instruction_difficulty",
}
_SKLEARN_L1 = (
    {"l1_ratio": 1.0} if tuple(map(int, re.findall(r"\d+", sklearn.__version__)[:2])) >= (1, 8) else {"penalty": "l1"}
)  # `penalty` is deprecated from 1.8


# ---------------------------------------------------------------- loading and checking input
def _decode(text: str, path: Path, line: int | None) -> Any:
    return parse_json(text, path=path, line=line, what="invalid JSON")


def _read_json_records(path: Path) -> list[tuple[int | None, Any]]:
    """(line, record) pairs of a JSON array (line None) or a JSONL file (1-based lines)."""
    text = read_utf8(path)
    if path.suffix == ".jsonl":
        return [(n, _decode(s, path, n)) for n, s in enumerate(text.splitlines(), 1) if s.strip()]
    data = _decode(text, path, None)
    if not isinstance(data, list):
        raise InputError(f"expected a JSON array of records, got {type(data).__name__}", path=str(path))
    return [(None, r) for r in data]


def load_annotations(path: str | Path) -> list[dict[str, Any]]:
    """Read an official ``annotations.json`` (or JSONL) and validate each record.

    Needs string ``instruction``/``output_1``/``output_2`` and a ``preference`` that is a number in
    [1, 2], legacy 0 (tie), or null/NaN (unparsed; stored as None). The official metrics silently drop
    out-of-range preferences; here they are an error naming the record and field.
    """
    path = Path(path)
    records = []
    for i, (line, rec) in enumerate(_read_json_records(path)):

        def bad(msg: str, field: str | None = None) -> InputError:
            return InputError(f"record {i}: {msg}", path=str(path), line=line, field=field)  # noqa: B023  (called within its iteration)

        if not isinstance(rec, dict):
            raise bad(f"expected an object, got {type(rec).__name__}")
        for key in ("instruction", "output_1", "output_2"):
            if not isinstance(rec.get(key), str):
                raise bad("missing or not a string", key)
        for key in ("generator_1", "generator_2", "annotator"):
            if key in rec and not isinstance(rec[key], str):
                raise bad("not a string", key)
        if "preference" not in rec:
            raise bad("missing (use null for an unparsed judgment)", "preference")
        p = rec["preference"]
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float))):
            raise bad(f"expected a number or null, got {p!r}", "preference")
        if p is not None and math.isnan(p):
            p = None
        if p is not None and not (1 <= p <= 2 or p == 0):
            raise bad(f"{p!r} is outside [1, 2] (1 = output_1 wins, 2 = output_2 wins)", "preference")
        records.append({**rec, "preference": p})
    return records


def check_against_eval_set(
    outputs: Sequence[Mapping[str, Any]], eval_set: Sequence[Mapping[str, Any]], *, path: str | None = None
) -> list[dict[str, Any]]:
    """Check ``outputs`` cover the eval set's instructions exactly once each; return them in eval-set order.

    Unknown, duplicated or missing instructions are an InputError, never a silent drop (the official
    inner join shrinks n instead). Eval-set order matters: the LC GLM maps instruction difficulty by row.
    """
    order: dict[str, int] = {}
    for j, item in enumerate(eval_set):
        order.setdefault(item["instruction"], j)
    seen: dict[str, int] = {}
    for i, rec in enumerate(outputs):
        ins = rec.get("instruction")
        if not isinstance(ins, str) or ins not in order:
            raise InputError(
                f"record {i}: instruction not in the eval set: {str(ins)[:80]!r}", path=path, field="instruction"
            )
        if ins in seen:
            raise InputError(
                f"record {i}: duplicate instruction (also record {seen[ins]})", path=path, field="instruction"
            )
        seen[ins] = i
    missing = [ins for ins in order if ins not in seen]
    if missing:
        raise InputError(
            f"{len(missing)} of {len(order)} eval-set instructions have no record, e.g. {missing[0][:80]!r}",
            path=path,
            field="instruction",
        )
    return [dict(r) for r in sorted(outputs, key=lambda r: order[r["instruction"]])]


# ---------------------------------------------------------------- the weighted GPT-4-Turbo judge
def preference_from_top_logprobs(top_logprobs: Sequence[Mapping[str, Any]]) -> float | None:
    """Preference from the judge's one-token ``top_logprobs`` (completion_parsers.logprob_parser).

    With numerator "m" (names output_1) and denominator {"m", "M"}: p = 2 - P(m) / (P(m) + P(M)),
    a missing token having probability 0. Neither token among the alternatives: the official parser
    returns NaN (and the row is dropped); here it is None, i.e. unparsed.
    """
    found = {t["token"]: float(t["logprob"]) for t in top_logprobs if t.get("token") in ("m", "M")}
    if not found:
        return None
    lp_m, lp_big_m = found.get("m", -math.inf), found.get("M", -math.inf)
    p = 2.0 - math.exp(lp_m - float(np.logaddexp(lp_m, lp_big_m)))
    return None if math.isnan(p) else p


def preference_from_completion(raw_completion: Any) -> float | None:
    """Preference from a stored chat completion (``raw_completion`` of annotations.json), in shown order.

    The parser reads ``logprobs.content[i].top_logprobs`` for every token and needs exactly one
    (batch_size 1); anything else, like any parse error, is unparsed (the official stores None).
    """
    try:
        content = raw_completion["logprobs"]["content"]
        if len(content) != 1:
            return None
        return preference_from_top_logprobs(content[0]["top_logprobs"])
    except (KeyError, TypeError, IndexError, ValueError):
        return None


def is_swapped(instruction: str, seed: int = SWAP_SEED) -> bool:
    """Whether the official annotator showed the model output first (as "m") for this instruction.

    RandomSwitchTwoColumnsProcessor: ``random.Random("is_switched_outputs" + instruction + str(seed))
    .choices([False, True])``; the effective seed is BaseAnnotator's default 0 (checked against the
    stored logprobs of every official annotation in benchdata).
    """
    return random.Random(_SWITCH_COLUMN + instruction + str(seed)).choices([False, True], k=1)[0]


def unswap_preference(preference: float | None, swapped: bool) -> float | None:
    """Map a preference about the shown order back to (baseline, model) order: 3 - p when swapped."""
    return None if preference is None else (3 - preference if swapped else preference)


def verdict_from_completion(item_id: str, instruction: str, raw_completion: Any, *, seed: int = SWAP_SEED) -> Verdict:
    """One judgment as a Verdict: value in baseline/model order, ``order`` BA when the swap applied.

    The official never asks the judge about identical outputs: it records 1.5; callers do the same.
    """
    swapped = is_swapped(instruction, seed)
    p = unswap_preference(preference_from_completion(raw_completion), swapped)
    return Verdict(
        item_id=item_id,
        judge_id=ANNOTATOR,
        judge_version=JUDGE_MODEL,
        status="ok" if p is not None else "unparsed",
        value=p,
        raw=raw_completion,
        order="BA" if swapped else "AB",
    )


def _evaluators_dir(config_dir: str | Path | None) -> Path:
    if config_dir is not None:
        return Path(config_dir)
    spec = importlib.util.find_spec("alpaca_eval")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise EvalHarnessError("alpaca-eval is not installed: pass config_dir= (a copy of evaluators_configs)")
    return Path(next(iter(spec.submodule_search_locations))) / "evaluators_configs"


def judge_config(config_dir: str | Path | None = None) -> dict[str, Any]:
    """The annotator's config (prompt template path, completion kwargs, parser kwargs) from configs.yaml."""
    path = _evaluators_dir(config_dir) / ANNOTATOR / "configs.yaml"
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))[ANNOTATOR])


# How the filled ChatML text becomes messages; enters the judge version. "official": utils.prompt_to_chatml
# (tatsu-lab/alpaca_eval@cd543a14, src/alpaca_eval/utils.py l.601-653): a ``system name=X`` line is role
# ``system`` with ``name`` X (utils._string_to_dict, l.656-661), as an output holding such a line gets it.
CHATML_RULE = "official"


def chatml_to_messages(text: str) -> list[dict[str, str]]:
    """Messages from ChatML text as utils.prompt_to_chatml splits it (``system k=v ...`` roles become params)."""
    text = text.strip()
    if not (text.startswith("<|im_start|>") and text.endswith("<|im_end|>")):
        raise EvalHarnessError("judge template is not ChatML (<|im_start|> ... <|im_end|>)")
    messages = []
    for part in text.split("<|im_start|>")[1:]:
        role, _, rest = part.partition("\n")
        role = role.strip()
        params: dict[str, str] = {}
        if role.startswith("system") and role != "system":
            params = {kv.split("=", 1)[0]: kv.split("=", 1)[1] for kv in role.split("system", 1)[-1].split(" ") if kv}
            role = "system"
        messages.append({"role": role, "content": rest.split("<|im_end|>", 1)[0].strip(), **params})
    return messages


def render_judge_prompt(
    instruction: str, output_1: str, output_2: str, *, config_dir: str | Path | None = None
) -> list[dict[str, str]]:
    """The chat messages the official judge sends for this pair, in the order given.

    The template is read from the installed alpaca-eval package (or ``config_dir``). Each placeholder
    is replaced once, in template order, as utils.make_prompts does; the ChatML text is then split by
    :func:`chatml_to_messages`. Apply :func:`is_swapped` first to reproduce the order the official showed.
    """
    root = _evaluators_dir(config_dir)
    text = (root / judge_config(root)["prompt_template"]).read_text(encoding="utf-8")
    values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    for key in dict.fromkeys(re.findall(_PLACEHOLDER, text)):
        text = text.replace("{" + key + "}", str(values[key]), 1)
    return chatml_to_messages(text)


# ---------------------------------------------------------------- raw win rates
def _preferences(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def item_wins(preferences: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-item win p - 1 and discrete win (round(p) - 1, an exact tie 0.5); NaN where unparsed.

    The scores that win_rate and discrete_win_rate average (legacy 0 read as the tie 1.5).
    """
    raw = _preferences(preferences)
    p = np.where(raw == 0, 1.5, raw)
    if np.any(~np.isnan(p) & ((p < 1) | (p > 2))):
        raise ValueError("preferences must lie in [1, 2] (or be 0 for a legacy tie, None if unparsed)")
    win = p - 1
    return win, np.where(win == 0.5, 0.5, np.round(p) - 1)


def winrate_metrics(preferences: Sequence[float | None]) -> dict[str, Any]:
    """Leaderboard win-rate columns from 1..2 preferences (helpers.BaseScoringRule.describe_head2head).

    win = p - 1 over parsed p; win_rate = 100 mean, standard_error = 100 sem (ddof 1); n_wins counts
    win > 0.5, n_wins_base win < 0.5, n_draws p == 1.5 (or legacy 0). discrete_win_rate (ZeroOneScoringRule)
    scores round(p) - 1 with exact ties as 0.5. Unparsed preferences go to n_skipped; undefined values are None.
    """
    all_win, all_discrete = item_wins(preferences)
    parsed = ~np.isnan(all_win)
    win, discrete = all_win[parsed], all_discrete[parsed]
    n = int(win.size)
    return {
        "win_rate": float(win.mean() * 100) if n else None,
        "standard_error": float(win.std(ddof=1) / math.sqrt(n) * 100) if n > 1 else None,
        "n_wins": int((win > 0.5).sum()),
        "n_wins_base": int((win < 0.5).sum()),
        "n_draws": int((win == 0.5).sum()),
        "n_total": n,
        "discrete_win_rate": float(discrete.mean() * 100) if n else None,
        "n_skipped": int((~parsed).sum()),
    }


def avg_length(outputs: Sequence[str]) -> int:
    """Mean character length of the model outputs, truncated to int (main.evaluate: ``int(str.len().mean())``)."""
    if not outputs:
        raise ValueError("avg_length of no outputs")
    return int(np.mean([len(o) for o in outputs]))


# ---------------------------------------------------------------- length-controlled win rate
@dataclass(frozen=True)
class LCSupport:
    """The GLM's side data from the HF dataset. ``gamed_*``: df_gamed.csv rows (two length-gamed
    baselines, preference in [0, 1]) the fit is regularised towards. ``difficulty[g]``: the official
    lookup for annotation row g, ``df_gamed.drop_duplicates("index")["instruction_difficulty"][g]``
    (by CSV row label, i.e. position). ``instruction_difficulty``: instruction_difficulty.csv, if present.
    """

    gamed_preference: np.ndarray
    gamed_std_delta_len: np.ndarray
    gamed_difficulty: np.ndarray
    gamed_not_gamed: np.ndarray
    gamed_index: np.ndarray
    difficulty: Mapping[int, float]
    instruction_difficulty: np.ndarray | None = None


def load_lc_support(directory: str | Path) -> LCSupport:
    """Read df_gamed.csv (required) and instruction_difficulty.csv (optional) from ``directory``."""
    path = Path(directory) / "df_gamed.csv"
    if not path.is_file():
        raise InputError(
            f"missing: download df_gamed.csv and instruction_difficulty.csv from the HF dataset "
            f"{HF_DATASET} into {path.parent}, or set the alpaca_eval task's lc_support_dir "
            "(`evalharness metrics alpaca-eval --lc-support-dir`) to a folder that holds them",
            path=str(path),
        )
    df = pd.read_csv(path)
    for col in ("index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"):
        if col not in df.columns:
            raise InputError("column missing", path=str(path), field=col)
    if df["not_gamed_baseline"].dtype != bool:
        raise InputError("expected True/False values", path=str(path), field="not_gamed_baseline")
    first = df.drop_duplicates("index")["instruction_difficulty"]
    diff_path = Path(directory) / "instruction_difficulty.csv"
    difficulty_csv = (
        pd.read_csv(diff_path, index_col=0).squeeze("columns").to_numpy(float) if diff_path.is_file() else None
    )
    return LCSupport(
        df["preference"].to_numpy(float),
        df["std_delta_len"].to_numpy(float),
        df["instruction_difficulty"].to_numpy(float),
        df["not_gamed_baseline"].to_numpy(bool),
        df["index"].to_numpy(int),
        dict(zip(first.index.tolist(), first.tolist())),
        difficulty_csv,
    )


def fetch_lc_support_files(local_dir: str | Path | None = None) -> Path:
    """df_gamed.csv and instruction_difficulty.csv, downloaded once at a pinned revision and checked
    against a pinned sha256 (``evalharness.tasks.benchdata``); returns their folder, for ``lc_support_dir``."""
    from evalharness.tasks import benchdata

    found = [benchdata.fetch(name, local_dir=local_dir) for name in LC_SUPPORT_FILES.values()]
    return found[0].parent


def _liblinear_l1(X: np.ndarray, y: np.ndarray, sw: np.ndarray, C: float, seed: Any) -> np.ndarray:
    model = LogisticRegression(
        C=C, solver="liblinear", fit_intercept=False, tol=1e-4, max_iter=100, random_state=seed, **_SKLEARN_L1
    )
    return model.fit(X, y, sample_weight=sw).coef_[0]


def _fit_glm(X: np.ndarray, p: np.ndarray, w: np.ndarray) -> np.ndarray:
    """glm_winrate.fit_LogisticRegressionCV with probabilistic targets, re-derived step by step.

    Each row is duplicated as (y=1, weight p w) and (y=0, weight (1-p) w), so the weighted log loss
    is the cross-entropy against p. C is chosen on the LogisticRegressionCV grid by 5-fold GroupKFold
    (both copies of a row in one fold) with score -mean(w (p log q + (1-p) log(1-q))), q clipped to
    [1e-15, 1 - 1e-15]; then refit on all rows. L1, liblinear, no intercept, random_state 123.
    """
    n = len(p)
    X2, y = np.vstack([X, X]), np.r_[np.ones(n), np.zeros(n)]
    w2 = np.r_[w, w]
    sw = np.r_[p, 1 - p] * w2
    target = np.r_[p, 1 - (1 - p)]  # the official scorer recovers p from the y=0 copy as 1 - (1 - p)
    scores = np.zeros(len(LC_CS))
    for train, test in GroupKFold(n_splits=LC_N_SPLITS).split(X2, y, np.r_[np.arange(n), np.arange(n)]):
        rng = np.random.RandomState(LC_SEED)  # the CV path draws one liblinear seed per C, in grid order
        for k, C in enumerate(LC_CS):
            q = np.clip(expit(X2[test] @ _liblinear_l1(X2[train], y[train], sw[train], C, rng)), 1e-15, 1 - 1e-15)
            t = target[test]  # summed over folds: the scorer's value, minus the weighted log loss
            scores[k] += np.mean((t * np.log(q) + (1 - t) * np.log(1 - q)) * w2[test])
    return _liblinear_l1(X2, y, sw, LC_CS[int(np.argmax(scores))], LC_SEED)


def _design(std_delta_len: np.ndarray, difficulty: np.ndarray, not_gamed: np.ndarray) -> np.ndarray:
    return np.column_stack([np.tanh(std_delta_len), difficulty, not_gamed.astype(float)])


def _lc_fit(
    rows: Sequence[Mapping[str, Any]], support: LCSupport, positions: np.ndarray, gamed_rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(GLM weights, predicted preferences at zero length difference) for annotation rows at ``positions``."""
    delta = np.array([len(rows[g]["output_1"]) - len(rows[g]["output_2"]) for g in positions], float)
    if not delta.std(ddof=1) > 0:
        raise ValueError("LC win rate needs outputs whose length differences vary")
    pref = _preferences([rows[g]["preference"] for g in positions])
    pref = np.where(pref == 0, 1.5, pref) - 1
    try:
        diff = np.array([support.difficulty[int(g)] for g in positions], float)
    except KeyError as e:
        raise ValueError(f"df_gamed.csv has no instruction difficulty for annotation row {e}") from None
    ones = np.ones(len(positions), bool)
    s = support
    X = np.vstack(
        [
            _design(s.gamed_std_delta_len[gamed_rows], s.gamed_difficulty[gamed_rows], s.gamed_not_gamed[gamed_rows]),
            _design(delta / delta.std(ddof=1), diff, ones),
        ]
    )
    p = np.r_[s.gamed_preference[gamed_rows], pref]
    not_gamed = np.r_[s.gamed_not_gamed[gamed_rows], ones]
    w = np.where(not_gamed, 1.0, LC_LAMBDA / 2)
    keep = ~np.isnan(p)
    coef = _fit_glm(X[keep], p[keep], w[keep])
    return coef, expit(_design(np.zeros(len(positions)), diff, ones) @ coef)


def _is_baseline(rows: Sequence[Mapping[str, Any]]) -> bool:
    """The official test: the (unique) generator_2 is the generator_1."""
    pairs = {(r.get("generator_1"), r.get("generator_2")) for r in rows}
    return len(pairs) == 1 and (pair := pairs.pop())[0] is not None and pair[0] == pair[1]


def length_controlled_winrate(annotations: Sequence[Mapping[str, Any]], support: LCSupport) -> dict[str, Any]:
    """glm_winrate.get_length_controlled_winrate (length_controlled_v1, baseline=None).

    Fits P(model wins) = sigmoid(a tanh(std_delta_len) + b instruction_difficulty + c) on the model's
    parsed rows plus the gamed-baseline rows (weight LC_LAMBDA / 2), where std_delta_len is
    (len(output_1) - len(output_2)) / its std; LC = 100 mean sigmoid(b difficulty + c) over all rows
    (zero length difference). The baseline against itself gets weights 0 and LC 50 by construction.
    ``lc_standard_error`` is the official one: the SE of those per-row predictions, not a sampling SE.
    """
    if _is_baseline(annotations):
        pred = np.where(np.isnan(_preferences([r["preference"] for r in annotations])), np.nan, 0.5)
        coef = np.zeros(len(LC_FEATURES))
    else:
        positions = np.arange(len(annotations))
        coef, pred = _lc_fit(annotations, support, positions, np.arange(len(support.gamed_preference)))
    pred = pred[~np.isnan(pred)]
    return {
        "length_controlled_winrate": float(pred.mean() * 100),
        "lc_standard_error": float(pred.std(ddof=1) / math.sqrt(pred.size) * 100) if pred.size > 1 else None,
        "lc_weights": dict(zip(LC_FEATURES, coef.tolist())),
    }


def predict_lc_winrate(
    weights: Mapping[str, float], baseline_weights: Mapping[str, float], instruction_difficulty: Sequence[float]
) -> float:
    """LC win rate (percent) of one model against another from fitted GLM weights (glm_winrate.predict_winrate).

    100 mean sigmoid(dc + db d) over instruction_difficulty.csv, with d* the weight differences. The
    official returns a fraction here, unlike everywhere else; this returns percent.
    """
    delta = {k: weights[k] - baseline_weights[k] for k in LC_FEATURES[1:]}
    d = np.asarray(instruction_difficulty, float)
    return float(expit(delta[LC_FEATURES[2]] + delta[LC_FEATURES[1]] * d).mean() * 100)


def lc_winrate_bootstrap_ci(
    annotations: Sequence[Mapping[str, Any]],
    support: LCSupport,
    *,
    rounds: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the LC win rate; not part of the official tool.

    Each round resamples instructions with replacement (their annotation rows and the gamed rows of
    the same instructions) and reruns the whole fit, CV choice of C included (about 0.1 s a round).
    """
    if _is_baseline(annotations):
        return 50.0, 50.0
    return stats.bootstrap_ci(
        np.arange(len(annotations)),
        lambda pos: lc_winrate_resampled(annotations, support, pos),
        rounds=rounds,
        level=level,
        seed=seed,
    )


def lc_winrate_resampled(annotations: Sequence[Mapping[str, Any]], support: LCSupport, positions: np.ndarray) -> float:
    """One bootstrap round's LC win rate (percent): the rows at ``positions`` (repeats allowed) and
    the gamed rows of the same instructions, the whole fit rerun (CV choice of C included)."""
    if _is_baseline(annotations):
        return 50.0
    by_index: dict[int, list[int]] = {}
    for row, index in enumerate(support.gamed_index.tolist()):
        by_index.setdefault(index, []).append(row)
    gamed = np.array([r for g in positions for r in by_index.get(int(g), [])], int)
    return float(_lc_fit(annotations, support, positions, gamed)[1].mean() * 100)


# ---------------------------------------------------------------- entry points
def metrics_from_annotations(
    annotations: Sequence[Mapping[str, Any]],
    *,
    model_outputs: Sequence[str] | None = None,
    lc_support: LCSupport | None = None,
    lc_bootstrap_rounds: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Leaderboard columns of one model's annotations, plus ``n_skipped``.

    LC columns need ``lc_support``; ``lc_bootstrap_rounds`` > 0 adds ``lc_ci_low``/``lc_ci_high``.
    ``avg_length`` is over ``model_outputs`` when given (as the official), else over ``output_2``.
    """
    out = winrate_metrics([r["preference"] for r in annotations])
    n_skipped = out.pop("n_skipped")
    out["avg_length"] = avg_length(
        list(model_outputs) if model_outputs is not None else [r["output_2"] for r in annotations]
    )
    if lc_support is not None:
        out.update(length_controlled_winrate(annotations, lc_support))
        if lc_bootstrap_rounds > 0:
            out["lc_ci_low"], out["lc_ci_high"] = lc_winrate_bootstrap_ci(
                annotations, lc_support, rounds=lc_bootstrap_rounds, seed=seed
            )
    out["n_skipped"] = n_skipped
    return out


def metrics_from_annotations_file(
    path: str | Path,
    *,
    model: str | None = None,
    lc_support_dir: str | Path | None = None,
    eval_set: str | Path | None = None,
    model_outputs: str | Path | None = None,
    lc_bootstrap_rounds: int = 0,
) -> dict[str, Any]:
    """AlpacaEval 2 metrics of an annotations file: what ``evalharness metrics alpaca-eval FILE`` prints.

    ``model`` selects rows by ``generator_2`` when the file holds several models, and otherwise only
    names the model (the official NullModel rows say ``example``). ``eval_set`` (JSON/JSONL with
    ``instruction``) makes the file be checked against it; ``model_outputs`` gives avg_length as the
    official computes it. Adds ``model``, ``reference_model`` and ``annotator`` keys.
    """
    rows = load_annotations(path)
    models = sorted({r["generator_2"] for r in rows if "generator_2" in r})
    if len(models) > 1:
        if model is None:
            raise InputError(f"annotations of several models {models}: choose one", path=str(path), field="generator_2")
        rows = [r for r in rows if r.get("generator_2") == model]
        if not rows:
            raise InputError(f"no rows for model {model!r}; present: {models}", path=str(path), field="generator_2")
    for key in ("generator_1", "annotator"):
        if len({r.get(key) for r in rows}) > 1:
            raise InputError(f"mixed values {sorted({str(r.get(key)) for r in rows})}", path=str(path), field=key)
    if eval_set is not None:
        items = [r for _, r in _read_json_records(Path(eval_set))]
        rows = check_against_eval_set(rows, items, path=str(path))
    outputs = None
    if model_outputs is not None:
        items = check_against_eval_set(
            [r for _, r in _read_json_records(Path(model_outputs))], rows, path=str(model_outputs)
        )
        outputs = [str(r.get("output", "")) for r in items]
    support = load_lc_support(lc_support_dir) if lc_support_dir is not None else None
    head = {
        "model": model or (models[0] if models else "model"),
        "reference_model": rows[0].get("generator_1", BASELINE) if rows else BASELINE,
        "annotator": rows[0].get("annotator", ANNOTATOR) if rows else ANNOTATOR,
    }
    return {
        **head,
        **metrics_from_annotations(
            rows, model_outputs=outputs, lc_support=support, lc_bootstrap_rounds=lc_bootstrap_rounds
        ),
    }


def to_scores(metrics: Mapping[str, Any], model: str) -> list[Score]:
    """Score records of one model's metrics (keys: task alpaca_eval 2, the annotator, the baseline).

    The official lc_standard_error is not a sampling error, so it goes to ``extra``, not ``stderr``;
    ``lc_ci_low``/``lc_ci_high`` (from :func:`lc_winrate_bootstrap_ci`) become the LC score's CI.
    """
    keys = {
        "task": "alpaca_eval",
        "task_version": "2",
        "model": model,
        "judge_id": metrics.get("annotator", ANNOTATOR),
        "judge_version": JUDGE_MODEL,
        "baseline": metrics.get("reference_model", BASELINE),
    }
    n, skipped = metrics["n_total"], metrics.get("n_skipped", 0)
    counts = {k: metrics[k] for k in ("n_wins", "n_wins_base", "n_draws", "avg_length")}
    scores = [
        Score(
            metric="win_rate",
            value=metrics["win_rate"],
            n=n,
            n_skipped=skipped,
            stderr=metrics["standard_error"],
            extra=counts,
            **keys,
        ),
        Score(metric="discrete_win_rate", value=metrics["discrete_win_rate"], n=n, n_skipped=skipped, **keys),
    ]
    if "length_controlled_winrate" in metrics:
        scores.append(
            Score(
                metric="length_controlled_winrate",
                value=metrics["length_controlled_winrate"],
                n=n,
                n_skipped=skipped,
                ci_low=metrics.get("lc_ci_low"),
                ci_high=metrics.get("lc_ci_high"),
                extra={"lc_standard_error": metrics.get("lc_standard_error"), "lc_weights": metrics.get("lc_weights")},
                **keys,
            )
        )
    scores.append(Score(metric="avg_length", value=float(metrics["avg_length"]), n=n + skipped, **keys))
    return scores
