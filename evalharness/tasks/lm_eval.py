"""Capability tasks from EleutherAI's lm-evaluation-harness (``pip install 'evalharness[lmeval]'``), paired per item.

lm-eval runs its own tasks (IFEval, GSM8K, MMLU, ... or the user's YAMLs in ``include_path``) through its own
Python API (``lm_eval.simple_evaluate``, ``log_samples=True``): its prompts, few-shot sampling, chat template
(``apply_chat_template``, ``fewshot_as_multiturn``), filters and metrics. With ``model: hf`` (the default) it gets
the run's model as our ``hf`` backend loaded it (alias, local folder or LoRA adapter, its dtype), wrapped in
lm-eval's ``HFLM``; with ``model: vllm`` lm-eval's own vLLM model loads the model's local folder.

Every logged sample becomes one ``Verdict`` per (lm-eval task, doc id): each metric's per-doc value (``metrics``,
keyed ``metric,filter`` as lm-eval keys its results), the filtered and raw responses, the prompt. A Score per
(lm-eval task, metric, filter) is lm-eval's own aggregation function over those values in doc order, so it equals
the number lm-eval reports for the same run; ``paired`` compares two models doc by doc (exact McNemar for 0/1
metrics, paired t otherwise), which lm-eval's unpaired z-test between two result files cannot.

``setup`` loads lm-eval's tasks (reading their datasets), so an unknown task name or unreadable data is one error
before anything is written. lm-eval then runs once per model over every doc (its few-shot examples are drawn in doc
order from one seeded generator, so a partial rerun would see other examples); a finished model is skipped on a
rerun, a killed or failed one is rerun in full.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.records import Score, Verdict, content_hash
from evalharness.core.stats import mean_ci, wilson_ci
from evalharness.tasks.base import ModelRecords, Pending, Session, Task, file_name

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed (lm_eval.defaults.DEFAULT_OTHER_SEED)
INSTALL = "lm-evaluation-harness is not installed: pip install 'evalharness[lmeval]' (or pip install 'lm_eval>=0.4.8')"
FIND_TASKS = (
    "list lm-eval's task names with `lm-eval ls tasks`; put your own task YAMLs in a folder and set include_path"
)


@dataclass
class Config:
    tasks: list[str]  # lm-eval task names (or groups, e.g. mmlu: each subtask is scored)
    num_fewshot: int | None = None  # None: each task's own default
    limit: int | float | None = None  # lm-eval's limit: the first N docs, or a fraction (< 1) of them
    include_path: str | None = None  # a folder of the user's own task YAMLs
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool | None = None  # None: on when apply_chat_template is (lm-eval's default)
    system_instruction: str | None = None
    gen_kwargs: dict[str, Any] | None = None  # overrides the tasks' generation_kwargs (e.g. max_gen_toks)
    batch_size: int = 1
    fewshot_random_seed: int = FEWSHOT_SEED
    model: str = "hf"  # hf: the run's loaded model | vllm: lm-eval's vLLM model on the model's folder
    model_args: dict[str, Any] = field(default_factory=dict)  # extra lm-eval model_args (vllm only)


def lm_eval_version() -> str:
    """The installed lm_eval package version, or a clear error naming the extra to install."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("lm_eval")
    except PackageNotFoundError:
        raise EvalHarnessError(INSTALL) from None


def metric_name(lm_task: str, metric: str, filter_key: str) -> str:
    """Our metric name of lm-eval's ``metric,filter`` on one of its tasks (no comma: --metrics is a comma list)."""
    return f"{lm_task}.{metric}" if filter_key == "none" else f"{lm_task}.{metric}.{filter_key}"


def scalar(value: Any) -> float:
    """A per-doc metric value as one number: IFEval's instruction-level lists count as their mean."""
    if isinstance(value, (list, tuple)):
        return float(np.mean([float(x) for x in value])) if value else math.nan
    return float(value)


class LMEvalTask(Task):
    Config = Config
    VERSION = "1"

    def setup(self) -> None:
        cfg = self.cfg
        if not cfg.tasks or not all(isinstance(t, str) and t for t in cfg.tasks):
            raise InputError(f"tasks: a list of lm-eval task names; {FIND_TASKS}", field="tasks")
        if cfg.limit is not None and not cfg.limit > 0:
            raise InputError(f"must be > 0, got {cfg.limit!r}", field="limit")
        if cfg.model not in ("hf", "vllm"):
            raise InputError(f"model: hf or vllm, got {cfg.model!r}", field="model")
        if cfg.model_args and cfg.model == "hf":
            raise InputError(
                "model_args are lm-eval's model arguments of model: vllm; model: hf runs the run's "
                "loaded model (its dtype: backend_options)",
                field="model_args",
            )
        if cfg.include_path is not None and not Path(cfg.include_path).is_dir():
            raise InputError("include_path: no such folder", path=cfg.include_path, field="include_path")
        self.version = lm_eval_version()
        self.manager = self._task_manager()
        try:  # lm-eval reads each task's dataset here (the hub's, or the datasets cache when offline)
            self.loaded: dict[str, Any] = dict(self.manager.load(list(cfg.tasks))["tasks"])
        except Exception as e:  # noqa: BLE001  (a broken YAML or a dataset that cannot be read: one clear error)
            raise InputError(
                f"lm-eval cannot load {', '.join(cfg.tasks)}: {type(e).__name__}: {e} (offline: fetch "
                "the data first, see docs/benchmarks.md)",
                field="tasks",
            ) from None
        self._runs: dict[str, dict[tuple[str, int], dict[str, Any]] | str] = {}
        self._pending: list[Pending] | None = None

    def _task_manager(self) -> Any:
        """lm-eval's TaskManager; only the user's folder is indexed when it holds every task asked for (indexing
        lm-eval's 14,000 built-in names takes most of a minute), and an unknown name is one clear error."""
        from lm_eval.tasks import TaskManager

        if self.cfg.include_path is not None:
            own = TaskManager(include_path=self.cfg.include_path, include_defaults=False)
            if all(t in own.all_tasks for t in self.cfg.tasks):
                return own
        manager = TaskManager(include_path=self.cfg.include_path)
        unknown = [t for t in self.cfg.tasks if t not in manager.all_tasks]
        if unknown:
            raise InputError(f"unknown lm-eval task {', '.join(map(repr, unknown))}; {FIND_TASKS}", field="tasks")
        return manager

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "lm_eval": self.version}

    def docs(self) -> dict[str, list[tuple[int, Any]]]:
        """The docs lm-eval evaluates per task under ``limit``: (doc id, doc)."""
        from lm_eval.evaluator_utils import get_sample_size

        return {name: list(t.doc_iterator(limit=get_sample_size(t, self.cfg.limit))) for name, t in self.loaded.items()}

    def judgments(self, session: Session) -> list[Pending]:
        if self._pending is None:
            self._pending = [
                Pending(content_hash(name, doc_id, doc, length=20), f"{name}/{doc_id}", (name, doc_id))
                for name, docs in self.docs().items()
                for doc_id, doc in docs
            ]
        return self._pending

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        if session.name not in self._runs:
            self._runs.clear()  # the loop judges one model at a time: keep one model's samples in memory
            self._runs[session.name] = self._evaluate(session)
        run = self._runs[session.name]
        judge_id = f"lm_eval {self.version}"
        out = []
        for p in pending:
            sample = run.get(p.payload) if isinstance(run, dict) else None
            if sample is None:
                error = run if isinstance(run, str) else "lm-eval logged no sample for this doc"
                out.append(Verdict(p.item_id, judge_id, "", "error", key=p.key, error=error))
                continue
            meta = {k: v for k, v in sample.items() if k != "resps"}
            # value: the first metric, for a glance at the verdict file; Scores and paired read meta["metrics"]
            out.append(
                Verdict(
                    p.item_id,
                    judge_id,
                    self._judge_version(p.payload[0]),
                    "ok",
                    scalar(next(iter(sample["metrics"].values()))),
                    raw=sample["resps"],
                    key=p.key,
                    meta=meta,
                )
            )
        return out

    def _evaluate(self, session: Session) -> dict[tuple[str, int], dict[str, Any]] | str:
        """One lm-eval run of every task on this model: per doc, what its verdict keeps; or the error, as text
        (a failed run is counted and retried on the next run, never a score)."""
        import lm_eval

        cfg = self.cfg
        try:
            results = lm_eval.simple_evaluate(
                model=self._model(session),
                model_args=self._model_args(session) if cfg.model != "hf" else None,
                tasks=list(cfg.tasks),
                num_fewshot=cfg.num_fewshot,
                limit=cfg.limit,
                batch_size=cfg.batch_size,
                log_samples=True,
                apply_chat_template=cfg.apply_chat_template,
                fewshot_as_multiturn=(
                    cfg.apply_chat_template if cfg.fewshot_as_multiturn is None else cfg.fewshot_as_multiturn
                ),
                system_instruction=cfg.system_instruction,
                gen_kwargs=cfg.gen_kwargs,
                task_manager=self.manager,
                fewshot_random_seed=cfg.fewshot_random_seed,
                bootstrap_iters=0,
            )
        except (EvalHarnessError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001  (lm-eval's own failure on this model: counted, retried, never a score)
            self.env.log(f"{session.name}: {self.name}: lm-eval failed: {type(e).__name__}: {e}")
            return f"lm-eval failed: {type(e).__name__}: {e}"
        self._write_official(session, results)
        return self._by_doc(results)

    def _model(self, session: Session) -> Any:
        if self.cfg.model != "hf":
            return self.cfg.model
        from lm_eval.models.huggingface import HFLM

        backend: Any = session.backend  # our hf backend: its loaded model and tokenizer
        if getattr(backend, "model", None) is None or getattr(backend, "tokenizer", None) is None:
            raise EvalHarnessError(
                f"task '{self.name}' with model: hf runs the run's loaded model: use backend: hf "
                "(or model: vllm with lm-eval's vLLM installed)"
            )
        return HFLM(pretrained=backend.model, tokenizer=backend.tokenizer, batch_size=self.cfg.batch_size)

    def _model_args(self, session: Session) -> dict[str, Any]:
        """lm-eval's vLLM model on the model's local folder (a LoRA adapter: its base plus the adapter)."""
        from evalharness.core.models import resolve

        ref = resolve(str(session.identity["model"]).rsplit("@", 1)[0])
        args: dict[str, Any] = {"pretrained": ref.base.path if ref.base else ref.path}
        if ref.base is not None:
            args["lora_local_path"] = ref.path
        return {**args, **self.cfg.model_args}

    def _by_doc(self, results: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
        """lm-eval's logged samples (one per doc and filter) merged into one record per doc."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        for name, samples in results["samples"].items():
            task = self.loaded.get(name)
            aggregation = {m: getattr(f, "__name__", str(f)) for m, f in (task.aggregation() if task else {}).items()}
            common = {
                "task": name,
                "task_version": str(results["versions"].get(name)),
                "n_shot": results["n-shot"].get(name),
                "aggregation": aggregation,
            }
            for s in samples:
                rec = out.setdefault(
                    (name, int(s["doc_id"])),
                    {
                        **common,
                        "doc_id": int(s["doc_id"]),
                        "metrics": {},
                        "filtered_resps": {},
                        "resps": _plain(s["resps"]),
                        "target": str(s["target"]),
                        "prompt": _plain(s["arguments"][0][0]),
                        "doc_hash": s["doc_hash"],
                        "prompt_hash": s["prompt_hash"],
                    },
                )
                rec["filtered_resps"][s["filter"]] = _plain(s["filtered_resps"])
                for m in s["metrics"]:
                    rec["metrics"][f"{m},{s['filter']}"] = _plain(s[m])
        return out

    def _write_official(self, session: Session, results: dict[str, Any]) -> None:
        """lm-eval's own results and samples files, as its CLI writes them, beside our records."""
        folder = self.env.out_dir / self.name / file_name(session.name)
        folder.mkdir(parents=True, exist_ok=True)
        summary = {k: v for k, v in results.items() if k != "samples"}
        (folder / "results.json").write_text(json.dumps(summary, indent=2, default=str, ensure_ascii=False))
        for name, samples in results["samples"].items():
            with open(folder / f"samples_{file_name(name)}.jsonl", "w") as f:
                f.writelines(json.dumps(s, default=str, ensure_ascii=False) + "\n" for s in samples)

    def _judge_version(self, lm_task: str, *parts: Any) -> str:
        """What changes lm-eval's prompts, decoding and scoring besides the task and its version."""
        cfg = self.cfg
        return self.judge_version(
            lm_task,
            cfg.apply_chat_template,
            cfg.fewshot_as_multiturn,
            cfg.system_instruction,
            cfg.gen_kwargs,
            cfg.fewshot_random_seed,
            *parts,
        )

    def task_version(self, lm_task: str, version: Any, n_shot: Any) -> str:
        """The comparability key's task part: lm-eval's task, its version, the few-shot setting, the doc set."""
        limit = "" if self.cfg.limit is None else f";limit={self.cfg.limit}"
        chat = ";chat" if self.cfg.apply_chat_template else ""
        return f"{self.VERSION};{lm_task} v{version};{n_shot}-shot{chat}{limit}"

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        pending = self.judgments(session)
        keys = {p.key for p in pending}
        n_docs = {name: sum(p.payload[0] == name for p in pending) for name in self.loaded}
        latest: dict[str, Verdict] = {}
        for v in verdicts:  # later rows win: a failed doc retried on a later run
            latest[v.key] = v
        ok = [v for k, v in latest.items() if k in keys and v.status == "ok"]
        out = []
        for name, task in self.loaded.items():
            mine = sorted((v for v in ok if v.meta["task"] == name), key=lambda v: v.meta["doc_id"])
            metric_keys = list(dict.fromkeys(k for v in mine for k in v.meta["metrics"])) or [
                f"{m},none" for m in task.aggregation()
            ]
            version = mine[0].meta["task_version"] if mine else getattr(task, "VERSION", None)
            n_shot = mine[0].meta["n_shot"] if mine else None
            for key in metric_keys:
                out.append(
                    self._score(session, name, task, key, mine, n_docs[name], self.task_version(name, version, n_shot))
                )
        return out

    def _score(
        self, session: Session, name: str, task: Any, key: str, verdicts: list[Verdict], n_docs: int, task_version: str
    ) -> Score:
        """One metric of one lm-eval task: lm-eval's aggregation over the docs' values, in doc order."""
        from lm_eval.api.metrics import mean

        metric, _, filter_key = key.partition(",")
        values = [v.meta["metrics"][key] for v in verdicts if key in v.meta["metrics"]]
        agg = task.aggregation().get(metric, mean)
        common: dict[str, Any] = {
            "task": self.name,
            "metric": metric_name(name, metric, filter_key),
            "model": session.name,
            "n": len(values),
            "n_skipped": n_docs - len(values),
            "task_version": task_version,
            "judge_id": f"lm_eval {self.version}",
            "judge_version": self._judge_version(name, key),
            "higher_is_better": task.higher_is_better().get(metric),
            "extra": {"lm_eval_task": name, "lm_eval_metric": key, "aggregation": getattr(agg, "__name__", "")},
        }
        if not values:
            return Score(value=None, **common)
        value = float(agg(values))
        if agg is not mean or any(isinstance(x, (list, tuple)) for x in values):
            return Score(value=value, **common)  # corpus-level: no per-doc CI
        x = np.array(values, dtype=float)
        _, se, lo, hi = mean_ci(x.tolist())
        if np.isin(x, (0.0, 1.0)).all():  # accuracy, exact match: Wilson stays inside [0, 1]
            lo, hi = wilson_ci(float(x.sum()), x.size)
            common["extra"]["ci"] = "Wilson score"
        return Score(value=value, stderr=se, ci_low=lo, ci_high=hi, **common)


def _plain(value: Any) -> Any:
    """What the store will read back (tuples become lists, NumPy numbers plain ones): verdicts hold JSON."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def per_doc(records: ModelRecords, metric: str) -> dict[Hashable, float]:
    """doc -> one model's value of one of our lm-eval metric names, from its stored verdicts."""
    latest: dict[str, Verdict] = {}
    for v in records.verdicts():
        latest[v.key] = v
    out: dict[Hashable, float] = {}
    for v in latest.values():
        if v.status != "ok":
            continue
        for key, value in v.meta["metrics"].items():
            m, _, filter_key = key.partition(",")
            if metric_name(v.meta["task"], m, filter_key) != metric:
                continue
            if v.meta["aggregation"].get(m, "mean") not in ("mean", "agg_inst_level_acc"):
                raise EvalHarnessError(
                    f"{metric}: a corpus-level metric ({v.meta['aggregation'][m]}) has no per-doc paired test"
                )
            out[v.item_id] = scalar(value)
    return out


def paired(metric: str, a: ModelRecords, b: ModelRecords, **_: Any) -> Any:
    """Doc by doc over the docs both models answered: exact McNemar when every value is 0 or 1 (accuracy, exact
    match), else paired t (IFEval's instruction-level accuracy: its per-doc mean)."""
    from evalharness.tasks.paired import mcnemar_paired, paired_t

    va, vb = per_doc(a, metric), per_doc(b, metric)
    if all(x in (0.0, 1.0) for x in [*va.values(), *vb.values()]):
        return mcnemar_paired(va, vb)
    return paired_t(va, vb, method="paired t over docs")


TASK_CLASS = LMEvalTask
