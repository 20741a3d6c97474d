"""A/B: the partials kernel before (scripts/variants/sparse_kv_v3.py) and now, side by side in one process."""
import sys
import torch
from m3lite.attention import attention_flops
from m3lite.attention.sparse import unique_selection
from m3lite.bench.prefill import CASES, attended_tokens, case_inputs, case_name, relative_error, time_ms
from m3lite.kernels import sparse_kv as kv
sys.path.insert(0, "scripts/variants")
import sparse_kv_v3 as kv_v3  # noqa: E402

for i in [1, 3, 4, 2]:
    case = CASES[i]
    for pattern in ("random", "locality"):
        q, k, v, _, _, sel = case_inputs(case, pattern)
        T, BS, D, G = case["T"], case["BS"], case["D"], case["HQ"] // case["HKV"]
        HI, K, scale = sel.shape[1], sel.shape[3], D ** -0.5
        useful = attention_flops(G, attended_tokens(sel, T, T, BS), D)
        usel = unique_selection(sel)
        p = kv.plan(usel, T, BS, G)
        ref = kv_v3.combine(*kv_v3.partials(q, k, v, sel.shape, p, BS, True, scale), q.shape, HI, K)[0]
        new = kv.combine(*kv.partials(q, k, v, sel.shape, p, BS, True, scale), q.shape, HI, K)[0]
        print(f"{case_name(case)} {pattern}: new vs before {relative_error(new, ref):.1e}", flush=True)
        for rep in range(2):
            for name, mod in (("before", kv_v3), ("now", kv)):
                ms = time_ms(lambda: mod.partials(q, k, v, sel.shape, p, BS, True, scale), 10)
                print(f"  partials {name:7s} {ms:7.2f} ms {useful / ms / 1e9:6.1f} TFLOP/s", flush=True)
            for name, mod in (("before", kv_v3), ("now", kv)):
                ms = time_ms(lambda: mod.sparse_attention_kv(q, k, v, sel, BS, True, scale), 10)
                print(f"  call     {name:7s} {ms:7.2f} ms {useful / ms / 1e9:6.1f} TFLOP/s", flush=True)
        del q, k, v, sel, usel, p, ref, new
        torch.cuda.empty_cache()
