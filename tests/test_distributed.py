"""Data-parallel training through 🤗 Accelerate: two CPU processes (gloo, started by torchrun) train the same model as one
process with the same global batch — the same data order, the same losses and the same predictions within float tolerance.
(Weights agree to about 1e-3, not bit for bit: Adam divides by sqrt(v), which magnifies the float noise of averaging two
half-batch gradients in the near-zero gradients of unused embedding rows; see the gradient-accumulation test.)
Slow: it starts two training processes (run with pytest --slow, as make test-slow does)."""
import subprocess, sys, textwrap
from pathlib import Path
import pytest
import torch

SCRIPT = textwrap.dedent('''
    import sys, torch
    from torch import nn
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
    from lightft.core import set_seed
    from lightft.train import fit
    torch.set_num_threads(1)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "great", "bad", "awful", "the", "film", "was", "very"]
    vocab = sys.argv[2] + "/vocab.txt"; open(vocab, "w").write("\\n".join(words) + "\\n")
    tok = BertTokenizerFast(vocab_file=vocab)
    texts = [f"the film was {w}" if i % 3 else f"very {w} film" for i, w in enumerate(["good", "bad", "great", "awful"] * 8)]
    labels = [int(t.split()[-1] in ("good", "great") or t.split()[1] in ("good", "great")) for t in texts]
    feats = Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    data = DatasetDict(train=Dataset.from_dict({"text": texts, "label": labels}, features=feats))
    set_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0))
    hist = fit(model, tok, data, epochs=2, batch_size=8, lr=1e-3, max_length=16, eval_split=None, progress=False, device="cpu")
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        enc = tok(texts, padding=True, return_tensors="pt")
        with torch.no_grad(): probs = model(**enc).logits.softmax(-1)
        torch.save(dict(state={k: v.detach().cpu() for k, v in model.state_dict().items()}, probs=probs, losses=hist.losses,
                        world=int(__import__("os").environ.get("WORLD_SIZE", "1")), processes=hist.config["processes"]), sys.argv[1])
''')


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    script = tmp_path / "train.py"; script.write_text(SCRIPT)
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    single = subprocess.run([sys.executable, str(script), str(one), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = Path(sys.executable).parent / "torchrun"
    double = subprocess.run([str(launcher), "--nproc_per_node", "2", str(script), str(two), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert (a["world"], b["world"]) == (1, 2) and (a["processes"], b["processes"]) == (1, 2)   # really two processes, sharing each batch
    assert len(a["losses"]) == len(b["losses"]) == 8                     # the same number of optimizer steps: same global batch
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), atol=2e-3, rtol=0)
    torch.testing.assert_close(a["probs"], b["probs"], atol=2e-3, rtol=0)
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]: torch.testing.assert_close(a["state"][k], b["state"][k], atol=5e-3, rtol=0, msg=lambda m: f"{k}: {m}")
