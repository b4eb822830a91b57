"""AlpacaEval 2: the policy answers the eval-set instructions; a judge compares each answer with the baseline's.

The judge is alpaca_eval's ``weighted_alpaca_eval_gpt4_turbo`` annotator (tatsu-lab/alpaca_eval 0.6.6,
``evaluators_configs/weighted_alpaca_eval_gpt4_turbo/configs.yaml``): the alpaca_eval_clf prompt, one
token at temperature 1 with the top 5 log-probs, preference = 2 - P(m) / (P(m) + P(M)), the two outputs
shown in the seeded order of ``processors.RandomSwitchTwoColumnsProcessor``. Metrics are
``metrics.alpaca_eval``'s. Official-format ``annotations.json`` and ``model_outputs.json`` land in
``<run>/alpaca_eval/``, so the official tool and ``evalharness metrics alpaca-eval`` read the same judgments.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evalharness.backends.http import ChatRequest, ChatResult
from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.records import GenRequest, Score, Verdict
from evalharness.store import write_json_atomic
from evalharness.tasks import benchdata
from evalharness.tasks.alpaca_eval import metric as ae
from evalharness.tasks.base import Display, ModelRecords, Pending, Session, Task, file_name, stored_answers
from evalharness.tasks.reliability import Rejudge

TASK = "alpaca_eval"


@dataclass
class Config:
    """One AlpacaEval 2 run. The judge model is the context's; everything that changes a number is here."""

    data_dir: str | None = None  # benchdata-style folder (../shared/benchdata); None: download and cache
    limit: int | None = None  # the first N instructions (demos, tests); None: all 805
    eval_set: str | None = None  # a custom eval set (JSON/JSONL with instruction); scores get their own version
    # a registered baseline (benchdata 'alpaca_eval/outputs/<name>'), a JSON path, or run:RUN/MODEL: another
    # model's answers stored by an earlier run (head-to-head: DPO judged directly against SimPO)
    baseline: str = ae.BASELINE
    model_outputs: str | None = None  # judge these official-format outputs instead of generating
    lc_support_dir: str | None = None  # df_gamed.csv (+ instruction_difficulty.csv); None: fetch them
    lc_bootstrap_rounds: int = 0  # > 0: percentile CI of the LC win rate (not part of the official tool)
    judge_config_dir: str | None = None  # a copy of alpaca_eval's evaluators_configs; None: the installed one
    judge_temperature: float = 1.0  # configs.yaml completions_kwargs
    judge_max_tokens: int = 1
    judge_top_logprobs: int = 5
    swap_seed: int = ae.SWAP_SEED
    task_version: str = "2"
    rejudge: Rejudge | None = None  # repeatability: a seeded subsample judged again (tasks.reliability)
    # Also judge each item in the other order (position consistency); the scores stay the official order's.
    both_orders: bool = False


class AlpacaEvalTask(Task):
    def item_extras(self) -> dict[str, tuple[str | None, str]]:
        """The eval set's dataset (category) and the baseline's output of each instruction."""
        return {
            req.id: (str(it.get("dataset") or "") or None, str(it["baseline"]))
            for it, req in zip(getattr(self, "items", []), getattr(self, "_requests", []))
        }

    Config = Config
    VERSION = "2"
    needs_judge = True

    def setup(self) -> None:
        cfg = self.cfg
        self.items, full_set = load_items(cfg)
        self.imported = (
            imported_outputs(Path(cfg.model_outputs), self.items, full_set) if cfg.model_outputs is not None else None
        )
        self.template = template_version(cfg)
        # A subset is another benchmark: its scores must not share a table column with full runs.
        version = cfg.task_version if len(self.items) == len(full_set) else f"{cfg.task_version}/first{len(self.items)}"
        if cfg.eval_set:  # never in one column with the official eval set
            version += "/custom:" + hashlib.sha256(Path(cfg.eval_set).read_bytes()).hexdigest()[:8]
        self.task_version = version
        self._requests = [
            GenRequest(
                id=_key(it["instruction"]),
                params=self.generation.params(),
                messages=[{"role": "user", "content": it["instruction"]}],
            )
            for it in self.items
        ]

    def requests(self, session: Session) -> list[GenRequest]:
        return [] if self.imported is not None else self._requests

    def outputs(self, session: Session) -> list[str | None]:
        """The policy's answer to each item, in eval-set order (None: its generation failed)."""
        if self.imported is not None:
            return list(self.imported)
        return [(g.text if (g := session.answer(r)) is not None else None) for r in self._requests]

    def judgments(self, session: Session) -> list[Pending]:
        if self.env.judge is None:
            return []
        cfg, out = self.cfg, []
        for it, output in zip(self.items, self.outputs(session)):
            if output is None:
                continue
            ins, swapped = it["instruction"], ae.is_swapped(it["instruction"], cfg.swap_seed)
            shown = (output, it["baseline"]) if swapped else (it["baseline"], output)
            messages = ae.render_judge_prompt(ins, *shown, config_dir=cfg.judge_config_dir)
            digest = hashlib.sha256(
                json.dumps(
                    [self.env.judge_name, messages, cfg.judge_temperature, cfg.judge_max_tokens, cfg.judge_top_logprobs]
                ).encode()
            ).hexdigest()[:12]
            key = f"{_key(ins)}/{digest}"  # a changed output, template or judge is judged anew
            request = (
                None
                if output == it["baseline"]
                else ChatRequest(
                    id=key,
                    messages=messages,
                    temperature=cfg.judge_temperature,
                    max_tokens=cfg.judge_max_tokens,
                    logprobs=True,
                    top_logprobs=cfg.judge_top_logprobs,
                    template_version=self.template,
                    choices=("m", "M"),
                )
            )
            out.append(Pending(key, _key(ins), (ins, request)))
        return out

    def other_order(self, session: Session) -> list[Pending]:
        """With ``both_orders``: each asked judgment again with the two outputs shown the other way round (keys
        ``KEY~swap``), for position consistency; the run stores them apart from the official verdicts."""
        if not self.cfg.both_orders:
            return []
        outputs = {it["instruction"]: (o, it["baseline"]) for it, o in zip(self.items, self.outputs(session))}
        out = []
        for p in self.judgments(session):
            ins, request = p.payload
            if request is None:
                continue
            output, baseline = outputs[ins]
            swapped = not ae.is_swapped(ins, self.cfg.swap_seed)
            shown = (output, baseline) if swapped else (baseline, output)
            messages = ae.render_judge_prompt(ins, *shown, config_dir=self.cfg.judge_config_dir)
            out.append(Pending(f"{p.key}~swap", p.item_id, (ins, replace(request, messages=messages), True)))
        return out

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        version = self._judge_version()
        done: dict[str, Verdict] = {}
        for p in pending:
            ins, request = p.payload[:2]
            if request is None:  # the official records a tie without asking the judge
                done[p.key] = Verdict(
                    p.item_id,
                    self.env.judge_name,
                    version,
                    "ok",
                    1.5,
                    key=p.key,
                    order="BA" if ae.is_swapped(ins, self.cfg.swap_seed) else "AB",
                    meta={"identical_outputs": True},
                )
        asked = [Pending(p.key, p.item_id, p.payload[1]) for p in pending if p.key not in done]
        instruction = {p.key: p.payload[0] for p in pending}
        other = {p.key for p in pending if p.payload[2:] == (True,)}  # other_order's judgments

        def parse(p: Pending, result: ChatResult) -> Verdict:
            ins = instruction[p.key]
            v = ae.verdict_from_completion(p.item_id, ins, raw_completion(result), seed=self.cfg.swap_seed)
            if p.key in other:  # shown the other way round: undo that swap instead
                swapped = v.order == "AB"
                value = ae.unswap_preference(ae.preference_from_completion(v.raw), swapped)
                v = replace(v, value=value, status="ok" if value is not None else "unparsed")
                v.order = "BA" if swapped else "AB"
            return replace(v, judge_id=self.env.judge_name, judge_version=version, key=p.key)

        for p, v in zip(asked, self.chat_verdicts(asked, parse)):
            if v.status == "error":
                v.order = "BA" if ae.is_swapped(instruction[p.key], self.cfg.swap_seed) else "AB"
                v.judge_version = version  # as on every other verdict of this judge (DESIGN: one meaning)
            done[p.key] = v
        return [done[p.key] for p in pending]

    def _judge_version(self) -> str:
        cfg = self.cfg
        return self.judge_version(
            self.template,
            cfg.judge_temperature,
            cfg.judge_max_tokens,
            cfg.judge_top_logprobs,
            cfg.swap_seed,
            f"chatml:{ae.CHATML_RULE}",
        )

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        """Official-format annotations and outputs for this model, then the official metric functions on them."""
        by_key = {v.key: v for v in verdicts}
        keys = {p.item_id: p.key for p in self.judgments(session)}
        outputs = self.outputs(session)
        # Under the task's own name: two AlpacaEval-style tasks of one run (a custom set, a temperature sweep's
        # summarize@t0.5 and @t1) must not overwrite each other's files; the official task's folder is alpaca_eval/.
        folder = self.env.out_dir / file_name(self.name) / file_name(session.name)
        write_json_atomic(folder / "model_outputs.json", _model_outputs(self.items, outputs, session.name))
        if self.env.judge is None:
            self.env.log(f"{TASK}: no judge: outputs written to {folder / 'model_outputs.json'}, nothing scored")
            return []
        judged = [by_key.get(keys.get(_key(it["instruction"]), "")) for it, _ in zip(self.items, outputs)]
        annotations = _annotations(self.items, outputs, judged, session.name)
        write_json_atomic(folder / "annotations.json", annotations)
        metrics = {
            **ae.metrics_from_annotations(annotations, model_outputs=[o or "" for o in outputs]),
            "reference_model": self.items[0]["generator"],
            "annotator": ae.ANNOTATOR,
        }
        lc_reason = _add_lc(self.cfg, metrics, annotations)
        counts = {
            "n_unparsed": sum(v is not None and v.status == "unparsed" for v in judged),
            "n_error": sum(v is not None and v.status == "error" for v in judged),
            "n_not_generated": sum(o is None for o in outputs),
        }
        return self._scores(metrics, session.name, counts, lc_reason)

    def _scores(
        self, metrics: dict[str, Any], model: str, counts: dict[str, int], lc_reason: str | None
    ) -> list[Score]:
        """The official metrics as Scores with this run's keys; an unavailable LC win rate becomes a None row."""
        keys_ = {
            "task": self.name,
            "task_version": self.task_version,
            "judge_id": self.env.judge_name,
            "judge_version": self._judge_version(),
            "baseline": self.items[0]["generator"],
            "decoding": self.generation.decoding(n=1),
            "higher_is_better": True,
        }
        scores = [replace(s, **keys_, extra={**s.extra, **counts}) for s in ae.to_scores(metrics, model)]
        for s in scores:
            if s.metric == "avg_length":
                s.higher_is_better = None
        if lc_reason is not None:
            self.env.log(f"{TASK}: {lc_reason}")
            win = scores[0]
            scores.insert(
                2,
                replace(
                    win,
                    metric="length_controlled_winrate",
                    value=None,
                    stderr=None,
                    extra={**counts, "unavailable": lc_reason},
                ),
            )
        return scores


def _model_outputs(items: list[dict[str, Any]], outputs: Sequence[str | None], model: str) -> list[dict[str, Any]]:
    """The official ``model_outputs.json`` rows: one per eval item, a failed generation as an empty output."""
    return [
        {
            "dataset": it["dataset"],
            "instruction": it["instruction"],
            "output": out or "",
            "generator": model,
        }
        for it, out in zip(items, outputs)
    ]


def _annotations(
    items: list[dict[str, Any]], outputs: Sequence[str | None], judged: Sequence[Verdict | None], model: str
) -> list[dict[str, Any]]:
    """The official ``annotations.json`` rows: the baseline as output_1, the model as output_2, the judge's
    preference (None where the item has no verdict)."""
    return [
        {
            "instruction": it["instruction"],
            "dataset": it["dataset"],
            "output_1": it["baseline"],
            "generator_1": it["generator"],
            "output_2": out or "",
            "generator_2": model,
            "annotator": ae.ANNOTATOR,
            "preference": v.value if v is not None else None,
            "raw_completion": v.raw if v is not None else None,
        }
        for it, out, v in zip(items, outputs, judged)
    ]


def annotations_of(records: ModelRecords) -> list[dict[str, Any]]:
    """A model's official-format annotations in a run folder (runs before schema 2 kept one model's at the top)."""
    for path in (
        records.folder / file_name(records.task or TASK) / file_name(records.model) / "annotations.json",
        records.folder / TASK / "annotations.json",
    ):
        if path.is_file():
            return list(json.loads(path.read_text(encoding="utf-8")))
    raise EvalHarnessError(f"run {records.folder.name} has no AlpacaEval annotations for {records.model}")


def paired(metric: str, a: ModelRecords, b: ModelRecords, *, rounds: int | None = None, seed: int = 0, **_: Any) -> Any:
    """Win rate: per-instruction preference difference (paired t); discrete win rate: exact McNemar; LC:
    paired bootstrap over instructions with the GLM refit each round; avg_length: per-instruction lengths."""
    from evalharness.tasks import paired as pr
    from evalharness.tasks.alpaca_eval import paired_stats as ae_pr

    ra, rb = annotations_of(a), annotations_of(b)
    if metric == "win_rate":
        return ae_pr.alpaca_winrate_paired(ra, rb)
    if metric == "discrete_win_rate":
        return ae_pr.alpaca_discrete_paired(ra, rb)
    if metric == "avg_length":
        return pr.paired_t(
            {r["instruction"]: float(len(r["output_2"])) for r in ra},
            {r["instruction"]: float(len(r["output_2"])) for r in rb},
            method="paired t over lengths",
        )
    if metric == "length_controlled_winrate":
        cfg = Config(**{k: v for k, v in a.config.items() if k in Config.__dataclass_fields__})
        support = ae.load_lc_support(_lc_support_dir(cfg))
        return ae_pr.alpaca_lc_paired_bootstrap(ra, rb, support, rounds=rounds or ae_pr.LC_ROUNDS, seed=seed)
    raise ValueError(f"no paired test for alpaca_eval {metric}")


def unit_values(metric: str, records: ModelRecords) -> dict[str, float]:
    """Per-instruction win (``win_rate``) or discrete win (``discrete_win_rate``) in percent: the method-level
    per-item values. The LC win rate is a GLM refit and has none."""
    from evalharness.tasks.alpaca_eval.paired_stats import alpaca_wins

    kinds = {"win_rate": 0, "discrete_win_rate": 1}
    if metric not in kinds:
        raise ValueError(f"alpaca_eval {metric} is a refit over all instructions: it has no per-item values")
    return {k: 100 * v for k, v in alpaca_wins(annotations_of(records))[kinds[metric]].items()}


# Per-item scores as the policy's win % (preference 1..2); a crossing of 50 is a flipped verdict.
DISPLAY = Display(
    labels={"length_controlled_winrate": "AlpacaEval 2 LC %", "win_rate": "AlpacaEval 2 WR %"},
    digits=1,
    item_scale=lambda v: 100 * (v - 1),
    flip_at=50.0,
    slow={"length_controlled_winrate": "a GLM refit per round"},
)


TASK_CLASS = AlpacaEvalTask


# ------------------------------------------------------------------ data
def _records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        rows = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=str(path), line=e.lineno) from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError("expected a list of records", path=str(path))
    return rows


def load_items(cfg: Config) -> tuple[list[dict[str, Any]], set[str]]:
    """The first ``limit`` eval-set items (instruction, dataset, baseline output, baseline generator) in
    eval-set order, and the full eval set's instructions. The baseline must cover the eval set exactly."""
    eval_set = _records(
        Path(cfg.eval_set) if cfg.eval_set else benchdata.fetch("alpaca_eval/eval_set", local_dir=cfg.data_dir)
    )
    stored = stored_answers(cfg.baseline, f"{TASK}/{{model}}/model_outputs.json")
    path = (
        stored[0]
        if stored
        else Path(cfg.baseline)
        if cfg.baseline.endswith((".json", ".jsonl"))
        else benchdata.fetch(f"alpaca_eval/outputs/{cfg.baseline}", local_dir=cfg.data_dir)
    )
    baseline = ae.check_against_eval_set(_records(path), eval_set, path=str(path))
    if cfg.limit is not None and cfg.limit < 1:
        raise InputError("must be at least 1 (or null for the whole eval set)", field="limit")
    items = [
        {
            "instruction": e["instruction"],
            "dataset": e.get("dataset", ""),
            "baseline": str(b["output"]),
            "generator": str(b.get("generator", cfg.baseline)),
        }
        for e, b in list(zip(eval_set, baseline))[: cfg.limit]
    ]
    return items, {e["instruction"] for e in eval_set}


def imported_outputs(path: Path, items: list[dict[str, Any]], full_set: set[str]) -> list[str]:
    """Outputs from an official-format model_outputs.json, in item order. Instructions outside the eval set,
    duplicates and missing items are an InputError; eval-set items beyond ``limit`` are left out."""
    wanted = {it["instruction"] for it in items}
    rows = [r for r in _records(path) if r.get("instruction") in wanted or r.get("instruction") not in full_set]
    rows = ae.check_against_eval_set(rows, items, path=str(path))
    for i, r in enumerate(rows):
        if not isinstance(r.get("output"), str):
            raise InputError(f"record for eval item {i}: missing or not a string", path=str(path), field="output")
    return [r["output"] for r in rows]


def _key(instruction: str) -> str:
    return hashlib.sha256(instruction.encode()).hexdigest()[:16]


# ------------------------------------------------------------------ judging
def template_version(cfg: Config) -> str:
    """Hash of the judge template as rendered (placeholders kept), so a changed template changes cache keys."""
    messages = ae.render_judge_prompt("{instruction}", "{output_1}", "{output_2}", config_dir=cfg.judge_config_dir)
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]


def raw_completion(result: ChatResult) -> dict[str, Any]:
    """A ChatResult as the official ``raw_completion`` (an OpenAI choice), which ae.preference_from_completion
    parses; the sampled token is left out when the judge does not report it (local judges). A label-space
    judge's log-probs of ``m`` and ``M`` become the first token's alternatives."""
    content: list[dict[str, Any]] | None = None
    if result.choice_logprobs is not None:
        alts = sorted(result.choice_logprobs.items(), key=lambda kv: -kv[1])
        content = [{"top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts]}]
    elif result.top_logprobs is not None:
        sampled: Sequence[tuple[str, float] | None] = result.token_logprobs or [None] * len(result.top_logprobs)
        content = [
            {
                **({"token": s[0], "logprob": s[1]} if s else {}),
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alts],
            }
            for s, alts in zip(sampled, result.top_logprobs)
        ]
    return {
        "finish_reason": result.finish_reason,
        "index": 0,
        "message": {"role": "assistant", "content": result.text},
        "logprobs": None if content is None else {"content": content},
    }


# ------------------------------------------------------------------ length control
def _lc_support_dir(cfg: Config) -> Path:
    if cfg.lc_support_dir is not None:
        return Path(cfg.lc_support_dir)
    return benchdata.fetch("alpaca_eval/lc/df_gamed", local_dir=cfg.data_dir).parent


def _add_lc(cfg: Config, metrics: dict[str, Any], annotations: list[dict[str, Any]]) -> str | None:
    """Add the LC columns to ``metrics``; return why they are unavailable, or None. The GLM reads instruction
    difficulty by annotation row, so rows must be the eval set's first items in order (as ``load_items`` keeps them)."""
    try:
        support = ae.load_lc_support(_lc_support_dir(cfg))
        metrics.update(ae.length_controlled_winrate(annotations, support))
        if cfg.lc_bootstrap_rounds > 0:
            metrics["lc_ci_low"], metrics["lc_ci_high"] = ae.lc_winrate_bootstrap_ci(
                annotations, support, rounds=cfg.lc_bootstrap_rounds
            )
    except (EvalHarnessError, ValueError, OSError) as e:
        return f"length-controlled win rate unavailable: {e}"
    return None
