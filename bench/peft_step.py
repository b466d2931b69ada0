"""LoRA training step: ours (lightft.lora) against 🤗 PEFT, with full fine-tuning for reference.

Same model, batch, LoRA config (r=8, alpha=16, query+value, no dropout, classifier trained) and optimizer (AdamW).
Time: seconds per training step (forward, backward, optimizer step) over many one-step repeats, variants interleaved
in one process so that they share the machine's load; the goal is judged on the fastest repeat of each (the one least
disturbed by other processes), and the medians are reported next to it. Memory: peak process RSS (peak CUDA memory on a GPU) while
training, each variant in a fresh subprocess so that one variant's allocations do not hide another's.

    python bench/peft_step.py            # minilm-l6 if installed, else a random BERT of the same shape
    python bench/peft_step.py --quick    # smoke run on a tiny random BERT (seconds)
    python bench/peft_step.py --json nbs/results/peft_step.json
"""
from __future__ import annotations
import datetime, os, platform, statistics

from _training_step import build_model, parse_args, ready_to_train, time_and_memory, paired_median_ratio, print_variants, write_json
import torch

VARIANTS = ("lightft", "peft", "full")
LORA = dict(r=8, alpha=16, targets=("query", "value"), dropout=0.0)


def prepare(variant:str, quick:bool):
    "The model of `variant` ready to train, its AdamW optimizer, its trainable parameter count and the model description."
    model, description = build_model(quick)
    if variant == "lightft":
        from lightft.methods import apply_method
        model = apply_method(model, "lora", r=LORA["r"], alpha=LORA["alpha"], targets=list(LORA["targets"]), dropout=LORA["dropout"])
    elif variant == "peft":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], target_modules=list(LORA["targets"]),
                                                 lora_dropout=LORA["dropout"], task_type="SEQ_CLS"))
    elif variant != "full": raise ValueError(variant)
    return *ready_to_train(model), description


def main(argv=None):
    args = parse_args(__doc__.split("\n")[0], argv, full_repeats=15)
    # "alternate": forward, then backward, so that no variant always runs first
    measured = time_and_memory(__file__, prepare, VARIANTS, args, order="alternate")
    if measured is None: return                   # a --memory-of subprocess: it has printed its numbers
    timing, memory = measured
    med = {v: statistics.median(timing["seconds_per_step"][v]) for v in VARIANTS}
    cpu = {v: statistics.median(timing["cpu_seconds_per_step"][v]) for v in VARIANTS}
    best = {v: min(timing["seconds_per_step"][v]) for v in VARIANTS}
    paired = paired_median_ratio(timing["seconds_per_step"]["lightft"], timing["seconds_per_step"]["peft"])
    # On a shared machine other processes come and go: the minimum over repeats is the least disturbed measurement
    # (timeit's advice) and decides the goal; the medians and the median of per-repeat ratios are reported next to it.
    ratios = {"time ours/peft (min)": best["lightft"] / best["peft"], "time ours/full (min)": best["lightft"] / best["full"],
              "time ours/peft (paired median)": paired,
              "time ours/peft": med["lightft"] / med["peft"], "time ours/full": med["lightft"] / med["full"],
              "cpu time ours/peft": cpu["lightft"] / cpu["peft"],
              "peak memory ours/peft": memory["lightft"]["peak_mb"] / memory["peft"]["peak_mb"],
              "peak memory ours/full": memory["lightft"]["peak_mb"] / memory["full"]["peak_mb"]}
    print(f"model: {timing['model']}; batch {args.batch_size} x {args.seq_len} tokens; {args.threads} threads on {args.device}; "
          f"median of {args.repeats} repeats x {args.steps} steps, interleaved")
    print_variants(timing, memory, VARIANTS, cpu=cpu)
    ok_time, ok_mem = ratios["time ours/peft (min)"] <= 1.05, ratios["peak memory ours/full"] < 1
    print(f"time ratio ours/peft, best repeats {ratios['time ours/peft (min)']:.3f} (goal <= 1.05: {'met' if ok_time else 'NOT met'}; "
          f"medians {ratios['time ours/peft']:.3f}, median of paired repeats {paired:.3f}, CPU time {ratios['cpu time ours/peft']:.3f}); "
          f"peak memory ratio ours/full {ratios['peak memory ours/full']:.3f} (goal < 1: {'met' if ok_mem else 'NOT met'}); "
          f"ours/peft memory {ratios['peak memory ours/peft']:.3f}")
    if args.json:
        import peft, transformers
        result = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), machine=platform.platform(terse=True),
                      processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(), threads=args.threads,
                      device=args.device, torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                      model=timing["model"], batch_size=args.batch_size, seq_len=args.seq_len, steps=args.steps,
                      repeats=args.repeats, lora={**LORA, "targets": list(LORA["targets"])}, quick=args.quick,
                      median_seconds_per_step=med, min_seconds_per_step=best, seconds_per_step=timing["seconds_per_step"],
                      median_cpu_seconds_per_step=cpu, cpu_seconds_per_step=timing["cpu_seconds_per_step"],
                      load_average=os.getloadavg(), trainable=timing["trainable"],
                      memory=memory, ratios=ratios)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
