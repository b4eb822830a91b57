"""Shared pieces of the task tests: a recording fake policy, and one task through the real run loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalharness.backends.fake import FakeBackend
from evalharness.core.records import GenRequest, Generation, Score
from evalharness.pipeline.runner import ModelSpec, RunPlan, run
from evalharness.store import RunStore
from evalharness.tasks.base import GenerationSettings, TaskSpec
from evalharness.tasks.reliability import RELIABILITY_METRICS

POLICY = "fake-policy"


class RecordingBackend(FakeBackend):
    """The fake policy, remembering every request it was asked to complete."""

    def __init__(self, name: str = POLICY) -> None:
        super().__init__(name)
        self.requests: list[GenRequest] = []

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        self.requests += requests
        return super().generate(requests)


def run_task(tmp_path: Path, module: str, cfg: Any, policy: Any, judge: Any, judge_name: str = "judge",
             **generation: Any) -> tuple[list[Score], RunStore]:
    """``cfg`` of task ``module`` over one model (``policy``, named POLICY) with ``judge``, through
    ``evalharness.pipeline.runner.run`` into ``tmp_path/results``; the same arguments resume the same run.
    The task's own scores: the judge's reliability figures the run adds are tests/test_judge_reliability.py's."""
    plan = RunPlan(name="t", models=[ModelSpec(POLICY, POLICY)], tasks=[TaskSpec(module, module, cfg)], backend="fake",
                   backends={POLICY: policy}, chat_judge=(judge, judge_name) if judge is not None else None,
                   generation=GenerationSettings(**generation), results_dir=tmp_path / "results", progress=False)
    res = run(plan)
    return [s for s in res.scores if s.metric not in RELIABILITY_METRICS], RunStore(res.path)
