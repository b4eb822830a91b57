"""Experiment trackers (--report-to wandb|mlflow): what a tiny sweep, a PPO run and `evalharness run` send is read back
from MLflow's store and W&B's offline run files, and must equal metrics.jsonl's rows and the stored scores."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evalharness import trackers
from evalharness.core.errors import InputError, MissingExtraError

pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'evalharness[mlflow]')")
pytest.importorskip("wandb", reason="wandb is not installed (pip install 'evalharness[wandb]')")

from mlflow.tracking import MlflowClient  # noqa: E402
from trainkit import REPO, SCRIPT, child_env, write_pairs  # noqa: E402

HELDOUT = [{"id": f"h{i}", "messages": [{"role": "user", "content": w}]}
           for i, w in enumerate(["write a short review", "review the movie", "the acting", "the music"])]


def _wandb_env(mp: pytest.MonkeyPatch, home: Path) -> None:
    """W&B offline, every file it writes (cache, config, staging) under ``home``."""
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    mp.delenv("WANDB_DIR", raising=False)
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_DATA_DIR", "data")):
        mp.setenv(var, str(home / sub))


# ---------------------------------------------------------------- reading W&B's offline files back
def wandb_records(folder: Path) -> list[Any]:
    """The records of the one offline run under ``folder/wandb``. Its ``.wandb`` file is the LevelDB log format
    (a 7-byte file header, then 32 KiB blocks of chunks, each with a 7-byte header: crc, length, type
    full/first/middle/last); wandb 0.31 writes it from its Go core and ships no Python reader."""
    from wandb.proto import wandb_internal_pb2 as pb
    [file] = folder.glob("wandb/offline-run-*/run-*.wandb")
    data, block = file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, buf, out = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += block - pos % block
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last chunk
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(folder: Path) -> dict[int, dict[str, Any]]:
    """step -> {metric: value} of the logged history rows (W&B's own ``_step``/``_runtime``/``_timestamp`` left out)."""
    rows = {}
    for r in wandb_records(folder):
        if r.WhichOneof("record_type") == "history":
            row = {_key(i): json.loads(i.value_json) for i in r.history.item}
            rows[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
    return rows


def wandb_summary(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in wandb_records(folder):
        if r.WhichOneof("record_type") == "summary":
            out.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    return out


def wandb_config(folder: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in wandb_records(folder):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = r.run.config.update if kind == "run" else r.config.update
            out.update({_key(i): json.loads(i.value_json) for i in items})
    return out


def wandb_run(folder: Path) -> Any:
    return next(r.run for r in wandb_records(folder) if r.WhichOneof("record_type") == "run")


# ---------------------------------------------------------------- reading MLflow back
def mlflow_run(client: MlflowClient, name: str) -> Any:
    exp = client.get_experiment_by_name("evalharness")
    [run] = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")
    return run


def assert_history_equals_rows(history: dict[str, list[tuple[int, float]]], rows: list[dict[str, Any]]) -> None:
    """Every numeric column of metrics.jsonl, at every step, exactly (both are float64), and nothing else."""
    keys = {k for r in rows for k, v in r.items() if k != "step" and isinstance(v, (int, float))}
    assert set(history) == keys
    for k in keys:
        assert history[k] == [(r["step"], float(r[k])) for r in rows if isinstance(r.get(k), (int, float))], k


def mlflow_history(client: MlflowClient, run: Any) -> dict[str, list[tuple[int, float]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


def _none(v: Any) -> Any:
    """NaN as None: a pandas table (MLflow's log_table) writes a missing float as NaN."""
    return None if isinstance(v, float) and math.isnan(v) else v


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# ---------------------------------------------------------------- a tiny sweep, sent to both trackers
@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Any:
    """Two training runs (DPO, SimPO; 3 steps, checkpoints at 2 and 3) and their evaluation (sentiment, KL) against
    the base, with report_to: [wandb, mlflow] in the spec."""
    from evalharness.workflows.sweep import load_train_spec, run_sweep
    tmp = tmp_path_factory.mktemp("sweep")
    write_pairs(tmp / "pairs.jsonl")
    (tmp / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in HELDOUT))
    (tmp / "sweep.yaml").write_text(f"""\
name: trk-sweep
base: {tiny_model}
data: {{path: ./pairs.jsonl}}
train: {{learning_rate: 1.0e-2, max_steps: 3, batch_size: 2, save_every: 2, warmup_ratio: 0.0}}
algorithms:
  dpo: {{beta: 0.1}}
  simpo: {{gamma: 0.5}}
eval: {{prompts: ./heldout.jsonl, judges: [sentiment, kl], max_new_tokens: 8}}
report_to: [wandb, mlflow]
""")
    logs: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        _wandb_env(mp, tmp / "wandb-home")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("EVALHARNESS_RESULTS", str(tmp / "results"))
        spec, runs = load_train_spec(tmp / "sweep.yaml")
        res = run_sweep(spec, runs, results_dir=tmp / "results", progress=False, log=logs.append)
    res.logs = logs
    res.client = MlflowClient(f"sqlite:///{tmp / 'results' / 'mlflow.db'}")
    return res


def test_training_metrics_per_step_equal_metrics_jsonl(sweep):
    assert not [m for m in sweep.logs if m.startswith("warning")]
    for planned, t in sweep.runs:
        rows = _rows(t.output_dir / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3]
        run = mlflow_run(sweep.client, planned.name)
        assert run.info.status == "FINISHED" and run.data.tags["evalharness.kind"] == "train"
        assert_history_equals_rows(mlflow_history(sweep.client, run), rows)
        # the train manifest as params, flattened with dots as transformers' MLflow callback does
        manifest = json.loads((t.output_dir / "train_manifest.json").read_text())
        params = run.data.params
        assert params["algorithm"] == planned.config.algorithm and params["run_name"] == planned.name
        assert all(params[f"hparams.{k}"] == str(v) for k, v in manifest["hparams"].items())
        assert params["data.hash"] == manifest["data"]["hash"]

        # W&B: the offline run in the training run's folder, the same rows at the same steps
        history = wandb_history(t.output_dir)
        assert sorted(history) == [1, 2, 3]
        for r in rows:
            assert history[r["step"]] == trackers.numeric(r)
        config = wandb_config(t.output_dir)
        assert config["run_name"] == planned.name and config["hparams"] == manifest["hparams"]
        assert wandb_run(t.output_dir).display_name == planned.name


def test_evaluation_scores_table_and_figures(sweep, tmp_path):
    from evalharness.store import RunStore
    [run_dir] = set(sweep.eval_runs.values())
    store = RunStore(run_dir)
    scores = store.scores()
    assert {s.metric for s in scores} >= {"sentiment", "kl", "length"} and len({s.model for s in scores}) == 5

    run = mlflow_run(sweep.client, store.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["evalharness.kind"] == "eval"
    m = run.data.metrics
    for s in scores:
        base = trackers.mlflow_key(f"{s.model}/{s.task}/{s.metric}")
        assert m[f"{base}/value"] == s.value and m[f"{base}/n"] == s.n and m[f"{base}/n_skipped"] == s.n_skipped
        assert (m[f"{base}/ci_low"], m[f"{base}/ci_high"]) == (s.ci_low, s.ci_high)
    assert trackers.mlflow_key("dpo-beta0.1-s0@3/kl/kl/value") == "dpo-beta0.1-s0_3/kl/kl/value"
    assert run.data.params["run_id"] == store.run_id and run.data.params["reference"] == "sft"

    ids = run.info.run_id
    assert {a.path for a in sweep.client.list_artifacts(ids)} == {"comparison.json", "scores.json", "methods.json", "figures"}
    figures = {Path(a.path).name for a in sweep.client.list_artifacts(ids, "figures")}
    assert {"frontier.png", "frontier.svg", "trend-sentiment-sentiment.png", "trend-kl-kl.svg"} <= figures
    table = json.loads(Path(sweep.client.download_artifacts(ids, "comparison.json", str(tmp_path))).read_text())
    got = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert len(got) == len(sweep.table)  # the sweep's own compare.records, paired against sft
    for g, want in zip(got, sweep.table):
        for k in ("model", "task", "metric", "value", "ci_low", "ci_high", "n", "n_skipped", "delta", "p_holm"):
            # MLflow writes the table with pandas' to_json: floats to 10 decimals
            w = want.get(k)  # the reference row has no delta
            assert _none(g[k]) == (pytest.approx(w, abs=1e-10) if isinstance(w, float) else w), k
    assert any(r["delta"] is not None for r in got)

    # W&B: the same values in the run summary; the tables and figures in the offline run's files
    summary = wandb_summary(run_dir)
    for s in scores:
        base = f"{s.model}/{s.task}/{s.metric}"
        assert (summary[f"{base}/value"], summary[f"{base}/n"], summary[f"{base}/n_skipped"]) == (s.value, s.n, s.n_skipped)
        assert (summary[f"{base}/ci_low"], summary[f"{base}/ci_high"]) == (s.ci_low, s.ci_high)
    files = next(run_dir.glob("wandb/offline-run-*/files"))
    [comparison] = files.glob("media/table/comparison_*.table.json")
    wt = json.loads(comparison.read_text())
    rows = [dict(zip(wt["columns"], r)) for r in wt["data"]]
    assert [(r["model"], r["metric"], r["value"], r["delta"]) for r in rows] == \
        [(r["model"], r["metric"], r["value"], r.get("delta")) for r in sweep.table]
    assert list(files.glob("media/images/figures/frontier_*.png")) and (files / "frontier.svg").exists()
    assert wandb_config(run_dir)["run_id"] == store.run_id


def test_run_spec_cli_report_to_mlflow(sweep, tmp_path):
    """`evalharness run SPEC --report-to mlflow` over the sweep's checkpoints, into the store MLFLOW_TRACKING_URI
    names: its scores and comparison table (paired against the reference row, sft) read back."""
    from evalharness.store import RunStore
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in HELDOUT[:2]))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"""\
name: trk-run
from_sweep: {sweep.path}
generation: {{max_new_tokens: 6, temperature: 1.0}}
tasks:
  sentiment: {{prompts: ./heldout.jsonl}}
  kl: {{prompts: ./heldout.jsonl}}
report_to: none
""")
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    env = {**child_env(), "EVALHARNESS_RESULTS": str(tmp_path / "results"), "MLFLOW_TRACKING_URI": uri}
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "run", str(spec), "--report-to", "mlflow", "--json"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    store = RunStore(Path(summary["path"]))
    client = MlflowClient(uri)
    run = mlflow_run(client, store.run_id)
    for s in store.scores():
        assert run.data.metrics[trackers.mlflow_key(f"{s.model}/{s.task}/{s.metric}/value")] == s.value
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "comparison.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert {r["model"] for r in rows if r.get("delta") is not None} == {s.model for s in store.scores()} - {"sft"}
    assert not (tmp_path / "results" / "mlflow.db").exists()  # the URI given was used, not the default store
    # its artifacts beside that database, not in MLflow's default ./mlruns of the working folder
    assert (tmp_path / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()


def test_eval_cli_report_to_mlflow(sweep, tiny_model, tmp_path):
    """`evalharness eval --report-to mlflow`: the run's scores (each model's sentiment and KL) and its comparison
    table (paired against the --reference row) read back from the store MLFLOW_TRACKING_URI names."""
    from evalharness.store import RunStore
    (tmp_path / "heldout.jsonl").write_text("".join(json.dumps(p) + "\n" for p in HELDOUT[:2]))
    ckpt = sweep.runs[0][1].output_dir / "checkpoint-3"
    uri = f"sqlite:///{tmp_path / 'eval.db'}"
    env = {**child_env(), "MLFLOW_TRACKING_URI": uri}
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "eval", "--model", str(tiny_model), "--model",
                        str(ckpt), "--reference", str(tiny_model), "--prompts", "heldout.jsonl", "--judges",
                        "sentiment,kl", "--max-new-tokens", "6", "--results-dir", str(tmp_path / "results"),
                        "--report-to", "mlflow", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    store = RunStore(Path(json.loads(p.stdout)["path"]))
    client = MlflowClient(uri)
    run = mlflow_run(client, store.run_id)
    scores = store.scores()
    assert len({s.model for s in scores}) == 2 and {s.task for s in scores} == {"sentiment", "kl"}
    assert "did not get everything" not in p.stderr, p.stderr
    for s in scores:
        assert run.data.metrics[trackers.mlflow_key(f"{s.model}/{s.task}/{s.metric}/value")] == s.value
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "comparison.json", str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert any(r.get("delta") is not None for r in rows)  # paired against the reference row
    bad = subprocess.run([sys.executable, "-m", "evalharness.cli", "eval", "--model", str(tiny_model), "--prompts",
                          "heldout.jsonl", "--judges", "sentiment", "--report-to", "tensorboard"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "tensorboard" in bad.stderr


# ---------------------------------------------------------------- PPO, resume, failures, configuration
@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    starts = ["the movie", "a review", "the plot", "the cast", "this story", "the music", "write a review", "the acting"]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": w}) + "\n" for i, w in enumerate(starts)))
    return path


def test_ppo_metrics_under_trl_names(tmp_path, tiny_model, prompts, monkeypatch):
    from evalharness.training.trainer import TrainConfig, train
    res = train(TrainConfig(algorithm="ppo", base=str(tiny_model), data=str(prompts), learning_rate=3e-3, max_steps=2,
                            batch_size=4, warmup_ratio=0.0, output_dir=str(tmp_path / "ppo"), report_to=["mlflow"],
                            run_name="ppo-trk",
                            hparams={"reward": "sentiment", "response_length": 6, "temperature": 1.0}))
    rows = _rows(res.output_dir / "metrics.jsonl")
    client = MlflowClient(f"sqlite:///{Path(os.environ['EVALHARNESS_RESULTS']) / 'mlflow.db'}")
    run = mlflow_run(client, "ppo-trk")
    history = mlflow_history(client, run)
    assert {"objective/kl", "objective/scores", "policy/approxkl_avg", "loss/value_avg"} <= set(history)
    assert_history_equals_rows(history, rows)
    assert run.data.params["reward.spec"] == "sentiment"


def test_resumed_run_sends_every_step_once(tmp_path, tiny_model):
    """A run SIGKILLed after its step-2 checkpoint resumes; its new tracker run gets steps 1-2 from metrics.jsonl
    and 3-4 as they are trained: the file's curve, each step once."""
    from evalharness.training.trainer import TrainConfig, train
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    opts = dict(algorithm="dpo", base=str(tiny_model), data=str(pairs), learning_rate=1e-2, max_steps=4, batch_size=2,
                save_every=2, warmup_ratio=0.0, output_dir=str(tmp_path / "run"), report_to=["mlflow"])
    env = {**child_env("after_checkpoint:2"), "EVALHARNESS_RESULTS": os.environ["EVALHARNESS_RESULTS"]}
    p = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(opts), str(tmp_path / "child")], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr
    train(TrainConfig(**opts))
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    client = MlflowClient(f"sqlite:///{Path(os.environ['EVALHARNESS_RESULTS']) / 'mlflow.db'}")
    exp = client.get_experiment_by_name("evalharness")
    killed, resumed = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    assert killed.info.status == "RUNNING"  # SIGKILL: nobody could close it
    assert resumed.info.status == "FINISHED"
    assert_history_equals_rows(mlflow_history(client, resumed), rows)


def test_a_tracker_failing_at_log_time_loses_nothing(tmp_path, tiny_model, monkeypatch):
    from evalharness.training.trainer import TrainConfig, train
    real = trackers.MlflowTracker.log_metrics

    def flaky(self, metrics, step=None):
        if step == 2:
            raise ConnectionError("tracking server went away")
        real(self, metrics, step)
    monkeypatch.setattr(trackers.MlflowTracker, "log_metrics", flaky)
    logs: list[str] = []
    res = train(TrainConfig(algorithm="dpo", base=str(tiny_model), data=str(write_pairs(tmp_path / "p.jsonl")),
                            learning_rate=1e-2, max_steps=3, batch_size=2, warmup_ratio=0.0,
                            output_dir=str(tmp_path / "run"), report_to=["mlflow"]), log=logs.append)
    assert [r["step"] for r in _rows(res.output_dir / "metrics.jsonl")] == [1, 2, 3]  # the record is whole
    [warning] = [m for m in logs if m.startswith("warning")]
    assert "mlflow failed at log_metrics (ConnectionError: tracking server went away)" in warning
    assert str(res.output_dir) in warning
    client = MlflowClient(f"sqlite:///{Path(os.environ['EVALHARNESS_RESULTS']) / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("evalharness").experiment_id])
    assert run.info.status == "FAILED" and [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
    assert json.loads((res.output_dir / "train_manifest.json").read_text())["status"] == "finished"


def test_report_to_names():
    assert trackers.parse_report_to("wandb, mlflow") == ["wandb", "mlflow"]
    assert trackers.parse_report_to("none") == [] == trackers.parse_report_to(None) == trackers.parse_report_to([])
    assert trackers.parse_report_to(["mlflow", "mlflow", "none"]) == ["mlflow"]
    with pytest.raises(InputError) as e:
        trackers.parse_report_to("wandb,tensorboard")
    assert e.value.field == "report_to" and "unknown tracker 'tensorboard'; known: wandb, mlflow" in str(e.value)
    assert trackers.flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}, "f": None}) == \
        {"a.b": 1, "a.c.d": [1, 2], "e": {}, "f": None}  # as transformers' flatten_dict
    assert trackers.mlflow_key("dpo@16/sentiment/value") == "dpo_16/sentiment/value"
    assert trackers.mlflow_key("/ckpt/../a//b/./v") == "_/ckpt/_/a/_/b/_/v"
    long = [trackers.mlflow_key("/" + "x" * 300 + f"/{i}/value") for i in (1, 2)]
    assert all(len(k) == 250 for k in long) and long[0] != long[1] and long[0].endswith("x/1/value")


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_missing_package_names_the_extra(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError) as e:
        trackers.check([package])
    assert f"pip install 'evalharness[{package}]'" in str(e.value)


def test_cli_missing_package_fails_before_training(tmp_path, tiny_model):
    hidden = tmp_path / "hidden" / "wandb"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('not installed here')\n")
    env = {**child_env(), "PYTHONPATH": os.pathsep.join([str(hidden.parent), str(REPO)])}
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "train", "--algorithm", "dpo", "--base", str(tiny_model),
                        "--data", str(write_pairs(tmp_path / "p.jsonl")), "--max-steps", "1",
                        "--output-dir", str(tmp_path / "out"), "--report-to", "mlflow,wandb"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == ("error: 'wandb' is not installed; install it with: "
                                                 "pip install 'evalharness[wandb]'")
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_spec_report_to_is_validated_strictly(tmp_path, tiny_model, kind):
    from evalharness.pipeline.spec import load_spec
    from evalharness.workflows.sweep import load_train_spec
    body = (f"name: x\nmodel: {tiny_model}\ntasks:\n  sentiment: {{prompts: ./p.jsonl}}\n" if kind == "run" else
            f"name: x\nbase: {tiny_model}\ndata: {{path: ./p.jsonl}}\nalgorithms: {{dpo: {{}}}}\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": "a", "prompt": "the movie"}) + "\n")
    path = tmp_path / "spec.yaml"
    path.write_text(body + "report_to:\n  - wandb\n  - comet\n")
    load = load_spec if kind == "run" else load_train_spec
    with pytest.raises(InputError) as e:
        load(path)
    assert (e.value.path, e.value.line, e.value.field) == (str(path), 7, "report_to.1")
    assert "'wandb', 'mlflow' or 'none'" in str(e.value)
    path.write_text(body + "report_to: wandb,mlflow\n")
    assert load(path)[0].report_to == ["wandb", "mlflow"]
