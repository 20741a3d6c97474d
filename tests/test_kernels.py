"""Every Triton kernel against its torch twin and dense attention, on awkward sizes.

On a CPU these run through the Triton interpreter (small sizes); on a CUDA GPU the same tests run
compiled, plus larger shapes. Outputs are poisoned with NaN so an unwritten element fails.
"""
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import m3lite as m3
from m3lite import kernels
from m3lite.kernels.common import next_pow2
import conftest
from conftest import masked_reference, rel_error, shape_name as name, sparse_inputs, token_mask

DEVICE = m3.env.device()
ON_GPU = DEVICE.type == "cuda"
ORDERS = ["query", "kv"]


pytestmark = pytest.mark.usefixtures("poison_kernel_outputs")
randn = partial(conftest.randn, device=DEVICE)


TOL = {torch.float32: 3e-3 if ON_GPU else 1e-5, torch.float16: 5e-3, torch.bfloat16: 1.5e-2}

def inputs(shape, seed=0, dtype=torch.float32, causal=True):
    return sparse_inputs(shape, seed, dtype, causal, device=DEVICE)


# B, HQ, HKV, HI, T, S, D, BS, K
SHAPES = [
    (1, 4, 2, 2, 64, 64, 16, 16, 2),
    (2, 4, 2, 1, 50, 50, 32, 16, 3),        # partial last block, one selection row for two KV heads
    (1, 6, 3, 3, 37, 90, 16, 32, 2),        # T < S, G = 2 (not a power of two in total heads)
    (1, 2, 2, 2, 1, 45, 16, 16, 4),         # one query, top_k > NB
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=name)
@pytest.mark.parametrize("causal", [True, False])
def test_sparse_kernels_match_masked_dense(order, shape, causal):
    q, k, v, sel = inputs(shape, causal=causal)
    T, S, BS = shape[4], shape[5], shape[7]
    out, lse = m3.sparse_attention(q, k, v, sel.to(DEVICE), block_size=BS, causal=causal, order=order,
                                   backend="triton", return_lse=True)
    ref, ref_lse = masked_reference(q.cpu(), k.cpu(), v.cpu(), token_mask(sel, T, S, BS, causal))
    assert rel_error(out.cpu(), ref) < TOL[torch.float32]
    torch.testing.assert_close(lse.cpu().double(), ref_lse, atol=1e-2 if ON_GPU else 1e-5, rtol=1e-4)  # tf32 dots on a GPU


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_sparse_kernels_half_inputs_match_torch_twin(order, dtype):
    q, k, v, sel = inputs((1, 8, 2, 2, 48, 48, 32, 16, 2), seed=3, dtype=dtype)
    sel = sel.to(DEVICE)
    out = m3.sparse_attention(q, k, v, sel, block_size=16, order=order, backend="triton")
    twin = m3.sparse_attention(q.float(), k.float(), v.float(), sel, block_size=16, order=order, backend="torch")
    assert out.dtype == dtype and rel_error(out, twin) < TOL[dtype]


@pytest.mark.parametrize("block_m,chunks_per_program", [(16, 1), (16, 3), (32, 2)])
def test_kv_kernel_chunk_boundaries(block_m, chunks_per_program):
    """Small tiles: every block's queries span several programs, each of several chunks, the last
    ones partial, so the pipelined loop meets every boundary the benchmark sizes have."""
    from m3lite.kernels import sparse_kv as kv
    q, k, v, sel = inputs((1, 4, 2, 2, 70, 70, 16, 16, 3), seed=7)
    sel = sel.to(DEVICE)
    sel[:, :, 20:40:3, 2] = sel[:, :, 20:40:3, 0]                     # repeated ids: attended once
    plan = kv.plan(sel, 70, 16, 2, block_m=block_m, chunks_per_program=chunks_per_program)
    assert (plan.offsets.diff() > plan.entries_per_program).any()       # rows split across programs
    o_part, lse_part = kv.partials(q, k, v, sel.shape, plan, 16, True, 16 ** -0.5)
    out, lse = kv.combine(o_part, lse_part, q.shape, 2, 3)
    twin, twin_lse = m3.sparse_attention(q, k, v, sel, block_size=16, order="kv", backend="torch", return_lse=True)
    assert rel_error(out, twin) < TOL[torch.float32]
    torch.testing.assert_close(lse, twin_lse, atol=1e-2 if ON_GPU else 1e-5, rtol=1e-4)


@pytest.mark.parametrize("num_blocks", [7, 40_000])                  # int16 sort keys, then int32 ones
def test_block_entries_invert_the_selection(num_blocks):
    """The GPU-side inversion lists, per (batch, index head, block), the flat indices of the slots
    that chose the block, in query order, with a repeated id's second slot marked -1."""
    from m3lite.kernels.sparse_kv import block_entries
    g = torch.Generator().manual_seed(0)
    sel = torch.randint(-1, num_blocks, (2, 3, 9, 4), generator=g, dtype=torch.int32)
    sel[0, 1, 5, 3] = sel[0, 1, 5, 1] = 2                               # a repeat
    offsets, entries = block_entries(sel.to(DEVICE), num_blocks)
    offsets, entries = offsets.cpu(), entries.cpu()
    assert offsets.shape == (2 * 3 * num_blocks + 1,) and int(offsets[-1]) == int((sel >= 0).sum())
    flat = sel.reshape(-1)
    for row in torch.nonzero(offsets.diff()).flatten().tolist():
        bh, j = divmod(row, num_blocks)
        expected = [i for i in range(bh * 36, (bh + 1) * 36) if flat[i] == j]   # 36 = T * K slots per row
        got = entries[offsets[row]:offsets[row + 1]].tolist()
        first = [e for e in expected if all(flat[e2] != j for e2 in range(e - e % 4, e))]   # a query's first
        assert got == [e if e in first else -1 for e in expected]


@pytest.mark.parametrize("order", ORDERS)
def test_empty_rows_and_future_blocks(order):
    q, k, v, sel = inputs((1, 4, 2, 2, 40, 40, 16, 16, 2))
    sel[:, 0, :5] = -1
    sel[:, 1, :3] = 2                                                  # a block entirely in the future
    sel[:, 1, 10, 1] = sel[:, 1, 10, 0]                                # a repeated id
    sel = sel.to(DEVICE)
    out, lse = m3.sparse_attention(q, k, v, sel, block_size=16, order=order, backend="triton", return_lse=True)
    twin, twin_lse = m3.sparse_attention(q, k, v, sel, block_size=16, order=order, backend="torch", return_lse=True)
    assert torch.all(out[:, :2, :5] == 0) and torch.all(lse[:, :2, :5] == -math.inf)
    assert torch.all(out[:, 2:, :3] == 0) and torch.all(lse[:, 2:, :3] == -math.inf)
    assert rel_error(out, twin) < TOL[torch.float32]
    finite = torch.isfinite(twin_lse)
    assert torch.equal(finite, torch.isfinite(lse))


@pytest.mark.parametrize("order", ORDERS)
def test_msa_with_every_block_is_sdpa(order):
    q, k, v = randn(1, 4, 70, 32, seed=5), randn(1, 2, 70, 32, seed=6), randn(1, 2, 70, 32, seed=7)
    iq, ik = randn(1, 2, 70, 16, seed=8), randn(1, 1, 70, 16, seed=9)
    out = m3.msa_attention(q, k, v, iq, ik, block_size=16, top_k=5, order=order, backend="triton")
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert rel_error(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize("B,HI,T,S,DI,BS", [(1, 2, 64, 64, 16, 16), (2, 1, 37, 90, 32, 32), (1, 1, 20, 300, 16, 128),
                                           (1, 1, 300, 300, 16, 16), (1, 1, 100, 300, 16, 16)])   # unmasked groups too
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_scores_kernel_matches_twin(B, HI, T, S, DI, BS, causal, dtype):
    iq, ik = randn(B, HI, T, DI, seed=1, dtype=dtype), randn(B, 1, S, DI, seed=2, dtype=dtype)
    out = m3.block_scores(iq, ik, block_size=BS, causal=causal, backend="triton")
    twin = m3.block_scores(iq.float(), ik.float(), block_size=BS, causal=causal, backend="torch")
    assert out.dtype == torch.float32 and out.shape == twin.shape
    assert torch.equal(torch.isfinite(out), torch.isfinite(twin))
    finite = torch.isfinite(twin)
    tol = 1e-5 if dtype == torch.float32 and not ON_GPU else 3e-2
    torch.testing.assert_close(out[finite], twin[finite], atol=tol, rtol=tol)


@pytest.mark.parametrize("top_k", [1, 3, 8, 20])
@pytest.mark.parametrize("local", [True, False])
@pytest.mark.parametrize("T,S", [(50, 50), (20, 70), (1, 33)])
def test_select_blocks_kernel_matches_twin(top_k, local, T, S):
    scores = m3.block_scores(randn(2, 2, T, 8, seed=3), randn(2, 1, S, 8, seed=4), block_size=8, backend="torch")
    out = m3.select_blocks(scores, top_k=top_k, local=local, backend="triton")
    twin = m3.select_blocks(scores, top_k=top_k, local=local, backend="torch")
    assert out.dtype == torch.int32 and out.shape == twin.shape
    assert torch.equal(out.sort(-1).values, twin.sort(-1).values)            # the same set of ids
    valid = out >= 0
    assert torch.equal(valid, twin >= 0)                                     # -1 only at the tail


@pytest.mark.parametrize("NB,top_k,local", [(300, 5, True), (260, 8, False), (257, 16, True)])
def test_select_blocks_two_levels_equal_one(NB, top_k, local):
    """The two-level top-k (the best groups of neighbouring blocks first, then their blocks) picks
    exactly what one top-k over all blocks picks, in the same order, even where scores tie (the
    block id breaks ties), and the set the torch twin picks where they do not."""
    from m3lite.kernels import indexer as ix
    assert ix.select_group(1024, 16) == 8 and ix.select_group(512, 16) == 4 and ix.select_group(128, 16) == 1
    g = torch.Generator().manual_seed(NB)
    ties = torch.randint(0, 4, (1, 2, 3, NB), generator=g).float()
    ties[0, 0, 1, NB // 3:] = float("-inf")                                 # fewer visible blocks than top_k, or not
    ties[0, 0, 2, 7:] = float("-inf")
    ties[0, 1, 0] = float("-inf")                                           # none visible
    ties = ties.to(DEVICE)
    two = kernels.indexer.select_blocks(ties, top_k, local)
    assert ix.select_group(next_pow2(NB), min(next_pow2(top_k), next_pow2(NB))) > 1     # two levels taken
    assert torch.equal(two, kernels.indexer.select_blocks(ties, top_k, local, group=1))
    distinct = torch.randn(1, 2, 3, NB, generator=g).to(DEVICE)
    distinct[0, 1, 2, NB // 2:] = float("-inf")
    out = kernels.indexer.select_blocks(distinct, top_k, local)
    twin = m3.select_blocks(distinct, top_k=top_k, local=local, backend="torch")
    assert torch.equal(out.sort(-1).values, twin.sort(-1).values)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T,S,G", [(64, 64, 2), (37, 100, 3), (1, 20, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flash_kernel_matches_dense(causal, T, S, G, dtype):
    q, k, v = randn(2, 2 * G, T, 32, seed=1, dtype=dtype), randn(2, 2, S, 32, seed=2, dtype=dtype), \
        randn(2, 2, S, 32, seed=3, dtype=dtype)
    out, lse = kernels.dense_attention(q, k, v, causal, None)
    ref, ref_lse = m3.dense_attention(q.float(), k.float(), v.float(), causal=causal, return_lse=True)
    assert out.dtype == dtype and rel_error(out, ref) < TOL[dtype]
    torch.testing.assert_close(lse, ref_lse, atol=2e-2, rtol=1e-3)


def test_auto_backend_picks_by_device_and_gradient():
    from m3lite.attention import checks
    q = randn(1, 2, 8, 16)
    assert checks.backend("auto", q) == ("triton" if ON_GPU else "torch")
    assert checks.backend("auto", q.requires_grad_()) == "torch"


def test_triton_refuses_what_it_cannot_do():
    q, k, v, sel = inputs((1, 2, 2, 2, 48, 48, 16, 16, 2))
    sel = sel.to(DEVICE)
    with pytest.raises(ValueError, match="power of two >= 16.*backend='torch'"):
        m3.sparse_attention(q, k, v, torch.zeros_like(sel), block_size=24, backend="triton")
    with pytest.raises(ValueError, match="head dim in"):
        m3.sparse_attention(q[..., :12], k[..., :12], v[..., :12], sel, block_size=16, backend="triton")
    with pytest.raises(TypeError, match="float64"):
        m3.sparse_attention(q.double(), k.double(), v.double(), sel, block_size=16, backend="triton")
    with pytest.raises(ValueError, match="forward only"):
        m3.sparse_attention(q.requires_grad_(), k, v, sel, block_size=16, backend="triton")
    with pytest.raises(ValueError, match="index dim in"):
        m3.block_scores(randn(1, 1, 8, 12), randn(1, 1, 8, 12), block_size=16, backend="triton")


@pytest.mark.skipif(not ON_GPU, reason="real sizes only on a GPU (the interpreter is too slow)")
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("HQ,HKV", [(64, 4), (8, 4), (16, 16)])
def test_gpu_real_size_matches_torch_twin(order, HQ, HKV):
    T, D, BS, K = 4096, 128, 128, 16
    q, k, v = (randn(1, h, T, D, seed=s, dtype=torch.bfloat16) for s, h in ((1, HQ), (2, HKV), (3, HKV)))
    iq, ik = randn(1, HKV, T, D, seed=4, dtype=torch.bfloat16), randn(1, 1, T, D, seed=5, dtype=torch.bfloat16)
    sel = m3.select_blocks(m3.block_scores(iq, ik, block_size=BS, backend="triton"), top_k=K, backend="triton")
    out = m3.sparse_attention(q, k, v, sel, block_size=BS, order=order, backend="triton")
    twin = m3.sparse_attention(q.float(), k.float(), v.float(), sel, block_size=BS, order="kv", backend="torch")
    assert rel_error(out, twin) < 1e-2
