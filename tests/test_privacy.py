"""Tests of lightft.privacy (chapter 12): DP-SGD through `fit(privacy=...)`, checked against its definition and against
Opacus; the membership-inference attack checked against scikit-learn. Tiny models and made-up data: seconds each."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from datasets import ClassLabel, Dataset, Features, Value
from sklearn.metrics import roc_auc_score, roc_curve
from transformers import BertTokenizerFast

from lightft.core import set_seed
from lightft.methods import apply_method
from lightft.privacy import (PrivacyConfig, best_advantage, check_dp_support, dp_accuracy_bound, dp_sgd_gradient,
                             example_losses, make_private, membership_inference, roc_auc, unsupported_layers)
from lightft.train import History, fit, make_loader, as_tokenized
from tiny_models import tiny_bert, tiny_bert_config

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "the", "film", "was", "very", "quite", "plot"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def split(n, seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"text": " ".join(rng.choice(WORDS[6:], size=rng.integers(2, 6))) + " " + WORDS[rng.integers(0, 3) + 3 * (i % 2 == 0)],
             "label": int(i % 2)} for i in range(n)]
    return Dataset.from_list(rows, features=Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])}))


@pytest.fixture(scope="module")
def data(): return {"train": split(64, 0), "validation": split(32, 1)}


def model_with(method, seed=0):
    model = tiny_bert(tiny_bert_config(vocab_size=len(WORDS) + 5), seed=seed)
    return apply_method(model, method) if method else model


# --- the configuration -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, name", [(dict(epsilon=0), "epsilon"), (dict(epsilon=math.inf), "epsilon"), (dict(epsilon=-1), "epsilon"),
                                       (dict(delta=0), "delta"), (dict(delta=1.5), "delta"), (dict(max_grad_norm=0), "max_grad_norm"),
                                       (dict(accountant="moments"), "accountant")])
def test_a_bad_budget_is_refused_with_its_name(bad, name):
    with pytest.raises(ValueError, match=name): PrivacyConfig(**bad)


@pytest.mark.parametrize("bad, name", [(dict(epsilon="8"), "epsilon"), (dict(delta=None), "delta"), (dict(poisson_sampling=1), "poisson_sampling")])
def test_a_wrong_type_is_refused_with_its_name(bad, name):
    with pytest.raises(TypeError, match=name): PrivacyConfig(**bad)


# --- DP-SGD from scratch against Opacus ----------------------------------------------------------------------------

def test_dp_sgd_gradient_is_opacus_step_exactly():
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 5) * 3, torch.randint(0, 2, (8,))
    gsm, before = GradSampleModule(net), {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = DPOptimizer(torch.optim.SGD(net.parameters(), lr=1.0), noise_multiplier=0.7, max_grad_norm=0.5, expected_batch_size=10,
                      generator=torch.Generator().manual_seed(3))
    nn.functional.cross_entropy(gsm(x), y).backward()
    per_example = {n: p.grad_sample.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    ours = dp_sgd_gradient(per_example, 0.5, 0.7, 10, generator=torch.Generator().manual_seed(3))
    for n, p in net.named_parameters(): torch.testing.assert_close(before[n] - p.detach(), ours[n], atol=1e-6, rtol=1e-5)


def test_dp_sgd_gradient_clips_each_example_and_keeps_small_ones():
    g = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}                 # norms 5 and 0.5
    out = dp_sgd_gradient(g, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=2)
    torch.testing.assert_close(out["w"], (torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])) / 2)
    noisy = dp_sgd_gradient({"w": torch.zeros(4, 20000)}, 1.0, 2.0, 4, generator=torch.Generator().manual_seed(0))["w"]
    assert abs(noisy.std().item() - 2.0 * 1.0 / 4) < 0.01             # σ·C / B on every coordinate


def test_per_example_gradients_of_every_supported_method_match_a_loop(tokenizer, data):
    "What Opacus computes inside `make_private` (with the position-id hook for full fine-tuning, functorch for LoRA) is each example's own gradient."
    for method in ("full", "bitfit", "lora", "houlsby"):
        model = model_with(method)
        named = {n: p for n, p in model.named_parameters() if p.requires_grad}
        loader = make_loader(as_tokenized(data["train"].select(range(6)), tokenizer, 16), tokenizer, 6)
        private = make_private(model, torch.optim.SGD(named.values(), lr=0.1), loader, PrivacyConfig(epsilon=8, delta=1e-3), epochs=1)
        batch = next(iter(loader))
        loss = nn.functional.cross_entropy(private.model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"])
        loss.backward()
        got = {n: p.grad_sample.detach().clone() for n, p in named.items()}
        private.close()
        scale = max(g.abs().max().item() for g in got.values())
        for i in range(6):
            model.zero_grad()
            one = {k: v[i:i + 1] for k, v in batch.items()}
            nn.functional.cross_entropy(model(**{k: v for k, v in one.items() if k != "labels"}).logits, one["labels"]).backward()
            for n, p in named.items():
                assert (p.grad - got[n][i]).abs().max().item() <= 1e-4 * scale, (method, n, i)


# --- fit(privacy=...) ----------------------------------------------------------------------------------------------

def test_private_fit_reaches_its_budget_and_leaves_an_ordinary_model(tokenizer, data):
    model = model_with("lora")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    attrs = {n: set(vars(m)) for n, m in model.named_modules()}
    history = fit(model, tokenizer, data, epochs=2, batch_size=8, lr=1e-2, max_length=16, progress=False,
                  privacy=PrivacyConfig(epsilon=3.0, delta=1e-3))
    assert history.delta == 1e-3 and 2.7 <= history.epsilon <= 3.0 + 1e-6      # the accountant's ε: at most the target, close to it
    assert history.config["noise_multiplier"] > 0 and history.config["privacy"]["epsilon"] == 3.0
    assert "differentially private" in history.summary()
    for n, p in model.named_parameters():
        if n in frozen: assert torch.equal(p, frozen[n]), n
        assert not hasattr(p, "grad_sample"), n
    assert all(set(vars(m)) == attrs[n] for n, m in model.named_modules())     # no Opacus attributes left behind
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()) == 0
    assert History.from_dict(history.to_dict()).epsilon == history.epsilon


def test_private_fit_is_reproducible_and_noisier_than_ordinary_fit(tokenizer, data):
    runs = []
    for privacy in (PrivacyConfig(epsilon=1.0, delta=1e-3), PrivacyConfig(epsilon=1.0, delta=1e-3), None):
        model = model_with("bitfit")
        fit(model, tokenizer, data, epochs=1, batch_size=8, lr=1e-2, max_length=16, progress=False, eval_split=None, privacy=privacy, seed=4)
        runs.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])         # same seed: same batches, same noise
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_full_fine_tuning_trains_position_embeddings_privately(tokenizer, data):
    model = model_with("full")
    before = model.bert.embeddings.position_embeddings.weight.detach().clone()
    history = fit(model, tokenizer, data, epochs=1, batch_size=8, lr=1e-3, max_length=16, progress=False, eval_split=None,
                  privacy=PrivacyConfig(epsilon=8.0, delta=1e-3))
    assert not torch.equal(before, model.bert.embeddings.position_embeddings.weight) and history.epsilon <= 8.0 + 1e-6


def test_prompt_tuning_is_refused_before_training(tokenizer, data):
    model = model_with("prompt")
    assert unsupported_layers(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="SoftPrompt.*lora"):
        fit(model, tokenizer, data, epochs=1, batch_size=8, progress=False, privacy=PrivacyConfig())
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_unsupported_settings_are_refused(tokenizer, data):
    for settings in (dict(grad_accum=2), dict(precision="bf16")):
        with pytest.raises(ValueError, match="privacy"):
            fit(model_with("lora"), tokenizer, data, epochs=1, batch_size=8, progress=False, privacy=PrivacyConfig(), **settings)
    with pytest.raises(TypeError, match="PrivacyConfig"):
        fit(model_with("lora"), tokenizer, data, epochs=1, batch_size=8, progress=False, privacy={"epsilon": 8})


def test_supported_methods_pass_the_check():
    for method in ("full", "head", "bitfit", "top1", "houlsby", "pfeiffer", "lora"):
        check_dp_support(model_with(method))


# --- membership inference -----------------------------------------------------------------------------------------

def test_roc_auc_and_advantage_match_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos, neg = rng.normal(0.4, 1, 120).round(1), rng.normal(0, 1, 90).round(1)   # rounded: ties
        y, s = np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg]
        fpr, tpr, _ = roc_curve(y, s)
        assert abs(roc_auc(pos, neg) - roc_auc_score(y, s)) < 1e-12
        assert abs(best_advantage(pos, neg) - (tpr - fpr).max()) < 1e-12
    assert roc_auc([2, 3], [0, 1]) == 1.0 and roc_auc([0], [0]) == 0.5 and best_advantage([0, 1], [0, 1]) == 0.0
    with pytest.raises(ValueError, match="both groups"): roc_auc([], [1])


def test_example_losses_are_the_cross_entropies(tokenizer, data):
    model = model_with(None)
    losses = example_losses(model, tokenizer, data["validation"], batch_size=5, max_length=16)
    enc = tokenizer(list(data["validation"]["text"]), padding=True, truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad(): want = nn.functional.cross_entropy(model(**enc).logits, torch.tensor(data["validation"]["label"]), reduction="none")
    np.testing.assert_allclose(losses, want.numpy(), rtol=1e-5, atol=1e-6)


def test_membership_inference_sees_a_memorised_training_set(tokenizer):
    def random_labels(d, seed):                  # labels a model can only memorise, not learn
        return d.cast_column("label", Value("int64")).map(lambda r, i: {"label": int(np.random.default_rng(seed + i).integers(0, 2))},
                                                            with_indices=True).cast_column("label", ClassLabel(names=["negative", "positive"]))
    members, others = random_labels(split(16, 10), 0), random_labels(split(16, 11), 100)
    model = model_with("full")
    fit(model, tokenizer, {"train": members}, epochs=30, batch_size=8, lr=3e-3, max_length=16, progress=False, eval_split=None)
    attack = membership_inference(model, tokenizer, members, others, max_length=16)
    assert attack["member_loss"] < attack["non_member_loss"] and attack["auc"] > 0.6 and attack["members"] == 16


def test_the_dp_bound():
    assert dp_accuracy_bound(0.0) == 0.5 and dp_accuracy_bound(math.inf) == 1.0
    assert abs(dp_accuracy_bound(1.0) - math.e / (1 + math.e)) < 1e-12
    assert dp_accuracy_bound(1.0, delta=0.01) > dp_accuracy_bound(1.0)
