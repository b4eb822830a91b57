"""MT-Bench's paired statistics: a paired t over questions, the two turns of a question one cluster."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evalharness.core.records import Verdict
from evalharness.tasks.paired import LEVEL, PairedResult, clustered_paired_t, paired_t


def mt_bench_scores(verdicts: Sequence[Verdict], model: str) -> dict[tuple[str, int], float]:
    """(question id, turn) -> rating of a model's parsed MT-Bench verdicts (metrics.mt_bench records)."""
    out: dict[tuple[str, int], float] = {}
    for v in verdicts:
        if v.meta["model"] == model and v.status == "ok":
            key = (str(v.meta["question_id"]), int(v.meta["turn"]))
            if key in out:
                raise ValueError(f"two ratings of {model!r} for question {key[0]} turn {key[1]}")
            out[key] = float(v.value)  # type: ignore[arg-type]
    return out


def mt_bench_paired(
    a: Mapping[tuple[str, int], float],
    b: Mapping[tuple[str, int], float],
    *,
    turn: int | None = None,
    level: float = LEVEL,
) -> PairedResult:
    """MT-Bench: with ``turn`` None, the per-question difference of the mean over the turns both
    models have (the cluster is the question), t over questions; with ``turn`` 1 or 2, the
    per-question difference on that turn. Keys are (question id, turn)."""
    if turn is not None:
        pick = lambda m: {q: v for (q, t), v in m.items() if t == turn}  # noqa: E731
        return paired_t(pick(a), pick(b), level=level, method=f"paired t over questions, turn {turn}")
    return clustered_paired_t(a, b, lambda k: k[0], level=level, method="paired t over questions (mean of both turns)")
