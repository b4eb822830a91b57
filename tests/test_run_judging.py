"""Issue 19: regression tracking a CI can trust. ``run`` exits 3 when a task's judging failed (the one rule,
``Score.unmeasured``), prints one line per task and model and one per failure kind; ``--rejudge`` re-asks
unparsed judgments past the response cache; ``--model NAME=REF``; one progress bar per task's judgments;
Ctrl-C prints the command that resumes; and the numbers: MT-Bench turns, Arena-Hard n, openai lengths, KL ids."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from procs import ctrl_c_default
from taskkit import RecordingBackend, run_task
from test_runner import _judge, _spec

from evalharness.pipeline import runner
from evalharness.backends.openai import response_tokens
from evalharness.core.prompts import write_prompts
from evalharness.core.records import Verdict
from evalharness.pipeline.runner import check_judging, run_spec
from evalharness.store import RunStore, comparable
from evalharness.tasks.mt_bench import task as mt_bench
from evalharness.testing.fake_openai import FakeOpenAI, Fault, Reply

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "benchmarks" / "demo_data"
MT = (f"    questions: {DEMO}/mt_bench/questions.jsonl\n    judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl\n"
      f"    reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl\n")
ARENA = (f"    data_dir: {DEMO}/arena_hard\n    questions: {DEMO}/arena_hard/questions.jsonl\n"
         "    baseline: demo-baseline\n    bootstrap_rounds: 10\n")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI of this checkout (PYTHONPATH: a worktree's package, not an installed one) in a fresh process."""
    env = {**os.environ, "EVALHARNESS_RESULTS": str(cwd / "results"), "EVALHARNESS_CACHE": str(cwd / "cache"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def spec_of(tmp_path: Path, url: str, tasks: str, *, cache: bool = False, extra: str = "") -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: judged\nmodel: policy-x\nbackend: fake\ngeneration: {{max_new_tokens: 16}}\n{extra}"
                    f"judge: {{type: openai, model: judge-x, base_url: \"{url}\", max_retries: 0, concurrency: 4, "
                    f"cache: {str(cache).lower()}}}\ntasks:\n{tasks}")
    return spec


def summary_of(stdout: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(s["task"], s["metric"]): s for s in json.loads(stdout)["scores"]}


def test_run_exits_3_when_every_judgment_fails_one_line_per_failure_kind(tmp_path: Path) -> None:
    with FakeOpenAI(responder=lambda body: Fault.http(500)) as server:
        r = _cli("run", str(_spec(tmp_path, server.url)), "--json", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "mt_bench policy-x: 0 scored, 8 failed, 0 unparsed: NOT MEASURED" in r.stderr
    assert "arena_hard policy-x: 0 scored, 12 failed, 0 unparsed: NOT MEASURED" in r.stderr
    # One line per failure kind with its count, per task: not one per request.
    kinds = [line for line in r.stderr.splitlines() if "Error code: 500" in line]
    assert len(kinds) == 2 and any(line.strip().startswith("8 x") for line in kinds), r.stderr
    assert "failed after" not in r.stderr and "Traceback" not in r.stderr
    s = summary_of(r.stdout)
    assert (s[("arena_hard", "score")]["n"], s[("arena_hard", "score")]["n_skipped"]) == (0, 12)  # n: scored only
    assert (s[("mt_bench", "score")]["n"], s[("mt_bench", "score")]["n_skipped"]) == (0, 8)


def test_unparsed_judgments_exit_3_and_rejudge_asks_them_again_past_the_cache(tmp_path: Path) -> None:
    reply = {"text": "A fine answer, I would not rate it."}  # no [[N]]: unparsed
    with FakeOpenAI(responder=lambda body: reply["text"]) as server:
        spec = spec_of(tmp_path, server.url, "  mt_bench:\n" + MT, cache=True)
        first = _cli("run", str(spec), "--json", cwd=tmp_path)
        assert first.returncode == 3 and "mt_bench policy-x: 0 scored, 0 failed, 8 unparsed" in first.stderr
        asked = server.requests
        reply["text"] = "Rating: [[7]]"
        again = _cli("run", str(spec), "--json", cwd=tmp_path)  # unparsed ones are not asked again by default
        assert again.returncode == 3 and server.requests == asked == 8
        fixed = _cli("run", str(spec), "--json", "--rejudge", "unparsed", cwd=tmp_path)
        # The response cache holds the unparsed replies of exactly these requests: re-asked past it.
        assert fixed.returncode == 0, fixed.stderr
        assert server.requests == 16 and "mt_bench policy-x: 8 scored, 0 failed, 0 unparsed" in fixed.stderr
    s = summary_of(fixed.stdout)
    assert (s[("mt_bench", "score")]["value"], s[("mt_bench", "score")]["n"], s[("mt_bench", "score")]["n_skipped"]) \
        == (7.0, 8, 0)
    path = Path(json.loads(fixed.stdout)["path"])
    rows = (path / "verdicts.jsonl").read_text().splitlines()
    assert len(rows) == 16 and len(RunStore(path).verdicts()) == 8  # the newer verdict of a key wins, counted once
    bad = _cli("run", str(spec), "--rejudge", "everything", cwd=tmp_path)
    assert bad.returncode == 2 and "--rejudge" in bad.stderr


def test_max_skipped_sets_the_share_of_failed_judgments_allowed(tmp_path: Path) -> None:
    turn2 = json.loads((DEMO / "mt_bench/questions.jsonl").read_text().splitlines()[0])["turns"][1]
    with FakeOpenAI(responder=_judge) as server:
        server.on(turn2, Fault.http(500))  # one of eight turns: 12.5% > 10%
        spec = spec_of(tmp_path, server.url, "  mt_bench:\n" + MT)
        strict = _cli("run", str(spec), cwd=tmp_path)
        assert strict.returncode == 3 and "1 of 8 judgments failed or unparsed (12% > 10% allowed)" in strict.stderr
        lenient = _cli("run", str(spec), "--max-skipped", "0.2", cwd=tmp_path)
    assert lenient.returncode == 0, lenient.stderr
    assert "mt_bench policy-x: 7 scored, 1 failed, 0 unparsed" in lenient.stderr


def test_eval_exits_3_when_its_judge_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from evalharness import cli
    from evalharness.tasks.reward import RewardTask

    def failing(self: Any, session: Any, pending: list[Any]) -> list[Verdict]:
        return [Verdict(p.item_id, "vader", "", "error", sample_index=p.sample_index, error="classifier crashed")
                for p in pending]

    monkeypatch.setattr(RewardTask, "judge", failing)
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"Film {i} was"} for i in range(4)], tmp_path / "p.jsonl")
    monkeypatch.setattr(sys, "argv", ["evalharness", "eval", "--model", "a", "--prompts", str(prompts), "--judges",
                                      "sentiment", "--backend", "fake", "--results-dir", str(tmp_path / "r"), "--json"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 3


def test_model_option_adds_a_checkpoint_found_by_regress_and_history(tmp_path: Path) -> None:
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(6)],
                            tmp_path / "prompts.jsonl")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: track\nmodel: base\nbackend: fake\n"
                    "generation: {max_new_tokens: 16, n: 2, temperature: 1.0}\n"
                    f"tasks:\n  sentiment: {{prompts: {prompts}}}\n")
    r = _cli("run", str(spec), "--model", "ck-24=ckpt-24", "--model", "ck-48=ckpt-48", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["models"] == ["base", "ck-24", "ck-48"]
    h = _cli("history", "--model", "ck-48", "--task", "sentiment", "--metric", "sentiment", cwd=tmp_path)
    assert h.returncode == 0 and "ck-48" in h.stdout, h.stderr
    g = _cli("regress", "--baseline", "base", "--candidate", "ck-24", "--metrics", "sentiment/sentiment", cwd=tmp_path)
    assert g.returncode in (0, 1) and "sentiment/sentiment" in g.stdout, g.stderr
    for bad in ("=ckpt", "../up=ckpt", "base=other"):  # no name, a path outside the results, a name taken
        b = _cli("run", str(spec), "--model", bad, cwd=tmp_path)
        assert b.returncode == 2 and "Traceback" not in b.stderr and "error:" in b.stderr, (bad, b.stderr)


def test_ctrl_c_prints_the_command_that_resumes(tmp_path: Path) -> None:
    # 1.5 s a reply, 4 at a time: the signal sent at the 2nd request lands while judging, even on a busy machine
    # (at 0.3 s the whole judging took under a second and a loaded machine's poll could miss it)
    with FakeOpenAI(responder=_judge, latency_s=1.5) as server:
        spec = spec_of(tmp_path, server.url, "  mt_bench:\n" + MT)
        env = {**os.environ, "EVALHARNESS_RESULTS": str(tmp_path / "results"),
               "EVALHARNESS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "evalharness", "run", str(spec), "--max-skipped", "0.05"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=ctrl_c_default)
        deadline = time.monotonic() + 120
        while server.requests < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        [manifest] = (tmp_path / "results").glob("*/manifest.json")
        assert json.loads(manifest.read_text())["status"] == "interrupted"
        assert "Resume with: " in err, err
        command = err.split("Resume with: ", 1)[1].splitlines()[0]
        assert command == f"evalharness run {spec} --max-skipped 0.05"
        resumed = _cli(*shlex.split(command)[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(manifest.read_text())["status"] == "complete"


def test_one_progress_bar_over_all_judge_requests_of_a_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner, "JUDGE_CHUNK", 4)  # 12 games in three chunks: still one bar
    with FakeOpenAI(responder=_judge) as server:
        run_spec(spec_of(tmp_path, server.url, "  arena_hard:\n" + ARENA), results_dir=tmp_path / "r", progress=True)
    err = capfd.readouterr().err
    assert "judging arena_hard" in err and "12/12" in err and "4/4" not in err


def test_mt_bench_headline_not_measured_when_every_turn_2_is_unparsed(tmp_path: Path) -> None:
    cfg = mt_bench.Config(questions=str(DEMO / "mt_bench/questions.jsonl"),
                          judge_prompts=str(DEMO / "mt_bench/judge_prompts.jsonl"),
                          reference_answers=str(DEMO / "mt_bench/reference_answer/demo-reference.jsonl"))
    from evalharness.backends.client import ClientConfig, JudgeClient

    def judge(body: dict[str, Any]) -> str:
        return "No rating." if "[User]" in body["messages"][-1]["content"] else "Rating: [[8]]"

    with FakeOpenAI(responder=judge) as server:
        out, _ = run_task(tmp_path, "mt_bench", cfg, RecordingBackend(),
                          JudgeClient(ClientConfig(base_url=server.url, model="j", cache=False)), "j")
    s = {x.metric: x for x in out}
    assert s["score"].value is None and (s["score"].n, s["score"].n_skipped) == (4, 4)  # not the turn-1 mean
    assert s["score"].unmeasured() is not None
    assert (s["turn1"].value, s["turn1"].n, s["turn1"].n_skipped) == (8.0, 4, 0)
    assert (s["turn2"].value, s["turn2"].n, s["turn2"].n_skipped, s["turn2"].extra["n_unparsed"]) == (None, 0, 4, 4)


def test_openai_policy_length_comes_from_the_endpoints_usage(tmp_path: Path) -> None:
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(3)],
                            tmp_path / "prompts.jsonl")
    with FakeOpenAI(responder=lambda body: Reply("a fine and moving film", usage={"prompt_tokens": 5,
                                                                                   "completion_tokens": 17})) as server:
        spec = tmp_path / "spec.yaml"
        spec.write_text(f"name: ep\nmodel: served\nbackend: openai\nbackend_options: {{base_url: \"{server.url}\", "
                        "cache: false}\ngeneration: {max_new_tokens: 32}\n"
                        f"tasks:\n  sentiment: {{prompts: {prompts}}}\n")
        res = run_spec(spec, results_dir=tmp_path / "r", progress=False)
    length = next(s for s in res.scores if s.metric == "length")
    assert length.value == 17.0 and {g.n_tokens for g in RunStore(res.path).generations()} == {17}
    assert response_tokens("three words here", {}) == (3, "whitespace words")  # the stated fallback


def test_kl_judged_by_the_references_identity_not_its_name(tmp_path: Path) -> None:
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(4)],
                            tmp_path / "prompts.jsonl")
    scores = []
    for sft_name in ("sft", "base"):  # one reference model under two names
        spec = tmp_path / f"{sft_name}.yaml"
        spec.write_text(f"name: kl-{sft_name}\nmodels: [{{name: {sft_name}, ref: ref-model}}, {{name: p, ref: pol}}]\n"
                        f"reference: ref-model\nbackend: fake\ngeneration: {{max_new_tokens: 16}}\n"
                        f"tasks:\n  kl: {{prompts: {prompts}}}\n")
        res = run_spec(spec, results_dir=tmp_path / "r", progress=False)
        scores.append(next(s for s in res.scores if s.model == "p" and s.metric == "kl"))
    ok, why = comparable(*scores)
    assert ok, why
    assert scores[0].judge_id == "kl:ref-model" and scores[0].extra["reference_name"] == "sft"
    assert scores[0].value == pytest.approx(scores[1].value)


def test_check_judging_says_every_task_is_measured_and_refuses_a_bad_share(tmp_path: Path) -> None:
    from evalharness.core.errors import InputError
    with FakeOpenAI(responder=_judge) as server:
        res = run_spec(spec_of(tmp_path, server.url, "  mt_bench:\n" + MT), results_dir=tmp_path / "r", progress=False)
    assert [c.line() for c in check_judging(res.path)] == ["mt_bench policy-x: 8 scored, 0 failed, 0 unparsed"]
    with pytest.raises(InputError, match="max-skipped"):
        check_judging(res.path, max_skipped=1.5)
