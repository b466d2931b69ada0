"""Tests of lightft.tasks (chapter 9): task kinds and registration, the shipped NER / QA / translation splits and their
builders, the CoNLL-2003 / SQuAD / Tatoeba readers, the metrics, tokenisation for each kind and the inference helpers
on tiny random models. Everything runs offline in seconds."""
import gzip, json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, DatasetDict
from sacrebleu.metrics import BLEU
from seqeval.metrics import f1_score
from seqeval.scheme import IOB2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (BertConfig, BertForQuestionAnswering, BertForTokenClassification, GPT2Config, GPT2LMHeadModel,
                          PreTrainedTokenizerFast)

from lightft.core import set_seed
from lightft.data import TASK_KINDS, TASKS, TaskSpec, get_task_spec, load_task, register_task
from lightft.models import load_tokenizer
from lightft.tasks import (NER_LABELS, NER_TYPES, PLM_TASK_FOR_KIND, aligned_tags, align_labels, answer, build_ner_splits,
                           build_qa_splits, build_translation_splits, encode_qa, encode_translation, extract_entities,
                           ner_metrics, normalize_answer, parse_markup, qa_predictions, read_conll, read_squad_json,
                           read_tatoeba, source_dir, squad_exact_match, squad_f1, squad_metrics, stratified_split, task_dir,
                           to_iob2, tokenize_ner, tokenize_qa, tokenize_translation, translate, translation_direction,
                           translation_metrics, translation_prompt)

SHIPPED = ("ner", "qa", "translation")
BUILDERS = {"ner": build_ner_splits, "qa": build_qa_splits, "translation": build_translation_splits}


@pytest.fixture(scope="module")
def bert_tokenizer(): return load_tokenizer("tiny-bert")


def tiny_bpe_tokenizer(texts, vocab_size=600, chat=False):
    "A byte-level BPE tokenizer trained on `texts`; `chat=True` adds a ChatML template whose end of turn is the eos token."
    bpe = Tokenizer(models.BPE()); bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False); bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat:
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        tok.eos_token = "<|im_end|>"
    return tok


@pytest.fixture(scope="module")
def lm_tokenizer():
    pairs = load_task("translation", split="train").select(range(200))["translation"]
    return tiny_bpe_tokenizer([p["en"] for p in pairs] + [p["zh"] for p in pairs])


def tiny_bert_config(tokenizer, **changes):
    return BertConfig(**{**dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), **changes})


# ------------------------------------------------------------------ task kinds and registration
def test_new_tasks_are_registered_on_demand_with_their_kinds():
    kinds = {name: get_task_spec(name).kind for name in ("ner", "conll2003", "qa", "squad", "translation", "tatoeba", "sentiment")}
    assert kinds == {"ner": "token-classification", "conll2003": "token-classification", "qa": "question-answering",
                     "squad": "question-answering", "translation": "translation", "tatoeba": "translation", "sentiment": "classification"}
    assert set(PLM_TASK_FOR_KIND) == set(TASK_KINDS)
    assert all(TASKS[n].loader is None for n in ("sentiment", "sst2", "imdb"))


def test_taskspec_rejects_an_unknown_kind_and_register_task_refuses_silent_replacement():
    with pytest.raises(ValueError, match="kind must be one of"): TaskSpec("x", (), kind="regression")
    with pytest.raises(ValueError, match="already registered"): register_task(TaskSpec("ner", ("O",)))
    assert get_task_spec("ner").labels == NER_LABELS


def test_classification_tasks_take_no_options_and_keep_their_behaviour():
    with pytest.raises(TypeError, match="takes no options"): load_task("sentiment", direction="en-zh")
    assert load_task("sentiment", split="challenge").num_rows == 270
    with pytest.raises(ValueError, match="known tasks: sentiment, sst2, imdb"): load_task("sst-5")


# ------------------------------------------------------------------ markup, IOB1/IOB2
def test_parse_markup():
    tokens, tags = parse_markup("[PER Maria Okafor] scored for [ORG Riverside United] in [LOC Lyon] .")
    assert tokens == ["Maria", "Okafor", "scored", "for", "Riverside", "United", "in", "Lyon", "."]
    assert tags == ["B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O"]
    assert parse_markup("[PER Anna] [PER Ben] met")[1] == ["B-PER", "B-PER", "O"]


@pytest.mark.parametrize("text, message", [("[PER Anna met Ben", "unbalanced"), ("[PER [LOC Rome] ]", "unbalanced"),
                                           ("[CITY Rome]", "unknown entity type 'CITY'"), ("x [PER ] y", "empty entity"),
                                           ("[LOC Kenya]'s", "separated from its neighbours"), ("   ", "no tokens")])
def test_parse_markup_errors_name_the_place(text, message):
    with pytest.raises(ValueError, match=f"f.jsonl, line 9: .*{message}"): parse_markup(text, where="f.jsonl, line 9")


@pytest.mark.parametrize("iob1, iob2", [
    (["I-PER", "I-PER", "O"], ["B-PER", "I-PER", "O"]),                   # an entity at sentence start
    (["I-ORG", "I-LOC"], ["B-ORG", "B-LOC"]),                             # adjacent entities of different types
    (["I-PER", "B-PER", "I-PER"], ["B-PER", "B-PER", "I-PER"]),           # IOB1's B- separates two same-type entities
    (["O", "I-MISC", "O", "I-MISC"], ["O", "B-MISC", "O", "B-MISC"]),
    (["B-PER", "I-PER", "O", "B-LOC", "I-LOC"], ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]),   # IOB2 unchanged
])
def test_to_iob2(iob1, iob2):
    assert to_iob2(iob1) == iob2
    assert to_iob2(iob2) == iob2


# ------------------------------------------------------------------ stratified splits
def test_stratified_split_is_seeded_complete_and_spreads_every_stratum():
    items = [f"{t}{k}" for t in "abcd" for k in range(25)]
    fractions = {"train": 0.8, "validation": 0.07, "test": 0.13}
    parts = stratified_split(items, [i[0] for i in items], fractions, seed=3)
    assert parts == stratified_split(items, [i[0] for i in items], fractions, seed=3)
    assert parts != stratified_split(items, [i[0] for i in items], fractions, seed=4)
    assert sorted(sum(parts.values(), [])) == sorted(items)
    assert {k: len(v) for k, v in parts.items()} == {"train": 80, "validation": 7, "test": 13}
    assert all({i[0] for i in part} == set("abcd") for name, part in parts.items() if name != "validation")
    with pytest.raises(ValueError, match="sum to 1"): stratified_split(items, items, {"a": 0.5})


# ------------------------------------------------------------------ the shipped splits
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_splits_match_their_manifest(name):
    manifest = json.loads((task_dir(name)/"manifest.json").read_text())
    for split, info in manifest["splits"].items():
        text = gzip.open(task_dir(name)/f"{split}.jsonl.gz").read().decode("utf-8")
        assert __import__("hashlib").sha256(text.encode("utf-8")).hexdigest() == info["sha256"], split


@pytest.mark.parametrize("name", SHIPPED)
def test_builders_reproduce_the_shipped_splits(name, tmp_path):
    src = source_dir(name)
    if not src.is_dir(): pytest.skip("not a repository checkout")
    shipped = json.loads((task_dir(name)/"manifest.json").read_text())
    current = {p.name: __import__("hashlib").sha256(p.read_bytes()).hexdigest() for p in sorted(src.glob("*.jsonl"))}
    if current != {k: v["sha256"] for k, v in shipped["sources"].items()}:
        pytest.skip(f"data/{name}/src changed since the splits were built: run build_task_assets(['{name}'])")
    assert BUILDERS[name](src, tmp_path, seed=shipped["seed"]) == shipped
    assert {p.name for p in tmp_path.iterdir()} == {p.name for p in task_dir(name).iterdir()}
    for p in tmp_path.iterdir(): assert p.read_bytes() == (task_dir(name)/p.name).read_bytes(), p.name


def test_ner_task_schema_split_by_document_and_unseen_names_unseen():
    ner = load_task("ner")
    assert list(ner) == ["train", "validation", "test", "challenge"]
    assert ner["train"].features["ner_tags"].feature == ClassLabel(names=list(NER_LABELS))
    docs = {s: set(ds["doc"]) for s, ds in ner.items()}
    assert not (docs["train"] & docs["validation"]) and not (docs["train"] & docs["test"]) and not (docs["validation"] & docs["test"])
    regular = sum(ner[s].num_rows for s in ("train", "validation", "test"))
    for split, fraction in {"train": 0.7, "validation": 0.1, "test": 0.2}.items():
        assert abs(ner[split].num_rows / regular - fraction) < 0.02
        assert len(set(ner[split]["topic"])) == 16
    assert set(ner["challenge"]["phenomenon"]) == {"unseen-names", "lowercase", "ambiguous", "long-org"}
    train_text = "\n".join(f" {' '.join(t)} " for t in ner["train"]["tokens"])
    unseen = ner["challenge"].filter(lambda r: r["phenomenon"] == "unseen-names")
    for tokens, tags in zip(unseen["tokens"], unseen["ner_tags"]):
        for start, tag in enumerate(tags):
            if NER_LABELS[tag].startswith("B-"):
                end = start + 1
                while end < len(tags) and NER_LABELS[tags[end]].startswith("I-"): end += 1
                assert f" {' '.join(tokens[start:end])} " not in train_text


def test_ner_builder_refuses_an_unseen_name_that_is_in_train(tmp_path):
    src = tmp_path/"src"; src.mkdir()
    lines = [{"doc": f"news-{d:03d}", "text": f"[PER Zorblax Quint] spoke in [LOC Town{d}] .", "hint": "regular", "phenomenon": None}
             for d in range(20)]
    (src/"news.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    (src/"challenge.jsonl").write_text(json.dumps({"doc": "challenge-001", "text": "[PER Zorblax Quint] left .", "hint": "challenge",
                                                   "phenomenon": "unseen-names"}) + "\n")
    with pytest.raises(ValueError, match="unseen-names entities that occur in train: Zorblax Quint"): build_ner_splits(src, tmp_path/"out")
    (src/"challenge.jsonl").write_text(json.dumps({"doc": "news-001", "text": "x .", "hint": "challenge", "phenomenon": "lowercase"}) + "\n")
    with pytest.raises(ValueError, match=r"news.jsonl, line 2: document 'news-001' is also in challenge.jsonl"): build_ner_splits(src, tmp_path/"out")


def test_qa_task_every_answer_is_at_its_offset_and_paragraphs_stay_whole():
    qa = load_task("qa")
    assert list(qa) == ["train", "validation", "test"]
    contexts = {s: set(ds["context"]) for s, ds in qa.items()}
    assert not (contexts["train"] & contexts["validation"]) and not (contexts["train"] & contexts["test"])
    ids = [i for ds in qa.values() for i in ds["id"]]
    assert len(ids) == len(set(ids))
    for ds in qa.values():
        assert {"id", "title", "context", "question", "answers", "paraphrase", "topic"} == set(ds.column_names)
        for r in ds:
            text, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
            assert r["context"][start:start + len(text)] == text
    total = sum(ds.num_rows for ds in qa.values())
    assert abs(qa["train"].num_rows / total - 0.8) < 0.03
    assert sum(qa["test"]["paraphrase"]) > 0


def test_qa_builder_names_a_misplaced_answer(tmp_path):
    (tmp_path/"a.jsonl").write_text(json.dumps({"title": "T", "context": "The cat sat.", "qas": [
        {"id": "a-1", "question": "Who?", "answer": "cat", "answer_start": 4, "paraphrase": False},
        {"id": "a-2", "question": "What?", "answer": "sat", "answer_start": 7, "paraphrase": False}]}) + "\n")
    with pytest.raises(ValueError, match=r"a.jsonl, line 1, question 'a-2': the answer 'sat' is not at answer_start 7"):
        build_qa_splits(tmp_path, tmp_path/"out")


def test_translation_task_directions_and_split_sizes():
    en_zh, zh_en = load_task("translation"), load_task("translation", direction="zh-en")
    sizes = {k: v.num_rows for k, v in en_zh.items()}
    assert sum(sizes.values()) == 3278
    assert sizes == {"train": 2622, "validation": 230, "test": 426}
    assert translation_direction(en_zh) == "en-zh" and translation_direction(zh_en["test"]) == "zh-en"
    row = zh_en["test"][0]
    assert (row["source"], row["target"]) == (row["translation"]["zh"], row["translation"]["en"])
    assert all(len(set(ds["topic"])) == 30 for ds in en_zh.values())
    assert not set(en_zh["train"]["source"]) & set(en_zh["test"]["source"])
    with pytest.raises(ValueError, match="direction must be one of"): load_task("translation", direction="zh-fr")


def test_own_formats_load_from_a_data_dir(tmp_path):
    build_translation_splits(source_dir("translation"), tmp_path, seed=1) if source_dir("translation").is_dir() else pytest.skip()
    assert load_task("translation", split="test", data_dir=tmp_path).num_rows == 426
    (tmp_path/"test.jsonl.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no test.jsonl.gz or test.jsonl"): load_task("translation", split="test", data_dir=tmp_path)


# ------------------------------------------------------------------ public formats from files
CONLL_IOB1 = ("-DOCSTART- -X- -X- O\n\n"
              "EU NNP I-NP I-ORG\nrejects VBZ I-VP O\nGerman JJ I-NP I-MISC\ncall NN I-NP O\n\n"
              "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n\n"
              "Bank NNP I-NP I-ORG\nLondon NNP I-NP I-LOC\nAnna NNP I-NP I-PER\nBen NNP I-NP B-PER\nJones NNP I-NP I-PER\n")


def test_read_conll_converts_iob1_and_skips_docstart(tmp_path):
    (tmp_path/"eng.train").write_text(CONLL_IOB1)
    sentences = read_conll(tmp_path/"eng.train")
    assert [t for t, _ in sentences] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"], ["Bank", "London", "Anna", "Ben", "Jones"]]
    assert [g for _, g in sentences] == [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"], ["B-ORG", "B-LOC", "B-PER", "B-PER", "I-PER"]]


def test_read_conll_reads_latin1_byte_order_marks_and_comments(tmp_path):
    # the original CoNLL-2002 files are Latin-1; some copies start with a UTF-8 byte-order mark; CoNLL-U style files have comments
    (tmp_path/"esp.train").write_bytes("-DOCSTART- O\n\nMéxico B-LOC\nganó O\n\n".encode("latin-1"))
    assert read_conll(tmp_path/"esp.train", columns=None) == [(["México", "ganó"], ["B-LOC", "O"])]
    (tmp_path/"eng.train").write_bytes(b"\xef\xbb\xbf" + CONLL_IOB1.encode("utf-8"))
    assert read_conll(tmp_path/"eng.train") == read_conll_text(tmp_path, CONLL_IOB1)
    (tmp_path/"multi.conll").write_text("# id 3f2a\tdomain=en\nParis _ _ B-LOC\n# _ _ O\n\n")
    assert read_conll(tmp_path/"multi.conll") == [(["Paris", "#"], ["B-LOC", "O"])]       # a "#" token with a tag stays


def read_conll_text(tmp_path, text):
    (tmp_path/"plain.txt").write_text(text, encoding="utf-8")
    return read_conll(tmp_path/"plain.txt")


def test_conll2003_folder_layouts_and_errors(tmp_path):
    (tmp_path/"train.txt").write_text(CONLL_IOB1)
    (tmp_path/"test.txt").write_text("Rome NNP I-NP B-LOC\n\n")
    data = load_task("conll2003", data_dir=tmp_path)
    assert list(data) == ["train", "test"]
    assert data["test"][0] == {"tokens": ["Rome"], "ner_tags": [NER_LABELS.index("B-LOC")]}
    with pytest.raises(FileNotFoundError, match="no eng.testa or valid.txt or dev.txt"): load_task("conll2003", split="validation", data_dir=tmp_path)
    (tmp_path/"dev.txt").write_text("Oslo NNP I-NP I-LOC\n")
    assert list(load_task("conll2003", split="validation", data_dir=tmp_path)["ner_tags"]) == [[NER_LABELS.index("B-LOC")]]
    (tmp_path/"dev.txt").unlink()
    (tmp_path/"test.txt").write_text("Rome NNP I-NP B-LOC\nfell VBD\n")
    with pytest.raises(ValueError, match=r"test.txt, line 2: expected 4 space-separated columns"): load_task("conll2003", data_dir=tmp_path)
    (tmp_path/"test.txt").write_text("Rome NNP I-NP X-LOC\n")
    with pytest.raises(ValueError, match=r"test.txt, line 1: NER tag 'X-LOC'"): load_task("conll2003", data_dir=tmp_path)
    empty = tmp_path/"empty"; empty.mkdir()
    with pytest.raises(FileNotFoundError, match="none of the files of 'conll2003' \\(eng.train, train.txt, eng.testa"):
        load_task("conll2003", data_dir=empty)
    with pytest.raises(FileNotFoundError, match="reads files you have"): load_task("conll2003")


def squad_file(answer_start=31):
    return {"version": "1.1", "data": [{"title": "Normans", "paragraphs": [
        {"context": "The Normans gave their name to Normandy, a region in France.",
         "qas": [{"id": "q1", "question": "What region?", "answers": [{"text": "Normandy", "answer_start": answer_start},
                                                                      {"text": "Normandy", "answer_start": 31}]},
                 {"id": "q2", "question": "Which country?", "answers": [{"text": "France", "answer_start": 53}]}]}]}]}


def test_squad_reader(tmp_path):
    (tmp_path/"train-v1.1.json").write_text(json.dumps(squad_file()))
    (tmp_path/"dev-v1.1.json").write_text(json.dumps(squad_file()))
    data = load_task("squad", data_dir=tmp_path)
    assert list(data) == ["train", "validation"] and data["train"].num_rows == 2
    assert data["validation"][0]["answers"] == {"text": ["Normandy", "Normandy"], "answer_start": [31, 31]}
    assert read_squad_json(tmp_path/"dev-v1.1.json")[1]["id"] == "q2"
    (tmp_path/"dev-v1.1.json").write_text(json.dumps(squad_file(answer_start=32)))
    with pytest.raises(ValueError, match=r"paragraph 0, question 'q1': the answer 'Normandy' is not at answer_start 32"):
        load_task("squad", split="validation", data_dir=tmp_path)
    (tmp_path/"dev-v1.1.json").write_text('{"data":\n\n [}')
    with pytest.raises(ValueError, match=r"dev-v1.1.json, line 3: not valid JSON"): load_task("squad", split="validation", data_dir=tmp_path)
    (tmp_path/"empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"none of the files of 'squad' \(train-v1.1.json, dev-v1.1.json\)"):
        load_task("squad", data_dir=tmp_path/"empty")


def test_tatoeba_reader_split_and_errors(tmp_path):
    lines = [f"Sentence {i}.\t第{i}句。\tCC-BY 2.0 (France) Attribution: tatoeba.org #{i}" for i in range(200)]
    lines += ["Sentence 7.\t第七句。"]                                        # a second translation, no attribution
    (tmp_path/"cmn.txt").write_text("\n".join(lines) + "\n")
    assert read_tatoeba(tmp_path/"cmn.txt")[-1] == ("Sentence 7.", "第七句。", "")
    data = load_task("tatoeba", data_dir=tmp_path)
    assert sum(ds.num_rows for ds in data.values()) == 201
    assert abs(data["train"].num_rows - 161) <= 1
    where = [s for s, ds in data.items() for r in ds if r["translation"]["en"] == "Sentence 7."]
    assert len(where) == 2 and len(set(where)) == 1
    again = load_task("tatoeba", data_dir=tmp_path, direction="zh-en")
    assert again["test"]["target"] == data["test"]["source"] and translation_direction(again) == "zh-en"
    assert load_task("tatoeba", data_dir=tmp_path, seed=1)["test"]["source"] != data["test"]["source"]
    (tmp_path/"cmn.txt").write_text("Hi.\t你好。\nno tab here\n")
    with pytest.raises(ValueError, match=r"cmn.txt, line 2: expected 2 or 3 tab-separated fields"): load_task("tatoeba", data_dir=tmp_path)


# ------------------------------------------------------------------ metrics
def test_ner_metrics_are_seqeval_strict():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "B-MISC"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "I-ORG", "O", "B-MISC"]]
    m = ner_metrics(gold, pred)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx(f1_score(gold, pred, mode="strict", scheme=IOB2))
    assert (m["f1_PER"], m["f1_LOC"], m["f1_ORG"], m["f1_MISC"]) == (1.0, 0.0, 0.0, 1.0)
    assert ner_metrics(gold, gold)["f1"] == 1.0
    with pytest.raises(ValueError, match="sentence 0: 4 reference tags but 3"): ner_metrics(gold, [p[:3] for p in pred])


def test_aligned_tags_keep_first_subtokens_only():
    refs, preds = aligned_tags(np.array([[0, 1, 1, 2, 0]]), np.array([[-100, 1, -100, 2, -100]]))
    assert refs == [["B-PER", "I-PER"]] and preds == [["B-PER", "I-PER"]]


@pytest.mark.parametrize("text, normal", [("The Eiffel Tower!", "eiffel tower"), ("  an  apple,   a pear ", "apple pear"),
                                          ("Theatre of the Absurd", "theatre of absurd"), ("U.S.A.", "usa"), ("A", "")])
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_squad_em_and_f1_hand_worked():
    assert squad_exact_match("the Louvre.", ["Louvre"]) == 1.0
    assert squad_exact_match("Louvre museum", ["Louvre", "the museum"]) == 0.0
    assert squad_f1("the Louvre in Paris", ["Louvre"]) == pytest.approx(0.5)        # P = 1/3, R = 1 -> 2PR/(P+R) = 0.5
    assert squad_f1("in Paris", ["the Louvre in Paris"]) == pytest.approx(0.8)      # P = 1, R = 2/3
    assert squad_f1("in Paris", ["Paris", "the Louvre in Paris"]) == pytest.approx(0.8)   # max over golds
    assert squad_f1("Paris Paris", ["Paris"]) == pytest.approx(2 / 3)               # bag of words: P = 1/2, R = 1
    assert squad_f1("a", ["the"]) == 0.0
    assert squad_metrics(["Louvre", "in Paris"], [["the Louvre"], {"text": ["Paris"], "answer_start": [3]}]) == \
        pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})


def test_translation_metrics_use_sacrebleu_with_zh_tokenizer():
    hyp, ref = ["我今天在家里办公。", "会议取消了。"], ["我今天在家办公。", "会议推迟了。"]
    m = translation_metrics(hyp, ref)
    assert m["bleu"] == pytest.approx(BLEU(tokenize="zh").corpus_score(hyp, [ref]).score)
    assert 0 < m["bleu"] < 100 and 0 < m["chrf"] < 100
    assert translation_metrics(ref, ref)["bleu"] == pytest.approx(100)
    assert translation_metrics(["The meeting was put off."], ["The meeting has been postponed."], target="en")["bleu"] == \
        pytest.approx(BLEU().corpus_score(["The meeting was put off."], [["The meeting has been postponed."]]).score)
    with pytest.raises(ValueError, match="target must be one of"): translation_metrics(hyp, ref, target="fr")


# ------------------------------------------------------------------ tokenisation
def test_align_labels():
    assert align_labels([None, 0, 0, 1, None, None], [3, 0]) == [-100, 3, -100, 0, -100, -100]


def test_tokenize_ner_puts_one_label_per_word(bert_tokenizer):
    ner = load_task("ner", split="validation").select(range(20))
    tokenized = tokenize_ner(ner, bert_tokenizer, max_length=128)
    for row, tok in zip(ner, tokenized):
        assert [l for l in tok["labels"] if l != -100] == row["ner_tags"]
        assert len(tok["labels"]) == len(tok["input_ids"]) and tok["labels"][0] == -100
    assert max(len(t) for t in tokenize_ner(ner, bert_tokenizer, max_length=8)["input_ids"]) == 8


def test_encode_qa_windows_and_positions(bert_tokenizer):
    context = " ".join(f"word{i}" for i in range(60)) + " The answer is Ulaanbaatar today."
    start = context.index("Ulaanbaatar")
    answers = [{"text": ["Ulaanbaatar"], "answer_start": [start]}]
    f = encode_qa(bert_tokenizer, ["Where is it?"], [context], ids=["x"], answers=answers, max_length=40, stride=10)
    assert len(f["input_ids"]) > 2 and set(f["example_id"]) == {"x"}
    hits = [i for i, s in enumerate(f["start_positions"]) if s != 0]
    assert hits and all(f["start_positions"][i] == 0 == f["end_positions"][i] for i in range(len(f["input_ids"])) if i not in hits)
    for i in hits:
        a, b = f["offset_mapping"][i][f["start_positions"][i]][0], f["offset_mapping"][i][f["end_positions"][i]][1]
        assert context[a:b] == "Ulaanbaatar"
    for i, ids in enumerate(f["input_ids"]):        # offsets only inside the context
        sep = ids.index(bert_tokenizer.sep_token_id)
        assert all(o is None for o in f["offset_mapping"][i][:sep + 1]) and f["offset_mapping"][i][-1] is None


def test_tokenize_qa_on_the_shipped_data(bert_tokenizer):
    qa = load_task("qa", split="validation").select(range(5))
    windows = tokenize_qa(qa, bert_tokenizer, max_length=64, stride=16)
    assert set(windows["example_id"]) == set(qa["id"])
    assert {"start_positions", "end_positions", "offset_mapping", "input_ids"} <= set(windows.column_names)
    by_id = {r["id"]: r for r in qa}
    for w in windows:
        if w["start_positions"] == 0: continue
        r = by_id[w["example_id"]]
        a, b = w["offset_mapping"][w["start_positions"]][0], w["offset_mapping"][w["end_positions"]][1]
        assert r["context"][a:b].lower() == r["answers"]["text"][0].lower()


def test_translation_prompt_and_labels(lm_tokenizer):
    assert translation_prompt("Hi.", "en-zh") == "Translate English to Chinese:\nHi.\n"
    assert translation_prompt("你好。", "zh-en") == "Translate Chinese to English:\n你好。\n"
    ex = encode_translation(lm_tokenizer, "Good morning.", "早上好。")
    n = sum(l == -100 for l in ex["labels"])
    assert ex["input_ids"][:n] == lm_tokenizer("Translate English to Chinese:\nGood morning.\n")["input_ids"]
    assert ex["labels"][n:] == ex["input_ids"][n:] and ex["labels"][-1] == lm_tokenizer.eos_token_id
    assert lm_tokenizer.decode(ex["labels"][n:], skip_special_tokens=True) == "早上好。"
    assert encode_translation(lm_tokenizer, "Good morning.") == {k: ex[k][:n] for k in ("input_ids", "attention_mask")}
    with pytest.raises(ValueError, match="not fewer than max_length"): encode_translation(lm_tokenizer, "Good morning.", "早上好。", max_length=4)


def test_translation_with_a_chat_template():
    pairs = load_task("translation", split="train").select(range(100))["translation"]
    tok = tiny_bpe_tokenizer([p["en"] for p in pairs] + [p["zh"] for p in pairs], chat=True)
    prompt = translation_prompt("Hi.", "en-zh", tok)
    assert prompt == "<|im_start|>user\nTranslate English to Chinese:\nHi.<|im_end|>\n<|im_start|>assistant\n"
    ex = encode_translation(tok, "Hi.", "你好。")
    assert tok.decode([t for t in ex["labels"] if t != -100]) == "你好。<|im_end|>"
    assert tok.decode([t for t, l in zip(ex["input_ids"], ex["labels"]) if l == -100]) == prompt


def test_tokenize_translation_uses_the_loaded_direction(lm_tokenizer):
    data = load_task("translation", split="validation", direction="zh-en").select(range(3))
    tokenized = tokenize_translation(data, lm_tokenizer, max_length=96)
    assert tokenized.column_names == ["input_ids", "attention_mask", "labels"]
    for row, tok in zip(data, tokenized):
        target = lm_tokenizer.decode([t for t in tok["labels"] if t != -100], skip_special_tokens=True)
        assert target == row["translation"]["en"]


# ------------------------------------------------------------------ inference on tiny random models
def test_extract_entities_offsets_lie_in_the_text(bert_tokenizer):
    set_seed(0)
    model = BertForTokenClassification(tiny_bert_config(bert_tokenizer, num_labels=9, id2label=dict(enumerate(NER_LABELS)),
                                                        label2id={n: i for i, n in enumerate(NER_LABELS)})).eval()
    with torch.no_grad():            # bias the head towards B-PER / I-PER so that there are entities to check
        model.classifier.bias.zero_(); model.classifier.bias[1] = 3.0
    texts = ["Maria Okafor scored twice for Riverside United in Lyon.", "Nothing here", "Halvorsen's shares fell 9%."]
    out = extract_entities(model, bert_tokenizer, texts, batch_size=2)
    assert len(out) == 3 and sum(map(len, out)) > 0
    for text, entities in zip(texts, out):
        for e in entities:
            assert set(e) == {"type", "start", "end", "text", "score"}
            assert 0 <= e["start"] < e["end"] <= len(text) and e["text"] == text[e["start"]:e["end"]] and e["text"] == e["text"].strip()
            assert e["type"] in NER_TYPES and 0 < e["score"] <= 1
    assert extract_entities(model, bert_tokenizer, texts[0]) == out[0]
    assert not model.training


def test_qa_predictions_pick_the_best_legal_span():
    features = {"example_id": ["a", "a", "b"], "offset_mapping": [[None, (0, 3), (4, 7)], [None, (4, 7), (8, 11)], [None, None, (0, 2)]]}
    starts = [[9, 1, 0], [0, 2, 1], [5, 5, 1]]
    ends = [[9, 0, 1], [0, 1, 3], [5, 5, 1]]
    best = qa_predictions(features, starts, ends, {"a": "The big cat", "b": "Hi", "c": "unseen"})
    assert best["a"] == {"text": "big cat", "start": 4, "end": 11, "score": 5.0}
    assert best["b"]["text"] == "Hi"
    assert best["c"]["text"] == ""
    assert qa_predictions(features, starts, ends, {"a": "The big cat"}, max_answer_length=1)["a"]["text"] == "cat"


def test_answer_returns_substrings_of_the_context(bert_tokenizer):
    set_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(bert_tokenizer)).eval()
    qa = load_task("qa", split="test").select(range(4))
    out = answer(model, bert_tokenizer, qa["question"], qa["context"], max_length=64, stride=16, max_answer_length=5, batch_size=3)
    assert len(out) == 4
    for a, context in zip(out, qa["context"]):
        assert a["answer"] and a["answer"] == context[a["start"]:a["end"]]
        assert len(bert_tokenizer.tokenize(a["answer"])) <= 5 and np.isfinite(a["score"])
    assert answer(model, bert_tokenizer, qa["question"][1], qa["context"][1], max_length=64, stride=16, max_answer_length=5) == out[1]
    with pytest.raises(ValueError, match="2 questions but 1 contexts"): answer(model, bert_tokenizer, ["a", "b"], ["c"])


def test_translate_generates_strings_and_batching_changes_nothing(lm_tokenizer):
    set_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(lm_tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=lm_tokenizer.eos_token_id, eos_token_id=lm_tokenizer.eos_token_id)).eval()
    sources = ["The meeting has been postponed.", "Hi.", "Call an ambulance right now, please!"]
    out = translate(model, lm_tokenizer, sources, max_new_tokens=6, batch_size=3)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert [translate(model, lm_tokenizer, s, max_new_tokens=6) for s in sources] == out
    beams = translate(model, lm_tokenizer, ["会议推迟了。"], direction="zh-en", max_new_tokens=6, num_beams=3)
    assert len(beams) == 1 and isinstance(beams[0], str)
    # the generated ids continue the prompt: decoding the first step by hand gives the same first token
    prompt = torch.tensor([encode_translation(lm_tokenizer, sources[1])["input_ids"]])
    with torch.no_grad(): first = model(prompt).logits[0, -1].argmax().item()
    generated = model.generate(prompt, max_new_tokens=1, do_sample=False, pad_token_id=lm_tokenizer.pad_token_id)
    assert generated[0, -1].item() == first
    with pytest.raises(ValueError, match="direction must be one of"): translate(model, lm_tokenizer, "x", direction="en-fr")


def test_to_iob2_reads_iobes():
    assert to_iob2(["S-PER", "O", "B-ORG", "I-ORG", "E-ORG", "S-LOC", "S-LOC"]) == ["B-PER", "O", "B-ORG", "I-ORG", "I-ORG", "B-LOC", "B-LOC"]
    with pytest.raises(ValueError, match="'X-PER' is not a tag"): to_iob2(["X-PER"])


def test_any_conll_format_with_its_own_entity_types(tmp_path):
    from lightft.tasks import split_of
    assert [split_of(n) for n in ("eng.testa", "esp.testb", "wnut17train.conll", "emerging.dev.conll", "test.txt", "README")] == \
           ["validation", "test", "train", "validation", "test", None]
    (tmp_path / "wnut17train.conll").write_text("@paul\tB-person\nwent\tO\nto\tO\nNew\tB-location\nYork\tI-location\n\n"
                                                "Star\tB-creative-work\nWars\tI-creative-work\n\n")
    (tmp_path / "emerging.dev.conll").write_text("-DOCSTART-\tO\n\nParis\tS-location\nHilton\tO\n")          # IOBES too
    (tmp_path / "notes.md").write_text("not data")
    data = load_task("conll", data_dir=tmp_path)
    assert list(data) == ["train", "validation"]
    names = data["train"].features["ner_tags"].feature.names
    assert names == ["O", "B-creative-work", "I-creative-work", "B-location", "I-location", "B-person", "I-person"]
    assert [[names[i] for i in s] for s in data["train"]["ner_tags"]] == [["B-person", "O", "O", "B-location", "I-location"],
                                                                          ["B-creative-work", "I-creative-work"]]
    assert [[names[i] for i in s] for s in data["validation"]["ner_tags"]] == [["B-location", "O"]]
    (tmp_path / "train.txt").write_text("a O\n")
    with pytest.raises(ValueError, match="2 files look like the 'train' split"): load_task("conll", data_dir=tmp_path)
    (tmp_path / "train.txt").unlink()
    (tmp_path / "emerging.dev.conll").write_text("Paris\tB_location\n")
    with pytest.raises(ValueError, match="emerging.dev.conll, line 1: NER tag 'B_location'"): load_task("conll", data_dir=tmp_path)
    empty = tmp_path / "empty"; empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no file whose name has train"): load_task("conll", data_dir=empty)


def test_parallel_text_files(tmp_path):
    from lightft.tasks import read_parallel
    (tmp_path / "train.en").write_text("Good morning.\nThank you.\n\nSee you.\n")
    (tmp_path / "train.zh").write_text("早上好。\n谢谢。\n\n再见。\n")
    (tmp_path / "newstest.en").write_text("It rains.\n"); (tmp_path / "newstest.zh").write_text("下雨了。\n")
    assert read_parallel(tmp_path / "train.en", tmp_path / "train.zh") == [("Good morning.", "早上好。"), ("Thank you.", "谢谢。"), ("See you.", "再见。")]
    data = load_task("parallel", data_dir=tmp_path, direction="zh-en")
    assert list(data) == ["train", "test"] and data["test"][0]["source"] == "下雨了。" and translation_direction(data) == "zh-en"
    (tmp_path / "newstest.zh").write_text("下雨了。\n多余的一行。\n")
    with pytest.raises(ValueError, match="newstest.en has 1 lines but .*newstest.zh has 2"): load_task("parallel", data_dir=tmp_path)
    one = tmp_path / "one"; one.mkdir()
    (one / "corpus.en").write_text("".join(f"Sentence {i}.\n" for i in range(100)))
    (one / "corpus.zh").write_text("".join(f"第{i}句。\n" for i in range(100)))
    drawn = load_task("parallel", data_dir=one)
    assert {k: v.num_rows for k, v in drawn.items()} == {"train": 80, "validation": 7, "test": 13}
    empty = tmp_path / "empty"; empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no pair of line-aligned files"): load_task("parallel", data_dir=empty)


def test_parallel_suffix_variants_tsv_and_errors(tmp_path):
    from lightft.tasks import read_parallel_tsv
    opus = tmp_path / "opus"; opus.mkdir()                    # OPUS's Moses files: zh_CN or cmn, any case
    (opus / "Tatoeba.en-zh_CN.en").write_text("".join(f"Line {i}.\n" for i in range(50)))
    (opus / "Tatoeba.en-zh_CN.zh_CN").write_text("".join(f"第{i}行。\n" for i in range(50)))
    drawn = load_task("parallel", data_dir=opus, direction="zh-en")
    assert sum(v.num_rows for v in drawn.values()) == 50 and drawn["train"][0]["source"].startswith("第")
    wmt = tmp_path / "wmt"; wmt.mkdir()                       # news-commentary's TSV; either column order; empty sides skipped
    (wmt / "train.tsv").write_text("Hello.\t你好。\nThanks.\t\n\nGood night.\t晚安。\n")
    (wmt / "test.tsv").write_text("下雨了。\tIt rains.\n")
    assert read_parallel_tsv(wmt / "train.tsv") == [("Hello.", "你好。"), ("Good night.", "晚安。")]
    data = load_task("parallel", data_dir=wmt)
    assert list(data) == ["train", "test"] and (data["test"][0]["source"], data["test"][0]["target"]) == ("It rains.", "下雨了。")
    (wmt / "test.tsv").write_text("It rains.\tIt pours.\n")
    with pytest.raises(ValueError, match="cannot tell the Chinese column"): load_task("parallel", data_dir=wmt)
    (wmt / "test.tsv").write_text("It rains.\t下雨了。\textra\n")
    with pytest.raises(ValueError, match=r"test.tsv, line 1: expected 2 tab-separated fields"): load_task("parallel", data_dir=wmt)
    (wmt / "test.tsv").write_bytes("caf\xe9\t咖啡\n".encode("latin-1", errors="ignore"))
    with pytest.raises(ValueError, match="not UTF-8"): load_task("parallel", data_dir=wmt)
    (wmt / "test.tsv").write_text("It rains.\t下雨了。\n"); (wmt / "newstest.en").write_text("Hi.\n"); (wmt / "newstest.zh").write_text("嗨。\n")
    with pytest.raises(ValueError, match="2 corpora look like the 'test' split"): load_task("parallel", data_dir=wmt)


def test_parallel_lines_are_newlines_only(tmp_path):
    from lightft.tasks import read_parallel
    (tmp_path / "a.en").write_text("One\u2028still one.\r\nTwo.")   # U+2028 inside a sentence; CRLF; no final newline
    (tmp_path / "a.zh").write_text("一\u2028仍是一。\n二。\n")
    assert read_parallel(tmp_path / "a.en", tmp_path / "a.zh") == [("One\u2028still one.", "一\u2028仍是一。"), ("Two.", "二。")]
