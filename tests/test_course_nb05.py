"""Checkers of notebook 05 (decoding), and the decode pictures of m3lite.viz.decode."""
import json
from pathlib import Path

import torch
from matplotlib.figure import Figure

from m3lite.bench.decode import CASES, case_bytes
from m3lite.course import nb05
from m3lite.solutions import nb05 as sol05
from m3lite.viz.decode import (decode_row, plot_attention_share, plot_cache, plot_decode_measured,
                               plot_step_bytes, step_bytes)
from conftest import exercise_checker_tests

BENCH = Path(__file__).parents[1] / "data" / "bench" / "decode-h200.json"


def capacities_just_what_is_needed(counts, block_size, capacity):
    lengths = torch.tensor(counts).cumsum(0).tolist()
    start = -(-capacity // block_size) * block_size
    return [max(start, -(-n // block_size) * block_size) for n in lengths]


def capacities_never_rounded(counts, block_size, capacity):
    after, length = [], 0
    for n in counts:
        length += n
        if length > capacity:
            capacity = max(length, 2 * capacity)
        after.append(capacity)
    return after


def positions_top_left(lengths, n):
    return torch.arange(n).expand(len(lengths), n)


def positions_off_by_one(lengths, n):
    return sol05.query_positions(lengths, n) + 1


def positions_longest_sequence(lengths, n):
    return sol05.query_positions([max(lengths)] * len(lengths), n)


def bytes_only_k(*args):
    dense, msa = sol05.decode_bytes(*args)
    return dense // 2, msa


def bytes_no_index_scan(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes):
    return sol05.decode_bytes(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes)[0], 2 * B * HKV * min(S, K * BS) * D * kv_bytes


def bytes_whole_blocks_always(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes):
    dense = sol05.decode_bytes(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes)[0]
    return dense, B * S * DI * index_bytes + 2 * B * HKV * K * BS * D * kv_bytes


def bytes_index_per_kv_head(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes):
    dense, msa = sol05.decode_bytes(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes)
    return dense, msa + (HKV - 1) * B * S * DI * index_bytes


def bound_only_k(*args):
    return sol05.speedup_bound(*args) / 2


def bound_upside_down(*args):
    return 1 / sol05.speedup_bound(*args)


def bound_in_elements(HKV, D, DI, kv_bytes, index_bytes):
    return 2 * HKV * D / DI


CHECKS = [
    (nb05.check_capacities, sol05.capacities, capacities_just_what_is_needed, "not just what it needs"),
    (nb05.check_capacities, sol05.capacities, capacities_never_rounded, "whole"),
    (nb05.check_query_positions, sol05.query_positions, positions_top_left, "top-left"),
    (nb05.check_query_positions, sol05.query_positions, positions_off_by_one, "off by one"),
    (nb05.check_query_positions, sol05.query_positions, positions_longest_sequence, "its own length"),
    (nb05.check_decode_bytes, sol05.decode_bytes, bytes_only_k, "both K and V"),
    (nb05.check_decode_bytes, sol05.decode_bytes, bytes_no_index_scan, "every index key"),
    (nb05.check_decode_bytes, sol05.decode_bytes, bytes_whole_blocks_always, "min(S, K * BS)"),
    (nb05.check_decode_bytes, sol05.decode_bytes, bytes_index_per_kv_head, "one shared index-key head"),
    (nb05.check_speedup_bound, sol05.speedup_bound, bound_only_k, "both K and V"),
    (nb05.check_speedup_bound, sol05.speedup_bound, bound_upside_down, "upside down"),
    (nb05.check_speedup_bound, sol05.speedup_bound, bound_in_elements, "count bytes"),
]
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(CHECKS)


def test_positions_read_off_decode_attention_are_bottom_right():
    assert nb05._positions_of_decode([13, 5, 20], 3).tolist() == [[10, 11, 12], [2, 3, 4], [17, 18, 19]]


def test_capacities_solution_by_hand():
    # blocks of 8, start at 10 -> 16; 7 fits; 37 -> max(37, 32) -> 40; 39 fits; 103 -> max(103, 80) -> 104
    assert sol05.capacities([7, 30, 2, 64], 8, 10) == [16, 40, 40, 104]


def test_step_bytes_agree_with_the_benchmark():
    for case in CASES:
        ours = step_bytes(case["S"], B=case["B"], HKV=case["HKV"], D=case["D"], DI=case["D"], BS=case["BS"],
                          K=case["K"])
        bench = case_bytes(case)
        assert (ours["dense"], ours["index"], ours["selected"]) == (bench["kv"], bench["index"], bench["selected"])
        if "index_fp8" in bench:
            fp8 = step_bytes(case["S"], B=case["B"], DI=case["D"], index_bytes=1, index_scale_bytes=4)
            assert fp8["index"] == bench["index_fp8"]


def test_step_bytes_at_m3_shape_tend_to_eight_and_sixteen():
    big = 2 ** 40
    assert step_bytes(big)["dense"] / step_bytes(big)["index"] == 8
    assert step_bytes(big, index_bytes=1)["dense"] / step_bytes(big, index_bytes=1)["index"] == 16
    assert sol05.speedup_bound() == 8 and sol05.speedup_bound(index_bytes=1) == 16
    small = step_bytes(100)
    assert small["selected"] == small["dense"]                      # a short cache: the selection is all of it


def recorded():
    return json.loads(BENCH.read_text())


def test_recorded_results_have_what_the_notebook_reads():
    bench = recorded()
    assert bench["copy_bandwidth"] > 0 and bench["machine"]["gpu"]
    for case in ("B1-S32K", "B1-S128K", "B1-S1M", "B16-S128K"):
        for method in ("sdpa_dense", "ours_index", "ours_step"):
            r = decode_row(bench["rows"], case, method)
            assert r is not None and r["us"] > 0 and r["eager_us"] > 0 and r["bytes"] > 0
    assert decode_row(bench["rows"], "B1-S1M", "no_such_method") is None
    assert {"batch", "context", "dense_share", "msa_share", "rest_us"} <= set(bench["share"][0])
    assert any(r["kernel"] == "decode_scores" for r in bench["sweep"])


def test_pictures_are_figures():
    bench = recorded()
    rows = bench["rows"] + [dict(bench["rows"][-1], method="a_new_method")]    # unknown methods still draw
    figs = [plot_cache([("prompt", [13, 5, 20], 32), ("later", [26, 18, 33], 64)], 8),
            plot_cache([("one", [3], 4)], 4, new=0),
            plot_step_bytes([1024, 65536, 2 ** 20]),
            plot_step_bytes([100, 1000], index_formats={"bf16": (2, 0)}, HKV=2, D=64, DI=64, BS=16, K=4),
            plot_decode_measured(rows, "us", "us per step"),
            plot_decode_measured(rows, "speedup_vs_dense", "x", log=False, reference=1, methods=["ours_step"]),
            plot_attention_share(bench["share"]),
            plot_attention_share([dict(r, msa_fp8_share=r["msa_share"] / 2) for r in bench["share"]])]
    for fig in figs:
        assert isinstance(fig, Figure) and 80 <= fig.dpi <= 100
