"""Reference solutions of notebook 04 (Triton kernels): sort key, KV-outer program list, useful FLOPs,
tile-shared blocks."""
import torch


def sort_key(x):
    """int32 keys of float32 x that sort like the floats: flip the 31 low bits of negative floats."""
    bits = x.contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def kv_program_loads(sel, num_blocks, per_program):
    """[P, NB] loads of the KV-outer programs: blocks in order, each block's queries cut in pieces."""
    chosen_by = torch.zeros(num_blocks, dtype=torch.long)
    for j in sel[sel >= 0].tolist():
        chosen_by[j] += 1
    rows = []
    for j, n in enumerate(chosen_by.tolist()):
        for _ in range(-(-n // per_program)):                       # ceil(n / per_program) programs
            row = torch.zeros(num_blocks, dtype=torch.long)
            row[j] = 1
            rows.append(row)
    return torch.stack(rows) if rows else torch.zeros(0, num_blocks, dtype=torch.long)


def useful_flops(sel, S, block_size, HQ, D):
    """4 * D * (query heads per selection row) * (query, visible token) pairs of the selected blocks."""
    B, HI, T, K = sel.shape
    pos = torch.arange(S - T, S)[:, None]                           # [T, 1] the queries' positions
    start = sel.long() * block_size                                 # first token of each selected block
    end = torch.minimum(start + block_size, torch.minimum(pos + 1, torch.tensor(S)))
    visible = torch.where(sel >= 0, (end - start).clamp(min=0), 0)
    return 4 * D * (HQ // HI) * int(visible.sum())


def tile_shared_blocks(sel, tile):
    """For each tile of `tile` consecutive queries: the blocks all of them chose, ascending, then -1."""
    T, K = sel.shape
    rows = []
    for first in range(0, T, tile):
        chosen = [set(j for j in sel[t].tolist() if j >= 0) for t in range(first, min(first + tile, T))]
        shared = sorted(set.intersection(*chosen))
        rows.append(shared + [-1] * (K - len(shared)))
    return torch.tensor(rows, dtype=torch.int32)
