"LoRA (chapter 7): merge/unmerge/remove are exact, and our LoRA agrees with peft's, weights and files."
import json

import pytest
import torch
from torch import nn
from lightft.core import set_seed
from lightft.lora import LoRALinear, add_lora, mark_only_lora_as_trainable, lora_layers, merge_lora, unmerge_lora, remove_lora, peft_config, export_peft
from lightft.methods import apply_method
from tiny_models import tiny_bert_config, tiny_bert, inputs

CONFIG = tiny_bert_config(num_hidden_layers=2, num_labels=3)
# (name, add_lora options): the peft-style table of configurations every test below runs over
CASES = [("query,value r8", dict(r=8, alpha=16, targets=("query", "value"))),
         ("all-linear r4", dict(r=4, alpha=8, targets="all-linear")),
         ("key,dense r2 alpha1", dict(r=2, alpha=1, targets=("key", "dense"))),
         ("attention.self.query r1", dict(r=1, alpha=32, targets=("attention.self.query",)))]
IDS = [name for name, _ in CASES]
OPTIONS = [options for _, options in CASES]


def base_model(seed=0):
    "The tiny random BERT of `CONFIG`; the same seed, the same weights."
    return tiny_bert(CONFIG, seed)


def logits(model, x=None):
    with torch.no_grad(): return model(**(x or inputs())).logits


def lora_model(options, seed=0):
    model = mark_only_lora_as_trainable(add_lora(base_model(seed), **options))   # add, then mark (loralib's split)
    for p in model.classifier.parameters(): p.requires_grad_(True)
    return model


def train(model, steps=3):
    "A few AdamW steps on random labels: B leaves zero."
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        model(**inputs(), labels=torch.tensor([0, 1, 2, 1])).loss.backward(); opt.step(); opt.zero_grad()
    return model.eval()


def test_lora_linear_shapes_and_zero_update():
    set_seed(0)
    layer = LoRALinear(nn.Linear(5, 7), r=3, alpha=6)
    assert layer.lora_A.shape == (3, 5) and layer.lora_B.shape == (7, 3) and layer.scaling == 2
    assert all(p.requires_grad for p in layer.base_layer.parameters())   # wrapping freezes nothing: marking is separate
    assert layer.dropout is None and not layer.merged
    x = torch.randn(2, 4, 5)
    assert torch.equal(layer(x), layer.base_layer(x))   # B = 0: exactly the base layer
    with pytest.raises(TypeError, match="nn.Linear"): LoRALinear(nn.Conv1d(2, 2, 1))
    with pytest.raises(ValueError, match="at least 1"): LoRALinear(nn.Linear(2, 2), r=0)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_step_zero_outputs_equal_the_base_model(options):
    assert torch.equal(logits(base_model()), logits(lora_model(options)))


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_only_lora_and_head_train_with_the_expected_count(options):
    model = lora_model(options)
    layers = lora_layers(model)
    expected = sum(options["r"] * (l.base_layer.in_features + l.base_layer.out_features) for l in layers.values())
    expected += sum(p.numel() for p in model.classifier.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.endswith(("lora_A", "lora_B")) or n.startswith("classifier.") for n in trainable)


def test_targets_choose_the_layers():
    assert len(lora_layers(lora_model(dict(targets=("query", "value"))))) == 2 * 2
    # all-linear: q, k, v, attention output, intermediate, output per layer, and the pooler — never the classifier
    names = lora_layers(lora_model(dict(targets="all-linear")))
    assert len(names) == 6 * 2 + 1 and not any(n.startswith("classifier") for n in names)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_merged_equals_unmerged_and_both_differ_from_base(options):
    model = train(lora_model(options))
    assert all(l.lora_B.abs().sum() > 0 for l in lora_layers(model).values())
    unmerged = logits(model)
    merged = logits(merge_lora(model))
    assert all(l.merged for l in lora_layers(model).values())
    torch.testing.assert_close(merged, unmerged, atol=1e-6, rtol=1e-5)
    base = logits(base_model())
    assert (merged - base).abs().max() > 1e-3 and (unmerged - base).abs().max() > 1e-3


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_unmerge_restores_the_weights_bit_for_bit(options):
    model = train(lora_model(options))
    before = {n: l.base_layer.weight.detach().clone() for n, l in lora_layers(model).items()}
    out = logits(model)
    for _ in range(3):   # several round trips: no drift
        merge_lora(model)
        assert any(not torch.equal(l.base_layer.weight, before[n]) for n, l in lora_layers(model).items())
        unmerge_lora(model)
    for n, l in lora_layers(model).items():
        assert torch.equal(l.base_layer.weight, before[n]) and not l.merged
    assert torch.equal(logits(model), out)


def test_subtracting_the_delta_is_not_exact():
    "Why unmerge keeps the original weight: (W + D) - D is not W in floating point."
    set_seed(0)
    w, d = torch.randn(64, 64), 1e-3 * torch.randn(64, 64)
    assert not torch.equal((w + d) - d, w)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_remove_lora_restores_the_base_model(options):
    original = base_model()
    model = train(lora_model(options))
    merge_lora(model)   # removing must also undo a merge
    remove_lora(model)
    assert not lora_layers(model)
    state, reference = model.state_dict(), original.state_dict()
    assert list(state) == list(reference)
    changed = [k for k in state if not torch.equal(state[k], reference[k])]
    assert all(k.startswith("classifier.") for k in changed)   # only the (trained) head differs
    model.classifier.load_state_dict(original.classifier.state_dict())
    assert torch.equal(logits(model), logits(original))


def test_remove_lora_with_merge_keeps_the_fine_tuned_function():
    model = train(lora_model(OPTIONS[0]))
    out = logits(model)
    remove_lora(model, merge=True)
    assert not lora_layers(model) and isinstance(model.bert.encoder.layer[0].attention.self.query, nn.Linear)
    torch.testing.assert_close(logits(model), out, atol=1e-6, rtol=1e-5)


def test_add_lora_refuses_twice_and_unknown_targets():
    model = lora_model(OPTIONS[0])
    with pytest.raises(ValueError, match="already has LoRA"): add_lora(model)
    with pytest.raises(ValueError, match="linear layers are named.*query"): add_lora(base_model(), targets=("q_proj",))


def test_dropout_only_on_the_lora_path():
    model = train(lora_model(dict(r=4, alpha=8, targets=("query", "value"), dropout=0.5)))
    layer = next(iter(lora_layers(model).values()))
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.5
    assert torch.equal(logits(model), logits(model))          # eval: deterministic
    model.train()
    assert not torch.equal(logits(model), logits(model))      # train: the low-rank path is dropped at random


def test_registered_method_round_trips_options_through_json():
    model = apply_method(base_model(), "lora", targets=["query", "key"], r=2)
    assert model.lightft_options == {"r": 2, "alpha": 16, "targets": ["query", "key"], "dropout": 0.0}
    assert json.loads(json.dumps(model.lightft_options)) == model.lightft_options
    assert {n.rsplit(".", 1)[-1] for n in lora_layers(model)} == {"query", "key"}


# --- peft: the same weights give the same numbers, and our files load in peft ---

peft = pytest.importorskip("peft")


def peft_model(options, seed=0):
    targets = options["targets"] if isinstance(options["targets"], str) else list(options["targets"])
    config = peft.LoraConfig(r=options["r"], lora_alpha=options["alpha"], target_modules=targets, lora_dropout=0.0,
                             modules_to_save=["classifier"])
    return peft.get_peft_model(base_model(seed), config)


def copy_ours_into_peft(ours, theirs):
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            target = theirs.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
        theirs.base_model.model.classifier.modules_to_save["default"].load_state_dict(ours.classifier.state_dict())


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_same_weights_same_outputs_and_gradients_as_peft(options):
    ours = train(lora_model(options))
    theirs = peft_model(options).eval()
    assert set(lora_layers(ours)) == {n.removeprefix("base_model.model.") for n, m in theirs.named_modules()
                                      if isinstance(m, peft.tuners.lora.LoraLayer)}
    copy_ours_into_peft(ours, theirs)
    torch.testing.assert_close(logits(ours), logits(theirs), atol=1e-5, rtol=0)
    # and one backward pass gives the same gradients for every A and B
    labels = torch.tensor([2, 0, 1, 1])
    ours(**inputs(3), labels=labels).loss.backward(); theirs(**inputs(3), labels=labels).loss.backward()
    for name, layer in lora_layers(ours).items():
        target = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.lora_A.grad, target.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(layer.lora_B.grad, target.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_trainable_counts_equal_peft(options):
    theirs = peft_model(options)
    ours = lora_model(options)
    assert sum(p.numel() for p in ours.parameters() if p.requires_grad) == \
           sum(p.numel() for p in theirs.parameters() if p.requires_grad)


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_export_peft_loads_in_peft_with_the_same_predictions(options, tmp_path):
    model = train(apply_method(base_model(), "lora", **options))
    export_peft(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == options["r"] and config["modules_to_save"] == ["classifier"]
    loaded = peft.PeftModel.from_pretrained(base_model(), tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(loaded, inputs(5)), logits(model, inputs(5)), atol=1e-5, rtol=0)
    assert (logits(loaded, inputs(5)) - logits(base_model(), inputs(5))).abs().max() > 1e-3   # the head and LoRA came along
    # peft's own save of the loaded model has exactly our tensor names
    from safetensors import safe_open
    loaded.save_pretrained(tmp_path / "resaved")
    names = lambda d: set(safe_open(str(d / "adapter_model.safetensors"), "pt").keys())
    assert names(tmp_path / "adapter") == names(tmp_path / "resaved")


def test_peft_config_uses_full_names_when_short_ones_would_catch_more():
    model = lora_model(dict(targets=("encoder.layer.0.attention.self.query",)))
    assert peft_config(model)["target_modules"] == ["bert.encoder.layer.0.attention.self.query"]
    assert peft_config(lora_model(dict(targets=("query",))))["target_modules"] == ["query"]


def test_peft_config_refuses_what_peft_lora_cannot_hold():
    model = lora_model(OPTIONS[0])
    model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="cannot hold.*word_embeddings"): peft_config(model)
    with pytest.raises(ValueError, match="no LoRA layers"): peft_config(base_model())


def test_add_lora_adds_and_freezes_nothing():
    model = add_lora(base_model())
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="has no LoRA layers"): mark_only_lora_as_trainable(base_model())
