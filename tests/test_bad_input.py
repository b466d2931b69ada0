"""Bad input refused at the boundary: one clear line, before any work, never a traceback or a silent result.

One parametrised test per module; the table with the behaviour of every item is in chapter 5a (nbs/05a_methods.ipynb)."""
import json
import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, ClassLabel, Features, Value
from transformers import BertConfig, BertForSequenceClassification

from lightft.core import set_seed
from lightft.data import get_task_spec, read_glue_tsv, load_task
from lightft.methods import apply_method, save_trainable, load_trainable
from lightft.train import fit, predict
from lightft.models import load_plm
from lightft.adapters import add_adapters
from lightft.prompting import Verbalizer, icl_scores
from lightft.cli import main
from tiny_models import tiny_bert_config


def tiny(num_labels=2):
    set_seed(0)
    return BertForSequenceClassification(tiny_bert_config(num_labels=num_labels))


class WordTokenizer:
    "Just enough of a tokenizer for `fit`/`predict` on the tiny model: words -> ids."
    pad_token_id, padding_side, pad_token_type_id, unk_token_id, unk_token = 0, "right", 0, 1, "[UNK]"
    vocab = {"[PAD]": 0, "[UNK]": 1, "good": 2, "bad": 3, "film": 4, "the": 5}
    def __call__(self, texts, truncation=True, max_length=128, add_special_tokens=True, **kw):
        one = isinstance(texts, str)
        ids = [[self.vocab.get(w, 1) for w in t.split()][:max_length] for t in ([texts] if one else texts)]
        out = {"input_ids": ids, "attention_mask": [[1] * len(i) for i in ids]}
        return {k: v[0] for k, v in out.items()} if one else out


def data(labels=(0, 1, 0, 1)):
    feats = Features({"text": Value("string"), "label": ClassLabel(num_classes=max(2, max(labels) + 1))})
    split = Dataset.from_dict({"text": ["good film", "bad film", "the good", "the bad"], "label": list(labels)}, features=feats)
    return DatasetDict(train=split, validation=split)


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs must be a whole number >= 1"),
    (dict(epochs=-1), "epochs must be a whole number >= 1"),
    (dict(max_length=0), "max_length must be a whole number >= 2"),
    (dict(batch_size=0), "batch_size must be a whole number >= 1"),
    (dict(lr=0), "lr must be a number > 0"),
    (dict(lr="1e-3"), "lr must be a number > 0"),
])
def test_fit_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match): fit(tiny(), WordTokenizer(), data(), progress=False, **kwargs)


def test_fit_refuses_labels_outside_the_heads_range():
    with pytest.raises(ValueError, match=r"labels from 0 to 2, but the model has 2 outputs"):
        fit(tiny(num_labels=2), WordTokenizer(), data((0, 1, 2, 1)), progress=False, eval_split=None)


def test_predict_on_nothing_is_empty():
    ids = predict(tiny(), WordTokenizer(), [])
    assert ids.shape == (0,) and list(ids) == []
    ids, probs = predict(tiny(), WordTokenizer(), [], return_probs=True)
    assert probs.shape == (0, 2)


@pytest.mark.parametrize("kwargs,match", [(dict(num_labels=0), "num_labels must be a whole number >= 1"),
                                          (dict(num_labels="2"), "num_labels must be a whole number >= 1"),
                                          (dict(label_names=[]), "label_names must be a non-empty list")])
def test_load_plm_refuses_bad_heads(kwargs, match):
    with pytest.raises(ValueError, match=match): load_plm("tiny-bert", **kwargs)


@pytest.mark.parametrize("overrides,match", [(dict(reduction_factor=-4), "reduction_factor must be a number > 0"),
                                             (dict(reduction_factor=0), "reduction_factor must be a number > 0"),
                                             (dict(reduction_factor="16"), "reduction_factor must be a number > 0")])
def test_add_adapters_refuses_bad_sizes_and_leaves_the_model(overrides, match):
    model = tiny()
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=match): add_adapters(model, "houlsby", **overrides)
    assert list(model.state_dict()) == keys


def test_glue_folder_with_only_a_header(tmp_path):
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n")
    (tmp_path / "dev.tsv").write_text("sentence\tlabel\nnice\t1\n")
    with pytest.raises(ValueError, match="only a header line, no examples"): load_task("sst2", data_dir=tmp_path)


def test_sst2_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1"); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match="not on this machine"): load_task("sst2")


@pytest.mark.parametrize("words,match", [(("bad", ""), "non-empty string"), (("bad",), "at least 2 labels")])
def test_verbalizer_refuses_empty_words(words, match):
    with pytest.raises(ValueError, match=match): Verbalizer(words)


def test_verbalizer_refuses_words_that_become_unk():
    with pytest.raises(ValueError, match="'zzz' becomes \\[UNK\\]"): Verbalizer(("bad", "zzz")).pieces(WordTokenizer())


def test_icl_scores_needs_label_words():
    with pytest.raises(ValueError, match="label_words must be at least 2"): icl_scores(None, None, ["a text"], [])


def test_checkpoint_path_that_is_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"): load_trainable(tiny(), tmp_path)
    with pytest.raises(IsADirectoryError, match="is a folder"): save_trainable(apply_method(tiny(), "bitfit"), tmp_path)


@pytest.mark.parametrize("argv,code,text", [
    (["compare", "--epochs", "0"], 2, "must be at least 1"),
    (["compare", "--epochs", "-1"], 2, "must be at least 1"),
    (["compare", "--methods", ","], 1, "names no method"),
    (["compare", "--methods", "full,top99", "--model", "tiny-bert"], 1, "top-k with k=99"),
    (["compare", "--model", "nope"], 1, "unknown model 'nope'"),
    (["compare", "--task", "sst2", "--methods", "head", "--model", "tiny-bert"], 1, "not on this machine"),
    (["pretrain", "--steps", "0"], 2, "must be at least 1"),
])
def test_cli_errors_are_one_line(argv, code, text, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1"); monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = argv + (["--out", str(tmp_path / "out")] if argv[0] == "compare" else [])
    try: got = main(argv)
    except SystemExit as e: got = e.code
    err = capsys.readouterr().err
    assert got == code and text in err and err.count("\n") == 1, err


def test_cli_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["compare", "--out", str(tmp_path / "f")]) == 1
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("argv,code,text", [
    (["compare", "--option", "lora.r=0", "--methods", "lora"], 1, "r must be a whole number >= 1"),
    (["compare", "--option", "lora", "--methods", "lora"], 1, "write method.key=value"),
    (["compare", "--option", "lora.r=4", "--methods", "full"], 1, "not among the methods"),
    (["compare", "--seeds", "0,x"], 2, "not a comma-separated list"),
    (["compare", "--lr", "-1"], 2, "must be > 0"),
    (["compare", "--precision", "fp16", "--device", "cpu"], 1, "fp16 needs a CUDA device"),
    (["compare", "--grad-accum", "3"], 1, "must divide batch_size=32"),
    (["compare", "--device", "warp-drive"], 1, "not a device name"),
])
def test_cli_settings_are_checked_before_training(argv, code, text, tmp_path, capsys):
    try: got = main(argv + ["--out", str(tmp_path / "out")])
    except SystemExit as e: got = e.code
    err = capsys.readouterr().err
    assert got == code and text in err and err.count("\n") == 1, err
