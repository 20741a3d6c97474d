"""GPU decode benchmark: one new token per sequence against a long cache, side by side in one process.

Methods: dense SDPA decode; a naive torch "gather the selected blocks, then SDPA" (attention only);
our Triton index scan + top-k, our attention over the selected blocks, and our whole MSA step, also
with fp8 index keys (with how many of the bf16 selection's blocks the fp8 selection keeps).
Every step is captured in a CUDA graph and replayed over several copies of the cache (like the
layers of a model), so that launch overhead and a warm L2 cache do not flatter small contexts;
eager (uncaptured) times are recorded beside. Bytes are what a method must read; bandwidth is
compared with the measured device-to-device copy bandwidth.
"""
import json
import math

import torch
import torch.nn.functional as F

import m3lite as m3
from m3lite.attention.decode import decode_attention_torch, quantize_index_keys
from m3lite.bench.timing import median_event_ms

M3 = dict(HQ=64, HKV=4, D=128, BS=128, K=16)
CASES = [dict(M3, S=32768, B=1), dict(M3, S=131072, B=1), dict(M3, S=1048576, B=1), dict(M3, S=131072, B=16)]
# One decoder layer around the attention, for the share of attention in a decode step: the widths of
# MiniMax-01 (hidden 6144, 2 active experts of 9216, 32 experts) with M3's attention shape.
LAYER = dict(hidden=6144, experts=32, active_experts=2, expert_hidden=9216)
SHARE_CONTEXTS = [8192, 32768, 131072, 524288, 1048576]
MIN_FOOTPRINT = 256 << 20       # bytes read per replay: well above the H100/H200 L2 cache (50-60 MB)


def graph_us(fn, copies, repeats=15):
    """Median microseconds per step: fn(i) for i in range(copies), captured in one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(copies):
            fn(i)                                                      # compile and warm up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    return median_event_ms(graph.replay, repeats) * 1000 / copies


def eager_us(fn, repeats=15):
    """Median microseconds of one uncaptured call (includes the CPU's launch overhead)."""
    fn(0)
    return median_event_ms(lambda: fn(0), repeats) * 1000


def copy_bandwidth(nbytes=2 << 30):
    """Device-to-device copy bandwidth in bytes/s (read + write counted)."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    us = median_event_ms(lambda: dst.copy_(src), 10) * 1000
    return 2 * nbytes / (us * 1e-6)


def step_inputs(case, copies, seed=0):
    """Per copy: k, v [B, HKV, S, D] and ik [B, 1, S, D] caches (bf16); shared q, iq; lengths = S."""
    B, HQ, HKV, D, S = (case[x] for x in ("B", "HQ", "HKV", "D", "S"))
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, device="cuda", generator=g, dtype=torch.bfloat16)
    caches = [(randn(B, HKV, S, D), randn(B, HKV, S, D), randn(B, 1, S, D)) for _ in range(copies)]
    q, iq = randn(B, HQ, 1, D), randn(B, HKV, 1, D)
    lens = torch.full((B,), S, dtype=torch.int32, device="cuda")
    return caches, q, iq, lens


def naive_gather_attend(q, k, v, sel, lens, BS):
    """Attention over the selected blocks in plain torch: gather them, mask, call SDPA."""
    B, HKV, S, D = k.shape
    K = sel.shape[-1]
    ids = sel[:, :, 0].clamp(min=0).long()                                      # [B, HKV, K]
    index = ids[..., None, None].expand(B, HKV, K, BS, D)
    kg = k.view(B, HKV, S // BS, BS, D).gather(2, index).view(B, HKV, K * BS, D)
    vg = v.view(B, HKV, S // BS, BS, D).gather(2, index).view(B, HKV, K * BS, D)
    tokens = ids[..., None] * BS + torch.arange(BS, device=k.device)
    keep = (sel[:, :, 0, :, None] >= 0) & (tokens < lens[:, None, None, None])
    keep = keep.view(B, HKV, 1, K * BS).repeat_interleave(q.shape[1] // HKV, 1)
    return F.scaled_dot_product_attention(q, kg, vg, attn_mask=keep, enable_gqa=True)


def case_bytes(case):
    B, HKV, D, S, BS, K = (case[x] for x in ("B", "HKV", "D", "S", "BS", "K"))
    kv = 2 * B * HKV * S * D * 2
    index = B * S * D * 2
    index_fp8 = B * S * (D + 4)                                       # fp8 keys and a float32 scale per token
    selected = 2 * B * HKV * K * BS * D * 2
    return dict(kv=kv, index=index, index_fp8=index_fp8, selected=selected)


def run_case(case, bandwidth, repeats):
    from m3lite.kernels import decode as dk
    B, HQ, HKV, D, S, BS, K = (case[x] for x in ("B", "HQ", "HKV", "D", "S", "BS", "K"))
    nbytes = case_bytes(case)
    copies = max(1, math.ceil(MIN_FOOTPRINT / (nbytes["kv"] + nbytes["index"])))
    caches, q, iq, lens = step_inputs(case, copies)
    sels = [dk.decode_select(dk.decode_scores(iq, ik, lens, BS), K) for _, _, ik in caches]
    fp8 = [quantize_index_keys(ik) for _, _, ik in caches]                  # (keys, scales) per copy
    scale = D ** -0.5
    methods = {
        "sdpa_dense": (lambda i: F.scaled_dot_product_attention(q, caches[i][0], caches[i][1], enable_gqa=True),
                       nbytes["kv"]),
        "naive_gather_sdpa": (lambda i: naive_gather_attend(q, caches[i][0], caches[i][1], sels[i], lens, BS),
                              nbytes["selected"]),
        "ours_index": (lambda i: dk.decode_select(dk.decode_scores(iq, caches[i][2], lens, BS), K), nbytes["index"]),
        "ours_attend": (lambda i: dk.decode_attend(q, caches[i][0], caches[i][1], sels[i], lens, BS, scale),
                        nbytes["selected"]),
        "ours_step": (lambda i: dk.decode_attention(q, *caches[i][:2], iq, caches[i][2], lens, BS, K, None),
                      nbytes["index"] + nbytes["selected"]),
        "ours_index_fp8": (lambda i: dk.decode_select(dk.decode_scores(iq, fp8[i][0], lens, BS, fp8[i][1]), K),
                           nbytes["index_fp8"]),
        "ours_step_fp8": (lambda i: dk.decode_attention(q, *caches[i][:2], iq, fp8[i][0], lens, BS, K, None, fp8[i][1]),
                          nbytes["index_fp8"] + nbytes["selected"]),
    }
    with torch.no_grad():
        errors = {"ours_step": step_error(q, iq, caches[0], lens, case),
                  "ours_step_fp8": step_error(q, iq, (*caches[0][:2], fp8[0][0]), lens, case, fp8[0][1])}
        rows = []
        for name, (fn, moved) in methods.items():
            us = graph_us(fn, copies, repeats)
            rows.append(dict(case=case_name(case), method=name, us=us, eager_us=eager_us(fn, repeats),
                             bytes=moved, bandwidth=moved / (us * 1e-6), copies=copies))
    dense = rows[0]["us"]
    for r in rows:
        r["of_copy_bandwidth"] = r["bandwidth"] / bandwidth
        r["speedup_vs_dense"] = dense / r["us"]
        r["rel_error_vs_twin"] = errors.get(r["method"])
    del caches, sels, fp8, methods
    torch.cuda.empty_cache()
    return rows


def step_error(q, iq, cache, lens, case, ik_scale=None):
    """Relative error of our step against the torch twin (float32) on one copy of the cache."""
    from m3lite.kernels import decode as dk
    k, v, ik = cache
    out = dk.decode_attention(q, k, v, iq, ik, lens, case["BS"], case["K"], None, ik_scale)[0]
    twin = decode_attention_torch(q.float(), k.float(), v.float(), iq.float(), ik if ik_scale is not None else ik.float(),
                                  lens.tolist(), case["BS"], case["K"], None, ik_scale)[0]
    return ((out.float() - twin).norm() / twin.norm()).item()


def selection_recall(reference, other):
    """Share of the reference selection's blocks that the other selection also picks (mean over rows)."""
    valid = reference >= 0
    kept = ((reference[..., :, None] == other[..., None, :]) & valid[..., None]).any(-1)
    return (kept.sum(-1) / valid.sum(-1)).float().mean().item()


def fp8_selection_recall(case, queries=16):
    """How much of the bf16 selection the fp8 index keys keep, for random and for local index keys."""
    from m3lite.bench.prefill import index_inputs
    from m3lite.kernels import decode as dk
    B, HKV, S, D, BS, K = (case[x] for x in ("B", "HKV", "S", "D", "BS", "K"))
    lens = torch.full((B,), S, dtype=torch.int32, device="cuda")
    rows = []
    for pattern in ("random", "locality"):
        iq, ik = index_inputs(B, HKV, S, D, pattern, torch.device("cuda"))
        iq = iq[:, :, -queries:].contiguous()
        reference = dk.decode_select(dk.decode_scores(iq, ik, lens, BS), K)
        ik_fp8, ik_scale = quantize_index_keys(ik)
        fp8 = dk.decode_select(dk.decode_scores(iq, ik_fp8, lens, BS, ik_scale), K)
        rows.append(dict(case=case_name(case), pattern=pattern, fp8_selection_recall=selection_recall(reference, fp8)))
        print(f"  {rows[-1]['case']} {pattern}: fp8 index keys keep {rows[-1]['fp8_selection_recall']:.1%} "
              f"of the bf16 selection", flush=True)
        del iq, ik, ik_fp8
    return rows


def sweep(bandwidth, repeats):
    """The index scan at 1M tokens for several blocks per program, and the top-k chunk size."""
    from m3lite.kernels import decode as dk
    case = CASES[2]
    caches, q, iq, lens = step_inputs(case, 1)
    ik = caches[0][2]
    moved = case_bytes(case)["index"]
    ik_fp8, ik_scale = quantize_index_keys(ik)
    rows = []
    for keys, key_scale, key_bytes in ((ik, None, moved), (ik_fp8, ik_scale, case_bytes(case)["index_fp8"])):
        for bpp, warps in ((1, 4), (2, 4), (4, 4), (8, 4), (16, 4), (32, 4), (4, 8), (16, 8)):
            us = graph_us(lambda i: dk.decode_scores(iq, keys, lens, case["BS"], key_scale, blocks_per_program=bpp,
                                                     num_warps=warps), 1, repeats)
            rows.append(dict(kernel="decode_scores", keys=str(keys.dtype).split(".")[-1], blocks_per_program=bpp,
                             num_warps=warps, us=us, of_copy_bandwidth=key_bytes / us / 1e-6 / bandwidth))
    scores = dk.decode_scores(iq, ik, lens, case["BS"])
    for chunk in (256, 1024, 4096):
        rows.append(dict(kernel="decode_select", chunk=chunk,
                         us=graph_us(lambda i: dk.decode_select(scores, 16, chunk=chunk), 1, repeats)))
    for r in rows:
        print("  " + "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
              flush=True)
    return rows


def layer_rest_us(batch, repeats):
    """One decoder layer without its attention core, at one token per sequence: the projections
    (q, k/v, index q/k, output), the router and two experts' SwiGLU MLPs (bf16 matmuls)."""
    h, e, dh = LAYER["hidden"], LAYER["expert_hidden"], M3["HQ"] * M3["D"]
    shapes = [(h, dh), (h, 2 * M3["HKV"] * M3["D"]), (h, M3["HKV"] * M3["D"] + M3["D"]), (dh, h), (h, LAYER["experts"])]
    shapes += [(h, 2 * e), (e, h)] * LAYER["active_experts"]
    copies = max(1, math.ceil(MIN_FOOTPRINT / sum(2 * a * b for a, b in shapes)))
    weights = [[torch.randn(a, b, device="cuda", dtype=torch.bfloat16) * a ** -0.5 for a, b in shapes]
               for _ in range(copies)]
    x = torch.randn(batch, h, device="cuda", dtype=torch.bfloat16)
    xs = {h: x, dh: torch.randn(batch, dh, device="cuda", dtype=torch.bfloat16),
          e: torch.randn(batch, e, device="cuda", dtype=torch.bfloat16)}

    def layer(i):
        for w in weights[i]:
            xs[w.shape[0]] @ w
    us = graph_us(layer, copies, repeats)
    del weights
    return us, sum(2 * a * b for a, b in shapes)


def attention_share(repeats):
    """Share of attention in one layer's decode step, dense vs MSA, as the context grows."""
    from m3lite.kernels import decode as dk
    rows = []
    for batch, contexts in ((1, SHARE_CONTEXTS), (16, SHARE_CONTEXTS[:3])):
        rest, weight_bytes = layer_rest_us(batch, repeats)
        for S in contexts:
            case = dict(M3, S=S, B=batch)
            nbytes = case_bytes(case)
            copies = max(1, math.ceil(MIN_FOOTPRINT / (nbytes["kv"] + nbytes["index"])))
            caches, q, iq, lens = step_inputs(case, copies)
            with torch.no_grad():
                dense = graph_us(lambda i: F.scaled_dot_product_attention(q, caches[i][0], caches[i][1],
                                                                          enable_gqa=True), copies, repeats)
                msa = graph_us(lambda i: dk.decode_attention(q, *caches[i][:2], iq, caches[i][2], lens, M3["BS"],
                                                             M3["K"], None), copies, repeats)
                fp8 = [quantize_index_keys(ik) for _, _, ik in caches]
                msa_fp8 = graph_us(lambda i: dk.decode_attention(q, *caches[i][:2], iq, fp8[i][0], lens, M3["BS"],
                                                                 M3["K"], None, fp8[i][1]), copies, repeats)
            rows.append(dict(batch=batch, context=S, rest_us=rest, dense_attention_us=dense, msa_attention_us=msa,
                             msa_fp8_attention_us=msa_fp8, dense_share=dense / (dense + rest),
                             msa_share=msa / (msa + rest), msa_fp8_share=msa_fp8 / (msa_fp8 + rest),
                             layer_speedup=(dense + rest) / (msa + rest), weight_bytes=weight_bytes))
            print(f"  batch {batch:2d} context {S // 1024:5d}K: rest {rest:7.1f} us, attention dense {dense:8.1f} us "
                  f"({rows[-1]['dense_share']:.0%}), msa {msa:6.1f} us ({rows[-1]['msa_share']:.0%}), "
                  f"msa fp8 {msa_fp8:6.1f} us ({rows[-1]['msa_fp8_share']:.0%})", flush=True)
            del caches, fp8
            torch.cuda.empty_cache()
    return rows


def case_name(c):
    S = c["S"]
    return f"B{c['B']}-S{S // 1048576}M" if S >= 1048576 else f"B{c['B']}-S{S // 1024}K"


def table(rows):
    head = (f"{'case':<11}{'method':<19}{'us':>9}{'eager us':>10}{'MB':>9}{'GB/s':>8}{'of copy':>9}{'x dense':>9}"
            f"{'err':>9}")
    lines = [head]
    for r in rows:
        err = f"{r['rel_error_vs_twin']:9.1e}" if r["rel_error_vs_twin"] is not None else f"{'-':>9}"
        lines.append(f"{r['case']:<11}{r['method']:<19}{r['us']:9.1f}{r['eager_us']:10.1f}{r['bytes'] / 1e6:9.1f}"
                     f"{r['bandwidth'] / 1e9:8.0f}{r['of_copy_bandwidth']:9.0%}{r['speedup_vs_dense']:9.2f}{err}")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--cases", type=int, nargs="+", help="indices into CASES (default: all)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-sweep", action="store_true", help="skip the kernel-configuration sweep")
    parser.add_argument("--sweep-only", action="store_true", help="only the kernel-configuration sweep")
    parser.add_argument("--no-share", action="store_true", help="skip the share of attention in a layer")
    parser.add_argument("--json", help="also write the results, GPU and versions to this JSON file")


def main(args):
    if not m3.env.HAS_CUDA:
        raise SystemExit("python -m m3lite.bench decode needs a CUDA GPU (CPU runs never fake GPU figures)")
    import triton
    bandwidth = copy_bandwidth()
    print(f"{m3.env.describe()}\ncopy bandwidth {bandwidth / 1e12:.2f} TB/s", flush=True)
    result = dict(benchmark="decode", copy_bandwidth=bandwidth, layer=LAYER, shape=M3)
    if not args.no_sweep:
        result["sweep"] = sweep(bandwidth, args.repeats)
    if args.sweep_only:
        return
    rows = []
    cases = [CASES[i] for i in args.cases] if args.cases else CASES
    for case in cases:
        rows += run_case(case, bandwidth, args.repeats)
        print(table(rows[-7:]).split("\n", 1)[1], flush=True)
    print(table(rows))
    result["rows"] = rows
    result["fp8_recall"] = [r for case in cases for r in fp8_selection_recall(case)]
    if not args.no_share:
        result["share"] = attention_share(args.repeats)
    if args.json:
        result["machine"] = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
