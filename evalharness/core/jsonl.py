"""Official benchmark metrics, recomputed exactly: alpaca_eval, arena_hard, mt_bench."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from evalharness.core.errors import InputError, parse_json


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; malformed lines name file and line."""
    with path.open("rb") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                row = parse_json(line, path=path, line=line_no, what="not valid JSON")
                if not isinstance(row, dict):
                    raise InputError("expected a JSON object", path=str(path), line=line_no)
                yield line_no, row
