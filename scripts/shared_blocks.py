"""How much of a selection lies in blocks that a whole tile of consecutive queries chose?

Those (query, block) pairs need no partial output: a query-major program over the tile could load
such a block once for all its queries and merge it on chip, the way FlexAttention gains on the
locality pattern. The rest would stay with the KV-outer kernel. This counts the share for the
prefill benchmark's two selection patterns (m3lite.bench.prefill, one selection row, B = 1).

Usage (CPU is fine): python scripts/shared_blocks.py [--tokens 16384] [--tiles 4 8 16 32 128]
"""
import argparse

import torch

import m3lite as m3
from m3lite.attention.common import chosen_blocks
from m3lite.bench.prefill import index_inputs, random_selection


def shared_share(chosen, tile):
    """Share of the chosen (query, block) pairs whose block every query of its tile chose."""
    T, NB = chosen.shape
    whole_tile = chosen[: T // tile * tile].view(-1, tile, NB).all(1)
    return (whole_tile.sum() * tile / chosen.sum()).item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--tiles", type=int, nargs="+", default=[4, 8, 16, 32, 128])
    args = parser.parse_args()
    T, BS, K, D = args.tokens, 128, 16, 128
    NB = m3.num_blocks(T, BS)
    cpu = torch.device("cpu")
    iq, ik = index_inputs(1, 1, T, D, "locality", cpu)
    selections = {
        "random": random_selection(1, 1, T, NB, BS, K, cpu, seed=0, backend="torch")[0, 0],
        "locality": m3.select_blocks(m3.block_scores(iq.float(), ik.float(), block_size=BS, backend="torch"),
                                     top_k=K, backend="torch")[0, 0],
    }
    print(f"T = {T} tokens, blocks of {BS}, top-{K}: share of (query, block) pairs in blocks that every query "
          f"of a tile of consecutive queries chose")
    for name, sel in selections.items():
        chosen = chosen_blocks(sel, NB)
        print(f"  {name:>8}: " + "  ".join(f"tile {tile}: {shared_share(chosen, tile):.1%}" for tile in args.tiles))
