"""Results store: crash-safe JSONL, resume that skips finished work, config guard, SQLite index."""

from __future__ import annotations

import json
import sqlite3

import pytest

from evalharness.backends import fake
from evalharness.core.errors import EvalHarnessError
from evalharness.pipeline.evaluate import EvalConfig, run_eval
from evalharness.core.prompts import write_prompts
from evalharness.store import RunStore, read_jsonl


class Killed(BaseException):
    """Stands in for SIGKILL/Ctrl-C (pytest reserves KeyboardInterrupt for itself)."""


def _cfg(tmp_path, **kw) -> EvalConfig:
    prompts = write_prompts([{"id": f"q{i}", "prompt": f"review {i}"} for i in range(10)], tmp_path / "p.jsonl")
    base = dict(models=["a", "b"], reference="a", prompts=str(prompts), backend="fake", n=2,
                results_dir=str(tmp_path / "res"), chunk_size=3, progress=False)
    return EvalConfig(**{**base, **kw})


def test_torn_line_is_dropped_and_repaired(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(p) == [{"a": 1}, {"a": 2}]
    read_jsonl(p, repair=True)
    assert p.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_killed_run_resumes_without_redoing(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    calls, killed = [], []
    real = fake.FakeBackend.generate

    def flaky(self, reqs):
        calls.append(len(reqs))
        if len(calls) == 3 and not killed:
            killed.append(True)
            raise Killed  # the process dies mid-run, after two chunks were written
        return real(self, reqs)

    monkeypatch.setattr(fake.FakeBackend, "generate", flaky)
    with pytest.raises(Killed):
        run_eval(cfg)
    run_dir = next((tmp_path / "res").glob("eval-*"))
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "failed"
    assert len(read_jsonl(run_dir / "generations.jsonl")) == 2 * 3 * 2  # two chunks x 3 prompts x n=2
    with open(run_dir / "generations.jsonl", "ab") as f:
        f.write(b'{"model": "a", "id": "q9"')  # and a torn write
    calls.clear()
    res = run_eval(cfg)
    assert calls == [3, 1, 3, 3, 3, 1]  # only the 4 unfinished prompts of model a, then 10 for b
    gens = read_jsonl(run_dir / "generations.jsonl")
    assert len(gens) == 2 * 10 * 2 and len({(g["model"], g["item_id"], g["sample_index"]) for g in gens}) == 40
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed"] == 1
    # a finished run re-run does no generation at all and gives the same scores
    calls.clear()
    again = run_eval(cfg)
    assert calls == [] and [s.value for s in again.scores] == [s.value for s in res.scores]


def test_scores_count_failures_and_index(tmp_path, monkeypatch):
    from evalharness.judges.classifiers import SentimentJudge
    real = SentimentJudge._score_batch
    monkeypatch.setattr(SentimentJudge, "_score_batch",
                        lambda self, texts: [1 / 0 if "boring" in t else v for t, v in zip(texts, real(self, texts))])
    res = run_eval(_cfg(tmp_path, judges=["sentiment", "kl"]))
    verdicts = RunStore(res.run_dir).verdicts("sentiment", "a")
    failed = [v for v in verdicts if v.status == "error"]
    s = {(x.model, x.metric): x for x in res.scores}
    assert failed and s[("a", "sentiment")].n_skipped == len(failed) and s[("a", "sentiment")].n == 20 - len(failed)
    assert s[("a", "kl")].value == 0.0 and s[("b", "kl")].value != 0.0  # fake 'a' is its own reference
    with sqlite3.connect(res.run_dir.parent / "index.sqlite") as db:
        rows = db.execute("SELECT model, metric, value, n_skipped FROM scores WHERE run_id = ?",
                          (res.run_dir.name,)).fetchall()
    assert ("a", "sentiment", s[("a", "sentiment")].value, len(failed)) in rows


def test_other_config_under_same_run_id_is_refused(tmp_path):
    run_eval(_cfg(tmp_path, run_id="mine"))
    with pytest.raises(EvalHarnessError, match="another config"):
        run_eval(_cfg(tmp_path, run_id="mine", seed=5))


def test_bad_input_writes_nothing(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(Exception, match="bad.jsonl:1"):
        run_eval(_cfg(tmp_path, prompts=str(tmp_path / "bad.jsonl")))
    with pytest.raises(EvalHarnessError, match="unknown judge"):
        run_eval(_cfg(tmp_path, judges=["sentimental"]))
    assert not (tmp_path / "res").exists()


def test_kl_uses_its_own_temperature_one_stream(tmp_path):
    res = run_eval(_cfg(tmp_path, temperature=0.0, judges=["sentiment", "kl"], n=1))
    gens = RunStore(res.run_dir).generations()
    streams = {(g.model, g.params["temperature"]) for g in gens}
    assert streams == {("a", 0.0), ("a", 1.0), ("b", 0.0), ("b", 1.0)} and len(gens) == 40
    store = RunStore(res.run_dir)
    kl = store.verdicts("kl")
    t1 = {g.key for g in gens if g.params["temperature"] == 1.0}
    assert len(kl) == 20 and {v.key for v in kl} == t1  # KL judged the temperature-1 samples only
    assert {v.key for v in store.verdicts("sentiment")} == {g.key for g in gens} - t1


def test_reward_and_kl_share_samples_at_temperature_one(tmp_path):
    res = run_eval(_cfg(tmp_path, temperature=1.0, judges=["sentiment", "kl"], n=2))
    store = RunStore(res.run_dir)
    assert len(store.generations()) == 2 * 10 * 2  # one sample set per model, judged by both tasks
    assert {v.key for v in store.verdicts("kl")} == {v.key for v in store.verdicts("sentiment")}


def test_eval_refuses_endpoint_backends_before_writing(tmp_path):
    with pytest.raises(EvalHarnessError, match="cannot"):
        run_eval(_cfg(tmp_path, backend="openai"))
    assert not (tmp_path / "res").exists()


def test_atomic_writes_get_the_umask_mode_and_leave_nothing_on_failure(tmp_path):
    """One writer (paths.write_atomic) for results, figures, checkpoints' tensors and downloads: files get
    0666 & ~umask like a plain open (mkstemp alone gives 0600, unreadable by the rest of a team sharing a results
    folder), atomic_dir folders 0777 & ~umask, and a writer that fails leaves no file and no temporary behind."""
    import os
    import stat

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evalharness.core.paths import atomic_dir, write_atomic
    from evalharness.analysis.plot import save_figure
    from evalharness.store import write_json_atomic
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "a.json", {"x": 1})
        fig = plt.figure()
        png, svg = save_figure(fig, tmp_path / "fig")
        plt.close(fig)
        with atomic_dir(tmp_path / "ck") as d:
            (d / "w").write_text("1")
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "a.json", png, svg, tmp_path / "ck")}
        assert modes == {"a.json": 0o644, "fig.png": 0o644, "fig.svg": 0o644, "ck": 0o755}, modes
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in svg.read_bytes()[:400]
        os.umask(0o077)
        write_atomic(tmp_path / "private.bin", lambda f: f.write(b"x"), binary=True)
        assert stat.S_IMODE((tmp_path / "private.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)

    def boom(f):
        f.write("half")
        raise OSError("disk full")

    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(OSError, match="disk full"):
        write_atomic(tmp_path / "a.json", boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == before and json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
