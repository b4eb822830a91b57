"""Run specs: strict validation naming file, line and field."""

from __future__ import annotations

import pytest

from evalharness.core.errors import InputError
from evalharness.pipeline.spec import load_spec

GOOD = """\
name: demo
model: smollm2-135m-instruct
generation:
  max_new_tokens: 64
judge:
  type: openai
  model: gpt-4-1106-preview
  base_url: http://127.0.0.1:8000/v1
  api_key_env: OPENAI_API_KEY
tasks:
  mt_bench:
    limit: 4
"""


def _load(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p, load_spec(p)


def test_valid_spec(tmp_path):
    _, (spec, tasks) = _load(tmp_path, GOOD)
    assert spec.generation.max_new_tokens == 64 and spec.judge.api_key_env == "OPENAI_API_KEY"
    [mt] = tasks
    assert (mt.name, mt.module, mt.config.limit) == ("mt_bench", "mt_bench", 4)
    assert spec.identity() != load_spec(tmp_path / "spec.yaml")[0].model_copy(update={"model": "x"}).identity()


@pytest.mark.parametrize("old,new,line,field", [
    ("  max_new_tokens: 64", "  max_new_token: 64", 4, "generation.max_new_token"),
    ("  max_new_tokens: 64", "  max_new_tokens: lots", 4, "generation.max_new_tokens"),
    ("    limit: 4", "    limt: 4", 12, "tasks.mt_bench.limt"),
    ("  mt_bench:", "  mt_bench_x:", 11, "tasks.mt_bench_x"),
    ("  base_url: http://127.0.0.1:8000/v1\n", "", 5, "judge.base_url"),
    ("name: demo\n", "", 1, "name"),
])
def test_errors_name_line_and_field(tmp_path, old, new, line, field):
    p = tmp_path / "spec.yaml"
    p.write_text(GOOD.replace(old, new))
    with pytest.raises(InputError) as e:
        load_spec(p)
    assert (e.value.path, e.value.line, e.value.field) == (str(p), line, field), str(e.value)


MANY = """\
name: many
models: [smollm2-135m-instruct, {name: dpo, ref: ./ckpt}]
reference: smollm2-135m-instruct
generation: {max_new_tokens: 64, n: 2}
tasks:
  sentiment: {prompts: ./p.jsonl, generation: {temperature: 1.0, max_new_tokens: 40}}
  kl: {prompts: ./p.jsonl}
  helpful: {task: reward, judge: toxicity, prompts: ./p.jsonl}
"""


def test_many_models_tasks_and_overrides(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": "a", "prompt": "x"}\n')
    _, (spec, tasks) = _load(tmp_path, MANY)
    assert spec.models[0] == "smollm2-135m-instruct" and spec.models[1].ref == str(tmp_path / "ckpt")
    by = {t.name: t for t in tasks}
    assert [t.module for t in tasks] == ["sentiment", "kl", "reward"] and by["helpful"].config.judge == "toxicity"
    assert by["sentiment"].config.prompts == str(tmp_path / "p.jsonl")
    assert by["sentiment"].extra["generation_overrides"] == {"temperature": 1.0, "max_new_tokens": 40}


@pytest.mark.parametrize("old,new,line,field", [
    ("models: [smollm2-135m-instruct, {name: dpo, ref: ./ckpt}]\n", "", 1, "name"),  # no model at all
    ("{task: reward, judge", "{task: rewardz, judge", 8, "tasks.helpful.task"),
    ("temperature: 1.0, max", "temperatur: 1.0, max", 6, "tasks.sentiment.generation.temperatur"),
    ("n: 2}", "n: 0}", 4, "generation.n"),
    ("{prompts: ./p.jsonl}", "{prompt: ./p.jsonl}", 7, "tasks.kl.prompt"),
    ("{name: dpo, ref", "{name: ../../escaped, ref", 2, "models.1.name"),  # outside the results root
    ("{name: dpo, ref", "{name: /abs/dpo, ref", 2, "models.1.name"),
])
def test_many_model_spec_errors(tmp_path, old, new, line, field):
    p = tmp_path / "spec.yaml"
    p.write_text(MANY.replace(old, new))
    with pytest.raises(InputError) as e:
        load_spec(p)
    assert (e.value.path, e.value.line, e.value.field) == (str(p), line, field), str(e.value)


def test_malformed_yaml(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(InputError, match="malformed YAML") as e:
        load_spec(p)
    assert e.value.line is not None
