"""What the training-step benchmarks (`adapter_step.py`, `peft_step.py`) share: the model, the batch, the step, its timing and
its peak memory.

Each benchmark brings its own `prepare(variant, quick)`, which returns `(model, optimizer, trainable count, description)`
(`ready_to_train` builds the last three from a model), and its own table of results. This module is not a benchmark:
`make bench` skips files whose name starts with `_`.

Time: every repeat runs `steps` training steps of each variant in turn, all in one process, so the variants share the
machine's load. Memory: each variant trains a few steps in a fresh subprocess (the benchmark script run again with
`--memory-of VARIANT`), so that one variant's allocations cannot hide another's.
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
from transformers import BertConfig, BertForSequenceClassification


def parse_args(description:str, # the benchmark's one-line summary, shown by --help
               argv:list|None=None, # the command line; default: sys.argv[1:]
               full_repeats:int=10, # timed repeats per variant when neither --quick nor --repeats is given
              )->argparse.Namespace:
    "The command-line options every training-step benchmark takes, with the defaults that depend on --quick filled in."
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny random BERT, a few steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 2, or 1 with --quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)   # set by `measure_memory` for its subprocesses
    args = p.parse_args(argv)
    # a full-size step takes about a second on a laptop CPU; many one-step repeats keep `make bench` to minutes and give
    # the minimum (the repeat least disturbed by other processes) enough chances
    if args.steps is None: args.steps = 2 if args.quick else 1
    if args.repeats is None: args.repeats = 3 if args.quick else full_repeats
    if args.quick: args.batch_size, args.seq_len = min(args.batch_size, 8), min(args.seq_len, 32)
    if args.threads is None: args.threads = 1 if args.quick else min(2, os.cpu_count() or 1)
    return args


def build_model(quick:bool, # a tiny random BERT for smoke runs
                seed:int=0, # seed of the random weights and of the fresh classification head
               )->tuple:
    "(model, description): all-MiniLM-L6-v2 with a fresh 2-class head if installed, else a random BERT of its shape."
    torch.manual_seed(seed)
    if quick:
        config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            max_position_embeddings=128, num_labels=2)
        return BertForSequenceClassification(config), "tiny random BERT (2 layers, hidden 64)"
    try:
        from lightft.models import load_plm
        model, _ = load_plm("minilm-l6", task="classification", num_labels=2, seed=seed)
        return model, "minilm-l6 (all-MiniLM-L6-v2 via lightft.models.load_plm)"
    except Exception as e:        # not installed, or the models chapter is missing: the same shape with random weights times the same
        config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                            max_position_embeddings=512, num_labels=2)
        return BertForSequenceClassification(config), f"random BERT shaped like MiniLM-L6 (minilm-l6 unavailable: {type(e).__name__})"


def ready_to_train(model)->tuple:
    "(model, optimizer, trainable count): `model` in training mode and an AdamW over the parameters that require gradients."
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(trainable, lr=1e-4), sum(p.numel() for p in trainable)


def make_batch(batch_size:int, seq_len:int, vocab:int, device)->dict:
    "A fixed random batch of token ids with some padding and alternating labels 0, 1, on `device`."
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (batch_size, seq_len), generator=g)
    mask = torch.ones_like(ids); mask[: batch_size // 2, seq_len * 3 // 4:] = 0     # some padding, as in real batches
    return {k: v.to(device) for k, v in dict(input_ids=ids, attention_mask=mask, labels=torch.arange(batch_size) % 2).items()}


def train_step(model, optimizer, batch):
    "One training step: forward, backward, optimizer step."
    model(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)


def synchronize(device):
    "Wait for the GPU's queued work, so that a clock read afterwards includes it (nothing to wait for on the CPU)."
    if device.type == "cuda": torch.cuda.synchronize(device)


def run_order(variants:list, repeat:int, order:str)->list:
    "The order in which the variants run in repeat number `repeat`: 'rotate' shifts it by one each repeat, 'alternate' reverses every other."
    if order == "rotate": return variants[repeat % len(variants):] + variants[:repeat % len(variants)]
    if order == "alternate": return variants if repeat % 2 == 0 else variants[::-1]
    raise ValueError(f"order must be 'rotate' or 'alternate', not {order!r}")


def time_steps(prepare, # prepare(variant, quick) -> (model, optimizer, trainable count, description)
               variants:list, # the variants to time; one of them must be "full" (its description names the model)
               args:argparse.Namespace, # from `parse_args`
               order:str="rotate", # how the order of the variants changes between repeats, see `run_order`
              )->dict:
    "Seconds per step of every variant for every repeat, wall and CPU time of this process; variants interleaved."
    device, variants = torch.device(args.device), list(variants)
    prepared = {v: prepare(v, args.quick) for v in variants}
    for model, *_ in prepared.values(): model.to(device)
    batch = make_batch(args.batch_size, args.seq_len, prepared["full"][0].config.vocab_size, device)
    for model, optimizer, *_ in prepared.values():
        for _ in range(args.warmup): train_step(model, optimizer, batch)
    times, cpu_times = {v: [] for v in variants}, {v: [] for v in variants}
    for r in range(args.repeats):
        for v in run_order(variants, r, order):
            model, optimizer, *_ = prepared[v]
            synchronize(device); start, cpu_start = time.perf_counter(), time.process_time()
            for _ in range(args.steps): train_step(model, optimizer, batch)
            synchronize(device)
            times[v].append((time.perf_counter() - start) / args.steps)
            cpu_times[v].append((time.process_time() - cpu_start) / args.steps)   # CPU seconds of this process: less sensitive to other load
    return dict(seconds_per_step=times, cpu_seconds_per_step=cpu_times, trainable={v: p[2] for v, p in prepared.items()},
                model=prepared["full"][3])


def paired_median_ratio(times:list, reference:list)->float:
    "Median over repeats of `times[i] / reference[i]`: each ratio compares two variants timed under the same load."
    return statistics.median(a / b for a, b in zip(times, reference))


def memory_child(prepare, args:argparse.Namespace):
    "In a fresh subprocess: prepare the variant `args.memory_of`, train a few steps, print its peak memory as JSON."
    torch.set_num_threads(args.threads)
    from lightft.core import measure
    device = torch.device(args.device)
    model, optimizer, trainable, _ = prepare(args.memory_of, args.quick)
    model.to(device)
    batch = make_batch(args.batch_size, args.seq_len, model.config.vocab_size, device)
    with measure(device) as m:
        for _ in range(max(3, args.warmup)): train_step(model, optimizer, batch)
    print(json.dumps(dict(peak_mb=m.peak_mb, start_mb=m.start_bytes / 2**20, delta_mb=m.delta_mb, trainable=trainable)))


def measure_memory(script:str, # the benchmark script, run again with --memory-of for each variant
                   variants:list, args:argparse.Namespace)->dict:
    "Peak memory of every variant, each measured by `memory_child` in a fresh subprocess: {variant: {peak_mb, start_mb, delta_mb, trainable}}."
    out = {}
    for v in variants:
        cmd = [sys.executable, os.path.abspath(script), "--memory-of", v, "--threads", str(args.threads), "--device", args.device,
               "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--warmup", str(args.warmup)]
        res = subprocess.run(cmd + (["--quick"] if args.quick else []), capture_output=True, text=True)
        if res.returncode != 0: raise RuntimeError(f"the memory run of {v!r} failed:\n{res.stderr[-3000:]}")
        out[v] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def print_variants(timing:dict, # from `time_steps`
                   memory:dict, # from `measure_memory`
                   variants:list, # the rows, in order
                   cpu:dict|None=None, # median CPU seconds per step, to add as a column
                  ):
    "One table row per variant: trainable parameters, median/min/max seconds per step, (CPU seconds,) peak and added MiB."
    width = max(len("variant"), *map(len, variants)) + 2
    print(f"{'variant':<{width}}{'trainable':>12}{'s/step':>10}{'min':>9}{'max':>9}" + (f"{'CPU s/step':>12}" if cpu else "")
          + f"{'peak MiB':>11}{'+MiB training':>15}")
    for v in variants:
        t = timing["seconds_per_step"][v]
        print(f"{v:<{width}}{timing['trainable'][v]:>12,}{statistics.median(t):>10.4f}{min(t):>9.4f}{max(t):>9.4f}"
              + (f"{cpu[v]:>12.4f}" if cpu else "") + f"{memory[v]['peak_mb']:>11.0f}{memory[v]['delta_mb']:>15.0f}")


def write_json(path:str, result:dict):
    "Write `result` to `path` as indented JSON, creating the folder, and say so."
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", path)


def time_and_memory(script:str, # the benchmark script (its `__file__`)
                    prepare, # prepare(variant, quick) -> (model, optimizer, trainable count, description)
                    variants:list, args:argparse.Namespace, order:str="rotate")->tuple|None:
    "(timing, memory) of every variant, from `time_steps` and `measure_memory`; in a --memory-of subprocess, print that variant's memory and return None."
    if args.memory_of: return memory_child(prepare, args)
    torch.set_num_threads(args.threads)
    return time_steps(prepare, variants, args, order), measure_memory(script, variants, args)
