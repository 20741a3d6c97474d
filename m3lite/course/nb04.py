"""Checkers of notebook 04 (Triton kernels): the sort key, the KV-outer program list, useful FLOPs,
the blocks a tile of queries shares."""
import torch

from ..attention import attention_flops, block_scores, num_blocks, select_blocks
from ..attention.tile_shared import shared_blocks
from ..bench.prefill import attended_tokens
from ..kernels.indexer import _sort_key
from ..kernels.sparse_kv import plan
from ..viz.kernels import kv_program_loads
from .checker import close, verdict
from .nb03 import SIZES, _selection   # the same awkward selections as notebook 03

def _floats(seed):
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor([float("-inf"), float("inf"), 0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 1.0, -1.0,
                            3.4e38, -3.4e38, 2.0, -2.0, 0.5, -0.5])
    return torch.cat([special, torch.randn(40, generator=g) * 10 ** torch.randint(-3, 4, (40,), generator=g)])


def same_order(got, x):
    """Is `got` an int32 key of the floats x: same order as the floats, own bits for x >= +0?"""
    if not isinstance(got, torch.Tensor):
        return False, f"expected a tensor, got {type(got).__name__}"
    if got.dtype != torch.int32 or got.shape != x.shape:
        return False, f"expected int32 of shape {tuple(x.shape)}, got {got.dtype} of shape {tuple(got.shape)}"
    bits = x.view(torch.int32)
    plain = bits >= 0                                                  # the sign bit is clear
    if not torch.equal(got[plain], bits[plain]):
        i = plain.nonzero()[(got[plain] != bits[plain]).nonzero()[0, 0]].item()
        return False, f"x = {x[i].item():.4g} >= +0.0 should keep its bit pattern {bits[i].item()}, got {got[i].item()}"
    want = torch.tensor([_sort_key(v) for v in x.tolist()], dtype=torch.int64)
    order = want.argsort()
    step_want, step_got = want[order].diff().sign(), got.long()[order].diff().sign()
    if not torch.equal(step_want, step_got):
        i = (step_want != step_got).nonzero()[0, 0].item()
        a, b = x[order[i]].item(), x[order[i + 1]].item()
        return False, f"{a:.4g} and {b:.4g} get keys {got[order[i]].item()} and {got[order[i + 1]].item()}, out of order"
    return True, ""


def check_sort_key(fn):
    """fn(x): float32 [N] -> int32 [N] keys that sort like the floats (for packing with block ids)."""
    cases = [(f"N56, seed {s}", (_floats(s),), _floats(s)) for s in range(3)]
    cases.append(("only negatives", (-_floats(3).abs() - 1e-3,), -_floats(3).abs() - 1e-3))
    return verdict("sort_key", fn, cases, compare=same_order)


def check_kv_program_loads(fn):
    """fn(sel, num_blocks, per_program): sel int [T, K] -> int64 [P, NB] load matrix of the programs."""
    cases = []
    for i, (label, _, _, T, S, BS, K) in enumerate(SIZES):
        sel, NB = _selection(1, 1, T, S, BS, K, seed=20 + i)[0, 0], num_blocks(S, BS)
        for per_program in (1, 3, 8):
            p = plan(sel[None, None], S, BS, 1, block_m=per_program, chunks_per_program=1)
            cases.append((f"{label}, per_program={per_program}", (sel, NB, per_program),
                          kv_program_loads(p.rows[p.working()], NB)))
    sel = torch.tensor([[0, -1], [1, 0], [3, -1], [0, 3]], dtype=torch.int32)
    cases.append(("hand-made, an unused block, per_program=2", (sel, 5, 2),
                  torch.tensor([[1, 0, 0, 0, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]])))
    return verdict("kv_program_loads", fn, cases)


def same_count(got, expected):
    """Compare an integer count, taking a Python number or a one-element tensor."""
    if isinstance(got, torch.Tensor):
        if got.numel() != 1:
            return False, f"expected one number, got a tensor of shape {tuple(got.shape)}"
        got = got.item()
    if not isinstance(got, (int, float)):
        return False, f"expected a number, got {type(got).__name__}"
    return close(int(got) if float(got).is_integer() else got, expected)


def check_useful_flops(fn):
    """fn(sel, S, block_size, HQ, D): useful FLOPs of sparse attention over a causal selection."""
    cases = []
    for i, (label, B, HI, T, S, BS, K) in enumerate(SIZES):
        sel = _selection(B, HI, T, S, BS, K, seed=30 + i)
        for HQ, D in ((HI * 2, 16), (HI * 8, 128)):
            flops = attention_flops(HQ // HI, attended_tokens(sel, T, S, BS), D)
            cases.append((f"{label}-HQ{HQ}-D{D}", (sel, S, BS, HQ, D), flops))
    return verdict("useful_flops", fn, cases, compare=same_count)


def _local_selection(T, S, BS, K, seed):
    """One selection row [T, K] whose index queries drift along the sequence: neighbours share blocks."""
    g = torch.Generator().manual_seed(seed)
    walk = torch.randn(1, 1, S, 8, generator=g).mul(0.3).cumsum(2)
    ik = walk + torch.randn(1, 1, S, 8, generator=g)
    return select_blocks(block_scores(walk[:, :, S - T:], ik, block_size=BS), top_k=K)[0, 0]


def check_tile_shared_blocks(fn):
    """fn(sel, tile): sel int [T, K] -> int [ceil(T / tile), K], each tile's shared blocks, ascending, -1 after."""
    cases = []
    for i, (label, _, _, T, S, BS, K) in enumerate(SIZES):
        selections = {"random": _selection(1, 1, T, S, BS, K, seed=40 + i)[0, 0],
                      "locality": _local_selection(T, S, BS, K, seed=50 + i)}
        for kind, sel in selections.items():
            for tile in (1, 4, 5):
                cases.append((f"{label} {kind}, tile={tile}", (sel, tile), shared_blocks(sel[None, None], tile)[0, 0]))
    sel = torch.tensor([[2, 2, 0], [0, 2, -1], [2, 0, 1]], dtype=torch.int32)   # a repeat, a -1, a partial tile
    for tile, expected in ((2, [[0, 2, -1], [0, 1, 2]]), (3, [[0, 2, -1]]), (8, [[0, 2, -1]])):
        cases.append((f"hand-made {sel.tolist()}, tile={tile}", (sel, tile), torch.tensor(expected, dtype=torch.int32)))
    return verdict("tile_shared_blocks", fn, cases)
