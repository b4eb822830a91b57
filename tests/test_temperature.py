"""Temperature sweeps: ``generation: {temperature: [...]}`` is one task, one column, per temperature; scores of
two temperatures never share a column; the plot of a metric vs temperature reads the right points."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from evalharness.backends.http import ChatResult
from evalharness.analysis.compare import build_table, resolve, score_ci
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.analysis.plot import temperature_plot, temperature_points
from evalharness.pipeline.runner import plan_from_spec, run
from evalharness.core.records import swept_task, temperature_task
from evalharness.pipeline.spec import load_spec
from evalharness.store import RunStore, comparable

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TEMPS = [0.0, 0.25, 0.5, 0.75, 1.0]


class FakeSummaryJudge:
    """A label-space judge whose P(m) is a fixed function of what it is shown: repeatable, no model."""

    model_id = "fake-summary-judge"
    protocol = "label-logprobs"

    def __init__(self) -> None:
        self.calls = 0

    def complete(self, requests: list[Any], progress: bool = False) -> list[ChatResult]:
        self.calls += len(requests)
        out = []
        for r in requests:
            h = int(hashlib.sha256(json.dumps(r.messages).encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            p = 0.05 + 0.9 * h
            out.append(ChatResult(r.id, "ok", "m" if p > 0.5 else "M", choice_logprobs={"m": math.log(p),
                                                                                      "M": math.log(1 - p)}))
        return out


def write_spec(tmp_path: Path, temperatures: Any, name: str = "tldr") -> Path:
    spec = tmp_path / f"{name}.yaml"
    d = BENCH / "summarize_tldr"
    spec.write_text(f"""
name: {name}
models: [{{name: model-a, ref: a}}, {{name: model-b, ref: b}}]
backend: fake
generation: {{max_new_tokens: 48, seed: 0}}
tasks:
  summarize:
    task: alpaca_eval
    eval_set: {d / 'eval_set.json'}
    baseline: {d / 'references.json'}
    judge_config_dir: {d / 'judge'}
    lc_support_dir: {tmp_path / 'no-lc'}
    generation: {{temperature: {json.dumps(temperatures)}}}
""")
    return spec


def run_spec(spec: Path, results: Path) -> Any:
    plan = plan_from_spec(spec, results_dir=results, progress=False)
    plan.chat_judge = (FakeSummaryJudge(), "fake-summary-judge")
    return run(plan)


def test_a_temperature_list_expands_into_one_task_per_temperature(tmp_path: Path) -> None:
    _, tasks = load_spec(write_spec(tmp_path, TEMPS))
    assert [t.name for t in tasks] == ["summarize@t0", "summarize@t0.25", "summarize@t0.5", "summarize@t0.75",
                                       "summarize@t1"]
    assert [t.extra["generation_overrides"] for t in tasks] == [{"temperature": t} for t in TEMPS]
    plan = plan_from_spec(write_spec(tmp_path, TEMPS), results_dir=tmp_path)
    params = [t.generation.params() for t in plan.tasks]
    assert [p.temperature for p in params] == TEMPS and params[0].greedy and not any(p.greedy for p in params[1:])
    assert [swept_task(t.name) for t in tasks] == ["summarize"] * 5
    assert swept_task("kl") == "kl" and swept_task("x@tea") == "x@tea" and temperature_task("s", 0.5) == "s@t0.5"
    # A scalar stays one task under its own name; a bad or repeated value names the field.
    _, one = load_spec(write_spec(tmp_path, 0.7))
    assert [(t.name, t.extra["generation_overrides"]) for t in one] == [("summarize", {"temperature": 0.7})]
    for bad in ([0.5, -1.0], [0.5, 0.5], []):
        with pytest.raises(InputError, match="temperature") as e:
            load_spec(write_spec(tmp_path, bad))
        assert e.value.field is not None and "summarize.generation.temperature" in e.value.field


def test_each_temperature_is_its_own_column_and_temperatures_never_mix(tmp_path: Path) -> None:
    results = tmp_path / "results"
    res = run_spec(write_spec(tmp_path, TEMPS), results)
    wins = {(s.model, s.task): s for s in res.scores if s.metric == "win_rate"}
    assert len(wins) == 10 and all(s.value is not None and s.n == 20 for s in wins.values())
    for (model, task), s in wins.items():
        assert s.decoding["temperature"] == float(task.split("@t")[1])
    # Every temperature's answers are its own: samples at 0.25 and 0.5 differ for the fake policy.
    store = RunStore(res.path)
    gens = {g.params["temperature"]: g.text for g in store.generations("model-a") if g.item_id == _first_key(store)}
    assert sorted(gens) == TEMPS and len(set(gens.values())) > 1
    # The annotations of each temperature land in that task's own folder.
    for t in ("summarize@t0", "summarize@t1"):
        assert (res.path / t / "model-a" / "annotations.json").is_file()
    table = build_table(resolve([str(res.path)], tmp_path / "results"), metrics=["win_rate"])
    assert [c.task for c in table.columns] == [f"summarize@t{t:g}" for t in TEMPS]
    a, b = wins[("model-a", "summarize@t0")], wins[("model-a", "summarize@t0.5")]
    same, why = comparable(a, a)
    assert same and not why
    ok, why = comparable(a, b)
    assert not ok and "decoding" in why and "'temperature': 0.0" in why and "'temperature': 0.5" in why
    # The same task name at two temperatures in two runs: one column refused, or two labelled ones.
    r0 = run_spec(write_spec(tmp_path, 0.0, "cold"), results)
    r1 = run_spec(write_spec(tmp_path, 1.0, "hot"), results)
    entries = resolve([str(r0.path), str(r1.path)], results)
    with pytest.raises(EvalHarnessError, match="not comparable.*decoding"):
        build_table(entries, metrics=["win_rate"])
    mixed = build_table(entries, metrics=["win_rate"], allow_mixed=True)
    assert len(mixed.columns) == 2 and all("temperature=" in c.label for c in mixed.columns)
    # The scalar runs answer exactly as the swept run's matching temperature: one sample stream per decoding.
    cold = next(s for s in r0.scores if s.metric == "win_rate" and s.model == "model-a")
    assert cold.value == pytest.approx(wins[("model-a", "summarize@t0")].value)


def _first_key(store: RunStore) -> str:
    return next(g.item_id for g in store.generations("model-a"))


def test_the_temperature_plot_is_written_with_the_runs_points(tmp_path: Path) -> None:
    res = run_spec(write_spec(tmp_path, TEMPS), tmp_path / "results")
    paths, points, meta = temperature_plot([res.path], tmp_path / "plots" / "tldr")
    assert [p.name for p in paths] == ["tldr.png", "tldr.svg"] and all(p.stat().st_size > 1000 for p in paths)
    assert "sampling temperature" in paths[1].read_text()
    assert (meta["task"], meta["metric"], meta["baseline"], meta["higher_is_better"]) == \
        ("summarize", "win_rate", "reference-summary", True)
    assert [(p.model, p.temperature) for p in points] == [(m, t) for m in ("model-a", "model-b") for t in TEMPS]
    store = RunStore(res.path)
    for p in points:
        # The win rate recomputed from the stored verdicts: mean(preference - 1) * 100 over the 20 posts.
        prefs = [v.value for v in store.verdicts(temperature_task("summarize", p.temperature), p.model)]
        assert len(prefs) == 20 and p.value == pytest.approx(100 * sum(x - 1 for x in prefs) / 20)
        score = next(s for s in res.scores if s.model == p.model and s.metric == "win_rate"
                     and s.task == temperature_task("summarize", p.temperature))
        assert (p.lo, p.hi) == score_ci(score) and p.lo < p.value < p.hi
    assert len({round(p.value, 6) for p in points}) > 2  # the points really differ across temperatures
    other, _ = temperature_points([res.path], metric="discrete_win_rate")
    assert all(0 <= p.value <= 100 for p in other) and [p.temperature for p in other[:5]] == TEMPS
    with pytest.raises(EvalHarnessError, match="no 'nope' scores"):
        temperature_points([res.path], metric="nope")


def test_a_run_without_a_sweep_has_no_temperature_plot(tmp_path: Path) -> None:
    res = run_spec(write_spec(tmp_path, 0.5, "flat"), tmp_path / "results")
    with pytest.raises(EvalHarnessError, match="no temperature-swept task"):
        temperature_points([res.path])


def test_the_summarization_benchmark_spec_and_its_data() -> None:
    from evalharness.tasks.alpaca_eval.task import load_items, template_version
    spec, tasks = load_spec(BENCH / "summarize_tldr.yaml")
    assert [t.name for t in tasks] == [temperature_task("summarize", t) for t in TEMPS]
    assert spec.judge is not None and spec.judge.type == "local" and spec.judge.demo
    cfg = tasks[0].config
    items, full = load_items(cfg)
    assert len(items) == len(full) == 20 and {it["generator"] for it in items} == {"reference-summary"}
    assert all(it["instruction"].startswith("Summarize this forum post") and it["baseline"] for it in items)
    # The project's own judge prompt, so its verdicts never share a column with AlpacaEval's official annotator.
    assert template_version(cfg) != template_version(type(cfg)())


def test_cli_plot_temperature(tmp_path: Path) -> None:
    import subprocess
    import sys
    res = run_spec(write_spec(tmp_path, TEMPS), tmp_path / "results")
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "plot", "temperature", str(res.path), "--out",
                        str(tmp_path / "t")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(tmp_path / "t.png"), str(tmp_path / "t.svg")]
    assert p.stderr.count("summarize win_rate") == 10 and "T=0.25" in p.stderr
    p = subprocess.run([sys.executable, "-m", "evalharness.cli", "plot", "temperature", str(res.path), "--task", "kl"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "not run at several temperatures" in p.stderr
