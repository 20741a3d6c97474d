"""Reference solutions of notebook 05 (decoding): cache growth, query positions, bytes per step, the bound."""
import torch


def capacities(counts, block_size, capacity):
    """Capacity of a one-sequence cache after each append: whole blocks, doubling when it must grow."""
    def whole_blocks(n):
        return -(-n // block_size) * block_size
    capacity, length, after = whole_blocks(capacity), 0, []
    for n in counts:
        length += n
        if length > capacity:
            capacity = whole_blocks(max(length, 2 * capacity))
        after.append(capacity)
    return after


def query_positions(lengths, n):
    """int64 [B, n]: query i of sequence b is one of its last n tokens, at lengths[b] - n + i."""
    return torch.tensor(lengths)[:, None] - n + torch.arange(n)


def decode_bytes(S, B=1, HKV=4, D=128, DI=128, BS=128, K=16, kv_bytes=2, index_bytes=2):
    """(dense, msa) bytes one decode step reads: all of K and V, or all index keys plus K blocks of K and V."""
    dense = 2 * B * HKV * S * D * kv_bytes
    index_scan = B * S * DI * index_bytes
    selected = 2 * B * HKV * min(S, K * BS) * D * kv_bytes
    return dense, index_scan + selected


def speedup_bound(HKV=4, D=128, DI=128, kv_bytes=2, index_bytes=2):
    """dense / MSA bytes per step as S grows without end: K and V per token over index keys per token."""
    return 2 * HKV * D * kv_bytes / (DI * index_bytes)
