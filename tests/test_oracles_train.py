"""Independent oracles for the trainer: its logged step-1 loss against the paper's formula on a plain forward pass.

The trainer logs, for step 1, the loss at the initial weights. Here the same number is recomputed without any
evalharness code: the tokenizer and model are loaded again with ``transformers``, each (prompt, response) is scored
by one unpadded forward pass (sum of response-token log-probs, EOS included, as DESIGN.md fixes), and each paper's
loss is written out below on those sums, with the lengths (response tokens + EOS) and scores of the data. A
separate reference model (another seed) makes the log-ratios non-zero, so a swapped or missing reference, length
or score changes the number.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from evalharness.training.algorithms import ALGORITHMS, get_spec
from evalharness.training.trainer import TrainConfig, train

# Prompts differ per pair; responses differ in length (chosen vs rejected and across pairs); scores all favour
# the chosen answer by varying gaps (ODPO's offset is log(s_w - s_l)).
PAIRS = [
    ("write a short review about the movie", "the movie was great and i loved it", "bad", 0.9, 0.2),
    ("write a review", "fun", "the plot was dull and the acting was bad", 0.7, 0.6),
    ("continue this review the cast", "was very good", "was not good and the music was dull", 0.95, 0.1),
    ("write about the plot", "the plot is fine and the story is fun", "the plot is bad", 0.5, 0.45),
    ("write a short review", "loved it", "hated it really", 0.8, 0.3),
    ("review the music", "the music was really great", "dull", 0.6, 0.05),
]
# KTO: one prompt for every row, so the batch KL reference point (mean log-ratio over mismatched (x_i, y_j), a
# derangement of the batch) is the mean over all completions whatever the derangement.
KTO_PROMPT = "write a short review about the movie"
KTO_ROWS = [("the movie was great and i loved it", True), ("bad", False), ("really fun story", True),
            ("the plot was dull and the acting was bad", False), ("good music", True)]

# (algorithm, hyperparameters): non-default values where a default would hide a term
CASES = [
    ("dpo", {"beta": 0.3}),
    ("cdpo", {"beta": 0.3, "label_smoothing": 0.2}),
    ("hinge", {"beta": 0.3}),
    ("ipo", {"beta": 0.4}),
    ("ipo", {"beta": 0.4, "length_normalized": True}),
    ("odpo", {"beta": 0.3, "alpha": 0.7}),
    ("simpo", {"beta": 2.0, "gamma": 0.5}),
    ("rdpo", {"beta": 0.3, "alpha": 0.05}),
    ("orpo", {"lam": 0.4}),
    ("cpo", {"beta": 0.3, "nll_weight": 0.7}),
    ("kto", {"beta": 0.3, "desirable_weight": 1.3, "undesirable_weight": 0.8}),
]


def test_cases_cover_every_offline_algorithm():
    assert {a for a, _ in CASES} == {a for a in ALGORITHMS if not get_spec(a).online}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from tiny import build_model
    d = tmp_path_factory.mktemp("oracle")
    return build_model(d / "policy", seed=11, logit_scale=3.0), build_model(d / "reference", seed=12, logit_scale=3.0)


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _data(tmp: Path, algorithm: str) -> Path:
    path = tmp / "data.jsonl"
    if algorithm == "kto":
        rows = [{"id": f"k{i}", "prompt": _chat(KTO_PROMPT), "completion": c, "label": lab}
                for i, (c, lab) in enumerate(KTO_ROWS)]
    else:
        rows = [{"id": f"p{i}", "prompt": _chat(p), "chosen": c, "rejected": r, "score_chosen": sc, "score_rejected": sr}
                for i, (p, c, r, sc, sr) in enumerate(PAIRS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Scorer:
    """Summed response log-probs (EOS included) and response lengths, by a plain unpadded forward pass."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def prompt_ids(self, text: str) -> list[int]:
        out = self.tok.apply_chat_template(_chat(text), add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def response_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def __call__(self, prompt: str, response: str) -> tuple[float, int]:
        p, r = self.prompt_ids(prompt), self.response_ids(response)
        with torch.no_grad():
            logits = self.model(torch.tensor([p + r])).logits[0].double()
        lp = torch.log_softmax(logits, -1)
        total = sum(float(lp[len(p) - 1 + i, t]) for i, t in enumerate(r))  # position j predicts token j + 1
        return total, len(r)


def _logsig(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def expected_loss(algorithm: str, hp: dict, pol: Scorer, ref: Scorer) -> float:
    """The batch-mean loss at the initial weights, each paper's formula written out per pair."""
    if algorithm == "kto":  # Ethayarajh et al. 2024, Eq. 8, z0 = max(0, batch KL estimate), detached
        ratios = [pol(KTO_PROMPT, c)[0] - ref(KTO_PROMPT, c)[0] for c, _ in KTO_ROWS]
        z0 = max(0.0, sum(ratios) / len(ratios))
        assert z0 > 0.1  # these two models put the reference point to work
        losses = [hp["desirable_weight"] * (1 - _sig(hp["beta"] * (r - z0))) if lab
                  else hp["undesirable_weight"] * (1 - _sig(hp["beta"] * (z0 - r)))
                  for r, (_, lab) in zip(ratios, KTO_ROWS)]
        return sum(losses) / len(losses)
    losses = []
    for prompt, chosen, rejected, s_w, s_l in PAIRS:
        (w, nw), (l, nl) = pol(prompt, chosen), pol(prompt, rejected)
        rw, rl = ref(prompt, chosen)[0], ref(prompt, rejected)[0]
        h = (w - rw) - (l - rl)
        b = hp.get("beta")
        if algorithm == "dpo":  # Rafailov et al. Eq. 7
            loss = -_logsig(b * h)
        elif algorithm == "cdpo":  # Mitchell, Eq. 3
            e = hp["label_smoothing"]
            loss = -(1 - e) * _logsig(b * h) - e * _logsig(-b * h)
        elif algorithm == "hinge":  # SLiC-HF on the DPO log-ratio
            loss = max(0.0, 1 - b * h)
        elif algorithm == "ipo":  # Azar et al. Eq. 17 (beta = tau); per-token log-ratios when length-normalised
            hh = (w - rw) / nw - (l - rl) / nl if hp.get("length_normalized") else h
            loss = (hh - 1 / (2 * b)) ** 2
        elif algorithm == "odpo":  # Amini et al.: offset alpha * log(s_w - s_l)
            loss = -_logsig(b * h - hp["alpha"] * math.log(s_w - s_l))
        elif algorithm == "simpo":  # Meng et al. Eq. 6
            loss = -_logsig(b * w / nw - b * l / nl - hp["gamma"])
        elif algorithm == "rdpo":  # Park et al. 2024 Eq. 9: the length term enters as + (alpha |y_w| - alpha |y_l|)
            loss = -_logsig(b * (w - rw) - b * (l - rl) + (hp["alpha"] * nw - hp["alpha"] * nl))
        elif algorithm == "orpo":  # Hong et al. Eq. 6-7: odds of the token-mean probability
            def log_odds(a: float) -> float:
                return math.log(math.exp(a) / (1 - math.exp(a)))
            loss = -w / nw - hp["lam"] * _logsig(log_odds(w / nw) - log_odds(l / nl))
        elif algorithm == "cpo":  # Xu et al. Eq. 6-8
            loss = -_logsig(b * (w - l)) + hp["nll_weight"] * (-w / nw)
        else:
            raise AssertionError(algorithm)
        losses.append(loss)
    return sum(losses) / len(losses)


@pytest.mark.parametrize("algorithm,hp", CASES, ids=[f"{a}{'-ln' if h.get('length_normalized') else ''}"
                                                      for a, h in CASES])
def test_step_one_loss_is_the_papers_formula(models, tmp_path, algorithm, hp):
    policy, reference = models
    data = _data(tmp_path, algorithm)
    n = len(KTO_ROWS) if algorithm == "kto" else len(PAIRS)
    res = train(TrainConfig(algorithm=algorithm, base=str(policy), reference=str(reference), data=str(data),
                            hparams=hp, batch_size=n, max_steps=1, learning_rate=1e-3, warmup_ratio=0.0,
                            output_dir=str(tmp_path / "run")))
    want = expected_loss(algorithm, hp, Scorer(policy), Scorer(reference))
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["step"] == 1 and logged["loss"] == res.metrics[0]["loss"]
    assert logged["loss"] == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_ppo_first_update_is_at_ratio_one_and_the_kl_controller_is_wired(models, tmp_path):
    """What PPO's log exposes: with one PPO epoch of one minibatch, the update is at ratio 1 (the training forward
    gives the rollout's own log-probs: no approx-KL, nothing clipped, and -mean of the whitened advantages, 0, as
    the policy loss); and each step's logged kl_coef is the previous one moved by Ziegler's controller, written out
    here, on the previous step's logged KL (G = 8 episodes per step)."""
    policy, reference = models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                               for i, p in enumerate(["the movie was", "the plot", "i really", "the acting"] * 2)))
    hp = {"reward": "sentiment", "response_length": 6, "temperature": 0.7, "num_ppo_epochs": 1,
          "num_mini_batches": 1, "adaptive_kl": True, "target_kl": 0.05, "horizon": 40.0, "kl_coef": 0.1}
    res = train(TrainConfig(algorithm="ppo", base=str(policy), reference=str(reference), data=str(prompts),
                            hparams=hp, batch_size=8, max_steps=3, learning_rate=1e-3, warmup_ratio=0.0,
                            schedule="constant", output_dir=str(tmp_path / "ppo")))
    rows = res.metrics
    for r in rows:
        assert r["val/ratio"] == pytest.approx(1.0, abs=1e-5) and r["policy/approxkl_avg"] == pytest.approx(0, abs=1e-6)
        assert r["policy/clipfrac_avg"] == 0 and r["loss/policy_avg"] == pytest.approx(0, abs=1e-5)
    assert rows[0]["objective/kl_coef"] == 0.1
    for prev, cur in zip(rows, rows[1:]):
        err = min(max(prev["objective/kl"] / 0.05 - 1, -0.2), 0.2)
        assert cur["objective/kl_coef"] == pytest.approx(prev["objective/kl_coef"] * (1 + err * 8 / 40.0), rel=1e-12)
    assert rows[-1]["objective/kl_coef"] != 0.1  # the controller moved it


def test_bf16_mixed_precision_follows_the_fp32_losses_within_the_rounding_bound(models, tmp_path):
    """DPO with a separate reference, three steps in fp32 and in bf16 mixed precision (fp32 master weights).

    The bound: DPO's per-pair loss -log sigmoid(beta h) has |dL/dh| <= beta, and h adds four sequence log-probs
    (policy and reference, chosen and rejected), so at the same weights the two losses differ by at most
    beta * (2 d_policy + 2 d_reference), where d is the largest |log p_bf16 - log p_fp32| over this data, measured
    here by plain forwards with and without bf16 autocast. Step 1 is at the same weights: within that bound. Later
    steps may also differ by the updates' rounding: they must stay within the bound plus a tenth of how far fp32
    training itself has moved the loss since step 1 (bf16 follows fp32's trajectory, not a slower or another one;
    measured: about 1e-4 apart, bound 7e-3, fp32 moves 0.017 a step)."""
    policy, reference = models
    data = _data(tmp_path, "dpo")
    beta, runs = 0.3, {}
    for dtype in ("float32", "bfloat16"):
        runs[dtype] = train(TrainConfig(algorithm="dpo", base=str(policy), reference=str(reference), data=str(data),
                                        hparams={"beta": beta}, batch_size=len(PAIRS), max_steps=3, learning_rate=1e-4,
                                        warmup_ratio=0.0, schedule="constant", dtype=dtype,
                                        output_dir=str(tmp_path / dtype))).metrics

    def rounding(path: Path) -> float:
        s = Scorer(path)
        worst = 0.0
        for prompt, chosen, rejected, *_ in PAIRS:
            for response in (chosen, rejected):
                exact = s(prompt, response)[0]
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    mixed = s(prompt, response)[0]
                worst = max(worst, abs(mixed - exact))
        return worst

    d_pol, d_ref = rounding(policy), rounding(reference)
    assert d_pol > 0 and d_ref > 0  # bf16 autocast did round
    bound = beta * (2 * d_pol + 2 * d_ref)
    fp32, bf16 = [r["loss"] for r in runs["float32"]], [r["loss"] for r in runs["bfloat16"]]
    assert fp32[0] != bf16[0] and abs(bf16[0] - fp32[0]) <= bound
    for k in (1, 2):
        assert abs(bf16[k] - fp32[k]) <= bound + 0.1 * abs(fp32[k] - fp32[0]), (k, fp32, bf16, bound)
    assert fp32[2] < fp32[0] and bf16[2] < bf16[0]  # both learn


# -- PPO: the first updates, recomputed from the logged rollouts ------------------------------------------------------

PPO_PROMPTS = ["the movie was", "the plot", "i really", "the acting", "write a review", "the music was", "it is",
               "the cast"]
# Non-default values wherever a default would hide a term: gamma < 1 and lam < 1 apart (a swapped pair changes
# GAE), a large kl_coef (the KL term is a sizeable part of every reward), a missing-EOS penalty, vf_coef != 1.
PPO_HP = {"reward": "sentiment", "response_length": 5, "temperature": 0.7, "num_ppo_epochs": 1, "num_mini_batches": 1,
          "kl_coef": 0.3, "gamma": 0.9, "lam": 0.7, "vf_coef": 0.4, "missing_eos_penalty": 0.25}


def _token_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> list[float]:
    """log pi(y_t | x, y_<t) of each response token, from logits / temperature of one unpadded forward pass."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response])).logits[0].double() / temperature
    lp = torch.log_softmax(logits, -1)
    return [float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(response)]  # position j predicts token j + 1


def _critic_values(body, head: dict, prompt: list[int], response: list[int]) -> list[float]:
    """V at each response token: the scalar head on the body's last hidden state at the position before it."""
    with torch.no_grad():
        h = body(torch.tensor([prompt + response])).last_hidden_state[0].double()
    v = h @ head["weight"].double()[0] + head["bias"].double()[0]
    return [float(v[len(prompt) - 1 + i]) for i in range(len(response))]


@functools.cache
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    return SentimentIntensityAnalyzer()


def _ppo_expected(rollout: dict, policy_dir: Path, reference_dir: Path, critic: tuple | None, kl_coef: float) -> dict:
    """Ziegler et al. / TRL's PPO on this rollout batch, written out per row on unpadded token lists: every input
    recomputed here (log-probs of the policy that sampled, of the reference; values of the critic, V = 0 for the
    zeroed head; VADER scores), then per-token reward, GAE, returns and whitened advantages, and the first
    minibatch's losses (ratio 1 and V = V_old, as the update starts at the rollout's weights)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(policy_dir)
    pol = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32).eval()
    T, gamma, lam = PPO_HP["temperature"], PPO_HP["gamma"], PPO_HP["lam"]
    rows = []
    for i, (p, r) in enumerate(zip(rollout["prompt_ids"], rollout["response_ids"])):
        assert p == tok(PPO_PROMPTS[rollout["prompt_index"][i]])["input_ids"]
        assert 1 <= len(r) <= PPO_HP["response_length"]
        eos = r[-1] == tok.eos_token_id
        assert rollout["eos"][i] == eos and (eos or len(r) == PPO_HP["response_length"])
        text = tok.decode(r, skip_special_tokens=True)  # what the judge reads: the response text, EOS dropped
        score = (_vader().polarity_scores(text)["compound"] + 1) / 2 - (0 if eos else PPO_HP["missing_eos_penalty"])
        lp, ref_lp = _token_logprobs(pol, p, r, T), _token_logprobs(ref, p, r, T)
        v = [0.0] * len(r) if critic is None else _critic_values(*critic, p, r)
        kl = [a - b for a, b in zip(lp, ref_lp)]  # k1
        rew = [-kl_coef * k for k in kl]
        rew[-1] += score  # the score at the last response token (EOS when produced)
        adv, last = [0.0] * len(r), 0.0
        for t in reversed(range(len(r))):  # GAE, V = 0 after the last token
            nxt = v[t + 1] if t + 1 < len(r) else 0.0
            last = rew[t] + gamma * nxt - v[t] + gamma * lam * last
            adv[t] = last
        rows.append({"eos": eos, "score": score, "lp": lp, "ref_lp": ref_lp, "v": v, "kl": kl, "rew": rew,
                     "adv": adv, "ret": [a + b for a, b in zip(adv, v)]})
    flat = [a for row in rows for a in row["adv"]]
    n = len(flat)
    mean = sum(flat) / n
    var = sum((a - mean) ** 2 for a in flat) / (n - 1)  # unbiased, TRL's masked_whiten
    for row in rows:
        row["wadv"] = [(a - mean) / math.sqrt(var + 1e-8) for a in row["adv"]]
    N = len(rows)
    seq_kl = sum(sum(row["kl"]) for row in rows) / N
    score = sum(row["score"] for row in rows) / N
    # the clipped surrogate at ratio 1: max(-A, -A clip(1)) = -A; the clipped value loss at V = V_old: (V - R)^2
    pg = sum(-a for row in rows for a in row["wadv"]) / n
    vf = 0.5 * sum((v - R) ** 2 for row in rows for v, R in zip(row["v"], row["ret"])) / n
    logged = {"objective/kl": seq_kl, "objective/scores": score, "objective/non_score_reward": -kl_coef * seq_kl,
              "objective/rlhf_reward": score - kl_coef * seq_kl, "loss/policy_avg": pg, "loss/value_avg": vf,
              "loss": pg + PPO_HP["vf_coef"] * vf,
              "objective/entropy": -sum(a for row in rows for a in row["lp"]) / N,
              "val/num_eos_tokens": sum(row["eos"] for row in rows), "val/response_length": n / N}
    return {"rows": rows, "logged": logged}


def _right_aligned(t: torch.Tensor, i: int, n: int) -> list[float]:
    return t[i, t.shape[1] - n:].double().tolist()


def _check_ppo_step(rollout: dict, row: dict, want: dict) -> None:
    """The rollout file's per-token tensors and the step's logged metrics against the recomputation."""
    close = {"rel": 1e-5, "abs": 1e-6}
    mask = rollout["mask"]
    for i, w in enumerate(want["rows"]):
        n = len(w["lp"])
        assert mask[i].sum() == n and bool(mask[i, -n:].all())
        assert float(rollout["scores"][i]) == pytest.approx(w["score"], rel=1e-6)
        for key, mine in (("logprobs", "lp"), ("ref_logprobs", "ref_lp"), ("values", "v"), ("kl", "kl"),
                          ("rewards", "rew"), ("returns", "ret"), ("advantages", "wadv")):
            assert _right_aligned(rollout[key], i, n) == pytest.approx(w[mine], **close), key
    for key, value in want["logged"].items():
        assert row[key] == pytest.approx(value, **close), key
    assert row["val/clipfrac_avg"] == 0 and row["policy/clipfrac_avg"] == 0
    assert row["val/ratio"] == pytest.approx(1.0, abs=1e-6)


def test_ppo_first_updates_are_the_papers_formulas(models, tmp_path):
    """PPO's logged rollouts (``log_rollouts``) and its first two updates' metrics against Ziegler et al./TRL's PPO
    recomputed here without evalharness code. Step 1: the log-probs of plain forward passes of the policy and the
    reference, V = 0 (the critic's head is zeroed), VADER scores with the missing-EOS penalty, then per-token
    reward -kl_coef * (log pi - log pi_ref) plus the score at the last token, GAE (gamma, lam), returns, whitened
    advantages, and the first (only) minibatch's losses, which start at the rollout's weights: ratio 1, so the
    policy loss is -mean(whitened A), ~0, and the value loss 0.5 mean((V - R)^2). Step 2 again, from the step-1
    checkpoint: its actor (the policy that sampled step 2) and its critic (critic.safetensors, loaded into a plain
    LlamaModel and a linear head), so V != 0 and GAE's value terms count."""
    from safetensors.torch import load_file
    from transformers import AutoModel
    policy, reference = models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PPO_PROMPTS)))
    out = tmp_path / "ppo"
    res = train(TrainConfig(algorithm="ppo", base=str(policy), reference=str(reference), data=str(prompts),
                            hparams=PPO_HP, batch_size=len(PPO_PROMPTS), max_steps=2, learning_rate=3e-2,
                            warmup_ratio=0.0, schedule="constant", save_every=1, save_optimizer=False,
                            log_rollouts=2, output_dir=str(out)))
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and logged[0]["loss"] == res.metrics[0]["loss"]
    assert sorted(p.name for p in (out / "rollouts").iterdir()) == ["step-000001.pt", "step-000002.pt"]
    r1 = torch.load(out / "rollouts" / "step-000001.pt", weights_only=True)
    r2 = torch.load(out / "rollouts" / "step-000002.pt", weights_only=True)
    assert r1["step"] == 1 and r1["kl_coef"] == PPO_HP["kl_coef"] and r2["kl_coef"] == PPO_HP["kl_coef"]

    want1 = _ppo_expected(r1, policy, reference, None, PPO_HP["kl_coef"])
    _check_ppo_step(r1, logged[0], want1)
    # the batch has responses with and without EOS, and the KL part of the reward is not negligible
    assert 0 < want1["logged"]["val/num_eos_tokens"] < len(PPO_PROMPTS)
    assert abs(want1["logged"]["objective/non_score_reward"]) > 0.05
    assert want1["logged"]["loss/value_avg"] > 0.01

    # A run keeps the critic of its newest checkpoint only: the same run stopped after step 1 gives step 1's critic
    # (the same numbers: its actor is bitwise the two-step run's checkpoint-1).
    ck = tmp_path / "ppo1" / "checkpoint-1"
    train(TrainConfig(algorithm="ppo", base=str(policy), reference=str(reference), data=str(prompts),
                      hparams=PPO_HP, batch_size=len(PPO_PROMPTS), max_steps=1, learning_rate=3e-2,
                      warmup_ratio=0.0, schedule="constant", save_optimizer=False, output_dir=str(ck.parent)))
    assert (ck / "model.safetensors").read_bytes() == (out / "checkpoint-1" / "model.safetensors").read_bytes()
    saved = load_file(str(ck / "training_state" / "critic.safetensors"))
    body = AutoModel.from_pretrained(policy, dtype=torch.float32).eval()  # the SFT body's architecture
    body.load_state_dict({k.removeprefix("body."): v for k, v in saved.items() if k.startswith("body.")})
    head = {"weight": saved["head.weight"], "bias": saved["head.bias"]}
    want2 = _ppo_expected(r2, ck, reference, (body, head), PPO_HP["kl_coef"])
    assert max(abs(v) for row in want2["rows"] for v in row["v"]) > 0.01  # the critic has moved: V counts in GAE
    _check_ppo_step(r2, logged[1], want2)
