"""Checkers of notebook 00's exercises (welcome and tour).

Expected answers come from the package itself: `select_blocks`, `block_scores`, `selection_mask`
and `causal_attended_tokens`. Cases use their own random generator, so checking an exercise never
changes the notebook's random numbers.
"""
import torch

from ..attention import block_scores, causal_attended_tokens, select_blocks, selection_mask
from ..attention.common import visible_mask
from .checker import verdict


def _selection(B, HI, T, S, block_size, top_k, seed):
    """A real MSA selection [B, HI, T, top_k] from random index queries and keys."""
    gen = torch.Generator().manual_seed(seed)
    iq = torch.randn(B, HI, T, 8, generator=gen)
    ik = torch.randn(B, 1, S, 8, generator=gen)
    return select_blocks(block_scores(iq, ik, block_size=block_size), top_k=top_k)


def _attended(sel, S, block_size):
    """Visible tokens inside each query's selected blocks, counted on the token mask: int64 [B, HI, T]."""
    T = sel.shape[2]
    visible = visible_mask(T, S, True, sel.device)                          # [T, S]
    return (selection_mask(sel, S, block_size) & visible).sum(-1)


def check_own_block(own_block):
    """own_block(T, S, block_size) -> int [T]: the block each query sits in (its forced local block)."""
    cases = []
    for T, S, bs in [(1, 1, 4), (8, 8, 4), (5, 37, 8), (16, 100, 16), (1, 129, 128), (130, 130, 128)]:
        expected = _selection(1, 1, T, S, bs, top_k=1, seed=T + S)[0, 0, :, 0].long()
        cases.append((f"T{T}-S{S}-BS{bs}", (T, S, bs), expected))
    return verdict("own_block", own_block, cases)


def check_msa_attended_tokens(msa_attended_tokens):
    """msa_attended_tokens(sel, S, block_size) -> int [B, HI, T]: visible tokens of the picked blocks."""
    cases = []
    for B, HI, T, S, bs, k in [(1, 1, 1, 1, 4, 2), (1, 2, 16, 16, 4, 3), (2, 1, 13, 40, 8, 2),
                               (1, 2, 50, 77, 16, 4), (1, 1, 20, 20, 32, 16)]:
        sel = _selection(B, HI, T, S, bs, k, seed=B + HI + T + S)
        cases.append((f"B{B}-HI{HI}-T{T}-S{S}-BS{bs}-K{k}", (sel, S, bs), _attended(sel, S, bs)))
    return verdict("msa_attended_tokens", msa_attended_tokens, cases)


def check_prefill_attended_tokens(prefill_attended_tokens):
    """prefill_attended_tokens(S, top_k, block_size) -> (dense, msa) (query, key) pair counts."""
    cases = []
    for S, k, bs in [(1, 16, 128), (10, 2, 4), (100, 3, 16), (257, 4, 32), (300, 16, 128), (1000, 4, 64)]:
        sel = _selection(1, 1, S, S, bs, k, seed=S)
        expected = (causal_attended_tokens(S, S), int(_attended(sel, S, bs).sum()))
        cases.append((f"S{S}-K{k}-BS{bs}", (S, k, bs), expected))
    return verdict("prefill_attended_tokens", prefill_attended_tokens, cases)
