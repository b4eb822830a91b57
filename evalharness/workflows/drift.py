"""Judge drift across time: did the checkpoint drop, or did the judge move?

``regress`` and ``history`` pair a checkpoint with one judged in an earlier run. Within one run the judge is one
instrument; across runs an API judge behind a moving alias may have changed. So, when the two sides were judged
in separate runs by an API judge, a seeded subsample of the OLDER run's judgments (the same answers, the same
prompts, rebuilt from its manifest as the HTML report does) is asked again of today's judge at the same endpoint,
with no response cache (a cached verdict cannot show drift), and compared with the stored verdicts item by item:
the mean shift of the verdict value with a t interval over items (a question's games or turns are one cluster),
its p-value (Holm over the tasks checked), and the flip rate of the categorical verdict. A significant shift
makes the gate say INCONCLUSIVE (judge drift) instead of PASS or FAIL.

Nothing is sent when the endpoint does not answer or its key variable is unset: the drift is then reported as
not checked, with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

from evalharness.analysis.compare import ALPHA, Entry, stored_task
from evalharness.analysis.html_report import rebuild_task, stored_session
from evalharness.backends.client import ClientConfig, JudgeClient
from evalharness.backends.http import ChatRequest
from evalharness.backends.probe import check_endpoint
from evalharness.core import stats
from evalharness.core.errors import EvalHarnessError
from evalharness.core.prices import cost_usd
from evalharness.core.records import MAX_SKIPPED_SHARE, content_hash
from evalharness.tasks.base import Pending, display_of
from evalharness.tasks.reliability import RELIABILITY_METRICS, kind_of, share_by_item

DEFAULT_SAMPLE = 50


@dataclass
class Drift:
    """One task's drift check: the older run re-judged by today's judge (``status`` checked or not checked)."""

    task: str
    status: str
    reason: str = ""
    run: str = ""
    model: str = ""
    judge: str = ""
    n_items: int = 0
    n_judgments: int = 0
    n_failed: int = 0
    shift: float | None = None  # today's verdict value minus the stored one, mean over items
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    flip_rate: float | None = None  # share of judgments whose categorical verdict changed (mean over items)
    flip_ci_low: float | None = None
    flip_ci_high: float | None = None
    significant: bool = False
    requests: int = 0
    est_cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}

    def line(self) -> str:
        """One line for the gate's text output."""
        if self.status != "checked":
            return f"judge drift {self.task}: NOT CHECKED ({self.reason})"
        g = lambda x, f: "—" if x is None or x != x else format(x, f)  # noqa: E731
        return (
            f"judge drift {self.task}: {'DRIFT' if self.significant else 'none detected'}: shift "
            f"{g(self.shift, '+.4g')} [{g(self.ci_low, '+.4g')}, {g(self.ci_high, '+.4g')}], p Holm "
            f"{g(self.p_holm, '.3g')}, flips {g(self.flip_rate, '.1%')} [{g(self.flip_ci_low, '.1%')}, "
            f"{g(self.flip_ci_high, '.1%')}], {self.n_judgments} judgments of {self.n_items} items of run {self.run} "
            f"re-judged by {self.judge}"
        )


def drift_checks(
    baseline: Entry,
    candidate: Entry,
    tasks: list[str],
    *,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> list[Drift]:
    """The drift check of each LLM-judged task in ``tasks`` when the two sides come from separate runs (none when
    they share one run: one judge, vouched for within it). Holm over the tasks checked decides ``significant``."""
    if sample < 2:
        raise EvalHarnessError(f"--drift-sample must be at least 2, got {sample}")
    if baseline.store.path.resolve() == candidate.store.path.resolve():
        return []
    older = min((baseline, candidate), key=lambda e: str(e.store.manifest().get("started_at") or ""))
    out = []
    for task in dict.fromkeys(tasks):
        try:
            module = stored_task(older.store, task)[0]
        except EvalHarnessError:
            continue
        if kind_of(module) is not None:
            out.append(_check_task(older, task, sample, seed, log))
    checked = [d for d in out if d.status == "checked"]
    for d, p in zip(checked, stats.holm([d.p_value for d in checked])):
        d.p_holm = None if math.isnan(p) else p
        d.significant = d.p_holm is not None and d.p_holm < ALPHA
    return out


def apply_drift(rows: list[dict[str, Any]], drifts: list[Drift]) -> None:
    """Put each task's drift beside its gate rows (``judge_drift``); a significant drift turns PASS and FAIL into
    INCONCLUSIVE, keeping the verdict it would have had (``verdict_without_drift``)."""
    by_task = {d.task: d for d in drifts}
    for r in rows:
        d = by_task.get(r["task"])
        if d is None:
            continue
        r["judge_drift"] = d.to_dict()
        if d.significant and r["verdict"] in ("PASS", "FAIL"):
            r["verdict_without_drift"], r["verdict"] = r["verdict"], "INCONCLUSIVE"
            r["inconclusive_reason"] = "judge drift"


def _endpoint(manifest: dict[str, Any]) -> tuple[str, str, str | None] | str:
    """(base_url, model, api key variable) of the run's API judge, or why there is none to ask again."""
    judge = manifest.get("judge") or {}
    if not judge:
        return "the run has no judge"
    if judge.get("type") == "openai" and judge.get("base_url"):
        return str(judge["base_url"]), str(judge["model"]), judge.get("api_key_env")
    model, sep, url = str(judge.get("id") or "").rpartition("@")
    if sep and url.startswith(("http://", "https://")) and judge.get("protocol") != "label-logprobs":
        return url, model, None  # a run from before the endpoint was recorded: no key variable known
    return "not an API judge (a local judge is the same model in every run)"


def _asks(payload: Any) -> ChatRequest | None:
    if isinstance(payload, ChatRequest):
        return payload
    return next((p for p in payload if isinstance(p, ChatRequest)), None) if isinstance(payload, tuple) else None


def _subsample(pending: list[Pending], sample: int, seed: int) -> list[Pending]:
    """Every judgment of ``sample`` items chosen by a seeded hash (an item's games or turns go together)."""
    items = sorted({p.item_id for p in pending}, key=lambda i: content_hash("drift", seed, i))[:sample]
    keep = set(items)
    return [p for p in pending if p.item_id in keep]


def _estimate(chosen: list[Pending], old: dict[str, Any], model: str) -> tuple[int, float | None]:
    """Prompt tokens (4 characters a token) and the estimated cost of asking ``chosen`` once."""
    asked = [_asks(p.payload) for p in chosen]
    prompt = sum(len(json.dumps(r.messages)) for r in asked if r is not None) / 4
    completion = sum(len(str(old[p.key].raw or "")) for p in chosen) / 4
    return int(prompt), cost_usd(model, prompt, completion)


def _check_task(older: Entry, task_name: str, sample: int, seed: int, log: Callable[[str], None]) -> Drift:
    store, model = older.store, older.model
    skip = Drift(task=task_name, status="not checked", run=store.run_id, model=model)
    endpoint = _endpoint(store.manifest())
    if isinstance(endpoint, str):
        return replace(skip, reason=endpoint)
    base_url, judge_model, key_env = endpoint
    module, task = rebuild_task(store, task_name)
    if task is None:
        return replace(skip, reason="the task's items could not be rebuilt from the run")
    old = {v.key: v for v in store.verdicts(task_name, model) if v.status == "ok"}
    session = stored_session(store, model, store.generations(model))
    client = JudgeClient(ClientConfig(base_url=base_url, model=judge_model, api_key_env=key_env, cache=False))
    task.env.judge = cast(Any, client)
    pending = [p for p in task.judgments(session) if p.key in old and _asks(p.payload) is not None]
    chosen = _subsample(pending, sample, seed)
    judge = f"{judge_model}@{base_url}"
    skip.judge = judge
    if len({p.item_id for p in chosen}) < 2:
        return replace(skip, reason="fewer than 2 judged items to ask again")
    tokens, cost = _estimate(chosen, old, judge_model)
    log(
        f"judge drift check {task_name}: asking {judge} again about {len(chosen)} judgments of "
        f"{len({p.item_id for p in chosen})} items of run {store.run_id} ({model}): {len(chosen)} requests, "
        f"~{tokens} prompt tokens, " + (f"~${cost:.4f}" if cost is not None else "no price known for this model")
    )
    try:
        check_endpoint(base_url, judge_model, api_key_env=key_env)
    except EvalHarnessError as e:
        return replace(skip, reason=f"nothing sent: {e}")
    try:
        new = task.judge(session, chosen)
    finally:
        client.close()
    checked = replace(skip, status="checked", requests=len(chosen), est_cost_usd=cost)
    return _compare(checked, module, chosen, old, new)


def _compare(drift: Drift, module: str, chosen: list[Pending], old: dict[str, Any], new: list[Any]) -> Drift:
    """Fill ``drift`` with the paired shift and flip rate of today's verdicts against the stored ones."""
    found = kind_of(module)
    assert found is not None  # drift_checks checks only LLM-judged tasks
    category = found[1]
    unit_of = display_of(module).unit_of or (lambda item: item)  # MT-Bench: a question's turns are one cluster
    diffs, items, flips = [], [], []
    for p, v in zip(chosen, new):
        if v.status != "ok":
            drift.n_failed += 1
            continue
        before = float(old[p.key].value)
        diffs.append(float(v.value) - before)
        items.append(unit_of(p.item_id))
        flips.append((items[-1], category(float(v.value)) != category(before)))
    drift.n_judgments, drift.n_items = len(diffs), len(set(items))
    if drift.n_failed > MAX_SKIPPED_SHARE * len(chosen) or drift.n_items < 2:
        drift.status = "not checked"
        drift.reason = f"{drift.n_failed} of {len(chosen)} judgments failed or did not parse today"
        return drift
    mean, se, lo, hi, n = stats.cluster_mean_ci(diffs, items)
    drift.shift, drift.ci_low, drift.ci_high = mean, lo, hi
    drift.p_value = stats.t_p_value(mean, se, n - 1)
    drift.flip_rate, drift.flip_ci_low, drift.flip_ci_high, _ = share_by_item(flips)
    return drift


def history_drift(
    points: list[dict[str, Any]], *, sample: int = DEFAULT_SAMPLE, seed: int = 0, log: Callable[[str], None]
) -> None:
    """``history``: for each drop (``compare.mark_drops``) from a point of another run, the drift check of its task
    (``judge_drift``); a significant drift makes the drop inconclusive (``drop`` False, ``drop_without_drift``)."""
    from pathlib import Path

    from evalharness.analysis.compare import run_entries
    from evalharness.store import RunStore

    for p in points:
        prev = p.get("prev")
        if not p.get("drop") or prev is None or Path(prev[0]).resolve() == Path(p["path"]).resolve():
            continue
        if p["metric"] in RELIABILITY_METRICS:  # the judge's own figure: its change is the question itself
            continue
        try:
            older = run_entries(RunStore(Path(prev[0])), [prev[1]])[0]
            newer = run_entries(RunStore(Path(p["path"])), [p["model"]])[0]
        except EvalHarnessError as e:
            log(f"judge drift not checked for {p['model']} {p['task']}: {e}")
            continue
        for d in drift_checks(older, newer, [p["task"]], sample=sample, seed=seed, log=log):
            p["judge_drift"] = d.to_dict()
            if d.significant:
                p["drop"], p["drop_without_drift"] = False, True
