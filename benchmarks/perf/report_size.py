"""Size and opening time of `evalharness report` at 10 models x 805 AlpacaEval items.

One finished run is written through the real store API (``RunStore.open`` / ``add_generations`` /
``add_verdicts`` / ``finish``) with a synthetic 805-instruction eval set: the task itself
(``AlpacaEvalTask``) builds the requests and the generations are keyed by ``Session.key`` as the run
loop keys them, so the report goes down its real path (the task rebuilt from the manifest). Answers are
seeded random words with AlpacaEval-2-like lengths (log-normal, median ~1,600 characters), judgments
carry an official-shaped ``raw_completion`` with the m/M log-probs, 1% are unparsed.

Measured: seconds to build the page (``write_report``), its size (raw and gzip), and in headless
Chromium (the flags of tests/test_html_report.py): navigation start to first render
(``window.__reportReadyMs``, set when the table, figures and the first page of viewer rows are drawn),
the wall time of ``driver.get`` to ready, re-rendering the viewer for another model B, and opening one
item. Median of ``--repeats`` page loads.

    python benchmarks/perf/report_size.py [--models 10] [--items 805] [--repeats 3]
        [--out benchmarks/perf/results/report_size.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from evalharness.core import provenance
from evalharness.analysis.html_report import write_report
from evalharness.core.records import SCHEMA_VERSION, GenRecord, Score, Verdict
from evalharness.core.stats import mean_ci
from evalharness.store import RunStore, write_json_atomic
from evalharness.tasks.alpaca_eval.task import AlpacaEvalTask, Config
from evalharness.tasks.base import GenerationSettings, RunEnv, Session

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "report_size.json"
WORDS = ("the a model answer explains why because first second finally however example code function returns "
         "value list data step result important note consider using approach simple clear").split()
JUDGE = "gpt-4-1106-preview"


def _text(rng: random.Random, chars: int) -> str:
    out, n = [], 0
    while n < chars:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def build_run(root: Path, data: Path, n_models: int, n_items: int, seed: int = 0) -> str:
    """One finished run: ``n_models`` models x ``n_items`` AlpacaEval instructions, keyed as the run loop keys them."""
    rng = random.Random(seed)
    eval_set = [{"instruction": f"Instruction {i}: " + _text(rng, rng.randint(60, 400)), "dataset": f"set-{i % 5}"}
                for i in range(n_items)]
    baseline = [{**e, "output": _text(rng, int(rng.lognormvariate(7.4, 0.5))), "generator": "gpt4_1106_preview"}
                for e in eval_set]
    write_json_atomic(data / "eval_set.json", eval_set)
    write_json_atomic(data / "baseline.json", baseline)
    gen = GenerationSettings(max_new_tokens=2048)
    cfg = Config(eval_set=str(data / "eval_set.json"), baseline=str(data / "baseline.json"))
    task = AlpacaEvalTask("alpaca_eval", cfg, RunEnv(generation=gen, out_dir=root, judge_name=JUDGE), gen)
    task.setup()
    models = [f"ckpt-{k}" for k in range(n_models)]
    identities = {m: {"backend": "fake", "model": f"fake:{m}", "options": {}} for m in models}
    run_id = "perf-report"
    manifest = {"run_id": run_id, "kind": "run", "schema_version": SCHEMA_VERSION, "started_at": provenance.now(),
                "config": {"models": [{"name": m, **identities[m]} for m in models], "generation": vars(gen),
                           "tasks": {"alpaca_eval": json.loads(json.dumps(task.identity(), default=str))}},
                "tasks": {"alpaca_eval": {"module": "evalharness.tasks.alpaca_eval.task", "version": task.VERSION}},
                "models": [{"name": m, "spec": m, "revision": None} for m in models], "backend": "fake",
                "judge": {"name": JUDGE, "id": JUDGE, "protocol": "generate"}, **provenance.environment()}
    store = RunStore.open(run_id, manifest, root)
    scores = []
    for k, m in enumerate(models):
        session = Session(m, identities[m], lambda: None, [])
        gens, verdicts, annotations = [], [], []
        for it, req in zip(task.items, task._requests):
            text = _text(rng, int(rng.lognormvariate(7.4 + 0.02 * k, 0.5)))
            gens.append(GenRecord(key=session.key(req), model=m, item_id=req.id, sample_index=0, text=text,
                                  n_tokens=len(text) // 4, params=req.params.to_dict(), model_id=f"fake:{m}"))
            p_m = 1 / (1 + math.exp(-(len(text) - len(it["baseline"])) / 800 - 0.05 * k + rng.gauss(0, 1)))
            raw = {"finish_reason": "length", "index": 0, "message": {"role": "assistant", "content": "m"},
                   "logprobs": {"content": [{"token": "m", "logprob": math.log(p_m),
                                             "top_logprobs": [{"token": "m", "logprob": math.log(p_m)},
                                                              {"token": "M", "logprob": math.log(1 - p_m)}]}]}}
            ok = rng.random() > 0.01
            pref = 2 - p_m if ok else None
            verdicts.append(Verdict(req.id, JUDGE, "perf", "ok" if ok else "unparsed", pref, raw=raw,
                                    order=rng.choice(("AB", "BA")), task="alpaca_eval", model=m, key=f"{req.id}/perf"))
            annotations.append({"instruction": it["instruction"], "dataset": it["dataset"], "output_1": it["baseline"],
                                "generator_1": it["generator"], "output_2": text, "generator_2": m,
                                "preference": pref})
        store.add_generations(gens)
        store.add_verdicts(verdicts)
        write_json_atomic(store.path / "alpaca_eval" / m / "annotations.json", annotations)
        wins = [100 * (a["preference"] - 1) for a in annotations if a["preference"] is not None]
        wr, se, lo, hi = mean_ci(wins)
        scores.append(Score(task="alpaca_eval", metric="win_rate", model=m, value=wr, n=len(wins),
                            n_skipped=n_items - len(wins), stderr=se, ci_low=lo, ci_high=hi, task_version="2/perf",
                            judge_id=JUDGE, judge_version="perf", baseline="gpt4_1106_preview", higher_is_better=True))
    store.finish(scores, {"run_id": run_id, "scores": [s.to_dict() for s in scores]}, provenance.now())
    return run_id


def browse(page: Path, repeats: int, profile: Path) -> dict[str, Any]:
    """Load the page ``repeats`` times in headless Chromium; the median of each timing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    opts = Options()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "chromedriver"), options=opts)
    ready_ms, get_s, switch_ms, open_ms, phases = [], [], [], [], []
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            driver.get(page.as_uri())
            WebDriverWait(driver, 120).until(lambda d: d.execute_script("return window.__reportReady === true"))
            get_s.append(time.perf_counter() - t)
            ready_ms.append(float(driver.execute_script("return window.__reportReadyMs")))
            phases.append(driver.execute_script("return window.__reportTimings"))
            rows = len(driver.find_elements(By.CSS_SELECTOR, "#viewer-rows tr.item-row"))
            t = time.perf_counter()
            Select(driver.find_element(By.ID, "viewer-b")).select_by_index(1)
            driver.find_elements(By.CSS_SELECTOR, "#viewer-rows tr.item-row")
            switch_ms.append(1000 * (time.perf_counter() - t))
            t = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, "#viewer-rows tr.item-row").click()
            driver.find_element(By.CSS_SELECTOR, "#viewer-rows tr.detail-row pre.answer")
            open_ms.append(1000 * (time.perf_counter() - t))
        summary = driver.find_element(By.ID, "viewer-summary").text
    finally:
        driver.quit()
    return {"navigation_to_first_render_ms": statistics.median(ready_ms), "all_ready_ms": ready_ms,
            "driver_get_to_ready_s": statistics.median(get_s), "switch_model_b_ms": statistics.median(switch_ms),
            "open_item_ms": statistics.median(open_ms), "rows_rendered_per_page": rows, "viewer_summary": summary,
            # before the script runs: reading and parsing the HTML (the blob's text); then JSON.parse; then the DOM
            **{k: statistics.median(p[k] for p in phases) for k in ("script_start_ms", "parse_ms", "render_ms")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--items", type=int, default=805)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root, data = Path(tmp) / "results", Path(tmp) / "data"
        data.mkdir()
        t = time.perf_counter()
        run_id = build_run(root, data, args.models, args.items)
        build_s = time.perf_counter() - t
        page = Path(tmp) / "report.html"
        t = time.perf_counter()
        write_report([run_id], page, against="ckpt-0", results_dir=root)
        report_s = time.perf_counter() - t
        raw = page.read_bytes()
        chrome = (browse(page, args.repeats, Path(tmp) / "profile")
                  if shutil.which("chromium") and shutil.which("chromedriver") else None)
    result = {"models": args.models, "items": args.items, "build_run_s": build_s, "write_report_s": report_s,
              "html_bytes": len(raw), "html_mib": len(raw) / 2**20, "gzip_bytes": len(gzip.compress(raw)),
              "chromium": chrome, "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
              "cpus": os.cpu_count(),
              "machine": platform.machine()}
    print(f"{args.models} models x {args.items} items: page {len(raw) / 2**20:.1f} MiB "
          f"({result['gzip_bytes'] / 2**20:.1f} MiB gzip), built in {report_s:.1f} s")
    if chrome:
        print(f"chromium: navigation to first render {chrome['navigation_to_first_render_ms']:.0f} ms (median of "
              f"{args.repeats}), driver.get to ready {chrome['driver_get_to_ready_s']:.2f} s, switch model B "
              f"{chrome['switch_model_b_ms']:.0f} ms, open an item {chrome['open_item_ms']:.0f} ms; script starts at "
              f"{chrome['script_start_ms']:.0f} ms, JSON.parse {chrome['parse_ms']:.0f} ms, render "
              f"{chrome['render_ms']:.0f} ms (load average {result['load_average_1min']:.1f})")
    else:
        print("chromium/chromedriver not installed: no opening time")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
