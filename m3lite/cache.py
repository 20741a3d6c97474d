"""The decoding cache: keys, values and the shared index keys of a batch of sequences.

    cache = MSACache(batch=2, kv_heads=4, head_dim=128, block_size=128, capacity=4096)
    cache.append(k, v, ik)                  # k, v: [B, HKV, n, D]; ik: [B, 1, n, DI]
    out = cache.attend(q, iq, top_k=16)     # q: [B, HQ, n, D], the n tokens just appended

Sequences may hold different numbers of tokens (`counts` in `append`). Storage is preallocated in
whole blocks and grows by doubling when an append needs more, so decoding never reallocates per
token. Every check runs before anything is written: a failed call leaves the cache as it was.
With `index_dtype=torch.float8_e4m3fn` the index keys are stored in fp8 with a float32 scale per
token (`ik_scale`), which halves the bytes a decode step scans.
"""
import torch

from . import env
from .attention import checks
from .attention.decode import FP8, decode_attention, lengths_list, quantize_index_keys


class MSACache:
    def __init__(self, batch, kv_heads, head_dim, index_dim=None, block_size=128, capacity=None,
                 dtype=torch.float32, device=None, grow=True, index_dtype=None):
        for value, name in ((batch, "batch"), (kv_heads, "kv_heads"), (head_dim, "head_dim"),
                            (block_size, "block_size")):
            checks.positive_int(value, name)
        index_dim = head_dim if index_dim is None else index_dim
        checks.positive_int(index_dim, "index_dim")
        capacity = block_size if capacity is None else capacity
        checks.positive_int(capacity, "capacity")
        checks.flag(grow, "grow")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        if index_dtype not in (None, dtype, FP8):
            raise ValueError(f"index_dtype must be None (the cache's dtype) or {FP8}, got {index_dtype}")
        self.block_size, self.grow = block_size, grow
        capacity = _round_up(capacity, block_size)
        device = env.DEVICE if device is None else torch.device(device)
        self.k = torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.ik = torch.zeros(batch, 1, capacity, index_dim, dtype=index_dtype or dtype, device=device)
        self.ik_scale = (torch.zeros(batch, 1, capacity, dtype=torch.float32, device=device)
                         if index_dtype == FP8 else None)
        self._lengths = [0] * batch
        self.lengths_device = torch.zeros(batch, dtype=torch.int32, device=device)

    @property
    def lengths(self):
        """Cached tokens per sequence (a new list)."""
        return list(self._lengths)

    @property
    def capacity(self):
        return self.k.shape[2]

    def __len__(self):
        return len(self._lengths)

    def __repr__(self):
        B, HKV, cap, D = self.k.shape
        return (f"MSACache(batch={B}, kv_heads={HKV}, head_dim={D}, index_dim={self.ik.shape[-1]}, "
                f"block_size={self.block_size}, capacity={cap}, lengths={self._lengths}, "
                f"dtype={self.k.dtype}, index_dtype={self.ik.dtype}, device={self.k.device})")

    def append(self, k, v, ik, counts=None):
        """Append n new tokens to every sequence: k, v [B, HKV, n, D], ik [B, 1, n, DI].

        counts: optional B ints, how many of the n tokens are real for each sequence (ragged
        prefill); the rest of each row is padding and is not stored. Default: all n.
        """
        n = self._check_new(k, v, ik)
        ik, ik_scale = quantize_index_keys(ik) if self.ik_scale is not None else (ik, None)
        counts = [n] * len(self) if counts is None else lengths_list(counts, len(self))
        for b, count in enumerate(counts):
            if not 0 <= count <= n:
                raise ValueError(f"counts[{b}] must lie in [0, {n}] (the tokens given), got {count}")
        needed = max(length + count for length, count in zip(self._lengths, counts))
        if needed > self.capacity:
            if not self.grow:
                raise ValueError(f"the cache holds {self.capacity} tokens per sequence and this append needs "
                                 f"{needed}; make it with a larger capacity or grow=True")
            self._reserve(max(needed, 2 * self.capacity))
        for b, count in enumerate(counts):
            start = self._lengths[b]
            self.k[b, :, start:start + count] = k[b, :, :count]
            self.v[b, :, start:start + count] = v[b, :, :count]
            self.ik[b, :, start:start + count] = ik[b, :, :count]
            if ik_scale is not None:
                self.ik_scale[b, :, start:start + count] = ik_scale[b, :, :count]
            self._lengths[b] = start + count
        self.lengths_device.copy_(torch.tensor(self._lengths, dtype=torch.int32))

    def attend(self, q, iq, top_k=16, scale=None, backend="auto", return_lse=False):
        """MSA for the last n cached tokens of every sequence: q [B, HQ, n, D], iq [B, HI, n, DI].

        Append the n tokens' k, v and ik first: the queries are taken to be the newest cached tokens,
        and the cache cannot tell whether they are (attending before appending answers for the
        previous positions)."""
        for b, length in enumerate(self._lengths):
            if length == 0:
                raise ValueError(f"sequence {b} of the cache is empty: append its tokens before attending")
        return decode_attention(q, self.k, self.v, iq, self.ik, self._lengths, block_size=self.block_size,
                                top_k=top_k, scale=scale, backend=backend, return_lse=return_lse,
                                ik_scale=self.ik_scale)

    def _check_new(self, k, v, ik):
        B, HKV, _, D = self.k.shape
        _, n, _ = _check_like(k, "k", self.k, "[B, HKV, n, D]")
        _check_like(v, "v", self.k, "[B, HKV, n, D]")
        if v.shape != k.shape:
            raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
        _, n_ik, _ = _check_like(ik, "ik", self.ik, "[B, 1, n, DI]", dtype=self.k.dtype)
        if n_ik != n:
            raise ValueError(f"ik must bring as many tokens as k ({n}), got {n_ik}")
        if n == 0:
            raise ValueError("append needs at least one token (n >= 1)")
        return n

    def _reserve(self, capacity):
        """Reallocate to `capacity` tokens (rounded up to whole blocks), keeping what is cached."""
        capacity = _round_up(capacity, self.block_size)
        for name in ("k", "v", "ik", "ik_scale"):
            old = getattr(self, name)
            if old is not None:
                new = old.new_zeros(*old.shape[:2], capacity, *old.shape[3:])
                new[:, :, :old.shape[2]] = old
                setattr(self, name, new)


def _check_like(x, name, stored, layout, dtype=None):
    """x must be 4-D and match the stored tensor in batch, heads, last dim, dtype and device."""
    B, H, _, D = stored.shape
    dtype = stored.dtype if dtype is None else dtype
    xb, xh, n, xd = checks.tensor(x, name, layout=layout)
    if x.dtype != dtype:
        raise TypeError(f"{name} must have the cache's dtype ({dtype}), got {x.dtype}")
    if x.device != stored.device:
        raise ValueError(f"{name} must be on the cache's device ({stored.device}), got {x.device}")
    if (xb, xh, xd) != (B, H, D):
        raise ValueError(f"{name} must be [B={B}, {H}, n, {D}] for this cache, got {tuple(x.shape)}")
    return xb, n, xd


def _round_up(n, multiple):
    return -(-n // multiple) * multiple
