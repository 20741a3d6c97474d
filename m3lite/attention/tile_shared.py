"""Tile-shared blocks: the part of a selection that a whole tile of consecutive queries chose.

Neighbouring queries mostly choose the same blocks (their own block always, and under any
locality in the index keys most of the rest). For a block that every query of a tile chose, the
KV-outer order would still gather each query and write a partial per query; a query-major pass
over the tile does better: it loads the block once for the whole tile and merges it on chip with
an online softmax, writing one (o, lse) per query for all the tile's shared blocks together. The
KV-outer order then keeps only what is left, and the usual merge by log-sum-exp joins the two.

`shared_blocks` and `rest_of_selection` are the plan (torch ops, used on the GPU as they are);
`tile_shared_attention` is the torch twin of the whole forward pass built on them.
"""
import torch

from .common import accum_dtype
from .kv_order import merge_partials


def tile_view(sel, tile):
    """sel [B, HI, T, K] -> [B, HI, ceil(T / tile), tile, K]; a partial last tile is padded with
    copies of the last query's row, which take nothing away from what the tile shares."""
    B, HI, T, K = sel.shape
    pad = -T % tile
    if pad:
        sel = torch.cat((sel, sel[:, :, -1:].expand(B, HI, pad, K)), dim=2)
    return sel.reshape(B, HI, -1, tile, K)


def shared_blocks(sel, tile, min_share=0.0):
    """[B, HI, ceil(T / tile), K]: for each tile of `tile` consecutive queries, the blocks that every
    query of the tile chose, each once, in ascending order, then -1 (a tile shares at most K).
    A tile whose shared blocks hold less than min_share of its chosen (query, block) pairs gets
    none: all of its selection stays with the KV-outer order."""
    tiles = tile_view(sel, tile)
    first = tiles[:, :, :, 0]                                       # candidates: the first query's blocks
    chosen_by = (tiles[..., :, None] == first[:, :, :, None, None, :]).any(-2)   # [B, HI, NT, tile, K]
    in_every = chosen_by.all(-2)
    K = sel.shape[-1]
    earlier = torch.ones(K, K, dtype=torch.bool, device=sel.device).tril(-1)
    repeat = ((first[..., :, None] == first[..., None, :]) & earlier).any(-1)   # an id the first query chose twice
    keep = in_every & (first >= 0) & ~repeat
    keep &= shares_enough(sel, keep.sum(-1), tile, min_share)[..., None]
    last = torch.iinfo(sel.dtype).max
    ordered = torch.where(keep, first, last).sort(dim=-1).values
    return torch.where(ordered == last, -1, ordered)


def shares_enough(sel, shared_per_tile, tile, min_share):
    """[B, HI, NT] bool: do a tile's shared_per_tile blocks, times its queries, make at least
    min_share of the (query, block) pairs its queries chose?"""
    T, num_tiles = sel.shape[2], shared_per_tile.shape[-1]
    queries_per_tile = (T - tile * torch.arange(num_tiles, device=sel.device)).clamp(max=tile)   # the last may be partial
    tile_of_query = torch.arange(T, device=sel.device) // tile
    chosen = torch.zeros_like(shared_per_tile).index_add_(2, tile_of_query, (sel >= 0).sum(-1))
    return shared_per_tile * queries_per_tile >= min_share * chosen


def rest_of_selection(sel, shared, tile):
    """sel [B, HI, T, K] with each query's tile-shared blocks replaced by -1: what the KV-outer
    pass keeps."""
    T = sel.shape[2]
    tiles = tile_view(sel, tile)                                    # [B, HI, NT, tile, K]
    per_tile = shared[:, :, :, None, None, :]                       # [B, HI, NT, 1, 1, K]
    is_shared = ((tiles[..., None] == per_tile) & (per_tile >= 0)).any(-1)
    return torch.where(is_shared, -1, tiles).flatten(2, 3)[:, :, :T]


def shared_per_query(shared, tile, T):
    """The tiles' shared blocks [B, HI, NT, K] as a selection [B, HI, T, K]: each query its tile's."""
    return shared.repeat_interleave(tile, dim=2)[:, :, :T]


def tile_shared_attention(q, k, v, sel, block_size, causal, scale, tile):
    """Torch twin of the Triton path: the tiles' shared blocks query-major, the rest KV-outer,
    merged by log-sum-exp. Arguments as m3lite.sparse_attention; returns (out, lse)."""
    from .sparse import sparse_attention
    shared = shared_blocks(sel, tile)
    rest = rest_of_selection(sel, shared, tile)
    parts = [sparse_attention(q, k, v, s, block_size, causal, scale, order=order, backend="torch", return_lse=True)
             for s, order in ((shared_per_query(shared, tile, q.shape[2]), "query"), (rest, "kv"))]
    acc = accum_dtype(q.dtype)
    out, lse = merge_partials(torch.stack([o.to(acc) for o, _ in parts], -2), torch.stack([l for _, l in parts], -1))
    return out.to(q.dtype), lse
