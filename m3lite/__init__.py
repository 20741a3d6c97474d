"""m3lite: MiniMax Sparse Attention (MSA), runnable and teachable.

    import m3lite as m3
    scores = m3.block_scores(iq, ik, block_size=128)          # [B, HI, T, NB]
    sel = m3.select_blocks(scores, top_k=16)                   # [B, HI, T, 16], -1 padded
    out = m3.sparse_attention(q, k, v, sel, block_size=128)    # [B, HQ, T, D]
    cache = m3.MSACache(batch=1, kv_heads=4, head_dim=128)     # decoding: append, then attend
"""
from . import env  # first: decides the device and the Triton interpreter before any kernel exists
from .attention import (BlockCSR, Indexer, attention_recall, block_scores, build_block_csr,
                        decode_attention, dense_attention, merge_partials, msa_attention, num_blocks,
                        select_blocks, selection_mask, sparse_attention, tiled_attention)
from .cache import MSACache

__version__ = "0.1.0"

__all__ = ["env", "BlockCSR", "Indexer", "MSACache", "attention_recall", "block_scores", "build_block_csr",
           "decode_attention", "dense_attention", "merge_partials", "msa_attention", "num_blocks",
           "select_blocks", "selection_mask", "sparse_attention", "tiled_attention"]
