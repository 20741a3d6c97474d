"""Reference solutions of notebook 03 (gather orders): load counts, selection inversion, LSE merge."""
import torch


def count_loads(sel, num_blocks):
    """Loads of each KV block in query order and in kv order: two int64 [NB] tensors."""
    B, H, T, K = sel.shape
    query_loads = torch.zeros(num_blocks, dtype=torch.long)
    chosen = torch.zeros(B, H, num_blocks, dtype=torch.bool)
    for b, h, t, s in (sel >= 0).nonzero().tolist():
        j = int(sel[b, h, t, s])
        query_loads[j] += 1
        chosen[b, h, j] = True
    return query_loads, chosen.sum((0, 1))


def invert_selection(sel, num_blocks):
    """Invert sel int [T, K] into a CSR: offsets int64 [NB + 1] and queries int64 [nnz], in order."""
    lists = [[] for _ in range(num_blocks)]
    for t, row in enumerate(sel.tolist()):
        for j in row:
            if j >= 0:
                lists[j].append(t)
    offsets = torch.tensor([0] + [len(x) for x in lists]).cumsum(0)
    return offsets, torch.tensor([t for x in lists for t in x], dtype=torch.long)


def merge_two(o1, lse1, o2, lse2):
    """Merge two partial softmax results (o [..., D], lse [...]) into one; empty parts have lse = -inf."""
    m = torch.maximum(lse1, lse2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))               # both empty: avoid -inf - -inf
    w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    total = w1 + w2
    o = (w1[..., None] * o1 + w2[..., None] * o2) / total.clamp_min(torch.finfo(total.dtype).tiny)[..., None]
    lse = torch.where(total > 0, m + torch.log(total), torch.full_like(total, float("-inf")))
    return o, lse
