"""KV-outer sparse attention ("KV outer, gather Q"): a program loads one KV block once and attends
chunks of the queries that chose it, with an exact softmax over that one block; every
(query, slot) partial (o, lse) is written once; a combine kernel then merges each query's partials.

Twin: sparse_attention(order="kv") (m3lite/attention/kv_order.py). Its build_block_csr and
`block_entries` below compute the same inversion, the latter written to stay on the GPU.
"""
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .common import LOG2E, UPCAST, new_output, next_pow2
from .sparse_shared import default_tile_rows, tile_pass, tile_plan, tile_size


@triton.jit
def _sparse_kv_fwd(Q, K, V, ENTRIES, ROWS, STARTS, OFFSETS, O_PART, LSE_PART,
                   stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                   T, S, NB, HI, R, CHUNK, ENTRIES_PER_PROGRAM, qk_scale,
                   G: tl.constexpr, SLOTS: tl.constexpr, CAUSAL: tl.constexpr, BS: tl.constexpr,
                   BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    i_w, i_r = tl.program_id(0), tl.program_id(1)
    row = tl.load(ROWS + i_w)                                          # a (batch, index head, block)
    start = tl.load(STARTS + i_w)
    end = tl.minimum(tl.load(OFFSETS + row + 1), start + ENTRIES_PER_PROGRAM)
    if start >= end:                                                   # a spare program of the work list
        return
    i_b, i_hi, j = (row // (HI * NB)).to(tl.int64), ((row // NB) % HI).to(tl.int32), (row % NB).to(tl.int32)
    i_kv = i_hi * R + i_r
    offs_d = tl.arange(0, HEAD_DIM)
    # -- load the KV block once, for all the chunks of queries below
    cols = j * BS + tl.arange(0, BS)
    p_kv = i_b * stride_kb + i_kv.to(tl.int64) * stride_kh
    b_k = tl.load(K + p_kv + cols[None, :] * stride_ks + offs_d[:, None], mask=cols[None, :] < S, other=0.0)
    b_v = tl.load(V + p_kv + cols[:, None] * stride_ks + offs_d[None, :], mask=cols[:, None] < S, other=0.0)
    if UPCAST:
        b_k, b_v = b_k.to(tl.float32), b_v.to(tl.float32)
    # row m of a Q tile is head g of the chunk's query m // G
    offs_m = tl.arange(0, BLOCK_M)
    g = offs_m % G
    p_q = Q + i_b * stride_qb + (i_kv * G + g).to(tl.int64)[:, None] * stride_qh + offs_d[None, :]
    # The loop is pipelined by hand: the next chunk's Q tile, and the one after's entries, are
    # requested before this chunk's math, so that their memory latency hides behind it.
    m_row, t, entry = _chunk_ids(ENTRIES, T, SLOTS, start, end, offs_m, CHUNK, G)
    b_q = _gather_q(p_q, t, m_row, stride_qt, UPCAST)
    n_row, n_t, n_entry = _chunk_ids(ENTRIES, T, SLOTS, start + CHUNK, end, offs_m, CHUNK, G)
    for first in range(start, end, CHUNK):
        n_q = _gather_q(p_q, n_t, n_row, stride_qt, UPCAST)
        nn_row, nn_t, nn_entry = _chunk_ids(ENTRIES, T, SLOTS, first + 2 * CHUNK, end, offs_m, CHUNK, G)
        # -- exact softmax over this one block: no running max, no rescaling
        s = tl.dot(b_q, b_k)                                            # [BLOCK_M, BS], unscaled
        needs_mask = (j + 1) * BS > S                                   # a partial last block
        if CAUSAL:  # does the chunk's earliest query see less than the whole block?
            needs_mask = needs_mask | ((j + 1) * BS - 1 > tl.min(tl.where(m_row, t, T), 0) + S - T)
        if needs_mask:
            visible = cols[None, :] < S
            if CAUSAL:
                visible = visible & (cols[None, :] <= (t + S - T)[:, None])
            s = tl.where(visible, s, float("-inf"))
        m = tl.max(s, 1)
        m_safe = tl.where(m == float("-inf"), 0.0, m) * qk_scale
        p = tl.exp2(s * qk_scale - m_safe[:, None])                    # one fused multiply-add each
        l = tl.sum(p, 1)
        l_safe = tl.where(l > 0, l, 1.0)                                # a query that sees none of the block
        o = tl.dot(p.to(b_v.dtype), b_v) * tl.where(l > 0, 1.0 / l_safe, 0.0)[:, None]
        lse = tl.where(l > 0, (m_safe + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
        # -- write the partials once, at each query's (slot, head): the entry's place
        part = (entry.to(tl.int64) * R + i_r) * G + g
        tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], o.to(O_PART.dtype.element_ty),
                 mask=m_row[:, None])
        tl.store(LSE_PART + part, lse, mask=m_row)
        m_row, t, entry, b_q = n_row, n_t, n_entry, n_q                # move the pipeline on
        n_row, n_t, n_entry = nn_row, nn_t, nn_entry


@triton.jit
def _chunk_ids(ENTRIES, T, SLOTS: tl.constexpr, first, end, offs_m, CHUNK, G: tl.constexpr):
    """The chunk that starts at entry `first`: (row mask, query, flat index into sel) of each row."""
    e = first + offs_m // G                                            # each row's place in ENTRIES
    m_row = (offs_m < CHUNK * G) & (e < end)
    entry = tl.load(ENTRIES + e, mask=m_row, other=-1)                 # -1: a repeated id, skipped
    return m_row & (entry >= 0), (entry // SLOTS) % T, entry


@triton.jit
def _gather_q(p_q, t, m_row, stride_qt, UPCAST: tl.constexpr):
    b_q = tl.load(p_q + t.to(tl.int64)[:, None] * stride_qt, mask=m_row[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    return b_q


@triton.jit
def _combine_fwd(O_PART, LSE_PART, O, LSE, SHARED, stride_ob, stride_oh, stride_ot, T, HI, NUM_SLOTS, NUM_TILES,
                 SLOTS_POW2: tl.constexpr, HEADS: tl.constexpr, BLOCK_R: tl.constexpr, HEAD_DIM: tl.constexpr,
                 TILE: tl.constexpr):
    """Merge the NUM_SLOTS partials of each (query, head) like split-KV decoding, in two passes:
    every slot's weight from the lses first, then the weighted sum of the partial outputs.

    A program takes BLOCK_R consecutive (query, head) rows of one (batch, index head). With the
    weights known up front, the second pass is only loads and multiply-adds, one slot after another
    with nothing carried between them but the sum: no load waits on the last slot's arithmetic.
    With TILE > 0 the rows of the tiles that took the tile pass (their first shared block is not
    -1) are left to it; a program with only such rows returns at once.
    """
    i_r, i_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)           # i_bh = b * HI + hi
    offs_r = i_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, SLOTS_POW2)
    t, h = offs_r // HEADS, offs_r % HEADS
    m_r = t < T
    if TILE > 0:
        tile_took_it = tl.load(SHARED + (i_bh * NUM_TILES + t // TILE) * NUM_SLOTS, mask=m_r, other=-1) >= 0
        m_r = m_r & (tile_took_it == 0)
        if tl.max(m_r.to(tl.int32), 0) == 0:
            return
    first_part = ((i_bh * T + t) * NUM_SLOTS) * HEADS + h                 # slot 0 of each row
    # -- pass 1: the lse of each row over all its slots
    lses = tl.load(LSE_PART + first_part[:, None] + offs_s[None, :] * HEADS,
                   mask=m_r[:, None] & (offs_s[None, :] < NUM_SLOTS), other=float("-inf"))
    m = tl.max(lses, 1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    l = tl.sum(tl.exp(lses - m_safe[:, None]), 1)
    lse = tl.where(l > 0, m_safe + tl.log(tl.where(l > 0, l, 1.0)), float("-inf"))
    lse_safe = tl.where(l > 0, lse, 0.0)
    # -- pass 2: out = sum over slots of exp(lse_slot - lse) * o_slot
    acc = tl.zeros([BLOCK_R, HEAD_DIM], tl.float32)
    for slot in range(NUM_SLOTS):
        part = first_part + slot * HEADS
        # the slot's lse is read again (from cache): simpler than picking its column out of `lses`
        w = tl.exp(tl.load(LSE_PART + part, mask=m_r, other=float("-inf")) - lse_safe)   # 0 for unused slots
        o = tl.load(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], mask=(w > 0)[:, None], other=0.0)
        acc += w[:, None] * o.to(tl.float32)
    i_b, i_hi = i_bh // HI, i_bh % HI
    heads = i_hi * HEADS + h
    tl.store(O + i_b * stride_ob + heads[:, None] * stride_oh + t[:, None] * stride_ot + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=m_r[:, None])
    tl.store(LSE + (i_b * HI * HEADS + heads) * T + t, lse, mask=m_r)


def work_list(offsets, per_program, most_entries):
    """Cut every CSR row into pieces of at most `per_program` entries: (row, first entry) per program.

    The number of pieces is known only on the GPU, and reading it would stall the host, so the
    list is as long as it could ever be (most_entries / per_program full pieces plus one partial
    piece per row); the spare programs at its end start past their row's last entry and return.
    """
    num_rows = len(offsets) - 1
    pieces = (offsets.diff() + per_program - 1) // per_program
    pieces_before = torch.cumsum(pieces, 0)                          # inclusive: pieces of rows 0..r
    program = torch.arange(num_rows + triton.cdiv(most_entries, per_program), device=offsets.device)
    rows = torch.searchsorted(pieces_before, program, right=True).clamp_(max=num_rows - 1)
    piece_in_row = program - (pieces_before[rows] - pieces[rows])
    return rows, offsets[rows] + piece_in_row * per_program


def block_entries(sel, num_blocks):
    """The selection inverted, without a host sync: (offsets [B*HI*NB + 1], entries int32 or int64).

    entries lists flat indices into sel [B, HI, T, K], grouped by (batch, index head, block) and in
    query order within each; row r's entries are entries[offsets[r]:offsets[r + 1]]. Unselected
    slots (-1) sort past the last row instead of being filtered out, which would need a sync. A
    block that a query chose twice is attended once: the repeat (next to the first after the sort)
    becomes -1, which the kernel skips.
    """
    B, HI, T, K = sel.shape
    num_rows = B * HI * num_blocks
    flat = sel.reshape(B * HI, T * K)
    first_row = torch.arange(B * HI, device=sel.device, dtype=torch.int32)[:, None] * num_blocks
    row = torch.where(flat >= 0, first_row + flat, num_rows).reshape(-1)
    key = row.to(torch.int16) if num_rows < 2 ** 15 else row                  # fewer radix-sort passes
    sorted_rows, entries = torch.sort(key, stable=True)    # stable: query order, a query's repeats adjacent
    offsets = torch.searchsorted(sorted_rows, torch.arange(num_rows + 1, device=sel.device, dtype=key.dtype))
    if sel.numel() < 2 ** 31:                                               # else they stay int64
        entries = entries.to(torch.int32)
    repeat = (sorted_rows[1:] == sorted_rows[:-1]) & (entries[1:] // K == entries[:-1] // K)
    entries[1:].masked_fill_(repeat, -1)
    return offsets, entries


class KVPlan(NamedTuple):
    """What the KV-outer kernel needs besides q, k, v: the inverted selection and the programs."""
    offsets: torch.Tensor      # [B*HI*NB + 1] where each (batch, index head, block)'s entries start
    entries: torch.Tensor      # flat indices into sel, which are also where the partials go
    rows: torch.Tensor         # [programs] the row (batch, index head, block) of each program
    starts: torch.Tensor       # [programs] the program's first entry (past its row's end: a spare)
    block_m: int               # (query, head) rows per tile
    chunk: int                 # queries per tile
    entries_per_program: int

    def working(self):
        """[programs] bool: the programs with entries to attend (the others are the list's spares)."""
        return self.starts < self.offsets[self.rows + 1]


def plan(sel, S, block_size, G, block_m=64, chunks_per_program=64):
    """Invert the selection on the GPU and cut every block's query list into programs."""
    offsets, entries = block_entries(sel, triton.cdiv(S, block_size))
    block_m = max(block_m, next_pow2(G))
    chunk = block_m // G
    rows, starts = work_list(offsets, chunk * chunks_per_program, sel.numel())
    return KVPlan(offsets, entries, rows, starts, block_m, chunk, chunk * chunks_per_program)


def partials(q, k, v, sel_shape, kv_plan, block_size, causal, scale, num_warps=4, num_stages=1):
    """The KV-outer kernel: (o_part [B*HI*T*K, R, G, D], lse_part [B*HI*T*K, R, G]) per (query, slot)."""
    B, HQ, T, D = q.shape
    HKV, S, HI, K = k.shape[1], k.shape[2], sel_shape[1], sel_shape[3]
    G, R, NB = HQ // HKV, HKV // HI, triton.cdiv(S, block_size)
    part_dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.float32
    o_part = new_output((B * HI * T * K, R, G, D), part_dtype, q.device)   # unused slots are never read
    lse_part = torch.full((B * HI * T * K, R, G), float("-inf"), dtype=torch.float32, device=q.device)
    p = kv_plan
    if len(p.rows):
        _sparse_kv_fwd[(len(p.rows), R)](q, k, v, p.entries, p.rows, p.starts, p.offsets,
                                         o_part, lse_part, q.stride(0), q.stride(1), q.stride(2),
                                         k.stride(0), k.stride(1), k.stride(2), T, S, NB, HI, R, p.chunk,
                                         p.entries_per_program, scale * LOG2E, G=G, SLOTS=K, CAUSAL=causal, BS=block_size,
                                         BLOCK_M=p.block_m, HEAD_DIM=D, UPCAST=UPCAST,
                                         num_warps=num_warps, num_stages=num_stages)
    return o_part, lse_part


def combine(o_part, lse_part, q_shape, HI, K, block_r=128, num_warps=4, num_stages=2, shared=None, tile=0,
            out=None, lse=None):
    """Merge each query's K partials: (out [B, HQ, T, D] in the partials' dtype, lse [B, HQ, T]).

    With the tile plan's `shared` [B, HI, num_tiles, K] (and its tile), the rows of the tiles that
    took the tile pass are not written: the tile pass writes them (into out / lse, given then).
    """
    B, HQ, T, D = q_shape
    out = new_output(q_shape, o_part.dtype, o_part.device) if out is None else out
    lse = new_output((B, HQ, T), torch.float32, o_part.device) if lse is None else lse
    heads = HQ // HI
    grid = (triton.cdiv(T * heads, block_r), B * HI)
    _combine_fwd[grid](o_part, lse_part, out, lse, lse_part if shared is None else shared,
                       out.stride(0), out.stride(1), out.stride(2), T, HI, K,
                       1 if shared is None else shared.shape[2], SLOTS_POW2=next_pow2(K), HEADS=heads,
                       BLOCK_R=block_r, HEAD_DIM=D, TILE=0 if shared is None else tile,
                       num_warps=num_warps, num_stages=num_stages)
    return out, lse


# Measured on an H200 (data/bench/NOTES-kv-outer.md): where tiles share 95-97% of the pairs (the
# locality pattern) the tile pass made the whole call 1.2-1.6x faster; where they share 7-8% (the
# random pattern: about the own block only) it made it 1.15-1.2x slower, as it merges some 15
# partials a query less efficiently than the combine. Shares in between were not measured.
MIN_SHARE = 0.5


def sparse_attention_kv(q, k, v, sel, block_size, causal, scale, tile_rows=None):
    """(out [B, HQ, T, D], lse [B, HQ, T] float32); inputs validated (sel may repeat an id).

    A program loads one KV block and attends chunks of the queries that chose it, each chunk a
    [block_m, D] tile of (query, head) rows. Partials are kept in the input dtype for fp16/bf16
    (half the traffic) and float32 otherwise.

    Before that, the tile plan finds the blocks that a whole tile of consecutive queries chose
    (tiles of about tile_rows (query, head) rows). A tile that shares enough of its choices takes
    the tile pass (sparse_shared.py): its shared blocks query-major, merged with the KV-outer
    partials of the rest in place of the combine; the other tiles keep all of their selection for
    the KV-outer kernel and the combine. tile_rows=None picks the measured best size and the tiles
    that share at least MIN_SHARE of their chosen (query, block) pairs; a tile_rows > 0 sends
    every tile that shares anything through the tile pass; tile_rows=0 sends no tile, and skips
    the plan. No step reads anything back to the host.
    """
    q = q if q.stride(-1) == 1 else q.contiguous()      # e.g. [B, T, HQ, D] memory: each query's heads together
    k, v = k.contiguous(), v.contiguous()
    G, S, HI, K = q.shape[1] // k.shape[1], k.shape[2], sel.shape[1], sel.shape[3]
    if tile_rows == 0:
        o_part, lse_part = partials(q, k, v, sel.shape, plan(sel, S, block_size, G), block_size, causal, scale)
        out, lse = combine(o_part, lse_part, q.shape, HI, K)
        return out.to(q.dtype), lse
    rows = default_tile_rows(G, q.shape[-1]) if tile_rows is None else tile_rows
    tile = tile_size(G, rows)[1]
    shared, rest = tile_plan(sel, tile, min_share=MIN_SHARE if tile_rows is None else 0.0)
    o_part, lse_part = partials(q, k, v, sel.shape, plan(rest, S, block_size, G), block_size, causal, scale)
    out, lse = tile_pass(q, k, v, shared, o_part, lse_part, block_size, causal, scale, block_m=rows)
    combine(o_part, lse_part, q.shape, HI, K, shared=shared, tile=tile, out=out, lse=lse)
    return out.to(q.dtype), lse

