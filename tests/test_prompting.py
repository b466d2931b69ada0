"Chapters 8 and 8a: cloze prompts, in-context scoring, soft prompts and prefixes — on tiny random models, checked against peft."
import copy
import pytest
import torch
from transformers import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast, LlamaConfig,
                          LlamaForCausalLM)
from lightft.core import set_seed, param_report
from lightft.methods import apply_method
from lightft.prompting import (Template, Verbalizer, expand_masks, ClozeClassifier, cloze_scores, contextual_calibration,
                               cloze_tokenize, few_shot_prompt, icl_scores, icl_classify)
from lightft.prompt_tuning import (add_soft_prompt, prompt_tuning, remove_soft_prompt, add_prefix, prefix_tuning, remove_prefix,
                                   PrefixSelfAttention, NextWordClassifier, prompt_tokenize)

WORDS = ("the food was good bad great awful it all in . ! , : review sentiment positive negative staff slow friendly cold "
         "we loved hated service n / a won ##der ##ful ##s very really").split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(WORDS))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


@pytest.fixture(scope="module")
def lm_tokenizer(tokenizer):
    "The same vocabulary with a causal LM's habit: a start token in front, nothing at the end."
    from tokenizers.processors import TemplateProcessing
    lm_tok = copy.deepcopy(tokenizer)
    lm_tok._tokenizer.post_processor = TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", VOCAB.index("[CLS]"))])
    return lm_tok


def bert_config(**kw):
    return BertConfig(**{**dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=48, max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0), **kw})


def mlm(seed=0):
    set_seed(seed); return BertForMaskedLM(bert_config()).eval()


def classifier(seed=0, **kw):
    set_seed(seed); return BertForSequenceClassification(bert_config(**kw)).eval()


def llama(seed=0):
    set_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)).eval()


TEXTS = ["the food was good", "the staff were slow and the food was cold, we hated it", "friendly service"]


def batch(seed=1, pad=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(VOCAB), (3, 9), generator=g)
    mask = torch.ones_like(ids)
    if pad: ids[0, 6:], mask[0, 6:] = 0, 0
    return ids, mask


# ------------------------------------------------------------------ cloze
def test_template_encode_keeps_the_mask(tokenizer):
    t = Template("{text} all in all, it was [MASK].")
    ids = t.encode(tokenizer, "the food was good " * 30, max_length=16)
    assert len(ids) == 16 and ids.count(tokenizer.mask_token_id) == 1
    assert tokenizer.convert_ids_to_tokens(ids)[-3:] == ["[MASK]", ".", "[SEP]"]
    assert t.encode(tokenizer, "the [MASK] food").count(tokenizer.mask_token_id) == 1      # a literal mask in the text is dropped
    assert t.fill("x") == "x all in all, it was [MASK]."
    for bad in ("no slots", "{text} {text} [MASK]", "{text} [MASK] [MASK]"):
        with pytest.raises(ValueError, match="exactly one"): Template(bad)
    with pytest.raises(ValueError, match="no room"): t.encode(tokenizer, "food", max_length=8)


def test_verbalizer(tokenizer):
    v = Verbalizer([("bad", "awful"), "wonderful"])
    assert v.words == (("bad", "awful"), ("wonderful",)) and len(v) == 2
    assert [len(p) for p in v.pieces(tokenizer)[1]] == [3] and v.longest(tokenizer) == 3
    with pytest.raises(ValueError): Verbalizer(["good"])


@pytest.mark.parametrize("n", [1, 2, 4])
def test_expand_masks(n):
    ids = torch.tensor([[2, 9, 4, 8, 3, 0, 0], [2, 4, 9, 9, 9, 9, 3]])
    mask = (ids != 0).long()
    wide, wide_mask, at = expand_masks(ids, mask, 4, n)
    assert wide.shape == (2, 7 + n - 1)
    for row, old, m in zip(wide.tolist(), ids.tolist(), mask.tolist()):
        p = old.index(4)
        assert row == old[:p] + [4] * n + old[p + 1:]
    assert wide_mask.sum().item() == mask.sum().item() + 2 * (n - 1)
    assert bool((wide.gather(1, at) == 4).all())
    with pytest.raises(ValueError, match="exactly one"): expand_masks(torch.tensor([[2, 9, 3]]), torch.ones(1, 3), 4, n)


def test_cloze_scores_sum_pieces_and_words(tokenizer):
    model, t = mlm(), Template("{text} it was [MASK].")
    v = Verbalizer([("bad", "awful"), "wonderful"])
    scores = cloze_scores(model, tokenizer, TEXTS, t, v)
    ids = torch.tensor([t.encode(tokenizer, TEXTS[1])])
    with torch.no_grad():
        def word(pieces):
            wide, m, at = expand_masks(ids, torch.ones_like(ids), tokenizer.mask_token_id, len(pieces))
            return model(input_ids=wide, attention_mask=m).logits[0, at[0]].log_softmax(-1)[torch.arange(len(pieces)), pieces].sum()
        p = v.pieces(tokenizer)
        expected = [torch.logsumexp(torch.stack([word(w) for w in p[0]]), 0), word(p[1][0])]
    torch.testing.assert_close(scores[1], torch.stack(expected), atol=1e-4, rtol=1e-4)
    # batching (and its padding) changes nothing
    single = torch.cat([cloze_scores(model, tokenizer, [x], t, v) for x in TEXTS])
    torch.testing.assert_close(scores, single, atol=1e-4, rtol=1e-4)


def test_cloze_head_shortcut_matches_full_logits(tokenizer):
    model, t = mlm(), Template("{text} it was [MASK].")
    clf = ClozeClassifier(model, tokenizer, Verbalizer(("bad", "good")))
    ids = torch.tensor([t.encode(tokenizer, TEXTS[0])])
    at = (ids == tokenizer.mask_token_id).int().argmax(1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(clf.mask_logits(ids, torch.ones_like(ids), at)[0, 0], model(input_ids=ids).logits[0, at[0, 0]], atol=1e-5, rtol=1e-5)


def test_cloze_classifier_trains(tokenizer):
    from datasets import Dataset
    model, t, v = mlm(), Template("{text} it was [MASK]."), Verbalizer(("bad", "wonderful"))
    data = cloze_tokenize(Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1]}), tokenizer, t, v, max_length=12)
    assert data.column_names == ["input_ids", "attention_mask", "labels"]
    assert all(len(i) <= 12 - 2 and i.count(tokenizer.mask_token_id) == 1 for i in data["input_ids"])   # room for 3 masks
    clf = ClozeClassifier(model, tokenizer, v).train()
    ids = torch.tensor([data["input_ids"][0]])
    out = clf(input_ids=ids, labels=torch.tensor([1]))
    out.loss.backward()
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_contextual_calibration():
    free = torch.tensor([[0.2, 0.8], [0.4, 0.6]]).log()
    mean = free.exp().mean(0, keepdim=True).log()            # an input the model treats like the content-free ones, on average
    torch.testing.assert_close(contextual_calibration(mean, free).exp(), torch.tensor([[0.5, 0.5]]))
    scores = torch.randn(5, 3)
    torch.testing.assert_close(contextual_calibration(scores, scores[:2]), contextual_calibration(scores + 7, scores[:2] - 3))


# ------------------------------------------------------------------ in-context learning
def test_few_shot_prompt():
    p = few_shot_prompt("cold food", [("good food", 1), ("slow service", 0)], instruction="Classify.", label_words=("neg", "pos"))
    assert p == "Classify.\n\nReview: good food\nSentiment: pos\n\nReview: slow service\nSentiment: neg\n\nReview: cold food\nSentiment:"
    assert few_shot_prompt("x") == "Review: x\nSentiment:"


@pytest.mark.parametrize("k", [0, 2])
@pytest.mark.parametrize("words", [["negative", "positive"], ["negative", "positive really"]])
def test_icl_scores_reuse_prefix_and_match_a_manual_computation(lm_tokenizer, k, words):
    model = llama()
    demos = [("good food", 1), ("slow service", 0)][:k]
    cached = icl_scores(model, lm_tokenizer, TEXTS, words, demos, batch_size=2)
    plain = icl_scores(model, lm_tokenizer, TEXTS, words, demos, reuse_prefix=False)
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=1e-4)
    # by hand: the whole prompt, one text at a time, then the word's tokens
    shared = few_shot_prompt("", demos, label_words=words).rsplit("Review: ", 1)[0]
    for i, text in enumerate(TEXTS):
        for label, w in enumerate(words):
            prompt = lm_tokenizer(shared)["input_ids"] + lm_tokenizer(f"Review: {text}\nSentiment:", add_special_tokens=False)["input_ids"]
            target = lm_tokenizer(" " + w, add_special_tokens=False)["input_ids"]
            with torch.no_grad(): logp = model(torch.tensor([prompt + target])).logits[0].log_softmax(-1)
            expected = sum(logp[len(prompt) - 1 + j, t] for j, t in enumerate(target))
            assert abs(cached[i, label].item() - expected.item()) < 1e-4
    assert icl_classify(model, lm_tokenizer, TEXTS, words, demos) == cached.argmax(-1).tolist()
    assert len(icl_classify(model, lm_tokenizer, TEXTS, words, demos, calibrate=True)) == len(TEXTS)


def test_next_word_classifier_matches_zero_shot_icl(lm_tokenizer):
    from datasets import Dataset
    model = llama()
    data = prompt_tokenize(Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1]}), lm_tokenizer)
    rows = data["input_ids"]
    longest = max(map(len, rows))
    ids = torch.tensor([r + [0] * (longest - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (longest - len(r)) for r in rows])
    reader = NextWordClassifier(model, lm_tokenizer, ["negative", "positive"])
    with torch.no_grad(): logits = reader(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, icl_scores(model, lm_tokenizer, TEXTS, ["negative", "positive"]).log_softmax(-1), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one token"): NextWordClassifier(model, lm_tokenizer, ["negative", "positive really"])
    # truncation keeps the end of the prompt
    short = prompt_tokenize(Dataset.from_dict({"text": ["the food was good " * 20]}), lm_tokenizer, max_length=12)["input_ids"][0]
    end = lm_tokenizer("\nSentiment:", add_special_tokens=False)["input_ids"]
    assert len(short) == 12 and short[-len(end):] == end


# ------------------------------------------------------------------ soft prompts and prefixes
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_padding_and_positional_calls(method):
    model = apply_method(classifier(), method, n_tokens=3)
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:1, :6]).logits, model(input_ids=ids[:1], attention_mask=mask[:1]).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(ids).logits, classifier()(ids).logits)


def test_soft_prompt_init_and_copies():
    model = add_soft_prompt(classifier(), n_tokens=4, init_ids=[7, 8])
    table = model.get_input_embeddings().weight
    torch.testing.assert_close(model.soft_prompt.embedding, table[[7, 8, 7, 8]])
    rnd = add_soft_prompt(classifier(), n_tokens=4, init="random", seed=3)
    assert rnd.soft_prompt.embedding.abs().max() <= 0.5
    torch.testing.assert_close(rnd.soft_prompt.embedding, add_soft_prompt(classifier(), n_tokens=4, init="random", seed=3).soft_prompt.embedding)
    twin = copy.deepcopy(model)
    with torch.no_grad(): twin.soft_prompt.embedding.add_(torch.randn(4, 32))   # (a constant shift would vanish in LayerNorm)
    ids, _ = batch()
    assert not torch.allclose(model(ids).logits, twin(ids).logits)          # a copy has its own prompt
    with pytest.raises(ValueError, match="init"): add_soft_prompt(classifier(), init="words")
    with pytest.raises(ValueError, match="positions"): model(torch.randint(5, 20, (1, 62)))


@pytest.mark.parametrize("n", [1, 4])
def test_prompt_tuning_matches_peft(n):
    from peft import get_peft_model, PromptTuningConfig, TaskType
    theirs = get_peft_model(classifier(), PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=n)).eval()
    ours = prompt_tuning(classifier(), n_tokens=n).eval()
    assert theirs.get_nb_trainable_parameters()[0] == param_report(ours).trainable == n * 32 + 66
    with torch.no_grad():
        ours.soft_prompt.embedding.copy_(theirs.prompt_encoder["default"].embedding.weight)
        ours.classifier.load_state_dict(theirs.base_model.classifier.modules_to_save["default"].state_dict())
        ids, mask = batch()
        types = (torch.arange(9) > 4).long().expand(3, -1)
        torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask, token_type_ids=types).logits,
                                   theirs(input_ids=ids, attention_mask=mask, token_type_ids=types).logits, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 4])
def test_prefix_tuning_matches_peft(n):
    from peft import get_peft_model, PrefixTuningConfig, TaskType
    theirs = get_peft_model(classifier(), PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=n)).eval()
    ours = prefix_tuning(classifier(), n_tokens=n).eval()
    assert theirs.get_nb_trainable_parameters()[0] == param_report(ours).trainable == 2 * n * 32 * 2 + 66
    table = theirs.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        for i, layer in enumerate(ours.bert.encoder.layer):
            layer.attention.self.prefix_keys.copy_(table[:, 2 * i * 32:(2 * i + 1) * 32])
            layer.attention.self.prefix_values.copy_(table[:, (2 * i + 1) * 32:(2 * i + 2) * 32])
        ours.classifier.load_state_dict(theirs.base_model.classifier.modules_to_save["default"].state_dict())
        ids, mask = batch()
        positions = torch.arange(n, n + 9).expand(3, -1)            # peft's prefix is a cache: the text's positions start at n
        torch.testing.assert_close(ours(input_ids=ids, attention_mask=mask, position_ids=positions).logits,
                                   theirs(input_ids=ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_empty_prefix_is_the_original_attention(implementation):
    config = bert_config()
    config._attn_implementation = implementation
    set_seed(0)
    reference = BertForSequenceClassification(config).eval()
    assert type(reference.bert.encoder.layer[0].attention.self).__name__ == {"eager": "BertSelfAttention", "sdpa": "BertSdpaSelfAttention"}[implementation]
    wrapped = copy.deepcopy(reference)        # a prefix of length 0, wrapped by hand (add_prefix asks for n_tokens >= 1)
    for layer in wrapped.bert.encoder.layer: layer.attention.self = PrefixSelfAttention(layer.attention.self, 0)
    assert all(isinstance(layer.attention.self, PrefixSelfAttention) for layer in wrapped.bert.encoder.layer)
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(input_ids=ids, attention_mask=mask).logits, reference(input_ids=ids, attention_mask=mask).logits,
                                   atol=1e-5, rtol=1e-5)
        out = wrapped(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert out.attentions[0].shape == (3, 4, 9, 9)


def test_prefix_vocab_init_copies_word_keys_and_values():
    words = [7, 8, 9]
    model = add_prefix(classifier(), n_tokens=3, init_ids=words)
    with torch.no_grad(): first = classifier().bert.embeddings(input_ids=torch.tensor([words]))
    attention = model.bert.encoder.layer[0].attention.self
    torch.testing.assert_close(attention.prefix_keys, attention.base_layer.key(first)[0])
    torch.testing.assert_close(attention.prefix_values, attention.base_layer.value(first)[0])
    with pytest.raises(ValueError, match="already"): add_prefix(model)


def test_prefix_refuses_models_without_bert_attention():
    with pytest.raises(TypeError, match="self-attention"): add_prefix(llama())


def test_soft_prompt_on_a_causal_lm():
    model = prompt_tuning(llama(), n_tokens=3, train_head=False)
    assert param_report(model).trainable == 3 * 32
    ids = torch.randint(5, len(VOCAB), (2, 7))
    out = model(input_ids=ids, labels=ids)                  # per-token labels are padded with -100 for the virtual tokens
    assert out.logits.shape == (2, 10, len(VOCAB)) and torch.isfinite(out.loss)
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is not None] == ["soft_prompt.embedding"]


def test_next_word_classifier_with_a_soft_prompt_reads_the_last_token(lm_tokenizer):
    lm = prompt_tuning(llama(), n_tokens=2, train_head=False)
    reader = NextWordClassifier(lm, lm_tokenizer, ["negative", "positive"])
    ids = torch.tensor(lm_tokenizer(["review : the food was good", "review : slow"], padding=True)["input_ids"])
    mask = (ids != 0).long()
    with torch.no_grad():
        logits = reader(input_ids=ids, attention_mask=mask).logits
        alone = reader(input_ids=ids[1:, :int(mask[1].sum())]).logits
    torch.testing.assert_close(logits[1:], alone, atol=1e-5, rtol=1e-5)
