"""Checkers of notebook 08 (long context): the asked pair's blocks, random selection's chance of
holding the key block, and the share of selections that hold it.

Expected answers come from the package: `m3lite.viz.long_context` (which the notebook's pictures
use) and `m3lite.viz.explorer.span_blocks`. When an answer is wrong in a way learners often get it
wrong, the verdict says which mistake it looks like.
"""
import math

import torch

from ..tasks import haystack
from ..viz import long_context as lc
from ..viz.explorer import span_blocks
from .checker import close, verdict


def _ints(got):
    """A list of ints from a list, tuple or 1-d integer tensor; None when it is none of those."""
    if isinstance(got, torch.Tensor) and got.dim() == 1 and not got.dtype.is_floating_point:
        return got.tolist()
    if isinstance(got, (list, tuple, range)) and all(isinstance(b, int) and not isinstance(b, bool) for b in got):
        return list(got)
    return None


def same_blocks(got, expected):
    """Compare block lists; expected is (blocks, info, block_size) so that hints can be found."""
    blocks, info, block_size = expected
    ids = _ints(got)
    if ids is None:
        return False, f"expected a list of ints, got {got!r}"
    if ids == blocks:
        return True, ""
    why = f"expected {blocks}, got {ids}"
    start, end = info["pair_spans"][info["query_pair"]]
    others = [span_blocks(s, block_size) for i, s in enumerate(info["pair_spans"]) if i != info["query_pair"]]
    hints = [(list(range(start // block_size, end // block_size + 1)),
              "spans are [start, end): the token at `end` is the first one after the pair"),
             ([start // block_size], "a pair can straddle two blocks: list every block from its first token's to "
                                     "its last token's"),
             (span_blocks(info["query_span"], block_size), "those are the query's blocks; the asked pair is "
                                                           "pair_spans[query_pair]")]
    hint = next((h for wrong, h in hints if ids == wrong), "")
    if not hint and ids in others:
        hint = "that is another pair: info['query_pair'] says which pair the query asks for"
    if not hint and sorted(ids) == blocks:
        hint = "list the blocks in ascending order"
    return False, why + (f" ({hint})" if hint else "")


def _crafted(span, block_size):
    """An info dict whose asked pair covers tokens `span` (for edges real haystacks rarely hit)."""
    return {"pair_spans": [(0, 13), span], "query_pair": 1, "query_span": (span[1] + 40, span[1] + 55)}, block_size


def _block_cases():
    real = [(haystack(n, seed, "test", key_modality="mixed").info, bs)
            for n, seed, bs in ((1024, 0, 32), (2048, 2, 32), (256, 1, 16), (4096, 5, 128), (1024, 7, 64))]
    crafted = [_crafted(span, bs) for span, bs in (((50, 64), 32), ((64, 77), 32), ((120, 141), 32), ((60, 81), 16))]
    return real + crafted


def check_asked_blocks(fn):
    """fn(info, block_size) -> the ids of the blocks holding the asked pair, ascending."""
    cases = [(f"pair_spans[query_pair] = {info['pair_spans'][info['query_pair']]}, block_size={bs}",
              (info, bs), (lc.asked_blocks(info, bs), info, bs)) for info, bs in _block_cases()]
    return verdict("asked_blocks", fn, cases, compare=same_blocks)


def same_chance(got, expected):
    """Compare probabilities; expected is (p, query_pos, key_pos, block_size, top_k) for hints."""
    p, query_pos, key_pos, block_size, top_k = expected
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False, f"expected a number, got {got!r}"
    if math.isclose(got, p, rel_tol=1e-9, abs_tol=1e-12):
        return True, ""
    why = f"expected {p:.4g}, got {got:.4g}"
    own, key = query_pos // block_size, key_pos // block_size
    if got > 1:
        return False, why + " (a probability is at most 1: with fewer earlier blocks than draws, every block is picked)"
    hints = [(top_k / (own + 1), "the own block is forced: only top_k - 1 blocks are drawn, from the blocks before it"),
             ((top_k - 1) / (own + 1), "the draws come from the other visible blocks, 0 .. own - 1: the own block "
                                       "is already in"),
             (top_k / own, "only top_k - 1 blocks are drawn: the own block takes one of the top_k places"),
             ((top_k - 1) / own if key == own else None, "the key is in the query's own block, which is always "
                                                         "selected")]
    hint = next((h for wrong, h in hints if wrong is not None and math.isclose(got, wrong, rel_tol=1e-9)), "")
    return False, why + (f" ({hint})" if hint else "")


CHANCE_CASES = ((1017, 500, 32, 4), (249, 120, 32, 4), (2041, 1022, 32, 4), (40, 5, 32, 4), (1000, 995, 32, 4),
                (100, 5, 32, 4), (4089, 10, 128, 16), (70, 3, 16, 1), (31, 0, 32, 4))


def check_random_hit(fn):
    """fn(query_pos, key_pos, block_size, top_k) -> the chance that random selection holds key_pos's block."""
    cases = [(f"query_pos={q}, key_pos={k}, block_size={bs}, top_k={K}", (q, k, bs, K),
              (lc.random_hit_probability(q, [k // bs], bs, K), q, k, bs, K)) for q, k, bs, K in CHANCE_CASES]
    return verdict("random_hit", fn, cases, compare=same_chance)


ANY_BLOCK = "a pair can straddle two blocks: a row counts when it holds any one of them"


def same_shares(got, expected):
    """Compare per-group shares; expected is (shares, sel, blocks) so that hints can be found."""
    shares, sel, blocks = expected
    if isinstance(got, torch.Tensor) and got.dim() == 0 and shares.numel() > 1:
        return False, (f"expected one share per KV group, shape {tuple(shares.shape)}, got a single number "
                       "(average over the haystacks only, dim 0)")
    if isinstance(got, torch.Tensor) and got.shape == (sel.shape[0],) != shares.shape:
        return False, (f"expected shape {tuple(shares.shape)}, one share per KV group, got {tuple(got.shape)} "
                       "(one value per haystack: average over the haystacks, keep the groups)")
    if isinstance(got, torch.Tensor) and got.shape == shares.shape and not got.dtype.is_floating_point:
        got = got.float()
    ok, why = close(got, shares)
    if ok or not isinstance(got, torch.Tensor) or got.shape != shares.shape:
        return ok, why
    every = torch.stack([torch.stack([torch.isin(torch.tensor(b, dtype=sel.dtype), row).all() for row in sel[n]])
                         for n, b in enumerate(blocks)]).float().mean(0)
    first = torch.stack([(sel[n] == b[0]).any(-1) for n, b in enumerate(blocks)]).float().mean(0)
    hints = [(shares * sel.shape[0], "a share, not a count: divide by the number of haystacks"),
             (every, ANY_BLOCK),
             (first, ANY_BLOCK)]
    hint = next((h for wrong, h in hints if torch.allclose(got.float(), wrong)), "")
    return False, why + (f" ({hint})" if hint else "")


def _selections(N, HI, K, NB, seed):
    """Random selections [N, HI, K] (distinct ids, some rows -1 padded) and asked blocks, some two long."""
    g = torch.Generator().manual_seed(seed)
    sel = torch.stack([torch.stack([torch.randperm(NB, generator=g)[:K] for _ in range(HI)]) for _ in range(N)])
    sel[0, 0, K - 1] = -1
    blocks = []
    for n in range(N):
        b = int(torch.randint(NB - 1, (1,), generator=g))
        blocks.append([b, b + 1] if n % 3 == 0 else [b])
    for n in range(0, N, 2):                                # plant some hits, some of the second block only
        if blocks[n][-1] not in sel[n, n % HI].tolist():
            sel[n, n % HI, 1] = blocks[n][-1]
    return sel.to(torch.int32), blocks


def _share_cases():
    sel, blocks = _selections(12, 2, 4, 16, seed=0)
    dense, dense_blocks = _selections(9, 3, 6, 8, seed=1)
    one = torch.tensor([[[0, 3, -1, -1]], [[5, 1, 2, -1]], [[7, -1, -1, -1]]], dtype=torch.int32)
    return [("12 haystacks, 2 groups, top_k 4", sel, blocks), ("9 haystacks, 3 groups, top_k 6 of 8 blocks",
                                                                dense, dense_blocks),
            ("3 haystacks, 1 group, -1 padding, block 0 asked", one, [[0], [0, 1], [6]])]


def check_hit_share(fn):
    """fn(sel [N, HI, K], blocks: N lists) -> float [HI]: per KV group, the share of the N haystacks
    whose selection row holds any of its asked pair's blocks."""
    cases = [(label, (sel.clone(), [list(b) for b in blocks]), (lc.hits(sel, blocks).float().mean(0), sel, blocks))
             for label, sel, blocks in _share_cases()]
    return verdict("hit_share", fn, cases, compare=same_shares)
