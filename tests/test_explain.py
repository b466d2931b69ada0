"""Interpretability (chapter 11, lightft.explain): integrated gradients equal Captum's and are complete, gradient × input
equals Captum's, occlusion is leave-one-word-out, attention maps equal the model's own `output_attentions` (plain, mean-pooled,
with LoRA, with adapters), rollout, the weight-change / spectrum / CKA / probe / agreement pieces, the explorer widget's
callbacks, and `what_changed` end to end on tiny-bert. Everything runs offline in seconds on the course's tiny-bert."""
import json

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, IntegratedGradients

from lightft.core import set_seed
from lightft.data import load_task
from lightft.explain import (ATTENTION_VIEWS, IG_RULES, Attribution, attention_maps, attention_rollout, attention_view, attribution_html,
                             change_grid, effective_weights, embedding_input, explore, explorer_figure, gradient_x_input,
                             integrated_gradients, layer_representations, linear_cka, occlusion, path_points, probe_layers,
                             rank_agreement, rank_for_energy, singular_values, top_energy, weight_changes, what_changed)
from lightft.lora import lora_layers, merge_lora
from lightft.methods import apply_method
from lightft.models import load_plm

TEXTS = ["The soundtrack was unbelievably dull, and the ending dragged.",
         "A warm, funny and thoroughly charming little film!",
         "Service was slow; the pasta, however, was superb."]


def tiny(pooling=None, seed=0, method=None):
    "The course's tiny-bert with a random 2-label head, in eval mode; `method` applied with its new weights made non-zero."
    model, tokenizer = load_plm("tiny-bert", num_labels=2, pooling=pooling, label_names=["negative", "positive"], seed=seed)
    if method is not None:
        apply_method(model, method)
        set_seed(seed + 1)
        with torch.no_grad():       # LoRA's B starts at zero and adapters near the identity: make them change the model
            for name, p in model.named_parameters():
                if "lora_B" in name or ".adapter." in name: p.add_(0.05 * torch.randn_like(p))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def cls_model(): return tiny()


@pytest.fixture(scope="module")
def mean_model(): return tiny(pooling="mean")


# ---------------------------------------------------------------- attributions

@pytest.mark.parametrize("pooling", [None, "mean"])
@pytest.mark.parametrize("baseline", ["pad", "zero"])
@pytest.mark.parametrize("rule", ["riemann_right", "riemann_middle", "riemann_left", "gausslegendre"])
def test_integrated_gradients_equal_captum(pooling, baseline, rule, cls_model, mean_model):
    model, tokenizer = mean_model if pooling else cls_model
    for text, target in zip(TEXTS[:2], (0, 1)):
        ours = integrated_gradients(model, tokenizer, text, target=target, steps=24, baseline=baseline, rule=rule, batch_size=10)[0]
        e = embedding_input(model, tokenizer, text, baseline=baseline)
        theirs, delta = IntegratedGradients(lambda emb: e.f(emb)[:, target]).attribute(
            e.x, baselines=e.x0, n_steps=24, method=rule, return_convergence_delta=True)
        np.testing.assert_allclose(ours.token_scores, theirs[0].sum(-1).double().numpy(), atol=1e-4)
        assert abs(ours.delta + float(delta)) < 1e-4            # Captum's delta is sum(attributions) - (f(x) - f(x'))
        assert ours.target == target and ours.method == "integrated_gradients"


def test_integrated_gradients_are_complete(mean_model):
    model, tokenizer = mean_model
    checked = 0
    for a in integrated_gradients(model, tokenizer, TEXTS, steps=200, batch_size=100):
        change = a.scores.sum() + a.delta                       # f(x) - f(x')
        with torch.no_grad():
            e = embedding_input(model, tokenizer, a.text)
            ends = e.f(torch.cat([e.x, e.x0]))[:, a.target]
        assert abs(change - float(ends[0] - ends[1])) < 1e-5
        if abs(change) > 1e-3:
            assert abs(a.delta) <= 0.01 * abs(change)           # completeness within 1%
            checked += 1
    assert checked >= 2
    few = integrated_gradients(model, tokenizer, TEXTS[0], steps=2, rule="riemann_right")[0]
    many = integrated_gradients(model, tokenizer, TEXTS[0], steps=200, rule="riemann_right")[0]
    assert abs(many.delta) < abs(few.delta)                     # more steps, a smaller error


def test_words_and_subtokens(cls_model):
    model, tokenizer = cls_model
    a = integrated_gradients(model, tokenizer, TEXTS[0], steps=8)[0]
    e = embedding_input(model, tokenizer, TEXTS[0])
    assert a.words == [TEXTS[0][s:t] for s, t in a.offsets] == e.words
    assert "unbelievably" in a.words and "," in a.words
    np.testing.assert_allclose(a.scores, [a.token_scores[g].sum() for g in e.groups])
    assert a.token_scores[0] == 0 and a.token_scores[-1] == 0    # [CLS] and [SEP] are the same in input and baseline
    assert len(a.tokens) == len(a.token_scores) > len(a.words)  # at least one word has several tokens
    assert a.label in ("negative", "positive") and 0 < a.prob < 1


def test_targets(cls_model):
    model, tokenizer = cls_model
    with torch.no_grad(): predicted = [int(model(**tokenizer(t, return_tensors="pt")).logits.argmax()) for t in TEXTS]
    assert [a.target for a in gradient_x_input(model, tokenizer, TEXTS)] == predicted
    assert [a.target for a in occlusion(model, tokenizer, TEXTS, target=[1, 0, 1])] == [1, 0, 1]
    pos, neg = (integrated_gradients(model, tokenizer, TEXTS[0], target=t, steps=16)[0] for t in (1, 0))
    assert pos.target == 1 and neg.target == 0


def test_bad_arguments(cls_model):
    model, tokenizer = cls_model
    with pytest.raises(ValueError, match="baseline"): integrated_gradients(model, tokenizer, "fine", baseline="mask")
    with pytest.raises(ValueError, match="unknown rule"): integrated_gradients(model, tokenizer, "fine", rule="simpson")
    with pytest.raises(ValueError, match="steps"): path_points(1)
    with pytest.raises(ValueError, match="one per text"): occlusion(model, tokenizer, TEXTS, target=[0, 1])
    with pytest.raises(TypeError, match="strings"): gradient_x_input(model, tokenizer, [1, 2])


@pytest.mark.parametrize("rule", IG_RULES)
def test_path_points_integrate_polynomials(rule):
    alphas, weights = path_points(64, rule)
    assert abs(float(weights.sum()) - 1) < 1e-12 and float(alphas.min()) >= 0 and float(alphas.max()) <= 1
    assert abs(float((weights * alphas).sum()) - 0.5) < 1e-2     # ∫ α dα = 1/2


def test_gradient_x_input_equals_captum(mean_model):
    model, tokenizer = mean_model
    a = gradient_x_input(model, tokenizer, TEXTS[2], target=1)[0]
    e = embedding_input(model, tokenizer, TEXTS[2])
    theirs = InputXGradient(lambda emb: e.f(emb)[:, 1]).attribute(e.x.clone().requires_grad_())
    np.testing.assert_allclose(a.token_scores, theirs[0].sum(-1).detach().double().numpy(), atol=1e-6)


def test_occlusion_leaves_each_word_out(mean_model):
    model, tokenizer = mean_model
    a = occlusion(model, tokenizer, TEXTS[1], target=1, batch_size=3)[0]
    e = embedding_input(model, tokenizer, TEXTS[1])
    ids = e.input_ids[0].tolist()
    with torch.no_grad():
        full = model(input_ids=e.input_ids).logits[0, 1]
        for group, score in zip(e.groups, a.scores):
            kept = torch.tensor([[t for p, t in enumerate(ids) if p not in group]])
            assert abs(float(full - model(input_ids=kept).logits[0, 1]) - score) < 1e-4
    np.testing.assert_allclose(a.token_scores.sum(), a.scores.sum())


def test_attribution_html(cls_model):
    model, tokenizer = cls_model
    a = occlusion(model, tokenizer, "<b>great</b> & cheap")[0]
    page = attribution_html([a, a])
    assert "<b>great" not in page and "&lt;" in page and "&amp;" in page     # the text is escaped
    assert page.count("<div") == 2 and "rgba(" in page and a._repr_html_() in page
    flat = Attribution("a b c", ["a", "b", "c"], np.zeros(3), 0, "occlusion")
    assert "rgba" in attribution_html(flat)                    # all-zero scores and no offsets still render


# ---------------------------------------------------------------- attention

def own_attentions(model, tokenizer, text):
    with torch.no_grad():
        return torch.stack(model(**tokenizer(text, return_tensors="pt"), output_attentions=True).attentions)[:, 0]


@pytest.mark.parametrize("pooling,method", [(None, None), ("mean", None), ("mean", "lora"), (None, "houlsby"), (None, "full")])
def test_attention_maps_equal_output_attentions(pooling, method):
    model, tokenizer = tiny(pooling, method=method)
    for text in TEXTS:
        maps = attention_maps(model, tokenizer, text)
        n = len(tokenizer(text)["input_ids"])
        assert maps.shape == (model.config.num_hidden_layers, model.config.num_attention_heads, n, n)
        torch.testing.assert_close(maps, own_attentions(model, tokenizer, text), atol=1e-5, rtol=1e-5)
    if method == "lora":                                       # the test can fail: without the LoRA update the maps differ
        for layer in lora_layers(model).values(): layer.lora_B.data.zero_()
        assert not torch.allclose(maps, attention_maps(model, tokenizer, TEXTS[-1]), atol=1e-4)


def test_attention_maps_of_minilm_structure():
    "MiniLM's course classifier wraps a BertModel as `.bert` (no pooler): the same code path as tiny-bert's mean-pooled one."
    model, _ = tiny(pooling="mean")
    assert type(model).__name__ == "BertForSequenceClassificationMeanPool" and model.base_model is model.bert


def test_rollout(cls_model):
    model, tokenizer = cls_model
    maps = attention_maps(model, tokenizer, TEXTS[0])
    rolled = attention_rollout(maps)
    n = maps.shape[-1]
    torch.testing.assert_close(rolled.sum(-1), torch.ones(maps.shape[0], n))
    mixed = 0.5 * torch.eye(n) + 0.5 * maps.mean(1)
    torch.testing.assert_close(rolled[0], mixed[0]); torch.testing.assert_close(rolled[1], mixed[1] @ mixed[0])
    torch.testing.assert_close(attention_rollout(maps, residual=1.0)[-1], torch.eye(n))
    torch.testing.assert_close(attention_view(maps, -1, 2), maps[-1, 2])
    torch.testing.assert_close(attention_view(maps, 1, view="mean of heads"), maps[1].mean(0))
    torch.testing.assert_close(attention_view(maps, 1, view="rollout"), rolled[1])
    with pytest.raises(ValueError, match="view"): attention_view(maps, 0, view="flow")


# ---------------------------------------------------------------- what changed

def test_effective_weights_of_lora_are_the_merged_weights():
    model, _ = tiny(method="lora")
    unmerged = effective_weights(model)
    merged = effective_weights(merge_lora(model))
    assert set(unmerged) == set(merged)
    for name in unmerged: torch.testing.assert_close(unmerged[name], merged[name])
    base, _ = tiny()
    assert set(effective_weights(base)) <= set(unmerged)        # the base names, plus LoRA's A and B


@pytest.mark.parametrize("method,changed", [("lora", {("query", "weight"), ("value", "weight")}),
                                            ("houlsby", set()), ("full", None)])
def test_weight_changes(method, changed):
    base, _ = tiny()
    tuned, _ = tiny(method=method)
    if method == "full":
        with torch.no_grad(): tuned.bert.encoder.layer[1].output.dense.bias.add_(1.0)
        changed = {("ffn out", "bias")}
    rows = weight_changes(base, tuned)
    assert len(rows) == base.config.num_hidden_layers * 16
    assert {(r["matrix"], r["kind"]) for r in rows if r["relative"] > 0} == changed
    grid = change_grid(rows, "weight")
    assert grid.shape == (base.config.num_hidden_layers, 8)


def test_spectrum():
    g = torch.Generator().manual_seed(0)
    rank3 = torch.randn(40, 3, generator=g) @ torch.randn(3, 30, generator=g)
    s = singular_values(rank3)
    assert s.shape == (30,) and np.all(np.diff(s) <= 1e-12)
    assert abs(top_energy(s, 3) - 1) < 1e-12 and top_energy(s, 1) < 1 and rank_for_energy(s, 0.999999) == 3
    assert top_energy(np.zeros(4), 2) == 0.0
    flat = np.ones(10)
    assert abs(top_energy(flat, 2) - 0.2) < 1e-12 and rank_for_energy(flat, 0.9) == 9


def test_linear_cka_properties():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(100, 12)) @ rng.normal(size=(12, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert abs(linear_cka(x, x) - 1) < 1e-12
    assert abs(linear_cka(x, x @ q) - 1) < 1e-9                 # orthogonal transforms
    assert abs(linear_cka(x, -2.5 * x + 7) - 1) < 1e-9          # isotropic scaling and shifts
    y = rng.normal(size=(100, 7))
    q7, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    assert abs(linear_cka(x, y) - linear_cka(y @ q7, x @ q)) < 1e-9   # symmetric, and different widths are fine
    assert linear_cka(x, x * np.r_[20.0, np.ones(11)]) < 0.99   # not invariant to stretching one direction
    assert 0 <= linear_cka(x, y) < 0.5
    with pytest.raises(ValueError, match="same examples"): linear_cka(x, x[:50])


def test_probes_find_the_layer_that_knows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    noise = rng.normal(size=(300, 8))
    knows = noise.copy(); knows[:, 0] += 4 * (2 * labels - 1)
    layers = np.stack([noise, knows])
    accuracy = probe_layers(layers[:, :200], labels[:200], layers[:, 200:], labels[200:])
    assert accuracy[1] > 0.97 and accuracy[0] < 0.7


def test_layer_representations(mean_model):
    model, tokenizer = mean_model
    reps = layer_representations(model, tokenizer, TEXTS, batch_size=2)
    assert reps.shape == (model.config.num_hidden_layers + 1, 3, model.config.hidden_size)
    with torch.no_grad():                                     # the last layer, mean-pooled, is what the classifier reads
        logits = model.classifier(torch.from_numpy(reps[-1]))
        enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
        torch.testing.assert_close(logits, model(**enc).logits, atol=1e-5, rtol=1e-5)


def test_rank_agreement(cls_model):
    model, tokenizer = cls_model
    a = integrated_gradients(model, tokenizer, TEXTS, steps=8)
    np.testing.assert_allclose(rank_agreement(a, a), 1.0)
    reversed_ = [Attribution(x.text, x.words, -x.scores, x.target, x.method) for x in a]
    np.testing.assert_allclose(rank_agreement(a, reversed_), -1.0)
    short = [Attribution("a b", ["a", "b"], np.array([1.0, 2.0]), 0, "occlusion")]
    assert np.isnan(rank_agreement(short, short)[0])           # two words: no correlation to speak of
    with pytest.raises(ValueError, match="same texts"): rank_agreement(a, a[:2])
    with pytest.raises(ValueError, match="different words"): rank_agreement(a[:1], a[1:2])


def test_what_changed_end_to_end():
    data = load_task("sentiment")
    result = what_changed("tiny-bert", data, ("full", "bitfit", "lora"), epochs=1, batch_size=16, train_subset=48, max_length=48,
                          probe_train=48, probe_test=24, attribution_texts=2, steps=4, log=None)
    json.dumps(result)                                         # the results file is plain JSON
    assert set(result["methods"]) == {"full", "bitfit", "lora"}
    layers = 4
    for row in result["methods"].values():
        assert len(row["cka"]) == len(row["probe"]) == layers + 1 and all(0 <= c <= 1 + 1e-9 for c in row["cka"])
        assert len(row["attributions"]["challenge"]["scores"]) == 2
    assert {r["kind"] for r in result["methods"]["bitfit"]["weight_changes"] if r["relative"] > 0} == {"bias"}
    assert len(result["spectra"]) == 2 * layers and all(s["lora_rank90"] <= 8 for s in result["spectra"])
    assert abs(result["methods"]["lora"]["cka"][0] - 1) < 1e-9  # LoRA leaves the embeddings alone
    assert {(r["a"], r["b"]) for r in result["agreement"]} == {("full", "bitfit"), ("full", "lora"), ("bitfit", "lora")}


# ---------------------------------------------------------------- the explorer

def test_explorer_callbacks(cls_model):
    model, tokenizer = cls_model
    app = explore(model, tokenizer, TEXTS, steps=4)
    assert app.text.value == TEXTS[0] and "prediction" in app.prediction.value and app.heatmap.value
    app.examples.value = TEXTS[1]                              # picking an example fills the text box and updates every view
    assert app.text.value == TEXTS[1] and "charming" in app.words.value
    assert app.maps.shape[-1] == len(app.tokens) == len(tokenizer(TEXTS[1])["input_ids"])
    for control, value in ((app.layer, 0), (app.head, 3), (app.view, "mean of heads"), (app.view, "rollout")):
        before = app.heatmap.value
        control.value = value
        assert app.heatmap.value != before, control.description
    for method in ("gradient_x_input", "occlusion"):
        app.method.value = method
        assert method.replace("_", " ") in app.words.value
    app.text.value = "A brand new sentence, typed by hand."
    assert "typed" in app.words.value and "<b>" in app.prediction.value
    app.text.value = "   "
    assert "type a text" in app.prediction.value and app.maps is None
    assert "application/vnd.jupyter.widget-view+json" in app._repr_mimebundle_()
    empty = explore(model, tokenizer)
    assert empty.maps is None and empty.examples not in empty.widget.children


def test_explorer_figure(cls_model):
    model, tokenizer = cls_model
    for view in ATTENTION_VIEWS:
        fig = explorer_figure(model, tokenizer, TEXTS[2], method="occlusion", layer=1, head=1, view=view)
        assert len(fig.axes) == 3 and "layer 1" in fig.axes[2].get_title()
    with pytest.raises(ValueError, match="method"): explorer_figure(model, tokenizer, TEXTS[2], method="lime")
