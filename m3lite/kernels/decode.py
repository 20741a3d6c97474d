"""MSA decoding in Triton: a few new queries per sequence against a long cache of ragged lengths.

One decode step is five small launches, all with shapes fixed by the cache capacity (so a step can
be captured in a CUDA graph); LENS, the cached tokens per sequence, lives on the device:
1. _decode_scores: block-max index scores. A decode step has only HI * n index-query rows per
   sequence, so the index-key cache is split over many programs, one (or a few) blocks each, and
   every program scores its blocks for all rows at once: the scan runs at memory speed.
   The query's own block is marked +inf (forced) and invisible blocks -inf. Index keys may be
   bf16/fp16/fp32, or fp8 (e4m3) with one float32 scale per token: half the bytes to scan.
2. _topk_chunks and 3. _topk_merge: the top-k blocks in two stages, each chunk of blocks keeping
   its best K candidates, then one merge per row (one program per row over 8K blocks would be slow).
4. _decode_attend: split-KV (flash-decoding): a program per (selected slot, query, KV group)
   loads one block once and attends the group's G query heads to it, writing a partial (o, lse).
5. _decode_combine: merges the partials of each query by log-sum-exp.
Twin: m3lite.attention.decode.decode_attention_torch.
"""
import torch
import triton
import triton.language as tl

from .common import LOG2E, UPCAST, new_output, next_pow2
from .indexer import _sort_key

TOPK_CHUNK = 1024       # blocks per first-stage top-k program
MIN_SCAN_PROGRAMS = 256  # about two programs per SM of an H100/H200


@triton.jit
def _decode_scores(IQ, IK, IK_SCALE, LENS, OUT,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_ks, stride_cb, stride_ob, stride_oh, stride_ot,
                   N, NB, ROWS, scale,
                   BS: tl.constexpr, ROWS_PAD: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
                   INDEX_DIM: tl.constexpr, FP8_KEYS: tl.constexpr, UPCAST: tl.constexpr):
    i_j, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, ROWS_PAD)                                     # row = index head * N + query
    head, query = rows // N, rows % N
    offs_n = tl.arange(0, BS)
    offs_d = tl.arange(0, INDEX_DIM)
    length = tl.load(LENS + i_b)
    pos = length - N + query                                          # each query's absolute position
    b_q = tl.load(IQ + i_b * stride_qb + head[:, None] * stride_qh + query[:, None] * stride_qt
                  + offs_d[None, :], mask=rows[:, None] < ROWS, other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    elif FP8_KEYS:
        b_q = b_q.to(tl.float16)                                      # fp8 -> fp16 is one instruction
    p_k = IK + i_b * stride_kb + offs_d[:, None]
    p_out = OUT + i_b * stride_ob + head * stride_oh + query * stride_ot
    for jj in range(BLOCKS_PER_PROGRAM):
        j = i_j * BLOCKS_PER_PROGRAM + jj
        cols = j * BS + offs_n
        b_k = tl.load(p_k + cols[None, :] * stride_ks, mask=cols[None, :] < length, other=0.0)   # [DI, BS]
        if UPCAST:
            b_k = b_k.to(tl.float32)
        elif FP8_KEYS:
            b_k = b_k.to(tl.float16)                                  # exact: e4m3 fits in fp16
        s = tl.dot(b_q, b_k)
        if FP8_KEYS:                                                  # each key token's own scale
            s *= tl.load(IK_SCALE + i_b * stride_cb + cols, mask=cols < length, other=0.0)[None, :]
        s = tl.where(cols[None, :] <= pos[:, None], s, float("-inf"))
        best = tl.max(s, 1) * scale
        best = tl.where(j == pos // BS, float("inf"), best)               # the own block is forced
        tl.store(p_out + j, best, mask=(rows < ROWS) & (j + 0 * rows < NB))


@triton.jit
def _packed_keys(s, ids):
    """(score, id) packed into one int64 whose order is the score's, ties broken by id."""
    bits = s.to(tl.int32, bitcast=True)
    key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(tl.int64)          # order-preserving int32 of s
    return (key << 32) | ids.to(tl.int64)


@triton.jit
def _topk_chunks(SCORES, CANDIDATES, NB, stride_row, CHUNK: tl.constexpr, K_PAD: tl.constexpr):
    i_row, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs = i_c * CHUNK + tl.arange(0, CHUNK)
    s = tl.load(SCORES + i_row * stride_row + offs, mask=offs < NB, other=float("-inf"))
    best = tl.topk(_packed_keys(s, offs), K_PAD)
    tl.store(CANDIDATES + (i_row * tl.num_programs(1) + i_c) * K_PAD + tl.arange(0, K_PAD), best)


@triton.jit
def _topk_merge(CANDIDATES, SEL, NUM_CANDIDATES, TOP_K, stride_sel,
                CANDIDATES_PAD: tl.constexpr, K_PAD: tl.constexpr, NEG_INF_KEY: tl.constexpr):
    i_row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, CANDIDATES_PAD)
    keys = tl.load(CANDIDATES + i_row * NUM_CANDIDATES + offs, mask=offs < NUM_CANDIDATES,
                   other=-9223372036854775807 - 1)                    # int64 min: below every key
    best = tl.topk(keys, K_PAD)
    ids = (best & 0xFFFFFFFF).to(tl.int32)
    visible = (best >> 32).to(tl.int32) > NEG_INF_KEY
    offs_k = tl.arange(0, K_PAD)
    tl.store(SEL + i_row * stride_sel + offs_k, tl.where(visible, ids, -1), mask=offs_k < TOP_K)


@triton.jit
def _decode_attend(Q, K, V, SEL, LENS, PART_O, PART_LSE,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                   stride_sb, stride_sh, stride_st,
                   N, G, R, NUM_SLOTS, qk_scale,
                   BS: tl.constexpr, G_PAD: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    slot, i_tkv, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    num_kv = tl.num_programs(1) // N
    query, i_kv = i_tkv // num_kv, (i_tkv % num_kv).to(tl.int64)
    offs_g = tl.arange(0, G_PAD)
    offs_n = tl.arange(0, BS)
    offs_d = tl.arange(0, HEAD_DIM)
    heads = i_kv * G + offs_g                                         # the group's query heads as rows
    pos = tl.load(LENS + i_b) - N + query
    j = tl.load(SEL + i_b * stride_sb + (i_kv // R) * stride_sh + query * stride_st + slot)
    out = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
    lse = tl.full([G_PAD], float("-inf"), tl.float32)
    if j >= 0:
        b_q = tl.load(Q + i_b * stride_qb + heads[:, None] * stride_qh + query * stride_qt + offs_d[None, :],
                      mask=offs_g[:, None] < G, other=0.0)
        cols = j * BS + offs_n
        visible = cols <= pos
        p_kv = i_b * stride_kb + i_kv * stride_kh
        b_k = tl.load(K + p_kv + cols[None, :] * stride_ks + offs_d[:, None], mask=visible[None, :], other=0.0)
        b_v = tl.load(V + p_kv + cols[:, None] * stride_ks + offs_d[None, :], mask=visible[:, None], other=0.0)
        if UPCAST:
            b_q, b_k, b_v = b_q.to(tl.float32), b_k.to(tl.float32), b_v.to(tl.float32)
        s = tl.where(visible[None, :], tl.dot(b_q, b_k) * qk_scale, float("-inf"))
        m = tl.max(s, 1)                                              # the own block always has a token
        p = tl.exp2(s - m[:, None])
        total = tl.sum(p, 1)
        out = tl.dot(p.to(b_v.dtype), b_v) / total[:, None]
        lse = m + tl.log2(total)                                      # log2 units until the combine
    row = ((i_b * N + query) * (num_kv * G) + heads) * NUM_SLOTS + slot       # part_o [B, N, HQ, slots, D]
    tl.store(PART_O + row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=offs_g[:, None] < G)
    tl.store(PART_LSE + row, lse, mask=offs_g < G)


@triton.jit
def _decode_combine(PART_O, PART_LSE, O, LSE, stride_ob, stride_oh, stride_ot,
                    N, HQ, NUM_SLOTS, SLOTS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr):
    head, query, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    offs_k = tl.arange(0, SLOTS_PAD)
    offs_d = tl.arange(0, HEAD_DIM)
    m_k = offs_k < NUM_SLOTS
    row = ((i_b * N + query) * HQ + head) * NUM_SLOTS + offs_k         # this head's partials
    lse = tl.load(PART_LSE + row, mask=m_k, other=float("-inf"))
    part = tl.load(PART_O + row[:, None] * HEAD_DIM + offs_d[None, :], mask=m_k[:, None], other=0.0)
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m_safe)
    total = tl.sum(w, 0)
    total_safe = tl.where(total > 0, total, 1.0)
    out = tl.sum(w[:, None] * part, 0) / total_safe
    tl.store(O + i_b * stride_ob + head * stride_oh + query * stride_ot + offs_d, out.to(O.dtype.element_ty))
    tl.store(LSE + (i_b * HQ + head) * N + query,
             tl.where(total > 0, (m_safe + tl.log2(total_safe)) * 0.6931471805599453, float("-inf")))


def decode_scores(iq, ik, lens, block_size, ik_scale=None, *, blocks_per_program=None, num_warps=4):
    """float32 [B, HI, n, NB] block scores of the last n tokens of each sequence (+inf: own block).
    With fp8 index keys, ik_scale [B, 1, capacity] holds each key token's scale, and the kernel
    computes in fp16 (fp8 -> fp16 is one instruction), so iq must lie within fp16's range."""
    B, HI, N, DI = iq.shape
    capacity = ik.shape[2]
    NB = triton.cdiv(capacity, block_size)
    scores = new_output((B, HI, N, NB), torch.float32, iq.device)
    rows = HI * N
    fp8 = ik_scale is not None
    ik_scale = ik_scale if fp8 else ik                                # any pointer when unused
    if blocks_per_program is None:
        blocks_per_program = scan_blocks_per_program(NB, B, fp8)
    grid = (triton.cdiv(NB, blocks_per_program), B)
    _decode_scores[grid](iq, ik, ik_scale, lens, scores, iq.stride(0), iq.stride(1), iq.stride(2), ik.stride(0),
                         ik.stride(2), ik_scale.stride(0), scores.stride(0), scores.stride(1), scores.stride(2),
                         N, NB, rows, DI ** -0.5, BS=block_size, ROWS_PAD=max(16, next_pow2(rows)),
                         BLOCKS_PER_PROGRAM=blocks_per_program, INDEX_DIM=DI, FP8_KEYS=fp8, UPCAST=UPCAST,
                         num_warps=num_warps)
    return scores


def scan_blocks_per_program(NB, B, fp8):
    """Blocks each program of the index scan takes: the fastest in the H200 sweep at 1M tokens (16 for
    fp8 keys, 4 otherwise), fewer where that would leave under MIN_SCAN_PROGRAMS programs."""
    blocks = 16 if fp8 else 4
    while blocks > 1 and B * triton.cdiv(NB, blocks) < MIN_SCAN_PROGRAMS:
        blocks //= 2
    return blocks


def decode_select(scores, top_k, *, chunk=TOPK_CHUNK):
    """int32 [B, HI, n, top_k] selection from decode scores: the top-k in two stages, each program
    of the first taking `chunk` blocks (a power of two)."""
    NB = scores.shape[-1]
    rows = scores.reshape(-1, NB)
    k_pad = max(2, next_pow2(top_k))
    chunk = max(k_pad, min(chunk, next_pow2(NB)))                      # each chunk keeps k_pad candidates
    num_chunks = triton.cdiv(NB, chunk)
    candidates = torch.empty((rows.shape[0], num_chunks, k_pad), dtype=torch.int64, device=scores.device)
    _topk_chunks[(rows.shape[0], num_chunks)](rows, candidates, NB, rows.stride(0), CHUNK=chunk, K_PAD=k_pad)
    sel = new_output((rows.shape[0], top_k), torch.int32, scores.device)
    _topk_merge[(rows.shape[0],)](candidates, sel, num_chunks * k_pad, top_k, sel.stride(0),
                                  CANDIDATES_PAD=max(2, next_pow2(num_chunks * k_pad)), K_PAD=k_pad,
                                  NEG_INF_KEY=_sort_key(float("-inf")))
    return sel.view(*scores.shape[:-1], top_k)


def decode_attend(q, k, v, sel, lens, block_size, scale):
    """(out [B, HQ, n, D], lse [B, HQ, n]): split-KV attention over the selected blocks, then combine."""
    B, HQ, N, D = q.shape
    HKV, HI, num_slots = k.shape[1], sel.shape[1], sel.shape[-1]
    G = HQ // HKV
    part_o = torch.empty((B, N, HQ, num_slots, D), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((B, N, HQ, num_slots), dtype=torch.float32, device=q.device)
    _decode_attend[(num_slots, N * HKV, B)](q, k, v, sel, lens, part_o, part_lse,
                                           q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                                           k.stride(2), sel.stride(0), sel.stride(1), sel.stride(2),
                                           N, G, HKV // HI, num_slots, scale * LOG2E,
                                           BS=block_size, G_PAD=max(16, next_pow2(G)), HEAD_DIM=D,
                                           UPCAST=UPCAST, num_warps=4)
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((B, HQ, N), torch.float32, q.device)
    _decode_combine[(HQ, N, B)](part_o, part_lse, out, lse, out.stride(0), out.stride(1), out.stride(2),
                                N, HQ, num_slots, SLOTS_PAD=max(2, next_pow2(num_slots)), HEAD_DIM=D)
    return out, lse


def decode_attention(q, k, v, iq, ik, lens, block_size, top_k, scale, ik_scale=None):
    """One MSA decode step: scores, selection, attention. lens: int32 [B] cached tokens per sequence."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    q, iq = q.contiguous(), iq.contiguous()
    sel = decode_select(decode_scores(iq, ik, lens, block_size, ik_scale), top_k)
    return decode_attend(q, k, v, sel, lens, block_size, scale)
