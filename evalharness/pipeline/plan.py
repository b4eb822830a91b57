"""A run's plan before anything is sent: requests, tokens, cost, time and statistical power.

For each task and model it counts the generations and judgments still missing (the run folder and the response
cache counted, by the run loop's own rule: ``missing_generations``, ``missing_judgments``), renders the judge
prompts that will be sent (answers not generated yet stand in as placeholders of the expected length), and
estimates their tokens, their cost from ``evalharness.core.prices``, and the time at the judge's concurrency.
For each comparison the spec makes (every model against the first, as ``compare`` pairs them) it gives the
minimum detectable difference at 80% power, two-sided alpha 0.05: (z_0.975 + z_0.8) sigma / sqrt(n), with sigma
the SD of per-item paired differences from earlier runs in the index, else the benchmark's typical sigma
(``TYPICAL_SIGMA``, derived from official data). Every approximation is named in the plan's notes.

``runner.run`` writes the plan to ``plan.json`` in the run folder when a run starts; ``side_by_side`` sets it
beside what the run used (the judge client's usage).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evalharness.backends.http import ChatRequest
from evalharness.core import prompts, stats
from evalharness.core.prices import BATCH_DISCOUNT, PRICE_SOURCES, PRICES_DATE, cost_usd, price_of
from evalharness.core.records import GenRecord, GenRequest, Verdict
from evalharness.store import RunStore, indexed_runs, read_json_object
from evalharness.tasks.base import Pending, Session, Task, display_of

PLAN_FILE = "plan.json"

# OpenAI-family judges: no tokenizer ships offline (tiktoken fetches its encodings), so a message's content counts
# as ceil(characters / 4) tokens, OpenAI's rule of thumb for English ("one token is about 4 characters"), plus
# the chat framing of OpenAI's cookbook (num_tokens_from_messages): 3 tokens per message and 3 priming the reply.
CHARS_PER_TOKEN = 4.0
TOKENS_PER_MESSAGE, TOKENS_PER_REPLY = 3, 3
# What the stated approximation allows: docs/cost.md gives the measured error on the three benchmarks' prompts.
TOKEN_TOLERANCE = 0.25

# Output tokens per judge request when no earlier run recorded any, capped by the request's max_tokens.
# alpaca_eval: the official annotator asks for one token. mt_bench: mean of 160 GPT-4 judgments in the official
# format (benchdata mt_bench/model_judgment/nonofficial_sample, 827 characters / 4). arena_hard: assumed (the
# judge answers the question itself before comparing), not measured.
TYPICAL_OUTPUT_TOKENS = {"alpaca_eval": 1, "mt_bench": 207, "arena_hard": 700}
DEFAULT_OUTPUT_TOKENS = 256
# Latency of one judge request (assumed): a fixed 0.5 s plus the output decoded at 50 tokens/s.
BASE_LATENCY_S, DECODE_TOKENS_PER_S = 0.5, 50.0

# The SD of per-item paired differences between two models on the task's per-item scale (Display.item_scale,
# clustered by Display.unit_of), derived from official judgments in benchdata (tests/test_plan.py recomputes them):
# alpaca_eval: win % (100 (preference - 1)), OpenHermes-2.5-Mistral-7B vs gpt-3.5-turbo-1106 (the closest pair by
#   win rate of the official weighted_alpaca_eval_gpt4_turbo annotations), 805 instructions;
# arena_hard: per-question mean game score %, gpt-4-0613 vs gpt-3.5-turbo-0125 from the official v0.1 battles
#   (GPT-4-Turbo judge, baseline gpt-4-0314), 500 questions;
# mt_bench: per-question mean rating over both turns, gpt-4 vs alpaca-13b from the official GPT-4 single grading
#   (FastChat), 80 questions; two far-apart models: an upper bound for two checkpoints of one base.
TYPICAL_SIGMA = {"alpaca_eval": 25.45, "arena_hard": 42.23, "mt_bench": 2.69}
TYPICAL_SIGMA_SOURCE = {
    "alpaca_eval": "typical: official AlpacaEval 2 annotations, OpenHermes-2.5-Mistral-7B vs gpt-3.5-turbo-1106",
    "arena_hard": "typical: official Arena-Hard v0.1 battles, gpt-4-0613 vs gpt-3.5-turbo-0125",
    "mt_bench": "typical: official MT-Bench GPT-4 grades, gpt-4 vs alpaca-13b",
}
EARLIER_RUNS = 20  # the newest complete runs of the index that are read for sigma and output lengths
_FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


# -- what is missing: the one rule, used by the run loop and by the plan ----------------------------
def missing_generations(session: Session, tasks: Sequence[Task]) -> dict[str, tuple[str, GenRequest]]:
    """The requests with a missing or failed sample: generation key -> (first task asking, request); tasks
    asking alike share one request."""
    todo: dict[str, tuple[str, GenRequest]] = {}
    for task in tasks:
        for req in task.requests(session):
            if any(session.answer(req, si) is None for si in range(req.params.n)):
                todo.setdefault(session.key(req, 0), (task.name, req))
    return todo


def missing_judgments(
    task: Task, session: Session, stored: Mapping[str, str], again: AbstractSet[str]
) -> list[Pending]:
    """The task's judgments with no stored verdict, or one whose status is in ``again`` (failures: 'error')."""
    return [p for p in task.judgments(session) if stored.get(p.key, "error") in again]


# -- the plan's records -----------------------------------------------------------------------------
@dataclass
class TaskModelPlan:
    """One task and model: what is still to do and what it should cost."""

    task: str
    module: str
    model: str
    generations: int  # samples to generate
    generation_tokens: int  # their output tokens, at most (max_new_tokens each)
    judgments: int  # judgments still missing (chat-judged or not)
    requests: int  # of those, judge requests to send (the response cache answers the rest)
    cached: int  # judge requests the response cache already holds
    prompt_tokens: int
    output_tokens: int
    cost_usd: float | None
    time_s: float | None


@dataclass
class Comparison:
    """One comparison the spec makes: its units and the minimum detectable difference at 80% power."""

    task: str
    a: str
    b: str
    n: int
    sigma: float | None
    mde: float | None
    sigma_from: str


@dataclass
class RunEstimate:
    run_id: str
    path: str
    resumes: bool
    judge: str | None
    concurrency: int | None
    batch: bool
    price: tuple[float, float] | None  # USD per 1M (prompt, completion) tokens
    rows: list[TaskModelPlan]
    comparisons: list[Comparison]
    notes: list[str]
    budget: dict[str, Any] = field(default_factory=dict)
    stored_generations: int = 0  # generation rows in the run folder when planned (actual = rows after - these)

    def totals(self) -> dict[str, Any]:
        """Sums over every task and model (cost None when any part has no price)."""
        costs = [r.cost_usd for r in self.rows if r.requests]
        times = [r.time_s for r in self.rows if r.requests]
        return {
            "generations": sum(r.generations for r in self.rows),
            "generation_tokens": sum(r.generation_tokens for r in self.rows),
            "judgments": sum(r.judgments for r in self.rows),
            "requests": sum(r.requests for r in self.rows),
            "cached": sum(r.cached for r in self.rows),
            "prompt_tokens": sum(r.prompt_tokens for r in self.rows),
            "output_tokens": sum(r.output_tokens for r in self.rows),
            "cost_usd": None if any(c is None for c in costs) else sum(c for c in costs if c is not None),
            "time_s": None if any(t is None for t in times) else sum(t for t in times if t is not None),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "totals": self.totals()}


# -- tokens -----------------------------------------------------------------------------------------
TokenCounter = Callable[[ChatRequest], int]


def approx_tokens(request: ChatRequest) -> int:
    """The stated approximation for OpenAI-family judges: ceil(chars / 4) per message plus the chat framing."""
    return TOKENS_PER_REPLY + sum(
        TOKENS_PER_MESSAGE + math.ceil(len(str(m.get("content") or "")) / CHARS_PER_TOKEN) for m in request.messages
    )


def tokenizer_counter(tokenizer: Any) -> TokenCounter:
    """Exact prompt tokens of a local judge: the prompt as it renders it (``core.prompts.render``, its chat template)
    plus the label prefix it appends."""

    def count(request: ChatRequest) -> int:
        item = prompts.PromptItem(request.id, messages=tuple((m["role"], m["content"]) for m in request.messages))
        prefix = (
            tokenizer(request.choice_prefix, add_special_tokens=False)["input_ids"] if request.choice_prefix else []
        )
        return len(prompts.render(tokenizer, item)) + len(prefix)

    return count


def chat_request(pending: Pending) -> ChatRequest | None:
    """The judge request a pending judgment sends: its payload, or the ChatRequest inside a payload tuple;
    None for a judgment that calls no chat judge (a classifier, an AlpacaEval tie on identical outputs)."""
    payload = pending.payload
    if isinstance(payload, ChatRequest):
        return payload
    if isinstance(payload, tuple):
        return next((x for x in payload if isinstance(x, ChatRequest)), None)
    return None


def output_tokens(module: str, request: ChatRequest, earlier: dict[str, float], local: bool) -> int:
    """Output tokens of one judge request: earlier runs' mean, else the benchmark's typical value, capped by
    max_tokens; none for a local judge scoring labels (it generates nothing)."""
    if local and request.choices:
        return 0
    typical = earlier.get(module, TYPICAL_OUTPUT_TOKENS.get(module, DEFAULT_OUTPUT_TOKENS))
    return int(round(min(typical, request.max_tokens or typical)))


# -- placeholders for answers not generated yet ------------------------------------------------------
def placeholder(chars: int) -> str:
    """Text of about ``chars`` characters that stands in for an answer not generated yet."""
    return (_FILLER * (chars // len(_FILLER) + 1))[: max(1, chars)]


def answer_chars(session: Session, task: Task) -> int:
    """Expected characters of one of the task's answers: the mean of the answers stored for it, else
    max_new_tokens tokens at 4 characters each (an upper bound)."""
    reqs = task.requests(session)
    texts = [g.text for r in reqs for g in session.samples(r) if g is not None]
    if texts:
        return int(sum(map(len, texts)) / len(texts))
    return int(CHARS_PER_TOKEN * (reqs[0].params.max_new_tokens if reqs else task.generation.max_new_tokens))


def fill_missing(session: Session, tasks: Sequence[Task]) -> Counter[str]:
    """Fill every missing sample with a placeholder, round after round as the run loop generates (MT-Bench's
    second turn follows the first); the number of samples per task (the first task asking for one)."""
    counts: Counter[str] = Counter()
    lengths = {t.name: answer_chars(session, t) for t in tasks}
    for _ in range(16):  # a task asks for at most a few rounds (MT-Bench: two turns)
        todo = missing_generations(session, tasks)
        if not todo:
            break
        for task_name, req in todo.values():
            for si in range(req.params.n):
                if session.answer(req, si) is None:
                    key = session.key(req, si)
                    session.answers[key] = GenRecord(
                        key=key,
                        model=session.name,
                        item_id=req.id,
                        sample_index=si,
                        text=placeholder(lengths[task_name]),
                    )
                    counts[task_name] += 1
    return counts


# -- earlier runs: sigma of paired differences, judge output lengths ---------------------------------
@dataclass
class Earlier:
    """What the newest comparable earlier run says about a task module."""

    sigma: float | None  # pooled SD of per-unit paired differences (each model against the run's first)
    source: str
    output_tokens: float | None  # mean judge output: chars / 4 scaled by the run's reported tokens (reported_ratio)
    run: str = ""


def module_of(task: Task) -> str:
    """The task module's short name (``alpaca_eval``), whatever the task is called in the spec."""
    return str(task.identity()["module"]).rsplit(".", 1)[-1]


def paired_sigma(verdicts: Sequence[Verdict], module: str, models: Sequence[str]) -> tuple[float, int] | None:
    """Pooled SD of per-unit paired differences of every model against the first, on the task's per-item scale
    (``Display.item_scale``, units by ``Display.unit_of``), and the number of paired units; None without a pair."""
    display = display_of(module)
    scale = display.item_scale or (lambda v: v)
    unit = display.unit_of or (lambda item: item)
    per_model: dict[str, dict[Any, float]] = {}
    for m in models:
        ok = [(v.item_id, v.value) for v in verdicts if v.model == m and v.status == "ok" and v.value is not None]
        if ok:
            per_model[m] = stats.cluster_means([scale(float(x)) for _, x in ok], [unit(i) for i, _ in ok])
    names = list(per_model)
    num, df, units = 0.0, 0, 0
    for other in names[1:]:
        a, b = per_model[names[0]], per_model[other]
        diffs = [b[k] - a[k] for k in a if k in b]
        if len(diffs) >= 2:
            mean = sum(diffs) / len(diffs)
            num += sum((d - mean) ** 2 for d in diffs)
            df, units = df + len(diffs) - 1, max(units, len(diffs))
    return (math.sqrt(num / df), units) if df else None


def earlier_runs(modules: set[str], root: Path | None, judge_name: str | None) -> dict[str, Earlier]:
    """Per task module, the newest complete run of the index that judged it (one with the same judge first)."""
    runs = [r for r in indexed_runs(root) if r["status"] == "complete"][::-1][:EARLIER_RUNS]
    found: dict[str, Earlier] = {}
    for same_judge in (True, False):
        for run in runs:
            try:
                manifest = read_json_object(Path(run["path"]) / "manifest.json")
            except Exception:  # noqa: BLE001 - a damaged earlier run gives no estimate, never a failed plan
                continue
            if same_judge and (manifest.get("judge") or {}).get("name") != judge_name:
                continue
            models = [str(m.get("name")) for m in manifest.get("models", []) if isinstance(m, dict)]
            wanted = {
                name: module
                for name, info in (manifest.get("tasks") or {}).items()
                if (module := str((info or {}).get("module", "")).rsplit(".", 1)[-1]) in modules and module not in found
            }
            if not wanted:
                continue
            try:  # the run's verdicts, read once for all its tasks
                verdicts = RunStore(Path(run["path"])).verdicts()
            except Exception:  # noqa: BLE001 - a damaged earlier run gives no estimate, never a failed plan
                continue
            ratio = reported_ratio(verdicts, manifest)
            for name, module in wanted.items():
                mine = [v for v in verdicts if v.task == name]
                got = _earlier_task(mine, name, module, models, run["run_id"], ratio)
                if got is not None and module not in found:
                    found[module] = got
    return found


def reported_ratio(verdicts: list[Verdict], manifest: dict[str, Any]) -> float:
    """The judge's reported completion tokens over the chars / 4 count of the run's stored replies: the factor
    that turns an earlier reply's length into the judge's own token count (1 when the run recorded no usage).
    Short replies (a verdict label) count several times chars / 4; long ones about chars / 4."""
    usage = manifest.get("judge_usage")
    reported = usage.get("completion_tokens") if isinstance(usage, dict) else None
    approx = sum(len(v.raw) / CHARS_PER_TOKEN for v in verdicts if v.status == "ok" and v.raw)
    return float(reported) / approx if isinstance(reported, (int, float)) and reported > 0 and approx > 0 else 1.0


def _earlier_task(
    verdicts: list[Verdict], task: str, module: str, models: list[str], run_id: str, ratio: float = 1.0
) -> Earlier | None:
    """What task ``task``'s stored ``verdicts`` of an earlier run say: sigma and the mean judge output."""
    sigma = paired_sigma(verdicts, module, models)
    outs = [ratio * len(v.raw) / CHARS_PER_TOKEN for v in verdicts if v.status == "ok" and v.raw]
    if sigma is None and not outs:
        return None
    source = f"run {run_id}, task {task}" + (f", {sigma[1]} paired units" if sigma else "")
    return Earlier(sigma[0] if sigma else None, source, sum(outs) / len(outs) if outs else None, f"run {run_id}")


# -- the estimate -------------------------------------------------------------------------------------
@dataclass
class JudgeFacts:
    """What the plan needs to know of the run's judge."""

    name: str | None
    model: str | None = None
    local: bool = False
    concurrency: int | None = None
    batch: bool = False
    prices: dict[str, tuple[float, float]] | None = None
    count: TokenCounter = approx_tokens
    cached: Callable[[list[ChatRequest]], list[bool]] | None = None  # which requests the response cache holds

    def cost(self, prompt: int, output: int) -> float | None:
        if self.local:
            return 0.0
        return cost_usd(self.model or "", prompt, output, self.prices, batch=self.batch)

    def time_s(self, requests: int, output_per_request: float) -> float | None:
        """Requests in waves of ``concurrency``, each wave one request's latency; None for a local judge."""
        if self.local or not requests:
            return None if self.local else 0.0
        latency = BASE_LATENCY_S + output_per_request / DECODE_TOKENS_PER_S
        return math.ceil(requests / (self.concurrency or 1)) * latency


def plan_task(
    task: Task,
    session: Session,
    stored: Mapping[str, str],
    judge: JudgeFacts,
    outputs: dict[str, float],
    gens: int,
    again: AbstractSet[str] = frozenset({"error"}),
) -> TaskModelPlan:
    """One task and model: its missing judgments (``again``: the stored statuses asked again, as ``--rejudge``
    asks them, past the response cache), the requests they send, and their tokens, cost and time."""
    todo = missing_judgments(task, session, stored, again)
    asked = [(p, r) for p in todo if (r := chat_request(p)) is not None]
    fresh = [r for p, r in asked if stored.get(p.key, "error") == "error"]
    hits = iter(judge.cached(fresh) if judge.cached is not None and fresh else [False] * len(fresh))
    requests = [r for _, r in asked]
    send = [r for p, r in asked if stored.get(p.key, "error") != "error" or not next(hits)]
    module = module_of(task)
    prompt = sum(judge.count(r) for r in send)
    output = sum(output_tokens(module, r, outputs, judge.local) for r in send)
    return TaskModelPlan(
        task=task.name,
        module=module,
        model=session.name,
        generations=gens,
        generation_tokens=gens * task.generation.max_new_tokens,
        judgments=len(todo),
        requests=len(send),
        cached=len(requests) - len(send),
        prompt_tokens=prompt,
        output_tokens=output,
        cost_usd=judge.cost(prompt, output) if send else 0.0,
        time_s=judge.time_s(len(send), output / len(send) if send else 0.0),
    )


def units(task: Task, session: Session) -> int:
    """The task's independent units (instructions, questions): what its paired comparisons resample."""
    unit = display_of(module_of(task)).unit_of or (lambda item: item)
    judged = task.judgments(session)
    ids = [p.item_id for p in judged] if judged else [r.id for r in task.requests(session)]
    return len({unit(i) for i in ids})


def compare_plan(task: Task, models: list[str], n: int, earlier: Earlier | None) -> list[Comparison]:
    """Every model against the first on this task: the MDE from the earlier run's sigma, else the typical one."""
    module = module_of(task)
    sigma: float | None
    if earlier is not None and earlier.sigma:  # a zero SD (every verdict alike: a demo judge) says nothing
        sigma, source = earlier.sigma, earlier.source
    else:
        sigma, source = TYPICAL_SIGMA.get(module), TYPICAL_SIGMA_SOURCE.get(module, "no earlier run, no typical value")
    out = []
    for b in models[1:]:
        mde = stats.mde_normal(sigma / math.sqrt(n)) if sigma is not None and n > 0 else None
        out.append(Comparison(task.name, models[0], b, n, sigma, mde, source))
    return out


def estimate(
    tasks: Sequence[Task],
    sessions: dict[str, Session],
    store: RunStore | None,
    judge: JudgeFacts,
    *,
    run_id: str,
    root: Path | None,
    budget: dict[str, Any] | None = None,
    again: AbstractSet[str] = frozenset({"error"}),
) -> RunEstimate:
    """The plan of one run: ``sessions`` hold each model's stored generations (they get placeholders for the
    missing ones), ``store`` is the run folder when it exists already (its verdicts count as done)."""
    earlier = earlier_runs({module_of(t) for t in tasks}, root, judge.name)
    outputs = {m: e.output_tokens for m, e in earlier.items() if e.output_tokens is not None}
    stored_rows = len(store.read("generations")) if store is not None else 0
    rows = []
    for name, session in sessions.items():
        gens = fill_missing(session, tasks)
        for task in tasks:
            stored = {v.key: v.status for v in store.verdicts(task.name, name)} if store is not None else {}
            rows.append(plan_task(task, session, stored, judge, outputs, gens[task.name], again))
    models = list(sessions)
    first = sessions[models[0]]
    comparisons = [c for t in tasks for c in compare_plan(t, models, units(t, first), earlier.get(module_of(t)))]
    path = str(store.path) if store is not None else ""
    price = None if judge.local or judge.model is None else price_of(judge.model, judge.prices)
    return RunEstimate(
        run_id=run_id,
        path=path,
        resumes=store is not None,
        judge=judge.name,
        concurrency=judge.concurrency,
        batch=judge.batch,
        price=price,
        rows=rows,
        comparisons=comparisons,
        notes=notes(judge, earlier, price),
        budget={k: v for k, v in (budget or {}).items() if v is not None},
        stored_generations=stored_rows,
    )


def notes(judge: JudgeFacts, earlier: dict[str, Earlier], price: tuple[float, float] | None) -> list[str]:
    """How each number was estimated, in words: the plan states its approximations."""
    out = []
    if judge.name is None:
        out.append("no judge: nothing is sent to a judge")
    elif judge.local:
        out.append(
            "prompt tokens: the local judge's own tokenizer and chat template (exact); no cost; time not estimated"
        )
    else:
        out.append(
            f"prompt tokens: approximation, ceil(characters / {CHARS_PER_TOKEN:g}) per message + {TOKENS_PER_MESSAGE} "
            f"per message + {TOKENS_PER_REPLY} (no tokenizer for {judge.model} offline); expect within "
            f"+-{TOKEN_TOLERANCE:.0%} of the billed count on English prompts (docs/cost.md)"
        )
        measured = ", ".join(f"{m} {e.output_tokens:.0f} ({e.run})" for m, e in earlier.items() if e.output_tokens)
        typical = ", ".join(f"{m} {v}" for m, v in TYPICAL_OUTPUT_TOKENS.items())
        out.append(
            "output tokens per request: "
            + (f"earlier runs' mean: {measured}; else " if measured else "")
            + f"typical: {typical}; else {DEFAULT_OUTPUT_TOKENS}; each capped by the request's max_tokens"
        )
        out.append(
            f"time: ceil(requests / concurrency) x ({BASE_LATENCY_S:g} s + output tokens / {DECODE_TOKENS_PER_S:g} "
            "per s), per task and model, in sequence (assumed latency); generation time not estimated"
        )
        batch = f" x {BATCH_DISCOUNT:g} (Batch API)" if judge.batch else ""
        out.append(
            f"price of {judge.model}: "
            + (f"{price[0]:g} / {price[1]:g} USD per 1M prompt / output tokens{batch}" if price else "UNKNOWN")
            + f" (table dated {PRICES_DATE}: {'; '.join(PRICE_SOURCES)}; a spec's judge.prices overrides it)"
        )
    out.append(
        "answers not generated yet stand in for themselves at the mean length of the model's stored answers "
        "to the task, else max_new_tokens x 4 characters (an upper bound)"
    )
    out.append(
        "MDE: (z_0.975 + z_0.8) sigma / sqrt(n), two-sided alpha 0.05, 80% power, on the per-item scale "
        "(AlpacaEval win %, Arena-Hard game score %, MT-Bench rating); sigma of per-unit paired differences"
    )
    return out


# -- rendering ----------------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "?"
    return f"{x:,.{digits}f}"


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [line(header), *map(line, rows)]


def render(plan: RunEstimate) -> str:
    """The plan as text: one row per task and model, the totals, the MDE of each comparison, the notes."""
    where = f"resumes {plan.path}" if plan.resumes else "a new run folder"
    lines = [f"plan of run {plan.run_id} ({where}); judge: {plan.judge or 'none'}"]
    if plan.concurrency:
        lines[0] += f", concurrency {plan.concurrency}" + (", Batch API" if plan.batch else "")
    header = [
        "task",
        "model",
        "generations",
        "judge requests",
        "cached",
        "prompt tok",
        "output tok",
        "cost USD",
        "time",
    ]
    rows = [
        [
            r.task,
            r.model,
            _num(r.generations),
            _num(r.requests),
            _num(r.cached),
            _num(r.prompt_tokens),
            _num(r.output_tokens),
            _num(r.cost_usd, 4),
            _time(r.time_s),
        ]
        for r in plan.rows
    ]
    t = plan.totals()
    rows.append(
        ["total", "", *(_num(t[k]) for k in ("generations", "requests", "cached", "prompt_tokens", "output_tokens"))]
        + [_num(t["cost_usd"], 4), _time(t["time_s"])]
    )
    lines += _table(header, rows)
    for key, value in plan.budget.items():
        planned = t["cost_usd"] if key == "max_cost" else t["requests"]
        over = planned is not None and planned > value
        lines.append(f"budget {key}: {value}" + (" (the plan is OVER it)" if over else ""))
    if plan.comparisons:
        lines += ["", "power: minimum detectable difference (MDE) at 80% power, two-sided alpha 0.05"]
        comp = [
            [c.task, f"{c.b} - {c.a}", _num(c.n), _num(c.sigma, 2), _num(c.mde, 2), c.sigma_from]
            for c in plan.comparisons
        ]
        lines += _table(["task", "comparison", "n", "sigma", "MDE", "sigma from"], comp)
    lines += ["", *(f"note: {n}" for n in plan.notes)]
    return "\n".join(lines)


def side_by_side(path: Path) -> str | None:
    """Planned and actual judge requests, tokens and cost of a finished run folder (None without a plan)."""
    file = path / PLAN_FILE
    if not file.is_file():
        return None
    planned = read_json_object(file).get("totals", {})
    plan_rows = read_json_object(file).get("stored_generations", 0)
    store = RunStore(path)
    usage = store.manifest().get("judge_usage") or {}
    actual = {
        "generations": len(store.read("generations")) - int(plan_rows),
        "requests": (usage.get("requests", 0) - usage.get("retries", 0)) if usage else 0,
        "prompt_tokens": usage.get("prompt_tokens"),
        "output_tokens": usage.get("completion_tokens"),
        "cost_usd": usage.get("cost_usd"),
    }
    rows = []
    for key in ("generations", "requests", "prompt_tokens", "output_tokens", "cost_usd"):
        p, a = planned.get(key), actual[key]
        digits = 4 if key == "cost_usd" else 0
        ratio = f"{a / p:.2f}" if isinstance(a, (int, float)) and isinstance(p, (int, float)) and p else "-"
        rows.append([key.replace("_", " "), "", _num(p, digits), _num(a, digits), ratio])
    lines = _table(["planned vs actual", "", "planned", "actual", "actual / planned"], rows)
    if usage.get("retries"):
        lines.append(f"({usage['retries']} retried attempts not counted as requests)")
    return "\n".join(lines)
