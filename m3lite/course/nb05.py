"""Checkers of notebook 05 (decoding): cache growth, decode query positions, bytes per step, the bound.

Expected answers come from the package: capacities from a real `MSACache`, positions read off
what `decode_attention` does, bytes from `m3lite.viz.decode.step_bytes`. When an answer is wrong
in a way learners often get it wrong, the verdict says which mistake it looks like.
"""
import math

import torch

from ..attention.decode import decode_attention
from ..cache import MSACache
from ..viz.decode import step_bytes
from .checker import close, verdict


def _capacities_of_the_cache(counts, block_size, capacity):
    """Capacity of a one-sequence MSACache after each append of counts[i] tokens."""
    cache = MSACache(batch=1, kv_heads=1, head_dim=1, block_size=block_size, capacity=capacity, device="cpu")
    capacities = []
    for n in counts:
        k = torch.zeros(1, 1, n, 1)
        cache.append(k, k, k)
        capacities.append(cache.capacity)
    return capacities


def same_capacities(got, expected):
    """Compare capacities after each append; expected is (capacities, counts, block_size)."""
    capacities, counts, block_size = expected
    if not isinstance(got, (list, tuple)) or len(got) != len(capacities):
        return False, f"expected a list of {len(capacities)} capacities (one per append), got {got!r}"
    length = 0
    for i, (g, e) in enumerate(zip(got, capacities)):
        length += counts[i]
        if g == e:
            continue
        hint = ""
        if g == -(-length // block_size) * block_size:
            hint = " (when it must grow, the cache takes max(needed, 2 x capacity), not just what it needs)"
        elif i and g == 2 * capacities[i - 1] and g % block_size:
            hint = " (capacities are always whole blocks: round up)"
        elif not isinstance(g, int) or g % block_size:
            hint = f" (a capacity is a whole number of blocks of {block_size})"
        return False, f"after append {i} (sequence length {length}) the capacity is {e}, you said {g}{hint}"
    return True, ""


def check_capacities(fn):
    """fn(counts, block_size, capacity) -> capacities after each append of counts[i] tokens."""
    cases = []
    for counts, bs, cap in [([5, 1, 1, 1], 4, 4), ([20] + [1] * 14, 8, 8), ([3] * 10, 16, 1), ([100, 1], 16, 16),
                            ([7, 30, 2, 64, 1], 8, 10), ([1] * 40, 8, 8)]:
        shown = counts if len(counts) < 8 else f"[{counts[0]}, {counts[1]}, ... {len(counts)} appends]"
        cases.append((f"counts={shown}, block_size={bs}, capacity={cap}", (counts, bs, cap),
                      (_capacities_of_the_cache(counts, bs, cap), counts, bs)))
    return verdict("capacities", fn, cases, compare=same_capacities)


def _positions_of_decode(lengths, n):
    """Absolute positions [B, n] of the decode queries, read off decode_attention's output.

    With all scores equal and every block selected, a query at position p averages the values of
    tokens 0..p; values holding their own position give p / 2.
    """
    B, capacity = len(lengths), max(lengths)
    q = torch.zeros(B, 1, n, 1, dtype=torch.float64)
    k = torch.zeros(B, 1, capacity, 1, dtype=torch.float64)
    v = torch.arange(capacity, dtype=torch.float64).view(1, 1, capacity, 1).expand(B, 1, capacity, 1)
    out = decode_attention(q, k, v, q, k, lengths, block_size=4, top_k=capacity, backend="torch")
    return (2 * out[:, 0, :, 0]).round().long()


def same_positions(got, expected):
    """Compare positions; when they differ, say which misalignment they look like."""
    ok, why = close(got, expected)
    if ok or not isinstance(got, torch.Tensor) or got.shape != expected.shape or got.dtype.is_floating_point:
        return ok, why
    got = got.long().cpu()
    n = expected.shape[1]
    i = torch.arange(n)
    hints = [(i.expand_as(expected), "these are top-left positions 0..n-1: decode queries are the *last* n "
                                     "tokens of each sequence"),
             (expected + 1, "off by one: the last query is the last cached token, at lengths[b] - 1"),
             (expected - 1, "off by one: the last query is the last cached token, at lengths[b] - 1"),
             (expected.flip(1), "reversed: query i = 0 is the oldest of the n new tokens"),
             (expected[:, -1:].max() - n + 1 + i.expand_as(expected),
              "every sequence has its own length: use lengths[b], not the longest")]
    for wrong, hint in hints:
        if torch.equal(got, wrong):
            return False, f"{why} ({hint})"
    return False, why


def check_query_positions(fn):
    """fn(lengths, n) -> int [B, n]: query i of sequence b sits at lengths[b] - n + i."""
    cases = [(f"lengths={lengths}, n={n}", (lengths, n), _positions_of_decode(lengths, n))
             for lengths, n in [([5], 1), ([9, 4], 1), ([13, 5, 20], 3), ([3, 3], 3), ([1, 40, 17, 8], 1),
                                ([30, 6], 4)]]
    return verdict("query_positions", fn, cases, compare=same_positions)


def _byte_hints(args):
    """(dense, msa) answers of typical mistakes for decode_bytes(*args), with what went wrong."""
    S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes = args
    right = step_bytes(*args)
    whole_blocks = 2 * B * HKV * K * BS * D * kv_bytes
    return [((right["dense"] // 2, None), "dense reads both K and V: two tensors of [B, HKV, S, D]"),
            ((right["dense"] // B, None), "count every sequence of the batch (B)"),
            ((None, right["selected"]), "MSA also reads every index key: the indexer must score all blocks"),
            ((None, right["index"]), "MSA also reads the K and V of its top-k blocks"),
            ((None, right["index"] * HKV + right["selected"]), "there is one shared index-key head, not one "
                                                               "per KV head"),
            ((None, right["index"] + right["selected"] // 2), "the selected blocks are read from both K and V"),
            ((None, right["index"] + whole_blocks), "a short cache: a step cannot read more tokens than the "
                                                    "cache holds, min(S, K * BS)"),
            ((None, right["index"] // index_bytes * kv_bytes + right["selected"]),
             "index keys have their own element size (index_bytes)")]


def same_bytes(got, expected):
    """Compare (dense, msa) byte counts; expected is (dense, msa, args) so that hints can be found."""
    dense, msa, args = expected
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return False, f"return two numbers, (dense bytes, MSA bytes); got {got!r}"
    try:
        got = tuple(float(x) for x in got)
    except (TypeError, ValueError, RuntimeError):
        return False, f"return two numbers, (dense bytes, MSA bytes); got {got!r}"
    if got == (dense, msa):
        return True, ""
    for (wrong_dense, wrong_msa), hint in _byte_hints(args):
        dense_looks_like_it = wrong_dense is not None and wrong_dense != dense and got[0] == wrong_dense
        msa_looks_like_it = wrong_msa is not None and wrong_msa != msa and got == (dense, wrong_msa)
        if dense_looks_like_it or msa_looks_like_it:
            return False, f"expected {(dense, msa)}, got {_ints(got)} ({hint})"
    return False, f"expected {(dense, msa)}, got {_ints(got)}"


def _ints(numbers):
    return tuple(int(x) if float(x).is_integer() else x for x in numbers)


def check_decode_bytes(fn):
    """fn(S, B, HKV, D, DI, BS, K, kv_bytes, index_bytes) -> (dense bytes, MSA bytes) of one step."""
    cases = []
    for args in [(131072, 1, 4, 128, 128, 128, 16, 2, 2), (1048576, 1, 4, 128, 128, 128, 16, 2, 1),
                 (131072, 16, 4, 128, 128, 128, 16, 2, 2), (1000, 2, 2, 64, 32, 16, 8, 4, 2),
                 (100, 1, 4, 128, 128, 128, 16, 2, 2), (5000, 3, 8, 64, 128, 64, 4, 1, 1)]:
        b = step_bytes(*args)
        cases.append(("S={}, B={}, HKV={}, D={}, DI={}, BS={}, K={}, kv_bytes={}, index_bytes={}".format(*args),
                      args, (b["dense"], b["msa"], args)))
    return verdict("decode_bytes", fn, cases, compare=same_bytes)


def same_bound(got, expected):
    """Compare a speedup bound; expected is (bound, args) so that hints can be found."""
    bound, (HKV, D, DI, kv_bytes, index_bytes) = expected
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, (int, float)) or isinstance(got, bool):
        return False, f"expected a number, got {got!r}"
    if math.isclose(got, bound, rel_tol=1e-6):
        return True, ""
    hints = [(bound * index_bytes / kv_bytes, "count bytes, not elements: kv_bytes and index_bytes"),
             (bound / 2, "dense reads both K and V"), (1 / bound, "upside down: dense bytes over MSA bytes"),
             (bound / HKV, "dense reads all HKV heads of K and V, MSA one shared index-key head"),
             (math.inf, "the top-k blocks are a constant, but the index scan grows with S like dense does")]
    hint = next((h for wrong, h in hints if math.isclose(got, wrong, rel_tol=1e-6)), "")
    return False, f"expected {bound:g}, got {got:g}" + (f" ({hint})" if hint else "")


def check_speedup_bound(fn):
    """fn(HKV, D, DI, kv_bytes, index_bytes) -> dense / MSA bytes per step as the context grows without end."""
    cases = []
    for args in [(4, 128, 128, 2, 2), (4, 128, 128, 2, 1), (8, 128, 64, 2, 2), (1, 64, 128, 2, 2),
                 (2, 96, 32, 4, 2)]:
        HKV, D, DI, kv_bytes, index_bytes = args
        per_token = step_bytes(1, HKV=HKV, D=D, DI=DI, kv_bytes=kv_bytes, index_bytes=index_bytes)
        bound = per_token["dense"] / per_token["index"]          # both grow with S; the top-k blocks do not
        cases.append(("HKV={}, D={}, DI={}, kv_bytes={}, index_bytes={}".format(*args), args, (bound, args)))
    return verdict("speedup_bound", fn, cases, compare=same_bound)
