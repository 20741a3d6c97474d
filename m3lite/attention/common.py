"""Small pieces every attention variant shares: accumulation dtype, positions, safe softmax."""
import torch

NEG_INF = float("-inf")


def accum_dtype(dtype):
    """float64 inputs accumulate in float64 (so gradients check exactly), the rest in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_positions(T, S, device):
    """Absolute positions of the T queries: bottom-right alignment, query i sits at S - T + i."""
    return torch.arange(S - T, S, device=device)


def masked_softmax_parts(s, allowed):
    """Softmax pieces of scores `s` restricted to `allowed`, safe for rows with nothing allowed.

    Returns (p, lse): p = exp(s - lse) on allowed entries and 0 elsewhere (all zeros for an empty
    row), and lse = log-sum-exp over the allowed entries (-inf for an empty row). Gradients stay
    finite for empty rows.
    """
    s = s.masked_fill(~allowed, NEG_INF)
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    nonempty = l > 0
    l_safe = l.clamp_min(torch.finfo(l.dtype).tiny)
    p = e / l_safe
    lse = torch.where(nonempty, m + torch.log(l_safe), torch.full_like(l, NEG_INF))
    return p, lse.squeeze(-1)
