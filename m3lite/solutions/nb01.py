"""Reference solutions of notebook 01 (dense attention, masks, GQA, online softmax)."""
import torch


def causal_mask(T, S):
    """Bottom-right causal mask, bool [T, S]: query i (at position S - T + i) sees keys t <= S - T + i."""
    return torch.arange(S) <= torch.arange(S - T, S)[:, None]


def expand_kv(x, HQ):
    """Repeat KV heads so that query head h finds KV head h // (HQ // HKV): [B, HKV, S, D] -> [B, HQ, S, D]."""
    return x.repeat_interleave(HQ // x.shape[1], dim=1)


def merge_chunks(m1, l1, acc1, m2, l2, acc2):
    """Merge two softmax chunk states (running max [N], sum [N], unnormalised output [N, D])."""
    m = torch.maximum(m1, m2)
    a1, a2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, l1 * a1 + l2 * a2, acc1 * a1[..., None] + acc2 * a2[..., None]


def online_softmax(s, v, block):
    """softmax(s) @ v for scores s [N, L] and values v [L, D], reading `block` keys at a time."""
    N, L = s.shape
    m = torch.full((N,), float("-inf"), dtype=s.dtype)
    l = torch.zeros(N, dtype=s.dtype)
    acc = torch.zeros(N, v.shape[1], dtype=s.dtype)
    for start in range(0, L, block):
        chunk = s[:, start:start + block]
        m_new = torch.maximum(m, chunk.amax(-1))
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))  # nothing seen yet
        alpha = torch.exp(m - m_safe)
        p = torch.exp(chunk - m_safe[:, None])
        l = l * alpha + p.sum(-1)
        acc = acc * alpha[:, None] + p @ v[start:start + block]
        m = m_new
    return acc / l[:, None]
