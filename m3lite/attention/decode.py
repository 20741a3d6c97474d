"""MSA for decoding: a few new queries per sequence against cached keys of ragged lengths.

Each sequence b of the batch holds `lengths[b]` cached tokens (the rest of the cache is spare
capacity). Its n query tokens are its last n cached tokens: query i sits at position
`lengths[b] - n + i` and sees tokens up to it (DESIGN.md's bottom-right causal alignment), so a
decode step gives exactly the rows that one `msa_attention` call over the whole sequence gives.
"""
import torch

from . import checks
from .sparse import msa_attention


def decode_attention(q, k, v, iq, ik, lengths, block_size=128, top_k=16, scale=None, backend="auto",
                     return_lse=False):
    """MSA for the last n tokens of each cached sequence: score blocks, select, attend.

    Args:
        q: [B, HQ, n, D] queries of each sequence's last n tokens; k, v: [B, HKV, capacity, D]
        caches; iq: [B, HI, n, DI] index queries; ik: [B, 1, capacity, DI] the index-key cache;
        lengths: B ints (list or tensor), the cached tokens of each sequence, n <= lengths[b].
    Returns:
        out [B, HQ, n, D] (and lse [B, HQ, n] float32 when return_lse).
    """
    lengths = check_decode(q, k, v, iq, ik, lengths, block_size, top_k, scale)
    if checks.backend(backend, q, k, v, iq, ik) == "triton":
        from .. import kernels
        lens = torch.tensor(lengths, dtype=torch.int32, device=q.device)
        out, lse = kernels.decode_attention(q, k, v, iq, ik, lens, block_size, top_k, scale)
    else:
        out, lse = decode_attention_torch(q, k, v, iq, ik, lengths, block_size, top_k, scale)
    return (out, lse) if return_lse else out


def decode_attention_torch(q, k, v, iq, ik, lengths, block_size, top_k, scale):
    """The twin: one msa_attention call per sequence, over its cached tokens only."""
    outs, lses = [], []
    for b, length in enumerate(lengths):
        seq = slice(b, b + 1)
        out, lse = msa_attention(q[seq], k[seq, :, :length], v[seq, :, :length], iq[seq], ik[seq, :, :length],
                                 block_size=block_size, top_k=top_k, scale=scale, backend="torch",
                                 return_lse=True)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def check_decode(q, k, v, iq, ik, lengths, block_size, top_k, scale):
    """Validate a decode call; return the lengths as a list of ints."""
    B, HQ, HKV, n, capacity, D = checks.qkv(q, k, v, False, scale)
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
