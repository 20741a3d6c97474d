"""The tile-shared pass: its plan against a brute-force definition, its torch twin against the
plain sparse attention, and the Triton kernels (interpreter on a CPU, compiled on a GPU)."""
import pytest
import torch

import m3lite as m3
import conftest
from conftest import masked_reference, rel_error, token_mask
from m3lite.bench.prefill import index_inputs
from m3lite.attention.tile_shared import rest_of_selection, shared_blocks, shared_per_query, tile_shared_attention
from m3lite.kernels import sparse_kv as kv
from m3lite.kernels.sparse_shared import tile_pass, tile_plan, tile_size
from m3lite.solutions import nb04 as sol04

DEVICE = m3.env.device()
ON_GPU = DEVICE.type == "cuda"
pytestmark = pytest.mark.usefixtures("poison_kernel_outputs")


def local_selection(B, HI, T, S, BS, K, seed=0):
    """Neighbouring queries choose mostly the same blocks: the own block, the one before, and
    K - 2 drawn per run of 5 queries (so tiles share some blocks and not others); then -1s,
    a repeated id and a block entirely in the future sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    NB = -(-S // BS)
    own = (torch.arange(T) + S - T) // BS
    runs = torch.randint(0, NB, (B, HI, -(-T // 5), K - 2), generator=g).repeat_interleave(5, 2)[:, :, :T]
    runs = torch.minimum(runs, own[:, None])
    sel = torch.cat((own.expand(B, HI, T)[..., None], (own - 1).clamp(min=0).expand(B, HI, T)[..., None], runs), -1)
    sel = sel.int().contiguous()
    sel[:, :, ::7, -1] = -1
    sel[:, :, 3, 1] = sel[:, :, 3, 0]
    if T > 2:
        sel[:, -1, 2, -1] = NB - 1                                     # future for query 2 (causal)
    return sel


def brute_force_shared(sel, tile):
    """Per (batch, selection row), by Python sets: notebook 04's reference solution."""
    return [row for b in range(sel.shape[0]) for h in range(sel.shape[1])
            for row in sol04.tile_shared_blocks(sel[b, h], tile).tolist()]


@pytest.mark.parametrize("tile", [1, 3, 4, 8, 64])
def test_shared_blocks_are_what_every_query_of_the_tile_chose(tile):
    sel = local_selection(2, 2, 45, 60, 8, 5, seed=tile)
    shared = shared_blocks(sel, tile)
    assert shared.shape == (2, 2, -(-45 // tile), 5)
    expected = brute_force_shared(sel, tile)
    assert shared.reshape(-1, 5).tolist() == expected
    assert all(row == sorted(row, key=lambda j: (j < 0, j)) for row in shared.reshape(-1, 5).tolist())   # -1 last
    assert (shared >= 0).any() == (tile < 45)                         # one tile of all 45 queries shares nothing


@pytest.mark.parametrize("tile", [1, 4, 8])
def test_rest_and_shared_cover_every_choice_once(tile):
    sel = local_selection(1, 2, 45, 60, 8, 5)
    per_query = shared_per_query(shared_blocks(sel, tile), tile, 45)
    rest = rest_of_selection(sel, shared_blocks(sel, tile), tile)
    for h, t in torch.cartesian_prod(torch.arange(2), torch.arange(45)).tolist():
        mine = {j for j in per_query[0, h, t].tolist() if j >= 0}
        left = [j for j in rest[0, h, t].tolist() if j >= 0]
        assert mine.isdisjoint(left)
        assert mine | set(left) == {j for j in sel[0, h, t].tolist() if j >= 0}
        assert [j if j not in mine else -1 for j in sel[0, h, t].tolist()] == rest[0, h, t].tolist()


@pytest.mark.parametrize("tile", [1, 5, 8, 128])
@pytest.mark.parametrize("K", [3, 16])
@pytest.mark.parametrize("min_share", [0.0, 0.5])
def test_plan_kernel_matches_torch_plan(tile, K, min_share):
    T = min(141, 4 * tile + 3)                                          # the interpreter runs a program per tile
    sel = local_selection(2, 2, T, 300, 16, K, seed=K)
    sel[1, 1, tile:2 * tile] = -1                                       # a tile with nothing chosen
    shared, rest = tile_plan(sel.to(DEVICE), tile, min_share)
    assert torch.equal(shared.cpu(), shared_blocks(sel, tile, min_share))
    assert torch.equal(rest.cpu(), rest_of_selection(sel, shared_blocks(sel, tile, min_share), tile))


def test_tiles_that_share_too_little_keep_their_whole_selection():
    sel = local_selection(1, 1, 40, 80, 8, 6)                          # tiles of 4: own, previous, 4 of 5 in a run
    sel[0, 0, 8:12] = torch.tensor([[9, 1, 2, 3, 4, 5], [9, 6, 7, 8, 0, -1], [9, 1, 6, 0, -1, -1], [9, 2, 3, -1, -1, -1]])
    everything = shared_blocks(sel, 4)
    assert everything[0, 0, 2].tolist() == [9, -1, -1, -1, -1, -1]      # 4 of the tile's 18 pairs shared
    assert torch.equal(shared_blocks(sel, 4, min_share=4 / 18), everything)
    quarter = shared_blocks(sel, 4, min_share=0.25)
    assert quarter[0, 0, 2].tolist() == [-1] * 6 and torch.equal(rest_of_selection(sel, quarter, 4)[0, 0, 8:12], sel[0, 0, 8:12])
    others = [t for t in range(10) if t != 2]
    assert torch.equal(quarter[0, 0, others], everything[0, 0, others])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tile", [1, 4, 16])
def test_torch_twin_is_sparse_attention(causal, tile):
    B, HQ, HKV, HI, T, S, D, BS, K = 1, 6, 3, 3, 37, 90, 16, 16, 4
    q, k, v = (conftest.randn(B, h, n, D, seed=s, dtype=torch.float64) for s, h, n in ((1, HQ, T), (2, HKV, S), (3, HKV, S)))
    sel = local_selection(B, HI, T, S, BS, K)
    out, lse = tile_shared_attention(q, k, v, sel, BS, causal, D ** -0.5, tile)
    ref, ref_lse = masked_reference(q, k, v, token_mask(sel, T, S, BS, causal))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(lse, ref_lse)


def test_tile_pass_alone_is_attention_over_the_shared_blocks():
    """With no KV-outer partials at all (every lse -inf), the tile pass's output is the attention
    over each query's tile-shared blocks only; it leaves the rows of tiles with none unwritten
    (the combine's)."""
    B, HQ, HKV, HI, T, S, D, BS, K = 1, 8, 2, 1, 50, 50, 16, 16, 3
    q, k, v = (conftest.randn(B, h, T, D, seed=s, device=DEVICE) for s, h in ((1, HQ), (2, HKV), (3, HKV)))
    sel = local_selection(B, HI, T, S, BS, K).to(DEVICE)
    _, tile = tile_size(HQ // HKV, 16)
    sel[:, :, tile:2 * tile] = -1                                       # a tile that shares nothing
    shared, _ = tile_plan(sel, tile)
    o_part = torch.full((B * HI * T * K, HKV // HI, HQ // HKV, D), float("nan"), device=DEVICE)
    lse_part = torch.full((B * HI * T * K, HKV // HI, HQ // HKV), float("-inf"), device=DEVICE)
    out, lse = tile_pass(q, k, v, shared, o_part, lse_part, BS, True, D ** -0.5, block_m=16)
    twin, twin_lse = m3.sparse_attention(q, k, v, shared_per_query(shared, tile, T), block_size=BS, order="query",
                                         backend="torch", return_lse=True)
    assert (shared >= 0).any() and (shared < 0).any()
    taken = shared_per_query(shared, tile, T)[0, 0, :, 0] >= 0          # queries whose tile shares a block
    assert taken.any() and not taken.all()
    assert rel_error(out[:, :, taken], twin[:, :, taken]) < (3e-3 if ON_GPU else 1e-5)
    torch.testing.assert_close(lse[:, :, taken], twin_lse[:, :, taken], atol=1e-2 if ON_GPU else 1e-5, rtol=1e-4)
    assert out[:, :, ~taken].isnan().all() and lse[:, :, ~taken].isnan().all()    # poisoned, never written


def test_auto_takes_the_tile_pass_only_in_tiles_that_share_enough():
    """The default call chooses per tile, on the device; with the tiles that take the tile pass and
    those that keep the combine mixed in one call, its output is the sparse attention."""
    neighbours = local_selection(1, 1, 64, 512, 16, 3)
    neighbours[..., 2] = -1                                                       # own and previous block
    scattered = conftest.random_selection(1, 1, 64, 512, 16, 3, seed=1)          # own + 2 of 28 or more
    mixed = torch.cat((neighbours[:, :, :32], scattered[:, :, 32:]), 2)
    q, k, v = (conftest.randn(1, h, n, 16, seed=s, device=DEVICE) for s, h, n in ((1, 8, 64), (2, 2, 512), (3, 2, 512)))
    tile = tile_size(4, kv.default_tile_rows(4, 16))[1]
    for sel, tiles_taking_it in ((neighbours, "all"), (scattered, "none"), (mixed, "some")):
        sel = sel.to(DEVICE)
        shared, _ = tile_plan(sel, tile, kv.MIN_SHARE)
        took = (shared[0, 0, :, 0] >= 0).tolist()
        assert {"all": all(took), "none": not any(took), "some": any(took) and not all(took)}[tiles_taking_it]
        out, lse = kv.sparse_attention_kv(q, k, v, sel, 16, True, 0.25)
        twin, twin_lse = m3.sparse_attention(q, k, v, sel, block_size=16, backend="torch", return_lse=True)
        assert rel_error(out, twin) < (3e-3 if ON_GPU else 1e-5)
        torch.testing.assert_close(lse, twin_lse, atol=1e-2 if ON_GPU else 1e-5, rtol=1e-4)


@pytest.mark.parametrize("tile_rows", [None, 0])
def test_queries_with_heads_innermost_are_read_in_place(tile_rows):
    """q as a [B, HQ, T, D] view of [B, T, HQ, D] memory (what a model's projection gives): the
    kernels take its strides, with the same result as a contiguous copy."""
    sel = local_selection(1, 2, 40, 64, 16, 3).to(DEVICE)
    q = conftest.randn(1, 40, 8, 16, seed=1, device=DEVICE).transpose(1, 2)
    k, v = (conftest.randn(1, 2, 64, 16, seed=s, device=DEVICE) for s in (2, 3))
    out, lse = kv.sparse_attention_kv(q, k, v, sel, 16, True, 0.25, tile_rows=tile_rows)
    ref, ref_lse = kv.sparse_attention_kv(q.contiguous(), k, v, sel, 16, True, 0.25, tile_rows=tile_rows)
    assert not q.is_contiguous()
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=0, rtol=0)


# B, HQ, HKV, HI, T, S, D, BS, K
SHAPES = [
    (1, 8, 2, 2, 64, 64, 16, 16, 3),
    (2, 4, 2, 1, 50, 50, 32, 16, 4),        # partial last block, one selection row for two KV heads
    (1, 6, 3, 3, 37, 90, 16, 32, 3),        # T < S, G = 2, a block of 32 walked in two key tiles
    (1, 12, 4, 2, 29, 29, 16, 16, 3),       # G = 3: tiles of 5 queries (15 of 16 rows)
]


@pytest.mark.parametrize("shape", SHAPES, ids=conftest.shape_name)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tile_rows", [16, 32])
def test_kernels_with_tile_shared_pass_match_dense(shape, causal, tile_rows):
    B, HQ, HKV, HI, T, S, D, BS, K = shape
    q, k, v = (conftest.randn(B, h, n, D, seed=s, device=DEVICE) for s, h, n in ((1, HQ, T), (2, HKV, S), (3, HKV, S)))
    sel = local_selection(B, HI, T, S, BS, K)
    out, lse = kv.sparse_attention_kv(q, k, v, sel.to(DEVICE), BS, causal, D ** -0.5, tile_rows=tile_rows)
    ref, ref_lse = masked_reference(q.cpu(), k.cpu(), v.cpu(), token_mask(sel, T, S, BS, causal))
    assert rel_error(out.cpu(), ref) < (3e-3 if ON_GPU else 1e-5)
    torch.testing.assert_close(lse.cpu().double(), ref_lse, atol=1e-2 if ON_GPU else 1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_tile_shared_pass_half_inputs(dtype):
    q, k, v = (conftest.randn(1, h, 48, 32, seed=s, device=DEVICE, dtype=dtype) for s, h in ((1, 8), (2, 2), (3, 2)))
    sel = local_selection(1, 2, 48, 48, 16, 3).to(DEVICE)
    out, _ = kv.sparse_attention_kv(q, k, v, sel, 16, True, 32 ** -0.5, tile_rows=16)
    twin = m3.sparse_attention(q.float(), k.float(), v.float(), sel, block_size=16, backend="torch")
    assert out.dtype == dtype and rel_error(out, twin) < {torch.float16: 5e-3, torch.bfloat16: 1.5e-2}[dtype]


@pytest.mark.skipif(not ON_GPU, reason="real sizes only on a GPU (the interpreter is too slow)")
@pytest.mark.parametrize("tile_rows", [0, 64, 128])
@pytest.mark.parametrize("HQ,HKV", [(64, 4), (8, 4), (16, 16)])
def test_gpu_real_size_with_and_without_tiles(tile_rows, HQ, HKV):
    T, D, BS, K = 4096, 128, 128, 16
    q, k, v = (conftest.randn(1, h, T, D, seed=s, device=DEVICE, dtype=torch.bfloat16)
               for s, h in ((1, HQ), (2, HKV), (3, HKV)))
    iq, ik = index_inputs(1, HKV, T, D, "locality", DEVICE)          # tiles share most of their blocks
    sel = m3.select_blocks(m3.block_scores(iq, ik, block_size=BS, backend="triton"), top_k=K, backend="triton")
    out, _ = kv.sparse_attention_kv(q, k, v, sel, BS, True, D ** -0.5, tile_rows=tile_rows)
    twin = m3.sparse_attention(q.float(), k.float(), v.float(), sel, block_size=BS, order="kv", backend="torch")
    assert rel_error(out, twin) < 1e-2


@pytest.mark.skipif(not ON_GPU, reason="real sizes only on a GPU (the interpreter is too slow)")
@pytest.mark.parametrize("D", [64, 256])
def test_gpu_other_head_dims(D):
    """The tile sizes must fit in shared memory at every head dim the Triton backend takes."""
    T, BS, K, HQ, HKV = 2048, 128, 16, 32, 2
    q, k, v = (conftest.randn(1, h, T, D, seed=s, device=DEVICE, dtype=torch.bfloat16)
               for s, h in ((1, HQ), (2, HKV), (3, HKV)))
    iq, ik = index_inputs(1, HKV, T, 64, "locality", DEVICE)
    sel = m3.select_blocks(m3.block_scores(iq, ik, block_size=BS, backend="triton"), top_k=K, backend="triton")
    out = m3.sparse_attention(q, k, v, sel, block_size=BS, order="kv", backend="triton")
    twin = m3.sparse_attention(q.float(), k.float(), v.float(), sel, block_size=BS, order="kv", backend="torch")
    assert rel_error(out, twin) < 1e-2
