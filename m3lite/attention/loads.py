"""How often each KV block is read from memory in the two gather orders: exact counts, no timing."""
import torch

from . import checks
from .sparse import unique_selection


def block_load_counts(sel, num_blocks, order="kv"):
    """Count the loads of every KV block when a selection is attended in the given order.

    order="query": a block is loaded once per (query, selection row) that chose it.
    order="kv": once per (batch, selection row, block) that at least one query chose.
    A block chosen twice in the same row counts once, as in `sparse_attention`.
    Args:
        sel: int [B, HI, T, K] block ids, -1 = none; num_blocks: NB; order: "query" or "kv".
    Returns:
        int64 [NB]: loads of each block, summed over batch and selection rows.
    """
    B, HI, T, _ = checks.tensor(sel, "sel", layout="[B, HI, T, K]")
    checks.positive_int(num_blocks, "num_blocks")
    checks.choice(order, "order", checks.ORDERS)
    checks.selection(sel, B, HI, T, num_blocks, sel.device)
    ids = unique_selection(sel).long()
    chosen = torch.zeros(B, HI, T, num_blocks + 1, dtype=torch.long, device=sel.device)
    chosen.scatter_(-1, torch.where(ids < 0, num_blocks, ids), 1)
    per_row = chosen[..., :num_blocks].sum(2)                                 # [B, HI, NB] queries per block
    loads = per_row if order == "query" else (per_row > 0).long()
    return loads.sum((0, 1))
