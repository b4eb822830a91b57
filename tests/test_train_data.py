"""Preference data: JSONL and Hugging Face datasets, chat or text, scores, KTO's unpaired format, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalharness.core.errors import InputError
from evalharness.training.data import data_hash, load_preferences, load_unpaired, unpair


def write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


CHAT = [{"role": "user", "content": "review it"}]


def test_text_and_chat_pairs_with_scores(tmp_path):
    p = write(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "Once upon", "chosen": " a time", "rejected": " a crime", "score_chosen": 0.9, "score_rejected": 0.1},
        {"prompt": CHAT, "chosen": "good", "rejected": "bad"},
        # UltraFeedback-binarized style: whole conversations, the prompt is what precedes the assistant turn
        {"chosen": CHAT + [{"role": "assistant", "content": "great"}],
         "rejected": CHAT + [{"role": "assistant", "content": "awful"}]},
    ])
    pairs = load_preferences(p)
    assert [x.id for x in pairs] == ["a", "row-2", "row-3"]
    assert pairs[0].prompt.prompt == "Once upon" and pairs[0].score_chosen == 0.9 and pairs[0].score_rejected == 0.1
    assert pairs[1].prompt.chat() == CHAT and pairs[1].score_chosen is None
    assert pairs[2].prompt.chat() == CHAT and (pairs[2].chosen, pairs[2].rejected) == ("great", "awful")


@pytest.mark.parametrize("row, line_field", [
    ('{"prompt": "x", "chosen": "a"', (1, None)),
    ({"prompt": "x", "chosen": "a"}, (1, "rejected")),
    ({"prompt": "x", "chosen": "a", "rejected": ""}, (1, "rejected")),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": 1.0}, (1, "score_rejected")),
    ({"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": "high", "score_rejected": 0}, (1, "score_chosen")),
    ({"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}, (1, "prompt[0]")),
    ({"chosen": CHAT + [{"role": "assistant", "content": "a"}], "rejected": [{"role": "user", "content": "other"},
      {"role": "assistant", "content": "b"}]}, (1, "rejected")),
    ({"chosen": "a", "rejected": "b"}, (1, "prompt")),
    ({"prompt": "x", "chosen": CHAT, "rejected": "b"}, (1, "chosen")),
])
def test_bad_rows_name_file_line_field(tmp_path, row, line_field):
    p = write(tmp_path / "bad.jsonl", [row])
    with pytest.raises(InputError) as e:
        load_preferences(p)
    assert (e.value.path, e.value.line, e.value.field) == (str(p), *line_field)


def test_duplicate_ids_and_empty_and_missing(tmp_path):
    p = write(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "x", "chosen": "a", "rejected": "b"}, "",
                                       {"id": "1", "prompt": "y", "chosen": "a", "rejected": "b"}])
    with pytest.raises(InputError, match="duplicate id '1'") as e:
        load_preferences(p)
    assert e.value.line == 3
    with pytest.raises(InputError, match="empty"):
        load_preferences(write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(InputError, match="not found"):
        load_preferences(tmp_path / "nope.jsonl")


def test_unpaired_kto_format_and_unpairing(tmp_path):
    p = write(tmp_path / "kto.jsonl", [{"prompt": "x", "completion": "good", "label": True},
                                       {"prompt": CHAT, "completion": "bad", "label": False}])
    ex = load_unpaired(p)
    assert [(e.completion, e.desirable) for e in ex] == [("good", True), ("bad", False)]
    with pytest.raises(InputError) as e:
        load_unpaired(write(tmp_path / "k2.jsonl", [{"prompt": "x", "completion": "c", "label": "yes"}]))
    assert e.value.field == "label" and e.value.line == 1
    pairs = write(tmp_path / "pairs.jsonl", [{"id": "q", "prompt": "x", "chosen": "a", "rejected": "b"}])
    un = load_unpaired(pairs)  # a paired file is unpaired on the fly, as TRL does for KTO
    assert [(e.id, e.completion, e.desirable) for e in un] == [("q/chosen", "a", True), ("q/rejected", "b", False)]
    assert un == unpair(load_preferences(pairs))


def test_data_hash_tracks_content_not_formatting(tmp_path):
    a = write(tmp_path / "a.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"}])
    b = tmp_path / "b.jsonl"
    b.write_text('{"rejected": "b",   "chosen": "a", "prompt": "x"}\n\n')
    c = write(tmp_path / "c.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "c"}])
    assert data_hash(load_preferences(a)) == data_hash(load_preferences(b)) != data_hash(load_preferences(c))


def test_hugging_face_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"prompt": "x", "chosen": "a", "rejected": "b", "score_chosen": 8.0, "score_rejected": 3.0},
            {"prompt": "y", "chosen": "c", "rejected": "d", "score_chosen": 7.0, "score_rejected": 7.5}]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "ds")
    pairs = load_preferences(f"hf:{tmp_path / 'ds'}:train_prefs")
    assert [(p.chosen, p.score_chosen) for p in pairs] == [("a", 8.0), ("c", 7.0)]
    bad = [{"prompt": "x", "chosen": "a"}]
    datasets.Dataset.from_list(bad).save_to_disk(tmp_path / "bad")
    with pytest.raises(InputError) as e:
        load_preferences(f"hf:{tmp_path / 'bad'}")
    assert e.value.line == 1 and e.value.field == "rejected"
