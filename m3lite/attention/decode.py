"""MSA for decoding: a few new queries per sequence against cached keys of ragged lengths.

Each sequence b of the batch holds `lengths[b]` cached tokens (the rest of the cache is spare
capacity). Its n query tokens are its last n cached tokens: query i sits at position
`lengths[b] - n + i` and sees tokens up to it (DESIGN.md's bottom-right causal alignment), so a
decode step gives exactly the rows that one `msa_attention` call over the whole sequence gives.
"""
import torch

from . import checks
from .sparse import msa_attention

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0                 # the largest finite float8_e4m3fn


def quantize_index_keys(ik):
    """fp8 (e4m3) index keys with one float32 scale per token: (ik_fp8 [..., S, DI], scale [..., S]).
    ik is about ik_fp8.float() * scale[..., None]; the scale maps each token's largest |value| to 448."""
    scale = ik.float().abs().amax(-1).clamp(min=1e-12) / FP8_MAX
    return (ik.float() / scale[..., None]).to(FP8), scale


def dequantize_index_keys(ik_fp8, scale):
    return ik_fp8.float() * scale[..., None]


def decode_attention(q, k, v, iq, ik, lengths, block_size=128, top_k=16, scale=None, backend="auto",
                     return_lse=False, ik_scale=None):
    """MSA for the last n tokens of each cached sequence: score blocks, select, attend.

    Args:
        q: [B, HQ, n, D] queries of each sequence's last n tokens; k, v: [B, HKV, capacity, D]
        caches; iq: [B, HI, n, DI] index queries; ik: [B, 1, capacity, DI] the index-key cache;
        lengths: B ints (list or tensor), the cached tokens of each sequence, n <= lengths[b].
        ik_scale: float32 [B, 1, capacity] when ik is fp8 (see `quantize_index_keys`).
    Returns:
        out [B, HQ, n, D] (and lse [B, HQ, n] float32 when return_lse).
    """
    lengths = check_decode(q, k, v, iq, ik, lengths, block_size, top_k, scale, ik_scale)
    if checks.backend(backend, q, k, v, iq) == "triton":
        from .. import kernels
        lens = torch.tensor(lengths, dtype=torch.int32, device=q.device)
        out, lse = kernels.decode_attention(q, k, v, iq, ik, lens, block_size, top_k, scale, ik_scale)
    else:
        out, lse = decode_attention_torch(q, k, v, iq, ik, lengths, block_size, top_k, scale, ik_scale)
    return (out, lse) if return_lse else out


def decode_attention_torch(q, k, v, iq, ik, lengths, block_size, top_k, scale, ik_scale=None):
    """The twin: one msa_attention call per sequence, over its cached tokens only."""
    if ik_scale is not None:                                          # fp8 keys: score in float32
        iq, ik = iq.float(), dequantize_index_keys(ik, ik_scale)
    outs, lses = [], []
    for b, length in enumerate(lengths):
        seq = slice(b, b + 1)
        out, lse = msa_attention(q[seq], k[seq, :, :length], v[seq, :, :length], iq[seq], ik[seq, :, :length],
                                 block_size=block_size, top_k=top_k, scale=scale, backend="torch",
                                 return_lse=True)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def check_decode(q, k, v, iq, ik, lengths, block_size, top_k, scale, ik_scale=None):
    """Validate a decode call; return the lengths as a list of ints."""
    B, HQ, HKV, n, capacity, D = checks.qkv(q, k, v, False, scale)
    check_index_scale(ik, ik_scale)
    if ik_scale is not None:                                          # fp8 keys: check their shape as iq's dtype
        if ik.device != iq.device:
            raise ValueError(f"ik must be on the device of iq ({iq.device}), got {ik.device}")
        ik = iq.new_zeros(()).expand(ik.shape)
    Bi, HI, ni, capacity_i, _ = checks.index_qk(iq, ik, HKV)
    if (Bi, ni, capacity_i) != (B, n, capacity):
        raise ValueError(f"iq and ik must match q and k in batch, queries and capacity (B={B}, n={n}, "
                         f"capacity={capacity}), got B={Bi}, n={ni}, capacity={capacity_i}")
    if iq.device != q.device:
        raise ValueError(f"iq must be on the device of q ({q.device}), got {iq.device}")
    checks.positive_int(block_size, "block_size")
    checks.positive_int(top_k, "top_k")
    lengths = lengths_list(lengths, B)
    for b, length in enumerate(lengths):
        if not n <= length <= capacity:
            raise ValueError(f"lengths[{b}] must hold the {n} query tokens and fit the cache "
                             f"({n} <= length <= {capacity}), got {length}")
    return lengths


def lengths_list(lengths, B):
    """`lengths` (B ints, as a list, tuple or integer tensor) as a list of Python ints."""
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.dim() != 1:
            raise TypeError(f"lengths must be a 1-D integer tensor or a list of ints, got {lengths.dtype} "
                            f"of shape {tuple(lengths.shape)}")
        lengths = lengths.tolist()
    if not isinstance(lengths, (list, tuple)) or not all(isinstance(x, int) and not isinstance(x, bool)
                                                         for x in lengths):
        raise TypeError(f"lengths must be a list of ints (one per sequence), got {lengths!r}")
    if len(lengths) != B:
        raise ValueError(f"lengths must give one length per sequence ({B}), got {len(lengths)}")
    return list(lengths)


def check_index_scale(ik, ik_scale):
    """fp8 index keys come with a float32 scale per token [B, 1, capacity]; other keys with none."""
    if ik_scale is None:
        if isinstance(ik, torch.Tensor) and ik.dtype == FP8:
            raise ValueError("ik is fp8: pass ik_scale, its float32 scale per token (see quantize_index_keys)")
        return
    if not isinstance(ik, torch.Tensor) or ik.dtype != FP8:
        raise TypeError(f"ik_scale goes with fp8 ({FP8}) index keys, got ik of {getattr(ik, 'dtype', type(ik))}")
    checks.tensor(ik_scale, "ik_scale", rank=3, layout="[B, 1, capacity]")
    if ik_scale.dtype != torch.float32 or ik_scale.shape != ik.shape[:3] or ik_scale.device != ik.device:
        raise ValueError(f"ik_scale must be float32 {tuple(ik.shape[:3])} on {ik.device}, got {ik_scale.dtype} "
                         f"{tuple(ik_scale.shape)} on {ik_scale.device}")
