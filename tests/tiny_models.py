"""Tiny random BERT classifiers and a batch for them, shared by the tests of the fine-tuning methods (test_adapters.py,
test_lora.py): small enough to build dozens of models in seconds, with dropout off so that every output is reproducible."""
import torch
from transformers import BertConfig, BertForSequenceClassification
from lightft.core import set_seed

VOCAB = 60   # token ids of `inputs` lie in 1..VOCAB-1


def tiny_bert_config(**changes)->BertConfig:
    "A 32-wide BERT config with 4 heads and no dropout; `changes` set other fields, such as num_hidden_layers or num_labels."
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=24, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertConfig(**{**fields, **changes})


def tiny_bert(config:BertConfig, seed:int=0)->BertForSequenceClassification:
    "A BERT classifier of `config` with random weights drawn from `seed` (the same seed, the same model), in eval mode."
    set_seed(seed)
    return BertForSequenceClassification(config).eval()


def inputs(seed:int=1)->dict:
    "A batch of 4 random sequences of 12 tokens; the second is padded after 8 tokens."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (4, 12), generator=g)
    mask = torch.ones_like(ids); mask[1, 8:] = 0
    return dict(input_ids=ids, attention_mask=mask)
