"""Checkers of notebooks 00 and 01: right for the reference solutions, wrong for wrong answers, never raising.

Also the pure picture helpers those notebooks use (m3lite.viz.attention).
"""
import pytest
import torch
from matplotlib.figure import Figure

from m3lite.attention.common import query_positions
from m3lite.course import nb00, nb01
from m3lite.solutions import nb00 as sol00
from m3lite.solutions import nb01 as sol01
from m3lite.viz.attention import (SELECTION_COLORS, SELECTION_NAMES, selection_categories,
                                  show_categories, tile_categories)


def _capped_prefill(S, top_k, block_size):
    i = torch.arange(S)
    return S * (S + 1) // 2, int((i + 1).clamp(max=top_k * block_size).sum())


def _unguarded_online_softmax(s, v, block):
    m = torch.full(s.shape[:1], float("-inf"))
    l, acc = torch.zeros(s.shape[0]), torch.zeros(s.shape[0], v.shape[1])
    for start in range(0, s.shape[1], block):
        chunk = s[:, start:start + block]
        m_new = torch.maximum(m, chunk.amax(-1))
        alpha, p = torch.exp(m - m_new), torch.exp(chunk - m_new[:, None])
        l, acc, m = l * alpha + p.sum(-1), acc * alpha[:, None] + p @ v[start:start + block], m_new
    return acc / l[:, None]


# (checker, reference solution, wrong answers)
EXERCISES = {
    "own_block": (nb00.check_own_block, sol00.own_block, [
        lambda T, S, bs: torch.arange(T) // bs,                                   # top-left alignment
        lambda T, S, bs: torch.arange(S - T, S) // bs + 1,                        # off by one block
    ]),
    "msa_attended_tokens": (nb00.check_msa_attended_tokens, sol00.msa_attended_tokens, [
        lambda sel, S, bs: (sel >= 0).sum(-1) * bs,                              # every block counted full
        lambda sel, S, bs: torch.where(sel >= 0, bs, 0).sum(-1).clamp(max=S),
    ]),
    "prefill_attended_tokens": (nb00.check_prefill_attended_tokens, sol00.prefill_attended_tokens, [
        _capped_prefill,                                                          # the K * BS cap, not exact
        lambda S, k, bs: (S * S // 2, sol00.prefill_attended_tokens(S, k, bs)[1]),
    ]),
    "causal_mask": (nb01.check_causal_mask, sol01.causal_mask, [
        lambda T, S: torch.ones(T, S, dtype=torch.bool).tril(),                   # top-left alignment
        lambda T, S: torch.arange(S) < torch.arange(S - T, S)[:, None],           # misses the diagonal
    ]),
    "expand_kv": (nb01.check_expand_kv, sol01.expand_kv, [
        lambda x, HQ: x.repeat(1, HQ // x.shape[1], 1, 1),                        # interleaved groups
        lambda x, HQ: x,
    ]),
    "merge_chunks": (nb01.check_merge_chunks, sol01.merge_chunks, [
        lambda m1, l1, a1, m2, l2, a2: (torch.maximum(m1, m2), l1 + l2, a1 + a2),  # no rescaling
        lambda m1, l1, a1, m2, l2, a2: (m1, l1, a1),
    ]),
    "online_softmax": (nb01.check_online_softmax, sol01.online_softmax, [
        _unguarded_online_softmax,                                                # nan on an empty first chunk
        lambda s, v, block: (torch.exp(s) @ v) / torch.exp(s).sum(-1, keepdim=True),  # overflows
        lambda s, v, block: torch.softmax(s, -1),                                 # wrong shape
    ]),
}
NAMES = sorted(EXERCISES)


@pytest.mark.parametrize("name", NAMES)
def test_reference_solution_passes(name, capsys):
    check, solution, _ = EXERCISES[name]
    assert check(solution) is True
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("name", NAMES)
def test_wrong_answers_fail(name, capsys):
    check, _, wrongs = EXERCISES[name]
    for wrong in wrongs:
        assert check(wrong) is False
        assert capsys.readouterr().out.startswith("✗")


@pytest.mark.parametrize("name", NAMES)
def test_unfinished_stub_fails_without_raising(name, capsys):
    def stub(*args):
        raise NotImplementedError  # your code here
    check = EXERCISES[name][0]
    assert check(stub) is False
    assert capsys.readouterr().out.startswith("…")


@pytest.mark.parametrize("name", NAMES)
def test_crashing_attempt_fails_without_raising(name, capsys):
    def crash(*args):
        raise IndexError("oops")
    assert EXERCISES[name][0](crash) is False
    out = capsys.readouterr().out
    assert out.startswith("✗") and "IndexError" in out and out.count("\n") == 1


@pytest.mark.parametrize("name", NAMES)
def test_checker_leaves_global_rng_alone(name):
    check, solution, _ = EXERCISES[name]
    state = torch.random.get_rng_state()
    check(solution)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_prefill_solution_scales_to_a_million_tokens():
    dense, msa = sol00.prefill_attended_tokens(1_000_000, 16, 128)
    capped = _capped_prefill(1_000_000, 16, 128)[1]
    assert dense == 1_000_000 * 1_000_001 // 2
    assert capped - 64 * 1_000_000 <= msa < capped               # own block: on average half full


def _brute_force_tiles(T, S, block_q, block_k):
    visible = torch.arange(S) <= query_positions(T, S, "cpu")[:, None]
    grid = torch.zeros(-(-T // block_q), -(-S // block_k), dtype=torch.long)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            tile = visible[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]
            grid[i, j] = 2 if tile.all() else int(tile.any())
    return grid


@pytest.mark.parametrize("T,S,block_q,block_k", [(1, 1, 4, 4), (4, 10, 2, 3), (100, 150, 32, 32),
                                                 (96, 256, 32, 32), (63, 63, 16, 8), (1, 100, 64, 16)])
def test_tile_categories_match_brute_force(T, S, block_q, block_k):
    assert torch.equal(tile_categories(T, S, block_q, block_k), _brute_force_tiles(T, S, block_q, block_k))


def test_tile_categories_non_causal_computes_everything():
    assert (tile_categories(5, 9, 2, 4, causal=False) == 2).all()


def test_selection_categories():
    sel = torch.tensor([[0, -1, -1],      # query at position 6 (block 1): picked block 0 only
                        [1, 0, -1],       # position 7: own block 1 and block 0
                        [2, 0, -1]])      # position 8 (block 2): own block 2 and block 0
    grid = selection_categories(sel, S=9, block_size=4)
    assert torch.equal(grid, torch.tensor([[2, 1, 0], [2, 3, 0], [2, 1, 3]]))


def test_show_categories_returns_a_small_figure():
    grid = torch.tensor([[0, 1], [2, 3]])
    fig = show_categories([grid, grid], SELECTION_NAMES, SELECTION_COLORS, titles=["a", "b"],
                          cell_lines=True)
    assert isinstance(fig, Figure) and len(fig.axes) == 2 and 80 <= fig.dpi <= 100
