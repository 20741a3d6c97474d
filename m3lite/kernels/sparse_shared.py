"""The tile pass: a program per (tile of consecutive queries, KV head) attends the blocks that
every query of the tile chose, query-major, then merges in the KV-outer partials of each query's
other blocks and writes the final output.

Its rows are the tile's queries times the group's heads (8 queries x 16 heads = 128 rows at M3's
shape), so each shared block is loaded once per tile and goes through full-size matmuls, merged on
chip with an online softmax: no partial output is written for it. The KV-outer kernel
(sparse_kv.py) runs first over what is left of the selection; this pass then takes the place of
its combine.

Twin: m3lite.attention.tile_shared (shared_blocks and rest_of_selection for `tile_plan`,
tile_shared_attention for the whole forward pass).
"""
import torch
import triton
import triton.language as tl

from .common import LOG2E, UPCAST, new_output, next_pow2, online_softmax_step

LN2 = tl.constexpr(0.6931471805599453)   # ln(2): lse in log2 units to natural log


@triton.jit
def _tile_plan(SEL, SHARED, REST, T, NUM_TILES, MIN_SHARE, TILE: tl.constexpr, TILE_POW2: tl.constexpr,
               SLOTS: tl.constexpr, SLOTS_POW2: tl.constexpr):
    """One tile of one selection row: the blocks all its queries chose (ascending, then -1), and
    the rows of sel without them; or, where the tile shares less than MIN_SHARE of its chosen
    (query, block) pairs, no shared block and the rows unchanged."""
    i_tile, i_row = tl.program_id(0), tl.program_id(1).to(tl.int64)   # i_row = b * HI + hi
    offs_t = i_tile * TILE + tl.arange(0, TILE_POW2)
    offs_s = tl.arange(0, SLOTS_POW2)
    m_t = (tl.arange(0, TILE_POW2) < TILE) & (offs_t < T)
    p_sel = SEL + (i_row * T + offs_t)[:, None] * SLOTS + offs_s[None, :]
    m_ts = m_t[:, None] & (offs_s[None, :] < SLOTS)
    rows = tl.load(p_sel, mask=m_ts, other=-1)                        # [TILE, SLOTS]
    first = tl.load(SEL + (i_row * T + i_tile * TILE) * SLOTS + offs_s, mask=offs_s < SLOTS, other=-1)
    # candidate c (the first query's slot c) is shared if every query of the tile has it in some slot
    has = tl.zeros([TILE_POW2, SLOTS_POW2], tl.int32)
    for s in tl.static_range(SLOTS):
        column = tl.load(SEL + (i_row * T + offs_t) * SLOTS + s, mask=m_t, other=-1)
        has = has | (column[:, None] == first[None, :]).to(tl.int32)
    in_every = tl.min(tl.where(m_t[:, None], has, 1), 0)
    earlier = offs_s[None, :] < offs_s[:, None]                       # [c, c2]: c2 comes before c
    repeat = tl.max(((first[None, :] == first[:, None]) & earlier).to(tl.int32), 1)
    keep = (in_every > 0) & (first >= 0) & (repeat == 0)
    n_shared_pairs = tl.sum(keep.to(tl.int32)) * tl.sum(m_t.to(tl.int32))
    n_chosen_pairs = tl.sum((rows >= 0).to(tl.int32))
    keep = tl.where(n_shared_pairs >= MIN_SHARE * n_chosen_pairs, keep, False)   # the tile takes the pass, or not
    last = 2147483647
    shared = tl.sort(tl.where(keep, first, last))
    tl.store(SHARED + (i_row * NUM_TILES + i_tile) * SLOTS + offs_s, tl.where(shared == last, -1, shared),
             mask=offs_s < SLOTS)
    # the rest: every slot holding a kept candidate becomes -1
    is_shared = tl.zeros([TILE_POW2, SLOTS_POW2], tl.int32)
    for c in tl.static_range(SLOTS):
        kept = tl.sum(tl.where(offs_s == c, keep.to(tl.int32), 0))
        candidate = tl.load(SEL + (i_row * T + i_tile * TILE) * SLOTS + c)
        is_shared = is_shared | ((rows == candidate) & (kept > 0)).to(tl.int32)
    tl.store(REST + (i_row * T + offs_t)[:, None] * SLOTS + offs_s[None, :], tl.where(is_shared > 0, -1, rows),
             mask=m_ts)


@triton.jit
def _tile_pass_fwd(Q, K, V, SHARED, O_PART, LSE_PART, O, LSE,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks, stride_ob, stride_oh, stride_ot,
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
    p_ids = SHARED + ((i_b * HI + i_hi) * NUM_TILES + i_tile) * SLOTS
    if tl.load(p_ids) < 0:                                             # no shared block: the combine writes it
        return
    t = i_tile * TILE + offs_m // G
    g = offs_m % G
    m_row = (offs_m < TILE * G) & (t < T)
    b_q = tl.load(Q + i_b * stride_qb + (i_kv * G + g)[:, None] * stride_qh + t.to(tl.int64)[:, None] * stride_qt
                  + offs_d[None, :], mask=m_row[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    # the tile's shared blocks, ascending, then -1; the first n_whole are seen whole by every query
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
    # -- merge with the KV-outer partials of the query's other blocks (lse = -inf where none)
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    lse_tile = tl.where(l_i > 0, (m_i + tl.log2(l_safe)) * LN2, float("-inf"))
    first_part = ((((i_b * HI + i_hi) * T + t) * SLOTS) * R + i_r) * G + g    # slot 0 of each row
    lses = tl.load(LSE_PART + first_part[:, None] + offs_s[None, :] * (R * G),
                   mask=m_row[:, None] & (offs_s[None, :] < SLOTS), other=float("-inf"))
    m = tl.maximum(tl.max(lses, 1), lse_tile)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.sum(tl.exp(lses - m_safe[:, None]), 1) + tl.exp(lse_tile - m_safe)
    lse = tl.where(total > 0, m_safe + tl.log(tl.where(total > 0, total, 1.0)), float("-inf"))
    lse_safe = tl.where(total > 0, lse, 0.0)
    out = acc * (tl.exp(lse_tile - lse_safe) / l_safe)[:, None]
    weights = tl.exp(lses - lse_safe[:, None])                          # [rows, slots], 0 where no partial
    in_use = (tl.max(weights, 0) > 0).to(tl.int32)                      # slots where some row has a partial
    rank = tl.cumsum(in_use, 0) - 1
    for i in range(tl.sum(in_use)):                                     # only those: a loop with no branch
        slot = tl.sum(tl.where((rank == i) & (in_use > 0), offs_s, 0))
        w = tl.sum(tl.where(offs_s[None, :] == slot, weights, 0.0), 1)
        part = first_part + slot * (R * G)
        o = tl.load(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], mask=(w > 0)[:, None], other=0.0)
        out += w[:, None] * o.to(tl.float32)
    heads = i_kv * G + g
    tl.store(O + i_b * stride_ob + heads[:, None] * stride_oh + t.to(tl.int64)[:, None] * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_row[:, None])
    tl.store(LSE + (i_b * tl.num_programs(1) * G + heads) * T + t, lse, mask=m_row)


def default_tile_rows(G, D=128):
    """128 (query, head) rows a program, or 256 where 128 would hold fewer than 16 queries: at M3's
    shape (G = 16) tiles of 16 queries halve the K/V loads and ran faster (10.5 against 11.9 ms at
    64K on an H200); at G = 1 and 2 tiles of 128 rows did (data/bench/NOTES-kv-outer.md). A head
    dim over 128 keeps 128 rows, so that the tiles fit in shared memory."""
    return 256 if 128 // G < 16 and D <= 128 else 128


def tile_size(G, block_m):
    """(rows of a program, queries of a tile): about block_m rows, whole groups of G heads."""
    rows = max(block_m, next_pow2(G))
    return rows, rows // G


def tile_plan(sel, tile, min_share=0.0, num_warps=4):
    """(shared [B, HI, ceil(T / tile), K], rest [B, HI, T, K]) as the torch twin's shared_blocks and
    rest_of_selection compute them, in one kernel: a tile whose shared blocks hold less than
    min_share of its chosen (query, block) pairs gets none, and keeps its selection whole."""
    B, HI, T, K = sel.shape
    sel = sel.to(torch.int32).contiguous()
    num_tiles = triton.cdiv(T, tile)
    shared = new_output((B, HI, num_tiles, K), torch.int32, sel.device)
    rest = new_output((B, HI, T, K), torch.int32, sel.device)
    _tile_plan[(num_tiles, B * HI)](sel, shared, rest, T, num_tiles, float(min_share), TILE=tile,
                                    TILE_POW2=next_pow2(tile), SLOTS=K, SLOTS_POW2=next_pow2(K), num_warps=num_warps)
    return shared, rest


def tile_pass(q, k, v, shared, o_part, lse_part, block_size, causal, scale, block_m=128, block_n=128, num_warps=8,
              num_stages=2):
    """(out [B, HQ, T, D], lse [B, HQ, T]): the tiles' shared blocks, merged with the KV-outer partials
    o_part / lse_part ([B*HI*T*K, R, G, (D)], lse -inf where a slot has none). The rows of tiles
    with no shared block are not written (the combine's)."""
    B, HQ, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    HI, num_tiles, K = shared.shape[1], shared.shape[2], shared.shape[3]
    G = HQ // HKV
    rows, tile = tile_size(G, block_m)
    out = new_output(q.shape, o_part.dtype, q.device)
    lse = new_output((B, HQ, T), torch.float32, q.device)
    _tile_pass_fwd[(num_tiles, HKV, B)](q, k, v, shared, o_part, lse_part, out, lse,
                                        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                                        out.stride(0), out.stride(1), out.stride(2),
                                        T, S, HI, HKV // HI, num_tiles, scale * LOG2E,
                                        G=G, TILE=tile, SLOTS=K, SLOTS_POW2=next_pow2(K), CAUSAL=causal,
                                        BS=block_size, BLOCK_N=min(block_n, block_size, 64 if D > 128 else 128),
                                        BLOCK_M=rows, HEAD_DIM=D,
                                        UPCAST=UPCAST, num_warps=num_warps, num_stages=num_stages)
    return out, lse
