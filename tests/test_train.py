"Tests of lightft.train on a tiny random BERT and a small made-up data set: each runs in seconds."
import math
import numpy as np
import pytest
import torch
from lightft.core import get_device
from torch import nn
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, get_linear_schedule_with_warmup

from lightft.core import set_seed
from lightft.train import (History, classification_metrics, decay_parameter_names, evaluate, fit, linear_warmup_decay,
                           make_scheduler, param_groups, predict, warmup_steps_for)
import lightft.train as train_module

POSITIVE = ["good", "great", "fine", "lovely", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull", "weak"]
FILLER = ["the", "film", "book", "was", "very", "quite", "and", "plot", "cast", "it"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POSITIVE, *NEGATIVE, *FILLER]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


def make_split(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = int(i % 2)
        words = list(rng.choice(FILLER, size=rng.integers(3, 8))) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    return Dataset.from_list(rows, features=features)


@pytest.fixture(scope="module")
def data():
    return DatasetDict(train=make_split(48, 0), validation=make_split(16, 1), test=make_split(16, 2))


def tiny_model(tokenizer, seed=0):
    set_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    "A tiny model gains nothing from threads, and on a shared machine one thread is faster and steadier."
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(model): return {n: p.detach().clone() for n, p in model.named_parameters()}

FAST = dict(epochs=2, batch_size=8, lr=1e-3, max_length=16, progress=False)


def test_same_seed_same_run(tokenizer, data):
    runs = []
    for _ in range(2):
        model = tiny_model(tokenizer)
        runs.append((fit(model, tokenizer, data, **FAST), weights(model)))
    (h1, w1), (h2, w2) = runs
    assert h1.losses == h2.losses and h1.epochs == h2.epochs and len(h1.losses) == 12
    assert all(torch.equal(w1[n], w2[n]) for n in w1)
    h3 = fit(tiny_model(tokenizer), tokenizer, data, **{**FAST, "seed": 1})   # another seed: another order and dropout
    assert h3.losses != h1.losses


def test_only_trainable_parameters_change(tokenizer, data):
    model = tiny_model(tokenizer).to(get_device())      # compare on the device fit trains on (CPU or CUDA), never across devices
    model.bert.embeddings.requires_grad_(False)
    model.bert.encoder.layer[0].requires_grad_(False)
    before = weights(model)
    fit(model, tokenizer, data, **FAST)
    after = weights(model)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and trained
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert all(not torch.equal(before[n], after[n]) for n in trained)


def test_weight_decay_groups(tokenizer):
    model = tiny_model(tokenizer)
    model.bert.embeddings.requires_grad_(False)
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 and "LayerNorm" not in names[id(p)] for p in decay["params"])
    assert all(names[id(p)].endswith("bias") or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    n_trainable = sum(p.requires_grad for p in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_trainable   # frozen ones are not in the optimizer
    from transformers import Trainer
    model.requires_grad_(True)
    assert set(decay_parameter_names(model)) == set(Trainer.get_decay_parameter_names(None, model))


@pytest.mark.parametrize("total,warmup,expected", [
    (10, 2, [0.0, 0.5, 1.0, 7/8, 6/8, 5/8, 4/8, 3/8, 2/8, 1/8, 0.0]),
    (4, 0, [1.0, 0.75, 0.5, 0.25, 0.0]),
    (3, 3, [0.0, 1/3, 2/3, 0.0]),
])
def test_schedule_values(total, warmup, expected):
    assert [linear_warmup_decay(s, total, warmup) for s in range(total + 1)] == pytest.approx(expected)


def test_schedule_matches_transformers():
    p = nn.Parameter(torch.zeros(1))
    ours = make_scheduler(torch.optim.AdamW([p], lr=1e-3), total_steps=50, warmup_ratio=0.1)
    theirs = get_linear_schedule_with_warmup(torch.optim.AdamW([p], lr=1e-3), num_warmup_steps=5, num_training_steps=50)
    assert warmup_steps_for(50, 0.1) == 5 and warmup_steps_for(45, 0.1) == 5
    for _ in range(50):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr())
        ours.optimizer.step(); ours.step(); theirs.optimizer.step(); theirs.step()


def test_fit_follows_the_schedule(tokenizer, data):
    hist = fit(tiny_model(tokenizer), tokenizer, data, **{**FAST, "warmup_ratio": 0.25})
    total = len(hist.steps)
    assert hist.config["warmup_steps"] == 3 and total == hist.config["total_steps"] == 12
    assert hist.lrs == pytest.approx([1e-3 * linear_warmup_decay(s, total, 3) for s in range(total)])


def test_gradients_are_clipped_before_each_step(tokenizer, data):
    "A global optimizer hook sees the gradients at the moment of every AdamW step: their norm is at most max_grad_norm."
    norms = []
    def look(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
    handle = register_optimizer_step_pre_hook(look)
    try: hist = fit(tiny_model(tokenizer), tokenizer, data, **{**FAST, "max_grad_norm": 0.05})
    finally: handle.remove()
    assert len(norms) == len(hist.steps) == 12
    assert all(n <= 0.05 * (1 + 1e-4) for n in norms)
    assert all(s["grad_norm"] > 0.05 for s in hist.steps)   # the norm before clipping is what History records


def test_best_epoch_is_restored(tokenizer, data, monkeypatch):
    scores, snapshots = iter([0.50, 0.90, 0.60]), []
    def scripted_evaluate(model, tokenizer, split, **kwargs):
        snapshots.append(weights(model))
        return dict(accuracy=next(scores), macro_f1=0.0, loss=1.0, n=len(split))
    monkeypatch.setattr(train_module, "evaluate", scripted_evaluate)
    model = tiny_model(tokenizer)
    hist = fit(model, tokenizer, data, **{**FAST, "epochs": 3})
    assert hist.best_epoch == 2 and hist.best["eval_accuracy"] == 0.90 and hist.restored
    now = weights(model)
    assert all(torch.equal(now[n], snapshots[1][n]) for n in now)
    assert not all(torch.equal(now[n], snapshots[2][n]) for n in now)


def test_no_restore_keeps_last_epoch(tokenizer, data, monkeypatch):
    scores, snapshots = iter([0.90, 0.50]), []
    def scripted_evaluate(model, tokenizer, split, **kwargs):
        snapshots.append(weights(model))
        return dict(accuracy=next(scores), macro_f1=0.0, loss=1.0, n=len(split))
    monkeypatch.setattr(train_module, "evaluate", scripted_evaluate)
    model = tiny_model(tokenizer)
    hist = fit(model, tokenizer, data, **FAST, restore_best=False)
    assert hist.best_epoch == 1 and not hist.restored
    now = weights(model)
    assert all(torch.equal(now[n], snapshots[1][n]) for n in now)


class KeywordModel(nn.Module):
    "Logits (0, 1) — 'positive' — when the text contains the token `good`, else (1, 0)."
    def __init__(self, good_id):
        super().__init__()
        self.good_id, self.dummy = good_id, nn.Parameter(torch.zeros(1))
    def forward(self, input_ids, **kwargs):
        has = (input_ids == self.good_id).any(-1).float()
        return torch.stack([1 - has, has], -1) + 0 * self.dummy


def test_evaluate_on_a_hand_made_case(tokenizer):
    texts = ["good film", "good book", "bad film", "dull plot", "good cast", "weak plot"]
    labels = [1, 1, 0, 0, 0, 1]     # the last two are wrong for the keyword model: predictions 1, 1, 0, 0, 1, 0
    split = Dataset.from_dict({"text": texts, "label": labels})
    model = KeywordModel(tokenizer.convert_tokens_to_ids("good"))
    result = evaluate(model, tokenizer, split, batch_size=4)
    # class 1: tp 2, fp 1, fn 1 -> F1 2/3; class 0: tp 2, fp 1, fn 1 -> F1 2/3
    right, wrong = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert result["n"] == 6 and result["accuracy"] == pytest.approx(4 / 6)
    assert result["macro_f1"] == pytest.approx(2 / 3)
    assert result["loss"] == pytest.approx((4 * right + 2 * wrong) / 6, rel=1e-6)
    ids, probs = predict(model, tokenizer, texts, return_probs=True)
    assert ids.tolist() == [1, 1, 0, 0, 1, 0] and probs.shape == (6, 2)
    assert np.allclose(probs.sum(1), 1) and predict(model, tokenizer, "good").tolist() == [1]
    assert predict(model, tokenizer, split).tolist() == ids.tolist()


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_matches_sklearn(seed):
    from sklearn.metrics import accuracy_score, f1_score
    rng = np.random.default_rng(seed)
    labels, preds = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    if seed == 0: preds[:] = 1          # a class never predicted
    m = classification_metrics(preds, labels)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, preds))
    assert m["macro_f1"] == pytest.approx(f1_score(labels, preds, average="macro", zero_division=0))


def test_history_round_trip_and_plot(tokenizer, data):
    import matplotlib
    matplotlib.use("Agg")
    hist = fit(tiny_model(tokenizer), tokenizer, data, **FAST)
    again = History.from_dict(hist.to_dict())
    assert again == hist and "best epoch" in repr(hist) and hist.trainable == hist.total > 0
    assert hist.seconds >= hist.train_seconds > 0 and hist.peak_mb > 0
    fig = hist.plot()
    assert len(fig.axes) == 2


def test_without_evaluation_and_on_a_subset(tokenizer, data):
    hist = fit(tiny_model(tokenizer), tokenizer, data, **{**FAST, "eval_split": None, "train_subset": 20})
    assert hist.config["train_examples"] == 20 and len(hist.steps) == 2 * 3     # ceil(20 / 8) = 3 steps per epoch
    assert hist.best_epoch == 2 and not hist.restored and all("eval_accuracy" not in e for e in hist.epochs)


def test_best_by_loss(tokenizer, data, monkeypatch):
    losses = iter([0.7, 0.4, 0.5])
    monkeypatch.setattr(train_module, "evaluate", lambda *a, **k: dict(accuracy=0.5, macro_f1=0.5, loss=next(losses), n=16))
    hist = fit(tiny_model(tokenizer), tokenizer, data, **{**FAST, "epochs": 3, "best_metric": "loss"})
    assert hist.best_epoch == 2 and hist.restored


def test_clear_errors(tokenizer, data):
    with pytest.raises(KeyError, match="not in the data"): fit(tiny_model(tokenizer), tokenizer, data, eval_split="dev")
    with pytest.raises(ValueError, match="best_metric"): fit(tiny_model(tokenizer), tokenizer, data, best_metric="f1")


def test_progress_bars(tokenizer, data, capsys):
    hist = fit(tiny_model(tokenizer), tokenizer, data, **{**FAST, "epochs": 1, "progress": True})
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "val_accuracy" in err and len(hist.steps) == 6


def no_dropout_model(tokenizer, seed=0):
    model = tiny_model(tokenizer, seed)
    for m in model.modules():
        if isinstance(m, nn.Dropout): m.p = 0.0
    return model


def test_gradient_accumulation_gives_the_same_training(tokenizer, data):
    options = dict(epochs=2, batch_size=8, lr=1e-3, max_length=16, progress=False, eval_split=None)
    one, four = no_dropout_model(tokenizer), no_dropout_model(tokenizer)
    h1 = fit(one, tokenizer, data, **options)
    h4 = fit(four, tokenizer, data, grad_accum=4, **options)
    assert len(h1.steps) == len(h4.steps) == 12
    np.testing.assert_allclose(h1.losses, h4.losses, rtol=1e-4, atol=1e-5)
    # weights: Adam divides by sqrt(v), so float noise in near-zero gradients (embedding rows of absent words) moves a few
    # weights by up to lr per step either way; the function the model computes is what must agree
    ids, probs1 = predict(one, tokenizer, data["test"], return_probs=True)
    ids4, probs4 = predict(four, tokenizer, data["test"], return_probs=True)
    assert (ids == ids4).all()
    np.testing.assert_allclose(probs1, probs4, atol=2e-3)


def test_bf16_autocast_trains_on_the_cpu(tokenizer, data):
    model = tiny_model(tokenizer)
    # 10 epochs: this task sits at loss ln 2 for about 30 steps before it is learnt; after 3 epochs the "drop" was 0.0003, rounding noise
    h = fit(model, tokenizer, data, epochs=10, batch_size=8, lr=3e-3, max_length=16, progress=False, precision="bf16", device="cpu")
    assert h.config["precision"] == "bf16" and all(math.isfinite(l) for l in h.losses)
    assert np.mean(h.losses[-3:]) < np.mean(h.losses[:3]) - 0.2
    assert next(model.parameters()).dtype == torch.float32            # the weights stay float32: autocast changes the matmuls only


@pytest.mark.parametrize("kwargs,match", [(dict(grad_accum=3), "divides batch_size=8"), (dict(grad_accum=0), "grad_accum must be"),
                                          (dict(precision="int8"), "precision must be one of"),
                                          (dict(precision="fp16", device="cpu"), "needs a CUDA device")])
def test_fit_refuses_bad_accumulation_and_precision(tokenizer, data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(tiny_model(tokenizer), tokenizer, data, batch_size=8, progress=False, **kwargs)


def test_check_whole_names_the_setting_and_refuses_bools_and_fractions():
    from lightft.train import check_whole
    check_whole("epochs", 3); check_whole("k", 0, low=0); check_whole("n", np.int64(2))
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="epochs must be a whole number >= 1"): check_whole("epochs", bad)
