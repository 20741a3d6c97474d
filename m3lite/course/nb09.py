"""Checkers of notebook 09 (the sparsity explorer): the blocks of a token span, the best recall a selection can reach.

Expected answers come from the package (`m3lite.viz.explorer.span_blocks` and `oracle_recall`, which the
explorer draws with). When an answer is wrong in a way learners often get it wrong, the verdict says which
mistake it looks like.
"""
import torch

from ..attention import num_blocks
from ..viz.explorer import oracle_recall, span_blocks, synthetic_source
from .checker import close, verdict

SPANS = [((0, 1), 32), ((246, 272), 16), ((246, 272), 32), ((64, 96), 32), ((31, 33), 32), ((10, 11), 1),
         ((100, 300), 64), ((5, 6), 4)]


def same_blocks(got, expected):
    """Compare block ids; expected is (ids, span, block_size) so that hints can be found."""
    ids, (start, end), bs = expected
    if isinstance(got, torch.Tensor):
        got = got.tolist()
    if not isinstance(got, (list, tuple)) or not all(isinstance(j, int) and not isinstance(j, bool) for j in got):
        return False, f"expected a list of ints, got {got!r}"
    got = list(got)
    if got == ids:
        return True, ""
    hints = [(list(range(start // bs, end // bs + 1)), "end is exclusive: the span's last token is end - 1"),
             (list(range(start // bs, end // bs)), "count the block of the last token, end - 1, even when the "
                                                   "span covers only part of it"),
             ([start // bs], "a span can cross a block boundary: list every block from the first token's to the "
                             "last token's"),
             (sorted(ids, reverse=True), "ascending order, please")]
    hint = next((h for wrong, h in hints if got == wrong), "")
    return False, f"expected {ids}, got {got}" + (f" ({hint})" if hint else "")


def check_span_blocks(fn):
    """fn(start, end, block_size) -> ascending list of the block ids that tokens [start, end) touch."""
    cases = [(f"start={a}, end={b}, block_size={bs}", (a, b, bs), (span_blocks((a, b), bs), (a, b), bs))
             for (a, b), bs in SPANS]
    return verdict("span_blocks", fn, cases, compare=same_blocks)


def _mass_cases():
    """(label, mass [T, NB], block_size): a synthetic head's attention mass per block at several sizes."""
    source = synthetic_source(S=72, roles=("local", "sink"), HKV=1, needles=2, seed=3)
    probs = source.layers[0].probs
    cases = []
    for head, bs in ((0, 16), (1, 16), (0, 5), (1, 72)):
        p = probs[head]
        NB = num_blocks(p.shape[-1], bs)
        mass = torch.nn.functional.pad(p, (0, NB * bs - p.shape[-1])).unflatten(-1, (NB, bs)).sum(-1)
        cases.append((f"T72-BS{bs}-head{head}", mass, bs))
    by_hand = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.7, 0.3, 0], [0.6, 0.4, 0], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1]])
    cases.append(("hand-made T6-BS2, the own block the lightest", by_hand, 2))
    return cases


def same_recall(got, expected):
    """Compare oracle recalls; expected is (recall, mass, top_k, block_size) so that hints can be found."""
    recall, mass, top_k, bs = expected
    ok, why = close(got, recall)
    if ok or not isinstance(got, torch.Tensor) or got.shape != recall.shape:
        return ok, why
    got = got.to(recall.dtype)
    own = (torch.arange(mass.shape[0]) // bs)[:, None]
    own_mass = mass.gather(-1, own)[:, 0]
    NB = mass.shape[-1]
    hints = [(mass.topk(min(top_k, NB), -1).values.sum(-1), "the own block is forced: it counts even when it is "
                                                            "not among the heaviest blocks"),
             (own_mass + mass.scatter(-1, own, 0.0).topk(min(top_k, NB), -1).values.sum(-1),
              "top_k counts the own block too: own block + top_k - 1 others"),
             (own_mass + mass.topk(min(top_k - 1, NB), -1).values.sum(-1),
              "leave the own block out of the others, or it may count twice")]
    hint = next((h for wrong, h in hints if torch.allclose(got, wrong, atol=1e-5)), "")
    return False, why + (f" ({hint})" if hint else "")


def check_oracle_recall(fn):
    """fn(mass, top_k, block_size) -> [T]: the own block's mass plus the top_k - 1 heaviest other blocks'."""
    cases = []
    for label, mass, bs in _mass_cases():
        for top_k in (1, 2, 4, mass.shape[-1] + 1):
            cases.append((f"{label}-K{top_k}", (mass.clone(), top_k, bs),
                          (oracle_recall(mass, top_k, bs), mass, top_k, bs)))
    return verdict("oracle_recall", fn, cases, compare=same_recall)
