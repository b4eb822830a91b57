"""A reward model as a judge: ``rm:MODEL[?option=value&...]``.

A reward model reads the prompt and the response together, rendered with its own chat template
(``[user: prompt, assistant: response]``, no generation prompt), and returns a scalar: the logit of a
one-logit head, one named output of a multi-objective head, or a weighted sum of its outputs. This is
how RewardBench runs sequence-classifier reward models, and how the SimPO recipe ranks its on-policy
samples. The score is read at the sequence's last real token (decoder classifiers) whatever the pad
token is: batches are right-padded and the per-position logits of the head are gathered there, so a
conversation that ends in a token equal to the pad id (pad = EOS) is still read at its end.

Options (query string, ``&``-separated): ``head`` = output index or ``id2label`` name (default 0, the
only output of a one-logit head); ``weights`` = ``NAME:W,NAME:W`` (a weighted sum of the outputs;
not with ``head``); ``template`` = ``auto`` (the model's chat template, plain text if it has none) |
``none`` (plain text: the prompt, then the response) | a Jinja file; ``max_length`` (tokens; a longer
conversation is a failed judgment, counted, never cut); ``batch_size``; ``dtype``; ``output`` = a named output of
the model's forward (e.g. ArmoRM's ``score``: a custom class that pools itself) instead of ``logits``, its width
weighed by ``head``/``weights`` as indices; ``trust_remote_code`` = ``true`` to run a model folder's own code (its
``.py`` files are hashed into the version).

The judge version hashes the loaded weights (every state_dict tensor), the template text and the head
options, so a changed weight, template or head is another column.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evalharness.core.errors import EvalHarnessError, InputError
from evalharness.core.prompts import PromptItem
from evalharness.core.records import Generation, Verdict
from evalharness.judges.classifiers import judge_each

OPTIONS = ("head", "weights", "template", "max_length", "batch_size", "dtype", "output", "trust_remote_code")
_DTYPES = ("float32", "bfloat16", "float16")


def parse_rm_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``rm:MODEL?k=v&k=v`` -> (MODEL, options); an unknown or repeated option is an error naming it."""
    if not spec.startswith("rm:") or len(spec) == 3:
        raise InputError(f"a reward-model judge is rm:MODEL[?option=value&...], got '{spec}'")
    model, _, query = spec[3:].partition("?")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in OPTIONS:
            raise InputError(f"judge '{spec}': unknown option '{part}'; options: {', '.join(OPTIONS)}")
        if key in options:
            raise InputError(f"judge '{spec}': option '{key}' given twice")
        options[key] = value
    if "head" in options and "weights" in options:
        raise InputError(f"judge '{spec}': give head or weights, not both")
    return model, options


def conversation(item: PromptItem, response: str) -> list[dict[str, str]]:
    """The chat a reward model reads: the prompt's turns (a raw prompt as one user turn), then the response."""
    turns = item.chat() or [{"role": "user", "content": str(item.prompt)}]
    return [*turns, {"role": "assistant", "content": response}]


def plain_text(chat: list[dict[str, str]]) -> str:
    """``template=none``: a raw prompt and its continuation as one text; a chat's turns joined by newlines."""
    if len(chat) == 2 and chat[0]["role"] == "user":
        return chat[0]["content"] + chat[1]["content"]
    return "\n".join(m["content"] for m in chat)


def weights_hash(model: Any) -> str:
    """sha256 over every state_dict tensor (name, dtype, shape, bytes) as loaded."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "sha256:" + h.hexdigest()[:16]


class RewardModelJudge:
    """A sequence-classification reward model on (prompt, response): one Verdict per response, value the reward."""

    higher_is_better = True

    def __init__(self, spec: str) -> None:
        import torch

        path, opts = parse_rm_spec(spec)
        dtype = opts.get("dtype", "float32")
        if dtype not in _DTYPES:
            raise InputError(f"judge '{spec}': dtype must be one of {', '.join(_DTYPES)}, got '{dtype}'")
        trust = opts.get("trust_remote_code", "false").lower()
        if trust not in ("true", "false"):
            raise InputError(f"judge '{spec}': trust_remote_code must be true or false, got '{trust}'")
        self.tokenizer, self.model = _load(path, dtype, trust == "true")
        self.spec, self.path, self.output = spec, path, opts.get("output", "logits")
        self.batch_size = _positive(spec, opts, "batch_size", 8)
        self.max_length = _positive(spec, opts, "max_length", _context(self.model, self.tokenizer))
        self.template, template_desc = _template(spec, self.tokenizer, opts.get("template", "auto"))
        if self.model.config.pad_token_id is None:  # batches need one; the read position never depends on it
            pad = self.tokenizer.pad_token_id
            self.model.config.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        self.pad_id = int(self.model.config.pad_token_id or 0)
        weights = _weights_version(path, self.model, dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device)
        self.head, head_desc = _head(spec, self.output_names(), opts)
        self.metric = "reward"
        self.judge_id = f"rm:{path}"
        self.judge_version = (
            f"reward={head_desc}"
            + (f";output={self.output}" if self.output != "logits" else "")
            + f";template={template_desc};max_length={self.max_length};dtype={dtype};weights={weights}"
            + (f";code={_code_hash(Path(path))}" if trust == "true" else "")
        )

    def output_names(self) -> list[str]:
        """The names of the outputs a head rule weighs: ``id2label`` for ``logits``; indices for a named output,
        whose width a forward pass on a one-turn conversation tells (an unknown output name fails here)."""
        config = self.model.config
        if self.output == "logits":
            return [str(config.id2label.get(i, i)) for i in range(config.num_labels)]
        probe = self.encode(conversation(PromptItem("probe", prompt="hello"), "hello"))
        return [str(i) for i in range(self.outputs([probe]).shape[-1])]

    def judge(self, generations: list[Generation], prompts: Mapping[str, PromptItem] | None = None) -> list[Verdict]:
        """One Verdict per generation; ``prompts`` maps each generation's id to its prompt (required)."""
        missing = sorted({g.id for g in generations if prompts is None or g.id not in prompts})
        if missing:
            raise EvalHarnessError(
                f"reward model {self.judge_id} needs the prompt of every response; none for {missing[:3]}"
            )
        assert prompts is not None
        chats = [conversation(prompts[g.id], g.text) for g in generations]
        return judge_each(generations, chats, self.score, self.judge_id, self.judge_version)

    def encode(self, chat: list[dict[str, str]]) -> list[int]:
        """The token ids the reward model reads for one conversation (its template, or plain text)."""
        if self.template is None:
            return [int(t) for t in self.tokenizer(plain_text(chat))["input_ids"]]
        out = self.tokenizer.apply_chat_template(
            chat, chat_template=self.template, add_generation_prompt=False, tokenize=True
        )
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(t) for t in ids]

    def score(self, chats: list[list[dict[str, str]]]) -> list[float]:
        """The reward of each conversation, batched; raises if one is longer than ``max_length``."""
        encoded = [self.encode(c) for c in chats]
        too_long = [len(ids) for ids in encoded if len(ids) > self.max_length]
        if too_long:
            raise EvalHarnessError(f"conversation of {max(too_long)} tokens exceeds max_length {self.max_length}")
        out: list[float] = []
        for i in range(0, len(encoded), self.batch_size):
            out += self.forward(encoded[i : i + self.batch_size])
        return out

    def forward(self, batch: list[list[int]]) -> list[float]:
        """The rewards of one batch: the outputs, weighed by the head rule."""
        return (self.outputs(batch).float() @ self.head.to(self.device)).tolist()

    def outputs(self, batch: list[list[int]]) -> Any:
        """One right-padded forward pass: ``[rows, outputs]``, read at each row's last real token (``logits``), or
        the model's own named output (a custom class that pools itself, as ArmoRM's ``score``)."""
        import torch

        n = max(len(ids) for ids in batch)
        ids = torch.tensor([x + [self.pad_id] * (n - len(x)) for x in batch], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in batch], device=self.device)
        last = torch.tensor([len(x) - 1 for x in batch], device=self.device)
        per_position: list[Any] = []
        head: Any = getattr(self.model, "score", None)
        gather = head is not None and self.output == "logits"
        hook = head.register_forward_hook(lambda *a: per_position.append(a[2])) if gather else None
        try:
            with torch.inference_mode():
                out = self.model(input_ids=ids, attention_mask=mask)
        finally:
            if hook is not None:
                hook.remove()
        if self.output != "logits":
            value = getattr(out, self.output, None)
            if not isinstance(value, torch.Tensor):
                have = [k for k, v in out.items() if isinstance(v, torch.Tensor)] if hasattr(out, "items") else []
                raise InputError(
                    f"judge '{self.spec}': the model's output has no tensor '{self.output}'; it has {have}"
                )
            return value.reshape(len(batch), -1)
        if per_position and per_position[0].dim() == 3:  # a decoder classifier's head ran on every position
            return per_position[0][torch.arange(len(batch), device=self.device), last]
        return out.logits


def _positive(spec: str, opts: dict[str, str], key: str, default: int) -> int:
    if key not in opts:
        return default
    try:
        value = int(opts[key])
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"judge '{spec}': {key} must be a positive integer, got '{opts[key]}'")
    return value


def _context(model: Any, tokenizer: Any) -> int:
    """The longest input the model takes: its position table, else the tokenizer's limit, else 4096."""
    for n in (getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)):
        if isinstance(n, int) and 0 < n < 10**7:
            return n
    return 4096


def _head(spec: str, names: list[str], opts: dict[str, str]) -> tuple[Any, str]:
    """The weight vector over the model's outputs and its readable form (``logit``, ``logit[name]``, a sum)."""
    import torch

    if "weights" in opts:
        pairs = [p.rpartition(":") for p in opts["weights"].split(",") if p]
        try:
            weights = {name: float(w) for name, _, w in pairs}
        except ValueError:
            raise InputError(f"judge '{spec}': weights are NAME:NUMBER,..., got '{opts['weights']}'") from None
        unknown = sorted(set(weights) - set(names)) or ([] if weights else ["(none)"])
        if unknown:
            raise InputError(f"judge '{spec}': reward model has no output(s) {unknown}; outputs: {names}")
        vec = torch.tensor([weights.get(n, 0.0) for n in names])
    else:
        head = opts.get("head", "0")
        index = int(head) if head.isdigit() else names.index(head) if head in names else -1
        if not 0 <= index < len(names):
            raise InputError(f"judge '{spec}': reward model has no output '{head}'; outputs: {names}")
        vec = torch.zeros(len(names))
        vec[index] = 1.0
    # one description per weight vector, in the model's output order: one reward, one version however it was asked
    terms = [(n, float(w)) for n, w in zip(names, vec.tolist()) if w != 0]
    if len(terms) == 1 and terms[0][1] == 1.0:
        return vec, "logit" if len(names) == 1 else f"logit[{terms[0][0]}]"
    return vec, "+".join(f"{w:g}*logit[{n}]" for n, w in terms) or "0"


def _template(spec: str, tokenizer: Any, option: str) -> tuple[str | None, str]:
    """The chat template text to render with (None: plain text) and its description for the judge version."""
    if option == "none":
        return None, "none"
    if option == "auto":
        text = getattr(tokenizer, "chat_template", None)
        if not isinstance(text, str) or not text:
            return None, "none"
    else:
        path = Path(option)
        if not path.is_file():
            raise InputError(f"judge '{spec}': template file not found: {option}")
        text = path.read_text(encoding="utf-8")
    return text, "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _load(path: str, dtype: str, trust_remote_code: bool) -> tuple[Any, Any]:
    """(tokenizer, model in eval mode); a model whose head weights are missing (they would be random) is refused."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=getattr(torch, dtype), output_loading_info=True, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load reward model '{path}': {str(e).splitlines()[0]}") from e
    if info.get("missing_keys"):  # e.g. a causal LM, or a custom class (ArmoRM, PairRM) loaded as a stock one
        raise InputError(
            f"'{path}' is not a sequence-classification reward model: no weights for "
            f"{sorted(info['missing_keys'])[:4]} (they would be random); see docs/reward_models.md"
        )
    return tokenizer, model.eval()


def _weights_version(path: str, model: Any, dtype: str) -> str:
    """``weights_hash`` of the loaded model, memoised for a local folder by its file hash and the dtype (hashing
    tensors runs at about 0.3 GB/s on a busy CPU: 16 GB of an 8B bf16 model would cost a minute per load)."""
    from evalharness.core.models import directory_hash
    from evalharness.core.paths import cache_dir

    folder = Path(path)
    if not folder.is_dir():
        return weights_hash(model)
    memo = cache_dir("hashes") / ("rm-" + hashlib.sha256(f"{directory_hash(folder)}:{dtype}".encode()).hexdigest())
    if not memo.is_file():
        memo.write_text(weights_hash(model))
    return memo.read_text()


def _code_hash(path: Path) -> str:
    """sha256 of the model folder's Python files: the code that trust_remote_code runs."""
    h = hashlib.sha256()
    for p in sorted(path.glob("*.py")) if path.is_dir() else []:
        h.update(p.name.encode() + p.read_bytes())
    return "sha256:" + h.hexdigest()[:16]


_loaded: dict[tuple[str, str], RewardModelJudge] = {}


def reward_model_judge(spec: str) -> RewardModelJudge:
    """The judge for ``spec``, loaded once per process while the model folder is unchanged."""
    from evalharness.core.models import directory_hash

    path = Path(parse_rm_spec(spec)[0])
    key = (spec, directory_hash(path) if path.is_dir() else "")
    if key not in _loaded:
        _loaded[key] = RewardModelJudge(spec)
    return _loaded[key]


__all__ = ["OPTIONS", "RewardModelJudge", "conversation", "parse_rm_spec", "plain_text", "reward_model_judge"]
