"""Dense flash-attention forward (causal or not, GQA): the teaching baseline in Triton.

Twin: m3lite.attention.dense.tiled_attention (the same tiles and online softmax in plain torch).
"""

import torch
import triton
import triton.language as tl

from .common import LOG2E, UPCAST, new_output, online_softmax_finish, online_softmax_step

@triton.jit
def _flash_fwd(Q, K, V, O, LSE,
               stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_ks,
               stride_ob, stride_oh, stride_ot,
               T, S, G, qk_scale,
               CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               HEAD_DIM: tl.constexpr, UPCAST: tl.constexpr):
    i_m, i_h, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2).to(tl.int64)
    i_kv = i_h // G                                                   # GQA: the head's KV head
    offs_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    m_q = offs_m < T
    pos = offs_m + S - T                                              # bottom-right alignment
    b_q = tl.load(Q + i_b * stride_qb + i_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                  mask=m_q[:, None], other=0.0)
    if UPCAST:
        b_q = b_q.to(tl.float32)
    p_k = K + i_b * stride_kb + i_kv * stride_kh + offs_d[:, None]
    p_v = V + i_b * stride_kb + i_kv * stride_kh + offs_d[None, :]
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    end = S
    if CAUSAL:                                                        # skip tiles in every row's future
        end = tl.minimum(S, (i_m + 1) * BLOCK_M + S - T)
    for start_n in range(0, end, BLOCK_N):
        cols = start_n + offs_n
        b_k = tl.load(p_k + cols[None, :] * stride_ks, mask=cols[None, :] < S, other=0.0)   # [D, N]
        b_v = tl.load(p_v + cols[:, None] * stride_ks, mask=cols[:, None] < S, other=0.0)   # [N, D]
        if UPCAST:
            b_k, b_v = b_k.to(tl.float32), b_v.to(tl.float32)
        s = tl.dot(b_q, b_k) * qk_scale
        visible = cols[None, :] < S
        if CAUSAL:
            visible = visible & (cols[None, :] <= pos[:, None])
        s = tl.where(visible, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(m_i, l_i, acc, s, b_v)
    out, lse = online_softmax_finish(m_i, l_i, acc)
    tl.store(O + i_b * stride_ob + i_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=m_q[:, None])
    tl.store(LSE + (i_b * tl.num_programs(1) + i_h) * T + offs_m, lse, mask=m_q)


def flash_attention(q, k, v, causal=True, scale=None, block_m=64, block_n=64):
    """Dense attention with the Triton flash kernel. Returns (out [B, HQ, T, D], lse [B, HQ, T] float32).

    Inputs as for m3lite.dense_attention, already validated; last dims contiguous.
    """
    B, HQ, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    out = new_output(q.shape, q.dtype, q.device)
    lse = new_output((B, HQ, T), torch.float32, q.device)
    grid = (triton.cdiv(T, block_m), HQ, B)
    _flash_fwd[grid](q, k, v, out, lse, q.stride(0), q.stride(1), q.stride(2),
                     k.stride(0), k.stride(1), k.stride(2), out.stride(0), out.stride(1), out.stride(2),
                     T, S, HQ // HKV, scale * LOG2E,
                     CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=D, UPCAST=UPCAST,
                     num_warps=4, num_stages=2)
    return out, lse

