"""AlpacaEval 2 task end to end through the run loop (fake policy, fake OpenAI judge over HTTP, local tiny
judge) and bd.fetch."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import math
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from evalharness.tasks import benchdata as bd
from evalharness.backends.client import ClientConfig, JudgeClient
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.core.records import Score
from evalharness.store import RunStore
from evalharness.tasks.alpaca_eval import task
from evalharness.testing import FakeOpenAI, Fault, Reply
from evalharness.testing.fake_openai import request_text
from taskkit import POLICY, RecordingBackend, run_task

N = 12
P_MODEL = (0.8, 0.5, 0.1)  # P(the judge prefers the model's output) for item i, by i % 3
TASK = "alpaca_eval"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "user-cache"))


def run(tmp_path: Path, cfg: task.Config, policy: Any, judge: Any,
        judge_name: str = "judge@fake") -> tuple[list[Score], RunStore]:
    return run_task(tmp_path, TASK, cfg, policy, judge, judge_name, max_new_tokens=64)


def client(server: FakeOpenAI) -> JudgeClient:
    """No response cache: a resume that asked the judge again must show as judge calls."""
    return JudgeClient(ClientConfig(base_url=server.url, model="judge", cache=False, max_retries=1,
                                    backoff_base_s=0.01, backoff_max_s=0.02, timeout_s=5))


def support_dir(path: Path) -> Path:
    """Synthetic df_gamed.csv shaped like the HF dataset's (as in test_metrics_alpaca_eval; no network here)."""
    rng, n = np.random.default_rng(0), 805
    difficulty = rng.normal(0, 1, n)
    frames = []
    for name, delta in [("verbose", rng.normal(-1, 1, n)), ("concise", rng.normal(1, 1, n))]:
        preference = 1 / (1 + np.exp(1.5 * np.tanh(delta) - 0.8 * difficulty))
        frames.append(pd.DataFrame({"model": name, "index": np.arange(n), "preference": preference,
                                    "std_delta_len": delta, "instruction_difficulty": difficulty,
                                    "not_gamed_baseline": False}))
    path.mkdir()
    pd.concat(frames).to_csv(path / "df_gamed.csv", index=False)
    return path


def judge_responder(items: list[dict[str, Any]]):
    """A judge that knows each item's verdict: it finds the baseline output in the prompt, sees in which
    slot the model's output was shown, and puts P_MODEL on that slot's token ('m' first, 'M' second)."""
    def respond(body: dict[str, Any]) -> Reply:
        text = request_text(body)
        i = next(i for i, it in enumerate(items) if it["baseline"] in text)
        if i == 10:  # no m/M among the alternatives: unparsed
            return Reply("Based", top_logprobs=[[("Based", -0.1), ("The", -2.5)]])
        first_slot = text.split('"model_identifier": "M"')[0]
        model_tok, base_tok = ("M", "m") if items[i]["baseline"] in first_slot else ("m", "M")
        p = P_MODEL[i % 3]
        alts = sorted([(model_tok, math.log(p)), (base_tok, math.log(1 - p)), ("Based", -9.0)], key=lambda a: -a[1])
        return Reply(alts[0][0], top_logprobs=[alts])
    return respond


def test_end_to_end_with_fake_judge_faults_and_resume(benchdata: Path, tmp_path: Path) -> None:
    # The LC support folder is part of the config (so of the run id): absent on the first run, filled in
    # before the resume, which then finds the same run folder and adds the LC columns.
    lc_dir = tmp_path / "lc"
    cfg = task.Config(data_dir=str(benchdata), limit=N, lc_support_dir=str(lc_dir))
    items, _ = task.load_items(cfg)
    assert {ae.is_swapped(it["instruction"]) for it in items} == {True, False}  # both orders exercised
    policy = RecordingBackend()
    with FakeOpenAI(judge_responder(items)) as server:
        server.on(items[3]["instruction"], Fault.http(500))  # beyond max_retries: error
        server.on(items[7]["instruction"], Fault.malformed())  # also retried, also an error
        judge = client(server)
        scores, store = run(tmp_path, cfg, policy, judge)
        judge.close()
        assert len(policy.requests) == N and server.requests == (N - 2) + 2 * 2  # two failing items, two attempts each
        by_metric = {s.metric: s for s in scores}
        win = by_metric["win_rate"]
        parsed = [i for i in range(N) if i not in (3, 7, 10)]
        assert win.value == pytest.approx(100 * np.mean([P_MODEL[i % 3] for i in parsed]))
        assert (win.n, win.n_skipped, win.extra["n_error"], win.extra["n_unparsed"]) == (9, 3, 2, 1)
        counts = [sum(i % 3 == k for i in parsed) for k in range(3)]
        assert [win.extra[k] for k in ("n_wins", "n_draws", "n_wins_base")] == counts == [3, 2, 4]
        verdicts = {v.item_id: v for v in store.verdicts(TASK, POLICY)}
        # judge_id: who judged (the run's judge name); judge_version: a hash of template, parser, judge
        # decoding and protocol, the same on every verdict and on the score.
        assert (win.task, win.model, win.task_version, win.judge_id) == (TASK, POLICY, f"2/first{N}", "judge@fake")
        assert re.fullmatch("[0-9a-f]{12}", win.judge_version)
        assert {v.judge_version for v in verdicts.values()} == {win.judge_version}
        assert (win.baseline, win.higher_is_better) == (items[0]["generator"], True)
        assert win.decoding == {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64, "n": 1}
        lc = by_metric["length_controlled_winrate"]
        assert lc.value is None and "df_gamed.csv" in lc.extra["unavailable"]

        assert len(verdicts) == N and {v.model for v in verdicts.values()} == {POLICY}
        for it in items:
            v = verdicts[task._key(it["instruction"])]
            assert v.order == ("BA" if ae.is_swapped(it["instruction"]) else "AB")
        assert [verdicts[task._key(items[i]["instruction"])].status for i in (3, 7, 10)] == \
            ["error", "error", "unparsed"]
        assert all(verdicts[task._key(items[i]["instruction"])].value is None for i in (3, 7, 10))
        first = [r for r in server.received if items[0]["baseline"] in request_text(r)][0]
        assert (first["temperature"], first["max_tokens"], first["logprobs"], first["top_logprobs"]) == (1, 1, True, 5)

        # Resume (no response cache, so a broken resume would show as judge calls): the server has
        # recovered. No new generations; only the two failed judgments are asked again.
        server.reset()
        n_generated = len(policy.requests)
        support_dir(lc_dir)
        judge = client(server)
        scores, resumed = run(tmp_path, cfg, policy, judge)
        assert resumed.path == store.path  # the same run folder
        assert len(policy.requests) == n_generated and server.requests == 2
        assert judge.usage["cache_hits"] == 0 and judge.usage["items"] == 2
        win = scores[0]
        assert (win.n, win.n_skipped, win.extra["n_error"]) == (11, 1, 0)
        assert win.value == pytest.approx(100 * np.mean([P_MODEL[i % 3] for i in range(N) if i != 10]))
        judge.close()

    # The official-format files reproduce the same numbers through the file-based entry point.
    folder = store.path / TASK / POLICY
    metrics = ae.metrics_from_annotations_file(folder / "annotations.json", model_outputs=folder / "model_outputs.json",
                                               lc_support_dir=lc_dir)
    by_metric = {s.metric: s for s in scores}
    assert by_metric["length_controlled_winrate"].value is not None
    assert metrics["win_rate"] == pytest.approx(win.value) and metrics["standard_error"] == pytest.approx(win.stderr)
    assert metrics["discrete_win_rate"] == pytest.approx(by_metric["discrete_win_rate"].value)
    assert metrics["length_controlled_winrate"] == pytest.approx(by_metric["length_controlled_winrate"].value)
    assert metrics["avg_length"] == by_metric["avg_length"].value
    assert (metrics["n_total"], metrics["n_skipped"], metrics["n_draws"]) == (11, 1, 3)
    outputs = json.loads((folder / "model_outputs.json").read_text())
    gens = {g.item_id: g for g in store.generations(POLICY)}
    assert [o["output"] for o in outputs] == [gens[task._key(it["instruction"])].text for it in items]
    assert {o["generator"] for o in outputs} == {POLICY}


def test_imported_outputs_must_match_the_eval_set(benchdata: Path, tmp_path: Path) -> None:
    cfg = task.Config(data_dir=str(benchdata), limit=3)
    items, full = task.load_items(cfg)
    outputs = [{"instruction": it["instruction"], "output": "x"} for it in items]
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(outputs + [{"instruction": sorted(full - {i["instruction"] for i in items})[0],
                                            "output": "beyond the limit"}]))
    assert task.imported_outputs(good, items, full) == ["x", "x", "x"]
    policy = RecordingBackend()
    scores, store = run(tmp_path / "gen-only", task.Config(data_dir=str(benchdata), limit=3, model_outputs=str(good)),
                        policy, None)
    assert scores == [] and policy.requests == []  # no judge: outputs written, nothing generated or scored
    written = json.loads((store.path / TASK / POLICY / "model_outputs.json").read_text())
    assert [(r["instruction"], r["output"], r["generator"]) for r in written] == \
        [(it["instruction"], "x", POLICY) for it in items]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(outputs[:2] + [{"instruction": "Not an AlpacaEval instruction", "output": "y"}]))
    with pytest.raises(InputError, match="not in the eval set"):
        run(tmp_path / "run", task.Config(data_dir=str(benchdata), limit=3, model_outputs=str(bad)),
            RecordingBackend(), None)
    assert not (tmp_path / "run" / "results").exists()  # checked before anything is written


def test_identical_outputs_are_ties_without_a_judge_call(benchdata: Path, tmp_path: Path) -> None:
    class NoCalls:
        model_id = "none"

        def complete(self, requests: list[Any], progress: bool = False) -> list[Any]:
            if requests:  # an empty batch asks nothing
                raise AssertionError("the judge must not be asked about identical outputs")
            return []

    cfg = task.Config(data_dir=str(benchdata), limit=3, lc_support_dir=str(tmp_path / "no-lc"))
    items, _ = task.load_items(cfg)
    same = tmp_path / "same.json"
    same.write_text(json.dumps([{"instruction": it["instruction"], "output": it["baseline"]} for it in items]))
    cfg.model_outputs = str(same)
    scores, store = run(tmp_path, cfg, RecordingBackend(), NoCalls(), "none")
    win = scores[0]
    assert (win.value, win.n, win.extra["n_draws"], win.n_skipped) == (50.0, 3, 3, 0)
    verdicts = store.verdicts(TASK, POLICY)
    assert [(v.status, v.value, v.meta) for v in verdicts] == [("ok", 1.5, {"identical_outputs": True})] * 3


@pytest.mark.parametrize("vocab", ["tiny", "with m/M"])
def test_local_judge_runs_offline(vocab: str, benchdata: Path, tiny_model: Path, tmp_path: Path) -> None:
    """The local judge answers in the label space: it scores 'm' and 'M' after the prompt, so every verdict
    is parsed, and its value is the official parser's reading of those two log-probs, unswapped."""
    from tiny import build_model

    from evalharness.judges.local import LocalChatJudge

    # The tiny test model's vocabulary has no 'm'/'M' (both <unk>): the judge refuses it. One whose vocabulary
    # has them gives log-probs that differ, so preferences that differ.
    model = tiny_model if vocab == "tiny" else build_model(tmp_path / "judge", words=["m", "M", "the", "a", "best"])
    cfg = task.Config(data_dir=str(benchdata), limit=4, lc_support_dir=str(tmp_path / "no-lc"))
    judge = LocalChatJudge(str(model))
    if vocab == "tiny":  # every label an <unk>: verdicts that mean nothing are refused, not recorded
        with pytest.raises(EvalHarnessError, match="cannot tell the labels"):
            run(tmp_path, cfg, RecordingBackend(), judge, "local")
        return
    scores, store = run(tmp_path, cfg, RecordingBackend(), judge, "local")
    win = scores[0]
    verdicts = store.verdicts(TASK, POLICY)
    assert len(verdicts) == 4 and judge.usage["items"] == 4
    assert (win.n, win.n_skipped, win.extra["n_error"], win.extra["n_unparsed"]) == (4, 0, 0, 0)
    by_item = {v.item_id: v for v in verdicts}
    values = []
    for it in task.load_items(cfg)[0]:
        v = by_item[task._key(it["instruction"])]
        assert v.status == "ok" and v.order == ("BA" if ae.is_swapped(it["instruction"]) else "AB")
        top = v.raw["logprobs"]["content"][0]["top_logprobs"]
        assert sorted(t["token"] for t in top) == ["M", "m"]  # exactly the two labels, scored
        # The official parser on the stored raw completion, mapped back to (baseline, model) order.
        assert v.value == pytest.approx(ae.unswap_preference(ae.preference_from_completion(v.raw), v.order == "BA"))
        values.append(v.value)
    assert len(set(values)) == 4 and all(1 <= x <= 2 for x in values)
    # The win rate is the mean preference for the model's output, from these verdicts.
    assert win.value == pytest.approx(100 * np.mean([x - 1 for x in values]))


# ------------------------------------------------------------------ benchdata.fetch
@pytest.fixture
def http_dir(tmp_path: Path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_fetch_downloads_verifies_and_caches(http_dir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = http_dir
    data = b'{"question_id": 1}\n'
    (root / "q.jsonl").write_bytes(data)
    good = bd.DataFile("demo/q.jsonl", f"{url}/q.jsonl", hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(bd.REGISTRY, "demo/q", good)
    path = bd.fetch("demo/q")
    assert path == tmp_path / "user-cache" / "benchdata" / "demo" / "q.jsonl" and path.read_bytes() == data
    (root / "q.jsonl").unlink()  # served from the verified cache from now on
    assert bd.fetch("demo/q") == path
    local = tmp_path / "local"
    (local / "demo").mkdir(parents=True)
    (local / "demo" / "q.jsonl").write_bytes(data)
    assert bd.fetch("demo/q", local_dir=local) == local / "demo" / "q.jsonl"
    (local / "demo" / "q.jsonl").write_bytes(b"edited")
    with pytest.raises(bd.ChecksumError):
        bd.fetch("demo/q", local_dir=local)


def test_fetch_checksum_mismatch_leaves_nothing(http_dir: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, url = http_dir
    (root / "q.jsonl").write_bytes(b"tampered\n")
    monkeypatch.setitem(bd.REGISTRY, "demo/q", bd.DataFile("demo/q.jsonl", f"{url}/q.jsonl", "0" * 64))
    with pytest.raises(bd.ChecksumError, match="differs from the pinned"):
        bd.fetch("demo/q")
    assert list((tmp_path / "user-cache" / "benchdata" / "demo").iterdir()) == []
    monkeypatch.setitem(bd.REGISTRY, "demo/gone", bd.DataFile("demo/gone", f"{url}/gone", "0" * 64))
    with pytest.raises(EvalHarnessError, match="could not download"):  # HTTP 404
        bd.fetch("demo/gone")
    assert list((tmp_path / "user-cache" / "benchdata" / "demo").iterdir()) == []
    with pytest.raises(EvalHarnessError, match="downloads are off"):
        bd.fetch("alpaca_eval/eval_set", download_missing=False)


def test_registry_matches_benchdata_provenance(benchdata: Path) -> None:
    """Every registered file: its URL names the commit and path provenance.tsv gives, and the local copy
    has the pinned sha256."""
    rows = {r[0]: r for r in (line.split("\t") for line in (benchdata / "provenance.tsv").read_text().splitlines()[1:])}
    checked = 0
    for name, entry in sorted(bd.REGISTRY.items()):
        if entry.path not in rows:
            assert entry.path.startswith("alpaca_eval/lc_support/"), name  # HF-only files, not in benchdata
            continue
        _, repo, upstream, commit, _, _, sha = rows[entry.path]
        assert entry.sha256 == sha, name
        if entry.url is not None:
            assert entry.url == f"https://raw.githubusercontent.com/{repo}/{commit}/{upstream}", name
        assert bd.sha256_file(benchdata / entry.path) == sha, name
        checked += 1
    assert checked >= 40

