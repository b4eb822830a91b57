"""Judge ensembles: several chat judges judge the same answers, each on its own, and a rule combines them.

A run spec's ``judge:`` may be a list of judges with ``ensemble: mean | vote | arena_hard_v2``. Every
judged task then runs once per judge, as its own task named ``<task>:<judge>``: each judge's verdicts are
stored under that name (inspectable, resumable, retried on failure like any verdict), and each judge's own
scores carry that judge's comparability key. After the per-judge scores, ``Panel.aggregate`` adds, under the
task's plain name:

- the ensemble's scores, whose ``judge_id`` is ``ensemble(<rule>: <judge>, <judge>, ...)`` and whose
  ``judge_version`` hashes the judges' versions and the rule, so an ensemble never shares a column with
  a single judge or with another ensemble;
- the agreement of each pair of judges: ``judge_agreement`` (percent of the items both judged with the same
  verdict) and ``judge_kappa`` (Cohen's kappa on the same items).

The rules, and what each does with a failed or unparsed verdict of one judge:

- ``arena_hard_v2``: lmarena/arena-hard-auto ``show_result.py --judge-names A B`` (commit 196f6b8,
  ``load_judgments`` lines 12-56): every judge's judgment rows are concatenated; a row (one judge, one
  question, one model) whose game 1 or game 2 has no score is dropped whole (``null_indices``); each kept
  row gives game 2's label scores plus one minus game 1's, a decisive ``>>`` label three times; the score is
  computed on all those battles together. So one judge's failed game drops that judge's question and the
  other judge's games of it still count. Scored through ``arena_hard.metric.score_battles``.
- ``mean``: an item counts only when every judge scored it; its value is the judges' mean. An item that any
  judge failed or left unparsed is skipped and counted in ``n_skipped``.
- ``vote``: an item counts only when every judge scored it; the verdict is the category most judges gave
  (win / tie / loss against the task's midpoint for pairwise tasks, the value itself for ratings), its value
  the mean of those judges' values; with no majority (two judges disagreeing) it is the midpoint, a tie, for
  pairwise tasks and the judges' mean for ratings.

Items are matched across judges by ``(item_id, sample_index, order)``, never by verdict key (a task's key may
hash the judge's name).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, Literal

from evalharness.core import stats
from evalharness.core.errors import InputError
from evalharness.core.records import Score, Verdict, content_hash
from evalharness.tasks.base import Task, display_of, file_name
from evalharness.tasks.reliability import RELIABILITY_METRICS

Rule = Literal["mean", "vote", "arena_hard_v2"]
RULES: tuple[str, ...] = ("mean", "vote", "arena_hard_v2")
Unit = tuple[str, int, str]


def judged_name(task: str, judge: str) -> str:
    """The name one judge's copy of a task carries (its verdicts and scores are stored under it)."""
    return f"{task}:{file_name(judge)}"


def ensemble_name(rule: str, judges: list[str]) -> str:
    """The ``judge_id`` of an ensemble's scores: its rule and its judges, in the spec's order."""
    return f"ensemble({rule}: {', '.join(judges)})"


def unit_of(v: Verdict) -> Unit:
    """What one judgment is about, whoever judged it."""
    return (v.item_id, v.sample_index, v.order or "")


def category(value: float, midpoint: float | None) -> Hashable:
    """A verdict's category: win / tie / loss against the midpoint (pairwise), else the value (a rating)."""
    if midpoint is None:
        return round(value, 6)
    return "win" if value > midpoint else "loss" if value < midpoint else "tie"


def cohen_kappa(a: list[Hashable], b: list[Hashable]) -> float:
    """Cohen's kappa of two raters over the same items: (p_o - p_e) / (1 - p_e); NaN when p_e is 1."""
    n = len(a)
    if n == 0 or n != len(b):
        raise ValueError("kappa needs two equally long, non-empty label lists")
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / n**2
    return float("nan") if p_e == 1 else (p_o - p_e) / (1 - p_e)


def combine(values: list[float], rule: str, midpoint: float | None) -> float:
    """One item's ensemble value from every judge's value (already on the task's display scale)."""
    if rule == "mean":
        return sum(values) / len(values)
    if rule != "vote":
        raise ValueError(f"unknown item rule {rule!r}")
    counts = Counter(category(v, midpoint) for v in values)
    (top, k), *rest = counts.most_common()
    if rest and rest[0][1] == k:  # no majority
        return midpoint if midpoint is not None else sum(values) / len(values)
    chosen = [v for v in values if category(v, midpoint) == top]
    return sum(chosen) / len(chosen)


@dataclass
class ItemEnsemble:
    """The ``mean`` / ``vote`` rule over one model's verdicts of one task: per unit, the combined value."""

    values: dict[Unit, float]
    skipped: int  # units some judge failed or left unparsed
    failed: dict[str, int]  # judge -> its units with a non-ok verdict


def item_ensemble(
    per_judge: dict[str, list[Verdict]], rule: str, scale: Callable[[float], float], midpoint: float | None
) -> ItemEnsemble:
    """Combine per unit; a unit counts only when every judge has an ok verdict of it."""
    by_judge = {j: {unit_of(v): v for v in vs} for j, vs in per_judge.items()}
    units = list(dict.fromkeys(u for vs in by_judge.values() for u in vs))
    failed = {j: sum(v.status != "ok" for v in vs.values()) for j, vs in by_judge.items()}
    values, skipped = {}, 0
    for u in units:
        got = [by_judge[j].get(u) for j in by_judge]
        if any(v is None or v.status != "ok" or v.value is None for v in got):
            skipped += 1
            continue
        values[u] = combine(
            [scale(float(v.value)) for v in got if v is not None and v.value is not None], rule, midpoint
        )
    return ItemEnsemble(values, skipped, failed)


def agreement(
    a: list[Verdict], b: list[Verdict], scale: Callable[[float], float], midpoint: float | None
) -> tuple[float, float, int]:
    """Percent of the units both judges scored on which their categories agree, Cohen's kappa, and n."""
    vb = {unit_of(v): v for v in b if v.status == "ok" and v.value is not None}
    pairs = [
        (category(scale(float(v.value)), midpoint), category(scale(float(vb[unit_of(v)].value or 0)), midpoint))
        for v in a
        if v.status == "ok" and v.value is not None and unit_of(v) in vb
    ]
    if not pairs:
        return float("nan"), float("nan"), 0
    la, lb = [p[0] for p in pairs], [p[1] for p in pairs]
    return 100 * sum(x == y for x, y in pairs) / len(pairs), cohen_kappa(la, lb), len(pairs)


def arena_hard_v2_verdicts(per_judge: dict[str, list[Verdict]]) -> tuple[list[Verdict], int]:
    """show_result.py's ``null_indices``: per judge, a question (of one model) with either game not scored is
    dropped whole. The kept verdicts of every judge, concatenated, and the number of games dropped."""
    kept, dropped = [], 0
    for vs in per_judge.values():
        games: dict[tuple[str, str], list[Verdict]] = {}
        for v in vs:
            games.setdefault((v.item_id, str(v.meta.get("model"))), []).append(v)
        for group in games.values():
            if len(group) == 2 and all(v.status == "ok" for v in group):
                kept += group
            else:
                dropped += 2
    return kept, dropped


@dataclass
class Panel:
    """A run's judges and its ensemble rule; expands judged tasks per judge and scores the ensemble."""

    rule: str
    judges: list[tuple[Any, str]]  # (chat judge, its name)
    # per judge: task module -> the Config values that judge's own preset sets (pipeline.presets.own_settings)
    settings: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    groups: dict[str, list[Task]] = field(default_factory=dict)  # task name -> its per-judge copies

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise InputError(f"ensemble must be one of {', '.join(RULES)}, got {self.rule!r}", field="ensemble")

    @property
    def name(self) -> str:
        return ensemble_name(self.rule, [n for _, n in self.judges])

    def expand(self, tasks: list[Task]) -> list[Task]:
        """Each judged task becomes one copy per judge (sharing the loaded items), named ``<task>:<judge>``."""
        out: list[Task] = []
        for task in tasks:
            if not task.needs_judge:
                out.append(task)
                continue
            if self.rule == "arena_hard_v2" and _module(task) != "arena_hard":
                raise InputError(
                    f"ensemble arena_hard_v2 is Arena-Hard's rule; task '{task.name}' is {_module(task)}: "
                    "use mean or vote",
                    field="ensemble",
                )
            copies = []
            for i, (judge, name) in enumerate(self.judges):
                t = copy.copy(task)
                t.name, t.env = judged_name(task.name, name), replace(task.env, judge=judge, judge_name=name)
                own = self.settings[i].get(_module(task)) if i < len(self.settings) else None
                if own:  # e.g. Arena-Hard v2.0's Gemini judge at its own temperature
                    t.cfg = replace(task.cfg, **own)
                copies.append(t)
            self.groups[task.name] = copies
            out += copies
        return out

    def aggregate(
        self, model: str, scores: list[Score], verdicts_of: Callable[[str, str], list[Verdict]]
    ) -> list[Score]:
        """The ensemble's and the agreement's scores of one model, from the per-judge scores and verdicts."""
        out: list[Score] = []
        for task_name, copies in self.groups.items():
            per_judge = {t.env.judge_name: verdicts_of(t.name, model) for t in copies}
            own = {  # the task's own scores; its judge's reliability figures describe the judge, not the answers
                t.env.judge_name: [
                    s for s in scores if s.task == t.name and s.model == model and s.metric not in RELIABILITY_METRICS
                ]
                for t in copies
            }
            first = own[copies[0].env.judge_name]
            if not first:
                continue
            module = _module(copies[0])
            out += self._ensemble_scores(task_name, module, per_judge, own, copies[0])
            for head in {s.task_version: s for s in first}.values():  # an Arena-Hard category is its own version
                mine = {j: [v for v in vs if _version_of(v, head)] for j, vs in per_judge.items()}
                out += self._agreement_scores(task_name, module, mine, head)
        return out

    def _version(self, own: dict[str, list[Score]], task_version: str) -> str:
        versions = [next((s.judge_version for s in ss if s.task_version == task_version), "") for ss in own.values()]
        return content_hash("ensemble", self.rule, versions, length=12)

    def _ensemble_scores(
        self, task: str, module: str, per_judge: dict[str, list[Verdict]], own: dict[str, list[Score]], first: Task
    ) -> list[Score]:
        if self.rule == "arena_hard_v2":
            heads = own[first.env.judge_name]
            out = arena_hard_ensemble(per_judge, heads, first.cfg, self.name)
        else:
            out = self._item_scores(module, per_judge, own[first.env.judge_name])
        for s in out:
            s.task, s.judge_id, s.metric = task, self.name, f"ensemble_{self.rule}"
            s.judge_version = self._version(own, s.task_version)
            s.extra = {**s.extra, "ensemble": {"rule": self.rule, "judges": [n for _, n in self.judges]}}
        return out

    def _item_scores(self, module: str, per_judge: dict[str, list[Verdict]], heads: list[Score]) -> list[Score]:
        """``mean`` / ``vote``: one ``ensemble_<rule>`` score per task version, a t interval over items."""
        show = display_of(module)
        scale = show.item_scale or (lambda v: v)
        unit = show.unit_of or (lambda item: item)
        out = []
        for head in {s.task_version: s for s in heads}.values():
            mine = {j: [v for v in vs if _version_of(v, head)] for j, vs in per_judge.items()}
            ens = item_ensemble(mine, self.rule, scale, show.flip_at)
            items = list(ens.values)
            value = se = lo = hi = None
            if items:
                value, se, lo, hi, _ = stats.cluster_mean_ci(
                    [ens.values[u] for u in items], [unit(u[0]) for u in items]
                )
            out.append(
                replace(
                    head,
                    value=value,
                    stderr=se,
                    ci_low=lo,
                    ci_high=hi,
                    ci_level=0.95,
                    n=len(items),
                    n_skipped=ens.skipped,
                    extra={"n_failed_by_judge": ens.failed},
                )
            )
        return out

    def _agreement_scores(
        self, task: str, module: str, per_judge: dict[str, list[Verdict]], head: Score
    ) -> list[Score]:
        show = display_of(module)
        scale = show.item_scale or (lambda v: v)
        out = []
        names = list(per_judge)
        for ja, jb in combinations(names, 2):
            share, kappa, n = agreement(per_judge[ja], per_judge[jb], scale, show.flip_at)
            pair = f"{ja} ~ {jb}"
            suffix = "" if len(names) == 2 else f":{pair}"
            base = replace(
                head,
                task=task,
                judge_id=self.name,
                judge_version=content_hash("agreement", pair, head.judge_version, length=12),
                n=n,
                n_skipped=0,
                stderr=None,
                ci_low=None,
                ci_high=None,
                higher_is_better=None,
                extra={"judges": [ja, jb]},
            )
            out.append(replace(base, metric="judge_agreement" + suffix, value=None if n == 0 else share))
            out.append(replace(base, metric="judge_kappa" + suffix, value=None if math.isnan(kappa) else kappa))
        return out


def _module(task: Task) -> str:
    return type(task).__module__.removeprefix("evalharness.tasks.").removesuffix(".task")


def _version_of(v: Verdict, head: Score) -> bool:
    """Whether a verdict belongs to the task version of ``head`` (an Arena-Hard category is its own version)."""
    category_ = v.meta.get("category") if isinstance(v.meta, dict) else None
    return category_ is None or head.extra.get("category") in (None, category_)


def arena_hard_ensemble(per_judge: dict[str, list[Verdict]], heads: list[Score], cfg: Any, judge: str) -> list[Score]:
    """The ``arena_hard_v2`` rule: per category, every judge's kept battles in one ``score_battles`` fit
    (two players, so the score is the mean battle score, as show_result.py's), bootstrap as the task's config."""
    from evalharness.tasks.arena_hard import metric as ah

    out = []
    for head in heads:
        if head.metric != "score":
            continue
        cat = head.extra.get("category")
        mine = {j: [v for v in vs if v.meta.get("category") == cat] for j, vs in per_judge.items()}
        kept, dropped = arena_hard_v2_verdicts(mine)
        battles = ah.battles_from_verdicts(kept)
        score = replace(head, value=None, stderr=None, ci_low=None, ci_high=None, n=0, n_skipped=dropped)
        if not battles.empty:
            counts: dict[str, tuple[int, int] | None] = {head.model: (len(kept) + dropped, dropped)}
            metrics = ah.score_battles(
                battles,
                counts,
                baseline=str(head.baseline),
                bootstrap_rounds=cfg.bootstrap_rounds,
                seed=cfg.seed,
                bootstrap_unit=cfg.bootstrap_unit,
                ci_level=head.ci_level,
                judge=judge,
                bench=head.task_version,
            )
            (own,) = [s for s in ah.to_scores(metrics) if s.model == head.model]
            score = replace(
                head, value=own.value, ci_low=own.ci_low, ci_high=own.ci_high, n=own.n, n_skipped=own.n_skipped
            )
        score.extra = {"category": cat, "n_games_dropped": dropped, "n_battles": len(battles)}
        out.append(score)
    return out
