"""Record a real vLLM server's replies to the requests the vllm backend sends, as fixtures for the stand-in.

    python tools/record_vllm_format.py [--python .venv-vllm/bin/python] [--out tests/data/vllm_recorded]

It builds the tiny Llama of tests/tiny.py (``build_vllm_model``: one token's logit is -inf, so vLLM's -9999.0
placeholder shows), serves it with the vLLM Python (``make vllm-venv``), sends every request of
``wire_requests`` (built by evalharness.backends.vllm's own payload functions) and writes one JSON file per
request (request, HTTP status, reply) and ``meta.json`` (vLLM version, model hash). tests/test_vllm.py sends
the same requests to tests/vllm_standin.py and checks its replies have the recorded shapes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from tiny import NEG_INF_WORD, build_tokenizer, build_vllm_model  # noqa: E402

from evalharness.backends.vllm import (  # noqa: E402
    ManagedServer,
    completion_payload,
    sampling_params,
    scoring_payload,
    vllm_python,
)
from evalharness.core.records import SamplingParams  # noqa: E402

SERVED = "evalharness-policy"
MAX_MODEL_LEN = 256
OUT = REPO / "tests" / "data" / "vllm_recorded"


def wire_requests(eos_ids: set[int]) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    """name -> (method, path, JSON body): what the backend sends to generate and to score, and an error."""
    tok = build_tokenizer()
    prompt = tok("<|user|> write a short review about the movie <|assistant|>")["input_ids"]
    response = tok("the plot was fun and the cast good <eos>")["input_ids"]
    neg_inf = tok(f"the movie was {NEG_INF_WORD} <eos>")["input_ids"]

    def gen(seed: int | None = None, **params: Any) -> dict[str, Any]:
        return completion_payload(SERVED, prompt, sampling_params(SamplingParams(**params), seed, eos_ids))

    return {
        "models": ("GET", "/v1/models", None),
        "generate_greedy": ("POST", "/v1/completions", gen(max_new_tokens=8)),
        "generate_sampled": ("POST", "/v1/completions", gen(7, temperature=1.0, top_p=0.9, max_new_tokens=8)),
        "generate_top_logprobs": ("POST", "/v1/completions", gen(max_new_tokens=4, top_logprobs=3)),
        "score": ("POST", "/v1/completions", scoring_payload(SERVED, prompt + response)),
        "score_neg_inf": ("POST", "/v1/completions", scoring_payload(SERVED, prompt + neg_inf)),
        # a stop string (the greedy first token's text) and a stop token id: stop_reason is the string / the id
        "generate_stop_string": ("POST", "/v1/completions", gen(max_new_tokens=8, stop=("<|assistant|>",))),
        "generate_stop_id": (
            "POST",
            "/v1/completions",
            completion_payload(SERVED, prompt, sampling_params(SamplingParams(max_new_tokens=8), None, eos_ids | {3})),
        ),
        # max_tokens past the context is cut to fit (vLLM 0.32); a prompt past it is refused
        "long_max_tokens": ("POST", "/v1/completions", gen(max_new_tokens=MAX_MODEL_LEN)),
        "too_long": ("POST", "/v1/completions", scoring_payload(SERVED, prompt * (MAX_MODEL_LEN // len(prompt) + 1))),
    }


def send(url: str, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON reply) of one call to the server at ``url`` (its root, no /v1)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=300) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def model_hash(model: Path) -> str:
    return hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()


def record(python: Path, out: Path) -> dict[str, Any]:
    """Serve the tiny model with real vLLM, send ``wire_requests``, write the fixtures; return meta."""
    with tempfile.TemporaryDirectory(prefix="vllm-record-") as folder:
        return _record_with(python, build_vllm_model(Path(folder) / "model"), out)


def _record_with(python: Path, model: Path, out: Path) -> dict[str, Any]:
    version = subprocess.run(
        [str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    args = ["--model", str(model), "--served-model-name", SERVED, "--dtype", "float32"]
    args += ["--max-model-len", str(MAX_MODEL_LEN), "--generation-config", "vllm", "--enforce-eager"]
    server = ManagedServer(python, args)
    root = server.start().removesuffix("/v1")
    eos = {build_tokenizer().eos_token_id}
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, (method, path, body) in wire_requests(eos).items():
            status, reply = send(root, method, path, body)
            row = {"method": method, "path": path, "request": body, "status": status, "reply": reply}
            (out / f"{name}.json").write_text(json.dumps(row, indent=1) + "\n")
    finally:
        server.stop()
    meta = {"vllm_version": version, "model_sha256": model_hash(model), "served_model_name": SERVED}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--python", help="a Python with vllm (default: as the backend finds it)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    python = vllm_python(args.python)
    if python is None:
        sys.exit("no vLLM python: make vllm-venv, or --python")
    print(json.dumps(record(python, args.out)))


if __name__ == "__main__":
    main()
