"""order="kv": KV outer, gather Q, in plain torch, with its backward pass.

The selection is inverted into a key-block -> queries map (CSR). Each KV block is loaded once and
attends every query that chose it, with an exact softmax over that one block; the partial
(o, lse) of every (query, slot) is written once, then the K partials of each query are merged by
log-sum-exp. The backward pass runs in the same order: each block is loaded once more to add its
share of dq (scattered back to its queries) and to produce its own dk and dv.
"""
from typing import NamedTuple

import torch

from .common import NEG_INF, accum_dtype, exp_and_lse, query_positions
from .indexer import num_blocks


class BlockCSR(NamedTuple):
    """The selection inverted: for every (batch, index head, KV block), the queries that chose it.

    Row r = (b * HI + hi) * NB + j lists entries offsets[r]:offsets[r + 1] of `query` (the query
    index t) and `slot` (where in sel[b, hi, t] the block was chosen, 0..K-1), queries in order;
    `entry` is each entry's flat index into sel, which is also where its partial result goes.
    """
    offsets: torch.Tensor  # int64 [B * HI * NB + 1]
    query: torch.Tensor    # int64 [nnz]
    slot: torch.Tensor     # int64 [nnz]
    entry: torch.Tensor    # int64 [nnz]


def build_block_csr(sel, num_blocks):
    """Invert a selection sel [B, HI, T, K] (ids in [-1, NB)) into a key-block -> queries CSR."""
    B, HI, T, K = sel.shape
    flat = sel.reshape(B * HI, T * K)
    valid = flat >= 0
    key_dtype = torch.int32 if B * HI * num_blocks < 2 ** 31 else torch.int64   # a faster sort
    row_of_entry = (torch.arange(B * HI, device=sel.device, dtype=key_dtype)[:, None] * num_blocks
                    + flat.to(key_dtype))[valid]
    entry = torch.arange(B * HI * T * K, device=sel.device).view(B * HI, T * K)[valid]
    order = torch.argsort(row_of_entry, stable=True)          # stable: queries stay in order
    counts = torch.bincount(row_of_entry, minlength=B * HI * num_blocks)
    offsets = torch.zeros(B * HI * num_blocks + 1, dtype=torch.long, device=sel.device)
    offsets[1:] = counts.cumsum(0)
    entry = entry[order]
    return BlockCSR(offsets, (entry // K) % T, entry % K, entry)


def merge_partials(o, lse):
    """Merge partial attention results like flash-decoding's split-KV combine.

    Args:
        o: [..., P, D] partial outputs, each normalised over its own part; lse: [..., P] their
        log-sum-exps (-inf for an empty part).
    Returns:
        (o [..., D], lse [...]): the softmax over the union of the parts; zeros and -inf if all are empty.
    """
    w, total, merged_lse = exp_and_lse(lse)                        # w: the weight of each part
    out = w[..., 0, None] * o[..., 0, :]
    for i in range(1, o.shape[-2]):
        out = out.addcmul_(w[..., i, None], o[..., i, :])
    return out / total, merged_lse


def block_of_entry(csr, num_blocks):
    """The block id of each CSR entry."""
    row = torch.repeat_interleave(torch.arange(len(csr.offsets) - 1, device=csr.query.device), csr.offsets.diff())
    return row % num_blocks


class _Blocks:
    """The loop over (batch, index head, KV block) rows of the CSR that both passes share.

    Queries are kept in "row layout" [B, HI, T, R, G, D]: the R * G query heads that share a
    selection row side by side, so that gathering a block's queries is one index_select.
    """

    def __init__(self, q, k, v, sel_shape, block_size, causal, scale, csr):
        B, HQ, T, D = q.shape
        HKV, S = k.shape[1], k.shape[2]
        self.HI, self.K = sel_shape[1], sel_shape[3]
        self.NB, self.G, self.R = num_blocks(S, block_size), HQ // HKV, HKV // self.HI
        self.shape, self.block_size, self.csr = (B, HQ, T, D), block_size, csr
        pad = self.NB * block_size - S
        blocks = (B, self.HI, self.R, self.NB, block_size, D)
        self.kb = torch.nn.functional.pad(k, (0, 0, 0, pad)).view(blocks)
        self.vb = torch.nn.functional.pad(v, (0, 0, 0, pad)).view(blocks)
        self.q_rows = self.to_rows(q * scale)
        # per CSR entry: where its partial goes, and the first token of its block it may not see
        self.slot_index, block = csr.entry, block_of_entry(csr, self.NB)
        start = block * block_size
        first_hidden = (S - start).clamp(max=block_size)                 # a partial last block ends early
        if causal:
            first_hidden = torch.minimum(first_hidden, query_positions(T, S, q.device)[csr.query] + 1 - start)
        self.first_hidden = first_hidden.clamp(min=0)
        partly_hidden = torch.cat((csr.offsets.new_zeros(1), (self.first_hidden < block_size).cumsum(0)))
        self.partly_hidden = (partly_hidden[csr.offsets[1:]] - partly_hidden[csr.offsets[:-1]]).tolist()

    def to_rows(self, x):
        """[B, HQ, T, ...] -> [B, HI, T, R, G, ...]."""
        B, HQ, T = x.shape[:3]
        x = x.view(B, self.HI, self.R, self.G, T, *x.shape[3:])
        return x.movedim(4, 2).contiguous()

    def from_rows(self, x):
        """[B, HI, T, R, G, ...] -> [B, HQ, T, ...]."""
        B, HQ, T = self.shape[:3]
        return x.movedim(2, 4).reshape(B, HQ, T, *x.shape[5:])

    def __iter__(self):
        """Yield (b, h, j, lo, hi, t, q, s) for every block row that some query chose:
        t the queries, q [n, R, G, D] their scaled rows, s [R, n, G, BS] their masked scores."""
        offsets = self.csr.offsets.tolist()
        for row in range(len(offsets) - 1):
            lo, hi = offsets[row], offsets[row + 1]
            if lo == hi:
                continue
            b, h, j = row // (self.HI * self.NB), (row // self.NB) % self.HI, row % self.NB
            t = self.csr.query[lo:hi]                                  # the queries that chose block j
            q = self.q_rows[b, h].index_select(0, t)                   # gather Q
            s = rows_matmul(q.transpose(0, 1), self.kb[b, h, :, j].transpose(1, 2))
            masked = self.partly_hidden[row]
            if masked:  # queries are in order, so the ones that need a mask come first
                hidden = torch.arange(self.block_size, device=s.device) >= self.first_hidden[lo:lo + masked, None]
                s[:, :masked].masked_fill_(hidden[:, None, :], NEG_INF)
            yield b, h, j, lo, hi, t, q, s


def rows_matmul(x, w):
    """x [R, n, G, A] @ w [R, A, C] -> [R, n, G, C]: one matmul per KV head over all (query, head) rows."""
    R, n, G, A = x.shape
    return (x.reshape(R, n * G, A) @ w).view(R, n, G, w.shape[-1])


def kv_forward(blocks):
    """The partial (o, lse) of every (query, slot), written once per block, then merged per query.

    Returns (o [B, HI, T, R, G, D], lse [B, HI, T, R, G]) in row layout.
    """
    B, HQ, T, D = blocks.shape
    R, G, K = blocks.R, blocks.G, blocks.K
    o_slots = blocks.q_rows.new_zeros(B * blocks.HI * T * K, R, G, D)   # unused slots stay empty:
    lse_slots = blocks.q_rows.new_full((B * blocks.HI * T * K, R, G), NEG_INF)   # o = 0, lse = -inf
    for b, h, j, lo, hi, t, q, s in blocks:
        e, l, lse = exp_and_lse(s, overwrite=True)                      # exact softmax over one block
        o = rows_matmul(e, blocks.vb[b, h, :, j]).div_(l)               # [R, n, G, D]
        o_slots.index_copy_(0, blocks.slot_index[lo:hi], o.transpose(0, 1))
        lse_slots.index_copy_(0, blocks.slot_index[lo:hi], lse.transpose(0, 1))
    o_slots, lse_slots = o_slots.view(-1, K, R, G, D), lse_slots.view(-1, K, R, G)   # [B * HI * T, K, ...]
    o, lse = merge_partials(o_slots.movedim(1, -2), lse_slots.movedim(1, -1))
    return o.view(B, blocks.HI, T, R, G, D), lse.view(B, blocks.HI, T, R, G)


def kv_backward(blocks, o, lse, do, dlse):
    """Gradients in the same KV-outer order, all tensors in row layout. Returns (dq, dk, dv).

    With P the softmax over all of a query's selected tokens (exp(s - lse)): dv = P^T dO,
    dS = P * (dO V^T - delta) with delta = rowsum(dO * O) - dlse, dk = dS^T q, dq = dS k.
    """
    delta = (do * o).sum(-1) - dlse                                    # [B, HI, T, R, G]
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    dq, dkb, dvb = torch.zeros_like(blocks.q_rows), torch.zeros_like(blocks.kb), torch.zeros_like(blocks.vb)
    for b, h, j, lo, hi, t, q, s in blocks:
        p = s.sub_(lse[b, h, t].transpose(0, 1)[..., None]).exp_()     # [R, n, G, BS]
        do_t = do[b, h, t].transpose(0, 1)                              # [R, n, G, D]
        dp = rows_matmul(do_t, blocks.vb[b, h, :, j].transpose(1, 2))
        ds = p * (dp - delta[b, h, t].transpose(0, 1)[..., None])
        dvb[b, h, :, j] += p.flatten(1, 2).transpose(1, 2) @ do_t.flatten(1, 2)
        dkb[b, h, :, j] += ds.flatten(1, 2).transpose(1, 2) @ q.transpose(0, 1).flatten(1, 2)
        dq[b, h].index_add_(0, t, rows_matmul(ds, blocks.kb[b, h, :, j]).transpose(0, 1))
    return dq, dkb, dvb


class KVOrderAttention(torch.autograd.Function):
    """sparse_attention(order="kv") in torch, with the KV-outer backward above."""

    @staticmethod
    def forward(ctx, q, k, v, sel, block_size, causal, scale):
        acc = accum_dtype(q.dtype)
        csr = build_block_csr(sel, num_blocks(k.shape[2], block_size))
        blocks = _Blocks(q.to(acc), k.to(acc), v.to(acc), sel.shape, block_size, causal, scale, csr)
        o, lse = kv_forward(blocks)
        ctx.save_for_backward(q, k, v, o, lse, *csr)
        ctx.config = (sel.shape, block_size, causal, scale)
        return blocks.from_rows(o).to(q.dtype), blocks.from_rows(lse)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do, dlse):
        q, k, v, o, lse, *csr = ctx.saved_tensors
        sel_shape, block_size, causal, scale = ctx.config
        acc = accum_dtype(q.dtype)
        blocks = _Blocks(q.to(acc), k.to(acc), v.to(acc), sel_shape, block_size, causal, scale, BlockCSR(*csr))
        dq, dkb, dvb = kv_backward(blocks, o, lse, blocks.to_rows(do.to(acc)), blocks.to_rows(dlse.to(acc)))
        B, HKV, S, D = k.shape
        dk = dkb.view(B, HKV, -1, D)[:, :, :S]
        dv = dvb.view(B, HKV, -1, D)[:, :, :S]
        dq = blocks.from_rows(dq) * scale
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None
