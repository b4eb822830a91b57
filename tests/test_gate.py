"""Regression gating a CI can trust, and reader commands that never show a traceback.

Runs are made through the real run loop (fake policy, fake OpenAI judge over HTTP) or through the store API
(test_compare's constructed sentiment runs); the CLI is called in process through ``cli.main``, so an
exception that is not an EvalHarnessError fails the test as it would print a traceback to a user.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_compare import base_values, sentiment_run, shifted
from test_task_alpaca_eval import support_dir

from evalharness import cli as cli_module
from evalharness.core.records import Score
from evalharness.pipeline.runner import run_spec
from evalharness.store import RunStore
from evalharness.testing import FakeOpenAI, Fault
from evalharness.testing.fake_openai import benchmark_judge

DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "demo_data"


def cli(capsys: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``evalharness ARGS``, in process."""
    old, sys.argv = sys.argv, ["evalharness", *map(str, args)]
    try:
        cli_module.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- runs through the run loop
def _spec(tmp: Path, name: str, url: str, lc: Path | None = None) -> Path:
    """One model, MT-Bench and AlpacaEval judged over HTTP; LC support files absent (as offline) unless ``lc``."""
    (tmp / "no-lc").mkdir(exist_ok=True)
    spec = tmp / f"{name}.yaml"
    spec.write_text(f"""\
name: {name}
models: [a]
backend: fake
generation: {{max_new_tokens: 16, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 0, concurrency: 4, cache: false}}
tasks:
  mt_bench: {{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl,
             reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl}}
  alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: {DEMO}/alpaca_eval/baseline.json,
                 lc_support_dir: {lc or tmp / 'no-lc'}}}
""")
    return spec


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Three runs of one model: a healthy judge, a judge whose every reply is unparseable, a judge answering
    HTTP 500 to every request."""
    tmp = tmp_path_factory.mktemp("gate")
    results = tmp / "results"
    runs = {}
    with FakeOpenAI(benchmark_judge) as server:
        runs["good"] = run_spec(_spec(tmp, "good", server.url), results_dir=results, progress=False).path
        runs["lc"] = run_spec(_spec(tmp, "lc", server.url, support_dir(tmp / "lc-support")), results_dir=results,
                              progress=False).path
    with FakeOpenAI(default_text="I would rather not say.") as server:
        runs["unparsed"] = run_spec(_spec(tmp, "unparsed", server.url), results_dir=results, progress=False).path
    with FakeOpenAI(benchmark_judge) as server:
        server.on("", Fault.http(500))
        runs["http500"] = run_spec(_spec(tmp, "http500", server.url), results_dir=results, progress=False).path
    return {"results": results, **runs}


def test_a_failed_judge_is_not_measured_and_exits_3(judged: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Old behaviour: PASS (exit 0) for a candidate whose judge answered nothing usable."""
    for bad in ("unparsed", "http500"):
        code, out, err = cli(capsys, "regress", "--baseline", f"{judged['good'].name}:a", "--candidate",
                             f"{judged[bad].name}:a", "--json", "--results-dir", judged["results"])
        assert code == 3, (bad, out, err)
        rows = {f"{r['task']}/{r['metric']}": r for r in json.loads(out)}
        mt = rows["mt_bench/score"]
        assert mt["verdict"] == "NOT MEASURED" and mt["reason"].startswith("candidate: nothing scored"), mt
        assert rows["alpaca_eval/win_rate"]["verdict"] == "NOT MEASURED"
        assert "PASS" not in {r["verdict"] for r in rows.values()}
        code, out, _ = cli(capsys, "regress", "--baseline", f"{judged['good'].name}:a", "--candidate",
                           f"{judged[bad].name}:a", "--results-dir", judged["results"])
        assert code == 3 and "NOT MEASURED" in out and "nothing scored" in out


def test_a_healthy_model_against_itself_passes_strict_offline(judged: dict[str, Any],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Old behaviour: the LC column, never computed offline, was INCONCLUSIVE, so --strict exited 1."""
    ref = f"{judged['good'].name}:a"
    code, out, err = cli(capsys, "regress", "--baseline", ref, "--candidate", ref, "--strict", "--json",
                         "--results-dir", judged["results"])
    assert code == 0, (out, err)
    rows = json.loads(out)
    assert {r["verdict"] for r in rows} == {"PASS"} and "alpaca_eval/length_controlled_winrate" not in {
        f"{r['task']}/{r['metric']}" for r in rows}
    assert "left out alpaca_eval/length_controlled_winrate: neither side has it" in err
    # Named on purpose, a metric neither side has is not measured, not silently passed.
    code, out, _ = cli(capsys, "regress", "--baseline", ref, "--candidate", ref, "--metrics",
                       "alpaca_eval/length_controlled_winrate", "--json", "--results-dir", judged["results"])
    assert code == 3 and json.loads(out)[0]["verdict"] == "NOT MEASURED"


def test_max_skipped_moves_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A candidate with 20% failed judgments: NOT MEASURED at the default 10%, gated at --max-skipped 0.25."""
    root = tmp_path / "results"
    base = base_values()
    sentiment_run(root, "base", {"m": base})
    cand = sentiment_run(root, "cand", {"m": shifted(base, 0.0)})
    summary = json.loads((cand / "summary.json").read_text())
    summary["scores"][0]["n_skipped"] = summary["scores"][0]["n"] // 4  # 20 of 100 judgments
    (cand / "summary.json").write_text(json.dumps(summary))
    code, out, _ = cli(capsys, "regress", "--baseline", "base:m", "--candidate", "cand:m", "--json",
                       "--results-dir", root)
    assert code == 3 and "20 of 100 judgments failed or unparsed" in json.loads(out)[0]["reason"]
    code, out, _ = cli(capsys, "regress", "--baseline", "base:m", "--candidate", "cand:m", "--json",
                       "--max-skipped", "0.25", "--results-dir", root)
    assert code == 0 and json.loads(out)[0]["verdict"] == "PASS"
    # FAIL wins over NOT MEASURED: a drop on one metric and an unmeasured other metric exit 1.
    store = RunStore(cand)
    ok = store.scores()[0]
    bad = Score(**{**ok.to_dict(), "metric": "other", "value": None, "n": 0, "n_skipped": 80})
    drop = sentiment_run(root, "drop", {"m": shifted(base, -0.1)})
    summary = json.loads((drop / "summary.json").read_text())
    summary["scores"].append(bad.to_dict())
    (drop / "summary.json").write_text(json.dumps(summary))
    code, out, _ = cli(capsys, "regress", "--baseline", "base:m", "--candidate", "drop:m", "--json",
                       "--metrics", "sentiment/sentiment,sentiment/other", "--results-dir", root)
    assert code == 1, out
    assert {r["metric"]: r["verdict"] for r in json.loads(out)} == {"sentiment": "FAIL", "other": "NOT MEASURED"}


def test_incomparable_regress_does_not_offer_allow_mixed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "results"
    sentiment_run(root, "v1", {"m": base_values()})
    sentiment_run(root, "v2", {"m": base_values()}, task_version="2;prompts=other")
    code, _, err = cli(capsys, "regress", "--baseline", "v1:m", "--candidate", "v2:m", "--results-dir", root)
    assert code == 2 and "not comparable" in err and "task_version" in err and "--allow-mixed" not in err
    code, _, err = cli(capsys, "compare", "v1", "v2", "--results-dir", root)
    assert code == 2 and "--allow-mixed" in err
    code, _, err = cli(capsys, "compare", "v1", "--metrics", "nope", "--results-dir", root)
    assert code == 2 and "nope" in err and "sentiment/sentiment" in err


def test_long_bootstraps_say_so_on_stderr_only(judged: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Old behaviour: minutes of LC bootstrap with nothing printed."""
    ref = f"{judged['lc'].name}:a"
    code, out, err = cli(capsys, "regress", "--baseline", ref, "--candidate", ref, "--rounds", "2", "--json",
                         "--metrics", "alpaca_eval/length_controlled_winrate", "--results-dir", judged["results"])
    assert code == 0, err
    assert json.loads(out)[0]["verdict"] == "PASS" and "done in" not in out
    assert "AlpacaEval 2 LC %: paired bootstrap of candidate:a vs baseline:a" in err and "done in" in err


# ---------------------------------------------------------------- history
def test_history_over_runs_without_lc_and_with_failed_judges(judged: dict[str, Any], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Old behaviour: TypeError (None.__format__) on the LC column; with --plot, TypeError in isfinite."""
    code, out, err = cli(capsys, "history", "--model", "a", "--plot", tmp_path / "trend", "--results-dir",
                         judged["results"])
    assert code == 0 and "Traceback" not in err, err
    assert "NOT MEASURED: length-controlled" in out[out.index("alpaca_eval/length_controlled_winrate"):]
    assert "NOT MEASURED: nothing scored" in out[out.index("mt_bench/score"):]
    assert list(tmp_path.glob("trend-mt_bench-score.png"))


def _summary_edit(run: Path, edit: Any) -> None:
    summary = json.loads((run / "summary.json").read_text())
    edit(summary)
    (run / "summary.json").write_text(json.dumps(summary))


def test_history_splits_incomparable_scores_and_marks_unmeasured(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                 ) -> None:
    """Old behaviour: one series for two prompt sets; a point with no value crashed the text output
    (None.__format__) and the plot (isfinite)."""
    root = tmp_path / "results"
    base = base_values()
    sentiment_run(root, "r1", {"m": base}, finished_at="2026-01-01T00:00:00Z")
    sentiment_run(root, "r2", {"m": base}, finished_at="2026-01-02T00:00:00Z", task_version="1;prompts=small")
    sentiment_run(root, "r3", {"m": shifted(base, 0.01)}, finished_at="2026-01-03T00:00:00Z")
    lc = sentiment_run(root, "r4", {"m": base}, finished_at="2026-01-04T00:00:00Z")
    _summary_edit(lc, lambda s: s["scores"][0].update(value=None, ci_low=None, ci_high=None, n=0, n_skipped=80))
    code, out, err = cli(capsys, "history", "--model", "m", "--json", "--plot", tmp_path / "trend",
                         "--results-dir", root)
    assert code == 0, err
    points = json.loads(out)
    series = {p["run"]: p["series"] for p in points}
    assert series["r1"] == series["r3"] == series["r4"] != series["r2"] and "task_version=1;prompts=small" in series["r2"]
    r4 = next(p for p in points if p["run"] == "r4")
    assert r4["not_measured"].startswith("nothing scored") and "drop" not in r4
    assert all(p["not_measured"] is None for p in points if p["run"] != "r4")
    assert len(list(tmp_path.glob("trend-*.png"))) == 2
    code, out, err = cli(capsys, "history", "--model", "m", "--results-dir", root)
    assert code == 0 and "NOT MEASURED: nothing scored" in out and out.count("sentiment/sentiment") == 2, out


# ---------------------------------------------------------------- every reader over damaged run folders
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _manifest(run: Path, **changes: Any) -> None:
    m = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**m, **changes}))


DAMAGE = {
    "manifest-not-json": (lambda r: (r / "manifest.json").write_text("{not json"), "manifest.json"),
    "manifest-list": (lambda r: (r / "manifest.json").write_text("[]"), "manifest.json"),
    "manifest-models-str": (lambda r: _manifest(r, models="a"), "models"),
    "manifest-missing": (lambda r: (r / "manifest.json").unlink(), "manifest.json"),
    "manifest-not-utf8": (lambda r: (r / "manifest.json").write_bytes(b'{"run_id": "\xff\xfe"}'), "UTF-8"),
    "summary-not-json": (lambda r: (r / "summary.json").write_text('{"scores": ['), "summary.json"),
    "summary-list": (lambda r: (r / "summary.json").write_text("[]"), "summary.json"),
    "summary-scores-int": (lambda r: (r / "summary.json").write_text('{"scores": 5}'), "summary.json"),
    "summary-value-str": (lambda r: _summary_edit(r, lambda s: s["scores"][0].update(value="high")), "scores[0]"),
    "summary-row-str": (lambda r: _summary_edit(r, lambda s: s.update(scores=["x"])), "scores[0]"),
    "summary-missing-field": (lambda r: _summary_edit(r, lambda s: s["scores"][0].pop("task")), "scores[0]"),
    "summary-not-utf8": (lambda r: (r / "summary.json").write_bytes(b"\xff\xfe\x00"), "UTF-8"),
    "summary-missing": (lambda r: (r / "summary.json").unlink(), "summary.json"),
    "interrupted": (lambda r: ((r / "summary.json").unlink(), _manifest(
        r, status="interrupted", argv=["/x/evalharness", "run", "spec.yaml"])), "evalharness run spec.yaml"),
    "killed": (lambda r: ((r / "summary.json").unlink(), _manifest(r, status="running", pid=_dead_pid())),
               "killed"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_reader_commands_on_a_damaged_run(damage: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Old behaviour: JSONDecodeError / AttributeError / TypeError tracebacks, or 'neither a run nor a model'."""
    root = tmp_path / "results"
    base = base_values(prompts=8)
    sentiment_run(root, "good", {"m": base}, finished_at="2026-01-01T00:00:00Z")
    bad = sentiment_run(root, "bad", {"m": shifted(base, 0.01)}, finished_at="2026-01-02T00:00:00Z")
    hurt, says = DAMAGE[damage]
    hurt(bad)
    rd = ("--results-dir", root)
    for args in (("compare", "bad", *rd), ("compare", "good", "bad", "--against", "good", *rd),
                 ("regress", "--baseline", "good:m", "--candidate", "bad:m", *rd),
                 ("report", "bad", "--out", tmp_path / "r.html", *rd), ("plot", "frontier", "bad", "--out",
                                                                         tmp_path / "f", *rd)):
        code, out, err = cli(capsys, *args)
        assert code == 2 and err.startswith("error:") and says in err, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert not (tmp_path / "r.html").exists()
    code, out, err = cli(capsys, "show", "bad", *rd)
    assert "Traceback" not in out + err and (code == 0 or (code == 2 and err.startswith("error:")))
    if damage.startswith("summary") or damage in ("interrupted", "killed"):
        assert code == 2 and says in err
    code, out, err = cli(capsys, "history", "--model", "m", *rd)  # goes on without the damaged run
    assert code == 0 and "good" in out and "Traceback" not in out + err, (out, err)
    if damage.startswith("summary"):
        assert "warning: left out run bad" in err and " bad" not in out


def test_a_tracker_that_cannot_start_leaves_the_table_and_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Old behaviour: the tracker's traceback, and the score table never printed."""
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    (tmp_path / "p.jsonl").write_text('{"id": "p0", "prompt": "The film was"}\n{"id": "p1", "prompt": "A book"}\n')
    code, out, err = cli(capsys, "eval", "--model", "a", "--prompts", tmp_path / "p.jsonl", "--judges", "sentiment",
                         "--backend", "fake", "--max-new-tokens", "8", "--results-dir", tmp_path / "res",
                         "--report-to", "mlflow")
    assert code == 0 and "sentiment" in out and "vader" in out, (out, err)
    [line] = [x for x in err.splitlines() if "could not start" in x]
    assert line.startswith("error: tracker could not start") and "Traceback" not in err


def test_a_failed_paired_test_is_a_short_cell_and_one_note(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Old behaviour: the whole urlopen error text inside the table cell. The fault is injected where a task
    would fetch its data (an offline machine); the table and its note are compare's own."""
    from evalharness.tasks import sentiment
    detail = "<urlopen error [Errno -3] Temporary failure in name resolution> fetching https://example.org/x.csv"

    def offline(*_: Any, **__: Any) -> Any:
        raise OSError(detail)
    monkeypatch.setattr(sentiment, "paired", offline)
    root = tmp_path / "results"
    base = base_values(prompts=6)
    sentiment_run(root, "two", {"a": base, "b": shifted(base, 0.1)})
    code, out, err = cli(capsys, "compare", "two", "--against", "a", "--results-dir", root)
    assert code == 0, err
    assert "download failed: see below" in out and out.count("urlopen error") == 1
    assert f"not paired: sentiment, b: {detail}" in " ".join(out.split())
