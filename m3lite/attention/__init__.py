"""Attention in plain torch: the dense references, the indexer and both sparse gather orders."""
from .dense import attention_flops, causal_attended_tokens, dense_attention, tiled_attention
from .indexer import (Indexer, block_attention_mass, block_scores, indexer_distillation_loss, num_blocks,
                      select_blocks)
from .rope import apply_rope, rope_angles
from .kv_order import BlockCSR, build_block_csr, merge_partials
from .loads import block_load_counts
from .sparse import (attention_recall, msa_attention, selection_mask, sparse_attention,
                     sparse_attention_kv, sparse_attention_query, unique_selection)
from .decode import decode_attention
