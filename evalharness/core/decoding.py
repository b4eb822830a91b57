"""The policy's decoding, declared once: fields, defaults, valid ranges, and help text.

The run spec's ``generation:``, the CLI's decoding options (``eval``, ``generate``, ``pairs``), a
sweep's ``eval:`` and ``on_policy:`` sections and the backends' ``SamplingParams`` are all built from
``Decoding``. A command or task that needs other values names a preset below (or, in a task, passes
an override to ``params``), so no module declares its own ``max_new_tokens`` default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from evalharness.core.errors import InputError
from evalharness.core.records import SamplingParams


def _f(default: Any, text: str, **bounds: float) -> Any:
    return field(default=default, metadata={"help": text, **bounds})


@dataclass(frozen=True)
class Decoding:
    """Decoding for the policy's answers; ``check`` refuses values outside each field's range."""

    # FastChat's gen_model_answer max_new_token and AlpacaEval's generation length: benchmark answers are long.
    max_new_tokens: int = _f(1024, "most tokens a response may have", ge=1)
    temperature: float = _f(0.0, "sampling temperature (0: greedy)", ge=0)
    top_p: float = _f(1.0, "nucleus sampling mass, in (0, 1]", gt=0, le=1)
    seed: int = _f(0, "sampling seed")
    n: int = _f(1, "samples per prompt", ge=1)

    def __post_init__(self) -> None:
        check(dataclasses.asdict(self))

    def params(self, **overrides: Any) -> SamplingParams:
        """The backend's request parameters (a task's fixed decoding, e.g. KL's temperature 1, as overrides)."""
        base = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
        }
        return SamplingParams(**{**base, **overrides})

    def decoding(self, **overrides: Any) -> dict[str, Any]:
        """The part of the comparability key that describes the policy's decoding (the seed is not: two
        seeds sample one distribution)."""
        d = {**dataclasses.asdict(self), **overrides}
        return {k: d[k] for k in ("temperature", "top_p", "max_new_tokens", "n")}


FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Decoding)


def check(values: dict[str, Any], *, at: str = "") -> None:
    """Refuse a decoding value outside its field's range, naming the field (``at`` prefixes it, e.g. ``generation.``)."""
    for f in FIELDS:
        if f.name not in values or values[f.name] is None:
            continue
        v = values[f.name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (f.type == "int" and not isinstance(v, int)):
            raise InputError(
                f"{f.name} must be {'an integer' if f.type == 'int' else 'a number'}, got {v!r}", field=at + f.name
            )
        bad = [f"{_WORDS[op]} {b}" for op, b in f.metadata.items() if op in _OPS and not _OPS[op](v, b)]
        if bad:
            raise InputError(f"{f.name} must be {' and '.join(bad)}, got {v}", field=at + f.name)


_OPS = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b}
_WORDS = {"ge": ">=", "gt": ">", "le": "<="}


def bounds(name: str) -> dict[str, Any]:
    """A field's range as pydantic ``Field`` keywords (``ge``, ``gt``, ``le``)."""
    f = next(f for f in FIELDS if f.name == name)
    return {k: v for k, v in f.metadata.items() if k in _OPS}


# Named presets, so a command's own convention is a value, not a second declaration of the fields.
# Reward/KL-frontier samples (the DPO paper's controlled sentiment: the policy sampled at temperature 1).
FRONTIER = Decoding(max_new_tokens=64, temperature=1.0)
# On-policy preference pairs and a sweep's evaluation: short samples at temperature 1 (the quickstart's length).
PAIRS = Decoding(max_new_tokens=48, temperature=1.0)
# ``evalharness generate``: a quick greedy look at a checkpoint.
PREVIEW = Decoding(max_new_tokens=128)
