"""Classifier judges: documented transforms, label mapping, failures recorded as failures."""

from __future__ import annotations

import pytest
import torch

from evalharness.judges import get_judge
from evalharness.judges.classifiers import HFClassifierJudge, SentimentJudge
from evalharness.core.records import Generation


def _gens(*texts: str) -> list[Generation]:
    return [Generation(f"g{i}", 0, t) for i, t in enumerate(texts)]


def test_vader_reward_is_affine_map_of_compound():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    texts = ["What a wonderful, moving film.", "Dull and terrible.", "It is a movie."]
    vs = get_judge("sentiment").judge(_gens(*texts))
    sia = SentimentIntensityAnalyzer()
    assert [v.value for v in vs] == pytest.approx([(sia.polarity_scores(t)["compound"] + 1) / 2 for t in texts])
    assert vs[0].value > 0.5 > vs[1].value and vs[2].value == 0.5


def test_toxicity_orders_texts():
    vs = get_judge("toxicity").judge(_gens("you are a stupid idiot", "the acting was lovely"))
    assert all(v.status == "ok" and 0 <= v.value <= 1 for v in vs)
    assert vs[0].value > 0.5 > vs[1].value


def test_failure_is_a_verdict_not_a_number():
    judge = SentimentJudge()
    gens = _gens("fine", None, "great")  # type: ignore[arg-type]
    vs = judge.judge(gens)
    assert [v.status for v in vs] == ["ok", "error", "ok"]
    assert vs[1].value is None and "Error" in vs[1].error


def _tiny_classifier(path, labels=("NEGATIVE", "POSITIVE")):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from tiny import build_tokenizer
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_hf_classifier_label_mapping(tmp_path):
    path = str(_tiny_classifier(tmp_path / "clf"))
    texts = ["great movie", "bad plot and dull acting really"]
    pos = HFClassifierJudge(path, label="POSITIVE").judge(_gens(*texts))
    neg = get_judge(f"hf:{path}:NEGATIVE").judge(_gens(*texts))
    default = get_judge(f"hf:{path}").judge(_gens(*texts))
    assert [p.value + n.value for p, n in zip(pos, neg)] == pytest.approx([1.0, 1.0])
    assert [d.value for d in default] == pytest.approx([p.value for p in pos])  # last label by default
    signed = HFClassifierJudge(path, label_scores={"POSITIVE": 1.0, "NEGATIVE": -1.0}).judge(_gens(*texts))
    assert [s.value for s in signed] == pytest.approx([p.value - n.value for p, n in zip(pos, neg)])
    with pytest.raises(Exception, match="no label"):
        HFClassifierJudge(path, label="toxic")
