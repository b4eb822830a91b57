"""Security: a canary API key given through the env var a spec names never appears in any byte a run
wrote (results, manifests, caches, logs, error output, offline W&B and MLflow exports), on success, on 401s and with the endpoint down;
model names and run ids cannot write outside the results root; response caches are private."""

from __future__ import annotations

import importlib.util
import secrets
import stat
from pathlib import Path
from typing import Any, Callable

from common import cli, run_to_end
from faults import free_port
from kill9 import judge_responder, run_spec

from evalharness.testing import FakeOpenAI, Fault

VAR = "EH_RELIABILITY_CANARY_KEY"


def _grep(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {n[:12]!r}..." for n in needles if n in data]
    return hits


def main(work: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    key = "sk-canary-" + secrets.token_hex(16)
    env = {VAR: key, "EVALHARNESS_CACHE": str(work / "cache")}
    extra = f", api_key_env: {VAR}"
    sent = 0
    scenarios = {}
    with FakeOpenAI(judge_responder) as server:  # 1. a normal run
        folder = work / "ok"
        folder.mkdir()
        run_spec(folder / "spec.yaml", server.url, extra)
        # the trackers' offline exports (W&B run files, the MLflow SQLite store) are grepped with everything else
        trackers = [t for t in ("wandb", "mlflow") if importlib.util.find_spec(t) is not None]
        report_to = ["--report-to", ",".join(trackers)] if trackers else []
        scenarios["success"] = run_to_end(cli("run", "spec.yaml", "--results-dir", "results", "--json", *report_to),
                                          folder, {**env, "WANDB_MODE": "offline"}, log=folder / "log.txt")[0]
        sent += sum(h.get("authorization") == f"Bearer {key}" for h in server.headers)
    with FakeOpenAI(lambda body: Fault.http(401)) as server:  # 2. every request refused
        folder = work / "unauthorized"
        folder.mkdir()
        run_spec(folder / "spec.yaml", server.url, extra)
        scenarios["401"] = run_to_end(cli("run", "spec.yaml", "--results-dir", "results"), folder, env,
                                      log=folder / "log.txt")[0]
        sent += sum(h.get("authorization") == f"Bearer {key}" for h in server.headers)
    folder = work / "down"  # 3. nothing listening
    folder.mkdir()
    run_spec(folder / "spec.yaml", f"http://127.0.0.1:{free_port()}/v1", extra.replace("}", "") + ", max_retries: 0")
    scenarios["endpoint down"] = run_to_end(cli("run", "spec.yaml", "--results-dir", "results"), folder, env,
                                            log=folder / "log.txt")[0]
    hits = _grep(work, [key.encode(), key.encode("utf-16-le")])
    scanned = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())

    # Names that would escape the results root.
    escapes = {}
    root = work / "names"
    root.mkdir()
    (root / "prompts.jsonl").write_text('{"id": "q", "prompt": "hi"}\n')
    for label, args in {"run id ../": ["--run-id", "../escaped"], "run id absolute": ["--run-id", str(root / "abs")],
                        "model name ../": ["--model", "../../escaped-model"]}.items():
        rc, _ = run_to_end(cli("eval", "--model", "a", *args, "--backend", "fake", "--judges", "sentiment",
                               "--prompts", "prompts.jsonl", "--results-dir", "inner/results"), root, env,
                           log=root / "log.txt")
        outside = [str(p) for p in root.rglob("*") if p.is_file() and "inner/results" not in str(p)
                   and p.name not in ("prompts.jsonl", "log.txt")]
        escapes[label] = {"exit_code": rc, "files_outside_results_root": outside}
    cache_files = [p for p in (work / "cache").rglob("*")]
    modes = {str(p.relative_to(work)): oct(stat.S_IMODE(p.stat().st_mode)) for p in cache_files}
    private = all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in cache_files) and bool(cache_files)
    out = {"tracker_exports_scanned": trackers, "canary_requests_carrying_key": sent, "exit_codes": scenarios, "bytes_scanned": scanned,
           "canary_hits": hits, "name_escapes": escapes,
           "names_escaping": sum(bool(e["files_outside_results_root"]) for e in escapes.values()),
           "cache_modes": modes, "cache_private": private}
    log(f"  canary key: sent in {sent} requests, found in {len(hits)} of the files written ({scanned} bytes scanned: "
        f"results, manifests, caches, logs, error output); names escaping the results root: {out['names_escaping']} "
        f"of {len(escapes)}; response cache private (no group/other bits): {private}")
    return out
