"""Checkers of notebook 09 (the sparsity explorer)."""
import pytest
import torch

from m3lite.course import nb09
from m3lite.solutions import nb09 as sol09
from conftest import checker_accepts, checker_rejects, checker_reports_a_stub, checker_survives_a_raise


def blocks_end_inclusive(start, end, block_size):
    return list(range(start // block_size, end // block_size + 1))


def blocks_without_the_last_partial(start, end, block_size):
    return list(range(start // block_size, end // block_size))


def blocks_first_only(start, end, block_size):
    return [start // block_size]


def blocks_descending(start, end, block_size):
    return sol09.span_blocks(start, end, block_size)[::-1]


def blocks_as_a_tensor(start, end, block_size):
    return torch.tensor(sol09.span_blocks(start, end, block_size))


def oracle_ignoring_the_own_block(mass, top_k, block_size):
    return mass.topk(min(top_k, mass.shape[1]), -1).values.sum(-1)


def oracle_own_plus_top_k(mass, top_k, block_size):
    return sol09.oracle_recall(mass, top_k + 1, block_size)


def oracle_counting_the_own_block_twice(mass, top_k, block_size):
    own = mass[torch.arange(mass.shape[0]), torch.arange(mass.shape[0]) // block_size]
    return own + mass.topk(min(top_k - 1, mass.shape[1]), -1).values.sum(-1)


CHECKS = [
    (nb09.check_span_blocks, sol09.span_blocks, blocks_end_inclusive, "end is exclusive"),
    (nb09.check_span_blocks, sol09.span_blocks, blocks_without_the_last_partial, "the block of the last token"),
    (nb09.check_span_blocks, sol09.span_blocks, blocks_first_only, "cross a block boundary"),
    (nb09.check_span_blocks, sol09.span_blocks, blocks_descending, "ascending"),
    (nb09.check_oracle_recall, sol09.oracle_recall, oracle_ignoring_the_own_block, "own block is forced"),
    (nb09.check_oracle_recall, sol09.oracle_recall, oracle_own_plus_top_k, "top_k counts the own block"),
    (nb09.check_oracle_recall, sol09.oracle_recall, oracle_counting_the_own_block_twice, "count twice"),
]
IDS = [f"{check.__name__}-{wrong.__name__}" for check, _, wrong, _ in CHECKS]
UNIQUE_CHECKS = sorted({c for c, _, _, _ in CHECKS}, key=lambda c: c.__name__)


@pytest.mark.parametrize("check, solution, wrong, hint", CHECKS, ids=IDS)
def test_checker_accepts_the_solution(check, solution, wrong, hint, capsys):
    checker_accepts(check, solution, capsys)


@pytest.mark.parametrize("check, solution, wrong, hint", CHECKS, ids=IDS)
def test_checker_rejects_a_typical_mistake_and_names_it(check, solution, wrong, hint, capsys):
    checker_rejects(check, wrong, capsys, hint)


@pytest.mark.parametrize("check", UNIQUE_CHECKS, ids=lambda c: c.__name__)
def test_checker_reports_an_unfinished_stub(check, capsys):
    checker_reports_a_stub(check, capsys)


@pytest.mark.parametrize("check", UNIQUE_CHECKS, ids=lambda c: c.__name__)
def test_checker_survives_an_answer_that_raises_or_returns_nonsense(check, capsys):
    checker_survives_a_raise(check, capsys)
    assert check(lambda *args: "nonsense") is False
    assert capsys.readouterr().out.startswith("✗")


def test_span_blocks_accepts_a_tensor_answer(capsys):
    checker_accepts(nb09.check_span_blocks, blocks_as_a_tensor, capsys)


def test_the_hand_made_case_has_an_own_block_lighter_than_another():
    label, mass, bs = nb09._mass_cases()[-1]
    own = mass[torch.arange(len(mass)), torch.arange(len(mass)) // bs]
    assert (own < mass.amax(-1)).any() and torch.allclose(mass.sum(-1), torch.ones(len(mass)))
