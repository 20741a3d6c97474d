"""Checkers of notebook 04 (Triton kernels), and the kernel pictures of m3lite.viz.kernels."""
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

import m3lite as m3
from m3lite.course import nb04
from m3lite.kernels.indexer import _sort_key
from m3lite.kernels.sparse_kv import plan
from m3lite.solutions import nb04 as sol04
from m3lite.viz.kernels import (case_rows, kv_program_loads, plot_measured, plot_program_loads, plot_roofline,
                                query_program_loads, roof)
from conftest import exercise_checker_tests

BENCH = Path(__file__).parents[1] / "data" / "bench" / "prefill-h200.json"


def sort_key_raw_bits(x):
    return x.view(torch.int32)                                        # negative floats sort backwards


def sort_key_flip_all_bits(x):
    bits = x.view(torch.int32)
    return bits ^ (bits >> 31)                                        # the sign bit flips too


def sort_key_as_float(x):
    return sol04.sort_key(x).float()


def kv_loads_one_program_per_block(sel, num_blocks, per_program):
    return sol04.kv_program_loads(sel, num_blocks, 1 << 30)


def kv_loads_query_order(sel, num_blocks, per_program):
    return query_program_loads(sel, num_blocks)


def flops_whole_blocks(sel, S, block_size, HQ, D):
    return 4 * D * (HQ // sel.shape[1]) * int((sel >= 0).sum()) * block_size   # no causal clamp


def flops_all_heads_per_row(sel, S, block_size, HQ, D):
    return sol04.useful_flops(sel, S, block_size, HQ, D) * sel.shape[1]


def shared_union_not_intersection(sel, tile):
    rows = []
    for first in range(0, sel.shape[0], tile):
        chosen = sorted({j for j in sel[first:first + tile].flatten().tolist() if j >= 0})[:sel.shape[1]]
        rows.append(chosen + [-1] * (sel.shape[1] - len(chosen)))
    return torch.tensor(rows, dtype=torch.int32)


def shared_first_query_only(sel, tile):
    first = sel[::tile].long()                                        # the tile's first query, not all of them
    ordered = torch.where(first < 0, 10 ** 6, first).sort(-1).values
    return torch.where(ordered == 10 ** 6, -1, ordered).int()


CHECKS = [
    (nb04.check_sort_key, sol04.sort_key, sort_key_raw_bits),
    (nb04.check_sort_key, sol04.sort_key, sort_key_flip_all_bits),
    (nb04.check_sort_key, sol04.sort_key, sort_key_as_float),
    (nb04.check_kv_program_loads, sol04.kv_program_loads, kv_loads_one_program_per_block),
    (nb04.check_kv_program_loads, sol04.kv_program_loads, kv_loads_query_order),
    (nb04.check_useful_flops, sol04.useful_flops, flops_whole_blocks),
    (nb04.check_useful_flops, sol04.useful_flops, flops_all_heads_per_row),
    (nb04.check_tile_shared_blocks, sol04.tile_shared_blocks, shared_union_not_intersection),
    (nb04.check_tile_shared_blocks, sol04.tile_shared_blocks, shared_first_query_only),
]
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(
    [(check, solution, wrong, "") for check, solution, wrong in CHECKS])      # these checkers' hints are not tested


def test_sort_key_solution_is_the_kernels_key():
    x = torch.tensor([float("-inf"), -3.0, -1e-40, -0.0, 0.0, 1e-40, 2.0, float("inf")])
    assert sol04.sort_key(x).tolist() == [_sort_key(v) for v in x.tolist()]
    assert torch.equal(sol04.sort_key(x).argsort(), torch.arange(len(x)))


def test_useful_flops_counts_the_visible_tokens_by_hand():
    # T = 3 queries at the end of S = 10 keys (positions 7, 8, 9), blocks of 4 (the last has 2 tokens)
    sel = torch.tensor([[[[1, 0], [2, -1], [2, 1]]]], dtype=torch.int32)
    visible = (4 + 4) + 1 + (2 + 4)                   # block 1 whole, block 0 whole; 8 of block 2; 8, 9 + block 1
    assert sol04.useful_flops(sel, 10, 4, 2, 16) == 4 * 16 * 2 * visible


def test_program_loads_match_the_plan():
    torch.manual_seed(0)
    T, S, BS, K = 40, 40, 8, 3
    sel = m3.select_blocks(m3.block_scores(torch.randn(1, 1, T, 8), torch.randn(1, 1, S, 8), BS), K)
    NB = m3.num_blocks(S, BS)
    counts = m3.build_block_csr(sel, NB).offsets.diff()
    q_loads = query_program_loads(sel[0, 0], NB)
    assert q_loads.shape == (T, NB) and torch.equal(q_loads.sum(0), counts)
    p = plan(sel, S, BS, 1, block_m=4, chunks_per_program=1)
    kv = kv_program_loads(p.rows[p.working()], NB)
    assert kv.shape == (int(p.working().sum()), NB) and (kv.sum(1) == 1).all()
    assert torch.equal(kv.sum(0), (counts + 3) // 4)
    assert torch.equal(sol04.kv_program_loads(sel[0, 0], NB, 4), kv)


def test_roof_is_the_minimum_of_the_two_ceilings():
    assert roof(1.0, 4.0, 100.0) == 4.0
    assert roof(1000.0, 4.0, 100.0) == 100.0
    np.testing.assert_allclose(roof([10, 25, 50], 4.0, 100.0), [40, 100, 100])


def recorded_rows():
    return json.loads(BENCH.read_text())["rows"]


def test_recorded_results_have_what_the_notebook_reads():
    rows = recorded_rows()
    cases = ["HQ64-HKV4-T16K", "HQ64-HKV4-T64K", "HQ64-HKV4-T128K"]
    for case in cases:
        for pattern in ("random", "locality"):
            for method in ("sdpa_dense_causal", "ours_query", "ours_kv", "msa_end_to_end", "flex_selection_mask"):
                r = case_rows(rows, case, pattern, method)
                assert r is not None and r["ms"] > 0 and r["useful_tflops"] > 0
    assert case_rows(rows, "HQ64-HKV4-T64K", "random", "no_such_method") is None


def test_pictures_are_figures():
    torch.manual_seed(0)
    sel = m3.select_blocks(m3.block_scores(torch.randn(1, 1, 24, 8), torch.randn(1, 1, 24, 8), 8), 2)
    p = plan(sel, 24, 8, 1, block_m=4, chunks_per_program=1)
    rows = recorded_rows()
    cases = ["HQ64-HKV4-T16K", "HQ64-HKV4-T64K", "HQ64-HKV4-T128K"]
    figs = [plot_program_loads({"query": query_program_loads(sel[0, 0], 3), "kv": kv_program_loads(p.rows, 3)}),
            plot_measured(rows, cases, ["ours_kv", "sdpa_dense_causal"], targets={"t": ("ours_kv", cases[1], 300)}),
            plot_measured(rows, cases, ["ours_kv"], value="speedup_vs_sdpa", reference=1, xlabels=["a", "b", "c"]),
            plot_roofline([("a", "ours_kv", [80.0, 81.0], [150.0, 160.0]), ("b", "other", [2.0], [10.0])], 4.3, 790)]
    for fig in figs:
        assert isinstance(fig, Figure) and 80 <= fig.dpi <= 100
