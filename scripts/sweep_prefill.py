"""Kernel variants side by side on a GPU, one process: the KV-outer pieces, the tile pass and the indexer.

Usage (GPU only): python3 scripts/sweep_prefill.py [--repeats N] [--cases ...] [--tile-cases ...]
    [--call-cases ...] [--profile-tile-cases ...] [--indexer-cases ...] > sweep.txt  (indices into m3lite.bench.prefill.CASES)
Each variant is checked against the recorded version (scripts/variants/) before it is timed.
"""
import argparse
import sys
import time

import torch

import m3lite as m3
from m3lite.attention import attention_flops
from m3lite.attention.sparse import unique_selection
from m3lite.bench.prefill import CASES, attended_tokens, case_inputs, case_name, relative_error, time_ms
from m3lite.kernels import indexer as ix
from m3lite.kernels.common import next_pow2
from m3lite.attention import tile_shared as ts
from m3lite.kernels import sparse_kv as kv
from m3lite.kernels import sparse_shared as sh

sys.path.insert(0, "scripts/variants")
import indexer_v1 as ix_v1  # noqa: E402  (the indexer kernels before the unmasked loop)
import sparse_kv_v1 as kv_v1  # noqa: E402  (the kernel as of the last recorded benchmark)
import sparse_kv_v2 as kv_v2  # noqa: E402  (the whole call before the per-tile choice, host sync in the work list)


def kv_sweep(case, pattern, repeats, profile=False):
    q, k, v, _, _, sel = case_inputs(case, pattern)
    sel = unique_selection(sel)
    T, BS, D, G, K = case["T"], case["BS"], case["D"], case["HQ"] // case["HKV"], case["K"]
    HI, scale = sel.shape[1], case["D"] ** -0.5
    useful = attention_flops(G, attended_tokens(sel, T, T, BS), D)
    print(f"{case_name(case)} {pattern}: useful {useful / 1e12:.2f} TFLOP", flush=True)
    p1 = kv_v1.plan(sel, T, BS, G)
    o1, l1 = kv_v1.partials(q, k, v, sel.shape, p1, BS, True, scale)
    ref, _ = kv_v1.combine(o1, l1, q.shape, HI, K)
    rows = [("v1 plan", lambda: kv_v1.plan(sel, T, BS, G), None),
            ("plan", lambda: kv.plan(sel, T, BS, G), None),
            ("v1 partials bm64 c16 w4", lambda: kv_v1.partials(q, k, v, sel.shape, p1, BS, True, scale), p1)]
    for c in [32, 64, 128]:
        p = kv.plan(sel, T, BS, G, chunks_per_program=c)
        rows.append((f"partials c{c}", lambda p=p: kv.partials(q, k, v, sel.shape, p, BS, True, scale), p))
    p64 = kv.plan(sel, T, BS, G)
    for w, st in [(8, 1), (4, 2), (8, 2)]:
        rows.append((f"partials c64 w{w} s{st}",
                     lambda w=w, st=st: kv.partials(q, k, v, sel.shape, p64, BS, True, scale, w, st), p64))
    p128 = kv.plan(sel, T, BS, G, block_m=128, chunks_per_program=32)
    rows.append(("partials bm128 c32 w8", lambda: kv.partials(q, k, v, sel.shape, p128, BS, True, scale, 8), p128))
    rows.append(("v1 combine r128 w4 s2", lambda: kv_v1.combine(o1, l1, q.shape, HI, K), "combine"))
    for r, w, st in [(128, 4, 2), (128, 4, 3), (64, 4, 3), (128, 8, 3), (256, 8, 2)]:
        rows.append((f"combine r{r} w{w} s{st}", lambda r=r, w=w, st=st: kv.combine(o1, l1, q.shape, HI, K, r, w, st),
                     "combine"))
    for name, fn, p in rows:
        err = ""
        if p == "combine":
            err = f"err vs v1 {relative_error(fn()[0], ref):.1e}"
        elif p is not None:
            o_part, lse_part = fn()
            out, _ = kv.combine(o_part, lse_part, q.shape, HI, K)
            err = f"err vs v1 {relative_error(out, ref):.1e}"
        ms = time_ms(fn, repeats)
        rate = f"{useful / ms / 1e9:6.1f} TFLOP/s" if p not in (None, "combine") else ""
        if p == "combine":
            rate = f"{(o1.numel() * o1.element_size() + l1.numel() * 4) / ms / 1e6:6.0f} GB/s of partials read"
        print(f"  {name:55s} {ms:8.2f} ms {rate} {err}", flush=True)
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                kv.plan(sel, T, BS, G)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    del q, k, v, sel, o1, l1, ref
    torch.cuda.empty_cache()


def tile_sweep(case, pattern, repeats):
    """The KV-outer call with and without the tile-shared pass, its pieces, and the shared kernel's configurations."""
    q, k, v, _, _, sel = case_inputs(case, pattern)
    T, BS, D, G = case["T"], case["BS"], case["D"], case["HQ"] // case["HKV"]
    scale = D ** -0.5
    useful = attention_flops(G, attended_tokens(sel, T, T, BS), D)
    ref, _ = kv.sparse_attention_kv(q, k, v, sel, BS, True, scale, tile_rows=0)
    print(f"{case_name(case)} {pattern}: useful {useful / 1e12:.2f} TFLOP", flush=True)
    for rows in (0, None, 128, 256):
        fn = lambda rows=rows: kv.sparse_attention_kv(q, k, v, sel, BS, True, scale, tile_rows=rows)
        err = relative_error(fn()[0], ref)
        ms = time_ms(fn, repeats)
        note = ""
        if rows is None:
            rows = sh.default_tile_rows(G)
            note = "(the default) "
        if rows:
            _, tile = sh.tile_size(G, rows)
            shared, _ = sh.tile_plan(sel, tile)
            in_tiles = attended_tokens(ts.shared_per_query(shared, tile, T), T, T, BS) / attended_tokens(sel, T, T, BS)
            note += f"tiles of {tile} queries hold {in_tiles:.1%} of the attended tokens"
        print(f"  whole call, tile_rows={rows:3d}: {ms:8.2f} ms {useful / ms / 1e9:6.1f} TFLOP/s "
              f"err vs tile_rows=0 {err:.1e}  {note}", flush=True)
    for rows in (128, 256):
        _, tile = sh.tile_size(G, rows)
        shared, rest = sh.tile_plan(sel, tile)
        shared_useful = attention_flops(G, attended_tokens(ts.shared_per_query(shared, tile, T), T, T, BS), D)
        p = kv.plan(rest, T, BS, G)
        o_part, lse_part = kv.partials(q, k, v, sel.shape, p, BS, True, scale)
        pieces = [(f"tile plan, torch (tiles of {tile})",
                   lambda: ts.rest_of_selection(sel, ts.shared_blocks(sel, tile), tile)),
                  (f"tile plan, kernel (tiles of {tile})", lambda: sh.tile_plan(sel, tile)),
                  ("KV-outer plan of the rest", lambda: kv.plan(rest, T, BS, G)),
                  ("KV-outer partials of the rest", lambda: kv.partials(q, k, v, sel.shape, p, BS, True, scale))]
        configs = {128: [(64, 4, 2), (128, 8, 2)], 256: [(64, 8, 2), (128, 8, 2)]}[rows]
        for bn, w, st in configs:
            pieces.append((f"tile pass rows{rows} bn{bn} w{w} s{st}",
                           lambda bn=bn, w=w, st=st: sh.tile_pass(q, k, v, shared, o_part, lse_part, BS, True, scale,
                                                                  rows, bn, w, st)))
        for name, fn in pieces:
            err = ""
            try:
                if "tile pass" in name:
                    err = f"err vs tile_rows=0 {relative_error(fn()[0], ref):.1e}"
                ms = time_ms(fn, repeats)
            except Exception as e:                                      # e.g. a config out of shared memory
                print(f"  {name:55s} failed: {type(e).__name__}", flush=True)
                continue
            rate = f"{shared_useful / ms / 1e9:6.1f} TFLOP/s over the shared blocks" if "tile pass" in name else ""
            print(f"  {name:55s} {ms:8.2f} ms {rate} {err}", flush=True)
    del q, k, v, sel, ref, o_part, lse_part, rest, shared
    torch.cuda.empty_cache()


def calls_sweep(case, pattern, repeats):
    """Whole KV-outer calls: the version before (one flag for the whole call, a host sync in the
    work list) against the current one (per-tile choice, no sync), and q in [B, T, HQ, D] memory."""
    q, k, v, _, _, sel = case_inputs(case, pattern)
    T, BS, D, G = case["T"], case["BS"], case["D"], case["HQ"] // case["HKV"]
    scale = D ** -0.5
    useful = attention_flops(G, attended_tokens(sel, T, T, BS), D)
    heads_inner = q.transpose(1, 2).contiguous().transpose(1, 2)
    ref, _ = kv.sparse_attention_kv(q, k, v, sel, BS, True, scale, tile_rows=0)
    print(f"{case_name(case)} {pattern}: useful {useful / 1e12:.2f} TFLOP", flush=True)
    p = kv.plan(unique_selection(sel), T, BS, G)
    rows = [("before: default call", lambda: kv_v2.sparse_attention_kv(q, k, v, sel, BS, True, scale)),
            ("now: default call", lambda: kv.sparse_attention_kv(q, k, v, sel, BS, True, scale)),
            ("before: tile_rows=0", lambda: kv_v2.sparse_attention_kv(q, k, v, sel, BS, True, scale, tile_rows=0)),
            ("now: tile_rows=0", lambda: kv.sparse_attention_kv(q, k, v, sel, BS, True, scale, tile_rows=0)),
            ("now: default call, q heads innermost",
             lambda: kv.sparse_attention_kv(heads_inner, k, v, sel, BS, True, scale)),
            ("now: tile_rows=0, q heads innermost",
             lambda: kv.sparse_attention_kv(heads_inner, k, v, sel, BS, True, scale, tile_rows=0)),
            ("partials only (all of sel)", lambda: kv.partials(q, k, v, sel.shape, p, BS, True, scale)),
            ("partials only, q heads innermost", lambda: kv.partials(heads_inner, k, v, sel.shape, p, BS, True, scale))]
    for name, fn in rows:
        out = fn()[0]
        err = f"err vs now tile_rows=0 {relative_error(out, ref):.1e}" if out.shape == ref.shape else ""
        ms = time_ms(fn, repeats)
        print(f"  {name:45s} {ms:8.2f} ms {useful / ms / 1e9:6.1f} TFLOP/s {err}", flush=True)
    del q, k, v, sel, ref, heads_inner, p
    torch.cuda.empty_cache()


def tile_profile(case, pattern):
    """torch's profile of the default KV-outer call (tile pass chosen on the device) and of the forced one."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    q, k, v, _, _, sel = case_inputs(case, pattern)
    scale = case["D"] ** -0.5
    for rows in (None, sh.default_tile_rows(case["HQ"] // case["HKV"]), 0):
        fn = lambda: kv.sparse_attention_kv(q, k, v, sel, case["BS"], True, scale, tile_rows=rows)
        fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
        print(f"{case_name(case)} {pattern} tile_rows={rows}: 5 calls", flush=True)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14), flush=True)
    del q, k, v, sel
    torch.cuda.empty_cache()


def indexer_sweep(case, repeats):
    q, k, v, iq, ik, sel = case_inputs(case, "locality")
    del q, k, v
    BS, K = case["BS"], case["K"]
    scale = iq.shape[-1] ** -0.5
    ref = ix_v1.block_scores(iq, ik, BS, True, scale)
    finite = torch.isfinite(ref)
    print(f"{case_name(case)} indexer", flush=True)
    for name, module in (("v1", ix_v1), ("new", ix)):
        for bm, bn, w, st in [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 2)]:
            fn = lambda: module.block_scores(iq, ik, BS, True, scale, block_m=bm, block_n=bn, num_warps=w,
                                             num_stages=st)
            out = fn()
            same = torch.equal(torch.isfinite(out), finite)
            err = (out[finite] - ref[finite]).abs().max().item()
            print(f"  {name} block_scores bm{bm} bn{bn} w{w} s{st}: {time_ms(fn, repeats):8.2f} ms  (max diff {err:.1e}, "
                  f"same -inf {same})", flush=True)
    one_level = ix.select_blocks(ref, K, True, group=1)
    for group in (1, None):
        fn = lambda: ix.select_blocks(ref, K, True, group=group)
        same = torch.equal(fn(), one_level)
        name = "one level" if group == 1 else f"two levels, groups of {ix.select_group(next_pow2(ref.shape[-1]), K)}"
        print(f"  select_blocks, {name}: {time_ms(fn, repeats):8.2f} ms (the same as one level: {same})", flush=True)
    del iq, ik, sel, ref
    torch.cuda.empty_cache()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cases", type=int, nargs="*", default=[1, 3, 4, 2])
    parser.add_argument("--indexer-cases", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--tile-cases", type=int, nargs="*", default=[])
    parser.add_argument("--call-cases", type=int, nargs="*", default=[])
    parser.add_argument("--patterns", nargs="*", default=["locality", "random"])
    parser.add_argument("--profile-tile-cases", type=int, nargs="*", default=[])
    parser.add_argument("--profile-plan", action="store_true", help="print torch's profile of the plan")
    args = parser.parse_args()
    print(m3.env.describe(), flush=True)
    t0 = time.time()
    for i in args.cases:
        kv_sweep(CASES[i], "random", args.repeats, profile=args.profile_plan)
        print(f"  [{time.time() - t0:.0f} s]", flush=True)
    for i in args.tile_cases:
        for pattern in args.patterns:
            tile_sweep(CASES[i], pattern, args.repeats)
            print(f"  [{time.time() - t0:.0f} s]", flush=True)
    for i in args.call_cases:
        for pattern in args.patterns:
            calls_sweep(CASES[i], pattern, args.repeats)
            print(f"  [{time.time() - t0:.0f} s]", flush=True)
    for i in args.profile_tile_cases:
        for pattern in args.patterns:
            tile_profile(CASES[i], pattern)
    for i in args.indexer_cases:
        indexer_sweep(CASES[i], args.repeats)
        print(f"  [{time.time() - t0:.0f} s]", flush=True)
