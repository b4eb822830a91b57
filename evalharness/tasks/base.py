"""What every benchmark task gets: a policy backend, a chat judge, the run's store, settings.

A task module (alpaca_eval.py, arena_hard.py, mt_bench.py) defines a ``Config`` dataclass and
``run(cfg, ctx) -> list[Score]``. It reads top to bottom: load data, generate answers for what is
missing, judge what is missing, compute metrics from the stored records. Records are appended to
the run's store as they are produced, so a killed run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .. import benchdata
from ..backends.base import Backend
from ..errors import InputError
from ..backends.openai import ChatRequest, ChatResult
from ..records import GenRequest, SamplingParams
from ..store import RunStore


def data_file(data_dir: str | None, rel: str, fetch_name: str) -> Path:
    """``data_dir/rel`` (a benchdata-layout benchmark folder, taken as the user's data), else the pinned,
    checksummed file ``fetch_name`` from the benchmark's public home (see evalharness.benchdata)."""
    if data_dir is None:
        return benchdata.fetch(fetch_name)
    path = Path(data_dir) / rel
    if not path.is_file():
        raise InputError(f"file not found (data_dir is a benchdata-layout {fetch_name.split('/')[0]}/ folder)",
                         path=str(path))
    return path


class ChatJudge(Protocol):
    """``JudgeClient`` (any OpenAI-compatible endpoint) or ``LocalChatJudge`` (in-process model)."""

    model_id: str

    def complete(self, requests: list[ChatRequest], progress: bool = False) -> list[ChatResult]: ...


@dataclass
class GenerationSettings:
    """Decoding for the policy's answers (a task may override temperature per item, e.g. MT-Bench)."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def params(self, **overrides: Any) -> SamplingParams:
        base = {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed}
        return SamplingParams(**{**base, **overrides})


@dataclass
class TaskContext:
    policy: Backend
    policy_name: str  # the name scores and official-format files carry
    judge: ChatJudge | None  # None: generate only
    judge_name: str  # e.g. "gpt-4-1106-preview@https://api.openai.com/v1" or "local:smollm2 (demo)"
    store: RunStore
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    progress: bool = True
    log: Callable[[str], None] = lambda _: None

    # -- resumable records ------------------------------------------------------------------
    def stored(self, kind: str, task: str) -> dict[str, dict[str, Any]]:
        """Rows of ``kind`` ('generations' | 'verdicts') for ``task``, by their 'key' field."""
        return {r["key"]: r for r in self.store.read(kind) if r.get("task") == task}

    def save(self, kind: str, task: str, rows: list[dict[str, Any]]) -> None:
        """Append rows (each must carry a unique 'key') tagged with the task."""
        self.store.append(kind, [{**r, "task": task} for r in rows])

    def generate_missing(self, task: str, requests: dict[str, GenRequest], chunk: int = 32) -> dict[str, dict[str, Any]]:
        """Generate (n=1) for keys not yet stored (or stored as failed), saving after every chunk.

        A row whose ``status`` is 'error' (an endpoint that failed after its retries) is kept as a
        record but generated again on the next run; tasks count it as a failure, never judge it.
        """
        done = {k: v for k, v in self.stored("generations", task).items() if v.get("status") != "error"}
        todo = [(k, r) for k, r in requests.items() if k not in done]
        if todo:
            self.log(f"{task}: generating {len(todo)} answers with {self.policy_name}")
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            gens = self.policy.generate([r for _, r in part])
            rows = [{"key": k, "id": r.id, "model": self.policy_name, "text": g.text,
                     "status": "error" if g.finish_reason == "error" else "ok", "error": g.error,
                     "n_tokens": len(g.token_ids or []), "finish_reason": g.finish_reason, "params": r.params.to_dict()}
                    for (k, r), g in zip(part, gens)]
            self.save("generations", task, rows)
            done.update({row["key"]: {**row, "task": task} for row in rows})
        return done

    def judge_missing(self, task: str, requests: dict[str, ChatRequest],
                      to_row: Callable[[str, ChatResult], dict[str, Any]], chunk: int = 64) -> dict[str, dict[str, Any]]:
        """Judge keys with no stored verdict or only a failed one (failures are retried, never kept as
        results); ``to_row`` turns a result into a verdict row (status ok | unparsed | error, raw kept)."""
        if self.judge is None:
            raise RuntimeError(f"{task}: no judge configured")
        done = {k: v for k, v in self.stored("verdicts", task).items() if v.get("status") != "error"}
        todo = [(k, r) for k, r in requests.items() if k not in done]
        if todo:
            self.log(f"{task}: {len(todo)} judgments by {self.judge_name}")
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            results = self.judge.complete([r for _, r in part], progress=self.progress)
            rows = [{"key": k, **to_row(k, res)} for (k, _), res in zip(part, results)]
            self.save("verdicts", task, rows)
            done.update({row["key"]: {**row, "task": task} for row in rows})
        return {k: done[k] for k in requests}
