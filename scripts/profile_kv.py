"""Run the KV-outer pieces once at one benchmark case, for `ncu` to profile (GPU only).

Usage: ncu --clock-control none --section SpeedOfLight -k regex:"_sparse_kv_fwd|_combine_fwd" \
           python3 scripts/profile_kv.py [case index, default 0]
"""
import sys

import torch

from m3lite.attention.sparse import unique_selection
from m3lite.bench.prefill import CASES, case_inputs
from m3lite.kernels import sparse_kv as kv

case = CASES[int(sys.argv[1]) if len(sys.argv) > 1 else 0]
q, k, v, _, _, sel = case_inputs(case, "random")
sel = unique_selection(sel)
G = case["HQ"] // case["HKV"]
plan = kv.plan(sel, case["T"], case["BS"], G)
o_part, lse_part = kv.partials(q, k, v, sel.shape, plan, case["BS"], True, case["D"] ** -0.5)
out, lse = kv.combine(o_part, lse_part, q.shape, sel.shape[1], sel.shape[3])
torch.cuda.synchronize()
print("profiled", case)
