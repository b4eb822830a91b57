"""Everything is checked before anything runs (issue 19), one decoding config and a backend registry (issue 18).

A bad flag or spec costs nothing and writes nothing: no run folder, no generation, no judge request.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalharness.tasks import benchdata
from evalharness.core import decoding
from evalharness.backends import Capabilities, backend_names, capabilities, register
from evalharness.cli import app
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.prompts import write_prompts
from evalharness.pipeline.runner import run_spec
from evalharness.pipeline.spec import load_spec
from evalharness.tasks.base import data_file
from evalharness.testing.fake_openai import FakeOpenAI

DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_prompts([{"id": f"q{i}", "prompt": f"The film number {i} was"} for i in range(3)],
                         tmp_path / "prompts.jsonl")


@pytest.mark.parametrize("flags", [["--backend", "nope"], ["--n", "0"], ["--max-new-tokens", "0"],
                                   ["--temperature", "-1"], ["--top-p", "0"], ["--top-p", "1.5"],
                                   ["--batch-size", "0"]])
def test_eval_refuses_bad_flags_and_writes_nothing(tmp_path: Path, prompts: Path, flags: list[str]) -> None:
    results = tmp_path / "results"
    res = CliRunner().invoke(app, ["eval", "--model", "a", "--prompts", str(prompts), "--judges", "sentiment",
                                   "--backend", "fake", *flags, "--results-dir", str(results)])
    assert isinstance(res.exception, InputError), res.output
    name = flags[0].lstrip("-").replace("-", "_")
    assert name in str(res.exception) or flags[0] in str(res.exception)
    assert not results.exists()


@pytest.mark.parametrize("flags", [["--temperature", "-1"], ["--top-p", "0"], ["--backend", "nope"],
                                   ["--batch-size", "0"]])
def test_generate_refuses_bad_flags_and_writes_nothing(tmp_path: Path, prompts: Path, flags: list[str]) -> None:
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["generate", "--model", "a", "--prompts", str(prompts), "--out", str(out),
                                   "--backend", "fake", *flags])
    assert isinstance(res.exception, InputError), res.output
    assert not out.exists()


def test_cli_decoding_options_come_from_the_one_config(tmp_path: Path, prompts: Path) -> None:
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["generate", "--model", "a", "--prompts", str(prompts), "--out", str(out),
                                   "--backend", "fake", "--n", "2"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["params"]["max_new_tokens"] == decoding.PREVIEW.max_new_tokens
    assert "most tokens a response may have" in CliRunner().invoke(app, ["eval", "--help"]).output


def _spec(tmp_path: Path, url: str, *, judge_extra: str = "", top: str = "", tasks: str | None = None) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: pf
model: policy-x
backend: fake
{top}generation: {{max_new_tokens: 16}}
judge: {{type: openai, model: fake-model, base_url: "{url}", max_retries: 0, cache: false{judge_extra}}}
tasks:
{tasks or f'''  alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: {DEMO}/alpaca_eval/baseline.json,
                 lc_support_dir: {DEMO}/alpaca_eval}}'''}
""")
    return spec


def test_missing_api_key_variable_is_found_before_any_generation(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVALHARNESS_TEST_NO_KEY", raising=False)
    with FakeOpenAI() as server:
        spec = _spec(tmp_path, server.url, judge_extra=", api_key_env: EVALHARNESS_TEST_NO_KEY")
        with pytest.raises(InputError, match="EVALHARNESS_TEST_NO_KEY is not set") as e:
            run_spec(spec, results_dir=tmp_path / "results", progress=False)
        assert e.value.field == "judge.api_key_env"
        assert not server.received
    assert not (tmp_path / "results").exists()


def test_a_judge_endpoint_that_does_not_answer_is_named_up_front(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(InputError, match="does not answer") as e:
        run_spec(_spec(tmp_path, dead), results_dir=tmp_path / "results", progress=False)
    assert e.value.field == "judge.base_url" and not (tmp_path / "results").exists()


def test_the_endpoint_check_costs_no_generation(tmp_path: Path) -> None:
    with FakeOpenAI() as server:
        from evalharness.pipeline.preflight import check_judge
        from evalharness.pipeline.spec import JudgeSpec
        notes = check_judge(JudgeSpec(model="other-model", base_url=server.url))
        assert not server.received  # GET /models only: no chat completion was asked for
    assert notes and "other-model" in notes[0]


def test_spec_backend_is_validated_against_the_registry(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: m\nbackend: nope\ntasks: {kl: {prompts: p.jsonl}}\n")
    with pytest.raises(InputError, match="available: .*fake.*hf") as e:
        load_spec(spec)
    assert e.value.line == 3 and e.value.field == "backend"
    register("preflight-test", "evalharness.backends.fake", "FakeBackend",
             Capabilities(local_weights=False, scores_responses=True))
    spec.write_text("name: x\nmodel: m\nbackend: preflight-test\ntasks: {kl: {prompts: p.jsonl}}\n")
    assert load_spec(spec)[0].backend == "preflight-test"


def test_a_temperature_sweep_at_the_top_level_says_where_sweeps_go(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: m\ngeneration: {temperature: [0.0, 1.0]}\ntasks: {kl: {prompts: p.jsonl}}\n")
    with pytest.raises(InputError, match="sweep goes under a task's generation") as e:
        load_spec(spec)
    assert e.value.line == 3


def test_decoding_ranges_are_declared_once() -> None:
    with pytest.raises(InputError, match="top_p must be > 0"):
        decoding.Decoding(top_p=0)
    with pytest.raises(InputError, match="n must be an integer"):
        decoding.check({"n": 1.5})
    from evalharness.pipeline.spec import GenerationSpec
    assert GenerationSpec().max_new_tokens == decoding.Decoding().max_new_tokens


def test_capabilities_not_names() -> None:
    assert {"hf", "vllm", "openai", "fake"} <= set(backend_names())
    assert capabilities("hf").local_weights and not capabilities("openai").scores_responses
    assert capabilities("openai").api_key_option == "api_key_env"
    with pytest.raises(InputError, match="unknown backend"):
        capabilities("nope")


def test_data_dir_is_the_benchmark_root_and_the_old_form_still_reads(tmp_path: Path) -> None:
    rel, name = "arena-hard-v0.1/model_answer/demo-baseline.jsonl", "arena_hard/v0.1/answers/gpt-4-0314"
    assert data_file(str(DEMO), rel, name) == DEMO / "arena_hard" / rel  # the one meaning: the root
    with pytest.warns(FutureWarning, match="deprecated"):
        assert data_file(str(DEMO / "arena_hard"), rel, name) == DEMO / "arena_hard" / rel
    with pytest.raises(InputError, match="benchmark data root") as e:
        data_file(str(tmp_path), rel, name)
    assert e.value.field == "data_dir"


def test_a_wrong_data_dir_is_named_not_reported_as_a_failed_download(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="data_dir is not a folder") as e:
        benchdata.fetch("alpaca_eval/eval_set", local_dir=tmp_path / "missing")
    assert e.value.path == str(tmp_path / "missing")


def test_train_results_dir_is_passed_down_not_set_in_the_environment(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVALHARNESS_RESULTS", raising=False)
    res = CliRunner().invoke(app, ["train", "--results-dir", str(tmp_path / "r")])  # no algorithm: refused
    assert isinstance(res.exception, EvalHarnessError)
    assert "EVALHARNESS_RESULTS" not in os.environ


def test_a_bad_sweep_eval_is_refused_before_anything_trains(tmp_path: Path) -> None:
    from evalharness.workflows.sweep import load_train_spec, run_sweep
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""\
name: sw
base: nobody
data: {{path: ./pairs.jsonl}}
algorithms: {{dpo: {{beta: 0.1}}}}
eval:
  judge: {{type: openai, model: m, base_url: "http://127.0.0.1:9/v1", api_key_env: EVALHARNESS_TEST_NO_KEY}}
  tasks: {{alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json}}}}
""")
    sweep, runs = load_train_spec(spec)
    with pytest.raises(InputError, match="EVALHARNESS_TEST_NO_KEY"):
        run_sweep(sweep, runs, results_dir=tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_old_run_ids_are_kept(tmp_path: Path, prompts: Path) -> None:
    """The eval command's identity did not move: same options, same run folder name as before the change."""
    from evalharness.pipeline.evaluate import EvalConfig, run_eval
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_eval(EvalConfig(models=["a"], prompts=str(prompts), judges=["sentiment"], backend="fake",
                                  results_dir=str(tmp_path / "results"), progress=False))
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["config"]["models"][0]["options"] == {}
    assert manifest["config"]["generation"] == {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "seed": 0,
                                                "n": 1}
