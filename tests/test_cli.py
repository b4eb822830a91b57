"""The CLI as a user calls it: real subprocesses, exit codes, messages, files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EVALHARNESS_RESULTS": str(cwd / "results")}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _prompts(tmp_path: Path, n: int = 6) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": f"review {i}"}]}) + "\n"
                         for i in range(n)))
    return p


def test_eval_json_then_show(tmp_path):
    p = _prompts(tmp_path)
    r = _run("eval", "--backend", "fake", "--model", "a", "--model", "b", "--reference", "a", "--prompts", str(p),
             "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    metrics = {(s["model"], s["metric"]) for s in summary["scores"]}
    assert {("a", "sentiment"), ("b", "toxicity"), ("a", "kl"), ("b", "kl_k3"), ("a", "length")} <= metrics
    kl_a = next(s for s in summary["scores"] if s["model"] == "a" and s["metric"] == "kl")
    assert kl_a["value"] == 0.0 and kl_a["n"] == 6 and kl_a["baseline"] == "a" and kl_a["judge_id"] == "kl:a"
    shown = _run("show", summary["run_id"], "--json", cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout) == summary
    table = _run("show", summary["run_id"], cwd=tmp_path)
    assert "sentiment" in table.stdout and "95% CI" in table.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = _run("show", summary["run_id"], "--results-dir", str(tmp_path / "results"), "--json", cwd=elsewhere)
    assert shown.returncode == 0 and json.loads(shown.stdout) == summary


def test_generate_writes_jsonl(tmp_path, tiny_model):
    p = _prompts(tmp_path, 3)
    out = tmp_path / "out" / "gens.jsonl"
    r = _run("generate", "--model", str(tiny_model), "--prompts", str(p), "--out", str(out), "--n", "2",
             "--temperature", "1", "--max-new-tokens", "5", "--seed", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["sample_index"]) for x in rows] == [(f"r{i}", s) for i in range(3) for s in range(2)]
    assert all(1 <= x["n_tokens"] <= 5 and x["params"]["seed"] == 1 for x in rows)


def test_bad_inputs_fail_cleanly(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "promt": "y"}\n')
    r = _run("eval", "--backend", "fake", "--model", "a", "--prompts", str(bad), "--judges", "sentiment", cwd=tmp_path)
    assert r.returncode == 2 and f"{bad}:2" in r.stderr and "prompt" in r.stderr and "Traceback" not in r.stderr
    r = _run("eval", "--model", "no-such-model", "--prompts", str(_prompts(tmp_path)), "--judges", "sentiment",
             cwd=tmp_path)
    assert r.returncode == 2 and "unknown model 'no-such-model'" in r.stderr
    r = _run("eval", "--model", str(tmp_path), "--prompts", str(_prompts(tmp_path)), "--judges", "sentiment", cwd=tmp_path)
    assert r.returncode == 2 and "not a model directory" in r.stderr
    r = _run("eval", "--backend", "fake", "--model", "a", "--prompts", str(_prompts(tmp_path)), "--judges", "kl",
             cwd=tmp_path)
    assert r.returncode == 2 and "--reference" in r.stderr
    r = _run("show", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "no run 'nope'" in r.stderr
    assert not (tmp_path / "results").exists()  # nothing half-written


# -- train: options built from TrainConfig --------------------------------------------------------------------------

def _train_in_process(*args: str) -> object:
    """``evalharness train ARGS`` in this process, so it runs this checkout's code (a subprocess may import the
    editable install's)."""
    from typer.testing import CliRunner

    from evalharness.cli import app
    return CliRunner().invoke(app, ["train", *args])


def _identity(out: Path) -> dict:
    return json.loads((out / "train_manifest.json").read_text())["identity"]


def test_train_old_flags_parse_to_the_same_config(tmp_path, tiny_model):
    """Every flag `train` had before its options were built from TrainConfig (--lr, --hp, the --no- forms) still
    gives the same config: the run's recorded identity equals the TrainConfig written out by hand."""
    from trainkit import write_pairs

    from evalharness.training.config import TrainConfig
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    r = _train_in_process(
        "--algorithm", "cdpo", "--base", str(tiny_model), "--data", str(pairs), "--hp", "beta=0.2",
        "--hp", "label_smoothing=0.1", "--reference", str(tiny_model), "--lr", "1e-4", "--epochs", "2",
        "--max-steps", "1", "--batch-size", "2", "--grad-accum", "2", "--schedule", "linear", "--warmup-ratio", "0.2",
        "--save-every", "1", "--max-length", "64", "--max-prompt-length", "32", "--seed", "7", "--lora",
        "--lora-r", "4", "--lora-alpha", "8", "--no-gradient-checkpointing", "--no-save-optimizer", "--no-fsdp",
        "--run-name", "old-flags", "--output-dir", str(out), "--report-to", "none")
    assert r.exit_code == 0, r.output
    want = TrainConfig(algorithm="cdpo", base=str(tiny_model), data=str(pairs), reference=str(tiny_model),
                       hparams={"beta": 0.2, "label_smoothing": 0.1}, learning_rate=1e-4, epochs=2.0, max_steps=1,
                       batch_size=2, grad_accum=2, schedule="linear", warmup_ratio=0.2, save_every=1, max_length=64,
                       max_prompt_length=32, seed=7, lora=True, lora_r=4, lora_alpha=8,
                       dtype="float32")  # the default, auto, as the run records it resolved (the suite pins float32)
    got = _identity(out)
    assert {k: got[k] for k in want.identity() if k != "hparams"} == \
        {k: v for k, v in want.identity().items() if k != "hparams"}
    assert got["hparams"] == {"beta": 0.2, "label_smoothing": 0.1}
    assert json.loads((out / "train_manifest.json").read_text())["run_name"] == "old-flags"
    assert not (out / "checkpoint-1" / "training_state" / "optimizer.pt").exists()  # --no-save-optimizer


def test_every_train_config_field_is_a_train_option(tmp_path, tiny_model):
    """The command has an option per TrainConfig field, named after it; the five that had none before are set."""
    import dataclasses

    import typer
    from trainkit import write_pairs

    from evalharness.cli import app
    from evalharness.training.config import TrainConfig
    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= {p.name for p in command.params}
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "run"
    r = _train_in_process("--algorithm", "dpo", "--base", str(tiny_model), "--data", str(pairs), "--max-steps", "2",
                          "--batch-size", "2", "--weight-decay", "0.05", "--max-grad-norm", "0.5", "--lora",
                          "--lora-dropout", "0.1", "--lora-target-modules", "q_proj,v_proj", "--log-every", "2",
                          "--learning-rate", "1e-3", "--output-dir", str(out))
    assert r.exit_code == 0, r.output
    got = _identity(out)
    assert (got["weight_decay"], got["max_grad_norm"], got["lora_dropout"], got["lora_target_modules"],
            got["learning_rate"]) == (0.05, 0.5, 0.1, ["q_proj", "v_proj"], 1e-3)
    assert [row["step"] for row in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [2]
