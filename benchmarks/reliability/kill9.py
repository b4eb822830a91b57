"""kill -9 at random moments: each trial SIGKILLs a CLI subprocess after a random delay, runs the same
command again to the end, and compares with an uninterrupted run: scores, records (no key duplicated or
lost), every JSON/JSONL file parses, and (judged runs) how many judge requests the kill cost."""

from __future__ import annotations

import json
import random
import shutil
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from common import DEMO, cli, corrupt_files, popen, run_to_end

from evalharness.testing import FakeOpenAI
from evalharness.testing.fake_openai import benchmark_judge


judge_responder = benchmark_judge


def write_prompts(path: Path, n: int) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"q{i}", "prompt": f"The film number {i} was"}) + "\n")
    return path


def run_spec(path: Path, url: str, extra_judge: str = "") -> Path:
    path.write_text(f"""\
name: kill9
models: [a, b]
backend: fake
generation: {{max_new_tokens: 32, n: 1}}
judge: {{type: openai, model: judge-x, base_url: "{url}", max_retries: 2, concurrency: 8{extra_judge}}}
tasks:
  alpaca_eval: {{eval_set: {DEMO}/alpaca_eval/eval_set.json, baseline: {DEMO}/alpaca_eval/baseline.json,
                 lc_support_dir: {DEMO}/alpaca_eval}}
  arena_hard: {{data_dir: {DEMO}/arena_hard, questions: {DEMO}/arena_hard/questions.jsonl, baseline: demo-baseline,
               bootstrap_rounds: 10}}
  mt_bench: {{questions: {DEMO}/mt_bench/questions.jsonl, judge_prompts: {DEMO}/mt_bench/judge_prompts.jsonl,
             reference_answers: {DEMO}/mt_bench/reference_answer/demo-reference.jsonl}}
""")
    return path


def run_records(run: Path) -> dict[str, Any]:
    """Scores and record keys of a finished run folder."""
    gens = [json.loads(l) for l in (run / "generations.jsonl").read_bytes().splitlines()]
    verdicts = [json.loads(l) for l in (run / "verdicts.jsonl").read_bytes().splitlines()]
    scores = sorted((s["model"], s["task"], s["metric"], s["value"], s["n"], s["n_skipped"])
                    for s in (json.loads(l) for l in (run / "scores.jsonl").read_bytes().splitlines()))
    return {"gen_keys": Counter(g["key"] for g in gens),
            "verdict_keys": Counter((v["task"], v["model"], v["key"]) for v in verdicts),
            "gen_text": {g["key"]: g["text"] for g in gens}, "scores": scores,
            "status": json.loads((run / "manifest.json").read_text())["status"]}


class Stage:
    """One command under test: ``setup`` makes a trial folder's inputs; ``outcome`` reads what it left."""

    name: str
    judged = False
    marker = "results/*/manifest.json"  # exists once the run began writing (None: writes only at the end)

    def command(self, folder: Path, url: str | None) -> list[str]: ...
    def outcome(self, folder: Path) -> dict[str, Any]: ...
    def setup(self, folder: Path, url: str | None) -> None: ...


class EvalStage(Stage):
    name = "eval (fake backend: sentiment, toxicity, kl)"

    def setup(self, folder: Path, url: str | None) -> None:
        write_prompts(folder / "prompts.jsonl", 60)

    def command(self, folder: Path, url: str | None) -> list[str]:
        return cli("eval", "--model", "a", "--model", "b", "--reference", "a", "--backend", "fake", "--n", "2",
                   "--judges", "sentiment,toxicity,kl", "--prompts", "prompts.jsonl", "--run-id", "r",
                   "--results-dir", "results", "--json")

    def outcome(self, folder: Path) -> dict[str, Any]:
        return run_records(folder / "results" / "r")


class RunStage(Stage):
    name = "run (AlpacaEval, Arena-Hard, MT-Bench; fake judge server)"
    judged = True

    def setup(self, folder: Path, url: str | None) -> None:
        run_spec(folder / "spec.yaml", url or "")

    def command(self, folder: Path, url: str | None) -> list[str]:
        return cli("run", "spec.yaml", "--results-dir", "results", "--json")

    def outcome(self, folder: Path) -> dict[str, Any]:
        runs = [p.parent for p in (folder / "results").glob("*/manifest.json")]
        assert len(runs) == 1, runs
        return run_records(runs[0])


class PairsStage(Stage):
    name = "pairs (tiny hf model, k=4, sentiment)"
    marker = None

    def __init__(self, model: Path) -> None:
        self.model = model

    def setup(self, folder: Path, url: str | None) -> None:
        write_prompts(folder / "prompts.jsonl", 12)

    def command(self, folder: Path, url: str | None) -> list[str]:
        return cli("pairs", "--model", str(self.model), "--prompts", "prompts.jsonl", "--out", "out/pairs.jsonl",
                   "--k", "4", "--max-new-tokens", "12")

    def outcome(self, folder: Path) -> dict[str, Any]:
        rows = [json.loads(l) for l in (folder / "out" / "pairs.jsonl").read_bytes().splitlines()]
        return {"gen_keys": Counter(r.get("id") or json.dumps(r.get("prompt"), sort_keys=True) for r in rows),
                "verdict_keys": Counter(), "gen_text": {}, "scores": sorted(json.dumps(r, sort_keys=True) for r in rows),
                "status": "complete"}


class TrainStage(Stage):
    """DPO on the tiny model, a checkpoint every 2 of 8 steps: killed anywhere (mid-step, between an optimizer
    update and its checkpoint, mid-checkpoint), the same command resumes to the uninterrupted run's weights and
    metrics. Compared to float tolerance (rounded to 6 significant digits), as the trainer's resume tests do."""

    name = "train (tiny model, DPO, 8 steps, a checkpoint every 2)"
    marker = "out/run/metrics.jsonl"

    def __init__(self, model: Path) -> None:
        self.model = model

    def setup(self, folder: Path, url: str | None) -> None:
        from trainkit import write_pairs
        write_pairs(folder / "pairs.jsonl")

    def command(self, folder: Path, url: str | None) -> list[str]:
        return cli("train", "--algorithm", "dpo", "--base", str(self.model), "--data", "pairs.jsonl",
                   "--output-dir", "out/run", "--lr", "5e-3", "--max-steps", "8", "--save-every", "2",
                   "--batch-size", "4", "--warmup-ratio", "0.2")

    def outcome(self, folder: Path) -> dict[str, Any]:
        from safetensors.torch import load_file
        run = folder / "out" / "run"
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_bytes().splitlines()]
        timing = ("step_time_s", "samples_per_s", "elapsed_s")
        metrics = [sorted((k, float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in r.items() if k not in timing)
                   for r in rows]
        w = load_file(str(run / "checkpoint-8" / "model.safetensors"))
        digest = sorted((k, float(f"{t.double().sum():.6g}"), float(f"{t.double().norm():.6g}")) for k, t in w.items())
        man = json.loads((run / "train_manifest.json").read_text())
        return {"gen_keys": Counter(r["step"] for r in rows), "verdict_keys": Counter(man["checkpoints"]),
                "gen_text": {}, "scores": [metrics, digest, man["checkpoints"]],
                "status": "complete" if man["status"] == "finished" else man["status"]}


def _timed(stage: Stage, folder: Path, args: list[str], extra: dict[str, str], log: Path) -> tuple[int, float, float]:
    """Run to the end; exit code, wall time, and when the run began writing (``stage.marker``)."""
    t0 = time.monotonic()
    proc = popen(args, folder, extra, log)
    began = None
    while proc.poll() is None:
        if began is None and stage.marker and list(folder.glob(stage.marker)):
            began = time.monotonic() - t0
        time.sleep(0.01)
    wall = time.monotonic() - t0
    return proc.returncode, wall, began if began is not None else 0.0


def _trial(stage: Stage, work: Path, i: int, ref: dict[str, Any], ref_requests: int, t_work: float,
           rng: random.Random) -> dict[str, Any]:
    folder = work / f"trial{i:02d}"
    folder.mkdir()
    server = FakeOpenAI(judge_responder).start() if stage.judged else None
    cache = {"EVALHARNESS_CACHE": str(folder / "cache")}
    try:
        url = server.url if server else None
        stage.setup(folder, url)
        # A uniform moment of the writing phase (after imports and model loading, which write nothing).
        delay = rng.uniform(0.0, 1.0) * t_work
        proc = popen(stage.command(folder, url), folder, cache, log=folder / "killed.log")
        while stage.marker and not list(folder.glob(stage.marker)) and proc.poll() is None:
            time.sleep(0.005)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        killed, in_flight = proc.poll() is None, server.in_flight if server else 0
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid_run = killed and (stage.marker is None or bool(list(folder.glob(stage.marker))))
        rc, _ = run_to_end(stage.command(folder, url), folder, cache, log=folder / "resumed.log")
        got = stage.outcome(folder) if rc == 0 else None
        requests = server.requests if server else 0
        distinct = len({json.dumps(b, sort_keys=True) for b in server.received}) if server else 0
    finally:
        if server:
            server.close()
    corrupt = corrupt_files(folder / "results") + corrupt_files(folder / "out") if rc == 0 else []
    dup = lost = 0
    mismatch = rc != 0 or got is None
    if got is not None:
        for name in ("gen_keys", "verdict_keys"):
            dup += sum(c - 1 for c in got[name].values() if c > 1)
            lost += len(set(ref[name]) - set(got[name]))
        mismatch = got["scores"] != ref["scores"] or got["gen_text"] != ref["gen_text"] or got["status"] != "complete"
    out = {"trial": i, "delay_s": round(delay, 2), "killed": killed, "killed_mid_run": mid_run, "resume_rc": rc,
           "mismatch": mismatch, "corrupt": corrupt, "duplicated": dup, "lost": lost}
    if stage.judged:
        out.update(requests=requests, distinct_judgments=distinct, extra_requests=requests - ref_requests,
                   in_flight_at_kill=in_flight)
    if not (mismatch or corrupt or dup or lost):
        shutil.rmtree(folder)  # keep failing trials for inspection
    return out


def run_stage(stage: Stage, trials: int, work: Path, seed: int, workers: int = 3) -> dict[str, Any]:
    """``trials`` kill-and-resume trials of ``stage`` against one uninterrupted reference run."""
    ref_dir = work / "reference"
    ref_dir.mkdir(parents=True)
    server = FakeOpenAI(judge_responder).start() if stage.judged else None
    try:
        stage.setup(ref_dir, server.url if server else None)
        rc, t_ref, began = _timed(stage, ref_dir, stage.command(ref_dir, server.url if server else None),
                                  {"EVALHARNESS_CACHE": str(ref_dir / "cache")}, ref_dir / "run.log")
        if rc != 0:
            raise SystemExit(f"{stage.name}: the uninterrupted run failed (see {ref_dir / 'run.log'})")
        ref_requests = server.requests if server else 0
    finally:
        if server:
            server.close()
    ref = stage.outcome(ref_dir)
    rng = random.Random(seed)
    delays = [random.Random(rng.random()) for _ in range(trials)]
    with ThreadPoolExecutor(workers) as pool:
        rows = list(pool.map(lambda i: _trial(stage, work, i, ref, ref_requests, (t_ref - began) * 1.2, delays[i]),
                             range(trials)))
    summary = {"stage": stage.name, "trials": trials, "kills": sum(r["killed"] for r in rows),
               "kills_mid_run": sum(r["killed_mid_run"] for r in rows),
               "mismatches": sum(r["mismatch"] for r in rows), "corrupt_files": sum(len(r["corrupt"]) for r in rows),
               "duplicated_records": sum(r["duplicated"] for r in rows), "lost_records": sum(r["lost"] for r in rows),
               "uninterrupted_wall_s": round(t_ref, 2),
               "writing_phase_s": round(t_ref - began, 2), "records_per_run": len(ref["gen_keys"]) + len(ref["verdict_keys"])}
    if stage.judged:
        summary.update(judgments_per_run=ref_requests, extra_judge_requests=sum(r["extra_requests"] for r in rows),
                       requests_in_flight_at_kills=sum(r["in_flight_at_kill"] for r in rows))
    return {"summary": summary, "trials": rows}


def main(work: Path, trials: int, slow_trials: int, seed: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    from tiny import build_model
    model = build_model(work / "tiny-model", seed=0, logit_scale=30.0)
    stages: list[tuple[Stage, int]] = [(EvalStage(), trials), (RunStage(), trials), (PairsStage(model), slow_trials),
                                       (TrainStage(model), slow_trials)]
    out = []
    for k, (stage, n) in enumerate(stages):
        log(f"kill -9: {stage.name}: {n} trials")
        res = run_stage(stage, n, work / f"stage{k}", seed + k)
        s = res["summary"]
        log(f"  trials {s['trials']}, kills {s['kills']} ({s['kills_mid_run']} in the writing phase), "
            f"mismatches {s['mismatches']}, corrupt files {s['corrupt_files']}, duplicated {s['duplicated_records']}, "
            f"lost {s['lost_records']}" + (f", extra judge requests {s['extra_judge_requests']} "
                                          f"(requests in flight at the kills: {s['requests_in_flight_at_kills']})"
                                          if stage.judged else ""))
        out.append(res)
    return {"stages": out}
