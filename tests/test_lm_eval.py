"""lm-evaluation-harness tasks as an evalharness task: a local task (YAML + JSONL, via include_path) on tiny random
models, offline; per-doc verdicts, lm-eval's own numbers reproduced, paired compare and the regression gate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (pip install 'evalharness[lmeval]')")

from evalharness.store import RunStore

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# Ten questions in the tiny tokenizer's words (tests/tiny.py): multiple choice, and one-word exact match.
MC = [("the movie was", ["great", "terrible"], 0), ("the plot was", ["dull", "fun"], 1),
      ("the acting was", ["good", "bad"], 0), ("the music was", ["fine", "dull"], 0),
      ("i loved the", ["story", "it"], 0), ("the cast was", ["bad", "great"], 1),
      ("it is not", ["very", "the"], 0), ("this review is", ["short", "an"], 0),
      ("write a short", ["review", "and"], 0), ("the story was", ["really", "dull"], 1)]
GEN = [("the movie was", "great"), ("the plot was", "dull"), ("write a short", "review"), ("the cast was", "good"),
       ("it is", "not"), ("continue this", "story"), ("the music was", "fine"), ("i hated the", "acting"),
       ("a short", "review"), ("the story was", "fun")]


def write_tasks(folder: Path) -> Path:
    """Two lm-eval tasks in one include_path folder, reading JSONL files the test writes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                                             for q, c, a in MC))
    (folder / "gen.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in GEN))
    common = "dataset_path: json\ntest_split: test\nfewshot_split: test\ndoc_to_text: '{{question}}'\n" \
             "metadata: {version: 1.0}\n"
    (folder / "evh_mc.yaml").write_text(
        f"task: evh_mc\ndataset_kwargs: {{data_files: {{test: {folder / 'mc.jsonl'}}}}}\n{common}"
        "output_type: multiple_choice\ndoc_to_choice: '{{choices}}'\ndoc_to_target: '{{answer}}'\n"
        "metric_list:\n  - {metric: acc, aggregation: mean, higher_is_better: true}\n"
        "  - {metric: acc_norm, aggregation: mean, higher_is_better: true}\n")
    (folder / "evh_gen.yaml").write_text(
        f"task: evh_gen\ndataset_kwargs: {{data_files: {{test: {folder / 'gen.jsonl'}}}}}\n{common}"
        "output_type: generate_until\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs: {until: ['<eos>'], max_gen_toks: 3, do_sample: false}\n"
        "metric_list:\n  - {metric: exact_match, aggregation: mean, higher_is_better: true, ignore_case: true}\n")
    return folder


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **OFFLINE, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def _spec(tmp_path: Path, models: list[tuple[str, Path | str]], extra_tasks: str = "", name: str = "caps") -> Path:
    write_tasks(tmp_path / "lmtasks")
    spec = tmp_path / f"{name}.yaml"
    refs = ", ".join(f"{{name: {n}, ref: {r}}}" for n, r in models)
    spec.write_text(f"name: {name}\nmodels: [{refs}]\nbackend: hf\n"
                    f"tasks:\n  caps: {{task: lm_eval, tasks: [evh_mc, evh_gen], num_fewshot: 2, "
                    f"include_path: ./lmtasks}}\n{extra_tasks}")
    return spec


@pytest.fixture(scope="module")
def run_dir(tiny_model: Path, tiny_ref_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("lmeval")
    (tmp / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p{i}", "prompt": p}) + "\n"
                                               for i, (p, _) in enumerate(GEN)))
    from tiny import build_model
    other = build_model(tmp / "other-checkpoint", seed=2, logit_scale=30.0)
    spec = _spec(tmp, [("sft", tiny_ref_model), ("policy", tiny_model), ("other", other)],
                 "  sentiment: {prompts: ./prompts.jsonl}\n  kl: {prompts: ./prompts.jsonl}\n"
                 f"reference: {tiny_ref_model}\ngeneration: {{max_new_tokens: 4}}\n")
    r = _cli("run", str(spec), "--results-dir", str(tmp / "res"), cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sft: caps: 20 judgments" in r.stderr  # the rerun test checks that a rerun asks for none
    return next(p for p in (tmp / "res").iterdir() if p.name.startswith("caps-"))


def test_verdicts_per_doc_and_lm_evals_own_numbers(run_dir: Path) -> None:
    store = RunStore(run_dir)
    scores = {(s.model, s.metric): s for s in store.scores() if s.task == "caps"}
    for model in ("sft", "policy", "other"):
        verdicts = list(store.verdicts("caps", model))
        assert sorted(v.item_id for v in verdicts) == sorted([f"evh_mc/{i}" for i in range(10)] +
                                                             [f"evh_gen/{i}" for i in range(10)])
        assert all(v.status == "ok" and v.raw for v in verdicts)
        mc = next(v for v in verdicts if v.item_id == "evh_mc/3")
        assert mc.meta["n_shot"] == 2 and set(mc.meta["metrics"]) == {"acc,none", "acc_norm,none"}
        assert "the music was" in mc.meta["prompt"]  # the doc's question, after its two few-shot examples
        # lm-eval's own reported metric of the same run, from the results file it wrote
        reported = json.loads((run_dir / "caps" / model / "results.json").read_text())["results"]
        for lm_task, metric in (("evh_mc", "acc"), ("evh_mc", "acc_norm"), ("evh_gen", "exact_match")):
            s = scores[(model, f"{lm_task}.{metric}")]
            assert s.value == reported[lm_task][f"{metric},none"]
            assert s.n == 10 and s.n_skipped == 0 and s.higher_is_better is True
            assert "evh_mc v1.0;2-shot" in scores[(model, "evh_mc.acc")].task_version
            # per-doc values recomputed from the verdicts
            per_doc = [v.meta["metrics"][f"{metric},none"] for v in verdicts if v.meta["task"] == lm_task]
            assert s.value == pytest.approx(sum(per_doc) / 10)
        assert scores[(model, "evh_mc.acc")].judge_id.startswith("lm_eval 0.4.")
        low, high = scores[(model, "evh_mc.acc")].ci_low, scores[(model, "evh_mc.acc")].ci_high
        assert 0.0 <= low <= scores[(model, "evh_mc.acc")].value <= high <= 1.0  # Wilson, inside [0, 1]


def test_the_module_imports_the_real_lm_eval_package() -> None:
    import lm_eval

    from evalharness.tasks import lm_eval as task
    assert Path(lm_eval.__file__).parent.name == "lm_eval" and "evalharness" not in lm_eval.__file__
    assert hasattr(lm_eval, "simple_evaluate") and task.TASK_CLASS.__name__ == "LMEvalTask"


def test_compare_shows_lm_eval_beside_sentiment_and_kl_with_paired_delta(run_dir: Path) -> None:
    r = _cli("compare", str(run_dir), "--against", "sft", "--format", "markdown", "--results-dir",
             str(run_dir.parent), cwd=run_dir.parent)
    assert r.returncode == 0, r.stderr
    header = r.stdout.splitlines()[0]
    for col in ("caps evh_mc.acc ↑", "Δ caps evh_mc.acc", "caps evh_gen.exact_match ↑", "sentiment", "KL (nats)"):
        assert col in header, header
    from evalharness.analysis.compare import build_table, resolve
    table = build_table(resolve([str(run_dir)], run_dir.parent), against="sft")
    j = next(j for j, c in enumerate(table.columns) if c.metric == "evh_mc.acc")
    i = next(i for i, e in enumerate(table.rows) if e.model == "policy")
    checkpoints = [r for r, e in enumerate(table.rows) if e.model != "sft"]
    assert len(checkpoints) == 2 and all(table.cells[(r, j)].paired is not None for r in checkpoints)
    cell = table.cells[(i, j)].paired
    store = RunStore(run_dir)
    acc = {m: {v.item_id: v.meta["metrics"]["acc,none"] for v in store.verdicts("caps", m)
               if v.meta["task"] == "evh_mc"} for m in ("sft", "policy")}
    assert cell.method == "exact McNemar" and cell.n_paired == 10
    assert cell.delta == pytest.approx(sum(acc["policy"][k] - acc["sft"][k] for k in acc["sft"]) / 10)


def _planted(run_dir: Path, dst: Path) -> Path:
    """A copy of the run with planted per-doc values: on evh_mc the policy answers every doc right and the SFT
    model none; on evh_gen both miss every doc but one, which only the SFT model gets right."""
    shutil.copytree(run_dir, dst)
    for f in dst.rglob("verdicts*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        for row in rows:
            meta = row.get("meta") or {}
            if row.get("task") != "caps" or "metrics" not in meta:
                continue
            for k in meta["metrics"]:
                if meta["task"] == "evh_mc":
                    meta["metrics"][k] = 1.0 if row["model"] == "policy" else 0.0
                else:
                    meta["metrics"][k] = 1.0 if row["model"] == "sft" and meta["doc_id"] == 0 else 0.0
        f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def _gate(baseline: str, candidate: str, metric: str, cwd: Path) -> tuple[int, str]:
    r = _cli("regress", "--baseline", baseline, "--candidate", candidate, "--metrics", metric, "--results-dir",
             str(cwd / "res"), cwd=cwd)
    return r.returncode, r.stdout + r.stderr


def test_regress_on_an_lm_eval_metric(run_dir: Path, tmp_path: Path) -> None:
    planted = _planted(run_dir, tmp_path / "planted")
    rc, out = _gate(f"{planted}:policy", f"{planted}:sft", "caps/evh_mc.acc", tmp_path)
    assert rc == 1 and "FAIL" in out, out  # 10 of 10 docs lost: exact McNemar p = 0.002
    rc, out = _gate(f"{planted}:sft", f"{planted}:policy", "caps/evh_mc.acc", tmp_path)
    assert rc == 0 and "PASS" in out, out
    rc, out = _gate(f"{planted}:sft", f"{planted}:policy", "caps/evh_gen.exact_match", tmp_path)
    assert rc == 0 and "INCONCLUSIVE" in out, out  # one doc lost of ten: not significant, not cleared either


def test_unknown_lm_eval_task_is_one_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    write_tasks(tmp_path / "lmtasks")
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\nmodels: [{tiny_model}]\ntasks:\n"
                    "  caps: {task: lm_eval, tasks: [no_such_task_xyz], include_path: ./lmtasks}\n")
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode != 0
    assert "no_such_task_xyz" in r.stderr and "lm-eval ls tasks" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").glob("bad-*"))


@pytest.mark.slow
def test_bundled_model_against_a_tiny_random_model(tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, [("smollm2", "smollm2-135m-instruct"), ("tiny-random", tiny_model)], name="caps-bundled")
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = next((tmp_path / "res").glob("caps-bundled-*"))
    store = RunStore(run_dir)
    for s in store.scores():
        reported = json.loads((run_dir / "caps" / s.model / "results.json").read_text())["results"]
        assert s.value == reported[s.extra["lm_eval_task"]][s.extra["lm_eval_metric"]], s
    r = _cli("compare", str(run_dir), "--against", "smollm2", "--format", "markdown", "--results-dir",
             str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0 and "Δ caps evh_mc.acc" in r.stdout, r.stderr
    print(r.stdout)  # the table in docs/benchmarks.md


def test_a_rerun_resumes_without_running_lm_eval_again(run_dir: Path) -> None:
    tmp = run_dir.parent.parent
    before = RunStore(run_dir)
    n, scores = len(before.verdicts("caps")), {(s.model, s.metric): s.value for s in before.scores()}
    r = _cli("run", str(tmp / "caps.yaml"), "--results-dir", str(tmp / "res"), cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    after = RunStore(run_dir)
    assert "judgments" not in r.stderr and len(after.verdicts("caps")) == n
    assert {(s.model, s.metric): s.value for s in after.scores()} == scores


def test_a_sweeps_eval_takes_lm_eval_and_a_misspelt_option_names_file_line_field(tiny_model: Path,
                                                                                 tmp_path: Path) -> None:
    from evalharness.core.errors import InputError
    from evalharness.workflows.sweep import load_train_spec
    write_tasks(tmp_path / "lmtasks")
    (tmp_path / "train.jsonl").write_text("")
    head = (f"name: caps-sweep\nbase: {tiny_model}\ndata: {{path: ./train.jsonl}}\nalgorithms:\n  dpo: {{beta: 0.1}}\n"
            "eval:\n  tasks:\n")
    (tmp_path / "sweep.yaml").write_text(head + "    caps: {task: lm_eval, tasks: [evh_mc], include_path: ./lmtasks}\n")
    spec, _ = load_train_spec(tmp_path / "sweep.yaml")
    assert spec.eval.tasks["caps"]["include_path"] == str((tmp_path / "lmtasks").resolve())
    (tmp_path / "bad.yaml").write_text(head + "    caps: {task: lm_eval, tasks: [evh_mc], fewshot: 2}\n")
    with pytest.raises(InputError) as e:
        load_train_spec(tmp_path / "bad.yaml")
    assert e.value.line == 8 and e.value.field == "eval.tasks.caps.fewshot" and "num_fewshot" in str(e.value)


def test_without_lm_eval_installed_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from evalharness.core.errors import EvalHarnessError
    from evalharness.tasks.lm_eval import lm_eval_version

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(EvalHarnessError, match=r"pip install 'evalharness\[lmeval\]'"):
        lm_eval_version()


def test_a_task_whose_data_cannot_be_read_fails_before_anything_is_written(tiny_model: Path, tmp_path: Path) -> None:
    spec = _spec(tmp_path, [("tiny", tiny_model)], name="broken")
    (tmp_path / "lmtasks" / "mc.jsonl").unlink()
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode != 0 and "lm-eval cannot load" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not any((tmp_path / "res").glob("broken-*"))


def test_an_lm_eval_failure_is_counted_and_retried_never_a_score(tiny_model: Path, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "lmtasks")
    marker = tmp_path / "fail-now"
    # a task whose scoring raises while the marker exists: lm-eval fails mid-run, after the run folder exists
    (folder / "flaky.py").write_text(
        "import os\n\n\ndef process_results(doc, results):\n"
        f"    if os.path.exists({str(marker)!r}):\n        raise RuntimeError('planted failure')\n"
        "    lls = [ll for ll, _ in results]\n    return {'acc': float(lls.index(max(lls)) == doc['answer'])}\n")
    mc = (folder / "evh_mc.yaml").read_text().replace("task: evh_mc", "task: evh_flaky")
    (folder / "evh_flaky.yaml").write_text(mc.split("metric_list:")[0] + "process_results: !function "
                                           "flaky.process_results\nmetric_list:\n"
                                           "  - {metric: acc, aggregation: mean, higher_is_better: true}\n")
    spec = tmp_path / "flaky.yaml"
    spec.write_text(f"name: flaky\nmodels: [{{name: tiny, ref: {tiny_model}}}]\nbackend: hf\ntasks:\n"
                    "  caps: {task: lm_eval, tasks: [evh_flaky], include_path: ./lmtasks}\n")
    marker.touch()
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert "planted failure" in r.stderr and "10 of 10 judgments failed" in r.stderr, r.stderr[-2000:]
    (run_dir,) = (tmp_path / "res").glob("flaky-*")
    assert [v.status for v in RunStore(run_dir).verdicts("caps", "tiny")] == ["error"] * 10
    (score,) = RunStore(run_dir).scores()
    assert score.value is None and score.n == 0 and score.n_skipped == 10 and score.unmeasured()
    marker.unlink()  # the failure passes: the same command retries the failed docs in the same run
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0 and "caps: 10 judgments" in r.stderr, r.stderr[-2000:]
    (again,) = (tmp_path / "res").glob("flaky-*")
    (score,) = RunStore(again).scores()
    assert again == run_dir and score.n == 10 and score.n_skipped == 0 and score.value is not None
