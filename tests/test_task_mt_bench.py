"""MT-Bench task end to end through the run loop: fake policy, a judge over real HTTP scripted per
(question, turn), official files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from evalharness.core.errors import EvalHarnessError

from evalharness.backends.client import ClientConfig, JudgeClient
from evalharness.core.errors import InputError
from evalharness.tasks.mt_bench import metric as mt
from evalharness.core.records import Score
from evalharness.store import RunStore
from evalharness.tasks.mt_bench import task as mt_bench
from evalharness.tasks.base import GenerationSettings, RunEnv
from evalharness.testing import FakeOpenAI, Fault
from taskkit import POLICY, RecordingBackend, run_task

JUDGE = "judge-x"
TASK = "mt_bench"
IDS = (81, 111, 145)  # writing (T 0.7), math (T 0, reference-guided), stem (T 0.1)


def run(tmp_path: Path, cfg: mt_bench.Config, policy: RecordingBackend, judge: Any,
        judge_name: str = JUDGE) -> tuple[list[Score], RunStore]:
    return run_task(tmp_path, TASK, cfg, policy, judge, judge_name, max_new_tokens=48, temperature=0.3)


def client(server: FakeOpenAI) -> JudgeClient:
    return JudgeClient(ClientConfig(base_url=server.url, model=JUDGE, cache=False, max_retries=2,
                                    backoff_base_s=0.01, backoff_max_s=0.05))


def task_version(tmp_path: Path, cfg: mt_bench.Config) -> str:
    """The task version a run of ``cfg`` gives its scores (setup only: no generation, no judge)."""
    task = mt_bench.MTBenchTask(TASK, cfg, RunEnv(GenerationSettings(), tmp_path))
    task.setup()
    return task.task_version


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scripted(questions: dict[int, dict[str, Any]], script: dict[tuple[int, int], Any]):
    """A responder answering by (question id, turn); turn-2 prompts show the whole conversation."""
    def respond(body: dict[str, Any]) -> Any:
        user = body["messages"][-1]["content"]
        qid = next(q for q, rec in questions.items() if rec["turns"][0] in user)
        return script[(qid, 2 if "Conversation with User|>" in user else 1)]
    return respond


@pytest.fixture
def questions(benchdata: Path) -> dict[int, dict[str, Any]]:
    return {q["question_id"]: q for q in jsonl(benchdata / "mt_bench/question.jsonl") if q["question_id"] in IDS}


def test_turns_ratings_faults_official_file_and_resume(tmp_path: Path, benchdata: Path, questions: Any) -> None:
    script = {(81, 1): "Good. Rating: [[8]]", (81, 2): "Rating: [[6]]",
              (111, 1): "Rating: [[3]]. On reflection the answer is right. Rating: [[5]]",  # FastChat: the first [[N]]
              (111, 2): "Rating: 7/10",  # no [[N]]: unparsed, not scored
              (145, 1): Fault.http(400),  # a failed call: not scored
              (145, 2): "[[9]]"}
    cfg = mt_bench.Config(data_dir=str(benchdata / "mt_bench"), question_ids=IDS)
    policy = RecordingBackend()
    with FakeOpenAI(scripted(questions, script)) as server:
        out, store = run(tmp_path, cfg, policy, client(server))
        scores = {s.metric: s for s in out}
        bodies = server.received
        assert server.requests == 6

    # Means over parsed rows: turn 1 (8, 3), turn 2 (6, 9), overall the mean of all four rows.
    assert (scores["score"].value, scores["turn1"].value, scores["turn2"].value) == (6.5, 5.5, 7.5)
    overall = scores["score"]
    assert (overall.n, overall.n_skipped, overall.extra["n_unparsed"], overall.extra["n_error"]) == (4, 2, 1, 1)
    assert (overall.task, overall.model, overall.judge_id, overall.baseline, overall.higher_is_better) == \
        (TASK, POLICY, JUDGE, "gpt-4", True)
    # MT-Bench's own question temperatures are not the run's decoding; the decoding key is the run's.
    assert overall.decoding == {"temperature": 0.3, "top_p": 1.0, "max_new_tokens": 48, "n": 1}
    # judge_version: one hash (prompts, parser, judge decoding, protocol) on every score and verdict.
    verdicts = store.verdicts(TASK, POLICY)
    assert len(overall.judge_version) == 12
    assert {s.judge_version for s in scores.values()} == {v.judge_version for v in verdicts} == {overall.judge_version}
    assert sorted({v.meta["judge_prompt"] for v in verdicts}) == \
        ["single-math-v1", "single-math-v1-multi-turn", "single-v1", "single-v1-multi-turn"]
    # Three questions are not MT-Bench: their own version; the official 80 keep version 1.
    assert overall.task_version.startswith("1/subset:") and overall.task_version == task_version(tmp_path, cfg)
    assert {s.task_version for s in scores.values()} == {overall.task_version}
    assert task_version(tmp_path, mt_bench.Config(data_dir=cfg.data_dir)) == "1"
    assert task_version(tmp_path, mt_bench.Config(data_dir=cfg.data_dir, limit=3)) != overall.task_version

    # Verdicts: keyed by question and turn, failures kept as errors (never a value).
    by_turn = {(v.meta["question_id"], v.meta["turn"]): v for v in verdicts}
    assert len(by_turn) == 6 and by_turn[(111, 1)].item_id == "111:1"
    assert (by_turn[(111, 2)].status, by_turn[(111, 2)].value, by_turn[(111, 2)].raw) == \
        ("unparsed", None, "Rating: 7/10")
    assert by_turn[(145, 1)].status == "error" and "400" in by_turn[(145, 1)].error
    assert (by_turn[(111, 1)].value, by_turn[(111, 1)].meta["category"]) == (3.0, "math")

    # Answers: category temperatures, max_new_tokens from the run, turn 2 sees the model's own turn 1.
    gens = {g.item_id: g for g in store.generations(POLICY)}
    assert {r.id: r.params.temperature for r in policy.requests} == {
        "81:t1": 0.7, "81:t2": 0.7, "111:t1": 0.0, "111:t2": 0.0, "145:t1": 0.1, "145:t2": 0.1}
    assert len(policy.requests) == 6 and sorted(gens) == sorted(r.id for r in policy.requests)
    assert {g.params["temperature"] for k, g in gens.items() if k.startswith("145:")} == {0.1}
    assert all(r.params.max_new_tokens == 48 for r in policy.requests)
    turn2 = next(r for r in policy.requests if r.id == "111:t2")
    assert turn2.messages == [{"role": "user", "content": questions[111]["turns"][0]},
                              {"role": "assistant", "content": gens["111:t1"].text},
                              {"role": "user", "content": questions[111]["turns"][1]}]

    # Judge prompts: official, reference-guided for math, the whole conversation for turn 2; T 0, 2048 tokens.
    prompts = mt.load_judge_prompts(benchdata / "mt_bench/judge_prompts.jsonl")
    reference = {r["question_id"]: r["choices"][0]["turns"]
                 for r in jsonl(benchdata / "mt_bench/reference_answer/gpt-4.jsonl")}[111]
    sent = {key: next(b for b in bodies if _is(b, questions, *key)) for key in script}
    assert all((b["temperature"], b["max_tokens"]) == (0.0, 2048) for b in bodies)
    assert sent[(111, 2)]["messages"][0]["content"] == prompts["single-math-v1-multi-turn"]["system_prompt"]
    math2 = sent[(111, 2)]["messages"][1]["content"]
    assert reference[0] in math2 and reference[1] in math2
    assert gens["111:t1"].text in math2 and gens["111:t2"].text in math2
    assert reference[0] in sent[(111, 1)]["messages"][1]["content"]
    assert "Reference" not in sent[(81, 1)]["messages"][1]["content"]
    assert sent[(81, 1)]["messages"][1]["content"].startswith(prompts["single-v1"]["prompt_template"][:60])

    # The official-format file gives the same numbers through metrics_from_file (re-parsed too).
    judgment = store.path / "mt_bench/model_judgment" / f"{JUDGE}_single.jsonl"
    for reparse in (False, True):
        official = mt.metrics_from_file(judgment, reparse=reparse)["models"][POLICY]
        assert (official["score"], official["turn1"], official["turn2"], official["n"], official["n_unparsed"]) == \
            (6.5, 5.5, 7.5, 4, 2)
    rows = {(r["question_id"], r["turn"]): r for r in jsonl(judgment)}
    assert (rows[(145, 1)]["judgment"], rows[(145, 1)]["score"]) == ("$ERROR$", -1)
    assert rows[(111, 1)]["judge"] == [JUDGE, "single-math-v1"] and rows[(111, 1)]["score"] == 3.0
    answers = jsonl(store.path / "mt_bench/model_answer" / f"{POLICY}.jsonl")
    assert answers[1]["choices"][0]["turns"] == [gens["111:t1"].text, gens["111:t2"].text]

    # Re-run (response cache off): nothing regenerated or re-judged but the failed call, which now gets a 4.
    n_generated = len(policy.requests)
    script[(145, 1)] = "[[4]]"
    with FakeOpenAI(scripted(questions, script)) as server:
        judge = client(server)
        out, resumed = run(tmp_path, cfg, policy, judge)
        scores = {s.metric: s for s in out}
        assert server.requests == 1 and judge.usage["cache_hits"] == 0
    assert resumed.path == store.path
    assert len(policy.requests) == n_generated == 6
    assert scores["turn1"].value == pytest.approx(15 / 3)
    assert scores["score"].value == pytest.approx(30 / 5)
    assert (scores["score"].n, scores["score"].n_skipped) == (5, 1)


def _is(body: dict[str, Any], questions: dict[int, dict[str, Any]], qid: int, turn: int) -> bool:
    user = body["messages"][-1]["content"]
    return questions[qid]["turns"][0] in user and ("Conversation with User|>" in user) == (turn == 2)


def test_reference_answers_are_replaceable(tmp_path: Path, benchdata: Path) -> None:
    simpo = benchdata / "mt_bench/reference_answer/gpt-4-1106-preview.simpo.jsonl"
    reference = next(r for r in jsonl(simpo) if r["question_id"] == 111)["choices"][0]["turns"][0]
    cfg = mt_bench.Config(data_dir=str(benchdata / "mt_bench"), question_ids=(111,), reference_answers=str(simpo))
    with FakeOpenAI(default_text="[[7]]") as server:
        scores, _ = run(tmp_path, cfg, RecordingBackend(), client(server))
        assert reference in server.received[0]["messages"][1]["content"]
    assert {(s.metric, s.value, s.baseline) for s in scores} == {
        (metric, 7.0, "gpt-4-1106-preview") for metric in ("score", "turn1", "turn2")}
    # Other reference answers change math grades: another baseline and judge version than the official ones.
    def setup(c: mt_bench.Config) -> mt_bench.MTBenchTask:
        t = mt_bench.MTBenchTask(TASK, c, RunEnv(GenerationSettings(), tmp_path))
        t.setup()
        return t

    official, same = setup(mt_bench.Config(data_dir=cfg.data_dir, question_ids=(111,))), setup(cfg)
    assert same._judge_version() == scores[0].judge_version
    assert official.ref_model == "gpt-4" and official._judge_version() != scores[0].judge_version


def test_missing_reference_fails_before_generating(tmp_path: Path, benchdata: Path) -> None:
    refs = tmp_path / "refs.jsonl"
    refs.write_text(json.dumps({"question_id": 101, "model_id": "x", "choices": [{"turns": ["a", "b"]}]}) + "\n")
    policy = RecordingBackend()
    cfg = mt_bench.Config(data_dir=str(benchdata / "mt_bench"), categories=("math",), limit=2,
                          reference_answers=str(refs))
    with pytest.raises(InputError, match=r"no reference answer for questions \[111, 112\]"):
        run(tmp_path, cfg, policy, None)
    assert policy.requests == [] and not (tmp_path / "results").exists()


def test_without_data_dir_or_judge(tmp_path: Path, benchdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No data_dir: the pinned files come through benchdata.fetch (here from a cache holding copies).
    cache = tmp_path / "cache/benchdata/mt_bench"
    for rel in ("question.jsonl", "judge_prompts.jsonl", "reference_answer/gpt-4.jsonl"):
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(benchdata / "mt_bench" / rel, cache / rel)
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    scores, store = run(tmp_path, mt_bench.Config(question_ids=(81, 111)), RecordingBackend(), None)
    assert scores == []  # no judge: answers only
    gens = store.generations(POLICY)
    assert sorted(g.item_id for g in gens) == ["111:t1", "111:t2", "81:t1", "81:t2"]
    answers = {r["question_id"]: r["choices"][0]["turns"]
               for r in jsonl(store.path / "mt_bench/model_answer" / f"{POLICY}.jsonl")}
    by_id = {g.item_id: g.text for g in gens}
    assert answers == {q: [by_id[f"{q}:t1"], by_id[f"{q}:t2"]] for q in (81, 111)}
    assert not (store.path / "mt_bench/model_judgment").exists()


@pytest.mark.parametrize("vocab", ["tiny", "with labels"])
def test_offline_local_judge(vocab: str, tmp_path: Path, benchdata: Path, tiny_model: Path) -> None:
    """The local judge scores the ratings 1-10 after "Rating: [[": a turn's grade is the expected rating
    under that distribution (G-Eval), so every turn gets one, whatever the model."""
    from tiny import build_model

    from evalharness.judges.local import LocalChatJudge

    # In the tiny model's vocabulary every rating is <unk>: refused. A vocabulary holding the ratings gives
    # ten different probabilities.
    model = tiny_model if vocab == "tiny" else build_model(
        tmp_path / "judge", words=[*mt_bench.RATING_CHOICES, "Rating:", "[[", "the", "a"])
    judge = LocalChatJudge(str(model))
    cfg = mt_bench.Config(data_dir=str(benchdata / "mt_bench"), question_ids=(81,), judge_max_tokens=8)
    if vocab == "tiny":  # every label an <unk>: verdicts that mean nothing are refused, not recorded
        with pytest.raises(EvalHarnessError, match="cannot tell the labels"):
            run(tmp_path, cfg, RecordingBackend(), judge, "local:tiny")
        return
    out, store = run(tmp_path, cfg, RecordingBackend(), judge, "local:tiny")
    scores = {s.metric: s for s in out}
    verdicts = sorted(store.verdicts(TASK, POLICY), key=lambda v: v.meta["turn"])
    assert [v.meta["turn"] for v in verdicts] == [1, 2] and judge.usage["items"] == 2
    ratings = []
    for v in verdicts:
        probs = v.meta["rating_probabilities"]
        assert v.status == "ok" and sorted(probs, key=lambda c: int(c[:-2])) == list(mt_bench.RATING_CHOICES)
        assert sum(probs.values()) == pytest.approx(1.0)
        expected = sum(p * int(c.removesuffix("]]")) for c, p in probs.items())
        assert v.value == pytest.approx(expected) and 1 <= v.value <= 10
        assert len({round(p, 12) for p in probs.values()}) == 10
        ratings.append(expected)
    overall = scores["score"]
    assert (overall.n, overall.n_skipped, overall.extra["n_unparsed"], overall.extra["n_error"]) == (2, 0, 0, 0)
    assert overall.value == pytest.approx(sum(ratings) / 2)
    assert (scores["turn1"].value, scores["turn2"].value) == pytest.approx(tuple(ratings))


def test_malformed_question_file_names_its_line(tmp_path: Path) -> None:
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"question_id": 1, "category": "writing", "turns": ["a", "b"]}\n\n'
                         '{"question_id": 2, "category": "writing", "turns": ["c", ')  # torn last line
    cfg = mt_bench.Config(questions=str(questions), judge_prompts=str(tmp_path / "unused.jsonl"))
    with pytest.raises(InputError) as e:
        run(tmp_path / "run", cfg, RecordingBackend(), None)
    assert (e.value.path, e.value.line) == (str(questions), 3)
