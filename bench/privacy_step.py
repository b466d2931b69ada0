"""What differential privacy costs per training step: seconds and peak memory of full fine-tuning, BitFit and LoRA, each
with and without DP-SGD (Opacus's per-example gradients, clipping and noise, as `fit(privacy=...)` sets them up).

Each variant (method × DP or not) trains in a fresh subprocess, so its peak memory is its own; time is the median seconds
per step over `--repeats` steps after `--warmup` untimed ones. The DP variants draw fixed-size batches (no Poisson
sampling) so that every timed step sees the same batch size as the non-private one; the per-step work is the same.

    python bench/privacy_step.py            # minilm-l6 if installed (else a random BERT of its shape), batch 32, 64 tokens
    python bench/privacy_step.py --quick    # smoke run on a tiny random BERT (seconds)
    python bench/privacy_step.py --json nbs/results/privacy_step.json
"""
from __future__ import annotations
import argparse, json, os, statistics, subprocess, sys, time, warnings

from _training_step import build_model, make_batch, write_json
import torch

METHODS = ("full", "bitfit", "lora")


def child(args:argparse.Namespace):
    "In a fresh process: train one variant, print {seconds_per_step, peak_mb, trainable} as JSON."
    from lightft.core import measure
    from lightft.methods import apply_method
    from lightft.privacy import PrivacyConfig, make_private
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    method, private = args.variant.split("/")
    model, _ = build_model(args.quick)
    apply_method(model, method)
    model.train()
    big = make_batch(args.batch_size * 4, args.seq_len, model.config.vocab_size, "cpu")
    examples = [{k: v[i] for k, v in big.items()} for i in range(args.batch_size * 4)]
    loader = torch.utils.data.DataLoader(examples, batch_size=args.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    runner = model
    if private == "dp":
        dp = make_private(model, optimizer, loader, PrivacyConfig(epsilon=8.0, delta=1e-5, poisson_sampling=False),
                          epochs=args.warmup + args.repeats)
        runner, optimizer, loader = dp.model, dp.optimizer, dp.loader
    batches = iter(())

    def step():
        nonlocal batches
        batch = next(batches, None)
        if batch is None: batches = iter(loader); batch = next(batches)
        runner(**batch).loss.backward(); optimizer.step(); optimizer.zero_grad(set_to_none=True)

    with measure("cpu") as m:
        for _ in range(args.warmup): step()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
    print(json.dumps(dict(seconds_per_step=statistics.median(times), peak_mb=m.peak_mb, start_mb=m.start_bytes / 2**20,
                          trainable=sum(p.numel() for p in params))))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny random BERT, a few steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=None, help="timed steps per variant (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2, or 1 with --quick)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)     # method/dp-or-plain, set for the subprocesses
    args = p.parse_args(argv)
    if args.repeats is None: args.repeats = 2 if args.quick else 6
    if args.quick: args.batch_size, args.seq_len = min(args.batch_size, 8), min(args.seq_len, 32)
    if args.threads is None: args.threads = 1 if args.quick else min(2, os.cpu_count() or 1)
    if args.variant: return child(args)

    rows = []
    for method in METHODS:
        for private in ("plain", "dp"):
            cmd = [sys.executable, __file__, "--variant", f"{method}/{private}", "--batch-size", str(args.batch_size),
                   "--seq-len", str(args.seq_len), "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads)]
            if args.quick: cmd.append("--quick")
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0: raise SystemExit(f"{method}/{private} failed:\n{done.stderr[-2000:]}")
            rows.append(dict(method=method, dp=private == "dp", **json.loads(done.stdout.strip().splitlines()[-1])))
    print(f"batch {args.batch_size} × {args.seq_len} tokens, median of {args.repeats} steps, {args.threads} CPU threads, each variant in its own process")
    print(f"{'method':<7} {'DP':<4} {'trainable':>11} {'s/step':>8} {'peak MiB':>9}")
    for r in rows: print(f"{r['method']:<7} {'yes' if r['dp'] else 'no':<4} {r['trainable']:>11,} {r['seconds_per_step']:>8.3f} {r['peak_mb']:>9,.0f}")
    for method in METHODS:
        plain, dp = (next(r for r in rows if r["method"] == method and r["dp"] == d) for d in (False, True))
        print(f"{method}: DP/plain time {dp['seconds_per_step'] / plain['seconds_per_step']:.2f}x, "
              f"memory {dp['peak_mb'] / plain['peak_mb']:.2f}x (+{dp['peak_mb'] - plain['peak_mb']:,.0f} MiB)")
    if args.json: write_json(args.json, dict(rows=rows, settings=vars(args), torch=torch.__version__))


if __name__ == "__main__":
    main()
