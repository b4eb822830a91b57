"""Presets for the current official judges (issue 21 point 5): official settings, their own column, no key no call."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import forkcli
import pytest
import yaml

from evalharness.core.errors import InputError
from evalharness.core.records import Score
from evalharness.pipeline import presets
from evalharness.pipeline.runner import make_judge, run_spec
from evalharness.pipeline.spec import JudgeSpec, load_spec
from evalharness.store import comparable
from evalharness.testing.fake_openai import FakeOpenAI, benchmark_judge

DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"


def test_arena_hard_presets_are_the_official_config(benchdata: Path) -> None:
    """config/arena-hard-v2.0.yaml (lmarena/arena-hard-auto@196f6b82): gpt-4.1 live, gemini-2.5 commented out."""
    text = (benchdata / "arena_hard/config/arena-hard-v2.0.yaml").read_text(encoding="utf-8")
    live = yaml.safe_load(text)
    gpt = presets.get("arena_hard_v2_gpt4.1")
    assert (gpt.model, dict(gpt.tasks["arena_hard"])) == (
        live["judge_model"],
        {"version": "v2.0", "judge_temperature": live["temperature"], "judge_max_tokens": live["max_tokens"]},
    )
    commented = dict(re.findall(r"^# (judge_model|temperature|max_tokens): (\S+)$", text, flags=re.M)[-3:])
    gemini = presets.get("arena_hard_v2_gemini2.5")
    assert commented["judge_model"] == "gemini-2.5" and gemini.model.startswith("gemini-2.5")
    assert gemini.tasks["arena_hard"]["judge_temperature"] == float(commented["temperature"])
    assert gemini.tasks["arena_hard"]["judge_max_tokens"] == int(commented["max_tokens"])


def test_alpaca_eval_preset_is_the_official_config() -> None:
    """The GPT-4.1 annotator is the GPT-4-Turbo one with another model (alpaca_eval@cd543a14); read from the wheel."""
    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("alpaca-eval is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "evaluators_configs"
    turbo = yaml.safe_load((root / "weighted_alpaca_eval_gpt4_turbo/configs.yaml").read_text())
    kw = turbo["weighted_alpaca_eval_gpt4_turbo"]["completions_kwargs"]
    preset = presets.get("alpaca_eval_gpt4.1")
    assert dict(preset.tasks["alpaca_eval"]) == {
        "judge_temperature": kw["temperature"],
        "judge_max_tokens": kw["max_tokens"],
        "judge_top_logprobs": kw["top_logprobs"],
    }
    own = root / "weighted_alpaca_eval_gpt4.1/configs.yaml"
    if own.is_file():  # newer wheels ship it
        assert yaml.safe_load(own.read_text())["weighted_alpaca_eval_gpt4.1"]["completions_kwargs"]["model_name"] == (
            preset.model
        )


def test_a_preset_fills_the_judge_and_refuses_to_be_something_else() -> None:
    j = JudgeSpec(preset="mt_bench_gpt4")
    assert (j.type, j.model, j.base_url, j.api_key_env) == ("openai", "gpt-4", presets.OPENAI, "OPENAI_API_KEY")
    assert JudgeSpec(preset="mt_bench_gpt4", base_url="http://proxy/v1", api_key_env="K").base_url == "http://proxy/v1"
    with pytest.raises(ValueError, match="fixes model to 'gpt-4'"):
        JudgeSpec(preset="mt_bench_gpt4", model="gpt-4o")
    with pytest.raises(ValueError, match="unknown judge preset 'gpt5'; known: alpaca_eval_gpt4.1"):
        JudgeSpec(preset="gpt5")


def _spec(tmp_path: Path, judge: str, tasks: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"name: p\nmodel: policy-x\nbackend: fake\njudge: {judge}\ntasks:\n{tasks}")
    return path


def test_a_preset_sets_its_tasks_and_never_shares_a_column(tmp_path: Path, benchdata: Path) -> None:
    spec, [task] = load_spec(
        _spec(tmp_path, "{preset: arena_hard_v2_gemini2.5}", f"  arena_hard: {{data_dir: {benchdata}, limit: 2}}\n")
    )
    assert (task.config.version, task.config.judge_temperature, task.config.judge_max_tokens) == ("v2.0", 1.0, 32000)
    with pytest.raises(InputError, match="sets judge_max_tokens: 32000") as e:
        load_spec(_spec(tmp_path, "{preset: arena_hard_v2_gemini2.5}", "  arena_hard: {judge_max_tokens: 100}\n"))
    assert (e.value.line, e.value.field) == (6, "tasks.arena_hard.judge_max_tokens")
    with pytest.raises(InputError, match="is for arena_hard, not mt_bench"):
        load_spec(_spec(tmp_path, "{preset: arena_hard_v2_gpt4.1}", "  mt_bench: {}\n"))
    # The judge's name carries the preset: two presets, or a preset and the same model without it, never compare.
    names = [make_judge(JudgeSpec(preset=p), False)[1] for p in presets.PRESETS]
    names += [make_judge(JudgeSpec(model=m, base_url=presets.OPENAI), False)[1] for m in ("gpt-4.1", "gpt-4")]
    assert names[presets.PRESETS.__len__() - 1] == "gpt-4 (preset mt_bench_gpt4)"
    scores = [Score(task="t", metric="score", model="m", value=1.0, n=1, judge_id=n) for n in names]
    for i, a in enumerate(scores):
        for b in scores[i + 1 :]:
            ok, why = comparable(a, b)
            assert not ok and "judge_id" in why


def test_a_preset_without_its_key_sends_nothing_and_exits_2(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        spec = _spec(
            tmp_path,
            f'{{preset: mt_bench_gpt4, base_url: "{server.url}", api_key_env: EVALHARNESS_TEST_NO_KEY}}',
            f"  mt_bench: {{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl,"
            f" reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl}}\n",
        )
        env = {k: v for k, v in os.environ.items() if k != "EVALHARNESS_TEST_NO_KEY"}
        done = forkcli.run(["run", str(spec), "--results-dir", str(tmp_path / "results")], tmp_path, env)
        assert done.code == 2, done.stderr
        assert "judge preset 'mt_bench_gpt4'" in done.stderr and "EVALHARNESS_TEST_NO_KEY is not set" in done.stderr
        assert server.requests == 0
    assert not (tmp_path / "results").exists()


def test_a_preset_run_sends_the_official_settings(
    tmp_path: Path, benchdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over HTTP: the Gemini preset's model, temperature 1.0 and max_tokens 32000 reach the endpoint, with the key."""
    monkeypatch.setenv("EVALHARNESS_TEST_GEMINI_KEY", "sk-test")
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    with FakeOpenAI(benchmark_judge) as server:
        spec = _spec(
            tmp_path,
            f'{{preset: arena_hard_v2_gemini2.5, base_url: "{server.url}", api_key_env: EVALHARNESS_TEST_GEMINI_KEY}}',
            f"  arena_hard: {{data_dir: {benchdata}, limit: 1, bootstrap_rounds: 0}}\n",
        )
        run = run_spec(spec, results_dir=tmp_path / "results", progress=False)
        bodies = server.received
    assert len(bodies) == 2  # two games
    for body in bodies:
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("gemini-2.5-pro-preview-03-25", 1.0, 32000)
    scores = [s for s in run.scores if s.task == "arena_hard"]
    assert scores and {s.judge_id for s in scores} == {"gemini-2.5-pro-preview-03-25 (preset arena_hard_v2_gemini2.5)"}
    assert all(s.task_version.startswith("arena-hard-v2.0") for s in scores)


def test_a_sweeps_eval_takes_the_preset_too(tmp_path: Path) -> None:
    from evalharness.workflows.sweep import load_train_spec

    text = (DEMO.parent / "demo_pipeline.yaml").read_text(encoding="utf-8")
    local = "  judge: {type: local, model: smollm2-135m-instruct, demo: true}\n"
    assert local in text
    spec = tmp_path / "sweep.yaml"
    spec.write_text(text.replace(local, "  judge: {preset: arena_hard_v2_gpt4.1}\n"))
    with pytest.raises(InputError, match="is for arena_hard, not alpaca_eval") as e:
        load_train_spec(spec)
    assert e.value.field == "eval.tasks.alpaca_eval" and e.value.line == text.splitlines().index("    alpaca_eval:") + 1


def test_the_official_two_judge_ensemble_by_presets(
    tmp_path: Path, benchdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Arena-Hard v2.0's two official judges as one ensemble: each judge keeps its own preset's temperature and
    token limit (GPT-4.1 at 0.0 / 16000, Gemini-2.5 at 1.0 / 32000), the settings they share go to the task, and a
    task that sets one of the split settings itself is refused."""
    monkeypatch.setenv("EVALHARNESS_TEST_KEY", "sk-test")
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    with FakeOpenAI(benchmark_judge) as server:
        judges = ", ".join(
            f'{{preset: {p}, base_url: "{server.url}", api_key_env: EVALHARNESS_TEST_KEY}}'
            for p in ("arena_hard_v2_gpt4.1", "arena_hard_v2_gemini2.5")
        )
        spec = _spec(
            tmp_path,
            f"[{judges}]\nensemble: arena_hard_v2",
            f"  arena_hard: {{data_dir: {benchdata}, limit: 1, bootstrap_rounds: 0}}\n",
        )
        run = run_spec(spec, results_dir=tmp_path / "results", progress=False)
        bodies = server.received
    sent = sorted((b["model"], b["temperature"], b["max_tokens"]) for b in bodies)
    assert sent == [("gemini-2.5-pro-preview-03-25", 1.0, 32000)] * 2 + [("gpt-4.1", 0.0, 16000)] * 2
    judged = {s.judge_id for s in run.scores if s.task.startswith("arena_hard")}
    assert any(j.startswith("ensemble(arena_hard_v2") for j in judged), judged
    bad = _spec(tmp_path, f"[{judges}]\nensemble: arena_hard_v2", "  arena_hard: {judge_temperature: 0.0}\n")
    with pytest.raises(InputError, match="set judge_temperature differently per judge") as e:
        load_spec(bad)
    assert e.value.field == "tasks.arena_hard.judge_temperature"
