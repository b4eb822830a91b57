"""Errors a user can act on: each names where the bad input is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class EvalHarnessError(Exception):
    """Base class for errors the CLI reports as one clean line and a non-zero exit."""


class InputError(EvalHarnessError):
    """Bad user input: names the file, line (1-based) and field when known."""

    def __init__(
        self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None
    ) -> None:
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
        if field is not None:
            where += (" " if where else "") + f"field '{field}'"
        super().__init__(f"{where}: {message}" if where else message)


class ModelNotFoundError(EvalHarnessError):
    """A model reference that resolves to nothing (unknown alias, missing directory, no network)."""


class MissingExtraError(EvalHarnessError):
    """An optional component is used but its package is not installed."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"'{package}' is not installed; install it with: pip install 'evalharness[{extra}]'")


def parse_json(text: str | bytes, *, path: str | Path, line: int | None = None, what: str = "malformed JSON") -> Any:
    """``json.loads`` whose every failure on hostile input (bad syntax, bytes that are not UTF-8, nesting deeper
    than the parser recurses) is an InputError naming file and line; ``what`` keeps each caller's wording."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=str(path), line=line) from None
    except json.JSONDecodeError as e:
        raise InputError(f"{what} ({e.msg} at column {e.colno})", path=str(path), line=line or e.lineno) from None
    except RecursionError:
        raise InputError(f"{what} (nested too deeply)", path=str(path), line=line) from None


def read_utf8(path: str | Path) -> str:
    """A text file's content; a file that is not UTF-8 (binary) is an InputError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", path=str(path)) from None
