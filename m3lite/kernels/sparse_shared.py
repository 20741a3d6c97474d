"""The tile-shared pass: a program per (tile of consecutive queries, KV head) attends the blocks
that every query of the tile chose, query-major, and writes one partial (o, lse) per query.

Its rows are the tile's queries times the group's heads (8 queries x 16 heads = 128 rows at M3's
shape), so each shared block is loaded once per tile and goes through full-size matmuls, merged on
chip with an online softmax. The partial lands in the query's "home" slot of the KV-outer partials
(the slot of its first shared block), so the KV-outer combine merges it with the rest unchanged.

Twin: m3lite.attention.tile_shared (the plan is the same torch code on both sides).
"""
import triton
import triton.language as tl

from .common import LOG2E, UPCAST, next_pow2, online_softmax_finish, online_softmax_step


@triton.jit
def _tile_shared_fwd(Q, K, V, SHARED, HOME, O_PART, LSE_PART,
                     stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                     T, S, HI, R, NUM_TILES, qk_scale,
                     G: tl.constexpr, TILE: tl.constexpr, SLOTS: tl.constexpr, SLOTS_POW2: tl.constexpr,
                     CAUSAL: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                     HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    i_tile, i_kv, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_hi, i_r = i_kv // R, i_kv % R
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    # row m of the tile is head g of its query t
    t = i_tile * TILE + offs_m // G
    g = offs_m % G
    m_row = (offs_m < TILE * G) & (t < T)
    b_q = tl.load(Q + i_b * stride_qb + (i_kv * G + g)[:, None] * stride_qh + t.to(tl.int64)[:, None] * stride_qt
                  + offs_d[None, :], mask=m_row[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    # the tile's shared blocks, ascending, then -1; the first n_whole are seen whole by every query
    p_ids = SHARED + ((i_b * HI + i_hi) * NUM_TILES + i_tile) * SLOTS
    offs_s = tl.arange(0, SLOTS_POW2)
    ids = tl.load(p_ids + offs_s, mask=offs_s < SLOTS, other=-1)
    whole = (ids >= 0) & ((ids + 1) * BS <= S)
    if CAUSAL:
        whole = whole & ((ids + 1) * BS - 1 <= i_tile * TILE + S - T)     # the tile's earliest position
    n = tl.sum((ids >= 0).to(tl.int32))
    n_whole = tl.sum(whole.to(tl.int32))
    p_k = K + i_b * stride_kb + i_kv * stride_kh + offs_d[:, None]
    p_v = V + i_b * stride_kb + i_kv * stride_kh + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    # Each block is walked in BS // BLOCK_N key tiles; one flat loop over (block, key tile) pairs,
    # first with no mask at all, then the blocks that need one.
    SUB: tl.constexpr = BS // BLOCK_N
    for i in range(0, n_whole * SUB):
        cols = tl.load(p_ids + i // SUB) * BS + (i % SUB) * BLOCK_N + offs_n
        b_k = tl.load(p_k + cols[None, :] * stride_ks)                  # [D, N]
        b_v = tl.load(p_v + cols[:, None] * stride_ks)                  # [N, D]
        if UPCAST:
            b_k, b_v = b_k.to(tl.float32), b_v.to(tl.float32)
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, tl.dot(b_q, b_k) * qk_scale, b_v)
    pos = t + S - T
    for i in range(n_whole * SUB, n * SUB):
        cols = tl.load(p_ids + i // SUB) * BS + (i % SUB) * BLOCK_N + offs_n
        b_k = tl.load(p_k + cols[None, :] * stride_ks, mask=cols[None, :] < S, other=0.0)
        b_v = tl.load(p_v + cols[:, None] * stride_ks, mask=cols[:, None] < S, other=0.0)
        if UPCAST:
            b_k, b_v = b_k.to(tl.float32), b_v.to(tl.float32)
        visible = cols[None, :] < S
        if CAUSAL:
            visible = visible & (cols[None, :] <= pos[:, None])
        s = tl.where(visible, tl.dot(b_q, b_k) * qk_scale, float("-inf"))
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, b_v)
    out, lse = online_softmax_finish(m_i, l_i, acc)
    # -- one partial per (query, head), in the query's home slot
    home = tl.load(HOME + (i_b * HI + i_hi) * T + t, mask=m_row, other=-1)
    keep = m_row & (home >= 0)
    part = ((((i_b * HI + i_hi) * T + t) * SLOTS + home) * R + i_r) * G + g
    tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], out.to(O_PART.dtype.element_ty),
             mask=keep[:, None])
    tl.store(LSE_PART + part, lse, mask=keep)


def tile_size(G, block_m):
    """(rows of a program, queries of a tile): about block_m rows, whole groups of G heads."""
    rows = max(block_m, next_pow2(G))
    return rows, rows // G


def tile_shared_partials(q, k, v, shared, home, o_part, lse_part, block_size, causal, scale, block_m=128,
                         block_n=64, num_warps=8, num_stages=2):
    """Write the tile-shared partial of every query into o_part / lse_part (the KV-outer layout
    [B*HI*T*K, R, G, (D)]) at its home slot; shared and home from m3lite.attention.tile_shared."""
    B, HQ, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    HI, num_tiles, K = shared.shape[1], shared.shape[2], shared.shape[3]
    G = HQ // HKV
    rows, tile = tile_size(G, block_m)
    block_n = min(block_n, block_size)
    _tile_shared_fwd[(num_tiles, HKV, B)](q, k, v, shared, home, o_part, lse_part,
                                          q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                                          T, S, HI, HKV // HI, num_tiles, scale * LOG2E,
                                          G=G, TILE=tile, SLOTS=K, SLOTS_POW2=next_pow2(K), CAUSAL=causal,
                                          BS=block_size, BLOCK_N=block_n, BLOCK_M=rows, HEAD_DIM=D, UPCAST=UPCAST,
                                          num_warps=num_warps, num_stages=num_stages)
