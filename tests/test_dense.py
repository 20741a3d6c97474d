import pytest
import torch
import torch.nn.functional as F

import m3lite as m3
from conftest import randn

SHAPES = [(1, 4, 4, 16, 16, 8), (2, 8, 2, 63, 100, 16), (1, 6, 3, 1, 33, 32), (2, 4, 1, 100, 100, 64)]


def name(shape):
    return "B{}-HQ{}-HKV{}-T{}-S{}-D{}".format(*shape)


@pytest.mark.parametrize("shape", SHAPES, ids=name)
@pytest.mark.parametrize("causal", [True, False])
def test_dense_matches_sdpa(shape, causal):
    B, HQ, HKV, T, S, D = shape
    q, k, v = randn(B, HQ, T, D, seed=1), randn(B, HKV, S, D, seed=2), randn(B, HKV, S, D, seed=3)
    mask = torch.ones(T, S, dtype=torch.bool)
    if causal:
        mask = torch.arange(S) <= (torch.arange(T) + S - T)[:, None]        # bottom-right
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(HQ // HKV, 1),
                                         v.repeat_interleave(HQ // HKV, 1), attn_mask=mask)
    out = m3.dense_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("shape", SHAPES, ids=name)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tiles", [(16, 16), (7, 13), (64, 32)])
def test_tiled_equals_dense(shape, causal, tiles):
    B, HQ, HKV, T, S, D = shape
    q, k, v = randn(B, HQ, T, D, seed=4), randn(B, HKV, S, D, seed=5), randn(B, HKV, S, D, seed=6)
    out = m3.tiled_attention(q, k, v, causal=causal, block_q=tiles[0], block_k=tiles[1])
    torch.testing.assert_close(out, m3.dense_attention(q, k, v, causal=causal), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dense_keeps_dtype_and_accumulates_wide(dtype):
    q, k, v = (randn(1, 4, 40, 16, seed=s, dtype=dtype) for s in (7, 8, 9))
    k, v = k[:, :2], v[:, :2]
    out = m3.dense_attention(q, k, v)
    ref = m3.dense_attention(q.double(), k.double(), v.double())
    assert out.dtype == dtype
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float64: 1e-12}[dtype]
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_dense_gradients_match_sdpa():
    q = randn(2, 4, 30, 8, seed=10).requires_grad_()
    k = randn(2, 2, 30, 8, seed=11).requires_grad_()
    v = randn(2, 2, 30, 8, seed=12).requires_grad_()
    grads = torch.autograd.grad(m3.dense_attention(q, k, v).square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)


def test_scale_is_used():
    q, k, v = randn(1, 2, 10, 8, seed=1), randn(1, 2, 10, 8, seed=2), randn(1, 2, 10, 8, seed=3)
    out = m3.dense_attention(q, k, v, scale=0.5)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.5)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(m3.tiled_attention(q, k, v, scale=0.5, block_q=3, block_k=4), ref, atol=2e-6, rtol=1e-5)
