"""MT-Bench: two-turn answers, single-answer grading 1-10 by an LLM judge, per-turn and overall means.

As lm-sys/FastChat ``fastchat/llm_judge`` does it: answers are generated turn by turn, the second
turn seeing the model's own first answer (gen_model_answer.py), at the category's temperature
(``temperature_config``); the judge (gen_judgment.py, common.run_judge_single: temperature 0,
max_tokens 2048) grades each turn with the official prompts, reference-guided for math, reasoning
and coding and multi-turn for turn 2; the rating is FastChat's (the first ``[[N]]``, else the first ``[N]``). Scoring reuses
``evalharness.tasks.mt_bench.metric``. Records go to the run store (resumable); an official-format copy
(``model_answer/<model>.jsonl``, ``model_judgment/<judge>_single.jsonl``) is written under
``<run>/mt_bench/`` for FastChat's ``show_result.py`` and ``evalharness metrics mt-bench``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evalharness.backends.http import ChatRequest, ChatResult
from evalharness.core.errors import InputError
from evalharness.core.jsonl import iter_jsonl
from evalharness.core.records import GenRequest, Score, Verdict, content_hash
from evalharness.judges.local import choice_probabilities
from evalharness.store import write_jsonl_atomic
from evalharness.tasks.base import Display, ModelRecords, Pending, Session, Task, data_file, file_name
from evalharness.tasks.mt_bench import metric as mt
from evalharness.tasks.reliability import Rejudge

TASK = "mt_bench"
DEFAULT_TEMPERATURE = 0.7  # gen_model_answer.py: a category outside temperature_config
API_ERROR_OUTPUT = "$ERROR$"  # common.py: what the official judgment file holds for a failed call


@dataclass
class Config:
    """One MT-Bench evaluation. Every field changes a number or what is judged."""

    data_dir: str | None = None  # a benchdata-layout mt_bench/ folder; None: fetched (pinned, checksummed)
    questions: str | None = None  # a custom question file (question_id, category, turns); None: the official 80
    limit: int | None = None  # the first N questions (after the filters)
    categories: tuple[str, ...] | None = None  # e.g. ("math", "coding"); None: all eight
    question_ids: tuple[int, ...] | None = None  # like gen_model_answer's --question-begin/--question-end
    judge_prompts: str | None = None  # None: judge_prompts.jsonl of the data
    reference_answers: str | None = None  # None: reference_answer/gpt-4.jsonl (the official GPT-4 references)
    judge_max_tokens: int = 2048  # common.run_judge_single
    rejudge: Rejudge | None = None  # repeatability: a seeded subsample judged again (tasks.reliability)
    parser: Literal["official", "last"] = (
        "official"  # mt.RATING_RULES: FastChat's first [[N]] (else [N]), or "last" (stricter)
    )


class MTBenchTask(Task):
    Config = Config
    VERSION = "1"
    needs_judge = True

    def setup(self) -> None:
        cfg = self.cfg
        self.questions, complete = _questions(cfg)
        self._judged: dict[str, list[Verdict]] = {}  # model -> its verdicts, for the one judgment file
        prompts_path = cfg.judge_prompts or _data_file(cfg, "judge_prompts.jsonl", "judge_prompts")
        self.prompts = mt.load_judge_prompts(prompts_path)
        for q in self.questions:  # checked before generating: a missing judge prompt would fail every judgment
            for turn in range(1, min(2, len(q["turns"])) + 1):
                try:
                    mt.select_judge_prompt(q["category"], turn, self.prompts)
                except InputError as e:
                    raise InputError(e.reason, path=str(prompts_path), field=e.field) from None
        ref_path = (
            Path(cfg.reference_answers)
            if cfg.reference_answers
            else _data_file(cfg, "reference_answer/gpt-4.jsonl", "reference/gpt-4")
        )
        self.refs, self.ref_model = _references(ref_path)
        missing = [
            q["question_id"]
            for q in self.questions
            if q["category"] in mt.NEED_REF_CATS and q["question_id"] not in self.refs
        ]
        if missing:  # checked before generating: reference-guided grading cannot run without them
            raise InputError(f"no reference answer for questions {missing}", path=str(ref_path))
        # A custom or partial question set is another benchmark: never in one column with the official 80.
        ids = [q["question_id"] for q in self.questions]
        self.task_version = (
            self.VERSION
            if complete
            else f"{self.VERSION}/subset:{content_hash(ids, [q['turns'] for q in self.questions], length=8)}"
        )

    def _turn_request(self, q: dict[str, Any], answers: list[str], turn: int) -> GenRequest:
        history: list[dict[str, str]] = []
        for question_turn, answer in zip(q["turns"], answers):  # the model's own earlier turns
            history += [{"role": "user", "content": question_turn}, {"role": "assistant", "content": answer}]
        return GenRequest(
            id=f"{q['question_id']}:t{turn}",
            messages=[*history, {"role": "user", "content": q["turns"][turn - 1]}],
            params=self.generation.params(temperature=_temperature(q)),
        )

    def answers(self, session: Session) -> dict[int, list[str]]:
        """Each question's answered turns, in order: turn 2 is asked once turn 1 is answered."""
        out: dict[int, list[str]] = {}
        for q in self.questions:
            turns: list[str] = []
            for turn in range(1, len(q["turns"]) + 1):
                g = session.answer(self._turn_request(q, turns, turn))
                if g is None:
                    break
                turns.append(g.text)
            out[q["question_id"]] = turns
        return out

    def requests(self, session: Session) -> list[GenRequest]:
        answers = self.answers(session)
        return [
            self._turn_request(q, answers[q["question_id"]], len(answers[q["question_id"]]) + 1)
            for q in self.questions
            if len(answers[q["question_id"]]) < len(q["turns"])
        ] + [
            self._turn_request(q, answers[q["question_id"]][: t - 1], t)
            for q in self.questions
            for t in range(1, len(answers[q["question_id"]]) + 1)
        ]

    def judgments(self, session: Session) -> list[Pending]:
        if self.env.judge is None:
            return []
        out = []
        answers = self.answers(session)
        for q in self.questions:
            qid = q["question_id"]
            for turn in range(1, len(answers[qid]) + 1):
                reference = self.refs.get(qid) if q["category"] in mt.NEED_REF_CATS else None
                prompt = mt.select_judge_prompt(q["category"], turn, self.prompts)["name"]
                request = ChatRequest(
                    id=f"{qid}:t{turn}",
                    temperature=0.0,
                    max_tokens=self.cfg.judge_max_tokens,
                    messages=mt.render_judge_messages(q, answers[qid], turn, self.prompts, reference),
                    template_version=prompt,
                    choices=RATING_CHOICES,
                    choice_prefix=RATING_PREFIX,
                )
                out.append(
                    Pending(
                        f"{qid}:t{turn}",
                        f"{qid}:{turn}",
                        (
                            request,
                            {"question_id": qid, "category": q["category"], "turn": turn, "judge_prompt": prompt},
                        ),
                    )
                )
        return out

    def _turns(self) -> tuple[int, ...]:
        """The turns asked of every model: the overall mean needs a scored judgment of each."""
        return tuple(range(1, min(2, max(len(q["turns"]) for q in self.questions)) + 1))  # FastChat grades two

    def _judge_version(self) -> str:
        return self.judge_version(
            sorted((k, v.get("system_prompt"), v.get("prompt_template")) for k, v in self.prompts.items()),
            self.cfg.judge_max_tokens,
            self.ref_model,
            f"parser:{self.cfg.parser}",
        )

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        info = {p.key: p.payload[1] for p in pending}
        version = self._judge_version()

        def parse(p: Pending, res: ChatResult) -> Verdict:
            meta = {**info[p.key], "model": session.name}
            if res.choice_logprobs:  # G-Eval: the expected rating under the judge's distribution over 1-10
                probs = choice_probabilities(res.choice_logprobs)
                rating: float | None = sum(p_ * (RATING_CHOICES.index(c) + 1) for c, p_ in probs.items())
                meta["rating_probabilities"] = probs
            else:
                rating = mt.parse_rating(res.text or "", self.cfg.parser)
            return Verdict(
                p.item_id,
                self.env.judge_name,
                version,
                "unparsed" if rating is None else "ok",
                rating,
                raw=res.text,
                key=p.key,
                meta=meta,
            )

        verdicts = self.chat_verdicts([Pending(p.key, p.item_id, p.payload[0]) for p in pending], parse)
        for p, v in zip(pending, verdicts):
            if v.status == "error":
                v.judge_version, v.meta = version, {**info[p.key], "model": session.name}
        return verdicts

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        """Official-format files, then ``metrics.mt_bench.aggregate`` (the official-file path's function)."""
        current = {p.key for p in self.judgments(session)}
        verdicts = [v for v in verdicts if v.key in current]
        out = self.env.out_dir / TASK
        _write_answers(out / "model_answer" / f"{file_name(session.name)}.jsonl", session.name, self.answers(session))
        if self.env.judge is None:
            return []
        # One file per judge holding every model's judgments, as FastChat's gen_judgment.py writes it.
        self._judged[session.name] = verdicts
        _write_judgments(
            out / "model_judgment" / f"{file_name(self.env.judge_name)}_single.jsonl",
            [v for vs in self._judged.values() for v in vs],
        )
        metrics: dict[str, Any] = {
            "task": TASK,
            "judge": self.env.judge_name,
            "reparsed": False,
            "judge_prompts": sorted({str(v.meta["judge_prompt"]) for v in verdicts}),
            "models": (mt.aggregate(verdicts, model=session.name, turns=self._turns()) or {session.name: _empty()}),
        }
        n_error = sum(v.status == "error" for v in verdicts)
        asked = {
            "score": sum(len(q["turns"]) for q in self.questions),
            **{f"turn{t}": sum(len(q["turns"]) >= t for q in self.questions) for t in (1, 2)},
        }
        scores = mt.to_scores(metrics)
        for s in scores:
            s.task, s.task_version, s.judge_version = self.name, self.task_version, self._judge_version()
            s.baseline = self.ref_model  # other reference answers change math, reasoning and coding grades
            s.decoding, s.higher_is_better = self.generation.decoding(n=1), True
            s.n_skipped = asked[s.metric] - s.n  # unparsed, failed calls and turns never generated
            turn = None if s.metric == "score" else int(s.metric[-1])
            mine = [v for v in verdicts if turn is None or v.meta["turn"] == turn]
            s.extra |= {
                "n_unparsed": sum(v.status == "unparsed" for v in mine),
                "n_error": sum(v.status == "error" for v in mine),
            }
        r = metrics["models"][session.name]
        self.env.log(
            f"{TASK} {session.name}: score {r['score']} (turn 1 {r['turn1']}, turn 2 {r['turn2']}); "
            f"{r['n']} graded, {asked['score'] - r['n']} skipped ({n_error} failed calls)"
        )
        return scores


def paired(metric: str, a: ModelRecords, b: ModelRecords, **_: Any) -> Any:
    """Per-question difference of the mean over both turns (the question is the cluster), or of one turn."""
    from evalharness.tasks.mt_bench.paired_stats import mt_bench_paired, mt_bench_scores

    turn = {"score": None, "turn1": 1, "turn2": 2}[metric]
    return mt_bench_paired(mt_bench_scores(a.verdicts(), a.model), mt_bench_scores(b.verdicts(), b.model), turn=turn)


def unit_values(metric: str, records: ModelRecords) -> dict[str, float]:
    """Per-question rating: the mean over its turns (``score``), or one turn's: the method-level per-item values."""
    from evalharness.core.stats import cluster_means
    from evalharness.tasks.mt_bench.paired_stats import mt_bench_scores

    turn = {"score": None, "turn1": 1, "turn2": 2}[metric]
    ratings = {k: v for k, v in mt_bench_scores(records.verdicts(), records.model).items() if turn in (None, k[1])}
    return {str(q): v for q, v in cluster_means(list(ratings.values()), [q for q, _ in ratings]).items()}


# Each turn is judged (item id "QID:TURN"); items are paired on the question.
DISPLAY = Display(labels={"score": "MT-Bench"}, digits=2, unit_of=lambda item: item.split(":", 1)[0])


TASK_CLASS = MTBenchTask
# The label space of a local label-logprob judge: the official "[[rating]]" on the 1-10 scale.
RATING_PREFIX = "Rating: [["
RATING_CHOICES = tuple(f"{i}]]" for i in range(1, 11))


def _empty() -> dict[str, Any]:
    return {
        "score": None,
        "turn1": None,
        "turn2": None,
        "n": 0,
        "n_turn1": 0,
        "n_turn2": 0,
        "n_unparsed": 0,
        "stderr": None,
        "ci_low": None,
        "ci_high": None,
    }


def _temperature(question: dict[str, Any]) -> float:
    """gen_api_answer.py: a question's required_temperature, else its category's, else 0.7."""
    if "required_temperature" in question:
        return float(question["required_temperature"])
    return mt.TEMPERATURE_CONFIG.get(question["category"], DEFAULT_TEMPERATURE)


# -- data -------------------------------------------------------------------------------------------
def _data_file(cfg: Config, rel: str, name: str) -> Path:
    return data_file(cfg.data_dir, rel, f"mt_bench/{name}")


def _questions(cfg: Config) -> tuple[list[dict[str, Any]], bool]:
    path = Path(cfg.questions) if cfg.questions else _data_file(cfg, "question.jsonl", "questions")
    questions = []
    for i, q in iter_jsonl(path):
        questions.append(q)
        if not isinstance(q.get("question_id"), int) or not q.get("category") or not q.get("turns"):
            raise InputError("a question needs question_id, category and turns", path=str(path), line=i)
    if cfg.categories is not None:
        questions = [q for q in questions if q["category"] in cfg.categories]
    if cfg.question_ids is not None:
        questions = [q for q in questions if q["question_id"] in cfg.question_ids]
    if not questions:
        raise InputError("no question left after the categories / question_ids filters", path=str(path))
    complete = (
        cfg.questions is None
        and cfg.categories is None
        and cfg.question_ids is None
        and (cfg.limit is None or cfg.limit >= len(questions))
    )
    return (questions[: cfg.limit] if cfg.limit is not None else questions), complete


def _references(path: Path) -> tuple[dict[int, list[str]], str]:
    """question id -> reference turns, and the reference model's name, from an official answer file."""
    refs, models = {}, set()
    for i, row in iter_jsonl(path):
        try:
            refs[int(row["question_id"])] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError, ValueError):
            raise InputError("expected question_id and choices[0].turns", path=str(path), line=i) from None
        models.add(str(row.get("model_id", "")))
    return refs, ",".join(sorted(models)) or path.stem


# -- official-format files --------------------------------------------------------------------------
def _write_answers(path: Path, model: str, answers: dict[int, list[str]]) -> None:
    """``model_answer/<model>.jsonl`` as gen_model_answer.py writes it (one choice)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(
        path,
        (
            {"question_id": qid, "answer_id": f"{qid}", "model_id": model, "choices": [{"index": 0, "turns": turns}]}
            for qid, turns in answers.items()
        ),
    )


def _write_judgments(path: Path, verdicts: list[Verdict]) -> None:
    """``model_judgment/<judge>_single.jsonl`` as gen_judgment.py writes it (-1: no rating; $ERROR$: failed call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(
        path,
        (
            {
                "question_id": v.meta["question_id"],
                "model": v.meta["model"],
                "judge": [v.judge_id, v.meta["judge_prompt"]],
                "judgment": API_ERROR_OUTPUT if v.status == "error" else v.raw,
                "score": v.value if v.status == "ok" else mt.UNPARSED_SCORE,
                "turn": v.meta["turn"],
                "tstamp": time.time(),
            }
            for v in verdicts
        ),
    )
