"""Error analysis (chapter 9): `evaluate(..., return_predictions=True)` for every task kind, `train_method`, and the functions that
sort errors into kinds — entities (`entity_errors`, consistent with strict seqeval), answers (`answer_errors`) and translations
(`translation_errors`). Tiny models and hand-made cases: seconds."""
import numpy as np
import pytest
from transformers import BertConfig, BertForTokenClassification

from lightft.core import set_seed
from lightft.data import load_task
from lightft.compare import train_method, run_method, prompting_baseline
from lightft.methods import apply_method
from lightft.models import load_tokenizer
from lightft.tasks import (ENTITY_ERRORS, ANSWER_KINDS, TRANSLATION_FLAGS, NER_LABELS, entity_errors, strict_entities, answer_errors,
                           translation_errors, ner_metrics, squad_metrics, squad_f1, translation_metrics)
from lightft.train import evaluate, predict, sample_splits, fit
from test_task_training import qa_model, lm, bert_tokenizer, lm_tokenizer   # fixtures and tiny models


def test_strict_entities_need_a_b_tag():
    assert strict_entities(["B-PER", "I-PER", "O", "I-LOC", "B-ORG", "I-MISC"]) == [("PER", 0, 1), ("ORG", 4, 4)]
    assert strict_entities(["O", "O"]) == []


def test_entity_errors_sort_every_wrong_entity_into_one_kind():
    gold = ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O", "B-MISC"]
    pred = ["B-PER", "I-PER", "O", "B-ORG", "O",     "O", "B-PER", "O", "O"]
    errors = entity_errors([gold], [pred], [list("abcdefghi")])
    assert [(e["kind"], e["gold"], e["predicted"]) for e in errors] == [
        ("wrong boundary", ("ORG", 3, 4), ("ORG", 3, 3)), ("wrong type", ("LOC", 6, 6), ("PER", 6, 6)), ("missed", ("MISC", 8, 8), None)]
    assert errors[0]["gold_text"] == "d e" and errors[2]["predicted_text"] is None
    assert {e["kind"] for e in errors} <= set(ENTITY_ERRORS)
    spurious = entity_errors([["O", "O"]], [["B-LOC", "O"]])
    assert [(e["kind"], e["gold"], e["predicted"]) for e in spurious] == [("spurious", None, ("LOC", 0, 0))]
    assert entity_errors([["B-PER", "I-PER", "O"]], [["B-LOC", "I-LOC", "I-LOC"]])[0]["kind"] == "wrong type and boundary"


def test_entity_errors_agree_with_strict_precision_and_recall():
    rng = np.random.default_rng(0)
    refs = [list(rng.choice(NER_LABELS, size=12)) for _ in range(40)]
    preds = [[t if rng.random() < 0.6 else str(rng.choice(NER_LABELS)) for t in r] for r in refs]   # invalid I- starts included
    errors = entity_errors(refs, preds)
    n_gold, n_pred = sum(len(strict_entities(r)) for r in refs), sum(len(strict_entities(p)) for p in preds)
    wrong_gold, wrong_pred = sum(e["gold"] is not None for e in errors), sum(e["predicted"] is not None for e in errors)
    m = ner_metrics(refs, preds)
    assert m["recall"] == pytest.approx((n_gold - wrong_gold) / n_gold)
    assert m["precision"] == pytest.approx((n_pred - wrong_pred) / n_pred)
    ids = [[NER_LABELS.index(t) for t in r] for r in refs]
    assert entity_errors(ids, preds) == errors                          # label ids or names


def test_entity_errors_refuse_mismatched_input():
    with pytest.raises(ValueError, match="2 reference sentences but 1 predicted"): entity_errors([["O"], ["O"]], [["O"]])
    with pytest.raises(ValueError, match="sentence 0: 2 reference tags but 1 predicted"): entity_errors([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 token lists for 2 sentences"): entity_errors([["O"], ["O"]], [["O"], ["O"]], [["a"]])


def test_answer_errors_kinds_and_f1():
    golds = [["the Eiffel Tower"], ["1889"], ["Gustave Eiffel"], ["in Paris, France"], ["steel"], ["x"], ["x y", "q"]]
    preds = ["Eiffel tower!", "in 1889", "Eiffel", "Paris and Lyon", "iron", "The", "y z"]
    kinds = answer_errors(preds, golds)
    assert [k["kind"] for k in kinds] == ["exact", "longer", "shorter", "overlapping", "wrong", "empty", "overlapping"]
    assert {k["kind"] for k in kinds} <= set(ANSWER_KINDS)
    assert [k["f1"] for k in kinds] == [squad_f1(p, g) for p, g in zip(preds, golds)]
    assert 100 * np.mean([k["f1"] for k in kinds]) == pytest.approx(squad_metrics(preds, golds)["f1"])
    with pytest.raises(ValueError, match="2 predictions but 1 references"): answer_errors(["a", "b"], [["a"]])


def test_translation_errors_flag_what_a_script_can_see():
    flags = translation_errors(["天气很好。"] * 5, ["The weather is nice.", "", "天气很好。", "Nice.", "the the weather the the weather the the weather"],
                               ["The weather is nice."] * 5, target="en")
    assert [f["flags"] for f in flags] == [[], ["empty"], ["wrong language", "copies the source"], ["too short"], ["too long", "repeats itself"]]
    assert flags[0]["chrf"] == pytest.approx(100.0) and flags[0]["length_ratio"] == 1.0
    assert all(set(f["flags"]) <= set(TRANSLATION_FLAGS) for f in flags)
    zh = translation_errors(["The weather is nice."], ["天气"], ["今天天气很好。"], target="zh")[0]
    assert zh["flags"] == ["too short"] and zh["length_ratio"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="target must be one of"): translation_errors(["a"], ["b"], ["c"], target="fr")
    with pytest.raises(ValueError, match="give one of each per sentence"): translation_errors(["a"], ["b", "c"], ["d"])


def test_evaluate_returns_word_tags_for_ner(bert_tokenizer):
    data = sample_splits(load_task("ner"), {"test": 10})
    set_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                  intermediate_size=48, num_labels=len(NER_LABELS),
                                                  id2label=dict(enumerate(NER_LABELS)), label2id={l: i for i, l in enumerate(NER_LABELS)}))
    out = evaluate(model, bert_tokenizer, data["test"], max_length=64, return_predictions=True)
    tags = out["predictions"]
    assert [len(t) for t in tags] == [len(t) for t in data["test"]["tokens"]]       # one tag per word (short sentences: none cut)
    assert ner_metrics(data["test"]["ner_tags"], tags)["f1"] == pytest.approx(out["f1"])
    assert "predictions" not in evaluate(model, bert_tokenizer, data["test"], max_length=64)


def test_evaluate_returns_answers_for_qa(bert_tokenizer):
    data = sample_splits(load_task("qa"), {"test": 6})
    out = evaluate(qa_model(bert_tokenizer), bert_tokenizer, data["test"], max_length=96, return_predictions=True)
    assert len(out["predictions"]) == 6 and all(isinstance(a, str) for a in out["predictions"])
    assert squad_metrics(out["predictions"], data["test"]["answers"])["f1"] / 100 == pytest.approx(out["f1"])


def test_evaluate_returns_translations(lm_tokenizer):
    data = sample_splits(load_task("translation"), {"test": 3})
    model = lm(lm_tokenizer)
    out = evaluate(model, lm_tokenizer, data["test"], max_length=96, max_new_tokens=6, return_predictions=True)
    assert len(out["predictions"]) == 3
    assert translation_metrics(out["predictions"], data["test"]["target"], target="zh")["chrf"] == pytest.approx(out["chrf"])
    with pytest.raises(ValueError, match="needs generate=True"):
        evaluate(model, lm_tokenizer, data["test"], generate=False, return_predictions=True)


def test_prompting_baseline_keeps_its_translations_when_asked(tmp_path, lm_tokenizer):
    model = lm(lm_tokenizer)
    model.save_pretrained(tmp_path / "lm"); lm_tokenizer.save_pretrained(tmp_path / "lm")
    data = sample_splits(load_task("translation"), {"train": 8, "test": 3})
    row = prompting_baseline(str(tmp_path / "lm"), data, 1, max_new_tokens=6, return_predictions=True)
    assert len(row["predictions"]) == 3
    assert translation_metrics(row["predictions"], data["test"]["target"], target="zh")["chrf"] == pytest.approx(row["test_chrf"], abs=1e-4)
    assert "predictions" not in prompting_baseline(str(tmp_path / "lm"), data, 0, max_new_tokens=6)


def test_train_method_is_the_run_behind_run_method():
    data = sample_splits(load_task("sentiment"), {"train": 64, "validation": 16, "test": 32, "challenge": 16})
    settings = dict(epochs=1, batch_size=16, max_length=32, progress=False)
    model, tokenizer, history = train_method("tiny-bert", "bitfit", data, **settings)
    row = run_method("tiny-bert", "bitfit", data, **settings)
    assert evaluate(model, tokenizer, data["test"], max_length=32)["accuracy"] == pytest.approx(row["test_accuracy"], abs=1e-4)
    assert history.best_epoch == row["best_epoch"] and len(history.steps) == row["steps"]
    out = evaluate(model, tokenizer, data["test"], max_length=32, return_predictions=True)
    assert out["predictions"] == predict(model, tokenizer, data["test"], max_length=32).tolist()
    with pytest.raises(ValueError, match="r must be a whole number >= 1"): train_method("tiny-bert", "lora", data, {"r": 0})
