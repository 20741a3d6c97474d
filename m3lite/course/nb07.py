"""Checkers of notebook 07 (training the indexer): the distillation target of one query, the KL over
the selected blocks, and its gradient.

Expected answers come from the package: `block_attention_mass` for the target and
`indexer_distillation_loss` (with autograd for its gradient). When an answer is wrong in a way
learners often get it wrong, the verdict says which mistake it looks like.
"""
import torch

from ..attention import block_attention_mass, block_scores, indexer_distillation_loss, select_blocks
from ..attention.common import NEG_INF
from .checker import close, verdict

# (label, G query heads in the group, D, S keys, block_size): a partial last block, one block, one head.
MASS_SIZES = [("G2-D16-S64-BS16", 2, 16, 64, 16), ("G4-D32-S100-BS32 (partial last block)", 4, 32, 100, 32),
              ("G1-D8-S7-BS8 (one partial block)", 1, 8, 7, 8), ("G3-D8-S33-BS4", 3, 8, 33, 4),
              ("G2-D16-S48-BS16, sharp attention", 2, 16, 48, 16)]


def _group_qk(G, D, S, seed, sharp=False):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(G, D, generator=g), torch.randn(S, D, generator=g)
    return (q * 4 if sharp else q), k


def _target_of_one_query(q, k, block_size):
    """The package's target for one query (the newest token, position S - 1) of one KV group: [NB]."""
    return block_attention_mass(q[None, :, None], k[None, None], block_size, 1)[0, 0, 0]


def _blocks(p, block_size, reduce):
    """Per-block sum / mean / max of p [..., S] over the tokens of each block (the last one partial)."""
    S = p.shape[-1]
    NB = -(-S // block_size)
    fill = float("-inf") if reduce == "amax" else 0.0
    blocks = torch.nn.functional.pad(p, (0, NB * block_size - S), value=fill).unflatten(-1, (NB, block_size))
    if reduce == "mean":                                           # the mean over the block's real tokens
        counts = torch.full((NB,), float(block_size))
        counts[-1] = S - (NB - 1) * block_size
        return blocks.sum(-1) / counts
    return getattr(blocks, reduce)(-1)


def same_target(got, expected):
    """Compare one query's target; expected is (mass, q, k, block_size) so that hints can be found."""
    mass, q, k, bs = expected
    G, D = q.shape
    if isinstance(got, torch.Tensor) and got.shape == (G, mass.shape[0]) and G > 1:
        return False, (f"expected shape {tuple(mass.shape)}, got {tuple(got.shape)} (one target for the whole "
                       "group: average the heads' masses)")
    if isinstance(got, torch.Tensor) and got.dim() == 1 and len(got) == k.shape[0] // bs < len(mass):
        return False, (f"expected shape {tuple(mass.shape)}, got {tuple(got.shape)} (NB = ceil(S / block_size): "
                       "the last block may be partial, and it counts)")
    ok, why = close(got, mass)
    if ok or not isinstance(got, torch.Tensor) or got.shape != mass.shape:
        return ok, why
    got = got.detach().float().cpu()
    s = q @ k.T
    p = torch.softmax(s * D ** -0.5, -1)
    hints = [(_blocks(torch.softmax(s, -1), bs, "sum").mean(0), "scale the scores by D ** -0.5 before the softmax, "
                                                                "as the main attention does"),
             (_blocks(p, bs, "sum").sum(0), "average over the group's heads, don't add them up: the target sums to 1"),
             (_blocks(p, bs, "mean").mean(0), "a block's mass is the sum of its tokens' probabilities, not their mean"),
             (_blocks(p, bs, "amax").mean(0), "a block's mass is the sum of its tokens' probabilities; the max "
                                              "over a block is how the indexer scores, not what it is taught"),
             (torch.softmax(_blocks(s * D ** -0.5, bs, "amax"), -1).mean(0),
              "softmax over tokens first, then add up each block; a softmax over the blocks' best scores is "
              "what an indexer predicts, not the target")]
    hint = next((h for wrong, h in hints if wrong.shape == got.shape and torch.allclose(got, wrong, atol=1e-5)), "")
    return False, why + (f" ({hint})" if hint else "")


def check_block_mass_target(fn):
    """fn(q [G, D], k [S, D], block_size) -> [NB]: the group's attention mass per key block for one query."""
    cases = []
    for i, (label, G, D, S, bs) in enumerate(MASS_SIZES):
        q, k = _group_qk(G, D, S, seed=70 + i, sharp="sharp" in label)
        cases.append((label, (q.clone(), k.clone(), bs), (_target_of_one_query(q, k, bs), q, k, bs)))
    return verdict("block_mass_target", fn, cases, compare=same_target)


# -- the KL over the selected blocks, and its gradient

def _rows_from_a_layer(T, BS, top_k, seed, random_selection=False):
    """(scores, target, sel) rows [R, NB] from random index and attention q, k of T tokens: HQ 4, HKV 2."""
    g = torch.Generator().manual_seed(seed)
    iq, ik = torch.randn(1, 2, T, 8, generator=g), torch.randn(1, 1, T, 8, generator=g)
    q, k = torch.randn(1, 4, T, 16, generator=g), torch.randn(1, 2, T, 16, generator=g)
    scores = block_scores(iq, ik, block_size=BS)
    target = block_attention_mass(q, k, BS, 2)
    choice = scores
    if random_selection:                                    # as attention="random" picks: own block + random
        choice = torch.rand(scores.shape, generator=g).masked_fill(scores == NEG_INF, NEG_INF)
    sel = select_blocks(choice, top_k=top_k)
    return scores.flatten(0, 2), target.flatten(0, 2), sel.flatten(0, 2)


def _hand_rows():
    """Rows where every block is visible but fewer are selected, with -1 padding: block 0 and the last
    block in and out of the selection."""
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 0.2, -0.3, 0.8], [-2.0, 1.5, 0.0, 0.4],
                           [0.3, 0.1, 0.9, NEG_INF], [0.0, 0.0, 0.0, 0.0]])
    target = torch.tensor([[0.4, 0.1, 0.3, 0.2], [0.1, 0.2, 0.6, 0.1], [0.25, 0.25, 0.25, 0.25],
                           [0.5, 0.3, 0.2, 0.0], [0.05, 0.05, 0.1, 0.8]])
    sel = torch.tensor([[0, 2, -1], [1, -1, -1], [3, 1, -1], [2, 0, 1], [2, 1, -1]], dtype=torch.int32)
    return scores, target, sel


def _kl_cases():
    cases = [("hand-made: 5 rows, 4 blocks, -1 padding while the last block is visible", *_hand_rows())]
    for label, T, BS, K, seed, rnd in [("a layer: T40-BS8-K3, the indexer's own selection", 40, 8, 3, 71, False),
                                       ("a layer: T40-BS8-K3, random selections", 40, 8, 3, 72, True),
                                       ("a layer: T50-BS16-K2 (partial last block)", 50, 16, 2, 73, False)]:
        cases.append((label, *_rows_from_a_layer(T, BS, K, seed, rnd)))
    return cases


def _selected(scores, sel, pad_as=None):
    """Bool [R, NB]: the visible selected blocks; pad_as: what a mistaken -1 turns into (None: nothing)."""
    NB = scores.shape[-1]
    sel = sel.long()
    ids = torch.where(sel < 0, NB if pad_as is None else pad_as % NB, sel)
    chosen = torch.zeros(sel.shape[0], NB + 1, dtype=torch.bool).scatter_(-1, ids, True)[:, :NB]
    return chosen & (scores > NEG_INF)


def _kl(scores, target, keep, renormalise=True, reverse=False, cross_entropy=False, reduce="mean"):
    """The KL (or a mistaken variant) of target against softmax(scores), both restricted to `keep`."""
    t = torch.where(keep, target, 0.0)
    if renormalise:
        t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    log_p = torch.log_softmax(scores.masked_fill(~keep, NEG_INF), -1)
    log_t = torch.log(t.clamp_min(1e-30))
    if reverse:
        terms = torch.where(keep, log_p.exp() * (log_p - log_t), 0.0)
    else:
        terms = torch.where(t > 0, t * ((0.0 if cross_entropy else log_t) - log_p), 0.0)
    return getattr(terms.sum(-1), reduce)()


def _kl_mistakes(scores, target, sel):
    """(value, hint) of the usual wrong answers of `selected_kl` on one case."""
    keep, visible = _selected(scores, sel), scores > NEG_INF
    return [(_kl(scores, target, _selected(scores, sel, pad_as=-1)), "a -1 in sel is padding, not the last block "
                                                                     "(Python's negative indexing reads it as NB - 1)"),
            (_kl(scores, target, _selected(scores, sel, pad_as=0)), "a -1 in sel is padding: clamping it to 0 "
                                                                    "selects block 0"),
            (_kl(scores, target, keep, renormalise=False), "renormalise the target over the selected blocks: "
                                                           "both distributions must sum to 1 there"),
            (_kl(scores, target, visible), "that is the warm-up KL over every visible block; in the sparse phase "
                                           "only the selected blocks count"),
            (_kl(scores, target, keep, reverse=True), "KL(target || prediction): the target's probabilities weigh "
                                                      "the log ratio, not the prediction's"),
            (_kl(scores, target, keep, cross_entropy=True), "that is the cross-entropy; the KL also subtracts the "
                                                            "target's own entropy"),
            (_kl(scores, target, keep, reduce="sum"), "average over the rows, don't add them up")]


def same_kl(got, expected):
    """Compare one KL value; expected is (kl, scores, target, sel) so that hints can be found."""
    kl, scores, target, sel = expected
    if isinstance(got, (int, float)) and not isinstance(got, bool):
        got = torch.tensor(float(got))
    if not isinstance(got, torch.Tensor) or got.numel() != 1 or not got.dtype.is_floating_point:
        return False, f"expected one number (a 0-dim tensor or a float), got {got!r}"
    got = got.detach().reshape(()).float().cpu()
    ok, why = close(got, kl)
    if ok:
        return ok, why
    why = f"expected {kl.item():.6f}, got {got.item():.6f}"
    hint = next((h for wrong, h in _kl_mistakes(scores, target, sel)
                 if torch.allclose(got, wrong, atol=1e-5, rtol=1e-4) and not torch.allclose(wrong, kl)), "")
    return False, why + (f" ({hint})" if hint else "")


def check_selected_kl(fn):
    """fn(scores [R, NB], target [R, NB], sel [R, K]) -> the mean over rows of KL(target || softmax(scores)),
    both restricted to (and renormalised over) the selected blocks."""
    cases = [(label, (s.clone(), t.clone(), sel.clone()), (indexer_distillation_loss(s, t, sel), s, t, sel))
             for label, s, t, sel in _kl_cases()]
    return verdict("selected_kl", fn, cases, compare=same_kl)


def _kl_gradient(scores, target, sel):
    """d indexer_distillation_loss(scores, target, sel) / d scores, by autograd: [R, NB]."""
    s = scores.clone().requires_grad_(True)
    indexer_distillation_loss(s, target, sel).backward()
    return s.grad


def _gradient_mistakes(scores, target, sel):
    """(value, hint) of the usual wrong answers of `kl_gradient` on one case."""
    R = scores.shape[0]
    keep, visible = _selected(scores, sel), scores > NEG_INF

    def grad(keep, renormalise=True):
        t = torch.where(keep, target, 0.0)
        if renormalise:
            t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
        p = torch.softmax(scores.masked_fill(~keep, NEG_INF), -1).nan_to_num(0.0)
        return torch.where(keep, p - t, 0.0)

    right = grad(keep) / R
    return [(-right, "the sign: the gradient is prediction minus target, so a step against it raises the score "
                     "of a block whose predicted share is below its target"),
            (grad(keep), "the loss is a mean over the rows: divide by their number"),
            (grad(visible) / R, "blocks outside the selection get no gradient in the sparse phase: the loss "
                                "does not see them"),
            (grad(_selected(scores, sel, pad_as=-1)) / R, "a -1 in sel is padding, not the last block"),
            (grad(keep, renormalise=False) / R, "renormalise the target over the selected blocks first")]


def same_gradient(got, expected):
    """Compare a gradient [R, NB]; expected is (grad, scores, target, sel) so that hints can be found."""
    grad, scores, target, sel = expected
    if isinstance(got, torch.Tensor) and got.shape == grad.shape and got.dtype.is_floating_point:
        got = got.detach().float().cpu()
        if got.isnan().any() and not got[scores > NEG_INF].isnan().any():
            return False, "NaN at an invisible block: a block with a -inf score gets gradient 0"
    ok, why = close(got, grad)
    if ok or not isinstance(got, torch.Tensor) or got.shape != grad.shape:
        return ok, why
    hint = next((h for wrong, h in _gradient_mistakes(scores, target, sel)
                 if torch.allclose(got, wrong, atol=1e-6, rtol=1e-4) and not torch.allclose(wrong, grad)), "")
    return False, why + (f" ({hint})" if hint else "")


def check_kl_gradient(fn):
    """fn(scores [R, NB], target [R, NB], sel [R, K]) -> [R, NB]: the gradient of `selected_kl` (mean over
    rows) with respect to the scores."""
    cases = [(label, (s.clone(), t.clone(), sel.clone()), (_kl_gradient(s, t, sel), s, t, sel))
             for label, s, t, sel in _kl_cases()]
    return verdict("kl_gradient", fn, cases, compare=same_gradient)
