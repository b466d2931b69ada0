"""Scaling up: tokens per second and peak memory of full fine-tuning and LoRA, at fp32 and bf16, on the CPU and on CUDA.

Each variant (method × precision × device) trains in a fresh subprocess, so its peak memory is its own; time is the median
seconds per step over `--repeats` steps after `--warmup` untimed ones, turned into tokens per second (batch × length / time).
bf16 runs the forward pass under `torch.autocast` (lightft.train.autocast), exactly as `fit(precision="bf16")` does; the
weights and the optimizer stay float32. fp16 needs a gradient scaler and CUDA, so it is measured on CUDA only.

    python bench/scale.py                 # minilm-l6 if installed (else a random BERT of its shape), batch 32, 128 tokens
    python bench/scale.py --quick         # smoke run on a tiny random BERT (seconds)
    python bench/scale.py --json nbs/results/scale.json

The "bigger job" recipe — all 67,349 SST-2 training sentences with LoRA — is a command, not part of this script:
    lightft compare --task sst2 --data-dir path/to/SST-2 --methods lora --epochs 1 --max-length 64 [--precision bf16]
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time

from _training_step import build_model, make_batch, synchronize, write_json
import torch

METHODS = ("full", "lora")


def variants(devices:list)->list:
    "(method, precision, device) triples to measure: fp32 and bf16 everywhere, fp16 on CUDA only."
    out = []
    for device in devices:
        for method in METHODS:
            for precision in ("fp32", "bf16") + (("fp16",) if device == "cuda" else ()):
                out.append((method, precision, device))
    return out


def child(args:argparse.Namespace):
    "In a fresh process: train one variant, print {seconds_per_step, tokens_per_second, peak_mb, trainable} as JSON."
    from lightft.core import measure
    from lightft.methods import apply_method
    from lightft.train import autocast
    torch.set_num_threads(args.threads)
    method, precision, device = args.variant.split("/")
    model, _ = build_model(args.quick)
    apply_method(model, method)
    device = torch.device(device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    batch = make_batch(args.batch_size, args.seq_len, model.config.vocab_size, device)

    def step():
        with autocast(device, precision): loss = model(**batch).loss
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler: scaler.step(optimizer); scaler.update()
        else: optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with measure(device) as m:
        for _ in range(args.warmup): step()
        times = []
        for _ in range(args.repeats):
            synchronize(device); start = time.perf_counter()
            step()
            synchronize(device); times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(json.dumps(dict(seconds_per_step=seconds, tokens_per_second=args.batch_size * args.seq_len / seconds,
                          peak_mb=m.peak_mb, trainable=sum(p.numel() for p in params))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny random BERT, a few steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2, or 1 with --quick)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)     # method/precision/device, set for the subprocesses
    args = p.parse_args(argv)
    if args.repeats is None: args.repeats = 2 if args.quick else 8
    if args.quick: args.batch_size, args.seq_len = min(args.batch_size, 8), min(args.seq_len, 32)
    if args.threads is None: args.threads = 1 if args.quick else min(2, os.cpu_count() or 1)
    if args.variant: return child(args)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for method, precision, device in variants(devices):
        cmd = [sys.executable, __file__, "--variant", f"{method}/{precision}/{device}", "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len), "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        if args.quick: cmd.append("--quick")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0: raise SystemExit(f"{method}/{precision}/{device} failed:\n{done.stderr[-2000:]}")
        rows.append(dict(method=method, precision=precision, device=device, **json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"batch {args.batch_size} × {args.seq_len} tokens, median of {args.repeats} steps, {args.threads} CPU threads")
    print(f"{'method':<6} {'precision':<9} {'device':<6} {'trainable':>11} {'s/step':>8} {'tokens/s':>9} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['method']:<6} {r['precision']:<9} {r['device']:<6} {r['trainable']:>11,} {r['seconds_per_step']:>8.3f} "
              f"{r['tokens_per_second']:>9,.0f} {r['peak_mb']:>9,.0f}")
    for device in devices:
        for method in METHODS:
            base = next(r for r in rows if (r["method"], r["precision"], r["device"]) == (method, "fp32", device))
            bf16 = next(r for r in rows if (r["method"], r["precision"], r["device"]) == (method, "bf16", device))
            print(f"{method} on {device}: bf16/fp32 speed {bf16['tokens_per_second'] / base['tokens_per_second']:.2f}x, "
                  f"memory {bf16['peak_mb'] / base['peak_mb']:.2f}x")
    if args.json: write_json(args.json, dict(rows=rows, settings=vars(args), torch=torch.__version__))


if __name__ == "__main__":
    main()
