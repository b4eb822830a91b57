"""The preference_accuracy task: reward accuracy under every definition, the reward / average log-likelihood
contingency table and the margins, against log-probs computed here by hand with a plain HF forward."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from evalharness.core.errors import InputError
from evalharness.pipeline.runner import ModelSpec, RunPlan, run
from evalharness.store import RunStore
from evalharness.tasks import preference_accuracy as pa
from evalharness.tasks.base import TaskSpec
from evalharness.training.algorithms import ALGORITHMS

REPO = Path(__file__).resolve().parents[1]
CHAT = [{"role": "user", "content": "write a short review about the movie"}]
GOOD = ["the movie was great and it was fun", "really good story and good music", "the cast was very good",
        "loved it", "the plot is fine"]
BAD = ["the movie was terrible and dull", "hated the plot", "bad acting and a dull story", "it is not good",
       "dull dull dull"]


def write_pairs(path: Path, same: bool = False) -> Path:
    rows = [{"id": f"p{i}", "prompt": CHAT if i % 2 else "write a review about the movie", "chosen": GOOD[i],
             "rejected": GOOD[i] if same else BAD[(i + 2) % 5]} for i in range(5)]
    rows.append({"id": "tie", "messages": CHAT, "chosen": "the plot", "rejected": "the plot"})  # a tie everywhere
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def checkpoint(src: Path, dst: Path, algorithm: str, reference: Path, **hparams: float) -> Path:
    """A copy of a tiny model whose manifest says it was trained by ``algorithm``."""
    shutil.copytree(src, dst)
    (dst / "evalharness_manifest.json").write_text(json.dumps(
        {"kind": "checkpoint", "algorithm": algorithm, "hparams": hparams, "step": 1,
         "reference_model": str(reference) if ALGORITHMS[algorithm].needs_reference else None}))
    return dst


def hand_logprobs(model_dir: Path, pairs: Path) -> dict[str, tuple[float, float, int, int]]:
    """pair id -> (log p(chosen), log p(rejected), |chosen|, |rejected|): one unpadded forward per response, the
    prompt by the chat template (or raw text), the response as its tokens then EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = {}
    for line in pairs.read_text().splitlines():
        row = json.loads(line)
        msgs = row.get("messages") or row["prompt"]
        if isinstance(msgs, list):
            prompt = list(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
                          ["input_ids"])
        else:
            prompt = tok(msgs)["input_ids"]
        vals = []
        for text in (row["chosen"], row["rejected"]):
            resp = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            with torch.no_grad():
                logits = model(torch.tensor([prompt + resp])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            vals.append((float(sum(logp[len(prompt) + k - 1, t] for k, t in enumerate(resp))), len(resp)))
        out[row["id"]] = (vals[0][0], vals[1][0], vals[0][1], vals[1][1])
    return out


def run_task(tmp_path: Path, models: list[tuple[str, Path]], reference: Path, pairs: Path, **cfg: object):
    plan = RunPlan(name="pa", models=[ModelSpec(n, str(p)) for n, p in models],
                   tasks=[TaskSpec("prefacc", "preference_accuracy", pa.Config(pairs=str(pairs), **cfg))],
                   reference=str(reference), results_dir=tmp_path / "results", progress=False)
    res = run(plan)
    return {(s.model, s.metric): s for s in res.scores}, RunStore(res.path)


def _won(w: float, l: float) -> float:
    return 1.0 if w > l else 0.5 if w == l else 0.0


def test_counts_equal_a_hand_computation(tiny_model: Path, tiny_ref_model: Path, tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    ck = checkpoint(tiny_model, tmp_path / "dpo-ck", "dpo", tiny_ref_model, beta=0.1)
    scores, store = run_task(tmp_path, [("sft", tiny_ref_model), ("dpo", ck)], tiny_ref_model, pairs)
    pol, ref = hand_logprobs(ck, pairs), hand_logprobs(tiny_ref_model, pairs)
    ids = list(pol)
    acc = {"dpo": [_won(pol[i][0] - ref[i][0], pol[i][1] - ref[i][1]) for i in ids],
           "simpo": [_won(pol[i][0] / pol[i][2], pol[i][1] / pol[i][3]) for i in ids],
           "cpo": [_won(pol[i][0], pol[i][1]) for i in ids]}
    assert acc["dpo"][-1] == acc["simpo"][-1] == acc["cpo"][-1] == 0.5  # the tied pair
    for d, values in acc.items():
        s = scores[("dpo", f"reward_acc_{d}")]
        assert s.value == pytest.approx(sum(values) / len(values), abs=1e-12) and s.n == 6 and s.n_skipped == 0
        assert s.extra["n_ties"] == values.count(0.5)
    assert scores[("dpo", "reward_acc_own")].value == scores[("dpo", "reward_acc_dpo")].value
    assert scores[("dpo", "reward_acc_own")].extra["beta"] == 0.1
    # the contingency table of the own (DPO) reward against the average log-likelihood, by hand
    cells = {c: 0 for c in pa.CELLS}
    margins = []
    for i in ids:
        r = 0.1 * ((pol[i][0] - ref[i][0]) - (pol[i][1] - ref[i][1]))
        avg = pol[i][0] / pol[i][2] - pol[i][1] / pol[i][3]
        margins.append(r)
        if r != 0 and avg != 0:
            cells[("w" if r > 0 else "l") + ("w" if avg > 0 else "l")] += 1
    assert sum(cells.values()) == 5 and all(cells.values())  # the tie is left out; every cell is exercised
    for c in pa.CELLS:
        assert scores[("dpo", f"contingency_{c}")].value == cells[c]
    agree = scores[("dpo", "reward_loglik_agreement")]
    assert agree.value == pytest.approx((cells["ww"] + cells["ll"]) / 5) and agree.extra["n_tied"] == 1
    assert agree.extra["table"] == cells
    assert scores[("dpo", "reward_margin")].value == pytest.approx(np.mean(margins), abs=1e-6)
    for q in pa.QUANTILES:
        assert scores[("dpo", f"reward_margin_q{q}")].value == pytest.approx(np.percentile(margins, q), abs=1e-6)
    # the SFT model is its own reference: every DPO-style reward is 0, every pair a tie
    sft = scores[("sft", "reward_acc_dpo")]
    assert sft.value == 0.5 and sft.extra["n_ties"] == 6 and "own reference" in sft.extra["note"]
    assert ("sft", "reward_acc_own") not in scores and ("sft", "reward_loglik_agreement") not in scores
    assert scores[("sft", "reward_acc_simpo")].value == pytest.approx(
        np.mean([_won(ref[i][0] / ref[i][2], ref[i][1] / ref[i][3]) for i in ids]))
    # one typed verdict per pair and model, keyed by the pair id, with the six numbers
    vs = store.verdicts("prefacc", "dpo")
    assert sorted(v.item_id for v in vs) == sorted(ids)
    v = next(v for v in vs if v.item_id == "p1")
    assert v.meta["logp_chosen"] == pytest.approx(pol["p1"][0], abs=1e-4)
    assert v.meta["ref_logp_rejected"] == pytest.approx(ref["p1"][1], abs=1e-4)
    assert v.meta["n_chosen"] == pol["p1"][2] and v.meta["own"]["trained_against_this_reference"] is True
    # a rerun resumes: no model is loaded, the same scores come back
    again, _ = run_task(tmp_path, [("sft", tiny_ref_model), ("dpo", ck)], tiny_ref_model, pairs)
    assert {k: s.value for k, s in again.items()} == {k: s.value for k, s in scores.items()}


def test_ties_and_simpo_agreement_by_construction(tiny_model: Path, tiny_ref_model: Path, tmp_path: Path) -> None:
    ck = checkpoint(tiny_model, tmp_path / "simpo-ck", "simpo", tiny_ref_model, beta=2.0, gamma=1.0)
    same = write_pairs(tmp_path / "same.jsonl", same=True)
    scores, _ = run_task(tmp_path, [("simpo", ck)], tiny_ref_model, same)
    for d in ("dpo", "simpo", "cpo", "own"):  # chosen == rejected: every reward ties, every accuracy is 1/2
        assert scores[("simpo", f"reward_acc_{d}")].value == 0.5
    assert scores[("simpo", "reward_loglik_agreement")].value is None  # no strict pair: no table
    assert scores[("simpo", "reward_margin")].value == 0.0
    scores, _ = run_task(tmp_path, [("simpo", ck)], tiny_ref_model, write_pairs(tmp_path / "pairs.jsonl"))
    # SimPO's reward is beta x the average log-likelihood: the two orders agree on every strict pair
    assert scores[("simpo", "reward_loglik_agreement")].value == 1.0
    assert scores[("simpo", "contingency_wl")].value == scores[("simpo", "contingency_lw")].value == 0
    assert scores[("simpo", "reward_acc_own")].value == scores[("simpo", "reward_acc_simpo")].value
    assert scores[("simpo", "reward_acc_own")].extra["definition"] == "simpo"
    # a beta override scales the margins and changes no order
    scaled, _ = run_task(tmp_path, [("simpo", ck)], tiny_ref_model, tmp_path / "pairs.jsonl", beta=4.0)
    assert scaled[("simpo", "reward_margin")].value == pytest.approx(2 * scores[("simpo", "reward_margin")].value)
    assert scaled[("simpo", "reward_acc_own")].value == scores[("simpo", "reward_acc_own")].value


def test_every_algorithm_has_its_trainers_reward() -> None:
    """OWN maps every algorithm; for the paired ones it is exactly the reward the trainer logs."""
    from evalharness.training.algorithms import make_config
    from evalharness.training.losses import implicit_rewards
    from dataclasses import asdict
    assert set(pa.OWN) == set(ALGORITHMS)
    g = torch.Generator().manual_seed(0)
    m = {k: -torch.rand(8, generator=g, dtype=torch.float64) * 30 for k in
         ("logp_chosen", "logp_rejected", "ref_logp_chosen", "ref_logp_rejected")}
    m.update(n_chosen=torch.randint(1, 20, (8,), generator=g).double(),
             n_rejected=torch.randint(1, 20, (8,), generator=g).double())
    for alg, spec in ALGORITHMS.items():
        if spec.unpaired or spec.online:
            continue
        hp = asdict(make_config(alg))
        own = pa.own_from_manifest({"algorithm": alg, "hparams": hp}, "m.json")
        got = pa._rewards(own["definition"], own["beta"], {k: v.numpy() for k, v in m.items()})
        want = implicit_rewards(alg, chosen_logps=m["logp_chosen"], rejected_logps=m["logp_rejected"],
                                ref_chosen_logps=m["ref_logp_chosen"], ref_rejected_logps=m["ref_logp_rejected"],
                                chosen_lengths=m["n_chosen"], rejected_lengths=m["n_rejected"], **hp)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, err_msg=alg)
    assert pa.own_from_manifest({"algorithm": "ppo", "hparams": {"kl_coef": 0.05}, "kl_coef": 0.08}, "m")["beta"] == 0.08
    assert pa.own_from_manifest({"algorithm": "kto", "hparams": {"beta": 0.3}}, "m")["definition"] == "dpo"
    with pytest.raises(InputError, match="m.json field 'hparams.lam'"):
        pa.own_from_manifest({"algorithm": "orpo", "hparams": {"lam": 0.0}}, "m.json")


def test_tokenization_is_the_trainers(tiny_model: Path) -> None:
    """The task scores the ids the trainer trains on (trainer._encode, within its length limits)."""
    from transformers import AutoTokenizer

    from evalharness.core.prompts import PromptItem, render, render_response
    from evalharness.training.trainer import TrainConfig, _encode
    tok = AutoTokenizer.from_pretrained(tiny_model)
    item = PromptItem("x", messages=(("user", "write a short review"),))
    cfg = TrainConfig(algorithm="dpo", base=str(tiny_model), data="-")
    assert _encode(tok, item, "the movie was great", cfg) == (render(tok, item), render_response(tok, "the movie was great"))
    assert render_response(tok, "the movie")[-1] == tok.eos_token_id


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "evalharness", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_run_spec_over_two_checkpoints_and_compare(tiny_model: Path, tiny_ref_model: Path, tmp_path: Path) -> None:
    from evalharness.training.trainer import TrainConfig, train
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cks = {alg: train(TrainConfig(algorithm=alg, base=str(tiny_ref_model), data=str(pairs), hparams=hp, max_steps=2,
                                  batch_size=3, learning_rate=1e-2, output_dir=str(tmp_path / alg))).checkpoints[-1]
           for alg, hp in (("dpo", {"beta": 0.1}), ("simpo", {"beta": 2.0, "gamma": 0.5}))}
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: prefacc\nmodels: [{{name: sft, ref: {tiny_ref_model}}}, {{name: dpo, ref: {cks['dpo']}}}, "
                    f"{{name: simpo, ref: {cks['simpo']}}}]\nreference: {tiny_ref_model}\n"
                    "tasks:\n  prefacc: {task: preference_accuracy, pairs: ./pairs.jsonl}\n")
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next(p for p in (tmp_path / "res").iterdir() if p.name.startswith("prefacc-"))
    r = _cli("compare", str(run_dir), "--against", "sft", "--format", "markdown", "--results-dir", str(tmp_path / "res"),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    header = out.splitlines()[0]
    for col in ("prefacc reward_acc_dpo ↑", "Δ prefacc reward_acc_dpo", "prefacc reward_acc_own ↑",
                "prefacc reward_loglik_agreement ↑", "prefacc reward_margin"):
        assert col in header
    store = RunStore(run_dir)
    scores = {(s.model, s.metric): s for s in store.scores()}
    dpo_row = next(line for line in out.splitlines() if line.startswith("| dpo |"))
    # the paired difference to SFT on reward_acc_dpo, recomputed from the stored verdicts: SFT ties everywhere
    delta = scores[("dpo", "reward_acc_dpo")].value - 0.5
    assert f"{delta:+.3f} [" in dpo_row
    assert "| simpo | simpo | beta=2.0 gamma=0.5 | 2 |" in out
    r = _cli("compare", str(run_dir), "--metrics", ",".join(f"contingency_{c}" for c in pa.CELLS) +
             ",reward_loglik_agreement", "--format", "markdown", "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    simpo_row = next(line for line in r.stdout.splitlines() if line.startswith("| simpo |"))
    assert "| 0 | 0 |" in simpo_row and "1.000 [" in simpo_row  # no discordant cell under SimPO's own reward
    cells = [int(scores[("dpo", f"contingency_{c}")].value) for c in pa.CELLS]
    assert "| " + " | ".join(map(str, cells)) + " |" in next(line for line in r.stdout.splitlines()
                                                            if line.startswith("| dpo |"))
    # two checkpoints paired pair by pair: accuracies under any reward; margins only in one reward's units
    from evalharness.analysis.compare import build_table, resolve
    table = build_table(resolve([str(run_dir)], tmp_path / "res"), against="dpo")
    col = {c.metric: j for j, c in enumerate(table.columns)}
    simpo = next(i for i, e in enumerate(table.rows) if e.model == "simpo")
    own = table.cells[(simpo, col["reward_acc_own"])].paired
    assert own.delta == pytest.approx(scores[("simpo", "reward_acc_own")].value - scores[("dpo", "reward_acc_own")].value)
    assert own.n_paired == 6 and own.method == "exact McNemar"
    assert "different reward units" in table.cells[(simpo, col["reward_margin"])].error


def test_missing_field_names_file_line_and_field(tiny_ref_model: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "bad.jsonl"
    pairs.write_text(json.dumps({"id": "a", "prompt": "x", "chosen": "good", "rejected": "bad"}) + "\n" +
                     json.dumps({"id": "b", "prompt": "x", "chosen": "good"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl:2 field 'rejected': missing"):
        run_task(tmp_path, [("sft", tiny_ref_model)], tiny_ref_model, pairs)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad\nmodels: [{tiny_ref_model}]\nreference: {tiny_ref_model}\n"
                    "tasks:\n  prefacc: {task: preference_accuracy, pairs: ./bad.jsonl}\n")
    r = _cli("run", str(spec), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 2 and "bad.jsonl:2 field 'rejected': missing" in r.stderr
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").iterdir())


def test_a_sweeps_eval_scores_every_checkpoint_under_its_own_reward(tiny_ref_model: Path, tmp_path: Path) -> None:
    from trainkit import write_pairs as training_pairs
    training_pairs(tmp_path / "train.jsonl")
    write_pairs(tmp_path / "heldout.jsonl")
    (tmp_path / "sweep.yaml").write_text(
        f"name: pa-sweep\nbase: {tiny_ref_model}\ndata: {{path: ./train.jsonl}}\n"
        "train: {learning_rate: 5.0e-3, max_steps: 2, batch_size: 4, save_every: 1}\n"
        "algorithms:\n  dpo: {beta: 0.1}\n  orpo: {lam: 0.5}\nseeds: [0]\n"
        "eval:\n  tasks:\n    prefacc: {task: preference_accuracy, pairs: ./heldout.jsonl}\n")
    r = _cli("train", str(tmp_path / "sweep.yaml"), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = next(p for p in (tmp_path / "res").iterdir() if p.name.startswith("pa-sweep-eval-"))
    own = {s.model: s.extra for s in RunStore(run_dir).scores() if s.metric == "reward_acc_own"}
    assert own == {f"dpo-beta0.1-s0@{k}": {"algorithm": "dpo", "definition": "dpo", "beta": 0.1, "ties": "count half",
                                           "n_ties": 1, "ci": "Wilson score"} for k in (1, 2)} | \
        {f"orpo-lam0.5-s0@{k}": {"algorithm": "orpo", "definition": "simpo", "beta": 0.5, "ties": "count half",
                                 "n_ties": 1, "ci": "Wilson score"} for k in (1, 2)}
    agreement = {s.model: s.value for s in RunStore(run_dir).scores() if s.metric == "reward_loglik_agreement"}
    assert agreement["orpo-lam0.5-s0@2"] == 1.0  # ORPO's reward is lam x the average log-likelihood


def test_wilson_interval() -> None:
    from evalharness.core.stats import wilson_ci
    lo, hi = wilson_ci(8, 10)  # by hand: centre (0.8 + z^2/20) / (1 + z^2/10), z = 1.95996
    assert (lo, hi) == (pytest.approx(0.49016, abs=1e-5), pytest.approx(0.94331, abs=1e-5))
    assert wilson_ci(0, 5)[0] == 0.0 and wilson_ci(5, 5)[1] == 1.0 and math.isnan(wilson_ci(0, 0)[0])


@pytest.mark.slow
def test_bundled_model_sft_and_a_dpo_checkpoint(tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct (its chat template, its EOS <|im_end|>) as SFT and reference, and a DPO checkpoint
    trained from it for one step: the SFT row ties everywhere, and the stored log-probs are a plain forward's."""
    from evalharness.core.models import resolve
    from evalharness.training.trainer import TrainConfig, train
    from trainkit import write_pairs as training_pairs
    data = tmp_path / "train.jsonl"
    data.write_text("".join(training_pairs(tmp_path / "all.jsonl").read_text().splitlines(True)[:4]))
    ck = train(TrainConfig(algorithm="dpo", base="smollm2-135m-instruct", data=str(data), hparams={"beta": 0.1},
                           max_steps=1, batch_size=2, learning_rate=5e-5, output_dir=str(tmp_path / "dpo"))).checkpoints[-1]
    pairs = write_pairs(tmp_path / "heldout.jsonl")
    scores, store = run_task(tmp_path, [("sft", Path("smollm2-135m-instruct")), ("dpo", ck)],
                             Path("smollm2-135m-instruct"), pairs)
    assert scores[("sft", "reward_acc_dpo")].value == 0.5 and scores[("sft", "reward_acc_dpo")].extra["n_ties"] == 6
    assert scores[("dpo", "reward_acc_own")].value == scores[("dpo", "reward_acc_dpo")].value
    assert scores[("dpo", "reward_acc_own")].extra == {"algorithm": "dpo", "definition": "dpo", "beta": 0.1,
                                                       "ties": "count half", "n_ties": 1, "ci": "Wilson score"}
    hand = hand_logprobs(Path(resolve("smollm2-135m-instruct").path), pairs)
    for v in store.verdicts("prefacc", "sft"):
        assert v.meta["logp_chosen"] == pytest.approx(hand[v.item_id][0], abs=2e-3)
        assert (v.meta["n_chosen"], v.meta["n_rejected"]) == hand[v.item_id][2:]
