"""Checkers of notebook 03 (gather orders): block load counts, selection inversion, LSE merge."""
import torch

from ..attention import block_scores, build_block_csr, merge_partials, num_blocks, select_blocks
from ..attention.loads import block_load_counts
from .checker import verdict

# (label, B, HI, T, S, block_size, top_k): awkward sizes, a partial last block, T < S, K > NB.
SIZES = [("B1-H1-T12-S12-BS3-K2", 1, 1, 12, 12, 3, 2),
         ("B2-H2-T50-S50-BS8-K3", 2, 2, 50, 50, 8, 3),
         ("B1-H3-T7-S64-BS16-K2", 1, 3, 7, 64, 16, 2),
         ("B2-H1-T10-S37-BS8-K9", 2, 1, 10, 37, 8, 9)]


def _selection(B, HI, T, S, BS, K, seed):
    g = torch.Generator().manual_seed(seed)
    iq, ik = torch.randn(B, HI, T, 8, generator=g), torch.randn(B, 1, S, 8, generator=g)
    return select_blocks(block_scores(iq, ik, block_size=BS), top_k=K)


def check_count_loads(fn):
    """fn(sel, num_blocks) -> (query_loads, kv_loads), each int [NB]."""
    cases = []
    for i, (label, B, HI, T, S, BS, K) in enumerate(SIZES):
        sel, NB = _selection(B, HI, T, S, BS, K, seed=i), num_blocks(S, BS)
        expected = (block_load_counts(sel, NB, "query"), block_load_counts(sel, NB, "kv"))
        cases.append((label, (sel, NB), expected))
    sel = torch.tensor([[[[0, -1], [-1, -1], [0, 2]]]], dtype=torch.int32)   # block 1 is never chosen
    expected = (torch.tensor([2, 0, 1, 0]), torch.tensor([1, 0, 1, 0]))
    cases.append(("hand-made, an unused block", (sel, 4), expected))
    return verdict("count_loads", fn, cases)


def check_invert_selection(fn):
    """fn(sel, num_blocks): sel int [T, K] -> (offsets int [NB + 1], queries int [nnz])."""
    cases = []
    for i, (label, _, _, T, S, BS, K) in enumerate(SIZES):
        sel, NB = _selection(1, 1, T, S, BS, K, seed=10 + i)[0, 0], num_blocks(S, BS)
        csr = build_block_csr(sel[None, None], NB)
        cases.append((label, (sel, NB), (csr.offsets, csr.query)))
    sel = torch.tensor([[0, -1], [1, 0], [3, -1]], dtype=torch.int32)
    cases.append(("hand-made, an unused block", (sel, 5),
                  (torch.tensor([0, 2, 3, 3, 4, 4]), torch.tensor([0, 1, 1, 2]))))
    return verdict("invert_selection", fn, cases)


def _merge_case(label, o1, lse1, o2, lse2):
    expected = merge_partials(torch.stack([o1, o2], -2), torch.stack([lse1, lse2], -1))
    return (label, (o1, lse1, o2, lse2), expected)


def check_merge_two(fn):
    """fn(o1, lse1, o2, lse2) -> (o, lse): two partial softmax results merged into one."""
    g = torch.Generator().manual_seed(0)
    o1, o2 = torch.randn(2, 5, 4, generator=g), torch.randn(2, 5, 4, generator=g)
    lse1, lse2 = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    ninf = torch.full((2, 5), float("-inf"))
    zeros = torch.zeros(2, 5, 4)
    cases = [_merge_case("N10-D4", o1, lse1, o2, lse2),
             _merge_case("large lse (1000 + x)", o1, lse1 + 1000, o2, lse2 + 1000),
             _merge_case("second part empty (lse -inf)", o1, lse1, zeros, ninf),
             _merge_case("first part empty (lse -inf)", zeros, ninf, o2, lse2),
             _merge_case("both parts empty", zeros, ninf, zeros.clone(), ninf.clone())]
    return verdict("merge_two", fn, cases)
