"""Checkers of notebooks 02 and 03, the block load counts and the indexer / gather pictures."""
import pytest
import torch
from matplotlib.figure import Figure

import m3lite as m3
from m3lite.attention.loads import block_load_counts
from m3lite.course import nb02, nb03
from m3lite.solutions import nb02 as sol02
from m3lite.solutions import nb03 as sol03
from m3lite.viz.gather import plot_load_counts, plot_selection_csr
from m3lite.viz.indexer import block_mass, plot_block_selection, plot_curves
from conftest import exercise_checker_tests

NEG_INF = float("-inf")


def block_max_not_causal(s, block_size):
    S = s.shape[-1]
    NB = -(-S // block_size)
    s = torch.nn.functional.pad(s, (0, NB * block_size - S), value=NEG_INF)
    return s.unflatten(-1, (NB, block_size)).amax(-1)


def top_k_not_forced(scores, top_k):
    k = min(top_k, scores.shape[-1])
    best, sel = scores.topk(k, dim=-1)
    sel = torch.where(best > NEG_INF, sel, -1)
    return torch.nn.functional.pad(sel, (0, top_k - k), value=-1)


def top_k_padding_first(scores, top_k):
    return sol02.top_k_blocks(scores, top_k).flip(-1)


def recall_minus_one_is_last_block(p, sel, block_size):
    S = p.shape[-1]
    NB = -(-S // block_size)
    mass = torch.nn.functional.pad(p, (0, NB * block_size - S)).unflatten(-1, (NB, block_size)).sum(-1)
    return mass.gather(-1, (sel.long() % NB)).sum(-1)


def count_loads_kv_per_query(sel, num_blocks):
    query_loads, _ = sol03.count_loads(sel, num_blocks)
    return query_loads, query_loads.clamp(max=1)


def invert_without_offsets_zero(sel, num_blocks):
    offsets, queries = sol03.invert_selection(sel, num_blocks)
    return offsets[1:], queries


def merge_naive(o1, lse1, o2, lse2):
    w1, w2 = torch.exp(lse1), torch.exp(lse2)
    return (w1[..., None] * o1 + w2[..., None] * o2) / (w1 + w2)[..., None], torch.log(w1 + w2)


CHECKS = [
    (nb02.check_block_max, sol02.block_max, block_max_not_causal),
    (nb02.check_top_k_blocks, sol02.top_k_blocks, top_k_not_forced),
    (nb02.check_top_k_blocks, sol02.top_k_blocks, top_k_padding_first),
    (nb02.check_recall, sol02.recall, recall_minus_one_is_last_block),
    (nb03.check_count_loads, sol03.count_loads, count_loads_kv_per_query),
    (nb03.check_invert_selection, sol03.invert_selection, invert_without_offsets_zero),
    (nb03.check_merge_two, sol03.merge_two, merge_naive),
]
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(
    [(check, solution, wrong, "") for check, solution, wrong in CHECKS])      # these checkers' hints are not tested


def test_top_k_checker_rejects_float_ids(capsys):
    assert nb02.check_top_k_blocks(lambda s, k: sol02.top_k_blocks(s, k).float()) is False
    assert "integers" in capsys.readouterr().out


def test_block_load_counts_by_hand():
    sel = torch.tensor([[[[0, -1], [1, 0], [2, 0]], [[0, 0], [-1, -1], [2, -1]]]], dtype=torch.int32)
    assert block_load_counts(sel, 4, "query").tolist() == [4, 1, 2, 0]   # the repeated 0 counts once
    assert block_load_counts(sel, 4, "kv").tolist() == [2, 1, 2, 0]


@pytest.mark.parametrize("B, HI, T, S, BS, K",
                         [(1, 1, 63, 63, 16, 3), (2, 2, 5, 37, 8, 2), (1, 3, 100, 100, 7, 20)],
                         ids=["B1-H1-T63-BS16-K3", "B2-H2-T5-S37-BS8-K2", "B1-H3-T100-BS7-K20"])
def test_block_load_counts_match_the_csr(B, HI, T, S, BS, K):
    torch.manual_seed(0)
    sel = m3.select_blocks(m3.block_scores(torch.randn(B, HI, T, 8), torch.randn(B, 1, S, 8), BS), K)
    NB = m3.num_blocks(S, BS)
    per_row = m3.build_block_csr(sel, NB).offsets.diff().view(B, HI, NB)
    assert torch.equal(block_load_counts(sel, NB, "query"), per_row.sum((0, 1)))
    assert torch.equal(block_load_counts(sel, NB, "kv"), (per_row > 0).sum((0, 1)))
    assert int(block_load_counts(sel, NB, "query").sum()) == int((sel >= 0).sum())
    assert torch.equal(sol03.count_loads(sel, NB)[0], block_load_counts(sel, NB, "query"))


@pytest.mark.parametrize("bad, error", [(torch.zeros(1, 1, 2, 2), TypeError),
                                        (torch.full((1, 1, 2, 2), 4, dtype=torch.int32), ValueError),
                                        (torch.zeros(2, 2, dtype=torch.int32), ValueError)])
def test_block_load_counts_rejects_bad_selections(bad, error):
    with pytest.raises(error):
        block_load_counts(bad, 4)


def test_block_load_counts_rejects_a_bad_order():
    with pytest.raises(ValueError, match="order"):
        block_load_counts(torch.zeros(1, 1, 2, 2, dtype=torch.int32), 4, order="rows")


def test_block_mass_sums_to_recall():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    s = torch.einsum("bhtd,bhsd->bhts", q, k) * 8 ** -0.5
    p = s.masked_fill(torch.arange(30) > torch.arange(30)[:, None], NEG_INF).softmax(-1)
    mass = block_mass(p, 7)                                                  # partial last block
    assert mass.shape == (1, 2, 30, 5)
    torch.testing.assert_close(mass.sum(-1), torch.ones(1, 2, 30))
    sel = m3.select_blocks(m3.block_scores(q, k[:, :1], 7), 2)
    torch.testing.assert_close(sol02.recall(p, sel, 7), m3.attention_recall(q, k, sel, 7))


def test_pictures_are_figures():
    torch.manual_seed(0)
    iq, ik = torch.randn(1, 1, 40, 8), torch.randn(1, 1, 40, 8)
    scores = m3.block_scores(iq, ik, 8)
    sel = m3.select_blocks(scores, 2)
    figs = [plot_block_selection(scores[0, 0], sel[0, 0], 40, 8),
            plot_block_selection(scores[0, 0], sel[0, 0], 40, 8, mass=scores[0, 0].softmax(-1)),
            plot_curves([1, 2, 4], {"a": [0.1, 0.5, 0.9]}, "top_k", logx=True),
            plot_load_counts({order: block_load_counts(sel, 5, order) for order in ("query", "kv")}),
            plot_selection_csr(sel[0, 0, :6], 5)]
    for fig in figs:
        assert isinstance(fig, Figure) and 80 <= fig.dpi <= 100
