"Every registered method through the same checks (peft's one-table-of-methods pattern)."
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification
from lightft.core import set_seed
from lightft.methods import METHODS, apply_method, get_method, save_trainable, load_trainable, load_plugins

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
