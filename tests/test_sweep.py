"""Sweeps as data, end to end on a tiny model: on-policy pairs -> runs -> checkpoint evals -> table + frontier."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evalharness.core.errors import InputError
from evalharness.workflows.sweep import load_train_spec, run_sweep

PROMPTS = [{"id": f"q{i}", "messages": [{"role": "user", "content": w}]}
           for i, w in enumerate(["write a short review", "review the movie", "write about the story",
                                  "continue this review", "the acting", "the music"])]


def _spec(tmp_path: Path, model: Path, extra: str = "") -> Path:
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS[:4]))
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""\
name: tiny-sweep
base: {model}
data:
  on_policy: {{prompts: ./prompts.jsonl, judge: sentiment, k: 4, max_new_tokens: 8}}
train: {{learning_rate: 1.0e-2, max_steps: 2, batch_size: 2, save_every: 1, warmup_ratio: 0.0}}
algorithms:
  dpo: {{beta: [0.1, 0.5]}}
  simpo: {{gamma: 0.5}}
seeds: [0]
eval: {{prompts: ./heldout.jsonl, judges: [sentiment, kl], max_new_tokens: 8}}
{extra}""")
    return spec


def test_sweep_eval_ends_in_an_llm_judged_benchmark(tmp_path, tiny_model):
    """eval: takes a run spec's tasks and judge: the base and every checkpoint in one run, through sentiment,
    KL and MT-Bench (a judge over real HTTP), the reference loaded once."""
    from evalharness.store import RunStore
    from evalharness.testing import FakeOpenAI
    demo = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data" / "mt_bench"
    with FakeOpenAI(default_text="Rating: [[4]]") as server:
        spec_path = _spec(tmp_path, tiny_model)
        text = spec_path.read_text().replace("eval: {prompts: ./heldout.jsonl, judges: [sentiment, kl], max_new_tokens: 8}", f"""\
eval:
  max_new_tokens: 8
  judge: {{type: openai, model: judge-x, base_url: "{server.url}", cache: false, max_retries: 0}}
  checkpoints: final
  tasks:
    sentiment: {{prompts: ./heldout.jsonl}}
    kl: {{prompts: ./heldout.jsonl}}
    mt_bench: {{questions: {demo}/questions.jsonl, judge_prompts: {demo}/judge_prompts.jsonl,
               reference_answers: {demo}/reference_answer/demo-reference.jsonl, limit: 2}}""")
        spec_path.write_text(text)
        spec, runs = load_train_spec(spec_path)
        res = run_sweep(spec, runs, results_dir=tmp_path / "results", progress=False)
        assert server.requests == 4 * 2 * 2  # sft + 3 final checkpoints, 2 questions x 2 turns
    [run_dir] = set(res.eval_runs.values())  # one evaluation run for every model
    scores = RunStore(run_dir).scores()
    models = {"sft", "dpo-beta0.1-s0@2", "dpo-beta0.5-s0@2", "simpo-gamma0.5-s0@2"}
    assert {s.model for s in scores if s.task == "mt_bench" and s.metric == "score" and s.value == 4.0} == models
    assert {s.model for s in scores if s.metric == "kl"} == models
    assert res.verdict is not None and res.verdict["metric"] == "sentiment"


def test_demo_pipeline_spec_is_valid():
    spec, runs = load_train_spec(Path(__file__).resolve().parents[1] / "benchmarks" / "demo_pipeline.yaml")
    assert [r.name for r in runs] == ["dpo-beta0.1-s0", "simpo-beta2.0-gamma1.0-s0"]
    assert set(spec.eval.tasks) == {"sentiment", "kl", "alpaca_eval", "arena_hard", "mt_bench"}
    assert spec.eval.judge.type == "local" and spec.eval.judge.demo


def test_spec_expands_into_named_runs(tmp_path, tiny_model):
    spec, runs = load_train_spec(_spec(tmp_path, tiny_model))
    assert [r.name for r in runs] == ["dpo-beta0.1-s0", "dpo-beta0.5-s0", "simpo-gamma0.5-s0"]
    assert runs[1].config.hparams == {"beta": 0.5} and runs[1].config.learning_rate == 1e-2
    assert spec.data.on_policy.prompts == str((tmp_path / "prompts.jsonl").resolve())


@pytest.mark.parametrize("extra, field", [
    ("algorithms: {dpo: {betta: 0.1}}", "algorithms.dpo.betta"),
    ("algorithms: {dpo: {beta: -1}}", "algorithms.dpo.beta"),
    ("algorithms: {sppo: {}}", "algorithms.sppo"),
    ("train: {learning_rat: 1}", "train.learning_rat"),
    ("train: {batch_size: many}", "train.batch_size"),
    ("seeds: zero", "seeds"),
])
def test_bad_specs_name_file_line_field(tmp_path, tiny_model, extra, field):
    text = _spec(tmp_path, tiny_model).read_text()
    key = extra.split(":")[0]
    drop = (key + ":",) + (("  dpo", "  simpo") if key == "algorithms" else ())
    lines = [ln for ln in text.splitlines() if not ln.startswith(drop)]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n" + extra + "\n")
    with pytest.raises(InputError) as e:
        load_train_spec(path)
    assert e.value.path == str(path) and e.value.field == field
    assert e.value.line == len(lines) + 1  # the line of the offending entry


def test_sweep_end_to_end_then_resume(tmp_path, tiny_model):
    spec, runs = load_train_spec(_spec(tmp_path, tiny_model))
    res = run_sweep(spec, runs, results_dir=tmp_path / "results", progress=False)
    assert [len(t.checkpoints) for _, t in res.runs] == [2, 2, 2]
    # base + 6 checkpoints, all in one evaluation run on the held-out prompts
    [run_dir] = set(res.eval_runs.values())
    assert len(res.eval_runs) == 7 and (run_dir / "summary.json").is_file()
    rows = {(r["model"], r["metric"]): r for r in res.table}
    assert rows[("sft", "kl")]["value"] == 0.0  # the base against itself
    ck = [r for r in res.table if r["metric"] == "sentiment" and r["model"] != "sft"]
    assert {r["algorithm"] for r in ck} == {"dpo", "simpo"} and all(r["n_paired"] == 4 for r in ck)
    assert all(r["p_holm"] >= r["p_value"] for r in ck)
    assert res.verdict is not None and res.verdict["metric"] == "sentiment"
    assert [p.suffix for p in res.plots] == [".png", ".svg"] and all(p.stat().st_size > 0 for p in res.plots)
    sweep = json.loads((res.path / "sweep.json").read_text())
    assert len(sweep["runs"]) == 3 and (res.path / "pairs.jsonl").is_file()
    meta = json.loads((res.path / "pairs.jsonl.meta.json").read_text())
    assert meta["stats"]["pairs"] + meta["stats"]["ties_dropped"] + meta["stats"]["too_few_scored"] == 6
    pair = json.loads((res.path / "pairs.jsonl").read_text().splitlines()[0])
    assert pair["score_chosen"] > pair["score_rejected"]  # kept for ODPO

    again = run_sweep(spec, runs, results_dir=tmp_path / "results", progress=False)
    assert all(t.skipped for _, t in again.runs) and again.eval_runs == res.eval_runs
    assert again.table == res.table

    runs_dirs = [str(run_dir)]
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "plot", "frontier", *runs_dirs, "--out",
                        str(tmp_path / "f"), "--reward-metric", "sentiment"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(tmp_path / "f.png"), str(tmp_path / "f.svg")]
    assert "dpo" in p.stderr and "simpo" in p.stderr  # the table of points
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "plot", "frontier", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error:")


def test_cli_train_single_run_then_eval_checkpoint(tmp_path, tiny_model):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": PROMPTS[i]["messages"], "chosen": "great fun", "rejected": "dull bad"}) + "\n"
                            for i in range(4)))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "evalharness.cli", "train", "--algorithm", "simpo", "--base", str(tiny_model),
           "--data", str(data), "--hp", "beta=2.0", "--hp", "gamma=0.5", "--max-steps", "2", "--batch-size", "2",
           "--output-dir", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    ck = Path(p.stdout.strip().splitlines()[-1])
    assert ck == out / "checkpoint-2"
    assert json.loads((ck / "evalharness_manifest.json").read_text())["hparams"] == {"beta": 2.0, "gamma": 0.5}
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(x) + "\n" for x in PROMPTS[:3]))
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "eval", "--model", str(ck), "--reference", str(tiny_model),
                        "--prompts", str(tmp_path / "held.jsonl"), "--judges", "sentiment,kl", "--max-new-tokens", "6",
                        "--results-dir", str(tmp_path / "res"), "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    metrics = {s["metric"]: s for s in json.loads(p.stdout)["scores"]}
    assert metrics["kl"]["value"] is not None and metrics["sentiment"]["n"] == 3
    p = subprocess.run(cmd[:4] + ["--algorithm", "odpo", "--base", str(tiny_model), "--data", str(data),
                                  "--output-dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "score_chosen" in p.stderr and str(data) in p.stderr
    assert not (tmp_path / "o").exists()


def test_benchmark_spec_matches_the_quickstart(tmp_path):
    """benchmarks/sentiment_frontier.yaml is the quickstart in YAML; its prompt files are the generator's output."""
    from evalharness.data.movie_reviews import movie_review_split
    from evalharness.workflows.quickstart import quickstart_spec
    from evalharness.workflows.sweep import expand
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    for split in ("train", "heldout"):
        rows = [json.loads(x) for x in (bench / "sentiment" / f"prompts_{split}.jsonl").read_text().splitlines()]
        assert rows == movie_review_split(split)
    spec, runs = load_train_spec(bench / "sentiment_frontier.yaml")
    quick = quickstart_spec(tmp_path)
    assert spec.train == quick.train and spec.algorithms == quick.algorithms and spec.base == quick.base
    assert [r.name for r in runs] == [r.name for r in expand(quick)] == ["dpo-beta0.1-s0", "simpo-beta2.0-gamma1.0-s0"]
    assert spec.data.on_policy.model_dump(exclude={"prompts"}) == quick.data.on_policy.model_dump(exclude={"prompts"})
    assert spec.eval.model_dump(exclude={"prompts"}) == quick.eval.model_dump(exclude={"prompts"})
    every = expand(quickstart_spec(tmp_path, "all"))
    assert [r.config.algorithm for r in every] == ["dpo", "cdpo", "hinge", "ipo", "odpo", "simpo", "rdpo", "orpo", "cpo",
                                                   "kto", "ppo", "ppo", "ppo"]
    assert [r.config.hparams["kl_coef"] for r in every[-3:]] == [0.02, 0.05, 0.2]
