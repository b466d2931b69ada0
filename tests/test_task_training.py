"""Training every task kind of chapter 9 through the same `fit`, `evaluate` and `compare`: the kind is read once from the
columns (`task_kind`); the losses equal the models' own; QA is scored end to end with SQuAD EM/F1, translation with
chrF/BLEU; prompting baselines and few-shot prompts. Tiny random models: seconds."""
import json
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BertConfig, BertForQuestionAnswering, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from lightft.core import set_seed
from lightft.data import load_task, task_kind, KIND_COLUMNS, TASK_KINDS, PLM_TASK_FOR_KIND
from lightft.models import load_tokenizer
from lightft.methods import apply_method
from lightft.train import batch_loss, labelled_count, logits_of, fit, evaluate, sample_splits, make_loader, as_tokenized
from lightft.tasks import translation_prompt, translate
from lightft.compare import compare, format_table, prompting_baseline, plot_results
from test_tasks import tiny_bpe_tokenizer


@pytest.fixture(scope="module")
def bert_tokenizer(): return load_tokenizer("tiny-bert")


@pytest.fixture(scope="module")
def lm_tokenizer():
    pairs = load_task("translation", split="train").select(range(200))["translation"]
    return tiny_bpe_tokenizer([p["en"] for p in pairs] + [p["zh"] for p in pairs])


def qa_model(tokenizer, seed=0):
    set_seed(seed)
    return BertForQuestionAnswering(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                               intermediate_size=48, max_position_embeddings=160, hidden_dropout_prob=0.0,
                                               attention_probs_dropout_prob=0.0))


def lm(tokenizer, seed=0):
    set_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))


@pytest.mark.parametrize("task, kind", [("sentiment", "classification"), ("ner", "token-classification"),
                                        ("qa", "question-answering"), ("translation", "translation")])
def test_the_kind_is_read_from_the_columns_and_matches_the_task_spec(task, kind):
    from lightft.data import get_task_spec
    data = load_task(task)
    assert task_kind(data) == task_kind(data["test"]) == get_task_spec(task).kind == kind
    assert set(KIND_COLUMNS) == set(TASK_KINDS) == set(PLM_TASK_FOR_KIND)


def test_tokenized_labels_of_a_language_model_are_next_tokens(lm_tokenizer):
    tokenized = as_tokenized(load_task("translation", split="test").select(range(2)), lm_tokenizer)
    assert task_kind(tokenized) == "token-classification"               # without a model: tags
    assert task_kind(tokenized, lm(lm_tokenizer)) == "translation"       # a model that generates: next tokens


def test_qa_loss_is_the_models_own_and_ignores_padding(bert_tokenizer):
    model = qa_model(bert_tokenizer).eval()
    qa = load_task("qa", split="train").select(range(6))
    features = as_tokenized(qa, bert_tokenizer, 96)
    one = next(iter(make_loader(features.select([0]), bert_tokenizer, batch_size=1)))       # no padding: transformers' loss
    with torch.no_grad(): torch.testing.assert_close(batch_loss(logits_of(model, one), one, "question-answering"), model(**one).loss)
    batch = next(iter(make_loader(features, bert_tokenizer, batch_size=6)))
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        ours = batch_loss(logits_of(model, batch), batch, "question-answering")
        alone = [batch_loss(logits_of(model, b), b, "question-answering") for b in make_loader(features.select(range(6)), bert_tokenizer, batch_size=1)]
    torch.testing.assert_close(ours, torch.stack(alone).mean(), atol=1e-5, rtol=1e-5)          # padding changes nothing
    assert labelled_count(batch, "question-answering") == 6
    total = batch_loss(logits_of(model, batch), batch, "question-answering", reduction="sum")
    torch.testing.assert_close(total / 6, ours)


def test_translation_loss_is_the_causal_lms_own_shifted_loss(lm_tokenizer):
    model = lm(lm_tokenizer).eval()
    data = load_task("translation", split="train").select(range(4))
    batch = next(iter(make_loader(as_tokenized(data, lm_tokenizer, 96, "translation"), lm_tokenizer, batch_size=4)))
    with torch.no_grad():
        ours = batch_loss(logits_of(model, batch), batch, "translation")
        theirs = model(**batch).loss                                     # transformers shifts the labels itself
    torch.testing.assert_close(ours, theirs)
    assert labelled_count(batch, "translation") == int((batch["labels"][:, 1:] != -100).sum())


def test_fit_and_evaluate_extractive_qa_end_to_end(bert_tokenizer):
    data = sample_splits(load_task("qa"), {"train": 48, "validation": 12, "test": 12})
    model = apply_method(qa_model(bert_tokenizer), "full")
    history = fit(model, bert_tokenizer, data, epochs=2, lr=5e-3, batch_size=8, max_length=96, progress=False)
    assert history.best_metric == "f1" and history.config["kind"] == "question-answering"
    assert history.epochs[-1]["train_loss"] < history.epochs[0]["train_loss"] + 1e-6 or history.steps[-1]["loss"] < history.steps[0]["loss"]
    scores = evaluate(model, bert_tokenizer, data["test"], max_length=96)
    assert set(scores) == {"exact_match", "f1", "loss", "n"} and scores["n"] == 12
    assert 0 <= scores["exact_match"] <= scores["f1"] <= 1
    with pytest.raises(ValueError, match="raw split"): evaluate(model, bert_tokenizer, as_tokenized(data["test"], bert_tokenizer, 96, "question-answering"))
    with pytest.raises(ValueError, match="for a question-answering task use one of"):
        fit(model, bert_tokenizer, data, epochs=1, best_metric="accuracy", progress=False)


def test_gradient_accumulation_gives_the_same_qa_run(bert_tokenizer):
    data = sample_splits(load_task("qa"), {"train": 16})
    runs = []
    for accum in (1, 4):
        model = apply_method(qa_model(bert_tokenizer), "full")
        h = fit(model, bert_tokenizer, data, epochs=1, lr=1e-3, batch_size=8, max_length=96, eval_split=None, progress=False, grad_accum=accum)
        # the span head's bias shifts every token's score alike, so the softmax over tokens ignores it: its gradient is 0 up to
        # rounding, and Adam turns rounding noise into steps of size lr — it is left out of the comparison
        runs.append(([s["loss"] for s in h.steps], [p.detach().clone() for n, p in model.named_parameters() if n != "qa_outputs.bias"]))
    assert runs[0][0] == pytest.approx(runs[1][0], abs=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):      # Adam moves every weight by about lr per step, even where the gradient is ~0 and
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)   # rounding decides its sign: a tenth of one step (lr 1e-3)


def test_fit_and_evaluate_translation_with_lora_on_a_llama(lm_tokenizer):
    data = sample_splits(load_task("translation"), {"train": 32, "validation": 6, "test": 6})
    set_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=256, tie_word_embeddings=True,
                                         bos_token_id=lm_tokenizer.eos_token_id, eos_token_id=lm_tokenizer.eos_token_id))
    apply_method(model, "lora")
    history = fit(model, lm_tokenizer, data, epochs=2, lr=5e-3, batch_size=8, max_length=128, progress=False)
    assert history.best_metric == "loss" and "eval_chrf" not in history.epochs[0]      # the epoch is chosen on the loss: no generation
    assert history.steps[-1]["loss"] < history.steps[0]["loss"]
    scores = evaluate(model, lm_tokenizer, data["test"], max_length=128, max_new_tokens=8)
    assert {"loss", "perplexity", "chrf", "bleu", "n"} <= set(scores) and scores["n"] == 6
    assert scores["perplexity"] == pytest.approx(torch.tensor(scores["loss"]).exp().item())
    assert set(evaluate(model, lm_tokenizer, data["test"], max_length=128, generate=False)) == {"loss", "perplexity", "n"}


def test_few_shot_prompts_show_solved_examples_first(lm_tokenizer):
    shots = [("Good morning.", "早上好。"), ("Thank you.", "谢谢。")]
    prompt = translation_prompt("See you tomorrow.", "en-zh", shots=shots)
    assert prompt == ("Translate English to Chinese:\nGood morning.\n早上好。\n\nTranslate English to Chinese:\nThank you.\n谢谢。\n\n"
                      "Translate English to Chinese:\nSee you tomorrow.\n")
    chat = tiny_bpe_tokenizer(["x"], vocab_size=300, chat=True)
    turns = translation_prompt("谢谢。", "zh-en", chat, shots=[("早上好。", "Good morning.")])
    assert turns == ("<|im_start|>user\nTranslate Chinese to English:\n早上好。<|im_end|>\n<|im_start|>assistant\nGood morning.<|im_end|>\n"
                     "<|im_start|>user\nTranslate Chinese to English:\n谢谢。<|im_end|>\n<|im_start|>assistant\n")
    model = lm(lm_tokenizer).eval()
    lines = translate(model, lm_tokenizer, ["Good night."], max_new_tokens=12, shots=shots)
    assert "\n" not in lines[0]                                          # the first line only
    raw = translate(model, lm_tokenizer, ["Good night."], max_new_tokens=12, shots=shots, first_line=False)
    assert raw[0].split("\n")[0].strip() == lines[0]


def test_compare_trains_qa_and_prints_em_and_f1(tmp_path):
    rows = compare("tiny-bert", "qa", "head", epochs=1, train_subset=32, max_length=96, isolate=False, progress=False)
    assert {"test_exact_match", "test_f1"} <= set(rows[0]) and "test_accuracy" not in rows[0]
    table = format_table(rows)
    assert "test EM %" in table and "test F1 %" in table
    assert plot_results(rows).axes[0].get_ylabel() == "F1 %"


def test_prompting_baseline_on_a_saved_causal_lm(tmp_path, lm_tokenizer):
    model = lm(lm_tokenizer)
    model.save_pretrained(tmp_path / "lm"); lm_tokenizer.save_pretrained(tmp_path / "lm")
    data = sample_splits(load_task("translation"), {"test": 4})
    zero = prompting_baseline(str(tmp_path / "lm"), data, 0, max_new_tokens=6)
    four = prompting_baseline(str(tmp_path / "lm"), data, 2, max_new_tokens=6)
    assert (zero["method"], four["method"]) == ("zero-shot prompt", "2-shot prompt")
    assert zero["trainable"] == 0 and 0 <= zero["test_chrf"] <= 100 and "test_bleu" in zero
    table = format_table([zero, four])
    assert "test chrF" in table and "test BLEU" in table


def test_compare_translation_in_both_directions_with_prompting_baselines(tmp_path, lm_tokenizer):
    set_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(lm_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=48, max_position_embeddings=256,
                                         bos_token_id=lm_tokenizer.eos_token_id, eos_token_id=lm_tokenizer.eos_token_id))
    model.save_pretrained(tmp_path / "llama"); lm_tokenizer.save_pretrained(tmp_path / "llama")
    pairs = load_task("translation", split="train").select(range(60))["translation"]        # a small Tatoeba-format file
    (tmp_path / "cmn.txt").write_text("".join(f"{p['en']}\t{p['zh']}\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}\n" for i, p in enumerate(pairs)))
    rows = compare(str(tmp_path / "llama"), "tatoeba", "lora", epochs=1, batch_size=8, max_length=128, data_dir=str(tmp_path),
                   direction="zh-en", isolate=False, progress=False)
    assert [r["method"] for r in rows] == ["zero-shot prompt", "4-shot prompt", "lora"]
    assert all({"test_chrf", "test_bleu"} <= set(r) for r in rows) and rows[-1]["trainable"] > 0
    assert "test chrF" in format_table(rows)
    with pytest.raises(ValueError, match="direction applies to translation tasks"): compare("tiny-bert", "sentiment", "head", direction="zh-en")
