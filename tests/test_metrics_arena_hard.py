"""Arena-Hard scoring against the official battles, leaderboards, answers and judge configs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evalharness.core.errors import InputError
from evalharness.tasks.arena_hard import metric as ah
from evalharness.core.records import Score

BATTLES = "arena_hard/battles/arena_hard_battles.gpt-4-1106-preview.gpt-3.5-turbo-0125+gpt-4-0613.jsonl"
MODELS = ("gpt-3.5-turbo-0125", "gpt-4-0613")


@pytest.fixture
def battles_path(benchdata: Path) -> Path:
    return benchdata / BATTLES


def test_parse_verdict_rules() -> None:
    text = "Labels: [[A>>B]] [[A>B]] [[A=B]] [[B>A]] [[B>>A]]. My final verdict is: [[A>B]]"
    assert ah.parse_verdict(text) == "A>B"  # v2.0 (HEAD): the last match
    assert ah.parse_verdict(text, rule="v0.1") is None  # the legacy rule: several distinct labels
    assert ah.parse_verdict("first [[B>>A]] then revised: [[a=b]]") == "A=B"  # upper-cased as v2 does
    assert ah.parse_verdict("Assistant B wins [[A<<B]]") == "B>>A"  # v2 alias, canonical form
    assert ah.parse_verdict("[[A>B]] ... [[AB]]") is None  # v2.0: the last match is no label (official: KeyError)
    assert ah.parse_verdict("[[A>B]] ... [[AB]]", rule="last") == "A>B"  # "last" skips non-labels
    assert ah.parse_verdict("My final verdict is [B>A]") == "B>A"  # v2.0's config holds the [X] fallback
    assert ah.parse_verdict("My final verdict is [B>A]", patterns=(ah.LABEL_PATTERN,)) is None
    assert ah.parse_verdict("My final verdict is [B>A]", patterns=(ah.LABEL_PATTERN, r"\[([AB<>=]+)\]")) == "B>A"
    assert ah.parse_verdict("no verdict at all") is None


def test_official_scores_reproduced_from_battles(battles_path: Path, benchdata: Path) -> None:
    # 23.34 and 37.90: column `score` of every official v0.1 leaderboard CSV (gpt-4-1106-preview judge).
    m = ah.metrics_from_file(battles_path)  # official: 100 rounds, np.random.seed(42), 95% percentile CI
    official: dict[str, list[dict[str, str]]] = {k: [] for k in MODELS}
    for f in sorted((benchdata / "arena_hard/leaderboard").glob("*.csv")):
        for row in csv.DictReader(f.open()):
            if row["model"] in official:
                official[row["model"]].append(row)
    for model in MODELS:
        r, rows = m["models"][model], official[model]
        assert {float(o["score"]) for o in rows} == {round(r["score"], 2)}
        assert (r["n_games"], r["n_unparsed"]) == (1000, 0)  # 500 questions x 2 games, none unparsed
        # The official bootstrap resampled the whole leaderboard's battle table, so seed 42 draws other
        # rows than on this two-model table; its own CI moved by up to 0.56 between releases.
        # Tolerance: each bound within 0.5 of the span of the five official releases.
        for ours, col in ((r["ci_low"], "rating_q025"), (r["ci_high"], "rating_q975")):
            vals = [float(o[col]) for o in rows]
            assert min(vals) - 0.5 <= ours <= max(vals) + 0.5, (model, col, ours, vals)
    assert m["models"]["gpt-3.5-turbo-0125"]["ci_low"] == pytest.approx(21.209, abs=1e-3)
    assert m["models"]["gpt-4-0613"]["ci_high"] == pytest.approx(40.042, abs=1e-3)
    json.dumps(m, allow_nan=False)  # what `evalharness metrics arena-hard FILE --json` prints
    assert "23.34  (21.21, 24.70)  games 1000  unparsed 0" in ah.format_report(m)
    scores = ah.to_scores(m)
    assert all(isinstance(s, Score) and s.baseline == "gpt-4-0314" for s in scores)
    assert {s.model: round(s.value, 2) for s in scores} == {"gpt-3.5-turbo-0125": 23.34, "gpt-4-0613": 37.90}


def test_bootstrap_draws_the_official_rows(battles_path: Path) -> None:
    battles = ah.load_battles(battles_path)
    np.random.seed(ah.OFFICIAL_SEED)  # what show_result.py does before get_bootstrap_result
    expected = [ah.fit_bt(battles.sample(frac=1.0, replace=True))[0] for _ in range(3)]
    ours = ah.bootstrap_elo(battles, rounds=3, seed=ah.OFFICIAL_SEED)
    np.testing.assert_allclose(ours.to_numpy(), pd.DataFrame(expected)[list(ours.columns)].to_numpy(), atol=1e-9)


def test_bt_equals_weighted_win_rate_when_all_battles_are_against_the_baseline(battles_path: Path) -> None:
    battles = ah.load_battles(battles_path)
    elo, _ = ah.fit_bt(battles)
    assert elo["gpt-4-0314"] == ah.INIT_RATING
    for model in MODELS:
        w = battles.winner[battles.model_b == model]
        weighted = ((w == "model_b").sum() + 0.5 * (w == "tie").sum()) / len(w)  # x3 repeats included
        assert ah.win_rate(elo[model]) == pytest.approx(weighted, abs=1e-10)
    # by hand: a decisive win (3 rows), a tie and a loss -> (3 + 0.5) / 5
    toy = pd.DataFrame({"question_id": list("aaabc"), "model_a": ["base"] * 5, "model_b": ["m"] * 5,
                        "winner": ["model_b"] * 3 + ["tie", "model_a"]})
    elo, _ = ah.fit_bt(toy, baseline="base")
    assert ah.win_rate(elo["m"]) == pytest.approx(3.5 / 5, abs=1e-10)
    assert elo["m"] == pytest.approx(1000 + 400 * math.log10(3.5 / 1.5), abs=1e-9)


def _judgments_from_battles(battles: pd.DataFrame) -> dict[str, list[dict]]:
    """Invert show_result.get_battles_from_judgment: rows per question are 1+1, 1+3, 3+1 or 3+3."""
    label = {1: {"model_a": "A>B", "model_b": "B>A", "tie": "A=B"},  # game 1: baseline is A
             2: {"model_a": "B>A", "model_b": "A>B", "tie": "A=B"}}  # game 2: the model is A
    out: dict[str, list[dict]] = {}
    for (model, qid), g in battles.groupby(["model_b", "question_id"], sort=False):
        w = list(g.winner)
        first = 3 if len(w) == 6 or (len(w) == 4 and w[0] == w[1] == w[2]) else 1
        games = []
        for game, (winner, reps) in enumerate(((w[0], first), (w[first], len(w) - first)), 1):
            lab = label[game][winner]
            lab = lab.replace(">", ">>") if reps == 3 else lab
            games.append({"score": lab, "judgment": f"[[A>>B]] ... [[B>>A]]. My final verdict: [[{lab}]]"})
        out.setdefault(model, []).append({"question_id": qid, "model": model, "judge": "gpt-4-1106-preview",
                                          "games": games})
    return out


def test_judgment_files_give_the_same_scores_and_count_unparsed(battles_path: Path, tmp_path: Path) -> None:
    for model, rows in _judgments_from_battles(ah.load_battles(battles_path)).items():
        if model == "gpt-4-0613":  # two unparsed games: the official scorer drops them, we count them
            rows[0]["games"][1] = {"score": None, "judgment": "I cannot decide."}
            rows[1]["games"][0]["score"] = "garbage"
        (tmp_path / f"{model}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = ah.metrics_from_file(tmp_path, bootstrap_rounds=0)
    assert m["models"]["gpt-4-0613"]["ci_low"] is None and "(no bootstrap)" in ah.format_report(m)
    assert round(m["models"]["gpt-3.5-turbo-0125"]["score"], 2) == 23.34
    assert m["judge"] == "gpt-4-1106-preview"
    assert (m["models"]["gpt-4-0613"]["n_games"], m["models"]["gpt-4-0613"]["n_unparsed"]) == (1000, 2)
    assert (m["n_games"], m["n_unparsed"]) == (2000, 2)
    one = ah.metrics_from_file(tmp_path / "gpt-3.5-turbo-0125.jsonl", bootstrap_rounds=0)
    assert one["models"]["gpt-3.5-turbo-0125"]["score"] == pytest.approx(m["models"]["gpt-3.5-turbo-0125"]["score"])
    # re-parsed from the judgment text (last label): the "garbage" game's text holds a verdict
    rp = ah.metrics_from_file(tmp_path, reparse=True, bootstrap_rounds=0, rule="last")
    assert rp["models"]["gpt-3.5-turbo-0125"]["score"] == pytest.approx(m["models"]["gpt-3.5-turbo-0125"]["score"])
    assert rp["models"]["gpt-4-0613"]["n_unparsed"] == 1
    # the v0.1 leaderboard rule reads no verdict from a text holding several distinct labels
    with pytest.raises(InputError, match="no parsed game"):
        ah.metrics_from_file(tmp_path, reparse=True, bootstrap_rounds=0)


def test_game_two_is_swapped_and_decisive_weighs_three(tmp_path: Path) -> None:
    # Game 1 shows the baseline as A: A>>B is a decisive baseline win. Game 2 shows the model as A.
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps({"question_id": "q", "model": "m", "games": [{"score": "A>>B"}, {"score": "A>B"}]}) + "\n")
    vs = ah.load_judgments(f, baseline="base")
    assert [(v.value, v.order, v.meta["decisive"]) for v in vs] == [(0.0, "AB", True), (1.0, "BA", False)]
    b = ah.battles_from_verdicts(vs)
    assert list(b.winner) == ["model_a"] * 3 + ["model_b"] and set(b.model_a) == {"base"}


def test_bad_input_names_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "b.jsonl"
    f.write_text('{"question_id": "q", "model_a": "x", "model_b": "y", "winner": "model_a"}\n'
                 '{"question_id": "q", "model_a": "x", "model_b": "y", "winner": "nobody"}\n')
    with pytest.raises(InputError) as e:
        ah.metrics_from_file(f)
    assert (e.value.path, e.value.line, e.value.field) == (str(f), 2, "winner")
    f.write_text('{"question_id": "q", "model": "m", "games": "A>B"}\n')
    with pytest.raises(InputError) as e:
        ah.load_judgments(f)
    assert (e.value.line, e.value.field) == (1, "games")


def test_question_bootstrap_is_seeded_and_wider(battles_path: Path) -> None:
    battles = ah.load_battles(battles_path)
    a = ah.bootstrap_elo(battles, rounds=30, seed=1, unit="question")
    assert a.equals(ah.bootstrap_elo(battles, rounds=30, seed=1, unit="question"))
    b = ah.bootstrap_elo(battles, rounds=30, seed=1, unit="battle")
    assert a["gpt-4-0613"].std() > b["gpt-4-0613"].std()  # the 2 games and x3 repeats are correlated


def test_style_metadata_matches_official_answer_metadata(benchdata: Path) -> None:
    for model in ("gpt-4-0314", "gpt-4-0613"):
        path = benchdata / f"arena_hard/arena-hard-v0.1/model_answer_more/{model}.jsonl"
        for line in path.open():
            row = json.loads(line)
            turn = row["choices"][0]["turns"][0]
            got = ah.style_metadata(turn["content"], count_tokens=lambda _: turn["token_len"])
            assert got == row["conv_metadata"], row["question_id"]


def _official_v01_style_fit(battles: pd.DataFrame, meta: dict) -> dict[str, float]:
    """utils_math.construct_style_matrices + fit_bt, with sklearn as the official runs it."""
    from sklearn.linear_model import LogisticRegression
    models = sorted(set(battles.model_a) | set(battles.model_b))
    df = pd.concat([battles, battles], ignore_index=True)
    n, p = len(df), len(models)
    X = np.zeros((n, p + 4))
    X[np.arange(n), [models.index(m) for m in df.model_a]] = math.log(10)
    X[np.arange(n), [models.index(m) for m in df.model_b]] = -math.log(10)
    def vec(m: str, q: str) -> list[float]:
        d = meta[m][q]
        return [d["token_len"]] + [sum(d[k].values()) for k in ("header_count", "list_count", "bold_count")]
    a = np.array([vec(m, q) for m, q in zip(df.model_a, df.question_id)])
    b = np.array([vec(m, q) for m, q in zip(df.model_b, df.question_id)])
    diff = (a - b) / (a + b + 1)
    X[:, p:] = (diff - diff.mean(0)) / diff.std(0)
    y = (df.winner == "model_a").to_numpy(float)
    y[: n // 2][(battles.winner == "tie").to_numpy()] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=1.0, tol=1e-10, max_iter=10000).fit(X, y)
    elo = 400 * lr.coef_[0][:p] + 1000
    return {m: float(e - elo[models.index("gpt-4-0314")] + 1000) for m, e in zip(models, elo)}


def test_style_control_v01_matches_the_official_fit(battles_path: Path, benchdata: Path) -> None:
    answers = benchdata / "arena_hard/arena-hard-v0.1/model_answer_more"
    m = ah.metrics_from_file(battles_path, style_control=True, answers=answers, bootstrap_rounds=20)
    official = _official_v01_style_fit(ah.load_battles(battles_path), ah.load_answer_metadata(answers))
    for model in MODELS:
        assert m["models"][model]["elo"] == pytest.approx(official[model], abs=1e-3)
        lo, hi = m["models"][model]["ci_low"], m["models"][model]["ci_high"]
        assert lo < m["models"][model]["score"] < hi
    assert m["style_control"]["coefficients"]["length"] > 0  # longer answers win more often
    assert round(m["models"]["gpt-4-0613"]["score"], 2) == 37.11  # regression value; no official SC number here


def test_style_control_without_style_difference_is_plain_bt(battles_path: Path, benchdata: Path,
                                                            tmp_path: Path) -> None:
    # Every model gets the baseline's metadata: all style differences vanish.
    src = benchdata / "arena_hard/arena-hard-v0.1/model_answer_more/gpt-4-0314.jsonl"
    rows = [json.loads(line) for line in src.open()]
    for model in ("gpt-4-0314", *MODELS):
        (tmp_path / f"{model}.jsonl").write_text("".join(json.dumps(r | {"model_id": model}) + "\n" for r in rows))
    plain = ah.metrics_from_file(battles_path, bootstrap_rounds=5)
    sc = ah.metrics_from_file(battles_path, bootstrap_rounds=5, style_control=True, style_variant="v2",
                              answers=tmp_path)
    for model in MODELS:
        assert sc["models"][model]["score"] == pytest.approx(plain["models"][model]["score"], abs=1e-9)
        assert sc["models"][model]["ci_low"] == pytest.approx(plain["models"][model]["ci_low"], abs=1e-9)
    with pytest.raises(InputError, match="answers"):
        ah.metrics_from_file(battles_path, style_control=True)


def test_judge_config_renders_from_official_files(benchdata: Path) -> None:
    cfg_dir = benchdata / "arena_hard/config"
    legacy = ah.load_judge_config(cfg_dir / "judge_config.v0.1-legacy.yaml")
    assert legacy.judge_model == "gpt-4-1106-preview" and legacy.baseline == "gpt-4-0314"
    assert legacy.regex_patterns == (ah.LABEL_PATTERN,)
    v01 = ah.load_judge_config(cfg_dir / "arena-hard-v0.1.yaml", settings=cfg_dir / "judge_prompts_v2.0.json")
    settings = json.loads((cfg_dir / "judge_prompts_v2.0.json").read_text())["JUDGE_SETTINGS"]
    assert v01.system_prompt == settings["arena-hard-v0.1"]["system_prompt"] == legacy.system_prompt
    assert v01.baseline == "gpt-4-0314" and len(v01.regex_patterns) == 2
    msgs = ah.render_judge_messages("What is 2+2?", "Four.", "4", v01)
    assert msgs == ah.render_judge_messages("What is 2+2?", "Four.", "4", legacy)  # same text, other placeholders
    assert msgs[0] == {"role": "system", "content": v01.system_prompt}
    assert msgs[1]["content"] == ("<|User Prompt|>\nWhat is 2+2?\n\n<|The Start of Assistant A's Answer|>\nFour.\n"
                                  "<|The End of Assistant A's Answer|>\n\n<|The Start of Assistant B's Answer|>\n4\n"
                                  "<|The End of Assistant B's Answer|>")
    assert ah.parse_verdict("final: [A>B]", v01.regex_patterns) == "A>B"
    with pytest.raises(InputError) as e:
        ah.load_judge_config(cfg_dir / "arena-hard-v2.0.yaml")
    assert e.value.field == "system_prompt"
    v2 = ah.load_judge_config(cfg_dir / "arena-hard-v2.0.yaml", settings=cfg_dir / "judge_prompts_v2.0.json",
                              category="hard_prompt")
    assert v2.baseline == "o3-mini-2025-01-31" and v2.judge_model == "gpt-4.1"


def test_reparse_reads_v2_judgment_objects(tmp_path):
    from evalharness.tasks.arena_hard.metric import load_judgments
    row = {"uid": "q1", "category": "hard_prompt", "model": "m", "judge": "j",
           "games": [{"score": "A>B", "judgment": {"answer": "... so [[A>B]] then [[B>>A]]"}},
                     {"score": None, "judgment": {"answer": "no label"}}]}
    f = tmp_path / "m.jsonl"
    f.write_text(json.dumps(row) + "\n")
    g1, g2 = load_judgments(f, reparse=True)
    assert g1.meta["label"] == "B>>A" and g1.value == 1.0  # game 1: baseline is A, so B>>A is a model win
    assert g2.status == "unparsed" and g2.value is None


def test_judgment_folder_of_our_own_run_reads_its_baseline(tmp_path: Path) -> None:
    """`evalharness metrics arena-hard` on the judgment folder a run wrote (baseline demo-baseline, recorded in every
    row) scores it against that baseline without --baseline, and gives the run's own score; several baselines in one
    folder are refused, naming the field."""
    import os
    import subprocess
    import sys

    from evalharness.pipeline.runner import run_spec
    from evalharness.testing.fake_openai import FakeOpenAI
    demo = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data" / "arena_hard"
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: ah-baseline
model: policy-x
backend: fake
generation: {{max_new_tokens: 16}}
judge: {{type: openai, model: judge-x, base_url: "URL", max_retries: 0, cache: false}}
tasks:
  arena_hard: {{data_dir: {demo}, questions: {demo}/questions.jsonl, baseline: demo-baseline, bootstrap_rounds: 10}}
""")
    answers = iter(["[[B>>A]]", "[[A=B]]", "[[A>B]]"] * 100)  # a mix of labels: the score depends on every game
    with FakeOpenAI(responder=lambda body: f"My final verdict is {next(answers)}.") as server:
        spec.write_text(spec.read_text().replace("URL", server.url))
        res = run_spec(spec, results_dir=tmp_path / "results", progress=False)
    [folder] = (res.path / "arena_hard").glob("*/model_judgment/*")
    ours = next(s for s in res.scores if s.task == "arena_hard" and s.metric == "score")
    m = ah.metrics_from_file(folder, bootstrap_rounds=0)
    assert m["baseline"] == "demo-baseline" and set(m["models"]) == {"policy-x"}
    assert m["models"]["policy-x"]["score"] == pytest.approx(ours.value, abs=1e-9)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "metrics", "arena-hard", str(folder), "--json",
                        "--bootstrap-rounds", "0"], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["models"]["policy-x"]["score"] == pytest.approx(ours.value, abs=1e-9)

    [file] = folder.glob("*.jsonl")
    rows = [json.loads(x) for x in file.read_text().splitlines()]
    rows[0]["baseline"] = "other-baseline"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(InputError) as e:
        ah.metrics_from_file(folder, bootstrap_rounds=0)
    assert e.value.field == "baseline" and "demo-baseline, other-baseline" in str(e.value)
    assert ah.metrics_from_file(folder, baseline="demo-baseline", bootstrap_rounds=0)["baseline"] == "demo-baseline"
