"""Checkers of notebook 09 (the sparsity explorer)."""
import torch

from m3lite.course import nb09
from m3lite.solutions import nb09 as sol09
from conftest import checker_accepts, exercise_checker_tests


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
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(CHECKS)


def test_span_blocks_accepts_a_tensor_answer(capsys):
    checker_accepts(nb09.check_span_blocks, blocks_as_a_tensor, capsys)


def test_the_hand_made_case_has_an_own_block_lighter_than_another():
    label, mass, bs = nb09._mass_cases()[-1]
    own = mass[torch.arange(len(mass)), torch.arange(len(mass)) // bs]
    assert (own < mass.amax(-1)).any() and torch.allclose(mass.sum(-1), torch.ones(len(mass)))
