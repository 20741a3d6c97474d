"""The block indexer: score KV blocks for every query, then pick the top-k of them."""
import torch
from torch import nn

from . import checks
from .common import NEG_INF, chosen_blocks, query_positions
from .rope import apply_rope, rope_angles

# Query rows per chunk are chosen so that one chunk's token scores hold about this many floats.
SCORE_CHUNK_ELEMENTS = 1 << 24


def num_blocks(S, block_size):
    """NB = ceil(S / block_size); the last block may be partial."""
    return -(-S // block_size)


def block_scores(iq, ik, block_size=128, causal=True, scale=None, backend="auto"):
    """Score every KV block for every query: the max of iq . ik * scale over its visible tokens.

    Works in chunks of queries so that memory stays near the output size, never T x S per head.
    Args:
        iq: [B, HI, T, DI] index queries; ik: [B, 1, S, DI] the shared index keys.
        block_size: tokens per block (BS); causal: bottom-right aligned visibility.
        scale: default DI ** -0.5.
    Returns:
        float32 [B, HI, T, NB]; -inf for a block with no visible token.
    """
    B, HI, T, S, DI = checks.index_qk(iq, ik)
    checks.positive_int(block_size, "block_size")
    checks.flag(causal, "causal")
    checks.causal_lengths(causal, T, S)
    checks.scale(scale)
    scale = DI ** -0.5 if scale is None else scale
    if checks.backend(backend, iq, ik) == "triton":
        from .. import kernels
        return kernels.block_scores(iq, ik, block_size, causal, scale)
    NB = num_blocks(S, block_size)
    out = torch.empty(B, HI, T, NB, dtype=torch.float32, device=iq.device)
    pos = query_positions(T, S, iq.device)
    keys = ik[:, 0].float()                                                    # [B, S, DI]
    chunk = max(1, SCORE_CHUNK_ELEMENTS // (B * HI * S))
    for start in range(0, T, chunk):
        rows = slice(start, min(start + chunk, T))
        out[:, :, rows] = _chunk_block_scores(iq[:, :, rows].float(), keys, pos[rows], block_size, NB, causal)
    return out * scale


def _chunk_block_scores(iq, keys, pos, block_size, NB, causal):
    """Block scores for one chunk of queries; keys past the chunk's last visible token are skipped."""
    B, HI, C, _ = iq.shape
    S = keys.shape[1]
    last = int(pos[-1]) + 1 if causal else S
    nb_seen = num_blocks(last, block_size)
    s = torch.einsum("bhcd,bsd->bhcs", iq, keys[:, :last])                    # [B, HI, C, last]
    if causal:
        s = s.masked_fill(torch.arange(last, device=s.device) > pos[:, None], NEG_INF)
    s = nn.functional.pad(s, (0, nb_seen * block_size - last), value=NEG_INF)
    scores = s.view(B, HI, C, nb_seen, block_size).amax(-1)
    return nn.functional.pad(scores, (0, NB - nb_seen), value=NEG_INF)


def select_blocks(scores, top_k=16, local=True, backend="auto"):
    """Pick each query's blocks: its own (local) block, then the best-scoring other visible blocks.

    Args:
        scores: float [B, HI, T, NB] from `block_scores` (-inf = not visible).
        top_k: blocks per query (K); local: force the row's last visible block.
    Returns:
        int32 [B, HI, T, top_k]: min(top_k, visible blocks) distinct ids, -1 padding at the tail.
    """
    checks.scores(scores)
    checks.positive_int(top_k, "top_k")
    checks.flag(local, "local")
    if checks.backend(backend, scores) == "triton":
        from .. import kernels
        return kernels.select_blocks(scores, top_k, local)
    NB = scores.shape[-1]
    visible = scores > NEG_INF
    ranked = scores.float()
    if local:
        ids = torch.arange(NB, device=scores.device)
        last_visible = torch.where(visible, ids, -1).amax(-1, keepdim=True)   # [B, HI, T, 1]
        ranked = ranked.masked_fill(ids == last_visible, float("inf"))
    best, sel = ranked.topk(min(top_k, NB), dim=-1)
    sel = torch.where(best > NEG_INF, sel, -1).to(torch.int32)
    if top_k > NB:
        sel = nn.functional.pad(sel, (0, top_k - NB), value=-1)
    return sel


class Indexer(nn.Module):
    """MSA's indexer: one index-query head per KV group and ONE shared index-key head.

    Args:
        dim: model width; num_index_heads: HI (one per KV group in M3); index_dim: DI;
        rope_dim: leading dims of each index head that get rotary embedding (0: none).
    """

    def __init__(self, dim, num_index_heads=4, index_dim=128, rope_dim=0, rope_base=10000.0):
        super().__init__()
        checks.positive_int(dim, "dim")
        checks.positive_int(num_index_heads, "num_index_heads")
        checks.positive_int(index_dim, "index_dim")
        if rope_dim < 0 or rope_dim > index_dim or rope_dim % 2:
            raise ValueError(f"rope_dim must be even and in [0, index_dim={index_dim}], got {rope_dim}")
        self.num_index_heads, self.index_dim, self.rope_dim = num_index_heads, index_dim, rope_dim
        self.rope_base = rope_base
        self.wq = nn.Linear(dim, num_index_heads * index_dim, bias=False)
        self.wk = nn.Linear(dim, index_dim, bias=False)
        self.k_norm = nn.RMSNorm(index_dim)

    def forward(self, x, positions=None):
        """Project hidden states x [B, T, dim] to iq [B, HI, T, DI] and ik [B, 1, T, DI]."""
        checks.tensor(x, "x", rank=3, layout="[B, T, dim]")
        B, T, _ = x.shape
        iq = self.wq(x).view(B, T, self.num_index_heads, self.index_dim).transpose(1, 2)
        ik = self.k_norm(self.wk(x)).unsqueeze(1)
        if self.rope_dim:
            if positions is None:
                positions = torch.arange(T, device=x.device)
            cos, sin = rope_angles(positions, self.rope_dim, self.rope_base)
            iq, ik = apply_rope(iq, cos, sin), apply_rope(ik, cos, sin)
        return iq, ik


def block_attention_mass(q, k, block_size, HI, causal=True, scale=None, grad=False):
    """The main attention's mass per key block, averaged over the query heads that share each index
    head: the indexer's distillation target, float32 [B, HI, T, NB] (rows sum to 1). No gradient,
    unless grad=True (for a loss on the main attention itself)."""
    B, HQ, T, D = q.shape
    HKV, S = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        kk = k.float().repeat_interleave(HQ // HKV, 1)
        s = (q.float() @ kk.transpose(-1, -2)) * scale                           # [B, HQ, T, S]
        if causal:
            s = s.masked_fill(torch.arange(S, device=q.device) > query_positions(T, S, q.device)[:, None],
                              NEG_INF)
        p = torch.softmax(s, -1)
        NB = num_blocks(S, block_size)
        p = nn.functional.pad(p, (0, NB * block_size - S)).view(B, HQ, T, NB, block_size).sum(-1)
        return p.view(B, HI, HQ // HI, T, NB).mean(2)


def indexer_distillation_loss(scores, target, sel=None):
    """KL(target || softmax(scores)): teach the indexer where the main attention looks.

    scores: [B, HI, T, NB] block scores from the indexer (with gradient; -inf = invisible);
    target: `block_attention_mass` of the main attention. With `sel` (the selected blocks
    [B, HI, T, K], -1 padded), both are restricted and renormalised to the selected blocks, as in
    MSA's training after a dense warm-up over all visible blocks (sel=None). Mean over rows.
    """
    visible = scores > NEG_INF
    if sel is not None:
        visible = visible & chosen_blocks(sel, scores.shape[-1])
    target = torch.where(visible, target, 0.0)
    target = target / target.sum(-1, keepdim=True).clamp_min(1e-12)
    log_pred = torch.log_softmax(scores.masked_fill(~visible, NEG_INF), -1)
    terms = torch.where(target > 0, target * (torch.log(target.clamp_min(1e-30)) - log_pred), 0.0)
    return terms.sum(-1).mean()
