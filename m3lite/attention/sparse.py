"""Sparse attention over selected blocks, in the two gather orders, in plain torch.

order="query": each query gathers the tokens of its selected blocks (simple; a block chosen by
    many queries is loaded many times).
order="kv": the selection is inverted into a key-block -> queries map (CSR); each KV block is
    loaded once and attends all the queries that chose it, with an exact softmax over that one
    block; the partial (o, lse) of every (query, slot) is then merged by log-sum-exp.
"""
from typing import NamedTuple

import torch

from . import checks
from .common import NEG_INF, accum_dtype, masked_softmax_parts, query_positions
from .indexer import block_scores, num_blocks, select_blocks

# Gathered key/value elements per chunk of queries in the query order.
GATHER_CHUNK_ELEMENTS = 1 << 24


class BlockCSR(NamedTuple):
    """The selection inverted: for every (batch, index head, KV block), the queries that chose it.

    Row r = (b * HI + hi) * NB + j lists entries offsets[r]:offsets[r + 1] of `query` (the query
    index t) and `slot` (where in sel[b, hi, t] the block was chosen, 0..K-1).
    """
    offsets: torch.Tensor  # int64 [B * HI * NB + 1]
    query: torch.Tensor    # int64 [nnz]
    slot: torch.Tensor     # int64 [nnz]


def unique_selection(sel):
    """Replace repeated ids within a row by -1, so a block chosen twice is attended once."""
    ordered, order = sel.sort(dim=-1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    repeat = torch.zeros_like(repeat).scatter(-1, order, repeat)
    return sel.masked_fill(repeat, -1)


def build_block_csr(sel, num_blocks):
    """Invert a selection sel [B, HI, T, K] (ids in [-1, NB)) into a key-block -> queries CSR."""
    B, HI, T, K = sel.shape
    flat = sel.reshape(B * HI, T * K).long()
    valid = flat >= 0
    row_of_entry = (torch.arange(B * HI, device=sel.device)[:, None] * num_blocks + flat)[valid]
    entry = torch.arange(T * K, device=sel.device).expand(B * HI, -1)[valid]
    order = torch.argsort(row_of_entry, stable=True)          # stable: queries stay in order
    counts = torch.bincount(row_of_entry, minlength=B * HI * num_blocks)
    offsets = torch.zeros(B * HI * num_blocks + 1, dtype=torch.long, device=sel.device)
    offsets[1:] = counts.cumsum(0)
    entry = entry[order]
    return BlockCSR(offsets, entry // K, entry % K)


def merge_partials(o, lse):
    """Merge partial attention results like flash-decoding's split-KV combine.

    Args:
        o: [..., P, D] partial outputs, each normalised over its own part; lse: [..., P] their
        log-sum-exps (-inf for an empty part).
    Returns:
        (o [..., D], lse [...]): the softmax over the union of the parts; zeros and -inf if all are empty.
    """
    m = lse.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse - m)                                                   # [..., P]
    total = w.sum(-1, keepdim=True)
    total_safe = total.clamp_min(torch.finfo(total.dtype).tiny)
    out = (w[..., None] * o).sum(-2) / total_safe
    merged_lse = torch.where(total > 0, m + torch.log(total_safe), torch.full_like(total, NEG_INF))
    return out, merged_lse.squeeze(-1)


def _block_token_mask(block, block_size, S, pos_q, causal):
    """Which of block `block`'s BS slots each query may see: real tokens, and causally visible."""
    tokens = block * block_size + torch.arange(block_size, device=pos_q.device)
    allowed = (tokens < S).expand(pos_q.shape[0], -1)
    return allowed & (tokens <= pos_q[:, None]) if causal else allowed


def sparse_attention_kv(q, k, v, sel, block_size, causal, scale):
    """KV outer, gather Q: load each KV block once for all queries that chose it. Returns (o, lse)."""
    B, HQ, T, D = q.shape
    HKV, S, HI, K = k.shape[1], k.shape[2], sel.shape[1], sel.shape[-1]
    NB, G, R = num_blocks(S, block_size), HQ // HKV, HKV // HI     # R: KV heads per selection row
    acc = accum_dtype(q.dtype)
    csr = build_block_csr(unique_selection(sel), NB)
    pad = NB * block_size - S
    kb = torch.nn.functional.pad(k.to(acc), (0, 0, 0, pad)).view(B, HI, R, NB, block_size, D)
    vb = torch.nn.functional.pad(v.to(acc), (0, 0, 0, pad)).view(B, HI, R, NB, block_size, D)
    qg = q.to(acc).view(B, HI, R, G, T, D)
    pos_q = query_positions(T, S, q.device)
    offsets = csr.offsets.tolist()
    parts_o, parts_lse, where = [], [], []
    for row in range(B * HI * NB):
        lo, hi = offsets[row], offsets[row + 1]
        if lo == hi:
            continue
        b, h, j = row // (HI * NB), (row // NB) % HI, row % NB
        t = csr.query[lo:hi]                                                  # the queries that chose block j
        s = torch.einsum("rgnd,rkd->rgnk", qg[b, h][:, :, t], kb[b, h, :, j]) * scale   # [R, G, n, BS]
        p, lse = masked_softmax_parts(s, _block_token_mask(j, block_size, S, pos_q[t], causal))
        parts_o.append(torch.einsum("rgnk,rkd->rgnd", p, vb[b, h, :, j]))
        parts_lse.append(lse)
        where.append(((b * HI + h) * T + t) * K + csr.slot[lo:hi])
    return _scatter_and_merge(parts_o, parts_lse, where, (B, HI, R, G, T, K, D), acc, q.device)


def _scatter_and_merge(parts_o, parts_lse, where, shape, acc, device):
    """Place every partial at its (query, slot), then merge the K slots of each query."""
    B, HI, R, G, T, K, D = shape
    o_slots = torch.zeros(B * HI * T * K, R, G, D, dtype=acc, device=device)
    lse_slots = torch.full((B * HI * T * K, R, G), NEG_INF, dtype=acc, device=device)
    if where:
        idx = torch.cat(where)
        o_slots = o_slots.index_copy(0, idx, torch.cat(parts_o, dim=2).permute(2, 0, 1, 3))
        lse_slots = lse_slots.index_copy(0, idx, torch.cat(parts_lse, dim=2).permute(2, 0, 1))
    o_slots = o_slots.view(B, HI, T, K, R, G, D).permute(0, 1, 4, 5, 2, 3, 6)   # [B, HI, R, G, T, K, D]
    lse_slots = lse_slots.view(B, HI, T, K, R, G).permute(0, 1, 4, 5, 2, 3)
    out, lse = merge_partials(o_slots, lse_slots)
    return out.reshape(B, HI * R * G, T, D), lse.reshape(B, HI * R * G, T)


def sparse_attention_query(q, k, v, sel, block_size, causal, scale):
    """Query outer, gather KV: every query loads the tokens of its own selected blocks. Returns (o, lse)."""
    B, HQ, T, D = q.shape
    HKV, S, HI, K = k.shape[1], k.shape[2], sel.shape[1], sel.shape[-1]
    G, R = HQ // HKV, HKV // HI
    acc = accum_dtype(q.dtype)
    sel = unique_selection(sel).long()
    pos_q = query_positions(T, S, q.device)
    qg = q.to(acc).view(B, HI, R, G, T, D)
    kf, vf = k.to(acc).view(B, HI, R, S, D), v.to(acc).view(B, HI, R, S, D)
    outs, lses = [], []
    chunk = max(1, GATHER_CHUNK_ELEMENTS // (B * HKV * K * block_size * D))
    for start in range(0, T, chunk):
        rows = slice(start, min(start + chunk, T))
        tokens = sel[:, :, rows, :, None] * block_size + torch.arange(block_size, device=q.device)
        allowed = (sel[:, :, rows, :, None] >= 0) & (tokens < S)
        if causal:
            allowed &= tokens <= pos_q[rows, None, None]
        tokens = tokens.clamp(0, S - 1).flatten(-2)                          # [B, HI, C, K * BS]
        kg, vg = _gather_tokens(kf, tokens), _gather_tokens(vf, tokens)      # [B, HI, R, C, K * BS, D]
        s = torch.einsum("bhrgcd,bhrcnd->bhrgcn", qg[:, :, :, :, rows], kg) * scale
        p, lse = masked_softmax_parts(s, allowed.flatten(-2)[:, :, None, None])
        outs.append(torch.einsum("bhrgcn,bhrcnd->bhrgcd", p, vg))
        lses.append(lse)
    return torch.cat(outs, dim=4).reshape(B, HQ, T, D), torch.cat(lses, dim=4).reshape(B, HQ, T)


def _gather_tokens(x, tokens):
    """x [B, HI, R, S, D] gathered at tokens [B, HI, C, N] -> [B, HI, R, C, N, D]."""
    B, HI, R, S, D = x.shape
    C, N = tokens.shape[2:]
    idx = tokens.reshape(B, HI, 1, C * N, 1).expand(B, HI, R, C * N, D)
    return torch.gather(x, 3, idx).view(B, HI, R, C, N, D)


_ORDERS = {"query": sparse_attention_query, "kv": sparse_attention_kv}


def sparse_attention(q, k, v, sel, block_size=128, causal=True, scale=None, order="kv",
                     backend="auto", return_lse=False):
    """Attention of each query over the tokens of its selected KV blocks only.

    Args:
        q: [B, HQ, T, D]; k, v: [B, HKV, S, D]; sel: int [B, HI, T, K] block ids, -1 = none,
            shared by the HQ // HI query heads of each selection row; HKV % HI == 0.
        block_size: tokens per block; causal: bottom-right aligned; scale: default D ** -0.5.
        order: "query" or "kv" (see the module docstring); backend: "torch" (or "auto").
    Returns:
        out [B, HQ, T, D] in q's dtype (zeros for a query with nothing to attend),
        and lse [B, HQ, T] (float32, or float64 for float64 inputs) when return_lse.
    """
    B, HQ, HKV, T, S, D = checks.qkv(q, k, v, causal, scale)
    checks.positive_int(block_size, "block_size")
    checks.selection(sel, B, HKV, T, num_blocks(S, block_size), q.device)
    checks.choice(order, "order", checks.ORDERS)
    checks.flag(return_lse, "return_lse")
    checks.backend(backend)
    scale = D ** -0.5 if scale is None else scale
    out, lse = _ORDERS[order](q, k, v, sel, block_size, causal, scale)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


def msa_attention(q, k, v, iq, ik, block_size=128, top_k=16, causal=True, scale=None, order="kv",
                  backend="auto", return_lse=False):
    """MiniMax Sparse Attention end to end: score blocks, select the top-k, attend to them.

    Args:
        q, k, v: as in `sparse_attention`; iq: [B, HI, T, DI] index queries (HKV % HI == 0);
        ik: [B, 1, S, DI] the shared index keys. `scale` applies to the main attention (the
        index scale does not change which blocks win).
    Returns:
        as `sparse_attention`.
    """
    B, HQ, HKV, T, S, D = checks.qkv(q, k, v, causal, scale)
    Bi, HI, Ti, Si, _ = checks.index_qk(iq, ik, HKV)
    if (Bi, Ti, Si) != (B, T, S):
        raise ValueError(f"iq and ik must match q and k in batch and tokens (B={B}, T={T}, S={S}), "
                         f"got B={Bi}, T={Ti}, S={Si}")
    if iq.device != q.device:
        raise ValueError(f"iq must be on the device of q ({q.device}), got {iq.device}")
    scores = block_scores(iq, ik, block_size=block_size, causal=causal, backend=backend)
    sel = select_blocks(scores, top_k=top_k, local=True, backend=backend)
    return sparse_attention(q, k, v, sel, block_size=block_size, causal=causal, scale=scale,
                            order=order, backend=backend, return_lse=return_lse)


def selection_mask(sel, S, block_size):
    """Token mask [B, HI, T, S]: True where a token's block is in the query's selection."""
    B, HI, T, K = sel.shape
    NB = num_blocks(S, block_size)
    chosen = torch.zeros(B, HI, T, NB + 1, dtype=torch.bool, device=sel.device)
    chosen.scatter_(-1, torch.where(sel < 0, NB, sel).long(), True)
    block_of_token = torch.arange(S, device=sel.device) // block_size
    return chosen[..., :NB][..., block_of_token]


def attention_recall(q, k, sel, block_size=128, causal=True, scale=None):
    """Share of dense attention mass that falls inside the selected blocks, per query head.

    1.0 means the selection keeps everything dense attention looks at. Memory grows as T x S.
    Args:
        q: [B, HQ, T, D]; k: [B, HKV, S, D]; sel: int [B, HI, T, K] as in `sparse_attention`.
    Returns:
        float [B, HQ, T] in [0, 1].
    """
    B, HQ, HKV, T, S, D = checks.qkv(q, k, k, causal, scale)
    HI, _ = checks.selection(sel, B, HKV, T, num_blocks(S, block_size), q.device)
    scale = D ** -0.5 if scale is None else scale
    acc = accum_dtype(q.dtype)
    s = torch.einsum("bhtd,bhsd->bhts", q.to(acc), k.to(acc).repeat_interleave(HQ // HKV, 1)) * scale
    allowed = torch.ones(T, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed = torch.arange(S, device=q.device) <= query_positions(T, S, q.device)[:, None]
    p, _ = masked_softmax_parts(s, allowed)
    inside = selection_mask(sel, S, block_size).repeat_interleave(HQ // HI, 1)
    return (p * inside).sum(-1)
