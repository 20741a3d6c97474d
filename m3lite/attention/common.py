"""Small pieces every attention variant shares: accumulation dtype, positions, safe softmax."""
import torch

NEG_INF = float("-inf")


def accum_dtype(dtype):
    """float64 inputs accumulate in float64 (so gradients check exactly), the rest in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def query_positions(T, S, device):
    """Absolute positions of the T queries: bottom-right alignment, query i sits at S - T + i."""
    return torch.arange(S - T, S, device=device)


def visible_mask(T, S, causal, device):
    """[T, S] bool: which keys each query may see (all of them, or bottom-right causal)."""
    if not causal:
        return torch.ones(T, S, dtype=torch.bool, device=device)
    return torch.arange(S, device=device) <= query_positions(T, S, device)[:, None]


def chosen_blocks(sel, num_blocks):
    """[..., num_blocks] bool from block ids sel [..., K] (-1 padded): which blocks each row chose."""
    chosen = torch.zeros(*sel.shape[:-1], num_blocks + 1, dtype=torch.bool, device=sel.device)
    chosen.scatter_(-1, torch.where(sel < 0, num_blocks, sel).long(), True)   # -1 goes to a spare column
    return chosen[..., :num_blocks]


def exp_and_lse(s, overwrite=False):
    """Unnormalised softmax of scores s [..., N] (-inf = masked), safe for rows with nothing left.

    Returns (e [..., N], l [..., 1], lse [...]): e / l is the softmax (l is clamped so that an
    empty row gives zeros), lse = log-sum-exp of the row (-inf for an empty row). Gradients stay
    finite for empty rows. overwrite=True reuses the memory of s for e (outside autograd).
    """
    m = s.amax(-1, keepdim=True).detach().clamp_min(torch.finfo(s.dtype).min)   # finite, even if empty
    e = (s.sub_(m) if overwrite else s - m).exp_()
    l = e.sum(-1, keepdim=True)
    l_safe = l.clamp_min(torch.finfo(l.dtype).tiny)
    lse = torch.where(l > 0, m + torch.log(l_safe), NEG_INF)
    return e, l_safe, lse.squeeze(-1)


def masked_softmax_parts(s, allowed):
    """Softmax of scores s restricted to `allowed` (safe for empty rows); returns (p, lse)."""
    e, l, lse = exp_and_lse(s.masked_fill(~allowed, NEG_INF))
    return e / l, lse
