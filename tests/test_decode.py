"""Decoding: the decode path against one prefill call, in torch and in Triton (interpreter on CPU).

The property that matters: feeding a sequence through the cache a few tokens at a time gives the
rows that one msa_attention call over the whole sequence gives.
"""
from functools import partial

import pytest
import torch

import m3lite as m3
from m3lite.attention.decode import decode_attention_torch, dequantize_index_keys, quantize_index_keys
from m3lite.kernels import decode as decode_kernels

import conftest
from conftest import rel_error

DEVICE = m3.env.device()
ON_GPU = DEVICE.type == "cuda"
BACKENDS = ["torch", "triton"] if m3.env.HAS_TRITON else ["torch"]
FP32_TOL = 3e-3 if ON_GPU else 1e-5          # tl.dot rounds float32 inputs to TF32 on the GPU


pytestmark = pytest.mark.usefixtures("poison_kernel_outputs")
randn = partial(conftest.randn, device=DEVICE)


def sequence(L, HQ=4, HKV=2, HI=1, D=32, DI=16, seed=0, dtype=torch.float32):
    """q, k, v, iq, ik of one whole sequence (batch 1)."""
    return (randn(1, HQ, L, D, seed=seed, dtype=dtype), randn(1, HKV, L, D, seed=seed + 1, dtype=dtype),
            randn(1, HKV, L, D, seed=seed + 2, dtype=dtype), randn(1, HI, L, DI, seed=seed + 3, dtype=dtype),
            randn(1, 1, L, DI, seed=seed + 4, dtype=dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_incremental_decoding_equals_prefill(backend):
    """Prefill 52 tokens, then decode in steps of 1 and 3 tokens: every row equals the prefill's."""
    L, BS, top_k, steps = 72, 16, 3, [1, 3, 1, 1, 3, 1, 3, 1, 1, 3, 1, 1]
    q, k, v, iq, ik = sequence(L, seed=3)
    whole = m3.msa_attention(q, k, v, iq, ik, block_size=BS, top_k=top_k, backend="torch")
    cache = m3.MSACache(batch=1, kv_heads=2, head_dim=32, index_dim=16, block_size=BS, capacity=BS,
                        device=DEVICE)
    start = L - sum(steps)
    cache.append(k[:, :, :start], v[:, :, :start], ik[:, :, :start])
    for n in steps:
        new = slice(start, start + n)
        cache.append(k[:, :, new], v[:, :, new], ik[:, :, new])
        out = cache.attend(q[:, :, new], iq[:, :, new], top_k=top_k, backend=backend)
        assert rel_error(out, whole[:, :, new]) < FP32_TOL, f"tokens {start}..{start + n - 1}"
        start += n
    assert cache.lengths == [L] and cache.capacity >= L


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ragged_batch_matches_each_sequence_alone(backend, dtype):
    """Three sequences of different lengths in one call (partial blocks, top_k above the visible blocks)."""
    lengths, capacity, n, BS, top_k = [37, 64, 9], 64, 2, 16, 3
    q, iq = randn(3, 4, n, 32, seed=1, dtype=dtype), randn(3, 2, n, 16, seed=2, dtype=dtype)
    k, v = randn(3, 2, capacity, 32, seed=3, dtype=dtype), randn(3, 2, capacity, 32, seed=4, dtype=dtype)
    ik = randn(3, 1, capacity, 16, seed=5, dtype=dtype)
    out, lse = m3.decode_attention(q, k, v, iq, ik, lengths, block_size=BS, top_k=top_k, backend=backend,
                                   return_lse=True)
    for b, length in enumerate(lengths):
        seq = slice(b, b + 1)
        ref, ref_lse = m3.msa_attention(q[seq].float(), k[seq, :, :length].float(), v[seq, :, :length].float(),
                                        iq[seq].float(), ik[seq, :, :length].float(), block_size=BS,
                                        top_k=top_k, backend="torch", return_lse=True)
        assert out.dtype == dtype
        assert rel_error(out[seq], ref) < (FP32_TOL if dtype == torch.float32 else 1.5e-2), f"sequence {b}"
        assert torch.allclose(lse[seq], ref_lse, atol=1e-2 if dtype == torch.bfloat16 or ON_GPU else 1e-5)


@pytest.mark.skipif(not m3.env.HAS_TRITON, reason="needs triton")
@pytest.mark.parametrize("chunk", [4, 1024])
def test_two_stage_top_k_matches_torch_selection(chunk):
    """The decode selection equals select_blocks over the sequence alone, with several top-k chunks."""
    lengths, capacity, n, BS, top_k = [150, 97], 160, 3, 16, 5
    iq, ik = randn(2, 2, n, 16, seed=6), randn(2, 1, capacity, 16, seed=7)
    lens = torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    sel = decode_kernels.decode_select(decode_kernels.decode_scores(iq, ik, lens, BS), top_k, chunk=chunk)
    for b, length in enumerate(lengths):
        scores = m3.block_scores(iq[b:b + 1], ik[b:b + 1, :, :length], block_size=BS, backend="torch")
        ref = m3.select_blocks(scores, top_k=top_k, backend="torch")
        assert torch.equal(sel[b:b + 1].sort(-1).values, ref.sort(-1).values), f"sequence {b}"


def test_torch_twin_is_one_prefill_per_sequence():
    q, k, v, iq, ik = sequence(24, seed=9)
    out, lse = decode_attention_torch(q[:, :, -2:], k, v, iq[:, :, -2:], ik, [24], 8, 2, None)
    ref, ref_lse = m3.msa_attention(q, k, v, iq, ik, block_size=8, top_k=2, backend="torch", return_lse=True)
    assert torch.equal(out, ref[:, :, -2:]) and torch.equal(lse, ref_lse[:, :, -2:])


@pytest.mark.parametrize("bad, match", [
    (dict(lengths=[1, 2]), "one length per sequence"),
    (dict(lengths=[0]), r"lengths\[0\] must hold the 2 query tokens"),
    (dict(lengths=[99]), r"fit the cache"),
    (dict(lengths=[2.5]), "list of ints"),
    (dict(top_k=0), "top_k must be positive"),
    (dict(block_size=0), "block_size must be positive"),
])
def test_decode_bad_input(bad, match):
    q, k, v, iq, ik = sequence(16)
    args = dict(lengths=[16], block_size=8, top_k=2) | bad
    with pytest.raises((ValueError, TypeError), match=match):
        m3.decode_attention(q[:, :, -2:], k, v, iq[:, :, -2:], ik, backend="torch", **args)


def test_decode_index_shapes_must_match():
    q, k, v, iq, ik = sequence(16)
    with pytest.raises(ValueError, match="iq and ik must match"):
        m3.decode_attention(q[:, :, -2:], k, v, iq[:, :, -3:], ik, [16], block_size=8, top_k=2)


@pytest.mark.skipif(not ON_GPU, reason="real sizes only on a GPU (the interpreter is too slow)")
@pytest.mark.parametrize("n", [1, 4])
def test_gpu_m3_shape_matches_torch_twin(n):
    lengths, capacity, BS, top_k = [32768, 20001], 32768, 128, 16
    dt = torch.bfloat16
    q, iq = randn(2, 64, n, 128, seed=1, dtype=dt), randn(2, 4, n, 128, seed=2, dtype=dt)
    k, v = randn(2, 4, capacity, 128, seed=3, dtype=dt), randn(2, 4, capacity, 128, seed=4, dtype=dt)
    ik = randn(2, 1, capacity, 128, seed=5, dtype=dt)
    out = m3.decode_attention(q, k, v, iq, ik, lengths, block_size=BS, top_k=top_k, backend="triton")
    ref = decode_attention_torch(q.float(), k.float(), v.float(), iq.float(), ik.float(), lengths, BS, top_k, None)[0]
    assert rel_error(out, ref) < 1e-2


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp8_index_cache_equals_prefill_on_its_dequantized_keys(backend):
    """With fp8 index keys, decoding equals one msa_attention whose index keys are the dequantized ones."""
    L, BS, top_k, steps = 64, 16, 2, [1, 3, 1]
    q, k, v, iq, ik = sequence(L, seed=11)
    cache = m3.MSACache(batch=1, kv_heads=2, head_dim=32, index_dim=16, block_size=BS, device=DEVICE,
                        index_dtype=torch.float8_e4m3fn)
    start = L - sum(steps)
    cache.append(k[:, :, :start], v[:, :, :start], ik[:, :, :start])
    for n in steps:
        new = slice(start, start + n)
        cache.append(k[:, :, new], v[:, :, new], ik[:, :, new])
        start += n
    assert cache.ik.dtype == torch.float8_e4m3fn and cache.ik_scale.shape == (1, 1, cache.capacity)
    ik_seen = dequantize_index_keys(cache.ik[:, :, :L], cache.ik_scale[:, :, :L])
    assert rel_error(ik_seen, ik) < 0.05                                   # e4m3 keeps about 2 significant digits
    whole = m3.msa_attention(q, k, v, iq, ik_seen, block_size=BS, top_k=top_k, backend="torch")
    out = cache.attend(q[:, :, -1:], iq[:, :, -1:], top_k=top_k, backend=backend)
    assert rel_error(out, whole[:, :, -1:]) < FP32_TOL


def test_quantized_keys_round_trip_and_scale_per_token():
    ik = randn(2, 1, 50, 16, seed=12) * torch.linspace(0.01, 100, 50, device=DEVICE)[:, None]
    ik_fp8, scale = quantize_index_keys(ik)
    assert ik_fp8.dtype == torch.float8_e4m3fn and scale.shape == (2, 1, 50)
    back = dequantize_index_keys(ik_fp8, scale)
    assert ((back - ik).norm(dim=-1) / ik.norm(dim=-1)).max() < 0.05       # every token, small or large


@pytest.mark.parametrize("change, match", [
    (lambda ik8, sc: (ik8, None), "pass ik_scale"),
    (lambda ik8, sc: (ik8.float(), sc), "ik_scale goes with fp8"),
    (lambda ik8, sc: (ik8, sc[..., :-1]), "ik_scale must be float32"),
    (lambda ik8, sc: (ik8, sc.double()), "ik_scale must be float32"),
])
def test_fp8_keys_need_their_scale(change, match):
    q, k, v, iq, ik = sequence(16)
    ik8, scale = change(*quantize_index_keys(ik))
    with pytest.raises((ValueError, TypeError), match=match):
        m3.decode_attention(q[:, :, -1:], k, v, iq[:, :, -1:], ik8, [16], block_size=8, top_k=2, ik_scale=scale,
                            backend="torch")


def test_index_scan_keeps_enough_programs():
    for NB, B in ((1, 1), (256, 1), (1024, 1), (8192, 1), (1024, 16)):
        for fp8 in (False, True):
            blocks = decode_kernels.scan_blocks_per_program(NB, B, fp8)
            assert blocks in (1, 2, 4, 8, 16)
            assert blocks == 1 or B * -(-NB // blocks) >= decode_kernels.MIN_SCAN_PROGRAMS
    assert decode_kernels.scan_blocks_per_program(8192, 1, True) == 16      # the sweep's best at 1M
