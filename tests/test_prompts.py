"""Prompt files: every malformed input names the file, line and field."""

from __future__ import annotations

import pytest

from evalharness.core.errors import InputError
from evalharness.core.prompts import load_prompts


@pytest.mark.parametrize("body,line,field,reason", [
    ('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": "b"\n', 2, None, "malformed JSON"),
    ('{"id": 1, "prompt": "a"}\n\n{"prompt": "b"}\n', 3, "id", "missing"),
    ('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', 2, "id", "duplicate id '1' (first on line 1)"),
    ('{"id": "x"}\n', 1, "prompt", "exactly one"),
    ('{"id": "x", "prompt": "a", "messages": []}\n', 1, "messages", "exactly one"),
    ('{"id": "x", "messages": [{"role": "bot", "content": "hi"}]}\n', 1, "messages[0]", "role"),
    ('{"id": "x", "prompt": ""}\n', 1, "prompt", "non-empty"),
    ('[1, 2]\n', 1, None, "JSON object"),
])
def test_malformed_inputs(tmp_path, body, line, field, reason):
    path = tmp_path / "p.jsonl"
    path.write_text(body)
    with pytest.raises(InputError) as e:
        load_prompts(path)
    assert e.value.path == str(path) and e.value.line == line and e.value.field == field
    assert reason in str(e.value) and f"{path}:{line}" in str(e.value)


def test_empty_and_missing(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        load_prompts(tmp_path / "e.jsonl")
    with pytest.raises(InputError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")


def test_valid_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 7, "prompt": "hello", "tag": "x"}\n'
                    '{"id": "b", "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]}\n')
    a, b = load_prompts(path)
    assert a.id == "7" and a.prompt == "hello" and b.chat()[1] == {"role": "user", "content": "u"}
