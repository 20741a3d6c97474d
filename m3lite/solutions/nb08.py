"""Reference solutions of notebook 08 (long context): the asked pair's blocks, random selection's
chance of holding the key, and the share of selections that hold it."""
import torch


def asked_blocks(info, block_size):
    """Every block from the asked pair's first token to its last: the span is [start, end)."""
    start, end = info["pair_spans"][info["query_pair"]]
    return list(range(start // block_size, (end - 1) // block_size + 1))


def random_hit(query_pos, key_pos, block_size, top_k):
    """The own block is forced; top_k - 1 of the `own` earlier blocks are drawn, each equally likely."""
    own, key = query_pos // block_size, key_pos // block_size
    if key == own:
        return 1.0
    return min(top_k - 1, own) / own


def hit_share(sel, blocks):
    """Per KV group, the share of haystacks whose selection row holds any of the asked pair's blocks."""
    hit = torch.stack([torch.isin(sel[n], torch.tensor(b, dtype=sel.dtype)).any(-1) for n, b in enumerate(blocks)])
    return hit.float().mean(0)
