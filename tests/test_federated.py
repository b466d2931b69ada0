"Tests of lightft.federated (chapter 12a): client splits, FedAvg, and the federated loop on the course's tiny BERT and small subsets of the sentiment reviews."
import json
import math

import pytest
import torch
from datasets import DatasetDict

from lightft.core import set_seed
from lightft.data import load_task
from lightft.methods import apply_method, get_method
from lightft.models import load_plm
from lightft.train import fit
from lightft.federated import (FederatedHistory, describe_clients, fedavg, federated_fit, load_global_state, split_clients,
                               tensor_bytes, update_agreement)


@pytest.fixture(scope="module")
def data():
    return load_task("sentiment")


@pytest.fixture(scope="module")
def small(data):
    return data["train"].shuffle(seed=0).select(range(96))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# --- split_clients -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("by", ["random", "domain"])
def test_split_clients_is_a_partition(data, by):
    clients = split_clients(data["train"], 7, by=by, seed=0)
    assert len(clients) == 7
    assert sum(len(c) for c in clients) == len(data["train"])
    assert sorted(t for c in clients for t in c["text"]) == sorted(data["train"]["text"])
    assert max(len(c) for c in clients) - min(len(c) for c in clients) <= (1 if by == "random" else 56)


def test_split_by_domain_keeps_domains_whole(data):
    clients = split_clients(data["train"], 5, by="domain", seed=0)
    domains = [set(c["domain"]) for c in clients]
    assert all(not (a & b) for i, a in enumerate(domains) for b in domains[i + 1:])   # no domain on two clients
    assert set.union(*domains) == set(data["train"]["domain"])
    assert [len(d) for d in domains] == [6] * 5


def test_split_clients_is_seeded(data):
    a = split_clients(data["train"], 4, by="domain", seed=0)
    b = split_clients(data["train"], 4, by="domain", seed=0)
    c = split_clients(data["train"], 4, by="domain", seed=1)
    assert [x["text"] for x in a] == [x["text"] for x in b]
    assert [set(x["domain"]) for x in a] != [set(x["domain"]) for x in c]
    r0, r1 = split_clients(data["train"], 4, seed=0), split_clients(data["train"], 4, seed=1)
    assert r0[0]["text"] != r1[0]["text"]


def test_split_clients_refuses_bad_arguments(data, small):
    with pytest.raises(ValueError, match="n_clients must be a whole number >= 1"): split_clients(small, 0)
    with pytest.raises(ValueError, match="n_clients must be a whole number"): split_clients(small, True)
    with pytest.raises(ValueError, match="more than the 96 examples"): split_clients(small, 97)
    with pytest.raises(ValueError, match="only 30 distinct values"): split_clients(data["train"], 31, by="domain")
    with pytest.raises(ValueError, match="its columns are"): split_clients(small, 2, by="shop")
    with pytest.raises(TypeError, match="one split"): split_clients(data, 2)


def test_describe_clients(data):
    rows = describe_clients(split_clients(data["train"], 5, by="domain"))
    assert [r["examples"] for r in rows] == [336] * 5
    assert [r["domains"] for r in rows] == [6] * 5
    assert all(r["positive_share"] == 0.5 for r in rows)        # every domain is balanced


# --- fedavg, bytes, agreement -----------------------------------------------------------------------------------

def test_fedavg_matches_a_hand_computation():
    a = {"w": torch.tensor([[1., 2.], [3., 4.]]), "b": torch.tensor([0., 10.])}
    b = {"w": torch.tensor([[5., 6.], [7., 8.]]), "b": torch.tensor([4., -2.])}
    c = {"w": torch.zeros(2, 2), "b": torch.tensor([8., 0.])}
    avg = fedavg([a, b, c], [2, 1, 1])
    torch.testing.assert_close(avg["w"], torch.tensor([[7 / 4, 10 / 4], [13 / 4, 16 / 4]]))   # (2·1 + 5 + 0)/4, ...
    torch.testing.assert_close(avg["b"], torch.tensor([12 / 4, 18 / 4]))
    torch.testing.assert_close(fedavg([a, b])["w"], torch.tensor([[3., 4.], [5., 6.]]))
    assert torch.equal(fedavg([a], [9])["b"], a["b"])
    assert fedavg([{"x": torch.ones(3, dtype=torch.float16)}] * 2)["x"].dtype == torch.float16


def test_fedavg_refuses_mismatched_states():
    a, b = {"w": torch.ones(2)}, {"w": torch.ones(3)}
    with pytest.raises(ValueError, match="shape"): fedavg([a, b])
    with pytest.raises(ValueError, match="same names"): fedavg([a, {"v": torch.ones(2)}])
    with pytest.raises(ValueError, match="one weight"): fedavg([a, a], [1, 2, 3])
    with pytest.raises(ValueError, match="positive sum"): fedavg([a, a], [1, -1])
    with pytest.raises(ValueError, match="positive sum"): fedavg([a, a], [0, float("nan")])
    with pytest.raises(ValueError, match="non-empty"): fedavg([])


def test_tensor_bytes():
    assert tensor_bytes({"a": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.bfloat16)}) == 48 + 10


def test_update_agreement():
    before = {"w": torch.zeros(3)}
    same = [{"w": torch.tensor([1., 2., 3.])}, {"w": torch.tensor([2., 4., 6.])}]
    assert math.isclose(update_agreement(before, same, [1, 1]), 1.0, abs_tol=1e-9)
    orthogonal = [{"w": torch.tensor([1., 0., 0.])}, {"w": torch.tensor([0., 1., 0.])}]
    assert math.isclose(update_agreement(before, orthogonal), 1 / math.sqrt(2), abs_tol=1e-9)   # each at 45° to the mean
    opposite = [{"w": torch.tensor([1., 0., 0.])}, {"w": torch.tensor([-1., 0., 0.])}]
    assert math.isclose(update_agreement(before, opposite, [1, 2]), 1 / 3, abs_tol=1e-9)


# --- federated_fit ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "full"])
def test_one_client_one_round_is_plain_fit(small, method):
    fed = federated_fit("tiny-bert", method, [small], 1, 2, max_length=32, seed=5, progress=False)
    model, tokenizer = load_plm("tiny-bert", seed=5, num_labels=2, label_names=["negative", "positive"])
    set_seed(5); apply_method(model, method)
    fit(model, tokenizer, {"train": small}, epochs=2, lr=get_method(method)[0].lr, max_length=32, seed=5, eval_split=None, progress=False)
    want, got = trainable(model), trainable(fed.model)
    assert want.keys() == got.keys()
    assert all(torch.equal(got[n], want[n]) for n in want)


def test_two_clients_are_averaged_by_examples(small):
    clients = [small.select(range(64)), small.select(range(64, 96))]
    fed = federated_fit("tiny-bert", "lora", clients, 1, 1, max_length=32, seed=0, progress=False)
    model, tokenizer = load_plm("tiny-bert", seed=0, num_labels=2, label_names=["negative", "positive"])
    set_seed(0); apply_method(model, "lora")
    start, states = trainable(model), []
    for k, client in enumerate(clients):                         # each client from the same global weights, seed 0 + k
        load_global_state(model, start)
        fit(model, tokenizer, {"train": client}, epochs=1, lr=1e-3, max_length=32, seed=k, eval_split=None, progress=False)
        states.append(trainable(model))
    want = fedavg(states, [64, 32])
    assert all(torch.equal(trainable(fed.model)[n], want[n]) for n in want)
    assert not torch.equal(want["classifier.weight"], states[0]["classifier.weight"])
    assert fed.clients == [64, 32]


def test_frozen_body_unchanged_and_only_trainable_bytes_move(data, small):
    clients = split_clients(small, 2, by="domain")
    lora = federated_fit("tiny-bert", "lora", clients, 2, 1, eval_data=data["test"].select(range(32)), max_length=32, progress=False)
    fresh, _ = load_plm("tiny-bert", seed=0)
    after = dict(lora.model.named_parameters())
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert len(frozen) > 10
    for n, p in fresh.named_parameters():
        if n in frozen: assert torch.equal(after[n].detach().cpu(), p), n
    sent = tensor_bytes(trainable(lora.model))
    assert [r["bytes_per_client"] for r in lora.rounds] == [sent, sent] and sent == 4 * lora.trainable
    assert [r["cumulative_bytes"] for r in lora.rounds] == [2 * sent, 4 * sent]
    full = federated_fit("tiny-bert", "full", clients, 1, 1, max_length=32, progress=False)
    assert full.final["bytes_per_client"] == 4 * full.total and full.trainable == full.total
    assert sent * 100 < full.final["bytes_per_client"]
    assert all(0 <= r["eval_accuracy"] <= 1 and r["eval_n"] == 32 for r in lora.rounds)
    assert "eval_accuracy" not in full.final                       # no eval_data: no evaluation


def test_history_round_trip_and_plot(small):
    import matplotlib
    matplotlib.use("Agg")
    h = federated_fit("tiny-bert", "bitfit", split_clients(small, 2), 1, 1, eval_data=small.select(range(16)), max_length=32, progress=False)
    again = FederatedHistory.from_dict(json.loads(json.dumps(h.to_dict())))
    assert again.rounds == h.rounds and again.config == h.config and again.model is None
    assert "bitfit: 1 rounds, 2 clients" in repr(h)
    assert h.plot().axes[0].get_xlabel() == "round"


def test_federated_fit_refuses_bad_arguments(data, small):
    clients = split_clients(small, 2)
    with pytest.raises(ValueError, match="rounds must be a whole number >= 1"): federated_fit("tiny-bert", "lora", clients, 0, 1)
    with pytest.raises(ValueError, match="local_epochs must be a whole number >= 1"): federated_fit("tiny-bert", "lora", clients, 1, True)
    with pytest.raises(ValueError, match="non-empty list of Datasets"): federated_fit("tiny-bert", "lora", small, 1, 1)
    with pytest.raises(ValueError, match="non-empty list of Datasets"): federated_fit("tiny-bert", "lora", [], 1, 1)
    with pytest.raises(TypeError, match="client 1: expected a datasets.Dataset"): federated_fit("tiny-bert", "lora", [small, DatasetDict(train=small)], 1, 1)
    with pytest.raises(ValueError, match="client 1 has no examples"): federated_fit("tiny-bert", "lora", [small, small.select([])], 1, 1)
    with pytest.raises(KeyError, match="unknown method"): federated_fit("tiny-bert", "nosuch", clients, 1, 1)
    with pytest.raises(ValueError, match="r must be a whole number"): federated_fit("tiny-bert", "lora", clients, 1, 1, options={"r": 0})
    with pytest.raises(ValueError, match="lr must be a number > 0"): federated_fit("tiny-bert", "lora", clients, 1, 1, lr=-1)
    with pytest.raises(TypeError, match="eval_data must be one datasets.Dataset"): federated_fit("tiny-bert", "lora", clients, 1, 1, eval_data=data)
    with pytest.raises(ValueError, match="trains classifiers"): federated_fit("tiny-bert", "lora", [small.remove_columns("label")], 1, 1)


def test_plain_integer_labels_get_a_head_of_the_right_size(small):
    from datasets import Value
    plain = small.select(range(24)).cast_column("label", Value("int64"))
    h = federated_fit("tiny-bert", "head", split_clients(plain, 2), rounds=1, local_epochs=1, batch_size=8, max_length=32, progress=False)
    assert h.model.config.num_labels == 2 and len(h.rounds) == 1
