"""Reference solutions of notebook 07 (training the indexer): one query's target, the KL over the
selected blocks, and its gradient."""
import torch

NEG_INF = float("-inf")


def block_mass_target(q, k, block_size):
    """Each head's softmax over the S keys (scaled by D ** -0.5), summed per block, averaged over the
    group's heads: q [G, D], k [S, D] -> [NB]."""
    G, D = q.shape
    S = k.shape[0]
    p = torch.softmax(q @ k.T * D ** -0.5, dim=-1)                           # [G, S]
    NB = -(-S // block_size)
    p = torch.nn.functional.pad(p, (0, NB * block_size - S))                 # the last block may be partial
    return p.view(G, NB, block_size).sum(-1).mean(0)


def _selected(scores, sel):
    """Bool [R, NB]: the visible blocks that sel [R, K] names; -1 padding is sent to a spare column."""
    NB = scores.shape[-1]
    ids = torch.where(sel < 0, NB, sel).long()
    chosen = torch.zeros(sel.shape[0], NB + 1, dtype=torch.bool).scatter_(-1, ids, True)
    return chosen[:, :NB] & (scores > NEG_INF)


def selected_kl(scores, target, sel):
    """Mean over rows of KL(target || softmax(scores)), both restricted to and renormalised over the
    selected blocks: scores, target [R, NB]; sel int [R, K] (-1 padded) -> a 0-dim tensor."""
    keep = _selected(scores, sel)
    t = torch.where(keep, target, 0.0)
    t = t / t.sum(-1, keepdim=True)
    log_p = torch.log_softmax(scores.masked_fill(~keep, NEG_INF), -1)
    terms = torch.where(t > 0, t * (torch.log(t) - log_p), 0.0)
    return terms.sum(-1).mean()


def kl_gradient(scores, target, sel):
    """(softmax over the selected blocks - renormalised target) / rows on the selected blocks, 0 elsewhere:
    scores, target [R, NB]; sel int [R, K] -> [R, NB]."""
    keep = _selected(scores, sel)
    t = torch.where(keep, target, 0.0)
    t = t / t.sum(-1, keepdim=True)
    p = torch.softmax(scores.masked_fill(~keep, NEG_INF), -1)
    return torch.where(keep, p - t, 0.0) / scores.shape[0]
