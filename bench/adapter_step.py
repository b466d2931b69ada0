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
import datetime, os, platform, statistics

from _training_step import build_model, parse_args, ready_to_train, time_and_memory, paired_median_ratio, print_variants, write_json
import torch

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
    return *ready_to_train(model), description


def main(argv=None):
    args = parse_args(__doc__.split("\n")[0], argv, full_repeats=10)
    measured = time_and_memory(__file__, prepare, list(VARIANTS), args, order="rotate")
    if measured is None: return                   # a --memory-of subprocess: it has printed its numbers
    timing, memory = measured
    median = {v: statistics.median(t) for v, t in timing["seconds_per_step"].items()}
    best = {v: min(t) for v, t in timing["seconds_per_step"].items()}
    ratios = {}
    for ours, hub in PAIRS:
        # On a shared machine other processes come and go: the minimum over repeats is the least disturbed measurement
        # (timeit's advice) and decides the goal; the ratio of medians and the median of per-repeat ratios are reported too.
        ratios[f"time {ours}/{hub} (min)"] = best[ours] / best[hub]
        ratios[f"time {ours}/{hub} (paired median)"] = paired_median_ratio(timing["seconds_per_step"][ours],
                                                                           timing["seconds_per_step"][hub])
        ratios[f"time {ours}/{hub}"] = median[ours] / median[hub]
        ratios[f"peak memory {ours}/{hub}"] = memory[ours]["peak_mb"] / memory[hub]["peak_mb"]
        ratios[f"peak memory {ours}/full"] = memory[ours]["peak_mb"] / memory["full"]["peak_mb"]
    print(f"model: {timing['model']}; batch {args.batch_size} x {args.seq_len} tokens; {args.threads} threads on {args.device}; "
          f"median of {args.repeats} interleaved repeats x {args.steps} steps; reduction factor {REDUCTION_FACTOR}")
    print_variants(timing, memory, VARIANTS)
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
        write_json(args.json, result)


if __name__ == "__main__":
    main()
