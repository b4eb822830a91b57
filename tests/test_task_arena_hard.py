"""Arena-Hard task end to end through the run loop: fake policy, a judge over real HTTP scripted per
(question, game), official files."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from evalharness.core.errors import EvalHarnessError

from evalharness.backends.client import ClientConfig, JudgeClient
from evalharness.tasks.arena_hard import metric as ah
from evalharness.core.records import Score
from evalharness.store import RunStore
from evalharness.tasks.arena_hard import task as arena_hard
from evalharness.tasks.base import GenerationSettings, RunEnv
from evalharness.testing import FakeOpenAI, Fault
from taskkit import POLICY, RecordingBackend, run_task

JUDGE = "judge-x"
TASK = "arena_hard"
V01 = "arena_hard/arena-hard-v0.1"


def run(tmp_path: Path, cfg: arena_hard.Config, policy: RecordingBackend, judge: Any,
        judge_name: str = JUDGE) -> tuple[list[Score], RunStore]:
    return run_task(tmp_path, TASK, cfg, policy, judge, judge_name, max_new_tokens=64)


def client(server: FakeOpenAI, cache_dir: Path | None = None) -> JudgeClient:
    return JudgeClient(ClientConfig(base_url=server.url, model=JUDGE, cache=cache_dir is not None, cache_dir=cache_dir,
                                    max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05))


def task_version(tmp_path: Path, cfg: arena_hard.Config) -> str:
    """The task version a run of ``cfg`` gives its scores (setup only: no generation, no judge)."""
    task = arena_hard.ArenaHardTask(TASK, cfg, RunEnv(GenerationSettings(), tmp_path))
    task.setup()
    return task.task_version


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scripted(questions: list[dict[str, Any]], baseline: dict[str, str], script: dict[tuple[int, int], Any]):
    """A responder answering by (question index, game); game 1 is the one showing the baseline as A."""
    def respond(body: dict[str, Any]) -> Any:
        user = body["messages"][-1]["content"]
        qi = next(i for i, q in enumerate(questions) if user.startswith(f"<|User Prompt|>\n{q['prompt']}\n\n"))
        answer_a = re.search(r"<\|The Start of Assistant A's Answer\|>\n(.*?)\n<\|The End of Assistant A's Answer\|>",
                             user, re.S).group(1)
        return script[(qi, 1 if answer_a == baseline[questions[qi]["uid"]] else 2)]
    return respond


@pytest.fixture
def v01(benchdata: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    questions = jsonl(benchdata / V01 / "question.jsonl")[:4]
    baseline = {r["uid"]: r["messages"][-1]["content"]["answer"]
                for r in jsonl(benchdata / V01 / "model_answer/gpt-4-0314.jsonl")}
    return questions, baseline


def test_scores_faults_official_file_and_resume(tmp_path: Path, benchdata: Path, v01: Any) -> None:
    questions, baseline = v01
    # The policy's score per battle row (x3 for a decisive verdict): game 1 shows the baseline as A.
    script = {(0, 1): "B is far better. [[B>>A]]", (0, 2): "[[A>B]]",    # policy: 1 x3, 1
              (1, 1): "[[A>B]]", (1, 2): "[[A=B]]",                       # policy: 0, 0.5
              (2, 1): "I cannot decide between them.", (2, 2): "[[B>A]]",  # unparsed (not scored), 0
              (3, 1): Fault.http(400),                                   # a failed call (not scored)
              (3, 2): "At first B looked better, but on reflection: [[A>>B]]"}  # one label (v0.1): 1 x3
    cfg = arena_hard.Config(data_dir=str(benchdata / "arena_hard"), limit=4)
    policy = RecordingBackend()
    cache = tmp_path / "judge-cache"  # one server throughout, so its URL (part of the cache key) stays the same
    with FakeOpenAI(scripted(questions, baseline, script)) as server:
        server.enqueue(Fault.http(503))  # one transient fault: retried by the client, not a failed game
        judge = client(server, cache)
        [score], store = run(tmp_path, cfg, policy, judge)
        judge.close()
        assert server.requests == 9  # 8 games + 1 retry
        bodies = server.received

        # 7.5 of 10 battle rows go to the policy; with one opponent the BT win rate is that share.
        assert score.value == pytest.approx(75.0, abs=1e-6)
        assert score.extra["elo"] == pytest.approx(1000 + 400 * math.log10(3), abs=1e-4)
        assert score.ci_low <= score.value <= score.ci_high
        # n counts scored games only (issue 19: it counted the failed and unparsed ones too, 8)
        assert (score.n, score.n_skipped, score.extra["n_unparsed"], score.extra["n_error"]) == (6, 2, 1, 1)
        assert (score.task, score.metric, score.model, score.baseline, score.judge_id, score.higher_is_better) == \
            ("arena_hard", "score", POLICY, "gpt-4-0314", JUDGE, True)
        assert score.decoding == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64, "n": 1}
        # The first 4 questions are a subset: never the official column (issue 8 part 7); the full set is.
        assert score.task_version != "arena-hard-v0.1" and score.task_version.startswith("arena-hard-v0.1/subset:")
        assert score.task_version == task_version(tmp_path, cfg)
        assert task_version(tmp_path, arena_hard.Config(data_dir=cfg.data_dir)) == "arena-hard-v0.1"
        assert task_version(tmp_path, arena_hard.Config(data_dir=cfg.data_dir, limit=10_000)) == "arena-hard-v0.1"
        assert task_version(tmp_path, arena_hard.Config(data_dir=cfg.data_dir, limit=5)) != score.task_version

        # The judge saw the official v0.1 system prompt at temperature 0 and max_tokens 4096.
        settings = json.loads((benchdata / "arena_hard/config/judge_prompts_v2.0.json").read_text())["JUDGE_SETTINGS"]
        for body in bodies:
            assert body["messages"][0] == {"role": "system", "content": settings["arena-hard-v0.1"]["system_prompt"]}
            assert (body["temperature"], body["max_tokens"], body["model"]) == (0.0, 4096, JUDGE)

        verdicts = store.verdicts(TASK, POLICY)
        rows = {(v.item_id, v.meta["game"]): v for v in verdicts}
        assert len(rows) == 8 and {v.judge_version for v in verdicts} == {score.judge_version}
        assert len(score.judge_version) == 12 and {v.judge_id for v in verdicts} == {JUDGE}
        uid = [q["uid"] for q in questions]
        unparsed = rows[(uid[2], 1)]
        assert (unparsed.status, unparsed.raw, unparsed.value, unparsed.order, unparsed.meta["label"]) == \
            ("unparsed", "I cannot decide between them.", None, "AB", None)
        assert rows[(uid[3], 1)].status == "error" and "400" in rows[(uid[3], 1)].error
        assert rows[(uid[3], 1)].value is None
        last = rows[(uid[3], 2)]
        assert (last.meta["label"], last.meta["decisive"], last.value, last.order) == ("A>>B", True, 1.0, "BA")
        assert {v.meta["category"] for v in verdicts} == {"arena-hard-v0.1"}
        assert {v.meta["baseline"] for v in verdicts} == {"gpt-4-0314"}

        # The official-format judgment file gives the same numbers through metrics_from_file.
        judgment = store.path / "arena_hard/arena-hard-v0.1/model_judgment" / JUDGE / f"{POLICY}.jsonl"
        official = ah.metrics_from_file(judgment)["models"][POLICY]
        ours = {k: getattr(score, k) for k in ("value", "ci_low", "ci_high")}
        assert official["score"] == pytest.approx(ours["value"], abs=1e-9)
        assert (official["ci_low"], official["ci_high"]) == pytest.approx((ours["ci_low"], ours["ci_high"]), abs=1e-9)
        assert (official["n_games"], official["n_unparsed"], official["n_battles"]) == (8, 2, 10)
        first = jsonl(judgment)[0]
        assert first["games"][0]["score"] == "B>>A" and first["baseline"] == "gpt-4-0314"
        assert set(first["games"][0]) == {"score", "judgment"}  # no "prompt": the judge's input is not copied
        assert first["games"][0]["judgment"] == {"answer": "B is far better. [[B>>A]]"}
        assert jsonl(judgment)[3]["games"][0] is None  # the failed call, as v2 gen_judgment.py writes it

        # Re-run: nothing regenerated or re-judged but the failed game, which now succeeds (policy loses it).
        # Not through the response cache: a re-judged game would be a cache hit.
        server.reset()
        n_generated = len(policy.requests)
        script[(3, 1)] = "[[A>B]]"
        judge = client(server, cache)
        [score], resumed = run(tmp_path, cfg, policy, judge)
        judge.close()
        assert resumed.path == store.path
        assert server.requests == 1 and judge.usage["cache_hits"] == 0 and judge.usage["items"] == 1
        assert len(policy.requests) == n_generated == 4
        assert score.value == pytest.approx(100 * 7.5 / 11, abs=1e-6)
        assert (score.n, score.n_skipped) == (7, 1)  # scored games only (issue 19: was 8)

        # Style control is a scoring option, but a config field, so another run folder: the answers are
        # generated again (the fake policy is deterministic: the same texts) and every game is served by
        # the response cache: no new judge call. The official file + answers agree.
        server.reset()
        style = arena_hard.Config(data_dir=cfg.data_dir, limit=4, style_control=True, style_tokenizer="whitespace")
        judge = client(server, cache)
        [styled], styled_store = run(tmp_path, style, policy, judge)
        judge.close()
        assert server.requests == 0 and judge.usage["cache_hits"] == 8
    assert styled_store.path != store.path
    assert [g.text for g in styled_store.generations(POLICY)] == [g.text for g in store.generations(POLICY)]
    assert styled.metric == "score_style_controlled" and styled.task_version == score.task_version
    answers = styled_store.path / "arena_hard/arena-hard-v0.1/model_answer"
    assert sorted(p.name for p in answers.iterdir()) == [f"{POLICY}.jsonl", "gpt-4-0314.jsonl"]
    judgment = styled_store.path / "arena_hard/arena-hard-v0.1/model_judgment" / JUDGE / f"{POLICY}.jsonl"
    official = ah.metrics_from_file(judgment, style_control=True, answers=answers)
    assert official["models"][POLICY]["score"] == pytest.approx(styled.value, abs=1e-9)
    assert official["models"][POLICY]["ci_low"] == pytest.approx(styled.ci_low, abs=1e-9)
    assert official["style_control"]["coefficients"] == pytest.approx(styled.extra["style_control"]["coefficients"])


def test_v2_uses_category_settings_and_baseline(tmp_path: Path, benchdata: Path) -> None:
    cfg = arena_hard.Config(version="v2.0", data_dir=str(benchdata / "arena_hard"), limit=3)
    with FakeOpenAI(default_text="My final verdict is [[A>B]]") as server:  # A wins both games
        [score], store = run(tmp_path, cfg, RecordingBackend(), client(server))
        bodies = server.received
    settings = json.loads((benchdata / "arena_hard/config/judge_prompts_v2.0.json").read_text())["JUDGE_SETTINGS"]
    assert len(bodies) == 6
    assert all(b["messages"][0]["content"] == settings["hard_prompt"]["system_prompt"] and b["max_tokens"] == 16000
               for b in bodies)
    assert score.value == pytest.approx(50.0, abs=1e-6)  # one win, one loss per question
    assert (score.baseline, score.ci_level) == ("o3-mini-2025-01-31", 0.9)
    # Three questions are a subset of hard_prompt: their own version; the full category is the official one.
    assert score.task_version.startswith("arena-hard-v2.0/subset:") and score.task_version.endswith("/hard_prompt")
    assert task_version(tmp_path, arena_hard.Config(version="v2.0", data_dir=cfg.data_dir)) == "arena-hard-v2.0"
    judgment = store.path / "arena_hard/arena-hard-v2.0/model_judgment" / JUDGE / f"{POLICY}.jsonl"
    official = ah.metrics_from_file(judgment, baseline="o3-mini-2025-01-31", ci_level=0.9)["models"][POLICY]
    assert (official["score"], official["ci_low"], official["ci_high"]) == \
        pytest.approx((score.value, score.ci_low, score.ci_high), abs=1e-9)


def test_without_data_dir_or_judge(tmp_path: Path, benchdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No data_dir: the pinned files come through benchdata.fetch (here from a cache holding copies).
    cache = tmp_path / "cache"
    for rel in ("question.jsonl", "model_answer/gpt-4-0314.jsonl"):
        (cache / "benchdata" / V01 / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(benchdata / V01 / rel, cache / "benchdata" / V01 / rel)
    (cache / "benchdata/arena_hard/config").mkdir()
    shutil.copy(benchdata / "arena_hard/config/judge_config.v0.1-legacy.yaml", cache / "benchdata/arena_hard/config")
    monkeypatch.setenv("EVALHARNESS_CACHE", str(cache))
    policy = RecordingBackend()
    scores, store = run(tmp_path, arena_hard.Config(limit=2), policy, None)
    assert scores == [] and len(policy.requests) == 2  # no judge: answers only
    assert store.verdicts(TASK, POLICY) == []
    assert not (store.path / "arena_hard/arena-hard-v0.1/model_judgment").exists()
    rows = jsonl(store.path / "arena_hard/arena-hard-v0.1/model_answer" / f"{POLICY}.jsonl")
    assert [r["messages"][1]["content"]["answer"] for r in rows] == [g.text for g in store.generations(POLICY)]
    assert [r["uid"] for r in rows] == [q["uid"] for q in jsonl(benchdata / V01 / "question.jsonl")[:2]]


@pytest.mark.parametrize("vocab", ["tiny", "with labels"])
def test_offline_local_judge(vocab: str, tmp_path: Path, benchdata: Path, tiny_model: Path) -> None:
    """The local judge scores the five verdict labels after "My final verdict is: [[": every game gets the
    most likely label, so a parsed verdict, whatever the model."""
    from tiny import build_model

    from evalharness.judges.local import LocalChatJudge

    # In the tiny model's vocabulary every label is <unk>: refused. A vocabulary holding the labels gives five
    # different log-probs.
    model = tiny_model if vocab == "tiny" else build_model(
        tmp_path / "judge", words=[*arena_hard.LABEL_CHOICES, "My", "final", "verdict", "is:", "[[", "the", "a"])
    judge = LocalChatJudge(str(model))
    cfg = arena_hard.Config(data_dir=str(benchdata / "arena_hard"), limit=1, judge_max_tokens=8)
    if vocab == "tiny":  # every label an <unk>: verdicts that mean nothing are refused, not recorded
        with pytest.raises(EvalHarnessError, match="cannot tell the labels"):
            run(tmp_path, cfg, RecordingBackend(), judge, "local:tiny (demo judge)")
        return
    [score], store = run(tmp_path, cfg, RecordingBackend(), judge, "local:tiny (demo judge)")
    verdicts = sorted(store.verdicts(TASK, POLICY), key=lambda v: v.meta["game"])
    assert [v.meta["game"] for v in verdicts] == [1, 2] and judge.usage["items"] == 2
    assert (score.n, score.n_skipped, score.extra["n_unparsed"], score.extra["n_error"]) == (2, 0, 0, 0)
    assert score.judge_id == "local:tiny (demo judge)"
    for v in verdicts:
        lps = v.meta["choice_logprobs"]
        assert v.status == "ok" and sorted(lps) == sorted(arena_hard.LABEL_CHOICES)
        label = max(lps, key=lambda c: lps[c]).removesuffix("]]")
        score_a, decisive = ah.LABELS[label]
        assert (v.meta["label"], v.meta["decisive"], v.raw) == (label, decisive, f"{arena_hard.LABEL_PREFIX}{label}]]")
        assert v.value == (score_a if v.meta["game"] == 2 else 1.0 - score_a)  # the policy is A in game 2
        assert len(set(lps.values())) == 5
    # One question, two games against one opponent: the BT win rate is the policy's share of battle rows.
    rows = [(v.value, 3 if v.meta["decisive"] else 1) for v in verdicts]
    assert score.value == pytest.approx(100 * sum(x * w for x, w in rows) / sum(w for _, w in rows), abs=1e-6)
