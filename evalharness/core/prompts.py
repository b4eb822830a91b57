"""Prompt sets (JSONL with ``id`` and ``prompt`` or ``messages``) and the one prompt renderer.

DESIGN: a prompt is rendered once, by the harness, with the checkpoint's own chat template; every
backend then receives the same token ids, and the template and prompt hashes go into the records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalharness.core.errors import InputError, parse_json


@dataclass(frozen=True)
class PromptItem:
    """One evaluation prompt: a chat (``messages``) or a raw text continuation (``prompt``)."""

    id: str
    messages: tuple[tuple[str, str], ...] | None = None
    prompt: str | None = None
    meta: tuple[tuple[str, Any], ...] = ()

    def chat(self) -> list[dict[str, str]] | None:
        return [{"role": r, "content": c} for r, c in self.messages] if self.messages else None


_ROLES = {"system", "user", "assistant"}


def load_prompts(path: str | Path) -> list[PromptItem]:
    """Read and validate a prompt file; every problem names the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise InputError("prompt file not found", path=str(path))
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = parse_json(line, path=path, line=lineno)
            items.append(_parse_row(row, str(path), lineno, seen))
    if not items:
        raise InputError("prompt set is empty", path=str(path))
    return items


def _parse_row(row: Any, path: str, lineno: int, seen: dict[str, int]) -> PromptItem:
    if not isinstance(row, dict):
        raise InputError("expected a JSON object", path=path, line=lineno)
    if "id" not in row:
        raise InputError("missing", path=path, line=lineno, field="id")
    if not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
        raise InputError("must be a string or integer", path=path, line=lineno, field="id")
    pid = str(row["id"])
    if pid in seen:
        raise InputError(f"duplicate id '{pid}' (first on line {seen[pid]})", path=path, line=lineno, field="id")
    seen[pid] = lineno
    has_prompt, has_messages = "prompt" in row, "messages" in row
    if has_prompt == has_messages:
        raise InputError(
            "needs exactly one of 'prompt' or 'messages'",
            path=path,
            line=lineno,
            field="prompt" if not has_prompt else "messages",
        )
    meta = tuple(sorted((k, json.dumps(v)) for k, v in row.items() if k not in ("id", "prompt", "messages")))
    if has_prompt:
        if not isinstance(row["prompt"], str) or not row["prompt"]:
            raise InputError("must be a non-empty string", path=path, line=lineno, field="prompt")
        return PromptItem(pid, prompt=row["prompt"], meta=meta)
    msgs = row["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise InputError("must be a non-empty list of {role, content}", path=path, line=lineno, field="messages")
    parsed = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise InputError(
                f"item {i} needs role in {sorted(_ROLES)} and string content",
                path=path,
                line=lineno,
                field=f"messages[{i}]",
            )
        parsed.append((m["role"], m["content"]))
    return PromptItem(pid, messages=tuple(parsed), meta=meta)


def write_prompts(items: list[dict[str, Any]], path: str | Path) -> Path:
    """Write a prompt set as JSONL (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in items), encoding="utf-8")
    tmp.replace(path)
    return path


def file_hash(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def template_hash(tokenizer: Any) -> str:
    """Hash of the chat template text (None-safe), recorded with every rendered prompt."""
    text = getattr(tokenizer, "chat_template", None) or ""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def render(tokenizer: Any, item: PromptItem) -> list[int]:
    """Token ids of a prompt: the chat template with a generation prompt, or the raw text."""
    if item.messages:
        if not getattr(tokenizer, "chat_template", None):
            raise InputError(f"prompt '{item.id}' is a chat but the model has no chat template", field="messages")
        out = tokenizer.apply_chat_template(item.chat(), add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(item.prompt)["input_ids"]]


def render_response(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a fixed response after its rendered prompt, as the trainer scores it: the text's own
    tokens (no special tokens added), then EOS. Tokenized apart from the prompt, so the prompt ids are
    exactly ``render``'s; the one definition shared by training and preference-accuracy evaluation."""
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]] + [int(tokenizer.eos_token_id)]


def prompt_hash(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]
