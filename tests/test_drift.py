"""Judge drift across runs: regress re-asks today's judge about the older run's answers.

Two runs of one model judged by a fake API judge over real HTTP at one address: with the judge's behaviour
changed between them (it prefers the baseline far more often), the candidate's drop is the judge's, the drift
check measures the shift on the older run's items and the gate says INCONCLUSIVE; with the judge unchanged the
gate gives its usual verdict; ``--no-drift-check`` gives the usual verdict; an endpoint that is gone sends
nothing and says NOT CHECKED.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as st
from test_gate import cli
from test_judge_reliability import arena_spec

from evalharness.pipeline.runner import run_spec
from evalharness.store import RunStore
from evalharness.testing import FakeOpenAI
from evalharness.testing.flip_judge import FlipJudge

N = 40


def two_runs(tmp: Path, changed: bool) -> dict[str, Any]:
    judge = FlipJudge(0.0, seed=1)
    server = FakeOpenAI(judge).start()
    r1 = run_spec(arena_spec(tmp, "old", server.url, N), results_dir=tmp / "results", progress=False)
    if changed:
        judge.bias = -1.0  # today's judge: the policy loses every question it used to win
    r2 = run_spec(arena_spec(tmp, "new", server.url, N), results_dir=tmp / "results", progress=False)
    return {"server": server, "judge": judge, "old": r1.path.name, "new": r2.path.name, "results": tmp / "results"}


@pytest.fixture(scope="module")
def drifted(tmp_path_factory: pytest.TempPathFactory) -> Any:
    runs = two_runs(tmp_path_factory.mktemp("drifted"), changed=True)
    yield runs
    runs["server"].close()


@pytest.fixture(scope="module")
def steady(tmp_path_factory: pytest.TempPathFactory) -> Any:
    runs = two_runs(tmp_path_factory.mktemp("steady"), changed=False)
    yield runs
    runs["server"].close()


def regress(capsys: pytest.CaptureFixture[str], runs: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
    code, out, err = cli(
        capsys,
        "regress",
        "--baseline",
        f"{runs['old']}:a",
        "--candidate",
        f"{runs['new']}:a",
        "--metrics",
        "arena_hard/score",
        "--rounds",
        "50",
        "--results-dir",
        runs["results"],
        *extra,
    )
    return code, out, err


def test_changed_judge_is_drift_and_inconclusive(drifted: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = drifted["judge"].requests
    code, out, err = regress(capsys, drifted, "--json", "--drift-sample", "30")
    rows = json.loads(out)
    assert code == 0, err  # INCONCLUSIVE exits 0 unless --strict
    (row,) = rows
    assert row["verdict"] == "INCONCLUSIVE" and row["verdict_without_drift"] == "FAIL"
    d = row["judge_drift"]
    assert d["status"] == "checked" and d["significant"] and d["n_items"] == 30 and d["n_judgments"] == 60
    assert drifted["judge"].requests - before == 60  # both games of 30 items asked again, never from a cache
    assert "30 items" in err and "60 requests" in err  # the size and cost are said before anything is sent
    # the shift recomputed from the stored old verdicts and the judge's known change: a t over items by hand
    old = {v.key: v.value for v in RunStore(drifted["results"] / drifted["old"]).verdicts("arena_hard", "a")}
    assert d["shift"] < 0 and d["ci_high"] < 0
    assert d["p_value"] < 0.05 and d["flip_rate"] > 0.2
    assert len(old) == 2 * N


def test_drift_shift_and_p_by_hand(drifted: dict[str, Any]) -> None:
    """The drift statistics against scipy on the same per-item differences."""
    from evalharness.analysis.compare import resolve
    from evalharness.workflows.drift import drift_checks

    a, b = (resolve([f"{drifted[k]}:a"], drifted["results"])[0] for k in ("old", "new"))
    (d,) = drift_checks(a, b, ["arena_hard"], sample=N, seed=0)
    old_store, new_store = (RunStore(drifted["results"] / drifted[k]) for k in ("old", "new"))
    # with the sample covering every item, today's verdicts are what the new run stored on the same answers
    old = {v.key: (v.item_id, v.value) for v in old_store.verdicts("arena_hard", "a")}
    new = {v.key: v.value for v in new_store.verdicts("arena_hard", "a")}
    by_item: dict[str, list[float]] = {}
    for k, (item, value) in old.items():
        by_item.setdefault(item, []).append(new[k] - value)
    x = np.array([np.mean(v) for v in by_item.values()])
    t = st.ttest_1samp(x, 0.0)
    lo, hi = t.confidence_interval(0.95)
    assert d.n_items == N
    assert d.shift == pytest.approx(x.mean()) and d.p_value == pytest.approx(t.pvalue)
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_changed_judge_without_drift_check_fails(drifted: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = drifted["judge"].requests
    code, out, _ = regress(capsys, drifted, "--no-drift-check")
    assert code == 1 and out.startswith("FAIL") and "judge drift" not in out
    assert drifted["judge"].requests == before


def test_steady_judge_gives_usual_verdict(steady: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = regress(capsys, steady)
    assert code == 0
    assert "judge drift arena_hard: none detected: shift +0" in out
    assert any(line.startswith("PASS") and "arena_hard/score" in line for line in out.splitlines())


def test_gone_endpoint_sends_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = two_runs(tmp_path, changed=True)
    runs["server"].close()
    code, out, _ = regress(capsys, runs, "--json")
    (row,) = json.loads(out)
    assert code == 1 and row["verdict"] == "FAIL"
    assert row["judge_drift"]["status"] == "not checked" and "nothing sent" in row["judge_drift"]["reason"]


def test_one_run_needs_no_drift_check(steady: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = steady["judge"].requests
    code, out, _ = cli(
        capsys,
        "regress",
        "--baseline",
        f"{steady['old']}:a",
        "--candidate",
        f"{steady['old']}:a",
        "--metrics",
        "arena_hard/score",
        "--rounds",
        "50",
        "--results-dir",
        steady["results"],
        "--json",
    )
    assert code == 0 and "judge_drift" not in json.loads(out)[0] and steady["judge"].requests == before
    assert not math.isnan(json.loads(out)[0]["delta"])


def test_history_drop_with_drift_is_inconclusive(drifted: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    args = (
        "history",
        "--model",
        "a",
        "--task",
        "arena_hard",
        "--metric",
        "score",
        "--results-dir",
        drifted["results"],
        "--json",
    )
    code, out, _ = cli(capsys, *args, "--no-drift-check")
    plain = json.loads(out)
    assert code == 0 and [bool(p.get("drop")) for p in plain] == [False, True]
    code, out, _ = cli(capsys, *args, "--drift-sample", "20")
    checked = json.loads(out)
    assert code == 0 and checked[1]["drop"] is False and checked[1]["drop_without_drift"] is True
    assert checked[1]["judge_drift"]["significant"] and checked[1]["judge_drift"]["n_items"] == 20
    code, out, _ = cli(capsys, *args[:-1])
    assert "INCONCLUSIVE: a drop, but the judge drifted" in out


def test_history_steady_judge_keeps_no_drop(steady: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        capsys,
        "history",
        "--model",
        "a",
        "--task",
        "arena_hard",
        "--metric",
        "score",
        "--results-dir",
        steady["results"],
        "--json",
    )
    assert code == 0 and not any(p.get("drop") for p in json.loads(out))
