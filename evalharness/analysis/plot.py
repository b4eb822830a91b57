"""The reward-vs-KL frontier: one point per checkpoint, read from finished eval runs.

x is the sequence-level KL to the reference (k1, nats), y a classifier reward, both with their 95% CIs:
the DPO paper's Fig. 2 (left) and the ODPO paper's sentiment-control plots. DESIGN: a plot names its
reward classifier and transform, and never mixes scores whose keys (judge, version, reference, task) differ.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from evalharness.core.errors import EvalHarnessError
from evalharness.core.paths import write_atomic
from evalharness.core.records import KEY_FIELDS, Score, score_ci, swept_task
from evalharness.store import RunStore, checkpoint_manifest, comparable, find_run, manifest_models
from evalharness.training.algorithms import ALGORITHMS

KL_METRIC = "kl"
NOT_REWARDS = ("kl", "kl_k3", "length")  # metrics an eval run writes beside the judges' rewards
CHECKPOINT_MANIFEST = "evalharness_manifest.json"
SFT = "sft"
UNKNOWN = "unknown"
# Config fields that change what a number means: other prompts, decoding or response length (a sequence-sum
# KL grows with length) make points from two runs incomparable even under one judge.
COMPARABLE_CONFIG = ("prompts_hash", "temperature", "top_p", "max_new_tokens")

# An algorithm's display name and fixed colour are its row in train/algorithms.py (ALGORITHMS), read when drawn, so
# it keeps its colour from plot to plot; black is the SFT reference, grey a checkpoint that does not say what
# trained it.
_EXTRA = ("#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354")
_JUDGE_NAMES = {"vader": "VADER"}


@dataclass
class FrontierPoint:
    """One checkpoint on the frontier; ``*_lo``/``*_hi`` are the 95% CI (NaN where the run had none)."""

    label: str
    algorithm: str
    run_name: str | None
    step: int | None
    hparams: dict[str, Any]
    reward: float
    reward_lo: float
    reward_hi: float
    kl: float
    kl_lo: float
    kl_hi: float
    model: str
    run_id: str = ""
    higher_is_better: bool = True  # the reward Score's direction (toxicity: False); fronts and tables read it


def _norm(algorithm: str) -> str:
    return algorithm.lower().replace("-", "").replace("_", "")


def _load_run(run: str | Path, results_dir: Path | None) -> tuple[str, dict[str, Any], list[Score]]:
    store = RunStore(find_run(str(run), results_dir))
    manifest, path = store.manifest(), store.path
    manifest_models(manifest, path)  # a models field of the wrong shape names the file here
    run_id = manifest.get("run_id", path.name)
    if manifest.get("kind") not in ("eval", "run"):
        raise EvalHarnessError(
            f"run '{run_id}' ({path}) is a '{manifest.get('kind')}' run; the frontier needs "
            "evaluation runs with a kl task (`evalharness eval` or `evalharness run`)"
        )
    return run_id, manifest, store.scores()


def _pick_reward_metric(runs: list[tuple[str, dict[str, Any], list[Score]]], wanted: str | None) -> str:
    present = sorted(
        {s.metric for _, _, scores in runs for s in scores}
        | {f"{s.task}/{s.metric}" for _, _, scores in runs for s in scores}
    )
    rewards = [m for m in present if "/" not in m and m not in NOT_REWARDS]
    if wanted is not None:
        if wanted in NOT_REWARDS:
            raise EvalHarnessError(
                f"'{wanted}' is not a reward; reward metrics present: {', '.join(rewards) or 'none'}"
            )
        if wanted not in present:
            raise EvalHarnessError(
                f"no '{wanted}' scores in these runs; reward metrics present: {', '.join(rewards) or 'none'}"
            )
        return wanted
    if not rewards:
        raise EvalHarnessError("these runs have no reward metric (only " + ", ".join(present or ["no scores"]) + ")")
    if len(rewards) > 1:
        raise EvalHarnessError(
            f"several reward metrics in these runs: {', '.join(rewards)}; pick one with --reward-metric"
        )
    return rewards[0]


def _check_one_key(what: str, used: list[tuple[str, Score]]) -> tuple[str, ...] | None:
    """DESIGN: never put scores with different keys on one axis (``store.comparable`` decides). Names the
    differing fields, both values and the runs."""
    for run_id, s in used[1:]:
        ok, why = comparable(used[0][1], s)
        if not ok:
            fields_ = [f for f in KEY_FIELDS if f"{f}: " in why]
            raise EvalHarnessError(
                f"{what} scores differ in {', '.join(fields_)} and cannot share one plot: {why} "
                f"(runs {used[0][0]} and {run_id})"
            )
    return used[0][1].key if used else None


def _check_comparable_configs(runs: list[tuple[str, dict[str, Any], list[Score]]]) -> None:
    """Schema-1 scores carried no decoding and no prompt-set version: compare those runs' configs instead."""
    runs = [r for r in runs if r[1].get("schema_version", 1) < 2]
    for name in COMPARABLE_CONFIG:
        values = {run_id: (m.get("config") or {}).get(name) for run_id, m, _ in runs}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            raise EvalHarnessError(
                f"runs differ in {name} ({', '.join(f'{r}: {v}' for r, v in values.items())}); "
                "their rewards and KLs are not comparable on one plot"
            )


def _identity(
    spec: str, info: dict[str, Any], is_reference: bool
) -> tuple[str, str | None, int | None, dict[str, Any], str]:
    """(algorithm, run_name, step, hparams, label) from the checkpoint's own manifest (nanoGPT: self-describing).

    A model without one is the SFT point only if it is the KL reference: a checkpoint whose folder moved
    must not be drawn as the reference star."""
    ckpt = checkpoint_manifest({"path": info.get("path"), "spec": spec}, CHECKPOINT_MANIFEST)
    if not ckpt:
        return (SFT, None, None, {}, f"SFT ({spec})") if is_reference else (UNKNOWN, None, None, {}, spec)
    algorithm = str(ckpt.get("algorithm") or UNKNOWN).lower()
    run_name, step, hparams = ckpt.get("run_name"), ckpt.get("step"), dict(ckpt.get("hparams") or {})
    step = int(step) if step is not None else None
    if _norm(algorithm) == SFT:
        return SFT, run_name, step, hparams, f"SFT ({spec})"
    label = (run_name or f"{algorithm} {_hparams_str(hparams)}".strip()) + (f" step {step}" if step is not None else "")
    return algorithm, run_name, step, hparams, label


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _ci(x: float | None) -> float:
    return float(x) if x is not None else math.nan


def _same(a: FrontierPoint, b: FrontierPoint) -> bool:
    fields_ = ("reward", "reward_lo", "reward_hi", "kl", "kl_lo", "kl_hi")
    return all(
        getattr(a, f) == getattr(b, f) or (math.isnan(getattr(a, f)) and math.isnan(getattr(b, f))) for f in fields_
    )


def frontier_points(
    runs: Sequence[str | Path], *, reward_metric: str | None = None, results_dir: Path | None = None
) -> tuple[list[FrontierPoint], dict[str, Any]]:
    """One point per model with both a reward and a KL score, across eval runs (ids or folders).

    ``meta`` names the reward metric, both judges (id, version), the reference, the task, and the models
    left out (``skipped``: count, ``skipped_models``: why). Refuses runs whose keys or decoding differ.
    """
    if not runs:
        raise EvalHarnessError("no runs given")
    loaded = [_load_run(r, results_dir) for r in runs]
    metric = _pick_reward_metric(loaded, reward_metric)
    _check_comparable_configs(loaded)
    points: dict[str, FrontierPoint] = {}
    revisions: dict[str, str | None] = {}
    used_reward: list[tuple[str, Score]] = []
    used_kl: list[tuple[str, Score]] = []
    skipped: list[str] = []
    for run_id, manifest, scores in loaded:
        infos = {m.get("name") or m.get("spec"): m for m in manifest.get("models", [])}
        by_model: dict[str, dict[str, Score]] = defaultdict(dict)
        for s in scores:  # a metric by name, or task/metric where two tasks share a metric name (score)
            by_model[s.model].setdefault(s.metric, s)
            by_model[s.model][f"{s.task}/{s.metric}"] = s
        for spec, ms in by_model.items():
            rw, kl = ms.get(metric), ms.get(KL_METRIC)
            missing = [name for name, s in ((metric, rw), (KL_METRIC, kl)) if s is None or not _finite(s.value)]
            if missing:
                skipped.append(f"{spec} (run {run_id}): no {' or '.join(missing)} value")
                continue
            assert rw is not None and kl is not None
            info = infos.get(spec, {})
            p = _point(spec, run_id, rw, kl, infos)
            if spec in points:
                if not _same(points[spec], p):
                    raise EvalHarnessError(
                        f"model '{spec}' is in runs {points[spec].run_id} and {run_id} with different scores "
                        f"(revisions {revisions[spec]} and {info.get('revision')}); plot one of them"
                    )
                continue
            points[spec], revisions[spec] = p, info.get("revision")
            used_reward.append((run_id, rw))
            used_kl.append((run_id, kl))
    rkey = _check_one_key(f"reward '{metric}'", used_reward)
    kkey = _check_one_key("KL", used_kl)
    meta: dict[str, Any] = {
        "runs": [r for r, _, _ in loaded],
        "reward_metric": metric,
        "higher_is_better": direction(list(points.values())),
        "task": rkey[0] if rkey else None,
        "reward_judge_id": rkey[3] if rkey else None,
        "reward_judge_version": _desc(used_reward[0][1]) if used_reward else None,
        "kl_judge_id": kkey[3] if kkey else None,
        "kl_judge_version": _desc(used_kl[0][1]) if used_kl else None,
        "reference_model": kkey[5] if kkey else None,
        "skipped": len(skipped),
        "skipped_models": skipped,
    }
    return list(points.values()), meta


def _point(spec: str, run_id: str, rw: Score, kl: Score, infos: dict[str, dict[str, Any]]) -> FrontierPoint:
    """A model's frontier point; it is the SFT star only if it is the KL reference (by name or revision)."""
    info = infos.get(spec, {})
    ref = (
        kl.extra.get("reference_name") or kl.baseline
    )  # the baseline is the reference's identity; the name is kept beside it
    ref_rev = (infos.get(ref) or {}).get("revision") if ref else None
    is_ref = spec == ref or (ref_rev is not None and info.get("revision") == ref_rev)
    algorithm, run_name, step, hparams, label = _identity(spec, info, is_ref)
    return FrontierPoint(
        label,
        algorithm,
        run_name,
        step,
        hparams,
        float(rw.value or 0),
        _ci(rw.ci_low),
        _ci(rw.ci_high),
        float(kl.value or 0),
        _ci(kl.ci_low),
        _ci(kl.ci_high),
        spec,
        run_id,
        rw.higher_is_better is not False,
    )


def _desc(score: Score) -> str:
    """A judge's readable description (package, transform); schema-1 scores kept it in judge_version."""
    return str(score.extra.get("judge_desc") or score.judge_version)


def direction(points: list[FrontierPoint]) -> bool:
    """The points' reward direction (True: higher is better); one plot never mixes the two."""
    found = {p.higher_is_better for p in points}
    if len(found) > 1:
        raise EvalHarnessError("these points mix a higher-is-better and a lower-is-better reward: one direction a plot")
    return found.pop() if found else True


def pareto_front(points: list[FrontierPoint], *, higher_is_better: bool | None = None) -> list[FrontierPoint]:
    """Points no other point beats: none has KL <= and reward >= (<= if lower is better), one strictly.

    The direction is the points' own (their reward Score's ``higher_is_better``) unless given. Sorted by
    KL. Exact ties are all kept: neither of two equal points dominates the other.
    """
    sign = 1.0 if (direction(points) if higher_is_better is None else higher_is_better) else -1.0

    def dominates(a: FrontierPoint, b: FrontierPoint) -> bool:
        ra, rb = sign * a.reward, sign * b.reward
        return a.kl <= b.kl and ra >= rb and (a.kl < b.kl or ra > rb)

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p.kl, -sign * p.reward))


def _transform(judge_version: str) -> str:
    """The reward's meaning from a judge version; package pins and weight hashes are provenance, not meaning."""
    parts = []
    for part in (p.strip() for p in judge_version.split(";")):
        if not part or "==" in part or part.startswith(("weights=", "template=", "max_length=", "dtype=", "code=")):
            continue
        if part.startswith("reward="):
            part = part.removeprefix("reward=")
        elif part.startswith("labels="):  # HFClassifierJudge: labels={"POSITIVE": 1.0}:<hash>
            try:
                weights = json.loads(part.removeprefix("labels=").rsplit(":", 1)[0])
                part = " + ".join(f"p({lab})" if w == 1 else f"{w:g}·p({lab})" for lab, w in weights.items())
            except (json.JSONDecodeError, AttributeError):
                pass
        parts.append(part)
    return ", ".join(parts)


def reward_axis_label(metric: str, judge_id: str, judge_version: str, higher_is_better: bool = True) -> str:
    """E.g. 'sentiment reward: VADER (compound+1)/2' (DESIGN: rewards name their classifier and transform)."""
    name = judge_id.removeprefix("hf-classifier:")
    name = _JUDGE_NAMES.get(name, name)
    transform = _transform(judge_version)
    what = metric if metric.endswith("reward") else f"{metric} reward"  # rm: judges' metric is "reward"
    what = what if higher_is_better else f"{metric} (lower is better)"
    return f"{what}: {name}" + (f" {transform}" if transform else "")


def kl_axis_label(kl_judge_version: str, reference: str | None) -> str:
    """E.g. 'KL to reference smollm2 (nats, sequence-level k1)', from the KL judge version."""
    parts = kl_judge_version.split(";")
    level = {"sequence-sum": "sequence-level", "token-mean": "token-mean"}.get(parts[0], parts[0])
    estimator = parts[-1] if parts[-1] in ("k1", "k3") else ""
    unit = "nats" if "nats" in parts else "units unknown"
    return f"KL to reference {reference or '?'} ({unit}, {level} {estimator})".replace(" )", ")")


def _colours(algorithms: list[str]) -> dict[str, str]:
    extra = sorted(a for a in algorithms if _norm(a) not in ALGORITHMS and a not in (SFT, UNKNOWN))
    out = {a: ALGORITHMS[_norm(a)].colour for a in algorithms if _norm(a) in ALGORITHMS}
    out.update({a: _EXTRA[i % len(_EXTRA)] for i, a in enumerate(extra)})
    out.update({SFT: "black", UNKNOWN: "#7f7f7f"})
    return out


def display_name(algorithm: str) -> str:
    """How an algorithm is written in plots and tables (DPO, SimPO, R-DPO, ...)."""
    return _display(algorithm)


def _display(algorithm: str) -> str:
    if algorithm == UNKNOWN:
        return "unknown (no checkpoint manifest)"
    spec = ALGORITHMS.get(_norm(algorithm))
    return spec.display if spec is not None else algorithm


def _order(algorithm: str) -> tuple[int, int, str]:
    n = _norm(algorithm)
    if algorithm == SFT:
        return (0, 0, "")
    if n in ALGORITHMS:
        return (1, list(ALGORITHMS).index(n), "")
    return (3 if algorithm == UNKNOWN else 2, 0, algorithm)


def _err(value: float, lo: float, hi: float) -> tuple[float, float]:
    """Asymmetric error-bar lengths; a missing CI draws no bar (never a fake zero-width interval in data)."""
    return (max(0.0, value - lo) if math.isfinite(lo) else 0.0, max(0.0, hi - value) if math.isfinite(hi) else 0.0)


def _plot_paths(out: Path | str) -> tuple[Path, Path]:
    out = Path(out)
    # Only a plot suffix is replaced: 'frontier-beta0.1' must not become 'frontier-beta0.png'.
    stem = out.with_suffix("") if out.suffix.lower() in (".png", ".svg") else out
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")


def plot_frontier(points: list[FrontierPoint], meta: dict[str, Any], out: Path | str) -> list[Path]:
    """Draw the frontier to ``out``.png and ``out``.svg (written atomically); returns both paths."""
    if not points:
        raise EvalHarnessError("no points to plot")
    hib = direction(points)
    algorithms = sorted({p.algorithm for p in points}, key=_order)
    colours = _colours(algorithms)
    fig, ax = new_figure((7.5, 5.2))
    for algo in algorithms:
        pts = [p for p in points if p.algorithm == algo]
        if algo == SFT:
            _draw_sft_points(ax, pts)
        else:
            _draw_algorithm_front(ax, pts, f"{_display(algo)} ({len(pts)})", colours[algo], hib)
    _label_frontier(fig, ax, meta, hib)
    return save_figure(fig, out)


def _draw_sft_points(ax: Any, pts: list[FrontierPoint]) -> None:
    """Each SFT model as its own black star with its CIs, labelled by name."""
    for p in pts:
        ax.errorbar(
            [p.kl],
            [p.reward],
            xerr=[[e] for e in _err(p.kl, p.kl_lo, p.kl_hi)],
            yerr=[[e] for e in _err(p.reward, p.reward_lo, p.reward_hi)],
            fmt="*",
            color="black",
            markersize=15,
            elinewidth=0.8,
            capsize=2,
            zorder=5,
            label=p.label,
        )


def _draw_algorithm_front(ax: Any, pts: list[FrontierPoint], label: str, c: str, hib: bool) -> None:
    """One algorithm's points with their CIs, and its Pareto front as a step line."""
    xerr = list(zip(*(_err(p.kl, p.kl_lo, p.kl_hi) for p in pts)))
    yerr = list(zip(*(_err(p.reward, p.reward_lo, p.reward_hi) for p in pts)))
    ax.errorbar(
        [p.kl for p in pts],
        [p.reward for p in pts],
        xerr=xerr,
        yerr=yerr,
        fmt="o",
        color=c,
        markersize=5,
        elinewidth=0.7,
        capsize=2,
        alpha=0.85,
        zorder=3,
        label=label,
    )
    front = pareto_front(pts, higher_is_better=hib)
    # The best reward reachable within a KL budget: a step at each front point, up for a
    # higher-is-better reward, down for a lower-is-better one (toxicity).
    if len(front) > 1:
        ax.plot(
            [p.kl for p in front],
            [p.reward for p in front],
            drawstyle="steps-post",
            color=c,
            linewidth=1.4,
            alpha=0.9,
            zorder=2,
        )


def _label_frontier(fig: Any, ax: Any, meta: dict[str, Any], hib: bool) -> None:
    """The frontier's axis labels, title, grid, legend and provenance footnote."""
    ax.set_xlabel(kl_axis_label(meta.get("kl_judge_version") or "", meta.get("reference_model")))
    ax.set_ylabel(
        reward_axis_label(
            meta.get("reward_metric") or "reward",
            meta.get("reward_judge_id") or "?",
            meta.get("reward_judge_version") or "",
            hib,
        )
    )
    ax.set_title(f"Reward vs KL frontier — task: {meta.get('task')}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    # Provenance footnote; supxlabel (unlike fig.text) gets room from the constrained layout.
    runs = list(meta.get("runs", []))
    shown = ", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
    fig.supxlabel(
        f"reward judge {meta.get('reward_judge_id')} {meta.get('reward_judge_version')}; "
        f"KL {meta.get('kl_judge_version')}; 95% CIs; runs: {shown}",
        fontsize=5,
        color="#555555",
        x=0.005,
        ha="left",
    )


def new_figure(size: tuple[float, float] = (7.5, 4.5), dpi: int = 150) -> tuple[Any, Any]:
    """A figure and its axes for every plot of the project; ``save_figure`` writes it.

    An Agg canvas on a bare Figure: headless, and it leaves pyplot's global backend alone (notebooks, GUIs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig: Any, out: Path | str) -> list[Path]:
    """``out``.png and ``out``.svg, each written atomically (``paths.write_atomic``): never half-written."""
    import matplotlib

    png, svg = _plot_paths(out)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, editable
        return [
            write_atomic(path, partial(fig.savefig, format=fmt), binary=True)
            for path, fmt in ((png, "png"), (svg, "svg"))
        ]


def frontier(
    runs: Sequence[str | Path], out: Path | str, *, reward_metric: str | None = None, results_dir: Path | None = None
) -> tuple[list[Path], list[FrontierPoint]]:
    """Read the runs and plot them; refuses when no model has both a reward and a KL."""
    points, meta = frontier_points(runs, reward_metric=reward_metric, results_dir=results_dir)
    if not points:
        why = "; ".join(meta["skipped_models"]) or "the runs have no model scores"
        raise EvalHarnessError(f"nothing to plot from {', '.join(meta['runs'])}: {why}")
    return plot_frontier(points, meta, out), points


def _hparams_str(hparams: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(hparams.items()))


def _with_ci(value: float, lo: float, hi: float) -> str:
    ci = f" [{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{value:.4f}{ci}"


def frontier_table(points: list[FrontierPoint], *, higher_is_better: bool | None = None) -> list[dict[str, Any]]:
    """Rows for printing, by algorithm then KL; ``on_front``: on its algorithm's front (as drawn),
    ``on_overall_front``: on the front of all points together (direction: the points' own unless given)."""
    by_algo: dict[str, list[FrontierPoint]] = defaultdict(list)
    for p in points:
        by_algo[p.algorithm].append(p)
    fronts = {id(q) for pts in by_algo.values() for q in pareto_front(pts, higher_is_better=higher_is_better)}
    overall = {id(q) for q in pareto_front(points, higher_is_better=higher_is_better)}
    rows = []
    for p in sorted(points, key=lambda p: (_order(p.algorithm), p.kl)):
        rows.append(
            {
                "label": p.label,
                "algorithm": p.algorithm,
                "step": p.step,
                "hparams": _hparams_str(p.hparams),
                "reward": _with_ci(p.reward, p.reward_lo, p.reward_hi),
                "kl": _with_ci(p.kl, p.kl_lo, p.kl_hi),
                "on_front": id(p) in fronts,
                "on_overall_front": id(p) in overall,
            }
        )
    return rows


# ---------------------------------------------------------------- metric vs sampling temperature
@dataclass
class TemperaturePoint:
    """One model's score at one sampling temperature; ``lo``/``hi`` its 95% CI (NaN where it has none)."""

    model: str
    temperature: float
    value: float
    lo: float
    hi: float
    n: int
    run_id: str = ""


def temperature_points(
    runs: Sequence[str | Path], *, task: str | None = None, metric: str | None = None, results_dir: Path | None = None
) -> tuple[list[TemperaturePoint], dict[str, Any]]:
    """Every model's score on a temperature-swept task (``generation: {temperature: [...]}``: tasks
    ``NAME@tT``), one point per model and temperature, read from finished runs.

    The temperature is the one each Score's ``decoding`` records. Refuses scores whose keys differ in
    anything but the temperature (DESIGN: one plot, one judge, one prompt set, one baseline).
    """
    from dataclasses import replace

    if not runs:
        raise EvalHarnessError("no runs given")
    loaded = [_load_run(r, results_dir) for r in runs]
    task = _pick_swept_task(loaded, task)
    mine = [
        (run_id, s)
        for run_id, _, scores in loaded
        for s in scores
        if swept_task(s.task) == task and s.task != task and s.decoding and "temperature" in s.decoding
    ]
    metrics = list(dict.fromkeys(s.metric for _, s in mine if s.higher_is_better is not None and s.value is not None))
    metric = metric or (metrics[0] if metrics else None)
    used = [(r, s) for r, s in mine if s.metric == metric]
    if metric is None or not used:
        raise EvalHarnessError(f"no '{metric}' scores on {task}; metrics: {', '.join(metrics) or 'none'}")
    # One key but for the temperature: compare the scores as if they were one task at one temperature.
    _check_one_key(
        f"{task} '{metric}'",
        [
            (r, replace(s, task=task, decoding={k: v for k, v in (s.decoding or {}).items() if k != "temperature"}))
            for r, s in used
        ],
    )
    points = _temperature_point_map(used)
    first = used[0][1]
    meta = {
        "runs": [r for r, _, _ in loaded],
        "task": task,
        "metric": metric,
        "judge_id": first.judge_id,
        "baseline": first.baseline,
        "higher_is_better": first.higher_is_better is not False,
    }
    return sorted(points.values(), key=lambda p: (p.model, p.temperature)), meta


def _pick_swept_task(loaded: list[tuple[str, dict[str, Any], list[Score]]], task: str | None) -> str:
    """The temperature-swept task to plot: ``task`` if it was swept, else the only swept one (or refuse)."""
    swept: dict[str, set[float]] = defaultdict(set)
    for _, _, scores in loaded:
        for s in scores:
            if swept_task(s.task) != s.task and s.decoding and "temperature" in s.decoding:
                swept[swept_task(s.task)].add(float(s.decoding["temperature"]))
    if task is None:
        if len(swept) != 1:
            raise EvalHarnessError(
                "no temperature-swept task (generation: {temperature: [...]}) in these runs"
                if not swept
                else f"several swept tasks: {', '.join(sorted(swept))}; pick one with --task"
            )
        return next(iter(swept))
    if task not in swept:
        raise EvalHarnessError(
            f"task '{task}' was not run at several temperatures; swept: {', '.join(sorted(swept)) or 'none'}"
        )
    return task


def _temperature_point_map(used: list[tuple[str, Score]]) -> dict[tuple[str, float], TemperaturePoint]:
    """One point per (model, temperature) from the finite scores; refuses two runs that disagree on one."""
    points: dict[tuple[str, float], TemperaturePoint] = {}
    for run_id, s in used:
        if s.value is None or not math.isfinite(s.value):
            continue
        assert s.decoding is not None  # used: scores with a decoding that has a temperature
        lo, hi = score_ci(s)
        p = TemperaturePoint(s.model, float(s.decoding["temperature"]), float(s.value), _ci(lo), _ci(hi), s.n, run_id)
        k = (p.model, p.temperature)
        if k in points and points[k].value != p.value:
            raise EvalHarnessError(
                f"model '{p.model}' at temperature {p.temperature:g} is in runs {points[k].run_id} "
                f"and {run_id} with different scores; plot one of them"
            )
        points.setdefault(k, p)
    return points


def plot_temperature(points: list[TemperaturePoint], meta: dict[str, Any], out: Path | str) -> list[Path]:
    """``metric`` vs sampling temperature, a line per model with its 95% CIs (the ODPO paper's summarization
    figure); ``out``.png and ``out``.svg, written atomically."""
    if not points:
        raise EvalHarnessError("no points to plot")
    models = list(dict.fromkeys(p.model for p in points))
    fig, ax = new_figure((7.0, 4.6))
    for k, model in enumerate(models):
        pts = [p for p in points if p.model == model]
        err = list(zip(*(_err(p.value, p.lo, p.hi) for p in pts)))
        ax.errorbar(
            [p.temperature for p in pts],
            [p.value for p in pts],
            yerr=err,
            fmt="o-",
            capsize=3,
            color="black" if model == SFT else f"C{k % 10}",
            markersize=5,
            linewidth=1.2,
            label=model,
        )
    what = meta.get("metric") or "score"
    ax.set_xlabel("sampling temperature (0 = greedy)")
    ax.set_ylabel(what + ("" if meta.get("higher_is_better", True) else " (lower is better)"))
    against = f" vs {meta['baseline']}" if meta.get("baseline") else ""
    ax.set_title(f"{meta.get('task')}: {what}{against} by sampling temperature")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.supxlabel(
        f"judge {meta.get('judge_id')}; 95% CIs; runs: {', '.join(meta.get('runs', [])[:4])}",
        fontsize=5,
        color="#555555",
        x=0.005,
        ha="left",
    )
    return save_figure(fig, out)


def temperature_plot(
    runs: Sequence[str | Path],
    out: Path | str,
    *,
    task: str | None = None,
    metric: str | None = None,
    results_dir: Path | None = None,
) -> tuple[list[Path], list[TemperaturePoint], dict[str, Any]]:
    """Read the runs and plot the swept task's metric by temperature."""
    points, meta = temperature_points(runs, task=task, metric=metric, results_dir=results_dir)
    return plot_temperature(points, meta, out), points, meta


# ---------------------------------------------------------------- trends over steps and time
def _trends(points: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """One line per training run, each starting at the base's last point; the base alone when no run."""
    base = [p for p in points if p.get("run_name") is None]
    runs = list(dict.fromkeys(p["run_name"] for p in points if p.get("run_name") is not None))
    if not runs:
        return {None: base}
    return {r: base[-1:] + [p for p in points if p.get("run_name") == r] for r in runs}


def plot_history(points: list[dict[str, Any]], out: str | Path, *, title: str) -> list[Path]:
    """A trend line per training run with its 95% CI band; significant drops from the previous point in red."""
    points = [p for p in points if p["value"] is not None and not p.get("not_measured")]
    if not points:
        return []
    stepped = any(p["step"] is not None for p in points)  # then a point without a step is the base, at 0
    xs = [p["step"] if p["step"] is not None else 0 if stepped else k for k, p in enumerate(points)]
    fig, ax = new_figure()
    x_of = {id(p): x for x, p in zip(xs, points)}
    for k, (run, pts) in enumerate(_trends(points).items()):
        color = f"C{k}"
        lo = [p["ci_low"] if p["ci_low"] is not None else p["value"] for p in pts]
        hi = [p["ci_high"] if p["ci_high"] is not None else p["value"] for p in pts]
        xr = [x_of[id(p)] for p in pts]
        ax.fill_between(xr, lo, hi, alpha=0.2, color=color, label="95% CI" if k == 0 else None)
        ax.plot(xr, [p["value"] for p in pts], "o-", color=color, label=run or title)
    drops = [(x, p["value"]) for x, p in zip(xs, points) if p.get("drop")]
    if drops:
        ax.scatter(
            *zip(*drops),
            s=120,
            facecolors="none",
            edgecolors="red",
            linewidths=2,
            zorder=5,
            label="significant drop from the previous point",
        )
    ax.set_xlabel("training step" if stepped else "run (oldest first)")
    ax.set_ylabel(title)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, out)


def trend_figures(table: Any, out: Path) -> list[Path]:
    """A trend figure per column of a comparison table whose rows are checkpoints (a line per training run over
    its steps, the base at step 0, 95% CI bands): ``plot_history`` on the table's cells."""
    if not any(e.step is not None for e in table.rows):
        return []
    paths: list[Path] = []
    for j, col in enumerate(table.columns):
        points = [
            {
                "step": e.step,
                "run_name": e.info.get("run_name"),
                "value": table.cells[(i, j)].score.value,
                **dict(zip(("ci_low", "ci_high"), score_ci(table.cells[(i, j)].score))),
            }
            for i, e in enumerate(table.rows)
            if (i, j) in table.cells
        ]
        points.sort(key=lambda p: (p["run_name"] is not None, p["run_name"] or "", p["step"] or 0))
        if any(p["value"] is not None for p in points):
            paths += plot_history(points, out / f"trend-{col.task}-{col.metric}", title=f"{col.task}/{col.metric}")
    return paths
