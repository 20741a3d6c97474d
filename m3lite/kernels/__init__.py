"""Triton kernels, each beside a plain torch twin in m3lite.attention (forward only).

These functions take inputs the public API has already validated, refuse what a kernel cannot
do, and run. On a CPU they run through the Triton interpreter (m3lite.env turns it on).
"""
import torch

from ..attention.sparse import unique_selection
from . import common
from . import decode as _decode
from .flash import flash_attention
from .indexer import block_scores as _block_scores, select_blocks as _select_blocks
from .sparse_kv import sparse_attention_kv
from .sparse_query import sparse_attention_query

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(tensors, head_dim, block_size=None, dim_name="head dim"):
    common.check_device(*tensors)
    common.check_forward_only(*tensors)
    if tensors[0].dtype not in DTYPES:
        raise TypeError(f"backend='triton' takes {DTYPES}, got {tensors[0].dtype}; backend='torch' takes float64")
    common.check_head_dim(head_dim, dim_name)
    if block_size is not None:
        common.check_block_size(block_size)


def dense_attention(q, k, v, causal, scale):
    _check((q, k, v), q.shape[-1])
    return flash_attention(q, k, v, causal, scale)


def block_scores(iq, ik, block_size, causal, scale):
    _check((iq, ik), iq.shape[-1], block_size, dim_name="index dim")
    return _block_scores(iq, ik, block_size, causal, scale)


def select_blocks(scores, top_k, local):
    common.check_device(scores)
    return _select_blocks(scores, top_k, local)


def sparse_attention(q, k, v, sel, block_size, causal, scale, order):
    _check((q, k, v), q.shape[-1], block_size)
    if block_size > common.MAX_BLOCK_SIZE:
        raise ValueError(f"backend='triton' takes block_size <= {common.MAX_BLOCK_SIZE}, got {block_size}; "
                         "backend='torch' takes any")
    if order == "kv":                  # its plan drops repeated ids as it inverts the selection
        return sparse_attention_kv(q, k, v, sel, block_size, causal, scale)
    return sparse_attention_query(q, k, v, unique_selection(sel), block_size, causal, scale)


def decode_attention(q, k, v, iq, ik, lens, block_size, top_k, scale, ik_scale=None):
    _check((q, k, v, iq, ik), q.shape[-1], block_size)
    common.check_head_dim(iq.shape[-1], "index dim")
    if block_size > common.MAX_BLOCK_SIZE:
        raise ValueError(f"backend='triton' takes block_size <= {common.MAX_BLOCK_SIZE}, got {block_size}; "
                         "backend='torch' takes any")
    return _decode.decode_attention(q, k, v, iq, ik, lens, block_size, top_k, scale, ik_scale)
