"""Preference data: pairs (prompt, chosen, rejected, optional scores) and KTO's unpaired examples.

Sources: a JSONL file, or ``hf:NAME[:SPLIT]`` for a Hugging Face dataset (a hub id, or a folder
written by ``Dataset.save_to_disk``). Field names follow the common convention (TRL, UltraFeedback
binarized): ``prompt``, ``chosen``, ``rejected``, ``score_chosen``, ``score_rejected``; unpaired rows
have ``prompt``, ``completion`` and a boolean ``label``. A prompt is a string or a list of chat
messages; a response is a string, or a list of messages ending with the assistant's turn (then the
messages before it are the prompt when ``prompt`` is absent).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalharness.core.errors import InputError, MissingExtraError, parse_json
from evalharness.core.prompts import PromptItem

_ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is preferred to ``rejected`` for ``prompt``."""

    id: str
    prompt: PromptItem
    chosen: str
    rejected: str
    score_chosen: float | None = None
    score_rejected: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "prompt": _prompt_out(self.prompt),
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        if self.score_chosen is not None:
            d.update(score_chosen=self.score_chosen, score_rejected=self.score_rejected)
        return d


@dataclass(frozen=True)
class UnpairedExample:
    """One KTO example: a completion labelled desirable (True) or undesirable (False)."""

    id: str
    prompt: PromptItem
    completion: str
    desirable: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": _prompt_out(self.prompt),
            "completion": self.completion,
            "label": self.desirable,
        }


def _prompt_out(p: PromptItem) -> Any:
    return p.chat() if p.messages else p.prompt


def _rows(source: str | Path, split: str) -> tuple[str, Iterator[tuple[int | None, Any]]]:
    """(display name, (line number or None, row)) for a JSONL file or a Hugging Face dataset."""
    src = str(source)
    if src.startswith("hf:"):
        name, _, sp = src[3:].partition(":")
        try:
            import datasets
        except ImportError as e:
            raise MissingExtraError("datasets", "train") from e
        if Path(name).is_dir():
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[sp or split]
        else:
            try:
                ds = datasets.load_dataset(name, split=sp or split)
            except Exception as e:  # offline, unknown name, missing split: one clean line
                raise InputError(
                    f"cannot load Hugging Face dataset '{name}' split '{sp or split}': {e}".splitlines()[0], path=src
                ) from e
        return src, ((i + 1, row) for i, row in enumerate(ds))
    path = Path(src)
    if not path.is_file():
        raise InputError("preference data file not found", path=src)

    def lines() -> Iterator[tuple[int | None, Any]]:
        with path.open("rb") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield lineno, parse_json(line, path=src, line=lineno)

    return src, lines()


def _messages(value: Any, where: dict[str, Any], field: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise InputError("must be a non-empty string or list of {role, content}", field=field, **where)
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise InputError(f"needs role in {sorted(_ROLES)} and string content", field=f"{field}[{i}]", **where)
        out.append((m["role"], m["content"]))
    return tuple(out)


def _response(row: dict[str, Any], field: str, where: dict[str, Any]) -> tuple[str, tuple[tuple[str, str], ...] | None]:
    """(response text, preceding messages or None) of a string or a conversation ending with the assistant."""
    if field not in row:
        raise InputError("missing", field=field, **where)
    v = row[field]
    if isinstance(v, str):
        if not v.strip():
            raise InputError("empty response", field=field, **where)
        return v, None
    msgs = _messages(v, where, field)
    if msgs[-1][0] != "assistant":
        raise InputError("a conversation must end with the assistant's response", field=field, **where)
    if not msgs[-1][1].strip():
        raise InputError("empty response (the assistant's last turn)", field=field, **where)
    return msgs[-1][1], msgs[:-1] or None


def _prompt(
    row: dict[str, Any], pid: str, context: tuple[tuple[str, str], ...] | None, where: dict[str, Any]
) -> PromptItem:
    if "prompt" in row:
        p = row["prompt"]
        if isinstance(p, str):
            if not p.strip():
                raise InputError("empty prompt", field="prompt", **where)
            return PromptItem(pid, prompt=p)
        return PromptItem(pid, messages=_messages(p, where, "prompt"))
    if "messages" in row:
        return PromptItem(pid, messages=_messages(row["messages"], where, "messages"))
    if context:
        return PromptItem(pid, messages=context)
    raise InputError("missing (give 'prompt', or responses as conversations that include it)", field="prompt", **where)


def _score(row: dict[str, Any], field: str, where: dict[str, Any]) -> float | None:
    v = row.get(field)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"must be a finite number, got {v!r}", field=field, **where)
    return float(v)


def _row_id(row: dict[str, Any], index: int, seen: dict[str, int], where: dict[str, Any]) -> str:
    rid = row.get("id", row.get("prompt_id"))
    pid = f"row-{index}" if rid is None else str(rid)
    if pid in seen:
        raise InputError(f"duplicate id '{pid}' (first at row {seen[pid]})", field="id", **where)
    seen[pid] = index
    return pid


def _objects(name: str, rows: Iterator[tuple[int | None, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, row, where) for each row, which must be a JSON object with an id not seen before."""
    seen: dict[str, int] = {}
    for index, (lineno, row) in enumerate(rows, 1):
        where: dict[str, Any] = {"path": name, "line": lineno}
        if not isinstance(row, dict):
            raise InputError("expected a JSON object", **where)
        yield _row_id(row, index, seen, where), row, where


def load_preferences(source: str | Path, *, split: str = "train") -> list[PreferencePair]:
    """Read preference pairs; any problem names the file, line and field."""
    name, rows = _rows(source, split)
    pairs: list[PreferencePair] = []
    for pid, row, where in _objects(name, rows):
        chosen, ctx_c = _response(row, "chosen", where)
        rejected, ctx_r = _response(row, "rejected", where)
        if "prompt" not in row and "messages" not in row and ctx_c != ctx_r:
            raise InputError("chosen and rejected conversations have different prompts", field="rejected", **where)
        prompt = _prompt(row, pid, ctx_c, where)
        sc, sr = _score(row, "score_chosen", where), _score(row, "score_rejected", where)
        if (sc is None) != (sr is None):
            raise InputError(
                "give both score_chosen and score_rejected, or neither",
                field="score_rejected" if sr is None else "score_chosen",
                **where,
            )
        pairs.append(PreferencePair(pid, prompt, chosen, rejected, sc, sr))
    if not pairs:
        raise InputError("preference data is empty", path=name)
    return pairs


def load_unpaired(source: str | Path, *, split: str = "train") -> list[UnpairedExample]:
    """Read KTO's unpaired format (prompt, completion, label); a paired file is unpaired on the fly."""
    name, row_iter = _rows(source, split)
    rows = list(row_iter)
    if rows and isinstance(rows[0][1], dict) and "chosen" in rows[0][1]:
        return unpair(load_preferences(source, split=split))
    out: list[UnpairedExample] = []
    for pid, row, where in _objects(name, iter(rows)):
        completion, ctx = _response(row, "completion", where)
        if "label" not in row:
            raise InputError("missing (true = desirable, false = undesirable)", field="label", **where)
        if not isinstance(row["label"], bool):
            raise InputError(f"must be true or false, got {row['label']!r}", field="label", **where)
        out.append(UnpairedExample(pid, _prompt(row, pid, ctx, where), completion, row["label"]))
    if not out:
        raise InputError("unpaired data is empty", path=name)
    return out


def unpair(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """Each pair gives a desirable (chosen) and an undesirable (rejected) example, as TRL does for KTO."""
    out = []
    for p in pairs:
        out.append(UnpairedExample(f"{p.id}/chosen", p.prompt, p.chosen, True))
        out.append(UnpairedExample(f"{p.id}/rejected", p.prompt, p.rejected, False))
    return out


def data_hash(examples: list[PreferencePair] | list[UnpairedExample]) -> str:
    """Content hash of the parsed examples, in order (what the manifest records)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps(e.to_dict(), sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return "sha256:" + h.hexdigest()[:16]
