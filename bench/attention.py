"""Benchmark: lightft's attention against PyTorch's, on the CPU.

Compares, for several sequence lengths,
  1. `lightft.attention.scaled_dot_product_attention` with `torch.nn.functional.scaled_dot_product_attention`,
  2. `lightft.attention.MultiHeadAttention` with `torch.nn.MultiheadAttention` holding the same weights
     (called as most code calls it, returning head-averaged weights, and with `need_weights=False`).
Forward passes only, in eval mode under `torch.no_grad()`. Times are medians over repeats that visit the
implementations in turn (so a busy machine slows all of them alike); ratios come from the same run.
Peak memory is how far the process's resident memory rises above its starting level during one call.

    python bench/attention.py            # the full table (about a minute on 2 CPU cores)
    python bench/attention.py --quick    # smoke mode: tiny sizes, a few seconds
"""
import argparse, ctypes, os, platform, re, statistics, sys, time

import torch
import torch.nn.functional as F
from torch import nn

from lightft.attention import MultiHeadAttention, scaled_dot_product_attention
from lightft.core import measure

GOAL = 1.3   # our multi-head attention forward should take at most 1.3x the time of nn.MultiheadAttention


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes and few repeats")
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512], help="sequence lengths")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--repeats", type=int, default=21, help="timed calls per implementation and length")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time; cpu: CPU time of this process, which other programs on a busy machine "
                        "do not inflate (meaningful with --threads 1: with more, idle threads spin and count)")
    p.add_argument("--check", action="store_true", help=f"exit with status 1 if the {GOAL}x goal is missed at length >= 128")
    args = p.parse_args(argv)
    if args.quick: args.lengths, args.batch, args.d_model, args.heads, args.repeats = [32, 64], 2, 64, 4, 3
    return args


def torch_mha_like(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    "An `nn.MultiheadAttention` holding the same weights as `ours`."
    ref = nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.load_state_dict(ours.out_proj.state_dict())
    return ref.eval()


def median_times(fns: dict, repeats: int, clock=time.perf_counter) -> dict:
    "Median seconds per call of each function; the functions take turns, after two warm-up calls each."
    for fn in fns.values(): fn(); fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock(); fn(); times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _exact_memory_available() -> bool:
    return sys.platform.startswith("linux") and os.access("/proc/self/clear_refs", os.W_OK)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f: return int(re.search(rf"{field}:\s+(\d+) kB", f.read()).group(1)) * 1024


def peak_memory_mib(fn) -> float:
    "MiB by which resident memory rises above its level at the start while `fn()` runs."
    if _exact_memory_available():
        # Linux: hand the C library's unused heap back to the kernel (so reusing it shows up as new resident
        # memory), reset the kernel's high-water mark of resident memory, run, and read the mark back.
        try: ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError): pass
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        start = _status_bytes("VmRSS"); fn()
        return max(0, _status_bytes("VmHWM") - start) / 2**20
    with measure("cpu") as m: fn()            # elsewhere: the sampled peak of lightft.core.measure
    return m.delta_mb


def cases(args, n: int) -> tuple:
    "The functions to compare at sequence length `n`: (attention-function cases, multi-head cases)."
    torch.manual_seed(0)
    d_head = args.d_model // args.heads
    q, k, v = (torch.randn(args.batch, args.heads, n, d_head) for _ in range(3))
    attention = {"ours": lambda: scaled_dot_product_attention(q, k, v),
                 "F.sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
    ours = MultiHeadAttention(args.d_model, args.heads).eval()
    ref = torch_mha_like(ours)
    x = torch.randn(args.batch, n, args.d_model)
    assert torch.allclose(ours(x), ref(x, x, x)[0], atol=1e-5), "the two implementations disagree"
    multi_head = {"ours": lambda: ours(x),
                  "nn.MHA": lambda: ref(x, x, x),
                  "nn.MHA nw=False": lambda: ref(x, x, x, need_weights=False)}
    return attention, multi_head


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    load = lambda: " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"lightft attention benchmark | torch {torch.__version__} | {platform.machine()} {os.cpu_count()} CPUs, "
          f"{torch.get_num_threads()} torch threads | batch {args.batch}, d_model {args.d_model}, {args.heads} heads | "
          f"median of {args.repeats}, {args.timer} time{' | QUICK smoke mode' if args.quick else ''}\n"
          f"load average at start (1, 5, 15 min): {load()}")
    results = {}
    with torch.no_grad():
        for n in args.lengths:                                   # times first
            attention, multi_head = cases(args, n)
            results[n] = {"attention": median_times(attention, args.repeats, clock),
                          "multi_head": median_times(multi_head, args.repeats, clock)}
        memory_kind = "exact high-water mark" if _exact_memory_available() else "sampled by lightft.core.measure"
        for n in args.lengths:                                   # then peak memory, one call each after a warm-up
            attention, multi_head = cases(args, n)
            for group, fns in (("attention", attention), ("multi_head", multi_head)):
                for fn in fns.values(): fn()
                results[n][group + "_mib"] = {name: peak_memory_mib(fn) for name, fn in fns.items()}

    ms = lambda s: f"{s * 1e3:9.2f}"
    print(f"\n1. attention function on (batch, heads, n, {args.d_model // args.heads}): ours vs F.scaled_dot_product_attention")
    print(f"{'n':>5} | {'ours ms':>9} | {'F.sdpa ms':>9} | {'ratio':>6} | {'ours MiB':>9} | {'F.sdpa MiB':>10}")
    for n, r in results.items():
        t, m = r["attention"], r["attention_mib"]
        print(f"{n:5d} | {ms(t['ours'])} | {ms(t['F.sdpa'])} | {t['ours'] / t['F.sdpa']:6.2f} | {m['ours']:9.1f} | {m['F.sdpa']:10.1f}")

    print(f"\n2. multi-head self-attention forward on (batch, n, {args.d_model}): ours vs nn.MultiheadAttention, same weights")
    print(f"{'n':>5} | {'ours ms':>9} | {'nn.MHA ms':>9} | {'ratio':>6} | {'nw=False ms':>11} | {'ratio':>6} | "
          f"{'ours MiB':>9} | {'nn.MHA MiB':>10} | {'nw=False MiB':>12}")
    missed = []
    for n, r in results.items():
        t, m = r["multi_head"], r["multi_head_mib"]
        ratio = t["ours"] / t["nn.MHA"]
        if n >= 128 and ratio > GOAL: missed.append(n)
        print(f"{n:5d} | {ms(t['ours'])} | {ms(t['nn.MHA'])} | {ratio:6.2f} | {t['nn.MHA nw=False'] * 1e3:11.2f} | "
              f"{t['ours'] / t['nn.MHA nw=False']:6.2f} | {m['ours']:9.1f} | {m['nn.MHA']:10.1f} | {m['nn.MHA nw=False']:12.1f}")
    print(f"\nload average at end: {load()}")
    print(f"ratio = our time / theirs (same run). nn.MHA = module(x, x, x) with its default need_weights=True; "
          f"nw=False = need_weights=False.\nMiB = rise of resident memory during one call ({memory_kind}).")
    checked = [n for n in args.lengths if n >= 128]
    if checked:
        print(f"goal: ours within {GOAL}x of nn.MHA at n >= 128: " + ("met" if not missed else f"MISSED at n = {missed}"))
    return 1 if (args.check and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
