"""Checkers of notebook 02 (the block indexer): block max, top-k with the forced own block, recall."""
import torch

from ..attention import attention_recall, block_scores, select_blocks
from ..attention.common import NEG_INF, query_positions
from .checker import close, verdict

# (label, B, HI, T, S, DI, block_size): awkward sizes, a partial last block, T < S, one block.
SIZES = [("B1-H1-T40-S40-BS16", 1, 1, 40, 40, 8, 16),
         ("B2-H2-T5-S37-BS8", 2, 2, 5, 37, 4, 8),
         ("B1-H3-T9-S9-BS1", 1, 3, 9, 9, 4, 1),
         ("B1-H1-T6-S10-BS16", 1, 1, 6, 10, 4, 16),
         ("B1-H2-T100-S100-BS32", 1, 2, 100, 100, 16, 32)]


def _index_qk(B, HI, T, S, DI, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, HI, T, DI, generator=g), torch.randn(B, 1, S, DI, generator=g)


def check_block_max(fn):
    """fn(s, block_size): raw token scores s [B, H, T, S] -> causal block max [B, H, T, NB]."""
    cases = []
    for i, (label, B, HI, T, S, DI, BS) in enumerate(SIZES):
        iq, ik = _index_qk(B, HI, T, S, DI, seed=i)
        s = torch.einsum("bhtd,bsd->bhts", iq, ik[:, 0]) * DI ** -0.5
        cases.append((label, (s, BS), block_scores(iq, ik, block_size=BS)))
    return verdict("block_max", fn, cases, compare=same_scores)


def same_scores(got, expected):
    """Compare block scores, first saying where -inf (no visible token) is missing or extra."""
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype.is_floating_point:
        wrong = (got == NEG_INF) != (expected == NEG_INF)
        if wrong.any():
            b, h, t, j = wrong.nonzero()[0].tolist()
            want = "-inf (none of its tokens is visible)" if expected[b, h, t, j] == NEG_INF else "finite"
            return False, (f"query {t} of head {h} (batch {b}), block {j}: expected {want}, "
                           f"got {got[b, h, t, j].item():.4g}")
    return close(got, expected)


def same_selection(got, expected):
    """Compare selections row by row as sets of block ids, with the -1 padding at the tail."""
    if not isinstance(got, torch.Tensor):
        return False, f"expected a tensor, got {type(got).__name__}"
    if got.shape != expected.shape:
        return False, f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype.is_floating_point or got.dtype == torch.bool:
        return False, f"block ids must be integers, got {got.dtype}"
    got, expected = got.long(), expected.long()
    padding = torch.equal(got < 0, expected < 0)
    rows_differ = (got.sort(-1).values != expected.sort(-1).values).any(-1)  # [B, H, T]
    if padding and not rows_differ.any():
        return True, ""
    b, h, t = (rows_differ | ((got < 0) != (expected < 0)).any(-1)).nonzero()[0].tolist()
    want = sorted(x for x in expected[b, h, t].tolist() if x >= 0)
    return False, (f"query {t} of head {h} (batch {b}) should pick blocks {want} then "
                   f"{int((expected[b, h, t] < 0).sum())} x -1, got {got[b, h, t].tolist()}")


def check_top_k_blocks(fn):
    """fn(scores, top_k): block scores [B, H, T, NB] -> int [B, H, T, top_k], own block forced, -1 padded."""
    cases = []
    for i, (label, B, HI, T, S, DI, BS) in enumerate(SIZES):
        scores = block_scores(*_index_qk(B, HI, T, S, DI, seed=10 + i), block_size=BS)
        for top_k in (1, 3, scores.shape[-1] + 2):
            cases.append((f"{label}-K{top_k}", (scores, top_k), select_blocks(scores, top_k=top_k)))
    return verdict("top_k_blocks", fn, cases, compare=same_selection)


def _dense_probs(q, k):
    """Causal softmax probabilities [B, H, T, S] of one-head-per-KV-head attention."""
    T, S = q.shape[2], k.shape[2]
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * q.shape[-1] ** -0.5
    hidden = torch.arange(S) > query_positions(T, S, "cpu")[:, None]
    return s.masked_fill(hidden, NEG_INF).softmax(-1)


def check_recall(fn):
    """fn(p, sel, block_size): dense probabilities [B, H, T, S], sel [B, H, T, K] -> recall [B, H, T]."""
    cases = []
    for i, (label, B, H, T, S, D, BS) in enumerate(SIZES):
        g = torch.Generator().manual_seed(20 + i)
        q, k = torch.randn(B, H, T, D, generator=g), torch.randn(B, H, S, D, generator=g)
        scores = block_scores(*_index_qk(B, H, T, S, D, seed=30 + i), block_size=BS)
        for top_k in (1, 2, 5):
            sel = select_blocks(scores, top_k=top_k)
            cases.append((f"{label}-K{top_k}", (_dense_probs(q, k), sel, BS),
                          attention_recall(q, k, sel, block_size=BS)))
    return verdict("recall", fn, cases)
