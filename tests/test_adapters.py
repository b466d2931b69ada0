"Bottleneck adapters (chapter 6): near-identity start, exact removal, and the same numbers as AdapterHub."
import copy

import pytest
import torch
from lightft.core import set_seed
from lightft.adapters import (AdapterConfig, AdaptedSublayer, BottleneckAdapter, adapter_config, add_adapters, remove_adapters,
                              has_adapters, train_adapters, adapter_parameters, adapterhub_config, copy_adapterhub_weights)
from lightft.methods import apply_method, save_trainable, load_trainable
from tiny_models import tiny_bert_config, tiny_bert, inputs

adapters = pytest.importorskip("adapters")

CONFIG = tiny_bert_config(num_hidden_layers=3, num_labels=2)

# (name, our config, AdapterHub config): one table of tiny configurations every equivalence test runs over
CASES = [
    ("pfeiffer = seq_bn", "pfeiffer", {}, "seq_bn"),
    ("houlsby(swish) = double_seq_bn", "houlsby", dict(non_linearity="swish"), "double_seq_bn"),
    ("pfeiffer rf4", "pfeiffer", dict(reduction_factor=4), lambda: adapters.SeqBnConfig(reduction_factor=4)),
    ("houlsby rf2 tanh", "houlsby", dict(reduction_factor=2, non_linearity="tanh"),
     lambda: adapters.DoubleSeqBnConfig(reduction_factor=2, non_linearity="tanh")),
    ("houlsby gelu m=5", "houlsby", dict(bottleneck=5), None),           # None: AdapterHub config from `adapterhub_config`
    ("pfeiffer swish m=3", "pfeiffer", dict(bottleneck=3, non_linearity="swish"), None),
    ("attention only, relu, rf8", AdapterConfig(after_attention=True, after_ffn=False, non_linearity="relu", reduction_factor=8), {}, None),
]
IDS = [c[0] for c in CASES]


def base_model(seed=0):
    "The tiny random BERT of `CONFIG`; the same seed, the same weights."
    return tiny_bert(CONFIG, seed)


def hub_model(base, hub_config, name="a", scale=0.3):
    hub = copy.deepcopy(base)
    adapters.init(hub)
    hub.add_adapter(name, config=hub_config)
    hub.train_adapter(name)
    with torch.no_grad():                    # large random adapter weights: the adapters must change the outputs
        for n, p in hub.named_parameters():
            if f".adapters.{name}." in n: p.normal_(0, scale)
    return hub.eval()


def pair(ours_config, overrides, hub_config):
    base = base_model()
    ours = train_adapters(add_adapters(copy.deepcopy(base), ours_config, **overrides)).eval()
    if hub_config is None: hub_config = adapterhub_config(adapter_config(ours_config, **overrides), CONFIG.hidden_size)
    elif callable(hub_config): hub_config = hub_config()
    hub = hub_model(base, hub_config)
    copy_adapterhub_weights(ours, hub, "a")
    return base, ours, hub


def outputs(model, x=None):
    with torch.no_grad():
        out = model(**(x or inputs()), output_hidden_states=True)
    return out.hidden_states[-1], out.logits


@pytest.mark.parametrize("name,ours_config,overrides,hub_config", CASES, ids=IDS)
def test_same_outputs_as_adapterhub(name, ours_config, overrides, hub_config):
    base, ours, hub = pair(ours_config, overrides, hub_config)
    (h_ours, y_ours), (h_hub, y_hub), (h_base, _) = outputs(ours), outputs(hub), outputs(base)
    assert (h_hub - h_base).abs().max() > 0.1, "the adapters barely change the outputs: the comparison would prove nothing"
    torch.testing.assert_close(h_ours, h_hub, atol=1e-5, rtol=0)
    torch.testing.assert_close(y_ours, y_hub, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,ours_config,overrides,hub_config", CASES, ids=IDS)
def test_same_trainable_parameters_as_adapterhub(name, ours_config, overrides, hub_config):
    _, ours, hub = pair(ours_config, overrides, hub_config)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert count(ours) == count(hub)
    head = sum(p.numel() for p in ours.classifier.parameters())
    assert sum(p.numel() for p in adapter_parameters(ours)) == count(hub) - head


@pytest.mark.parametrize("change", [dict(norm_before=False), dict(non_linearity="gelu"), dict(after_attention=True)])
def test_a_different_architecture_is_detected(change):
    "The equivalence test can fail: change one detail of `pfeiffer` and it no longer matches `seq_bn`."
    base = base_model()
    ours = add_adapters(copy.deepcopy(base), "pfeiffer", **change).eval()
    hub = hub_model(base, "seq_bn")
    if change.get("after_attention"):
        with pytest.raises(ValueError, match="adapter sites differ"): copy_adapterhub_weights(ours, hub, "a")
        return
    copy_adapterhub_weights(ours, hub, "a")
    assert (outputs(ours)[0] - outputs(hub)[0]).abs().max() > 1e-3


def test_adapterhub_config_matches_the_presets():
    h = adapterhub_config("pfeiffer", 384)
    ref = adapters.SeqBnConfig()
    for key in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after", "residual_before_ln", "non_linearity",
                "ln_before", "ln_after"):
        assert h[key] == ref[key], key
    h = adapterhub_config(adapter_config("houlsby", non_linearity="swish"), 384)
    ref = adapters.DoubleSeqBnConfig()
    for key in ("mh_adapter", "output_adapter", "original_ln_before", "original_ln_after", "residual_before_ln", "non_linearity"):
        assert h[key] == ref[key], key


@pytest.mark.parametrize("hidden,m", [(32, 3), (384, 24), (768, 64), (100, 7), (1024, 1)])
def test_adapterhub_bottleneck_width(hidden, m):
    rf = adapterhub_config(AdapterConfig(bottleneck=m), hidden)["reduction_factor"]
    assert int(hidden // rf) == m


@pytest.mark.parametrize("config", ["houlsby", "pfeiffer", AdapterConfig(after_attention=True, after_ffn=False, bottleneck=4)])
def test_remove_restores_the_base_model_exactly(config):
    base = base_model()
    keys, reference = list(base.state_dict()), outputs(base)
    model = add_adapters(base, config)
    with torch.no_grad():
        for p in adapter_parameters(model): p.add_(torch.randn_like(p))
    assert not torch.equal(outputs(model)[1], reference[1])
    assert any("base_layer" in k for k in model.state_dict())
    remove_adapters(model)
    assert not has_adapters(model)
    assert list(model.state_dict()) == keys
    assert all(torch.equal(a, b) for a, b in zip(outputs(model), reference))
    assert list(model.state_dict()) == list(base_model().state_dict())


def test_near_identity_at_initialisation():
    base = base_model()
    reference = outputs(base)[0]
    for name in ("houlsby", "pfeiffer"):
        set_seed(0)
        h = outputs(add_adapters(base, name, bottleneck=16))[0]
        assert (h - reference).norm() / reference.norm() < 1e-2
        remove_adapters(base)
        set_seed(0)
        h = outputs(add_adapters(base, name, bottleneck=16, init_std=1.0))[0]
        assert (h - reference).norm() / reference.norm() > 0.1           # a large start is not near the identity
        remove_adapters(base)


def test_bottleneck_adapter():
    set_seed(0)
    a = BottleneckAdapter(16, 4, "relu")
    assert sum(p.numel() for p in a.parameters()) == 2 * 16 * 4 + 16 + 4
    x = torch.randn(3, 5, 16)
    assert a(x).shape == x.shape
    with torch.no_grad(): a.up.weight.zero_()
    assert torch.equal(a(x), x)                                          # zero update: exactly the identity
    skip = torch.randn_like(x)
    assert torch.equal(a(x, skip=skip), skip)


def test_training_changes_only_adapters_and_head(tmp_path):
    model = apply_method(base_model(), "houlsby", reduction_factor=8)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n or n.startswith("classifier.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(**inputs(), labels=torch.tensor([0, 1, 1, 0])).loss.backward(); opt.step(); opt.zero_grad()
    model.eval()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (n in trainable), n
    save_trainable(model, tmp_path / "h.safetensors")
    restored = load_trainable(base_model(), tmp_path / "h.safetensors")
    assert torch.equal(outputs(restored)[1], outputs(model)[1])
    assert restored.lightft_adapter_config == adapter_config("houlsby", reduction_factor=8)


def test_reapplying_a_method_needs_replace_and_starts_fresh():
    model = apply_method(base_model(), "houlsby")
    with pytest.raises(ValueError, match="already has the method 'houlsby'"): apply_method(model, "pfeiffer")
    model = apply_method(model, "pfeiffer", replace=True)
    sites = [m for m in model.modules() if isinstance(m, AdaptedSublayer)]
    assert len(sites) == CONFIG.num_hidden_layers and all(s.norm_before for s in sites)


def test_errors_are_clear():
    model = add_adapters(base_model(), "houlsby")
    with pytest.raises(ValueError, match="already has adapters"): add_adapters(model, "pfeiffer")
    with pytest.raises(ValueError, match="houlsby, pfeiffer"): adapter_config("compacter")
    with pytest.raises(TypeError, match="no field r"): adapter_config("houlsby", r=4)
    with pytest.raises(ValueError, match="places no adapter"): add_adapters(base_model(), "pfeiffer", after_ffn=False)
    with pytest.raises(ValueError, match="no adapters"): train_adapters(base_model())
    with pytest.raises(TypeError, match="base_model"): add_adapters(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="non_linearity must be one of"): add_adapters(base_model(), "houlsby", non_linearity="sigmoid")


def test_aliases():
    assert adapter_config("seq_bn") == adapter_config("pfeiffer")
    assert adapter_config("DOUBLE_SEQ_BN") == adapter_config("houlsby")
    assert adapter_config({"after_attention": False}).after_attention is False
    assert adapter_config("houlsby", bottleneck=7).bottleneck_size(384) == 7
    assert adapter_config("houlsby", reduction_factor=16).bottleneck_size(384) == 24
