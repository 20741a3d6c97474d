"""GPU prefill benchmark: dense SDPA, FlexAttention with the same selection as a mask, our
query-major and KV-outer paths (the KV-outer one with and without the tile pass), and
msa_attention end to end, side by side in one process.

Useful FLOP/s counts only the tokens each method has to attend: 4 * D * sum over query heads
and queries of the visible tokens of the selected blocks (for SDPA: the causal triangle).
"""
import json

import torch
import torch.nn.functional as F

import m3lite as m3
from m3lite.attention import attention_flops, causal_attended_tokens
from m3lite.bench.timing import median_event_ms

M3 = dict(B=1, HQ=64, HKV=4, D=128, BS=128, K=16)
CASES = [dict(M3, T=16384), dict(M3, T=65536), dict(M3, T=131072),
         dict(M3, T=65536, HQ=8, HKV=4), dict(M3, T=65536, HQ=16, HKV=16)]
PATTERNS = ("random", "locality")


def index_inputs(B, HI, T, D, pattern, device, seed=0):
    """Index queries and keys. "locality": keys drift slowly along the sequence and each query
    resembles the keys near it, so nearby blocks win; "random": no structure at all."""
    g = torch.Generator(device=device).manual_seed(seed)
    if pattern == "random":
        return (torch.randn(B, HI, T, D, device=device, generator=g, dtype=torch.bfloat16),
                torch.randn(B, 1, T, D, device=device, generator=g, dtype=torch.bfloat16))
    walk = torch.randn(B, 1, T, D, device=device, generator=g).mul_(0.05).cumsum(2)
    ik = walk + torch.randn(B, 1, T, D, device=device, generator=g)
    iq = walk + 0.5 * torch.randn(B, HI, T, D, device=device, generator=g)
    return iq.bfloat16(), ik.bfloat16()


def random_selection(B, HI, T, NB, BS, K, device, seed=0, backend="triton"):
    """Each query: its own block plus K - 1 uniformly random earlier blocks (the worst case)."""
    g = torch.Generator(device=device).manual_seed(seed)
    own = (torch.arange(T, device=device) // BS)[:, None]
    scores = torch.rand(B, HI, T, NB, device=device, generator=g)
    scores = scores.masked_fill(torch.arange(NB, device=device) > own, float("-inf"))
    return m3.select_blocks(scores, top_k=K, backend=backend)


def attended_tokens(sel, T, S, BS):
    """Per selection row, the number of (query, visible key) pairs the selection attends."""
    pos = torch.arange(S - T, S, device=sel.device)[:, None]
    start = sel.long() * BS
    visible = (torch.minimum(pos + 1, torch.tensor(S, device=sel.device)) - start).clamp(0, BS)
    return torch.where(sel >= 0, visible, 0).sum().item()


def time_ms(fn, repeats):
    """Median milliseconds of fn() over `repeats` runs, by CUDA events, after one warm-up."""
    fn()
    return median_event_ms(fn, repeats)


def flex_method(sel, B, HQ, HI, T, NB, BS):
    """FlexAttention with the selection as a token-level mask (compiled)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    chosen = torch.zeros(B, HI, T, NB + 1, dtype=torch.bool, device=sel.device)
    chosen.scatter_(-1, torch.where(sel < 0, NB, sel).long(), True)
    rows_per_sel = HQ // HI

    def mask_mod(b, h, q_idx, kv_idx):
        return chosen[b, h // rows_per_sel, q_idx, kv_idx // BS] & (kv_idx <= q_idx)

    block_mask = create_block_mask(mask_mod, B, HQ, T, T, device=sel.device, BLOCK_SIZE=128, _compile=True)
    flex = torch.compile(flex_attention)
    return lambda q, k, v: flex(q, k, v, block_mask=block_mask, enable_gqa=True)


def relative_error(out, ref):
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def check_against_twin(q, k, v, sel, BS, outs, rows=1024):
    """Relative error of each kernel vs the torch twin, on the last `rows` queries (all of S)."""
    tail = slice(q.shape[2] - rows, None)
    twin = m3.sparse_attention(q[:, :, tail].float(), k.float(), v.float(), sel[:, :, tail], block_size=BS,
                               order="kv", backend="torch")
    return {name: relative_error(out[:, :, tail], twin) for name, out in outs.items()}


def case_inputs(case, pattern):
    """bf16 q, k, v, index queries and keys, and the selection for one benchmark case."""
    B, HQ, HKV, D, BS, K, T = (case[x] for x in ("B", "HQ", "HKV", "D", "BS", "K", "T"))
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(1)
    q, k, v = (torch.randn(B, h, T, D, device=dev, generator=g, dtype=torch.bfloat16) for h in (HQ, HKV, HKV))
    iq, ik = index_inputs(B, HKV, T, D, pattern, dev)
    if pattern == "random":
        sel = random_selection(B, HKV, T, m3.num_blocks(T, BS), BS, K, dev)
    else:
        sel = m3.select_blocks(m3.block_scores(iq, ik, block_size=BS, backend="triton"), top_k=K, backend="triton")
    return q, k, v, iq, ik, sel


def sweep_kv(case, pattern, repeats):
    """Time the KV-outer pieces (plan, partials, combine) and kernel configurations on one case."""
    from m3lite.attention.sparse import unique_selection
    from m3lite.kernels import sparse_kv as kv
    q, k, v, _, _, sel = case_inputs(case, pattern)
    sel = unique_selection(sel)
    BS, D, G = case["BS"], case["D"], case["HQ"] // case["HKV"]
    useful = attention_flops(G, attended_tokens(sel, case["T"], case["T"], BS), D)
    plan = kv.plan(sel, case["T"], BS, G)
    o_part, lse_part = kv.partials(q, k, v, sel.shape, plan, BS, True, D ** -0.5)
    pieces = {"plan": lambda: kv.plan(sel, case["T"], BS, G),
              "partials": lambda: kv.partials(q, k, v, sel.shape, plan, BS, True, D ** -0.5),
              "combine": lambda: kv.combine(o_part, lse_part, q.shape, sel.shape[1], sel.shape[3])}
    part_bytes = o_part.numel() * o_part.element_size() + lse_part.numel() * 4
    print(f"{case_name(case)} {pattern}: partials {part_bytes / 1e9:.1f} GB; useful {useful / 1e12:.2f} TFLOP")
    for name, fn in pieces.items():
        print(f"  {name:9s} {time_ms(fn, repeats):8.2f} ms", flush=True)
    for bm, c, w, st in [(64, 64, 4, 1), (64, 32, 4, 1), (64, 128, 4, 1), (64, 64, 4, 2), (128, 32, 8, 1),
                         (32, 128, 4, 1)]:
        p = kv.plan(sel, case["T"], BS, G, block_m=bm, chunks_per_program=c)
        ms = time_ms(lambda: kv.partials(q, k, v, sel.shape, p, BS, True, D ** -0.5, num_warps=w, num_stages=st),
                     repeats)
        print(f"  partials block_m={bm} chunks={c} warps={w} stages={st}: {ms:.2f} ms", flush=True)
    for r, w, st in [(128, 4, 2), (64, 4, 2), (256, 8, 2), (128, 4, 3)]:
        ms = time_ms(lambda: kv.combine(o_part, lse_part, q.shape, sel.shape[1], sel.shape[3], r, w, st), repeats)
        print(f"  combine block_r={r} warps={w} stages={st}: {ms:.2f} ms ({part_bytes / ms / 1e6:.0f} GB/s reading the "
              f"partials)", flush=True)


def run_case(case, pattern, repeats, with_flex=True):
    from m3lite import kernels
    B, HQ, HKV, D, BS, K, T = (case[x] for x in ("B", "HQ", "HKV", "D", "BS", "K", "T"))
    q, k, v, iq, ik, sel = case_inputs(case, pattern)
    NB = m3.num_blocks(T, BS)
    useful = attention_flops(HQ // HKV, attended_tokens(sel, T, T, BS), D)
    dense_useful = attention_flops(HQ, B * causal_attended_tokens(T, T), D)
    methods = {
        "sdpa_dense_causal": (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
                              dense_useful),
        "ours_query": (lambda: m3.sparse_attention(q, k, v, sel, block_size=BS, order="query", backend="triton"),
                       useful),
        "ours_kv": (lambda: m3.sparse_attention(q, k, v, sel, block_size=BS, order="kv", backend="triton"),
                    useful),
        "ours_kv_no_tiles": (lambda: kernels.sparse_attention_kv(q, k, v, sel, BS, True, D ** -0.5, tile_rows=0)[0],
                             useful),
        "indexer": (lambda: m3.select_blocks(m3.block_scores(iq, ik, block_size=BS, backend="triton"),
                                             top_k=K, backend="triton"), None),
        "msa_end_to_end": (lambda: m3.msa_attention(q, k, v, iq, ik, block_size=BS, top_k=K, backend="triton"),
                           useful),
    }
    if with_flex:
        flex = flex_method(sel, B, HQ, HKV, T, NB, BS)
        methods["flex_selection_mask"] = (lambda: flex(q, k, v), useful)
    rows = []
    with torch.no_grad():
        errors = check_against_twin(q, k, v, sel, BS, {
            "ours_query": methods["ours_query"][0](), "ours_kv": methods["ours_kv"][0](),
            "ours_kv_no_tiles": methods["ours_kv_no_tiles"][0](),
            **({"flex_selection_mask": methods["flex_selection_mask"][0]()} if with_flex else {})})
        times = {name: time_ms(fn, repeats) for name, (fn, _) in methods.items()}
    sdpa_rate = dense_useful / times["sdpa_dense_causal"] / 1e9
    for name, (fn, flops) in methods.items():
        rate = flops / times[name] / 1e9 if flops else None
        rows.append(dict(case=case_name(case), pattern=pattern, method=name, ms=times[name],
                         useful_tflops=rate, speedup_vs_sdpa=times["sdpa_dense_causal"] / times[name],
                         ratio_to_dense_rate=rate / sdpa_rate if rate else None,
                         rel_error_vs_twin=errors.get(name)))
    del q, k, v, iq, ik, sel, methods
    torch.cuda.empty_cache()
    return rows


def case_name(c):
    return f"HQ{c['HQ']}-HKV{c['HKV']}-T{c['T'] // 1024}K"


def table(rows):
    head = f"{'case':<18}{'pattern':<9}{'method':<20}{'ms':>9}{'TFLOP/s':>9}{'x SDPA':>8}{'/dense':>7}{'err':>9}"
    lines = [head]
    for r in rows:
        rate = f"{r['useful_tflops']:9.1f}" if r["useful_tflops"] else f"{'-':>9}"
        ratio = f"{r['ratio_to_dense_rate']:7.2f}" if r["ratio_to_dense_rate"] else f"{'-':>7}"
        err = f"{r['rel_error_vs_twin']:9.1e}" if r["rel_error_vs_twin"] is not None else f"{'-':>9}"
        lines.append(f"{r['case']:<18}{r['pattern']:<9}{r['method']:<20}{r['ms']:9.2f}{rate}"
                     f"{r['speedup_vs_sdpa']:8.2f}{ratio}{err}")
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("--cases", type=int, nargs="+", help="indices into CASES (default: all)")
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=PATTERNS)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-flex", action="store_true", help="leave FlexAttention out")
    parser.add_argument("--json", help="also write the results, GPU and versions to this JSON file")
    parser.add_argument("--sweep-kv", action="store_true", help="time KV-outer kernel configurations instead")


def main(args):
    if not m3.env.HAS_CUDA:
        raise SystemExit("python -m m3lite.bench prefill needs a CUDA GPU (CPU runs never fake GPU figures)")
    import triton
    cases = [CASES[i] for i in args.cases] if args.cases else CASES
    if args.sweep_kv:
        for case in cases:
            sweep_kv(case, args.patterns[0], args.repeats)
        return
    rows = []
    for case in cases:
        for pattern in args.patterns:
            new = run_case(case, pattern, args.repeats, with_flex=not args.no_flex)
            rows += new
            print(table(new).split("\n", 1)[1], flush=True)
    print(m3.env.describe())
    print(table(rows))
    if args.json:
        info = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__)
        with open(args.json, "w") as f:
            json.dump(dict(benchmark="prefill", machine=info, rows=rows), f, indent=1)
