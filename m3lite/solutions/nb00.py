"""Reference solutions of notebook 00 (welcome and tour)."""
import torch


def own_block(T, S, block_size):
    """The block each of the T queries sits in, its forced local block: int64 [T]."""
    return torch.arange(S - T, S) // block_size


def msa_attended_tokens(sel, S, block_size):
    """Tokens each query attends under MSA: the causally visible tokens of its selected blocks.

    Args:
        sel: int [B, HI, T, K] block ids, -1 padded; S: keys; block_size: BS.
    Returns:
        int64 [B, HI, T].
    """
    T = sel.shape[2]
    pos = torch.arange(S - T, S)[:, None]                                     # [T, 1]
    start = sel.long() * block_size                                           # [B, HI, T, K]
    end = torch.minimum(start + block_size, pos + 1)                          # past the last visible token
    count = (end - start).clamp(min=0)
    return torch.where(sel >= 0, count, 0).sum(-1)


def prefill_attended_tokens(S, top_k, block_size):
    """(dense, msa): (query, key) pairs that causal dense attention and MSA visit in a prefill of S tokens."""
    i = torch.arange(S)
    dense = S * (S + 1) // 2
    msa = torch.minimum(i + 1, (top_k - 1) * block_size + i % block_size + 1).sum()
    return dense, int(msa)
