import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import m3lite as m3
from conftest import masked_reference, randn, random_selection, shape_name as name, sparse_inputs as inputs, token_mask

ORDERS = ["query", "kv"]
# B, HQ, HKV, HI, T, S, D, block_size, K
SHAPES = [
    (1, 4, 2, 2, 64, 64, 16, 16, 2),
    (2, 4, 2, 1, 100, 100, 8, 16, 3),      # T not a multiple of the block: partial last block
    (1, 8, 4, 2, 37, 90, 16, 32, 2),       # T < S: bottom-right alignment
    (2, 6, 3, 3, 63, 63, 32, 16, 4),
    (1, 2, 2, 2, 1, 50, 8, 16, 2),         # one query (decoding)
    (1, 4, 1, 1, 50, 50, 8, 64, 3),        # one block covers everything, top_k > NB
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=name)
@pytest.mark.parametrize("causal", [True, False])
def test_matches_masked_dense_reference(order, shape, causal):
    q, k, v, sel = inputs(shape, causal=causal)
    T, S, BS = shape[4], shape[5], shape[7]
    out, lse = m3.sparse_attention(q, k, v, sel, block_size=BS, causal=causal, order=order, return_lse=True)
    ref, ref_lse = masked_reference(q, k, v, token_mask(sel, T, S, BS, causal))
    assert out.dtype == q.dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("T,S", [(64, 64), (100, 100), (30, 77)])
def test_top_k_covering_all_blocks_equals_sdpa(order, T, S):
    q, k, v = randn(2, 8, T, 16, seed=3), randn(2, 2, S, 16, seed=4), randn(2, 2, S, 16, seed=5)
    iq, ik = randn(2, 2, T, 8, seed=6), randn(2, 1, S, 8, seed=7)
    mask = torch.arange(S) <= (torch.arange(T) + S - T)[:, None]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    out = m3.msa_attention(q, k, v, iq, ik, block_size=16, top_k=m3.num_blocks(S, 16), order=order)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
def test_orders_agree_with_each_other(order):
    q, k, v, sel = inputs((2, 8, 2, 2, 90, 90, 16, 16, 3), seed=5)
    out = m3.sparse_attention(q, k, v, sel, block_size=16, order=order)
    other = m3.sparse_attention(q, k, v, sel, block_size=16, order="query" if order == "kv" else "kv")
    torch.testing.assert_close(out, other, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("order", ORDERS)
def test_empty_rows_give_zeros_and_minus_inf(order):
    q, k, v, sel = inputs((1, 4, 2, 2, 40, 40, 8, 16, 2))
    sel[:, 0, :5] = -1                                            # row 0: nothing selected
    sel[:, 1, :3] = 2                                             # a block entirely in the future
    out, lse = m3.sparse_attention(q, k, v, sel, block_size=16, order=order, return_lse=True)
    assert torch.all(out[:, :2, :5] == 0) and torch.all(lse[:, :2, :5] == -math.inf)
    assert torch.all(out[:, 2:, :3] == 0) and torch.all(lse[:, 2:, :3] == -math.inf)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("order", ORDERS)
def test_repeated_ids_count_once(order):
    q, k, v, sel = inputs((1, 4, 2, 2, 48, 48, 8, 16, 3), seed=9)
    twice = sel.clone()
    twice[..., 1] = twice[..., 0]                                 # slot 1 repeats slot 0
    once = twice.clone()
    once[..., 1] = -1
    torch.testing.assert_close(m3.sparse_attention(q, k, v, twice, block_size=16, order=order),
                               m3.sparse_attention(q, k, v, once, block_size=16, order=order))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_keep_dtype_and_accumulate_wide(order, dtype):
    shape = (1, 4, 2, 2, 50, 50, 16, 16, 2)
    q, k, v, sel = inputs(shape, dtype=dtype)
    out, lse = m3.sparse_attention(q, k, v, sel, block_size=16, order=order, return_lse=True)
    ref, _ = masked_reference(q, k, v, token_mask(sel, 50, 50, 16, True))
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[4]], ids=name)
def test_gradients_match_masked_dense(order, shape):
    q, k, v, sel = inputs(shape, seed=2)
    T, S, BS = shape[4], shape[5], shape[7]
    sel[0, 0, 0] = -1                                             # an empty row: gradient zero there
    q, k, v = (x.double().requires_grad_() for x in (q, k, v))
    out, lse = m3.sparse_attention(q, k, v, sel, block_size=BS, order=order, return_lse=True)
    w_out, w_lse = randn(*out.shape, seed=11).double(), randn(*lse.shape, seed=12).double()
    loss = (out * w_out).sum() + (lse.nan_to_num(0, 0, 0) * w_lse).sum()
    grads = torch.autograd.grad(loss, (q, k, v))
    ref, ref_lse = masked_reference(q, k, v, token_mask(sel, T, S, BS, True))
    ref_loss = (ref * w_out).sum() + (ref_lse.nan_to_num(0, 0, 0) * w_lse).sum()
    for g, r in zip(grads, torch.autograd.grad(ref_loss, (q, k, v))):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, r, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("order", ORDERS)
def test_gradcheck(order):
    q, k, v, sel = inputs((1, 4, 2, 2, 20, 20, 4, 8, 2), seed=4)
    q, k, v = (x.double().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: m3.sparse_attention(q, k, v, sel, block_size=8, order=order, return_lse=True),
        (q, k, v))


@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 2), HKV=st.sampled_from([1, 2]), G=st.integers(1, 3), r=st.sampled_from([1, 2]),
       T=st.integers(1, 40), extra=st.integers(0, 30), BS=st.sampled_from([4, 8, 16]),
       K=st.integers(1, 5), causal=st.booleans(), seed=st.integers(0, 1000))
def test_random_shapes_both_orders(B, HKV, G, r, T, extra, BS, K, causal, seed):
    HI = max(1, HKV // r)
    S = T + extra
    q, k, v = randn(B, HKV * G, T, 8, seed=seed), randn(B, HKV, S, 8, seed=seed + 1), randn(B, HKV, S, 8, seed=seed + 2)
    sel = random_selection(B, HI, T, S, BS, K, seed=seed, causal=causal)
    ref, _ = masked_reference(q, k, v, token_mask(sel, T, S, BS, causal))
    for order in ORDERS:
        out = m3.sparse_attention(q, k, v, sel, block_size=BS, causal=causal, order=order)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_block_csr_inverts_the_selection():
    sel = random_selection(2, 2, 30, 30, 8, 3, seed=1)
    sel[0, 1, 4, 2] = -1
    NB = m3.num_blocks(30, 8)
    csr = m3.build_block_csr(sel, NB)
    assert csr.offsets.shape == (2 * 2 * NB + 1,) and csr.offsets[-1] == (sel >= 0).sum()
    for b in range(2):
        for h in range(2):
            for j in range(NB):
                row = (b * 2 + h) * NB + j
                lo, hi = csr.offsets[row], csr.offsets[row + 1]
                queries = csr.query[lo:hi].tolist()
                expected = [t for t in range(30) if j in sel[b, h, t].tolist()]
                assert queries == expected                                   # in query order
                assert all(sel[b, h, t, s] == j for t, s in zip(queries, csr.slot[lo:hi].tolist()))
                entries = [((b * 2 + h) * 30 + t) * 3 + s for t, s in zip(queries, csr.slot[lo:hi].tolist())]
                assert csr.entry[lo:hi].tolist() == entries                         # flat index into sel


def test_merge_partials_equals_softmax_over_the_union():
    s, v = randn(3, 5, 12, seed=1), randn(3, 12, 4, seed=2)
    parts = [(0, 5), (5, 6), (6, 12)]
    o, lse = [], []
    for lo, hi in parts:
        p = torch.softmax(s[..., lo:hi], -1)
        o.append(p @ v[:, lo:hi])
        lse.append(torch.logsumexp(s[..., lo:hi], -1))
    out, merged = m3.merge_partials(torch.stack(o, -2), torch.stack(lse, -1))
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v)
    torch.testing.assert_close(merged, torch.logsumexp(s, -1))


def test_merge_partials_with_empty_parts():
    o = torch.stack([randn(2, 4, seed=1), torch.zeros(2, 4)], -2)
    lse = torch.tensor([[0.3, -math.inf], [-math.inf, -math.inf]])
    out, merged = m3.merge_partials(o, lse)
    torch.testing.assert_close(out[0], o[0, 0])
    assert torch.all(out[1] == 0) and merged[1] == -math.inf and merged[0] == pytest.approx(0.3)


def test_attention_recall_is_one_when_everything_is_selected_and_matches_masks():
    q, k = randn(1, 4, 40, 8, seed=1), randn(1, 2, 40, 8, seed=2)
    everything = m3.select_blocks(m3.block_scores(randn(1, 2, 40, 4), randn(1, 1, 40, 4), block_size=8), top_k=5)
    torch.testing.assert_close(m3.attention_recall(q, k, everything, block_size=8), torch.ones(1, 4, 40))
    sel = random_selection(1, 2, 40, 40, 8, 2, seed=3)
    p = torch.softmax((q @ k.repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(8)).masked_fill(
        torch.arange(40) > torch.arange(40)[:, None], -math.inf), -1)
    expected = (p * token_mask(sel, 40, 40, 8, True).repeat_interleave(2, 1)).sum(-1)
    torch.testing.assert_close(m3.attention_recall(q, k, sel, block_size=8), expected)
