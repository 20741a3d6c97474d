"""Query-major sparse attention: a program per (query, KV head) loops over the query's blocks.

The G query heads of the KV group are packed as the rows (M) of every matmul; each selected block
is loaded from memory by every query that chose it. Twin: sparse_attention(order="query").
"""
import torch
import triton
import triton.language as tl

from .common import LOG2E, UPCAST, new_output, next_pow2, online_softmax_finish, online_softmax_step


@triton.jit
def _sparse_query_fwd(Q, K, V, SEL, O, LSE,
                      stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
                      stride_sb, stride_sh, stride_st, stride_ob, stride_oh, stride_ot,
                      T, S, G, R, NUM_SLOTS, qk_scale,
                      CAUSAL: tl.constexpr, BS: tl.constexpr, G_PAD: tl.constexpr,
                      HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    i_t, i_kv, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    offs_g = tl.arange(0, G_PAD)
    offs_n = tl.arange(0, BS)
    offs_d = tl.arange(0, HEAD_DIM)
    m_g = offs_g < G
    heads = i_kv * G + offs_g                                          # the group's query heads as rows
    b_q = tl.load(Q + i_b * stride_qb + heads[:, None] * stride_qh + i_t * stride_qt + offs_d[None, :],
                  mask=m_g[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    pos = i_t + S - T
    p_sel = SEL + i_b * stride_sb + (i_kv // R) * stride_sh + i_t * stride_st
    p_k = K + i_b * stride_kb + i_kv * stride_kh + offs_d[:, None]
    p_v = V + i_b * stride_kb + i_kv * stride_kh + offs_d[None, :]
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, HEAD_DIM], tl.float32)
    for slot in range(NUM_SLOTS):
        j = tl.load(p_sel + slot)
        if j >= 0:
            cols = j * BS + offs_n
            b_k = tl.load(p_k + cols[None, :] * stride_ks, mask=cols[None, :] < S, other=0.0)   # [D, BS]
            b_v = tl.load(p_v + cols[:, None] * stride_ks, mask=cols[:, None] < S, other=0.0)   # [BS, D]
            if UPCAST:
                b_k, b_v = b_k.to(tl.float32), b_v.to(tl.float32)
            s = tl.dot(b_q, b_k) * qk_scale
            visible = cols < S
            if CAUSAL:
                visible = visible & (cols <= pos)
            s = tl.where(visible[None, :], s, float("-inf"))
            m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, b_v)
    out, lse = online_softmax_finish(m_i, l_i, acc)
    tl.store(O + i_b * stride_ob + heads[:, None] * stride_oh + i_t * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_g[:, None])
    tl.store(LSE + (i_b * tl.num_programs(1) * G + heads) * T + i_t, lse, mask=m_g)


def sparse_attention_query(q, k, v, sel, block_size, causal, scale):
    """(out [B, HQ, T, D], lse [B, HQ, T] float32); inputs validated, sel without repeated ids."""
    B, HQ, T, D = q.shape
    HKV, S, HI, K = k.shape[1], k.shape[2], sel.shape[1], sel.shape[3]
    q, k, v, sel = q.contiguous(), k.contiguous(), v.contiguous(), sel.to(torch.int32).contiguous()
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((B, HQ, T), torch.float32, q.device)
    G = HQ // HKV
    _sparse_query_fwd[(T, HKV, B)](q, k, v, sel, out, lse, q.stride(0), q.stride(1), q.stride(2),
                                   k.stride(0), k.stride(1), k.stride(2), sel.stride(0), sel.stride(1),
                                   sel.stride(2), out.stride(0), out.stride(1), out.stride(2),
                                   T, S, G, HKV // HI, K, scale * LOG2E,
                                   CAUSAL=causal, BS=block_size, G_PAD=max(16, next_pow2(G)), HEAD_DIM=D,
                                   UPCAST=UPCAST, num_warps=4, num_stages=2)
    return out, lse
