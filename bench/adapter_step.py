"""Bottleneck-adapter training step: ours (lightft.adapters) against AdapterHub (`adapters`), full fine-tuning for reference.

Pairs with the same architecture, measured on the same model, batch and optimizer (AdamW, adapters + classifier trained):
  ours pfeiffer                     vs  AdapterHub seq_bn          (one adapter per layer, ReLU, reduction factor 16)
  ours houlsby, non_linearity=swish vs  AdapterHub double_seq_bn   (two adapters per layer, swish, reduction factor 16)
Time: seconds per training step (forward, backward, optimizer step) over many one-step repeats; all variants live in
one process and run interleaved (the order rotates every repeat), so they share the machine's load; the goal is judged
on the fastest repeat of each (the one least disturbed by other processes), and the medians are reported next to it.
Memory: peak process RSS (peak allocated CUDA memory on a GPU) over a few training steps, each variant in a fresh
subprocess, so that one variant's allocations cannot hide another's.

    python bench/adapter_step.py            # minilm-l6 if installed, else a random BERT of its shape
    python bench/adapter_step.py --quick    # smoke run on a tiny random BERT (seconds)
    python bench/adapter_step.py --json nbs/results/adapter_step.json
"""
from __future__ import annotations
import argparse, datetime, json, os, platform, statistics, subprocess, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
from transformers import BertConfig, BertForSequenceClassification

# variant -> (library, our preset or AdapterHub config name, our overrides)
VARIANTS = {
    "ours pfeiffer": ("lightft", "pfeiffer", {}),
    "hub seq_bn": ("adapters", "seq_bn", {}),
    "ours houlsby": ("lightft", "houlsby", {"non_linearity": "swish"}),
    "hub double_seq_bn": ("adapters", "double_seq_bn", {}),
    "full": ("full", None, {}),
}
PAIRS = [("ours pfeiffer", "hub seq_bn"), ("ours houlsby", "hub double_seq_bn")]
REDUCTION_FACTOR = 16


def build_model(quick:bool, seed:int=0):
    "(model, description): all-MiniLM-L6-v2 with a fresh 2-class head if installed, else a random BERT of its shape."
    torch.manual_seed(seed)
    if quick:
        config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            max_position_embeddings=128, num_labels=2)
        return BertForSequenceClassification(config), "tiny random BERT (2 layers, hidden 64)"
    try:
        from lightft.models import load_plm
        return load_plm("minilm-l6", num_labels=2, seed=seed)[0], "minilm-l6 (all-MiniLM-L6-v2 via lightft.models.load_plm)"
    except Exception as e:        # not installed: the same shape with random weights times the same
        config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                            max_position_embeddings=512, num_labels=2)
        return BertForSequenceClassification(config), f"random BERT shaped like MiniLM-L6 (minilm-l6 unavailable: {type(e).__name__})"


def prepare(variant:str, quick:bool):
    "The model of `variant`, ready to train, its AdamW optimizer, its trainable parameter count and the model description."
    library, config, overrides = VARIANTS[variant]
    model, description = build_model(quick)
    if library == "lightft":
        from lightft.methods import apply_method
        model = apply_method(model, config, reduction_factor=REDUCTION_FACTOR, **overrides)
    elif library == "adapters":
        import adapters, logging
        logging.getLogger("adapters").setLevel(logging.ERROR)     # its "adapters available but none are activated" notes
        adapters.init(model)
        model.add_adapter("bench", config=adapters.AdapterConfig.load(config, reduction_factor=REDUCTION_FACTOR))
        model.train_adapter("bench")          # freezes the model; the adapter and the classifier train
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4), sum(p.numel() for p in trainable), description


def make_batch(batch_size:int, seq_len:int, vocab:int, device):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids); mask[: batch_size // 2, seq_len * 3 // 4:] = 0     # some padding, as in real batches
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=torch.arange(batch_size) % 2).items()}


def train_step(model, optimizer, batch):
    model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)


def synchronize(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def time_steps(args)->dict:
    "Seconds per step of every variant, for every repeat; variants interleaved, the order rotating each repeat."
    device = torch.device(args.device)
    prepared = {v: prepare(v, args.quick) for v in VARIANTS}
    for model, *_ in prepared.values(): model.to(device)
    batch = make_batch(args.batch_size, args.seq_len, prepared["full"][0].config.vocab_size, device)
    for model, optimizer, *_ in prepared.values():
        for _ in range(args.warmup): train_step(model, optimizer, batch)
    names, times = list(VARIANTS), {v: [] for v in VARIANTS}
    for r in range(args.repeats):
        for v in names[r % len(names):] + names[:r % len(names)]:
            model, optimizer, *_ = prepared[v]
            synchronize(device); start = time.perf_counter()
            for _ in range(args.steps): train_step(model, optimizer, batch)
            synchronize(device); times[v].append((time.perf_counter() - start) / args.steps)
    return dict(seconds_per_step=times, trainable={v: p[2] for v, p in prepared.items()}, model=prepared["full"][3])


def memory_child(args):
    "In a fresh subprocess: prepare one variant, train a few steps, print its peak memory as JSON."
    torch.set_num_threads(args.threads)
    from lightft.core import measure
    device = torch.device(args.device)
    model, optimizer, trainable, _ = prepare(args.memory_of, args.quick)
    model.to(device)
    batch = make_batch(args.batch_size, args.seq_len, model.config.vocab_size, device)
    with measure(device) as m:
        for _ in range(max(3, args.warmup)): train_step(model, optimizer, batch)
    print(json.dumps(dict(peak_mb=m.peak_mb, start_mb=m.start_bytes / 2**20, delta_mb=m.delta_mb, trainable=trainable)))


def measure_memory(args)->dict:
    out = {}
    for v in VARIANTS:
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-of", v, "--threads", str(args.threads), "--device", args.device,
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--warmup", str(args.warmup)]
        res = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if res.returncode != 0: raise RuntimeError(f"the memory run of {v!r} failed:\n{res.stderr[-3000:]}")
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny random BERT, a few steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 2, or 1 with --quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # a full-size step takes about a second on a laptop CPU; many one-step repeats keep `make bench` to minutes and give
    # the minimum (the repeat least disturbed by other processes) enough chances
    if args.steps is None: args.steps = 2 if args.quick else 1
    if args.repeats is None: args.repeats = 3 if args.quick else 10
    if args.quick: args.batch_size, args.seq_len = min(args.batch_size, 8), min(args.seq_len, 32)
    if args.threads is None: args.threads = 1 if args.quick else min(2, os.cpu_count() or 1)
    if args.memory_of: return memory_child(args)
    torch.set_num_threads(args.threads)

    timing = time_steps(args)
    memory = measure_memory(args)
    median = {v: statistics.median(t) for v, t in timing["seconds_per_step"].items()}
    best = {v: min(t) for v, t in timing["seconds_per_step"].items()}
    ratios = {}
    for ours, hub in PAIRS:
        # On a shared machine other processes come and go: the minimum over repeats is the least disturbed measurement
        # (timeit's advice) and decides the goal; the ratio of medians and the median of per-repeat ratios are reported too.
        ratios[f"time {ours}/{hub} (min)"] = best[ours] / best[hub]
        ratios[f"time {ours}/{hub} (paired median)"] = statistics.median(
            a / b for a, b in zip(timing["seconds_per_step"][ours], timing["seconds_per_step"][hub]))
        ratios[f"time {ours}/{hub}"] = median[ours] / median[hub]
        ratios[f"peak memory {ours}/{hub}"] = memory[ours]["peak_mb"] / memory[hub]["peak_mb"]
        ratios[f"peak memory {ours}/full"] = memory[ours]["peak_mb"] / memory["full"]["peak_mb"]
    print(f"model: {timing['model']}; batch {args.batch_size} x {args.seq_len} tokens; {args.threads} threads on {args.device}; "
          f"median of {args.repeats} interleaved repeats x {args.steps} steps; reduction factor {REDUCTION_FACTOR}")
    print(f"{'variant':<20}{'trainable':>12}{'s/step':>10}{'min':>9}{'max':>9}{'peak MiB':>11}{'+MiB training':>15}")
    for v in VARIANTS:
        t = timing["seconds_per_step"][v]
        print(f"{v:<20}{timing['trainable'][v]:>12,}{median[v]:>10.4f}{min(t):>9.4f}{max(t):>9.4f}"
              f"{memory[v]['peak_mb']:>11.0f}{memory[v]['delta_mb']:>15.0f}")
    for ours, hub in PAIRS:
        t, m, f = ratios[f"time {ours}/{hub} (min)"], ratios[f"peak memory {ours}/{hub}"], ratios[f"peak memory {ours}/full"]
        print(f"{ours} vs {hub}: time ratio ours/AdapterHub, best repeats {t:.3f} (goal <= 1.05: {'met' if t <= 1.05 else 'NOT met'}; "
              f"medians {ratios[f'time {ours}/{hub}']:.3f}, median of paired repeats {ratios[f'time {ours}/{hub} (paired median)']:.3f}); "
              f"peak memory ours/AdapterHub {m:.3f}; ours/full {f:.3f} (goal < 1: {'met' if f < 1 else 'NOT met'})")
        if timing["trainable"][ours] != timing["trainable"][hub]:
            print(f"  note: trainable parameters differ ({timing['trainable'][ours]:,} vs {timing['trainable'][hub]:,})")
    if args.json:
        import lightft
        result = dict(date=datetime.datetime.now().isoformat(timespec="minutes"), machine=f"{platform.platform(terse=True)}, "
                      f"{os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, {args.device}",
                      lightft=lightft.__version__, load_average=os.getloadavg(), model=timing["model"], args={k: v for k, v in vars(args).items() if k != "memory_of"},
                      seconds_per_step=timing["seconds_per_step"], median=median, min=best, trainable=timing["trainable"],
                      memory=memory, ratios=ratios)
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f: json.dump(result, f, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
