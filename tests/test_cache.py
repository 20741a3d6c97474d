"""MSACache: storage, growth, ragged appends, and bad input that leaves the cache as it was."""
import pytest
import torch

import m3lite as m3


def make(grow=True, capacity=16, dtype=torch.float32):
    return m3.MSACache(batch=2, kv_heads=2, head_dim=8, index_dim=4, block_size=8, capacity=capacity,
                       dtype=dtype, device="cpu", grow=grow)


def tokens(n, seed=0, dtype=torch.float32, batch=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 2, n, 8, generator=g).to(dtype), torch.randn(batch, 2, n, 8, generator=g).to(dtype),
            torch.randn(batch, 1, n, 4, generator=g).to(dtype))


def snapshot(cache):
    return cache.lengths, cache.capacity, cache.k.clone(), cache.v.clone(), cache.ik.clone()


def assert_unchanged(cache, before):
    lengths, capacity, k, v, ik = before
    assert cache.lengths == lengths and cache.capacity == capacity
    assert torch.equal(cache.k, k) and torch.equal(cache.v, v) and torch.equal(cache.ik, ik)


def test_append_stores_tokens_in_order():
    cache = make()
    k1, v1, ik1 = tokens(5, seed=1)
    k2, v2, ik2 = tokens(3, seed=2)
    cache.append(k1, v1, ik1)
    cache.append(k2, v2, ik2)
    assert cache.lengths == [8, 8]
    assert torch.equal(cache.k[:, :, :8], torch.cat([k1, k2], 2))
    assert torch.equal(cache.v[:, :, :8], torch.cat([v1, v2], 2))
    assert torch.equal(cache.ik[:, :, :8], torch.cat([ik1, ik2], 2))
    assert cache.lengths_device.tolist() == [8, 8]


def test_ragged_counts_store_only_real_tokens():
    cache = make()
    k, v, ik = tokens(6)
    cache.append(k, v, ik, counts=[6, 2])
    assert cache.lengths == [6, 2]
    assert torch.equal(cache.k[1, :, :2], k[1, :, :2]) and not cache.k[1, :, 2:].any()
    cache.append(*tokens(1, seed=3))
    assert cache.lengths == [7, 3]


def test_growth_is_by_whole_blocks_and_keeps_contents():
    cache = make(capacity=10)
    assert cache.capacity == 16                              # rounded up to whole blocks
    k, v, ik = tokens(12)
    cache.append(k, v, ik)
    storage = cache.k.data_ptr()
    cache.append(*tokens(4, seed=1))                         # fills the 16: no reallocation
    assert cache.k.data_ptr() == storage
    cache.append(*tokens(1, seed=2))                         # 17 tokens: doubles to 32
    assert cache.capacity == 32 and cache.lengths == [17, 17]
    assert torch.equal(cache.k[:, :, :12], k) and torch.equal(cache.ik[:, :, :12], ik)


def test_full_cache_without_growth_refuses_and_keeps_everything():
    cache = make(grow=False)
    cache.append(*tokens(15))
    before = snapshot(cache)
    with pytest.raises(ValueError, match="larger capacity or grow=True"):
        cache.append(*tokens(2, seed=1))
    assert_unchanged(cache, before)


@pytest.mark.parametrize("bad, match", [
    (lambda k, v, ik: (k.double(), v.double(), ik.double()), "k must have the cache's dtype"),
    (lambda k, v, ik: (k[:, :1], v[:, :1], ik), r"k must be \[B=2, 2, n, 8\]"),
    (lambda k, v, ik: (k[:1], v[:1], ik[:1]), r"k must be \[B=2"),
    (lambda k, v, ik: (k, v[:, :, :2], ik), "v must have the shape of k"),
    (lambda k, v, ik: (k, v, ik[:, :, :2]), "ik must bring as many tokens as k"),
    (lambda k, v, ik: (k, v, ik[..., :3]), r"ik must be \[B=2, 1, n, 4\]"),
    (lambda k, v, ik: (k[:, :, :0], v[:, :, :0], ik[:, :, :0]), "at least one token"),
    (lambda k, v, ik: (k[0], v, ik), "k must be a 4-D tensor"),
])
def test_bad_appends_are_refused_and_change_nothing(bad, match):
    cache = make()
    cache.append(*tokens(3))
    before = snapshot(cache)
    with pytest.raises((ValueError, TypeError), match=match):
        cache.append(*bad(*tokens(4, seed=1)))
    assert_unchanged(cache, before)


def test_bad_counts_are_refused_and_change_nothing():
    cache = make()
    before = snapshot(cache)
    with pytest.raises(ValueError, match=r"counts\[1\] must lie in \[0, 4\]"):
        cache.append(*tokens(4), counts=[4, 5])
    with pytest.raises(ValueError, match="one length per sequence"):
        cache.append(*tokens(4), counts=[4])
    assert_unchanged(cache, before)


def test_attend_on_an_empty_sequence_is_refused():
    cache = make()
    cache.append(*tokens(3), counts=[3, 0])
    q, iq = torch.randn(2, 4, 1, 8), torch.randn(2, 1, 1, 4)
    with pytest.raises(ValueError, match="sequence 1 of the cache is empty"):
        cache.attend(q, iq, top_k=2)


def test_attend_more_queries_than_cached_is_refused():
    cache = make()
    cache.append(*tokens(2))
    with pytest.raises(ValueError, match=r"lengths\[0\] must hold the 3 query tokens"):
        cache.attend(torch.randn(2, 4, 3, 8), torch.randn(2, 1, 3, 4), top_k=2)


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch=0), "batch must be positive"),
    (dict(block_size=2.0), "block_size must be an int"),
    (dict(dtype=torch.int32), "dtype must be a floating dtype"),
    (dict(grow="yes"), "grow must be a bool"),
])
def test_bad_construction(kwargs, match):
    args = dict(batch=1, kv_heads=2, head_dim=8, device="cpu") | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        m3.MSACache(**args)


def test_repr_names_the_shape():
    assert "lengths=[0, 0]" in repr(make()) and "block_size=8" in repr(make())


def test_fp8_index_cache_grows_with_its_scales():
    cache = m3.MSACache(batch=2, kv_heads=2, head_dim=8, index_dim=4, block_size=8, capacity=8, device="cpu",
                        index_dtype=torch.float8_e4m3fn)
    k, v, ik = tokens(6)
    cache.append(k, v, ik)
    cache.append(*tokens(5, seed=1))                         # 11 tokens: grows to 16
    assert cache.capacity == 16 and cache.ik_scale.shape == (2, 1, 16)
    back = cache.ik[:, :, :6].float() * cache.ik_scale[:, :, :6, None]
    assert ((back - ik).norm() / ik.norm()) < 0.05
    with pytest.raises(TypeError, match="ik must have the cache's dtype"):
        cache.append(k, v, ik.to(torch.float8_e4m3fn))


def test_index_dtype_is_the_cache_dtype_or_fp8():
    with pytest.raises(ValueError, match="index_dtype must be None"):
        m3.MSACache(batch=1, kv_heads=2, head_dim=8, device="cpu", index_dtype=torch.float16)
