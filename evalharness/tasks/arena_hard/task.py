"""Arena-Hard-Auto: the policy's answers against a baseline's, two judge games per question, Bradley-Terry.

As lmarena/arena-hard-auto does it (gen_judgment.py, show_result.py; data and judge settings at the
commit pinned in benchdata): game 1 shows the baseline as assistant A and game 2 swaps; the judge
gets the official system prompt and template at the config's temperature and max_tokens; the verdict
is read by the version's official rule (``ah.VERDICT_RULES``; v2.0 drops a question with an unparsed game); a decisive ``>>`` counts as three battles. Scoring reuses
``evalharness.tasks.arena_hard.metric``. Records go to the run store (resumable); an official-format copy
(``model_answer/<model>.jsonl``, ``model_judgment/<judge>/<model>.jsonl``) is written under
``<run>/arena_hard/<bench>/`` for arena-hard-auto's own tools and ``evalharness metrics arena-hard``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from evalharness.backends.http import ChatRequest, ChatResult
from evalharness.core.errors import InputError
from evalharness.core.jsonl import iter_jsonl
from evalharness.core.records import GenRequest, Score, Verdict, content_hash
from evalharness.store import write_jsonl_atomic
from evalharness.tasks.arena_hard import metric as ah
from evalharness.tasks.base import Display, ModelRecords, Pending, Session, Task, data_file, file_name, stored_answers
from evalharness.tasks.reliability import Rejudge

TASK = "arena_hard"
BENCHES = {"v0.1": "arena-hard-v0.1", "v2.0": "arena-hard-v2.0"}
# show_result.py (v2) reports --category hard_prompt unless told otherwise; v0.1 has one category.
DEFAULT_CATEGORIES: dict[str, tuple[str, ...] | None] = {"v0.1": None, "v2.0": ("hard_prompt",)}
DEFAULT_CI_LEVEL = {"v0.1": 0.95, "v2.0": 0.90}  # show_result.py: 2.5/97.5 (v0.1) and 5/95 (v2) percentiles
# The official judge configs: v0.1's judge_config.yaml (the leaderboard's, system prompt inside); v2.0's
# config yaml with the system prompts and baselines of JUDGE_SETTINGS (utils/judge_utils.py) as JSON.
# version -> (config file, its benchdata name), (settings file, its name) or None.
JUDGE_FILES = {
    "v0.1": (("config/judge_config.v0.1-legacy.yaml", "judge_config"), None),
    "v2.0": (("config/arena-hard-v2.0.yaml", "config"), ("config/judge_prompts_v2.0.json", "judge_prompts")),
}


@dataclass
class Config:
    """One Arena-Hard evaluation. Every field changes a number or what is judged."""

    version: Literal["v0.1", "v2.0"] = "v0.1"
    data_dir: str | None = None  # a benchdata-layout arena_hard/ folder; None: fetched (pinned, checksummed)
    questions: str | None = None  # a custom question file (uid, prompt[, category]); None: the version's
    limit: int | None = None  # the first N questions (after the category filter)
    categories: tuple[str, ...] | None = None  # None: the official default (v0.1 all, v2.0 hard_prompt)
    # None: per category from the judge settings (gpt-4-0314; v2.0 o3-mini / gemini); or run:RUN/MODEL,
    # another model's answers stored by an earlier run (head-to-head)
    baseline: str | None = None
    judge_config: str | None = None  # None: the version's official config (JUDGE_FILES)
    judge_settings: str | None = None  # JUDGE_SETTINGS JSON, for a config without system_prompt
    judge_max_tokens: int | None = None  # None: the config's (4096 v0.1, 16000 v2.0)
    judge_temperature: float | None = None  # None: the config's (0.0)
    bootstrap_rounds: int = 100
    bootstrap_unit: Literal["battle", "question"] = "battle"
    ci_level: float | None = None  # None: the version's official interval
    style_control: bool = False
    style_tokenizer: str = "o200k_base"  # tiktoken encoding for token_len (add_markdown_info.py); or "whitespace"
    seed: int = ah.OFFICIAL_SEED  # bootstrap seed
    rejudge: Rejudge | None = None  # repeatability: a seeded subsample judged again (tasks.reliability)
    parser: Literal["v0.1", "v2.0", "last"] | None = None  # ah.VERDICT_RULES; None: the version's official rule


class ArenaHardTask(Task):
    def item_extras(self) -> dict[str, tuple[str | None, str]]:
        """The baseline's answer of each question."""
        out: dict[str, tuple[str | None, str]] = {}
        for q in getattr(self, "questions", []):
            answers = self.base_answers.get(self.baselines[q["category"]], {})
            if q["uid"] in answers:
                out[q["uid"]] = (None, str(answers[q["uid"]]))
        return out

    Config = Config
    VERSION = "1"
    needs_judge = True

    def setup(self) -> None:
        cfg = self.cfg
        self.bench = bench = BENCHES[cfg.version]
        self.rule = cfg.parser or ah.official_rule(cfg.version)
        self.questions, complete = _questions(cfg, bench)
        self.judge_cfgs = {c: _judge_config(cfg, c) for c in dict.fromkeys(q["category"] for q in self.questions)}
        self.baselines = {c: cfg.baseline or jc.baseline or ah.DEFAULT_BASELINE for c, jc in self.judge_cfgs.items()}
        stored = stored_answers(cfg.baseline or "", f"{TASK}/{bench}/model_answer/{{model}}.jsonl")
        if stored:  # head-to-head: another model's answers from an earlier run, named by that model
            self.baselines = dict.fromkeys(self.baselines, stored[1])
            self.base_answers = {stored[1]: _answers(stored[0], self.questions, stored[1])}
        else:
            self.base_answers = {
                b: _answers(_data_file(cfg, f"{bench}/model_answer/{b}.jsonl", f"answers/{b}"), self.questions, b)
                for b in set(self.baselines.values())
            }
        # A custom or partial question set is another benchmark: its scores never share the official column.
        self.task_version = (
            bench
            if complete
            else f"{bench}/subset:{content_hash([q['uid'] for q in self.questions], [q['prompt'] for q in self.questions], length=8)}"
        )
        self._requests = {
            q["uid"]: GenRequest(
                id=q["uid"], messages=[{"role": "user", "content": q["prompt"]}], params=self.generation.params()
            )
            for q in self.questions
        }
        self.count = _token_counter(cfg.style_tokenizer) if cfg.style_control else None

    def requests(self, session: Session) -> list[GenRequest]:
        return list(self._requests.values())

    def answers(self, session: Session) -> dict[str, str | None]:
        return {uid: (g.text if (g := session.answer(r)) is not None else None) for uid, r in self._requests.items()}

    def judgments(self, session: Session) -> list[Pending]:
        if self.env.judge is None:
            return []
        out = []
        for q, answer in zip(self.questions, self.answers(session).values()):
            if answer is None:
                continue
            jc, base = self.judge_cfgs[q["category"]], self.baselines[q["category"]]
            pair = (self.base_answers[base][q["uid"]], answer)
            for game, (a, b) in ((1, pair), (2, pair[::-1])):  # game 1: baseline is A; game 2: the policy is A
                key = f"{self.bench}:{q['uid']}:{base}:g{game}"
                request = ChatRequest(
                    id=key,
                    messages=ah.render_judge_messages(q["prompt"], a, b, jc),
                    temperature=self._temperature(jc),
                    max_tokens=self.cfg.judge_max_tokens or jc.max_tokens or 4096,
                    template_version=_version(jc),
                    choices=LABEL_CHOICES,
                    choice_prefix=LABEL_PREFIX,
                )
                info = {"category": q["category"], "baseline": base, "game": game, "patterns": jc.regex_patterns}
                out.append(Pending(key, q["uid"], (request, info)))
        return out

    def judge(self, session: Session, pending: list[Pending]) -> list[Verdict]:
        asked = [Pending(p.key, p.item_id, p.payload[0]) for p in pending]
        info = {p.key: p.payload[1] for p in pending}

        def parse(p: Pending, res: ChatResult) -> Verdict:
            i = info[p.key]
            label = ah.parse_verdict(res.text or "", i["patterns"], self.rule)
            value, decisive = None, False
            if label is not None:  # LABELS: canonical label -> (assistant A's score, decisive)
                score_a, decisive = ah.LABELS[label]
                value = score_a if i["game"] == 2 else 1.0 - score_a  # the policy's score: 1 win, 0.5 tie, 0 loss
            return Verdict(
                p.item_id,
                self.env.judge_name,
                self._judge_version(i["category"]),
                "ok" if label else "unparsed",
                value,
                raw=res.text,
                order=self._order(i),
                key=p.key,
                meta={
                    **self._meta(session, i),
                    "label": label,
                    "decisive": decisive,
                    **({"choice_logprobs": res.choice_logprobs} if res.choice_logprobs else {}),
                },
            )

        verdicts = self.chat_verdicts(asked, parse)
        for p, v in zip(pending, verdicts):
            if v.status == "error":
                v.order, v.judge_version = self._order(info[p.key]), self._judge_version(info[p.key]["category"])
                v.meta = {**self._meta(session, info[p.key]), "label": None, "decisive": False}
        return verdicts

    @staticmethod
    def _order(info: dict[str, Any]) -> str:
        return "AB" if info["game"] == 1 else "BA"

    @staticmethod
    def _meta(session: Session, info: dict[str, Any]) -> dict[str, Any]:
        return {"model": session.name, "baseline": info["baseline"], "game": info["game"], "category": info["category"]}

    def _judge_version(self, category: str) -> str:
        jc = self.judge_cfgs[category]
        return self.judge_version(
            _version(jc), self._temperature(jc), self.cfg.judge_max_tokens or jc.max_tokens, f"parser:{self.rule}"
        )

    def _temperature(self, jc: ah.JudgeConfig) -> float:
        return self.cfg.judge_temperature if self.cfg.judge_temperature is not None else jc.temperature or 0.0

    def aggregate(self, session: Session, verdicts: list[Verdict]) -> list[Score]:
        """Official-format answer and judgment files, then per category the one metric function on the battles."""
        current = {p.key for p in self.judgments(session)}
        verdicts = [v for v in verdicts if v.key in current]
        answers = {uid: text or "" for uid, text in self.answers(session).items()}
        out = self.env.out_dir / TASK / self.bench
        _write_answers(out / "model_answer", session.name, self.questions, answers, self.count)
        if self.env.judge is None:
            return []
        _write_judgments(
            out / "model_judgment" / file_name(self.env.judge_name) / f"{file_name(session.name)}.jsonl",
            self.questions,
            verdicts,
        )
        metadata = self._style_metadata(session.name, answers, out / "model_answer")
        scores = []
        n_questions = {c: sum(q["category"] == c for q in self.questions) for c in self.baselines}
        for category, base in self.baselines.items():
            mine = [v for v in verdicts if v.meta["category"] == category]
            label = self.bench if category == self.bench else f"{self.bench}/{category}"
            counts = ah.verdict_counts(mine, whole_question=self.rule == "v2.0") or {session.name: (0, 0)}
            own = counts[session.name]
            assert own is not None  # verdict_counts never stores None
            missing = 2 * n_questions[category] - own[0]
            metrics = self._category_metrics(mine, counts, session.name, base, label, metadata)
            scores += self._category_scores(metrics, session.name, category, base, label, mine, missing)
        return scores

    def _style_metadata(
        self, model: str, answers: dict[str, str], folder: Path
    ) -> dict[str, dict[str, dict[str, Any]]] | None:
        """With style control: model -> question -> style metadata (the baselines' answer files written too)."""
        if self.count is None:
            return None
        metadata = {
            m: {q["uid"]: ah.style_metadata(texts[q["uid"]], self.count) for q in self.questions}
            for m, texts in [(model, answers), *self.base_answers.items()]
        }
        for b, texts in self.base_answers.items():
            _write_answers(folder, b, self.questions, texts, self.count)
        return metadata

    def _category_metrics(
        self,
        mine: list[Verdict],
        counts: dict[str, tuple[int, int] | None],
        model: str,
        base: str,
        label: str,
        metadata: dict[str, dict[str, dict[str, Any]]] | None,
    ) -> dict[str, Any]:
        """One category's metrics: ``score_battles`` on its battles, or an empty row where none was parsed."""
        cfg = self.cfg
        ci_level = cfg.ci_level or DEFAULT_CI_LEVEL[cfg.version]
        variant: Literal["v0.1", "v2"] = "v0.1" if cfg.version == "v0.1" else "v2"
        bootstrap = {"rounds": cfg.bootstrap_rounds, "seed": cfg.seed, "unit": cfg.bootstrap_unit, "ci_level": ci_level}
        battles = ah.battles_from_verdicts(mine, whole_question=self.rule == "v2.0")
        if battles.empty:
            own = counts[model]
            assert own is not None  # verdict_counts never stores None
            return _empty_metrics(label, base, self.env.judge_name, bootstrap, model, own)
        metrics = ah.score_battles(
            battles,
            counts,
            baseline=base,
            bootstrap_rounds=cfg.bootstrap_rounds,
            seed=cfg.seed,
            bootstrap_unit=cfg.bootstrap_unit,
            style_metadata=metadata,
            style_variant=variant,
            ci_level=ci_level,
            judge=self.env.judge_name,
            bench=label,
        )
        if metrics["style_control"] is not None:
            metrics["style_control"]["tokenizer"] = cfg.style_tokenizer
        return metrics

    def _category_scores(
        self,
        metrics: dict[str, Any],
        model: str,
        category: str,
        base: str,
        label: str,
        mine: list[Verdict],
        missing: int,
    ) -> list[Score]:
        """One category's Scores with this run's keys and its unparsed, failed and never-generated game counts."""
        scores = []
        for s in ah.to_scores(metrics):
            s.task, s.task_version = (
                self.name,
                self.task_version if category == self.bench else f"{self.task_version}/{category}",
            )
            s.judge_id, s.judge_version = self.env.judge_name, self._judge_version(category)
            s.decoding, s.higher_is_better = self.generation.decoding(n=1), True
            s.n_skipped += missing  # games never judged because the answer failed to generate
            s.extra |= {
                "category": category,
                "n_unparsed": sum(v.status == "unparsed" for v in mine),
                "n_error": sum(v.status == "error" for v in mine),
                "n_not_generated": missing,
            }
            self.env.log(
                f"{TASK} {label} {model}: {s.metric} {s.value} ({s.ci_low}, {s.ci_high}) vs {base}; "
                f"{s.n} games, {s.n_skipped} skipped"
            )
            scores.append(s)
        return scores


def paired(
    metric: str, a: ModelRecords, b: ModelRecords, *, rounds: int = 1000, seed: int = ah.OFFICIAL_SEED, **_: Any
) -> Any:
    """Paired cluster bootstrap over questions (both games of a question together, the same draws for both
    models), Bradley-Terry refit each round, against the baseline both were judged against."""
    from evalharness.tasks.arena_hard.paired_stats import arena_hard_paired_bootstrap

    if metric != "score":
        raise ValueError(f"no paired test for arena_hard {metric} (style control needs the answers' metadata)")
    va, vb = a.verdicts(), b.verdicts()
    for records, vs in ((a, va), (b, vb)):
        if not any(v.status == "ok" for v in vs):  # else the battle table names it with a side prefix ('a:...')
            raise ValueError(
                f"no scored games for {records.model} in run {records.folder.name} (imported official "
                "battles keep no per-game judgments)"
            )
    bases = {v.meta.get("baseline") for v in va + vb if v.status == "ok"}
    if len(bases) != 1:
        raise ValueError(f"the two models were judged against different baselines {sorted(map(str, bases))}")
    for side, vs in (("a", va), ("b", vb)):  # one name may be in both runs: tell them apart in one battle table
        for v in vs:
            v.meta = {**v.meta, "model": f"{side}:{v.meta['model']}"}
    battles = ah.battles_from_verdicts([*va, *vb])
    return arena_hard_paired_bootstrap(
        battles, f"a:{a.model}", f"b:{b.model}", baseline=cast(str, bases.pop()), rounds=rounds, seed=seed
    )


# Per-item game scores 0..1 as %; a crossing of 50 is a flipped verdict.
DISPLAY = Display(
    labels={"score": "Arena-Hard %", "score_style_controlled": "Arena-Hard SC %"},
    digits=1,
    item_scale=lambda v: 100 * v,
    flip_at=50.0,
    slow={"score": "a Bradley-Terry refit per round"},
)


TASK_CLASS = ArenaHardTask
# The label space of a local label-logprob judge: the judge config's verdict labels, after the
# official prompt's closing instruction ("My final verdict is: [[A>B]]").
LABEL_PREFIX = "My final verdict is: [["
LABEL_CHOICES = ("A>>B]]", "A>B]]", "A=B]]", "B>A]]", "B>>A]]")


# -- data -------------------------------------------------------------------------------------------
def _data_file(cfg: Config, rel: str, name: str) -> Path:
    return data_file(cfg.data_dir, rel, f"arena_hard/{cfg.version}/{name}")


def _questions(cfg: Config, bench: str) -> tuple[list[dict[str, Any]], bool]:
    path = Path(cfg.questions) if cfg.questions else _data_file(cfg, f"{bench}/question.jsonl", "questions")
    questions = []
    for i, q in iter_jsonl(path):
        if not isinstance(q.get("prompt"), str) or not q.get("uid"):
            raise InputError("a question needs uid and prompt", path=str(path), line=i)
        questions.append({"uid": str(q["uid"]), "category": q.get("category") or bench, "prompt": q["prompt"]})
    if not questions:
        raise InputError("no questions in the file (empty)", path=str(path))
    wanted = cfg.categories if cfg.categories is not None else DEFAULT_CATEGORIES[cfg.version]
    if wanted is not None:
        unknown = set(wanted) - {q["category"] for q in questions}
        if unknown:
            raise InputError(f"no questions in categories {sorted(unknown)}", path=str(path), field="categories")
        questions = [q for q in questions if q["category"] in wanted]
    complete = cfg.questions is None and cfg.categories is None and (cfg.limit is None or cfg.limit >= len(questions))
    return (questions[: cfg.limit] if cfg.limit is not None else questions), complete


def _judge_config(cfg: Config, category: str) -> ah.JudgeConfig:
    config_file, settings_file = JUDGE_FILES[cfg.version]
    path = cfg.judge_config or _data_file(cfg, *config_file)
    settings: str | Path | None = cfg.judge_settings
    if settings is None and cfg.judge_config is None and settings_file is not None:
        settings = _data_file(cfg, *settings_file)
    return ah.load_judge_config(path, settings=settings, category=category)


def _answers(path: Path, questions: list[dict[str, Any]], model: str) -> dict[str, str]:
    """question id -> answer text from an official answer file (v2 ``messages`` or v0.1 ``choices``)."""
    texts = {}
    for _, row in iter_jsonl(path):
        qid = str(row.get("uid", row.get("question_id")))
        if "messages" in row:
            content = row["messages"][-1]["content"]
            texts[qid] = content["answer"] if isinstance(content, dict) else content
        else:
            texts[qid] = row["choices"][0]["turns"][0]["content"]
    missing = [q["uid"] for q in questions if q["uid"] not in texts]
    if missing:
        raise InputError(
            f"baseline {model} has no answer to {len(missing)} questions (first {missing[0]})", path=str(path)
        )
    return texts


def _empty_metrics(
    bench: str, baseline: str, judge: str, bootstrap: dict[str, Any], model: str, own: tuple[int, int]
) -> dict[str, Any]:
    """``score_battles``' shape for a category without one parsed game: no score, the model's game counts."""
    return {
        "bench": bench,
        "baseline": baseline,
        "judge": judge,
        "bootstrap": bootstrap,
        "style_control": None,
        "models": {
            model: {
                "score": None,
                "ci_low": None,
                "ci_high": None,
                "elo": None,
                "n_battles": 0,
                "n_games": own[0],
                "n_unparsed": own[1],
            }
        },
    }


# -- official-format files --------------------------------------------------------------------------
def _write_answers(
    folder: Path, model: str, questions: list[dict[str, Any]], texts: dict[str, str], count: Callable[[str], int] | None
) -> None:
    """``model_answer/<model>.jsonl`` as gen_answer.py writes it (metadata only when style is measured)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(
        folder / f"{file_name(model)}.jsonl",
        (
            {
                "uid": q["uid"],
                "model": model,
                "messages": [
                    {"role": "user", "content": q["prompt"]},
                    {"role": "assistant", "content": {"answer": texts[q["uid"]]}},
                ],
                **({"metadata": ah.style_metadata(texts[q["uid"]], count)} if count else {}),
            }
            for q in questions
        ),
    )


def _write_judgments(path: Path, questions: list[dict[str, Any]], verdicts: list[Verdict]) -> None:
    """``model_judgment/<judge>/<model>.jsonl`` as v2 gen_judgment.py writes it: a failed game is null."""
    by_question: dict[str, list[Verdict]] = {}
    for v in sorted(verdicts, key=lambda v: v.meta["game"]):
        by_question.setdefault(v.item_id, []).append(v)
    out = []
    for q in questions:
        games = by_question.get(q["uid"])
        if not games:
            continue
        out.append(
            {
                "uid": q["uid"],
                "category": q["category"],
                "judge": games[0].judge_id,
                "model": games[0].meta["model"],
                "baseline": games[0].meta["baseline"],
                "games": [
                    None if v.status == "error" else {"score": v.meta.get("label"), "judgment": {"answer": v.raw}}
                    for v in games
                ],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(path, out)


# -- helpers ----------------------------------------------------------------------------------------
def _version(jc: ah.JudgeConfig) -> str:
    """Judge template version: a hash of what the judge is shown and how its verdict is read."""
    text = json.dumps([jc.system_prompt, jc.prompt_templates, jc.regex_patterns])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _token_counter(name: str) -> Callable[[str], int]:
    if name == "whitespace":
        return lambda text: len(text.split())
    import tiktoken  # its vocabulary is downloaded once and cached by tiktoken

    encoding = tiktoken.get_encoding(name)
    return lambda text: len(encoding.encode(text, disallowed_special=()))
