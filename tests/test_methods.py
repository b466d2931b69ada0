"Every registered method through the same checks (peft's one-table-of-methods pattern)."
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from lightft.core import set_seed
from lightft.methods import (METHODS, apply_method, get_method, save_trainable, load_trainable, load_plugins, remove_method,
                             current_method)
from lightft.freeze import model_parts

CONFIG = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                    max_position_embeddings=24, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
NAMES = [n if n != "top-k" else "top2" for n in load_plugins()]   # every registered method, later chapters included


def base_model(seed=0):
    set_seed(seed)
    return BertForSequenceClassification(CONFIG)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (4, 10), generator=g)
    mask = torch.ones_like(ids); mask[0, 7:] = 0
    return dict(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1, 0]))


def train_step(model, steps=2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        model(**batch()).loss.backward(); opt.step(); opt.zero_grad()
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_only_the_methods_parameters_change(name):
    model = apply_method(base_model(), name)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{name} trains nothing"
    train_step(model)
    for n, p in model.named_parameters():
        if n in trainable: assert not torch.equal(p, before[n]), f"{name}: trainable {n} did not change"
        else: assert torch.equal(p, before[n]), f"{name}: frozen {n} changed"


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    model = train_step(apply_method(base_model(), name))
    size = save_trainable(model, tmp_path / "ckpt.safetensors")
    assert size == (tmp_path / "ckpt.safetensors").stat().st_size
    restored = load_trainable(base_model(), tmp_path / "ckpt.safetensors").eval()
    x = {k: v for k, v in batch(2).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**x).logits, restored(**x).logits)
        assert not torch.equal(base_model().eval()(**x).logits, restored(**x).logits)


@pytest.mark.parametrize("name", NAMES)
def test_loading_onto_a_different_base_fails(name, tmp_path):
    model = train_step(apply_method(base_model(), name))
    save_trainable(model, tmp_path / "ckpt.safetensors")
    with pytest.raises(ValueError, match="different base model"):
        load_trainable(base_model(seed=7), tmp_path / "ckpt.safetensors")


def test_checkpoint_sizes_follow_trainable_parameters(tmp_path):
    sizes = {n: save_trainable(train_step(apply_method(base_model(), n)), tmp_path / f"{n}.safetensors") for n in ("full", "bitfit", "head")}
    assert sizes["head"] < sizes["bitfit"] < sizes["full"]


def test_unknown_method_lists_known_ones():
    with pytest.raises(KeyError, match="known methods: full, head"):
        apply_method(base_model(), "nope")


def test_top_k_names():
    assert get_method("top3")[1] == {"k": 3}
    with pytest.raises(ValueError, match="3 encoder layers"):
        apply_method(base_model(), "top4")


def test_method_mismatch_is_refused(tmp_path):
    save_trainable(train_step(apply_method(base_model(), "bitfit")), tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="holds method 'bitfit'"):
        load_trainable(apply_method(base_model(), "head"), tmp_path / "b.safetensors")


def test_non_transformers_model_fails_clearly():
    with pytest.raises(TypeError, match="base_model"):
        apply_method(torch.nn.Linear(3, 3), "head")


def _hooks(model):
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())


def _same_as_base(model, reference):
    "Bit for bit the base model: the same modules, the same state_dict, every parameter trainable, no hooks, no lightft_* attribute."
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in reference.named_modules()]
    state, ref = model.state_dict(), reference.state_dict()
    assert list(state) == list(ref)
    assert all(torch.equal(state[k], ref[k]) for k in ref)
    assert all(p.requires_grad for p in model.parameters())
    assert _hooks(model) == _hooks(reference) == 0
    assert [a for a in vars(model) if a.startswith("lightft_")] == []


@pytest.mark.parametrize("name", NAMES)
def test_apply_then_remove_gives_the_base_back(name):
    model = apply_method(base_model(), name)
    assert current_method(model) == name
    _same_as_base(remove_method(model), base_model())


@pytest.mark.parametrize("name", NAMES)
def test_remove_restores_the_outputs(name):
    x = {k: v for k, v in batch(3).items() if k != "labels"}
    model = apply_method(base_model().eval(), name)
    remove_method(model)
    with torch.no_grad(): assert torch.equal(model.eval()(**x).logits, base_model().eval()(**x).logits)


@pytest.mark.parametrize("first,second", [(a, b) for a in NAMES for b in NAMES if a != b][::7] + [("lora", "houlsby"), ("prompt", "prefix")])
def test_a_second_method_is_refused_unless_replace(first, second):
    model = apply_method(base_model(), first)
    with pytest.raises(ValueError, match=f"already has the method '{first}'"):
        apply_method(model, second)
    assert current_method(model) == first                       # the refusal changed nothing
    apply_method(model, second, replace=True)
    only = apply_method(base_model(), second)
    assert current_method(model) == second
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [n for n, p in only.named_parameters() if p.requires_grad]
    assert [(n, type(m)) for n, m in model.named_modules()] == [(n, type(m)) for n, m in only.named_modules()]
    _same_as_base(remove_method(model), base_model())


@pytest.mark.parametrize("name", NAMES)
def test_the_head_is_the_task_head_only(name):
    model = apply_method(base_model(), name)
    assert list(model_parts(model)["head"]) == ["dropout", "classifier"]


@pytest.mark.parametrize("name", NAMES)
def test_a_refused_checkpoint_leaves_the_model_untouched(name, tmp_path):
    save_trainable(train_step(apply_method(base_model(), name)), tmp_path / "c.safetensors")
    other = base_model(seed=7)
    with pytest.raises(ValueError, match="different base model"):
        load_trainable(other, tmp_path / "c.safetensors")
    _same_as_base(other, base_model(seed=7))


def test_a_checkpoint_with_other_parameter_names_is_refused_and_rolled_back(tmp_path):
    from safetensors.torch import save_file
    import json
    from lightft.methods import base_fingerprint, tensors_sha256
    model = base_model()
    tensors = {"bert.not_a_parameter": torch.zeros(3)}
    meta = {"lightft_method": "bitfit", "lightft_options": json.dumps({}), "base_fingerprint": base_fingerprint(model),
            "tensors_sha256": tensors_sha256(tensors)}
    save_file(tensors, str(tmp_path / "odd.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="does not match the model's trainable parameters"):
        load_trainable(model, tmp_path / "odd.safetensors")
    _same_as_base(model, base_model())


@pytest.mark.parametrize("name,options,error,match", [
    ("lora", dict(r=0), ValueError, "r must be a whole number >= 1"),
    ("lora", dict(r="16"), ValueError, "r must be a whole number >= 1"),
    ("lora", dict(alpha=0), ValueError, "alpha must be a number > 0"),
    ("lora", dict(dropout=1.0), ValueError, r"dropout must be a number in \[0, 1\)"),
    ("lora", dict(targets=[]), ValueError, "targets must be a non-empty list"),
    ("lora", dict(rank=4), TypeError, "rank"),
    ("houlsby", dict(reduction_factor=-4), ValueError, "reduction_factor must be a number > 0"),
    ("houlsby", dict(reduction_factor=0), ValueError, "reduction_factor must be a number > 0"),
    ("pfeiffer", dict(reduction_factor="16"), ValueError, "reduction_factor must be a number > 0"),
    ("pfeiffer", dict(non_linearity="sigmoid"), ValueError, "non_linearity must be one of"),
    ("prompt", dict(n_tokens=0), ValueError, "n_tokens must be a whole number >= 1"),
    ("prefix", dict(n_tokens="5"), ValueError, "n_tokens must be a whole number >= 1"),
    ("prefix", dict(init="zeros"), ValueError, "init must be 'vocab' or 'random'"),
    ("top-k", dict(k="2"), ValueError, "k must be a whole number"),
    ("top9", {}, ValueError, "the model has 3 encoder layers"),
    ("bitfit", dict(r=4), TypeError, "takes no options"),
])
def test_bad_options_are_refused_before_the_model_changes(name, options, error, match):
    model = base_model()
    with pytest.raises(error, match=match):
        apply_method(model, name, **options)
    _same_as_base(model, base_model())


# ---- the same table for the other task kinds of chapter 9: token classification and extractive QA --------------------
from transformers import BertForTokenClassification, BertForQuestionAnswering

KINDS = {"token-classification": (BertForTokenClassification, dict(num_labels=5), ["dropout", "classifier"]),
         "question-answering": (BertForQuestionAnswering, dict(num_labels=2), ["qa_outputs"])}


def kind_model(kind, seed=0):
    cls, extra, _ = KINDS[kind]
    set_seed(seed)
    fields = {k: v for k, v in CONFIG.to_dict().items() if k not in ("id2label", "label2id", "num_labels")}
    return cls(BertConfig(**fields, **extra))


def kind_batch(kind, seed=1):
    b = batch(seed)
    if kind == "token-classification":
        g = torch.Generator().manual_seed(seed)
        labels = torch.randint(0, 5, b["input_ids"].shape, generator=g); labels[0, 7:] = -100; labels[:, 0] = -100
        return dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels)
    return dict(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                start_positions=torch.tensor([2, 3, 1, 4]), end_positions=torch.tensor([3, 5, 1, 6]))


def kind_step(model, kind, steps=2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**kind_batch(kind)).loss.backward(); opt.step(); opt.zero_grad()
    return model.eval()


def kind_outputs(model, kind):
    x = {k: v for k, v in kind_batch(kind, 2).items() if k in ("input_ids", "attention_mask")}
    with torch.no_grad(): out = model(**x)
    return out.logits if kind == "token-classification" else torch.stack([out.start_logits, out.end_logits])


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", NAMES)
def test_every_method_on_every_task_kind(name, kind, tmp_path):
    "Applies, trains a step (only its parameters change), saves and reloads exactly, refuses a foreign base, leaves again bit for bit."
    model = apply_method(kind_model(kind), name)
    assert list(model_parts(model)["head"]) == KINDS[kind][2]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    kind_step(model, kind)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), f"{name} on {kind}: {n}"
    save_trainable(model, tmp_path / "c.safetensors")
    restored = load_trainable(kind_model(kind), tmp_path / "c.safetensors").eval()
    assert torch.equal(kind_outputs(model, kind), kind_outputs(restored, kind))
    with pytest.raises(ValueError, match="different base model"): load_trainable(kind_model(kind, seed=7), tmp_path / "c.safetensors")
    _same_as_base(remove_method(apply_method(kind_model(kind), name)), kind_model(kind))


# ---- and on a causal language model (chapter 9's translation): a tiny Llama, the architecture of SmolLM2 -------------
from transformers import LlamaConfig, LlamaForCausalLM

LLAMA = LlamaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=True)
REFUSED_ON_CAUSAL_LM = {"head": "no new task head", "bitfit": "no bias terms", "houlsby": "BERT-style",
                        "pfeiffer": "BERT-style", "prefix": "BERT-style"}


def llama(seed=0):
    set_seed(seed)
    return LlamaForCausalLM(LLAMA)


def lm_batch(seed=1):
    ids = batch(seed)["input_ids"]
    labels = ids.clone(); labels[:, :4] = -100                     # the prompt has no labels
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_on_a_causal_language_model(name, tmp_path):
    "Each method either runs the whole table on a causal LM, or is refused with its reason and leaves the model as it was."
    model = llama()
    assert model_parts(model)["head"] == {}                          # lm_head is the pretrained output layer, not a task head
    if name in REFUSED_ON_CAUSAL_LM:
        with pytest.raises((ValueError, TypeError), match=REFUSED_ON_CAUSAL_LM[name]): apply_method(model, name)
        _same_as_base(model, llama()); assert current_method(model) is None
        assert all(p.requires_grad for p in model.parameters())
        return
    apply_method(model, name)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert model.get_output_embeddings().weight.requires_grad == (name == "full")   # only full fine-tuning retrains the LM head
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train(); model(**lm_batch()).loss.backward(); opt.step(); model.eval()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), f"{name}: {n}"
    save_trainable(model, tmp_path / "c.safetensors")
    restored = load_trainable(llama(), tmp_path / "c.safetensors").eval()
    x = {k: v for k, v in lm_batch(2).items() if k != "labels"}
    with torch.no_grad(): assert torch.equal(model(**x).logits, restored(**x).logits)
    with pytest.raises(ValueError, match="different base model"): load_trainable(llama(seed=7), tmp_path / "c.safetensors")
    _same_as_base(remove_method(apply_method(llama(), name)), llama())


def test_lora_finds_the_query_and_value_projections_of_a_llama():
    from lightft.lora import lora_layers
    assert sorted({n.rsplit(".", 1)[-1] for n in lora_layers(apply_method(llama(), "lora"))}) == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="no nn.Linear layer matches"): apply_method(llama(), "lora", targets=["query_key"])
