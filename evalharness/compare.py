"""Comparison tables across eval runs: each checkpoint against the SFT model on the same prompts.

The difference to SFT is paired by prompt (both models answered the same held-out prompts), so its CI
is the t-interval of per-prompt differences, tighter and more honest than comparing two marginal CIs.
A checkpoint "beats SFT" only if that paired CI excludes 0 and its mean clears SFT's own 95% CI.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EvalHarnessError
from .records import Score
from .stats import mean_ci
from .store import RunStore, find_run


def _per_prompt(store: RunStore, model: str, task: str) -> dict[str, float]:
    """Per-prompt mean of a task's ok verdicts (samples of one prompt are averaged first)."""
    by: dict[str, list[float]] = defaultdict(list)
    for v in store.verdicts(task, model):
        if v.status == "ok":
            by[v.item_id].append(float(v.value))  # type: ignore[arg-type]
    return {k: float(np.mean(v)) for k, v in by.items()}


def paired_delta(a: tuple[RunStore, str], b: tuple[RunStore, str], task: str) -> dict[str, Any]:
    """mean(a - b) over prompts both answered, with SE and 95% CI; ``a``/``b`` are (run, model)."""
    pa, pb = _per_prompt(*a, task), _per_prompt(*b, task)
    common = sorted(set(pa) & set(pb))
    if len(common) < 2:
        return {"delta": None, "n_prompts": len(common)}
    m, se, lo, hi = mean_ci([pa[k] - pb[k] for k in common])
    return {"delta": m, "stderr": se, "ci_low": lo, "ci_high": hi, "n_prompts": len(common)}


def _checkpoint_info(entry: dict[str, Any]) -> dict[str, Any]:
    for cand in dict.fromkeys(c for c in (entry.get("path"), entry.get("spec")) if c):
        path = Path(cand) / "evalharness_manifest.json"
        if path.is_file():
            return dict(json.loads(path.read_text()))
    return {}


def comparison_table(runs: list[str | Path], *, base: str, reward_metric: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Rows (SFT first, then checkpoints by algorithm, run and step) and the verdict on the best checkpoint."""
    entries = []
    for run in runs:
        store = RunStore(find_run(str(run)))
        scores = store.scores()
        infos = {m.get("name") or m.get("spec"): m for m in store.manifest().get("models", [])}
        for model in dict.fromkeys(s.model for s in scores):
            mine = [s for s in scores if s.model == model]
            reward = next((s for s in mine if s.metric == reward_metric), None)
            if reward is None:
                raise EvalHarnessError(f"run {store.run_id} has no '{reward_metric}' score for {model}")
            got = {s.metric: s for s in mine if s.task == reward.task or s.metric not in ("length",)}
            got[reward_metric] = reward
            entries.append((store, model, got, infos.get(model, {"spec": model})))
    base_entry = next((e for e in entries if e[1] == base), None)
    rows = []
    for store, model, got, entry in entries:
        info = _checkpoint_info(entry)
        r, kl, length = got[reward_metric], got.get("kl"), got.get("length")
        row: dict[str, Any] = {
            "model": model, "run": store.run_id, "algorithm": info.get("algorithm", "sft" if model == base else "?"),
            "run_name": info.get("run_name"), "step": info.get("step"), "hparams": info.get("hparams", {}),
            # what the run asked for (defaults left out), for the table's "setting" column
            "setting": (info.get("train_config") or {}).get("hparams", info.get("hparams", {})),
            "reward": r.value, "reward_ci": [r.ci_low, r.ci_high], "n": r.n, "n_skipped": r.n_skipped,
            "reward_judge": f"{r.judge_id} {r.extra.get('judge_desc', r.judge_version)}",
            "kl": kl.value if kl else None, "kl_ci": [kl.ci_low, kl.ci_high] if kl else None,
            "length": length.value if length else None}
        if base_entry is not None and model != base:
            row["delta"] = paired_delta((store, model), (base_entry[0], base), r.task)
        rows.append(row)
    from .train.algorithms import ALGORITHMS
    order = {"sft": -1, **{a: i for i, a in enumerate(ALGORITHMS)}}
    rows.sort(key=lambda x: (order.get(x["algorithm"], len(order)), x["run_name"] or "", x["step"] or 0))
    trained = [x for x in rows if x["model"] != base and x["reward"] is not None]
    verdict = None
    if base_entry is not None and trained:
        sft = next(x for x in rows if x["model"] == base)
        best = max(trained, key=lambda x: x["reward"])
        d = best.get("delta", {})
        half = (sft["reward_ci"][1] - sft["reward_ci"][0]) / 2 if sft["reward_ci"][0] is not None else None
        beats = bool(d.get("delta") is not None and d["ci_low"] > 0 and half is not None
                     and best["reward"] - sft["reward"] > half)
        verdict = {"best_model": best["model"], "best_run": best["run_name"], "best_step": best["step"],
                   "best_reward": best["reward"], "sft_reward": sft["reward"], "sft_ci_halfwidth": half,
                   "paired_delta": d, "beats_sft": beats, "metric": reward_metric}
    return rows, verdict


def print_comparison(rows: list[dict[str, Any]], verdict: dict[str, Any] | None, title: str = "") -> None:
    """A rich table like the SimPO paper's main table: one row per model, reward and KL with 95% CIs."""
    from rich.console import Console
    from rich.table import Table

    from .plot import display_name

    def ci(v: float | None, lohi: list[float | None] | None, digits: int = 3) -> str:
        if v is None:
            return "—"
        if not lohi or lohi[0] is None or lohi[0] != lohi[0]:
            return f"{v:.{digits}f}"
        return f"{v:.{digits}f} [{lohi[0]:.{digits}f}, {lohi[1]:.{digits}f}]"

    metric = verdict["metric"] if verdict else "reward"
    t = Table(title=title or None)
    for col in ("method", "setting", "step", f"{metric} (95% CI)", "Δ vs SFT (paired 95% CI)", "KL nats (95% CI)", "length"):
        t.add_column(col, justify="left" if col in ("method", "setting") else "right")
    best = verdict["best_model"] if verdict else None
    for x in rows:
        d = x.get("delta") or {}
        delta = ci(d.get("delta"), [d.get("ci_low"), d.get("ci_high")]) if d.get("delta") is not None else "—"
        setting = " ".join(f"{k}={v}" for k, v in x.get("setting", x["hparams"]).items())
        name = "SFT" if x["algorithm"] == "sft" else display_name(x["algorithm"])
        t.add_row(("* " if x["model"] == best else "") + name, setting, str(x["step"] or "—"),
                  ci(x["reward"], x["reward_ci"]), delta, ci(x["kl"], x["kl_ci"]),
                  f"{x['length']:.1f}" if x["length"] is not None else "—")
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)  # a log file or pipe: keep each row on one line
    console.print(t)
    if verdict:
        d = verdict["paired_delta"]
        word = "beats" if verdict["beats_sft"] else "does NOT clearly beat"
        console.print(f"best checkpoint (*): {verdict['best_run']} step {verdict['best_step']}: {metric} "
                      f"{verdict['best_reward']:.3f} vs SFT {verdict['sft_reward']:.3f} "
                      f"(SFT 95% CI ±{verdict['sft_ci_halfwidth']:.3f}); paired Δ {d.get('delta', float('nan')):+.3f} "
                      f"[{d.get('ci_low', float('nan')):+.3f}, {d.get('ci_high', float('nan')):+.3f}] over "
                      f"{d.get('n_prompts')} prompts: {word} SFT", soft_wrap=True)
