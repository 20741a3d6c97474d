"""Dense attention references: the plain one, and a flash-style tiled one with online softmax."""
import torch

from . import checks
from .common import NEG_INF, accum_dtype, masked_softmax_parts, query_positions, visible_mask


def dense_attention(q, k, v, causal=True, scale=None, return_lse=False):
    """Plain (causal) GQA attention, the reference every other path is checked against.

    Args:
        q: [B, HQ, T, D] queries; k, v: [B, HKV, S, D] keys and values, HQ % HKV == 0.
        causal: bottom-right aligned: query i sees keys t <= S - T + i.
        scale: score scale, default D ** -0.5.
    Returns:
        out [B, HQ, T, D] in q's dtype (and lse [B, HQ, T] float when return_lse).
    """
    B, HQ, HKV, T, S, D = checks.qkv(q, k, v, causal, scale)
    scale = D ** -0.5 if scale is None else scale
    acc = accum_dtype(q.dtype)
    G = HQ // HKV
    qf = q.to(acc).view(B, HKV, G, T, D)
    s = torch.einsum("bhgtd,bhsd->bhgts", qf, k.to(acc)) * scale           # [B, HKV, G, T, S]
    allowed = visible_mask(T, S, causal, q.device)
    p, lse = masked_softmax_parts(s, allowed)
    out = torch.einsum("bhgts,bhsd->bhgtd", p, v.to(acc)).reshape(B, HQ, T, D).to(q.dtype)
    return (out, lse.reshape(B, HQ, T)) if return_lse else out


def tiled_attention(q, k, v, causal=True, scale=None, block_q=64, block_k=64):
    """Flash-style attention in plain torch: tiles of queries and keys with an online softmax.

    Never holds more than a [block_q, block_k] tile of scores per head; equals `dense_attention`.
    Args as in `dense_attention`; block_q, block_k: tile sizes.
    """
    B, HQ, HKV, T, S, D = checks.qkv(q, k, v, causal, scale)
    checks.positive_int(block_q, "block_q")
    checks.positive_int(block_k, "block_k")
    scale = D ** -0.5 if scale is None else scale
    acc = accum_dtype(q.dtype)
    G = HQ // HKV
    qf = q.to(acc).view(B, HKV, G, T, D)
    kf, vf = k.to(acc), v.to(acc)
    pos_q = query_positions(T, S, q.device)
    out = torch.empty(B, HKV, G, T, D, dtype=acc, device=q.device)
    for start_m in range(0, T, block_q):
        rows = slice(start_m, min(start_m + block_q, T))
        q_tile = qf[:, :, :, rows]                                           # [B, HKV, G, BM, D]
        m_i = torch.full(q_tile.shape[:-1], NEG_INF, dtype=acc, device=q.device)
        l_i = torch.zeros_like(m_i)
        acc_o = torch.zeros_like(q_tile)
        last_key = int(pos_q[rows.stop - 1]) + 1 if causal else S           # skip tiles in the future
        for start_n in range(0, last_key, block_k):
            cols = slice(start_n, min(start_n + block_k, S))
            s = torch.einsum("bhgmd,bhnd->bhgmn", q_tile, kf[:, :, cols]) * scale
            if causal:
                visible = torch.arange(cols.start, cols.stop, device=q.device) <= pos_q[rows, None]
                s = s.masked_fill(~visible, NEG_INF)
            # -- update m_i and l_i: rescale what was accumulated under the old maximum
            m_new = torch.maximum(m_i, s.amax(-1))
            m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            alpha = torch.exp(m_i - m_safe)
            p = torch.exp(s - m_safe[..., None])
            l_i = l_i * alpha + p.sum(-1)
            acc_o = acc_o * alpha[..., None] + torch.einsum("bhgmn,bhnd->bhgmd", p, vf[:, :, cols])
            m_i = m_new
        out[:, :, :, rows] = acc_o / l_i.clamp_min(torch.finfo(acc).tiny)[..., None]
    return out.reshape(B, HQ, T, D).to(q.dtype)


def attention_flops(HQ, attended_tokens, D):
    """Useful FLOPs of attention: two matmuls of 2 * D FLOPs per (query head, attended token)."""
    return 4 * HQ * attended_tokens * D


def causal_attended_tokens(T, S):
    """How many (query, key) pairs causal attention with bottom-right alignment visits."""
    return T * (S - T) + T * (T + 1) // 2
