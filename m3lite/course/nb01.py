"""Checkers of notebook 01's exercises (dense attention, masks, GQA, online softmax).

Expected answers come from the package itself: the mask and the head mapping are read off what
`dense_attention` actually does, and softmax merges come from `merge_partials`. Cases use their
own random generator, so checking an exercise never changes the notebook's random numbers.
"""
import torch

from ..attention import dense_attention, merge_partials
from .checker import verdict

NEG_INF = float("-inf")


def _mask_of_dense_attention(T, S):
    """The causal mask dense_attention applies, read off its output: bool [T, S].

    With all scores equal, query i averages the one-hot values of the keys it sees, so the
    entries above zero are exactly the visible keys.
    """
    q = torch.zeros(1, 1, T, S, dtype=torch.float64)
    k = torch.zeros(1, 1, S, S, dtype=torch.float64)
    v = torch.eye(S, dtype=torch.float64)[None, None]
    return dense_attention(q, k, v, causal=True)[0, 0] > 0


def _kv_head_of_dense_attention(HQ, HKV):
    """Which KV head each query head reads in dense_attention: int64 [HQ] (values = head ids)."""
    q = torch.zeros(1, HQ, 1, 1, dtype=torch.float64)
    k = torch.zeros(1, HKV, 1, 1, dtype=torch.float64)
    v = torch.arange(HKV, dtype=torch.float64).view(1, HKV, 1, 1)
    return dense_attention(q, k, v, causal=False)[0, :, 0, 0].round().long()


def _chunk_state(s, v):
    """Softmax state of one chunk of keys: (running max [N], sum [N], unnormalised output [N, D])."""
    m = s.amax(-1)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m))[:, None])
    return m, e.sum(-1), e @ v


def _merged_state(m1, l1, acc1, m2, l2, acc2):
    """The expected merge, through the package's `merge_partials` (normalised outputs and LSEs)."""
    def part(m, l, acc):
        o = torch.where(l[:, None] > 0, acc / l.clamp_min(1e-300)[:, None], torch.zeros_like(acc))
        return o, torch.where(l > 0, m + torch.log(l), torch.full_like(l, NEG_INF))
    (o1, lse1), (o2, lse2) = part(m1, l1, acc1), part(m2, l2, acc2)
    o, lse = merge_partials(torch.stack([o1, o2], -2), torch.stack([lse1, lse2], -1))
    m = torch.maximum(m1, m2)
    l = torch.exp(lse - m)
    return m, l, o * l[:, None]


def check_causal_mask(causal_mask):
    """causal_mask(T, S) -> bool [T, S]: bottom-right aligned, query i sees keys t <= S - T + i."""
    cases = [(f"T{T}-S{S}", (T, S), _mask_of_dense_attention(T, S))
             for T, S in [(1, 1), (4, 4), (3, 10), (1, 9), (5, 17), (16, 16), (7, 100)]]
    return verdict("causal_mask", causal_mask, cases)


def check_expand_kv(expand_kv):
    """expand_kv(x, HQ) -> [B, HQ, S, D]: query head h gets KV head h // (HQ // HKV)."""
    gen = torch.Generator().manual_seed(1)
    cases = []
    for B, HKV, S, D, HQ in [(1, 1, 5, 4, 1), (1, 1, 7, 3, 4), (2, 2, 9, 4, 8), (1, 3, 6, 2, 6),
                             (1, 4, 16, 8, 64)]:
        x = torch.randn(B, HKV, S, D, generator=gen)
        expected = x[:, _kv_head_of_dense_attention(HQ, HKV)]
        cases.append((f"B{B}-HKV{HKV}-HQ{HQ}-S{S}-D{D}", (x, HQ), expected))
    return verdict("expand_kv", expand_kv, cases)


def check_merge_chunks(merge_chunks):
    """merge_chunks(m1, l1, acc1, m2, l2, acc2) -> (m, l, acc), the state of both chunks together."""
    gen = torch.Generator().manual_seed(2)
    cases = []
    for N, L1, L2, D, spread, empty1, empty2 in [(1, 1, 1, 1, 1.0, [], []), (4, 3, 5, 2, 1.0, [], []),
                                                 (6, 7, 2, 4, 30.0, [], []),
                                                 (5, 4, 4, 3, 3.0, [0, 2], [4])]:
        s1 = torch.randn(N, L1, generator=gen, dtype=torch.float64) * spread
        s2 = torch.randn(N, L2, generator=gen, dtype=torch.float64) * spread + spread
        s1[empty1], s2[empty2] = NEG_INF, NEG_INF                              # empty chunks: all masked
        v1 = torch.randn(L1, D, generator=gen, dtype=torch.float64)
        v2 = torch.randn(L2, D, generator=gen, dtype=torch.float64)
        args = (*_chunk_state(s1, v1), *_chunk_state(s2, v2))
        label = f"N{N}-L{L1}+{L2}-D{D}" + ("-with-empty-chunks" if empty1 or empty2 else "")
        cases.append((label, args, _merged_state(*args)))
    return verdict("merge_chunks", merge_chunks, cases)


def check_online_softmax(online_softmax):
    """online_softmax(s, v, block) -> [N, D]: softmax(s) @ v, with -inf scores meaning masked keys."""
    gen = torch.Generator().manual_seed(3)
    cases = []
    for N, L, D, block, shift, masked in [(1, 1, 1, 1, 0.0, False), (4, 10, 3, 4, 0.0, False),
                                          (3, 7, 2, 16, 0.0, False), (5, 12, 4, 3, 0.0, True),
                                          (4, 20, 3, 5, 150.0, False)]:
        s = torch.randn(N, L, generator=gen) * 4 + shift
        if masked:
            hide = torch.rand(N, L, generator=gen) < 0.4
            hide[0, :block] = True                                            # row 0 sees nothing at first
            hide[:, -1] = False                                               # every row sees something
            s = s.masked_fill(hide, NEG_INF)
        v = torch.randn(L, D, generator=gen)
        expected, _ = merge_partials(v.expand(N, L, D).double(), s.double())  # each key is a part
        label = f"N{N}-L{L}-D{D}-block{block}" + ("-masked" if masked else "") + ("-large" if shift else "")
        cases.append((label, (s, v, block), expected.float()))
    return verdict("online_softmax", online_softmax, cases)
