"""A stand-in for vLLM's OpenAI-compatible API server: the same command line, /health, /v1/models and
/v1/completions in vLLM's JSON shapes, with a child process (as vLLM's engine core). Started in seconds.

With ``--model`` it computes every number with the checkpoint through transformers (float32): raw
log-probs of the model (vLLM's default ``logprobs_mode``), greedy or seeded sampled tokens, prompt
log-probs. vLLM's conventions are kept as tests/data/vllm_recorded shows them (tests/test_vllm.py checks
the shapes against those real replies): ``prompt_logprobs`` starts with None and is keyed by the token id
as a string; a -inf log-prob is sent as -9999.0; with ``return_tokens_as_token_ids`` tokens are named
'token_id:N'; with ``logprobs: k`` a step lists the sampled token first, then the top k.

Without ``--model`` it only answers /health (the process-management tests). ``--fail-at-start`` exits with
an error. ``--log-requests FILE`` appends every /v1/completions body to FILE (one JSON a line). While
``--fault-file FILE`` holds a fault's name, /v1/completions fails so: ``500`` (vLLM's error JSON),
``malformed`` (a cut-off body), ``no-choices`` or ``short-prompt-logprobs`` (JSON of another shape).
``--lora-modules NAME=PATH`` serves the model with that PEFT adapter merged, as NAME too. The seeded
random stream is torch's, not vLLM's: a seeded sample differs from vLLM's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CLAMP = -9999.0  # vLLM's stand-in for -inf in a JSON reply


class Engine:
    """The checkpoint and tokenizer, and the completions a vLLM server would give."""

    def __init__(self, path: str, served: str, max_model_len: int, lora: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)  # a small model; the machine's other cores are the tests'
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.names = {served}
        if lora:
            from peft import PeftModel

            name, adapter = lora.split("=", 1)
            self.model = PeftModel.from_pretrained(self.model, adapter).merge_and_unload().eval()
            self.names.add(name)
        self.served, self.path, self.max_model_len = served, path, max_model_len

    def logprobs(self, ids: list[int]) -> Any:
        """log p(. | ids[:i+1]) for every position i: the raw model distribution."""
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor([ids])).logits[0].float()
        return self.torch.log_softmax(logits, -1)

    def text(self, prompt: list[int], out: list[int]) -> str:
        """The output's text as vLLM's incremental detokenizer gives it: what decoding adds after the prompt."""
        return self.tok.decode(prompt + out, skip_special_tokens=True)[len(self.tok.decode(prompt, skip_special_tokens=True)) :]

    def token(self, t: int, as_id: bool) -> str:
        return f"token_id:{t}" if as_id else self.tok.decode([t])

    def sample(self, logp: Any, body: dict[str, Any], gen: Any) -> int:
        torch = self.torch
        temperature = float(body.get("temperature", 1.0) or 0.0)
        if temperature == 0.0:
            return int(torch.argmax(logp))
        probs = torch.softmax(logp / temperature, -1)
        top_p = float(body.get("top_p", 1.0))
        if top_p < 1.0:
            sorted_p, order = torch.sort(probs, descending=True)
            drop = torch.cumsum(sorted_p, -1) - sorted_p >= top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))

    def step_top(self, logp: Any, t: int, k: int, as_id: bool) -> dict[str, float]:
        """One step's top_logprobs: the sampled token first, then the k most likely (vLLM's order)."""
        top = {self.token(t, as_id): _clamp(float(logp[t]))}
        if k:
            values, index = self.torch.topk(logp, k)
            for v, i in zip(values.tolist(), index.tolist()):
                top.setdefault(self.token(int(i), as_id), _clamp(v))
        return top

    def prompt_logprobs(self, ids: list[int], k: int) -> list[dict[str, Any] | None]:
        logp = self.logprobs(ids)
        out: list[dict[str, Any] | None] = [None]
        for i, t in enumerate(ids[1:]):
            row = logp[i]
            entries = {t: row[t]}
            if k:
                values, index = self.torch.topk(row, k)
                for v, j in zip(values, index.tolist()):
                    entries.setdefault(int(j), v)
            out.append(
                {
                    str(j): {
                        "logprob": _clamp(float(v)),
                        "rank": int((row > v).sum()) + 1,
                        "decoded_token": self.tok.decode([j]),
                    }
                    for j, v in entries.items()
                }
            )
        return out

    def choice(self, ids: list[int], body: dict[str, Any], index: int, seed: int | None) -> dict[str, Any]:
        torch = self.torch
        gen = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        k = body.get("logprobs")
        as_id = bool(body.get("return_tokens_as_token_ids"))
        stops, stop_ids = list(body.get("stop") or []), set(body.get("stop_token_ids") or [])
        eos = {self.tok.eos_token_id}
        out: list[int] = []
        lps: list[float] = []
        tops: list[dict[str, float]] = []
        finish, reason = "length", None
        for _ in range(int(body.get("max_tokens", 16))):
            logp = self.logprobs(ids + out)[-1]
            t = self.sample(logp, body, gen)
            out.append(t)
            lps.append(_clamp(float(logp[t])))
            if k is not None:
                tops.append(self.step_top(logp, t, int(k), as_id))
            if t in eos or t in stop_ids:
                finish, reason = "stop", (None if t in eos else t)
                break
            text = self.text(ids, out)
            hit = next((s for s in stops if s in text), None)
            if hit is not None:
                finish, reason = "stop", hit
                break
        # a stop token's text is not in the output (nor is EOS: a special token)
        text = self.text(ids, out[:-1] if finish == "stop" and not isinstance(reason, str) else out)
        if isinstance(reason, str):
            text = text[: text.index(reason)]
        logprobs = None
        if k is not None:
            tokens = [self.token(t, as_id) for t in out]
            offsets, at = [], 0
            for piece in tokens:
                offsets.append(at)
                at += len(piece)
            logprobs = {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}
        pl = body.get("prompt_logprobs")
        return {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish,
            "stop_reason": reason,
            "token_ids": out if body.get("return_token_ids") else None,
            "prompt_logprobs": self.prompt_logprobs(ids, int(pl)) if pl is not None else None,
            "prompt_token_ids": ids if body.get("return_token_ids") else None,
            "routed_experts": None,
        }

    def completions(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        ids = body.get("prompt")
        if not (isinstance(ids, list) and ids and all(isinstance(t, int) for t in ids)):
            return 400, _error("the stand-in takes a prompt of token ids", 400)
        if body.get("model") not in self.names:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", 404, "NotFoundError")
        if len(ids) > self.max_model_len:
            return 400, _error(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt contains "
                f"{len(ids)} input tokens, which exceeds this limit even without any output tokens. Please reduce "
                f"the length of the input prompt. (parameter=input_tokens, value={len(ids)})",
                400,
                param="input_tokens",
            )
        # as vLLM 0.32: max_tokens past the context is cut to what fits
        body = {**body, "max_tokens": min(int(body.get("max_tokens", 16)), self.max_model_len - len(ids))}
        if max(ids) >= len(self.tok):
            return 400, _error(f"Token id {max(ids)} is out of vocabulary", 400)
        n, seed = int(body.get("n", 1)), body.get("seed")
        choices = [self.choice(ids, body, i, None if seed is None else seed + i) for i in range(n)]
        completion = sum(len(c["token_ids"] or []) for c in choices)
        reply = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": "vllm-standin",
            "usage": {
                "prompt_tokens": len(ids),
                "total_tokens": len(ids) + completion,
                "completion_tokens": completion,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
        return 200, reply

    def models(self) -> dict[str, Any]:
        created = int(time.time())
        card = {
            "id": self.served,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": self.path,
            "parent": None,
            "max_model_len": self.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{uuid.uuid4().hex[:16]}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        return {"object": "list", "data": [card]}


def _clamp(value: float) -> float:
    return max(value, CLAMP)


def _error(message: str, code: int, kind: str = "BadRequestError", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def handler(engine: Engine | None, fault_file: str | None, log: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            if self.path == "/health":
                self.reply(200, b"")
            elif self.path == "/v1/models" and engine is not None:
                self.reply(200, json.dumps(engine.models()).encode())
            else:
                self.reply(404, json.dumps({"detail": "Not Found"}).encode())

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            body = json.loads(raw)
            if log:
                with open(log, "ab") as f:
                    f.write(raw + b"\n")
            fault = open(fault_file).read().strip() if fault_file else ""
            if self.path != "/v1/completions" or engine is None:
                self.reply(404, json.dumps({"detail": "Not Found"}).encode())
            elif fault == "500":
                self.reply(500, json.dumps(_error("EngineCore encountered an issue.", 500, "InternalServerError")).encode())
            elif fault == "malformed":
                self.reply(200, json.dumps({"id": "cmpl-x", "choices": [{"text": "cut"}]}).encode()[:-7])
            elif fault == "no-choices":
                self.reply(200, json.dumps({"object": "text_completion", "choices": []}).encode())
            else:
                status, reply = engine.completions(body)
                if fault == "short-prompt-logprobs" and status == 200:
                    reply["choices"][0]["prompt_logprobs"] = reply["choices"][0]["prompt_logprobs"][:-1]
                self.reply(status, json.dumps(reply).encode())

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model")
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--fail-at-start", action="store_true")
    parser.add_argument("--fault-file")
    parser.add_argument("--log-requests")
    parser.add_argument("--lora-modules")
    args, _ = parser.parse_known_args()
    if args.fail_at_start:
        print("ValueError: stand-in refuses to start", flush=True)
        sys.exit(3)
    engine_proc = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    print(f"engine pid {engine_proc.pid}", flush=True)
    engine = None
    if args.model:
        engine = Engine(args.model, args.served_model_name or args.model, args.max_model_len, args.lora_modules)
    ThreadingHTTPServer((args.host, args.port), handler(engine, args.fault_file, args.log_requests)).serve_forever()


if __name__ == "__main__":
    main()
