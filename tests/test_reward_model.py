"""The reward-model judge ``rm:MODEL``: tiny random reward models built here, scores checked against a plain forward
pass of the base model and the score head at the last token, computed independently of the judge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evalharness.core.errors import EvalHarnessError
from evalharness.core.prompts import PromptItem
from evalharness.core.records import Generation
from evalharness.judges import get_judge

REPO = Path(__file__).resolve().parents[1]
# the reward model's own template: differs from the policy's (tests/tiny.py), and ends each turn with EOS
RM_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
PROMPTS = [
    PromptItem("p0", messages=(("user", "write a short review"),)),
    PromptItem("p1", prompt="the movie was"),
    PromptItem("p2", messages=(("user", "write about the plot"), ("assistant", "it is fine"), ("user", "and the cast"))),
]
RESPONSES = ["great", "really very good and fun acting and a great story", "not bad", "the music was dull dull dull"]


def build_rm(path: Path, *, labels: tuple[str, ...] = ("reward",), seed: int = 0, pad_is_eos: bool = False) -> Path:
    """A tiny random LlamaForSequenceClassification reward model with its own chat template, saved to ``path``."""
    from tiny import build_tokenizer
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = build_tokenizer()
    tok.chat_template = RM_TEMPLATE
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={n: i for i, n in enumerate(labels)})
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():
        model.score.weight.mul_(50.0)  # rewards spread over several units, so an off-by-one token shows
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def plain_forward(path: Path, chats: list[list[dict[str, str]]], template: str | None = "own") -> list[list[float]]:
    """Every output of the head at the last token, one conversation at a time, with no padding."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    for chat in chats:
        if template is None:
            ids = tok(chat[0]["content"] + chat[1]["content"])["input_ids"]
        else:
            text = tok.apply_chat_template(chat, tokenize=False, chat_template=None if template == "own" else template)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hidden = model.model(torch.tensor([ids])).last_hidden_state
            out.append(model.score(hidden)[0, -1].tolist())
    return out


def chats_of(pairs: list[tuple[PromptItem, str]]) -> list[list[dict[str, str]]]:
    return [[*(it.chat() or [{"role": "user", "content": it.prompt}]), {"role": "assistant", "content": r}]
            for it, r in pairs]


def all_pairs() -> tuple[list[Generation], dict[str, PromptItem], list[list[dict[str, str]]]]:
    pairs = [(it, r) for it in PROMPTS for r in RESPONSES]
    gens = [Generation(it.id, i, r) for i, (it, r) in enumerate(pairs)]
    return gens, {it.id: it for it in PROMPTS}, chats_of(pairs)


@pytest.fixture(scope="module")
def rm(tmp_path_factory) -> Path:
    return build_rm(tmp_path_factory.mktemp("rm") / "rm")


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    return build_rm(tmp_path_factory.mktemp("rm") / "multi", labels=("helpfulness", "safety", "verbosity"), seed=1)


def test_scalar_reward_equals_a_plain_forward_pass_batched_or_not(rm):
    gens, prompts, chats = all_pairs()
    want = [x[0] for x in plain_forward(rm, chats)]
    assert max(want) - min(want) > 1.0  # the rewards differ: a misread token would show
    for bs in (1, 5, 12):  # mixed lengths in one padded batch give the one-at-a-time scores
        verdicts = get_judge(f"rm:{rm}?batch_size={bs}").judge(gens, prompts)
        assert all(v.status == "ok" for v in verdicts)
        assert [v.value for v in verdicts] == pytest.approx(want, abs=1e-4)
    judge = get_judge(f"rm:{rm}")
    assert judge.judge_id == f"rm:{rm}" and judge.metric == "reward" and judge.higher_is_better
    assert judge.judge_version.startswith("reward=logit;template=sha256:")


def test_named_head_index_and_weighted_sum(multi):
    gens, prompts, chats = all_pairs()
    want = plain_forward(multi, chats)
    safety = get_judge(f"rm:{multi}?head=safety").judge(gens, prompts)
    assert [v.value for v in safety] == pytest.approx([w[1] for w in want], abs=1e-4)
    third = get_judge(f"rm:{multi}?head=2").judge(gens, prompts)
    assert [v.value for v in third] == pytest.approx([w[2] for w in want], abs=1e-4)
    mixed = get_judge(f"rm:{multi}?weights=helpfulness:0.8,verbosity:-0.5&batch_size=4")
    assert [v.value for v in mixed.judge(gens, prompts)] == pytest.approx([0.8 * w[0] - 0.5 * w[2] for w in want],
                                                                          abs=1e-4)
    assert "0.8*logit[helpfulness]+-0.5*logit[verbosity]" in mixed.judge_version
    assert get_judge(f"rm:{multi}").judge_version.startswith("reward=logit[helpfulness];")  # output 0 by default


def test_pad_token_equal_to_eos_still_reads_the_last_token(tmp_path):
    """The template ends every turn with EOS, and pad = EOS: transformers' own pooling (the rightmost token that
    is not the pad id) would read the token before it."""
    path = build_rm(tmp_path / "rm", pad_is_eos=True, seed=4)
    gens, prompts, chats = all_pairs()
    want = [x[0] for x in plain_forward(path, chats)]
    got = [v.value for v in get_judge(f"rm:{path}?batch_size=12").judge(gens, prompts)]
    assert got == pytest.approx(want, abs=1e-4)


def test_plain_text_and_template_file(rm, tmp_path):
    item, response = PROMPTS[1], RESPONSES[1]
    gens, prompts = [Generation(item.id, 0, response)], {item.id: item}
    plain = get_judge(f"rm:{rm}?template=none").judge(gens, prompts)[0].value
    assert plain == pytest.approx(plain_forward(rm, chats_of([(item, response)]), template=None)[0][0], abs=1e-4)
    other = "{% for m in messages %}{{ m['content'] }} <|user|> {% endfor %}"
    (tmp_path / "t.jinja").write_text(other)
    judge = get_judge(f"rm:{rm}?template={tmp_path / 't.jinja'}")
    assert judge.judge(gens, prompts)[0].value == pytest.approx(
        plain_forward(rm, chats_of([(item, response)]), template=other)[0][0], abs=1e-4)


def test_version_hashes_weights_template_and_head(rm, multi, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = get_judge(f"rm:{rm}").judge_version
    model = AutoModelForSequenceClassification.from_pretrained(rm)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3  # one weight
    model.save_pretrained(tmp_path / "changed")
    AutoTokenizer.from_pretrained(rm).save_pretrained(tmp_path / "changed")
    changed = get_judge(f"rm:{tmp_path / 'changed'}").judge_version
    assert changed != base and changed.split(";weights=")[0] == base.split(";weights=")[0]
    model = AutoModelForSequenceClassification.from_pretrained(rm)  # the same weights in another folder: same hash
    model.save_pretrained(tmp_path / "copy")
    AutoTokenizer.from_pretrained(rm).save_pretrained(tmp_path / "copy")
    assert get_judge(f"rm:{tmp_path / 'copy'}").judge_version == base
    (tmp_path / "t.jinja").write_text(RM_TEMPLATE + " ")
    assert get_judge(f"rm:{rm}?template={tmp_path / 't.jinja'}").judge_version != base
    assert get_judge(f"rm:{rm}?template=none").judge_version != base
    assert len({get_judge(f"rm:{multi}?{q}").judge_version for q in ("head=0", "head=safety", "weights=safety:1")}) == 2


CUSTOM_RM = '''
from dataclasses import dataclass

import torch
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.utils import ModelOutput


@dataclass
class GatedOutput(ModelOutput):
    score: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None


class TinyGatedRM(LlamaPreTrainedModel):
    """ArmoRM's shape: objective rewards read at the last real token, and a gated mixture of them as the score."""

    def __init__(self, config):
        super().__init__(config)
        self.model = LlamaModel(config)
        self.regression = torch.nn.Linear(config.hidden_size, 3, bias=False)
        self.gate = torch.nn.Linear(config.hidden_size, 3, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        h = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        n = h.shape[0]
        last = attention_mask.sum(-1) - 1 if attention_mask is not None else torch.full((n,), h.shape[1] - 1)
        x = h[torch.arange(n), last]
        rewards = self.regression(x)
        return GatedOutput(score=(rewards * self.gate(x).softmax(-1)).sum(-1), rewards=rewards)
'''


def build_custom_rm(path: Path, tmp: Path) -> Path:
    """A tiny custom-code reward model folder (auto_map to its own class), as ArmoRM ships."""
    import importlib

    from tiny import build_tokenizer
    from transformers import LlamaConfig

    (tmp / "tinygated_rm.py").write_text(CUSTOM_RM)
    sys.path.insert(0, str(tmp))
    try:
        module = importlib.import_module("tinygated_rm")
    finally:
        sys.path.remove(str(tmp))
    module.TinyGatedRM.register_for_auto_class("AutoModelForSequenceClassification")
    tok = build_tokenizer()
    tok.chat_template = RM_TEMPLATE
    torch.manual_seed(5)
    model = module.TinyGatedRM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=128, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        model.regression.weight.mul_(50.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_custom_code_reward_model_named_output(tmp_path):
    """ArmoRM-style: trust_remote_code runs the folder's class; ``output=score`` reads its gated score, and
    ``output=rewards`` with weights a sum of its objectives."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = build_custom_rm(tmp_path / "gated", tmp_path)
    with pytest.raises(EvalHarnessError, match="cannot load reward model|not a sequence-classification reward model"):
        get_judge(f"rm:{path}")  # its code is not run unless asked
    gens, prompts, chats = all_pairs()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    want = []
    for chat in chats:
        ids = tok(tok.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]))
        want.append((float(out.score[0]), out.rewards[0].tolist()))
    judge = get_judge(f"rm:{path}?trust_remote_code=true&output=score&batch_size=5")
    assert [v.value for v in judge.judge(gens, prompts)] == pytest.approx([w[0] for w in want], abs=1e-4)
    assert ";output=score;" in judge.judge_version and ";code=sha256:" in judge.judge_version
    mixed = get_judge(f"rm:{path}?trust_remote_code=true&output=rewards&weights=0:0.5,2:-1")
    assert [v.value for v in mixed.judge(gens, prompts)] == pytest.approx(
        [0.5 * w[1][0] - w[1][2] for w in want], abs=1e-4)
    with pytest.raises(EvalHarnessError, match=r"has no tensor 'nope'; it has \['score', 'rewards'\]"):
        get_judge(f"rm:{path}?trust_remote_code=true&output=nope")


def test_bad_options_and_missing_prompts_are_clear_errors(multi, tiny_model):
    with pytest.raises(EvalHarnessError, match=r"no output 'nope'; outputs: \['helpfulness', 'safety', 'verbosity'\]"):
        get_judge(f"rm:{multi}?head=nope")
    with pytest.raises(EvalHarnessError, match=r"no output\(s\) \['nope'\]"):
        get_judge(f"rm:{multi}?weights=nope:1")
    with pytest.raises(EvalHarnessError, match="unknown option 'heads=1'"):
        get_judge(f"rm:{multi}?heads=1")
    with pytest.raises(EvalHarnessError, match="head or weights, not both"):
        get_judge(f"rm:{multi}?head=0&weights=safety:1")
    with pytest.raises(EvalHarnessError, match=r"not a sequence-classification reward model: no weights for \['score.weight'\]"):
        get_judge(f"rm:{tiny_model}")  # a causal LM: AutoModelForSequenceClassification would give it a random head
    with pytest.raises(EvalHarnessError, match="cannot load reward model"):
        get_judge("rm:/no/such/reward-model")
    with pytest.raises(EvalHarnessError, match="needs the prompt of every response"):
        get_judge(f"rm:{multi}").judge([Generation("p0", 0, "great")])


def test_too_long_conversation_is_a_failed_verdict_not_a_cut_score(rm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(rm)
    gens, prompts, chats = all_pairs()
    lengths = [len(tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False)["input_ids"]) for c in chats]
    verdicts = get_judge(f"rm:{rm}?max_length=16").judge(gens, prompts)
    want = [x[0] for x in plain_forward(rm, chats)]
    for v, n, w in zip(verdicts, lengths, want):
        if n <= 16:
            assert v.status == "ok" and v.value == pytest.approx(w, abs=1e-4)
        else:
            assert v.status == "error" and v.value is None and f"conversation of {n} tokens exceeds" in v.error
    assert min(lengths) <= 16 < max(lengths)


def test_on_policy_pairs_are_best_vs_worst_by_the_reward_model(tiny_model, rm, tmp_path):
    from evalharness.workflows.onpolicy import PairsConfig, build_pairs, pairs_file

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}]}) + "\n"
                               for i, q in enumerate(["write a short review", "review the movie", "the plot",
                                                      "write about the story", "continue this review"])))
    cfg = PairsConfig(model=str(tiny_model), prompts=str(prompts), judge=f"rm:{rm}", k=4, max_new_tokens=6)
    pairs, stats = build_pairs(cfg)
    assert len(pairs) >= 4 and stats["judge"]["id"] == f"rm:{rm}" and stats["failed_judgments"] == 0
    for p in pairs:
        chosen, rejected = (x[0] for x in plain_forward(rm, chats_of([(p.prompt, p.chosen), (p.prompt, p.rejected)])))
        assert (p.score_chosen, p.score_rejected) == pytest.approx((chosen, rejected), abs=1e-4)
        assert chosen > rejected
    out = pairs_file(cfg, tmp_path / "pairs.jsonl")
    meta = json.loads(out.with_name("pairs.jsonl.meta.json").read_text())
    assert meta["identity"]["judge_version"] == get_judge(f"rm:{rm}").judge_version


def test_ppo_reward_is_the_reward_models_score(rm, tmp_path, monkeypatch):
    from tiny import build_model

    from evalharness.judges.reward_model import RewardModelJudge
    from evalharness.training.trainer import TrainConfig, train

    seen: list[tuple[list[Generation], dict[str, PromptItem], list[float]]] = []
    real = RewardModelJudge.judge

    def spy(self, generations, prompts=None):
        verdicts = real(self, generations, prompts)
        seen.append((generations, dict(prompts or {}), [v.value for v in verdicts]))
        return verdicts

    monkeypatch.setattr(RewardModelJudge, "judge", spy)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                            for i, p in enumerate(["the movie", "a review", "the plot", "the cast"])))
    base = build_model(tmp_path / "base", seed=3)
    res = train(TrainConfig(algorithm="ppo", base=str(base), data=str(data), max_steps=1, batch_size=4,
                            warmup_ratio=0.0, output_dir=str(tmp_path / "out"),
                            hparams={"reward": f"rm:{rm}", "response_length": 5, "temperature": 1.0}))
    (gens, prompts, values), = seen
    want = [x[0] for x in plain_forward(rm, chats_of([(prompts[g.id], g.text) for g in gens]))]
    assert values == pytest.approx(want, abs=1e-4)
    assert res.metrics[0]["objective/scores"] == pytest.approx(sum(want) / len(want), abs=1e-4)
    man = json.loads((res.checkpoints[-1] / "evalharness_manifest.json").read_text())
    assert man["reward"]["id"] == f"rm:{rm}" and man["reward"]["version"] == get_judge(f"rm:{rm}").judge_version


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)


def _reward_run(tmp_path: Path, model: str, rm_query: str = "", kl: bool = False) -> subprocess.CompletedProcess:
    build_rm(tmp_path / "rm")
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": q}]})
                                              + "\n" for i, q in enumerate(["write a short review", "the plot",
                                                                            "review the movie"])))
    (tmp_path / "spec.yaml").write_text(
        f"name: rmrun\nmodels: [{model}]\nbackend: hf\ngeneration: {{max_new_tokens: 8, temperature: 1.0, n: 2}}\n"
        f"tasks:\n  helpfulness: {{task: reward, judge: \"rm:./rm{rm_query}\", prompts: ./p.jsonl}}\n"
        + (f"  kl: {{prompts: ./p.jsonl}}\nreference: {model}\n" if kl else ""))
    return _cli("run", "spec.yaml", "--results-dir", str(tmp_path / "res"), cwd=tmp_path)


def _check_reward_run(tmp_path: Path) -> None:
    from evalharness.core.prompts import load_prompts
    from evalharness.store import RunStore

    run_dir = next((tmp_path / "res").glob("rmrun-*"))
    store = RunStore(run_dir)
    items = {it.id: it for it in load_prompts(tmp_path / "p.jsonl")}
    gens = store.generations()
    by_key = {v.key: v for v in store.verdicts("helpfulness")}
    want = [x[0] for x in plain_forward(tmp_path / "rm", chats_of([(items[g.item_id], g.text) for g in gens]))]
    per_prompt: dict[str, list[float]] = {}
    for g, w in zip(gens, want):
        assert by_key[g.key].status == "ok" and by_key[g.key].value == pytest.approx(w, abs=1e-4)
        per_prompt.setdefault(g.item_id, []).append(w)
    score = next(s for s in store.scores() if s.task == "helpfulness" and s.metric == "reward")
    means = [sum(v) / len(v) for v in per_prompt.values()]
    assert score.value == pytest.approx(sum(means) / len(means), abs=1e-4) and score.n == 6
    assert score.judge_id == f"rm:{tmp_path / 'rm'}"  # rm:./rm is the spec folder's


def test_run_with_a_reward_model_task_and_its_frontier_axis(tiny_model, tmp_path):
    from evalharness.analysis.plot import frontier_points, reward_axis_label
    from evalharness.store import RunStore

    r = _reward_run(tmp_path, str(tiny_model), kl=True)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_reward_run(tmp_path)
    run_dir = next((tmp_path / "res").glob("rmrun-*"))
    (point,), meta = frontier_points([run_dir])  # the reward axis defaults to the reward model's score
    score = next(s for s in RunStore(run_dir).scores() if s.metric == "reward")
    assert meta["reward_metric"] == "reward" and point.reward == score.value and point.kl == pytest.approx(0, abs=1e-4)
    label = reward_axis_label("reward", meta["reward_judge_id"], meta["reward_judge_version"])
    assert label == f"reward: rm:{tmp_path / 'rm'} logit", label


def test_run_with_a_bad_head_exits_2_naming_it(tiny_model, tmp_path):
    r = _reward_run(tmp_path, str(tiny_model), "?head=nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "spec.yaml field 'tasks.helpfulness': judge 'rm:" in r.stderr and "no output 'nope'" in r.stderr


@pytest.mark.slow
def test_bundled_model_reward_score_and_pairs_ranked_by_a_reward_model(tmp_path):
    r = _reward_run(tmp_path, "smollm2-135m-instruct")
    assert r.returncode == 0, r.stderr[-3000:]
    _check_reward_run(tmp_path)
    r = _cli("pairs", "--model", "smollm2-135m-instruct", "--prompts", "p.jsonl", "--judge", "rm:./rm", "--k", "3",
             "--max-new-tokens", "12", "--out", "pairs.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs
    for p in pairs:
        item = PromptItem(p["id"], messages=tuple((m["role"], m["content"]) for m in p["prompt"]))
        chosen, rejected = (x[0] for x in plain_forward(tmp_path / "rm", chats_of([(item, p["chosen"]),
                                                                                   (item, p["rejected"])])))
        assert chosen > rejected and p["score_chosen"] == pytest.approx(chosen, abs=1e-4)
