"""Reference solutions of notebook 02 (the block indexer): block max, top-k blocks, recall."""
import torch

NEG_INF = float("-inf")


def block_max(s, block_size):
    """Causal block max of raw token scores s [B, H, T, S] -> [B, H, T, NB], -inf where nothing is visible."""
    T, S = s.shape[-2:]
    NB = -(-S // block_size)
    hidden = torch.arange(S) > torch.arange(S - T, S)[:, None]               # bottom-right causal
    s = s.masked_fill(hidden, NEG_INF)
    s = torch.nn.functional.pad(s, (0, NB * block_size - S), value=NEG_INF)
    return s.unflatten(-1, (NB, block_size)).amax(-1)


def top_k_blocks(scores, top_k):
    """The own (last visible) block plus the best other visible blocks, -1 padded: int [B, H, T, top_k]."""
    NB = scores.shape[-1]
    ids = torch.arange(NB)
    visible = scores > NEG_INF
    own = torch.where(visible, ids, -1).amax(-1, keepdim=True)
    ranked = scores.masked_fill(ids == own, float("inf"))
    k = min(top_k, NB)
    best, sel = ranked.topk(k, dim=-1)
    sel = torch.where(best > NEG_INF, sel, -1)
    return torch.nn.functional.pad(sel, (0, top_k - k), value=-1)


def recall(p, sel, block_size):
    """Share of the attention mass p [B, H, T, S] inside the selected blocks sel [B, H, T, K] -> [B, H, T]."""
    S = p.shape[-1]
    NB = -(-S // block_size)
    mass = torch.nn.functional.pad(p, (0, NB * block_size - S)).unflatten(-1, (NB, block_size)).sum(-1)
    mass = torch.nn.functional.pad(mass, (0, 1))                               # block NB: where -1 points
    return mass.gather(-1, torch.where(sel < 0, NB, sel).long()).sum(-1)
