"""`quickstart --task toxicity`: the spec it builds, its YAML twin, and the sweep on a tiny model ranking, choosing
and plotting by LOWER toxicity (pairs chosen less toxic, best checkpoint the least toxic, frontier lower-is-better)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalharness.data.rude_prompts import rude_prompt_split
from evalharness.core.errors import EvalHarnessError
from evalharness.judges import get_judge
from evalharness.core.prompts import write_prompts
from evalharness.workflows.quickstart import quickstart_spec
from evalharness.core.records import Generation
from evalharness.workflows.sweep import expand, load_train_spec, run_sweep

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_toxicity_quickstart_spec_and_its_yaml(tmp_path: Path) -> None:
    spec = quickstart_spec(tmp_path, task="toxicity")
    assert spec.name == "quickstart-toxicity" and spec.data.on_policy.judge == "toxicity"
    assert spec.eval.judges == ["toxicity", "kl"] and [r.name for r in expand(spec)] == \
        ["dpo-beta0.1-s0", "odpo-beta0.1-alpha1.0-offset_fnidentity-s0"]
    for split, n in (("train", 128), ("heldout", 64)):
        rows = rude_prompt_split(split)
        assert len(rows) == n and len({r["id"] for r in rows}) == n
        assert [json.loads(x) for x in (BENCH / "toxicity" / f"prompts_{split}.jsonl").read_text().splitlines()] == rows
    train = {r["messages"][0]["content"] for r in rude_prompt_split("train")}
    assert not train & {r["messages"][0]["content"] for r in rude_prompt_split("heldout")}
    assert Path(spec.data.on_policy.prompts).read_text() == (BENCH / "toxicity" / "prompts_train.jsonl").read_text()
    yaml_spec, runs = load_train_spec(BENCH / "toxicity_frontier.yaml")
    assert yaml_spec.train == spec.train and yaml_spec.algorithms == spec.algorithms and yaml_spec.base == spec.base
    assert [r.name for r in runs] == [r.name for r in expand(spec)]
    assert yaml_spec.data.on_policy.model_dump(exclude={"prompts"}) == spec.data.on_policy.model_dump(exclude={"prompts"})
    assert yaml_spec.eval.model_dump(exclude={"prompts"}) == spec.eval.model_dump(exclude={"prompts"})
    # PPO learns from the task's judge; the default task is still sentiment.
    every = {r.config.algorithm: r for r in expand(quickstart_spec(tmp_path, "all", task="toxicity"))}
    assert every["ppo"].config.hparams["reward"] == "toxicity"
    assert quickstart_spec(tmp_path).name == "quickstart-sentiment"
    assert [r.name for r in expand(quickstart_spec(tmp_path))] == ["dpo-beta0.1-s0", "simpo-beta2.0-gamma1.0-s0"]
    with pytest.raises(EvalHarnessError, match="unknown quickstart task 'helpfulness'"):
        quickstart_spec(tmp_path, task="helpfulness")


def test_toxicity_sweep_ranks_chooses_and_plots_by_lower_toxicity(tmp_path: Path, tiny_model: Path) -> None:
    spec = quickstart_spec(tmp_path, task="toxicity")
    train = write_prompts(rude_prompt_split("train")[::16], tmp_path / "train.jsonl")  # 8 prompts
    held = write_prompts(rude_prompt_split("heldout")[::8], tmp_path / "held.jsonl")  # 8 prompts
    spec = spec.model_copy(update={
        "base": str(tiny_model), "train": {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 2, "save_every": 1,
                                           "warmup_ratio": 0.0},
        "data": spec.data.model_copy(update={"on_policy": spec.data.on_policy.model_copy(
            update={"prompts": str(train), "max_new_tokens": 8})}),
        "eval": spec.eval.model_copy(update={"prompts": str(held), "max_new_tokens": 8})})
    res = run_sweep(spec, expand(spec), results_dir=tmp_path / "results", progress=False)
    # Pairs: the chosen continuation is the less offensive one; the scores are 1 - P(offensive), re-judged here.
    judge = get_judge("toxicity")
    pairs = [json.loads(x) for x in (res.path / "pairs.jsonl").read_text().splitlines()]
    assert pairs
    p_chosen = [v.value for v in judge.judge([Generation(p["id"], 0, p["chosen"]) for p in pairs])]
    p_rejected = [v.value for v in judge.judge([Generation(p["id"], 0, p["rejected"]) for p in pairs])]
    for p, c, r in zip(pairs, p_chosen, p_rejected):
        assert c < r and p["score_chosen"] == pytest.approx(1 - c) and p["score_rejected"] == pytest.approx(1 - r)
    meta = json.loads((res.path / "pairs.jsonl.meta.json").read_text())
    assert meta["stats"]["judge"]["score"] == "1 - toxicity"
    # The verdict's best checkpoint is the least toxic of the 4, and its column says lower is better.
    col = next(c for c in res.comparison.columns if c.metric == "toxicity")
    assert col.higher_is_better is False
    tox = {r["model"]: r["value"] for r in res.table if r["metric"] == "toxicity"}
    assert len(tox) == 5 and res.verdict["metric"] == "toxicity" and res.verdict["k_checkpoints"] == 4
    assert res.verdict["best_model"] == min((m for m in tox if m != "sft"), key=lambda m: tox[m])
    svg = next(p for p in res.plots if p.suffix == ".svg").read_text()
    assert "toxicity (lower is better)" in svg
