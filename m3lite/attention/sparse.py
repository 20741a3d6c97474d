"""Sparse attention over selected blocks, in the two gather orders, in plain torch.

order="query": each query gathers the tokens of its selected blocks (simple; a block chosen by
    many queries is loaded once per query that chose it).
order="kv": KV outer, gather Q (kv_order.py): each KV block is loaded once for all the queries
    that chose it, and the partial results are merged by log-sum-exp.
"""
import torch

from . import checks
from .common import accum_dtype, chosen_blocks, masked_softmax_parts, query_positions, visible_mask
from .indexer import block_scores, num_blocks, select_blocks
from .kv_order import KVOrderAttention

# Gathered key/value elements per chunk of queries in the query order.
GATHER_CHUNK_ELEMENTS = 1 << 24


def unique_selection(sel):
    """Replace repeated ids within a row by -1, so a block chosen twice is attended once."""
    ordered, order = sel.sort(dim=-1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    repeat = torch.zeros_like(repeat).scatter(-1, order, repeat)
    return sel.masked_fill(repeat, -1)


def sparse_attention_query(q, k, v, sel, block_size, causal, scale):
    """Query outer, gather KV: every query loads the tokens of its own selected blocks. Returns (o, lse)."""
    B, HQ, T, D = q.shape
    HKV, S, HI, K = k.shape[1], k.shape[2], sel.shape[1], sel.shape[-1]
    G, R = HQ // HKV, HKV // HI
    acc = accum_dtype(q.dtype)
    sel = sel.long()
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


def sparse_attention_kv(q, k, v, sel, block_size, causal, scale):
    """KV outer, gather Q: load each KV block once for all queries that chose it. Returns (o, lse)."""
    return KVOrderAttention.apply(q, k, v, sel, block_size, causal, scale)


_ORDERS = {"query": sparse_attention_query, "kv": sparse_attention_kv}


def sparse_attention(q, k, v, sel, block_size=128, causal=True, scale=None, order="kv",
                     backend="auto", return_lse=False):
    """Attention of each query over the tokens of its selected KV blocks only.

    Args:
        q: [B, HQ, T, D]; k, v: [B, HKV, S, D]; sel: int [B, HI, T, K] block ids, -1 = none,
            shared by the HQ // HI query heads of each selection row; HKV % HI == 0.
        block_size: tokens per block; causal: bottom-right aligned; scale: default D ** -0.5.
        order: "query" or "kv" (see the module docstring); backend: "torch", "triton" (m3lite.kernels,
            forward only) or "auto" (Triton for CUDA tensors that need no gradient, else torch).
    Returns:
        out [B, HQ, T, D] in q's dtype (zeros for a query with nothing to attend),
        and lse [B, HQ, T] (float32, or float64 for float64 inputs) when return_lse.
    """
    B, HQ, HKV, T, S, D = checks.qkv(q, k, v, causal, scale)
    checks.positive_int(block_size, "block_size")
    checks.selection(sel, B, HKV, T, num_blocks(S, block_size), q.device)
    checks.choice(order, "order", checks.ORDERS)
    checks.flag(return_lse, "return_lse")
    scale = D ** -0.5 if scale is None else scale
    if checks.backend(backend, q, k, v) == "triton":
        from .. import kernels
        out, lse = kernels.sparse_attention(q, k, v, sel, block_size, causal, scale, order)   # repeats handled there
    else:
        out, lse = _ORDERS[order](q, k, v, unique_selection(sel), block_size, causal, scale)
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
    block_of_token = torch.arange(S, device=sel.device) // block_size
    return chosen_blocks(sel, num_blocks(S, block_size))[..., block_of_token]


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
    allowed = visible_mask(T, S, causal, q.device)
    p, _ = masked_softmax_parts(s, allowed)
    inside = selection_mask(sel, S, block_size).repeat_interleave(HQ // HI, 1)
    return (p * inside).sum(-1)
