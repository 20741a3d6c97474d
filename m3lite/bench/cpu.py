"""CPU benchmark: dense SDPA causal vs sparse_attention(order="kv", backend="torch").

Times are medians of interleaved repeats in one process. Peak memory is the growth of the
process's resident memory during one call, measured on Linux by resetting the kernel's high-water
mark (/proc/self/clear_refs) before the call.
"""
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F

import m3lite as m3

SHAPE = dict(B=1, HQ=8, HKV=2, D=64, BS=64, K=8)


def make_inputs(T, B=1, HQ=8, HKV=2, D=64, BS=64, K=8, seed=0):
    """Random q, k, v [.., T, D] and a causal selection: own block plus random earlier blocks."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, T, D, generator=g)
    k = torch.randn(B, HKV, T, D, generator=g)
    v = torch.randn(B, HKV, T, D, generator=g)
    NB = m3.num_blocks(T, BS)
    own = torch.arange(T) // BS
    scores = torch.rand(B, HKV, T, NB, generator=g).masked_fill(torch.arange(NB) > own[:, None], float("-inf"))
    return q, k, v, m3.select_blocks(scores, top_k=K)


def methods(BS=64):
    return {
        "sdpa_dense_causal": lambda q, k, v, sel: F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=True),
        "sparse_kv_torch": lambda q, k, v, sel: m3.sparse_attention(
            q, k, v, sel, block_size=BS, order="kv", backend="torch"),
    }


def time_methods(inputs, repeats, block_size):
    """Median seconds per method, repeats interleaved so both see the same machine state."""
    fns = methods(block_size)
    times = {name: [] for name in fns}
    with torch.inference_mode():
        for name, fn in fns.items():
            fn(*inputs)                                             # warm-up
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(*inputs)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def peak_memory_mb(fn, *args):
    """MB of resident memory one call of fn(*args) adds at its peak, or None where Linux can't tell."""
    try:
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                        # reset the peak (VmHWM) to now
    except OSError:
        return None
    fn(*args)
    return (_status_kb("VmHWM") - before) / 1024


def run(lengths=(4096, 16384), repeats=3, shape=None, memory=True):
    """Benchmark rows, one per (T, method)."""
    shape = dict(SHAPE, **(shape or {}))
    rows = []
    for T in lengths:
        inputs = make_inputs(T, **shape)
        times = time_methods(inputs, repeats, shape["BS"])
        for name, fn in methods(shape["BS"]).items():
            with torch.inference_mode():
                peak = peak_memory_mb(fn, *inputs) if memory else None
            rows.append(dict(T=T, method=name, ms=1e3 * times[name],
                             speedup_vs_sdpa=times["sdpa_dense_causal"] / times[name], peak_mb=peak))
    return rows


def machine():
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version())


def table(rows):
    lines = [f"{'T':>6}  {'method':<18} {'ms':>9} {'x SDPA':>7} {'peak MB':>8}"]
    for r in rows:
        peak = f"{r['peak_mb']:8.0f}" if r["peak_mb"] is not None else f"{'-':>8}"
        lines.append(f"{r['T']:>6}  {r['method']:<18} {r['ms']:9.1f} {r['speedup_vs_sdpa']:7.2f} {peak}")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", help="also write the results and the machine to this JSON file")


def main(args):
    rows = run(args.lengths, args.repeats, memory=not args.no_memory)
    print(f"{m3.env.describe()}; shape {SHAPE}")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="cpu", shape=SHAPE, machine=machine(), rows=rows), f, indent=1)
