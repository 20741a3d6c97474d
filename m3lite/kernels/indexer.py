"""The indexer in Triton: fused index scores + block max, and the top-k block selection.

Twins: m3lite.attention.indexer.block_scores and select_blocks. The block-score kernel never writes
token scores to memory: each [BLOCK_M, BLOCK_N] tile of scores stays on chip, and only each row's
max per block reaches a [BLOCK_M, BLOCKS_PER_STORE] tile that is stored.
"""
import struct

import torch
import triton
import triton.language as tl

from .common import UPCAST, new_output, next_pow2


def _sort_key(x):
    """The order-preserving int32 of a float32, as the selection kernel computes it."""
    bits = struct.unpack("<i", struct.pack("<f", x))[0]
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _block_scores_fwd(IQ, IK, OUT,
                      stride_qb, stride_qh, stride_qt, stride_kb, stride_ks, stride_ob, stride_oh, stride_ot,
                      T, S, NB, scale,
                      CAUSAL: tl.constexpr, BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCKS_PER_STORE: tl.constexpr, INDEX_DIM: tl.constexpr, UPCAST: tl.constexpr):
    i_m, i_h, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, INDEX_DIM)
    offs_j = tl.arange(0, BLOCKS_PER_STORE)
    m_q = offs_m < T
    pos = offs_m + S - T
    b_q = tl.load(IQ + i_b * stride_qb + i_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                  mask=m_q[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    p_k = IK + i_b * stride_kb + offs_d[:, None]
    p_out = OUT + i_b * stride_ob + i_h * stride_oh + offs_m.to(tl.int64)[:, None] * stride_ot
    # Groups of BLOCKS_PER_STORE blocks that every row of the tile sees whole need no mask: a loop
    # without one, then a loop over the rest (the diagonal, a partial last block, the future) with it.
    first_pos = i_m * BLOCK_M + S - T                                 # the tile's earliest query
    clear = tl.minimum(S, first_pos + 1) if CAUSAL else S             # keys every row sees
    clear_groups = clear // (BS * BLOCKS_PER_STORE)
    seen = tl.minimum(S, (i_m + 1) * BLOCK_M + S - T) if CAUSAL else S  # keys some row sees
    offs_n = tl.arange(0, BLOCK_N)
    for group in range(0, clear_groups):
        tile = tl.full([BLOCK_M, BLOCKS_PER_STORE], float("-inf"), tl.float32)
        for sub in range(0, BLOCKS_PER_STORE * (BS // BLOCK_N)):     # one key sub-tile an iteration: pipelined
            cols = group * (BLOCKS_PER_STORE * BS) + sub * BLOCK_N + offs_n
            b_k = tl.load(p_k + cols[None, :] * stride_ks)
            if UPCAST:
                b_k = b_k.to(tl.float32)
            best = tl.max(tl.dot(b_q, b_k), 1)
            in_block = offs_j[None, :] == sub // (BS // BLOCK_N)
            tile = tl.where(in_block, tl.maximum(tile, best[:, None]), tile)
        # scale > 0, so scaling the maxima equals the max of the scaled scores (as _score_group does)
        tl.store(p_out + group * BLOCKS_PER_STORE + offs_j[None, :], tile * scale, mask=m_q[:, None])
    for j0 in range(clear_groups * BLOCKS_PER_STORE, NB, BLOCKS_PER_STORE):
        tile = tl.full([BLOCK_M, BLOCKS_PER_STORE], float("-inf"), tl.float32)
        if j0 * BS < seen:
            tile = _score_group(b_q, p_k, stride_ks, j0, pos, S, scale, CAUSAL, BS, BLOCK_M, BLOCK_N,
                                BLOCKS_PER_STORE, UPCAST)
        tl.store(p_out + j0 + offs_j[None, :], tile, mask=m_q[:, None] & (j0 + offs_j[None, :] < NB))


@triton.jit
def _score_group(b_q, p_k, stride_ks, j0, pos, S, scale, CAUSAL: tl.constexpr,
                 BS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCKS_PER_STORE: tl.constexpr,
                 UPCAST: tl.constexpr):
    """Scores [BLOCK_M, BLOCKS_PER_STORE] of the blocks j0, j0 + 1, ...: each block's max over the keys
    each row sees (-inf where it sees none)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_j = tl.arange(0, BLOCKS_PER_STORE)
    tile = tl.full([BLOCK_M, BLOCKS_PER_STORE], float("-inf"), tl.float32)
    for jj in tl.static_range(BLOCKS_PER_STORE):
        best = tl.full([BLOCK_M], float("-inf"), tl.float32)
        for start_n in tl.static_range(0, BS, BLOCK_N):             # the block max, one sub-tile at a time
            cols = (j0 + jj) * BS + start_n + offs_n
            b_k = tl.load(p_k + cols[None, :] * stride_ks, mask=cols[None, :] < S, other=0.0)
            if UPCAST:
                b_k = b_k.to(tl.float32)
            s = tl.dot(b_q, b_k)
            visible = cols[None, :] < S
            if CAUSAL:
                visible = visible & (cols[None, :] <= pos[:, None])
            best = tl.maximum(best, tl.max(tl.where(visible, s, float("-inf")), 1))
        tile = tl.where(offs_j[None, :] == jj, best[:, None] * scale, tile)
    return tile


def block_scores(iq, ik, block_size, causal, scale, block_m=128, block_n=128, num_warps=8, num_stages=3):
    """float32 [B, HI, T, NB] block scores; inputs as for m3lite.block_scores, already validated.

    A program scores `block_m` queries against every block, `block_n` keys at a time."""
    B, HI, T, DI = iq.shape
    S = ik.shape[2]
    NB = triton.cdiv(S, block_size)
    iq, ik = iq.contiguous(), ik.contiguous()
    out = new_output((B, HI, T, NB), torch.float32, iq.device)
    block_n = min(block_size, block_n)
    grid = (triton.cdiv(T, block_m), HI, B)
    _block_scores_fwd[grid](iq, ik, out, iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0), ik.stride(2),
                            out.stride(0), out.stride(1), out.stride(2), T, S, NB, scale,
                            CAUSAL=causal, BS=block_size, BLOCK_M=block_m, BLOCK_N=block_n,
                            BLOCKS_PER_STORE=min(8, next_pow2(NB)), INDEX_DIM=DI, UPCAST=UPCAST,
                            num_warps=num_warps, num_stages=num_stages)
    return out


@triton.jit
def _select_blocks_fwd(SCORES, SEL, NB, TOP_K, stride_row, stride_sel,
                       LOCAL: tl.constexpr, NB_PAD: tl.constexpr, K_PAD: tl.constexpr, NEG_INF_KEY: tl.constexpr,
                       GROUP: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    p_row = SCORES + i_row * stride_row
    offs = tl.arange(0, NB_PAD)
    s = tl.load(p_row + offs, mask=offs < NB, other=float("-inf"))
    own = -1
    if LOCAL:
        own = tl.max(tl.where(s > float("-inf"), offs, -1), 0)        # the last visible block, forced
    key = _packed_keys(s, offs, own, LOCAL)
    if GROUP > 1:
        # Two levels: the K_PAD groups of GROUP neighbouring blocks with the best maxima hold every
        # one of the K_PAD best blocks (a group holding one has a maximum at least as good, and at
        # most K_PAD groups can). So rank the groups first, then only their blocks: two small top-ks
        # instead of one over all NB_PAD blocks. Keys are unique (the id is in them): no ties.
        group_best = tl.max(tl.reshape(key, [NB_PAD // GROUP, GROUP]), 1)
        groups = (tl.topk(group_best, K_PAD) & 0xFFFFFFFF) // GROUP     # a group's best id, over GROUP
        offs = tl.reshape(groups.to(tl.int32)[:, None] * GROUP + tl.arange(0, GROUP)[None, :], [K_PAD * GROUP])
        s = tl.load(p_row + offs, mask=offs < NB, other=float("-inf"))   # the candidates, again (cached)
        key = _packed_keys(s, offs, own, LOCAL)
    best = tl.topk(key, K_PAD)
    ids = (best & 0xFFFFFFFF).to(tl.int32)
    best_bits = (best >> 32).to(tl.int32)
    was_visible = best_bits > NEG_INF_KEY
    offs_k = tl.arange(0, K_PAD)
    tl.store(SEL + i_row * stride_sel + offs_k, tl.where(was_visible, ids, -1), mask=offs_k < TOP_K)


@triton.jit
def _packed_keys(s, offs, own, LOCAL: tl.constexpr):
    """(score, block id) pairs packed in one int64 each, so that one sort key carries both: an
    order-preserving int32 of the score above the id. With LOCAL the own block scores +inf."""
    if LOCAL:
        s = tl.where(offs == own, float("inf"), s)
    bits = s.to(tl.int32, bitcast=True)
    return ((bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64) << 32) | offs.to(tl.int64)


def select_group(nb_pad, k_pad):
    """Blocks per group for the two-level top-k: the largest power of two g with g * g * k_pad <=
    nb_pad (two top-ks of about equal size), or 1 (one level) below 4."""
    group = 1
    while (2 * group) ** 2 * k_pad <= nb_pad:
        group *= 2
    return group if group >= 4 else 1


def select_blocks(scores, top_k, local, num_warps=1, group=None):
    """int32 [B, HI, T, top_k] selection; inputs as for m3lite.select_blocks, already validated.
    group: blocks per group of the two-level top-k (1: one level; None: `select_group`'s)."""
    B, HI, T, NB = scores.shape
    rows = scores.reshape(-1, NB).float().contiguous()
    nb_pad = max(2, next_pow2(NB))                      # tl.topk needs at least 2 on Triton 3.6
    k_pad = min(max(2, next_pow2(top_k)), nb_pad)
    group = select_group(nb_pad, k_pad) if group is None else group
    sel = torch.full((rows.shape[0], top_k), -1, dtype=torch.int32, device=scores.device)  # top_k > NB: the rest stay -1
    _select_blocks_fwd[(rows.shape[0],)](rows, sel, NB, min(top_k, k_pad), rows.stride(0), sel.stride(0),
                                        LOCAL=local, NB_PAD=nb_pad, K_PAD=k_pad,
                                        NEG_INF_KEY=_sort_key(float("-inf")), GROUP=group, num_warps=num_warps)
    return sel.view(B, HI, T, top_k)
