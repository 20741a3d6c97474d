"""Checkers of notebook 08 (long context), and the numbers and pictures of m3lite.viz.long_context."""
import json
import math

import pytest
import torch
from matplotlib.figure import Figure

from m3lite import tasks
from m3lite.attention import block_scores, select_blocks
from m3lite.course import nb08
from m3lite.model import M3Config, M3Lite
from m3lite.solutions import nb08 as sol08
from m3lite.viz import long_context as lc
from m3lite.viz.explorer import span_blocks, trace_layers
from m3lite.viz.indexer import block_mass
from conftest import exercise_checker_tests


def blocks_end_inclusive(info, block_size):
    start, end = info["pair_spans"][info["query_pair"]]
    return list(range(start // block_size, end // block_size + 1))


def blocks_first_only(info, block_size):
    return [info["pair_spans"][info["query_pair"]][0] // block_size]


def blocks_of_the_query(info, block_size):
    return span_blocks(info["query_span"], block_size)


def blocks_of_pair_zero(info, block_size):
    return span_blocks(info["pair_spans"][0], block_size)


def blocks_descending(info, block_size):
    return sol08.asked_blocks(info, block_size)[::-1]


def chance_own_block_drawn(query_pos, key_pos, block_size, top_k):
    return min(1.0, top_k / (query_pos // block_size + 1))


def chance_own_block_a_candidate(query_pos, key_pos, block_size, top_k):
    return min(1.0, (top_k - 1) / (query_pos // block_size + 1))


def chance_top_k_draws(query_pos, key_pos, block_size, top_k):
    own = query_pos // block_size
    return 1.0 if key_pos // block_size == own else min(1.0, top_k / own)


def chance_uncapped(query_pos, key_pos, block_size, top_k):
    own = query_pos // block_size
    return 1.0 if key_pos // block_size == own else (top_k - 1) / own


def chance_ignoring_own_block(query_pos, key_pos, block_size, top_k):
    own = query_pos // block_size
    return min(top_k - 1, own) / own if own else 1.0


def share_overall(sel, blocks):
    return sol08.hit_share(sel, blocks).mean()


def share_per_haystack(sel, blocks):
    hit = [torch.isin(sel[n], torch.tensor(b, dtype=sel.dtype)).any() for n, b in enumerate(blocks)]
    return torch.stack(hit).float()


def share_as_count(sel, blocks):
    return sol08.hit_share(sel, blocks) * sel.shape[0]


def share_needing_every_block(sel, blocks):
    return torch.stack([torch.stack([torch.isin(torch.tensor(b, dtype=sel.dtype), row).all() for row in sel[n]])
                        for n, b in enumerate(blocks)]).float().mean(0)


def share_first_block_only(sel, blocks):
    return torch.stack([(sel[n] == b[0]).any(-1) for n, b in enumerate(blocks)]).float().mean(0)


CHECKS = [
    (nb08.check_asked_blocks, sol08.asked_blocks, blocks_end_inclusive, "[start, end)"),
    (nb08.check_asked_blocks, sol08.asked_blocks, blocks_first_only, "straddle two blocks"),
    (nb08.check_asked_blocks, sol08.asked_blocks, blocks_of_the_query, "the query's blocks"),
    (nb08.check_asked_blocks, sol08.asked_blocks, blocks_of_pair_zero, "query_pair"),
    (nb08.check_asked_blocks, sol08.asked_blocks, blocks_descending, "ascending"),
    (nb08.check_random_hit, sol08.random_hit, chance_own_block_drawn, "own block is forced"),
    (nb08.check_random_hit, sol08.random_hit, chance_own_block_a_candidate, "already in"),
    (nb08.check_random_hit, sol08.random_hit, chance_top_k_draws, "takes one of the top_k places"),
    (nb08.check_random_hit, sol08.random_hit, chance_uncapped, "at most 1"),
    (nb08.check_random_hit, sol08.random_hit, chance_ignoring_own_block, "always selected"),
    (nb08.check_hit_share, sol08.hit_share, share_overall, "one share per KV group"),
    (nb08.check_hit_share, sol08.hit_share, share_per_haystack, "one value per haystack"),
    (nb08.check_hit_share, sol08.hit_share, share_as_count, "not a count"),
    (nb08.check_hit_share, sol08.hit_share, share_needing_every_block, "any one of them"),
    (nb08.check_hit_share, sol08.hit_share, share_first_block_only, "any one of them"),
]
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(CHECKS)


def test_block_cases_include_the_edges():
    spans = [(info["pair_spans"][info["query_pair"]], bs) for info, bs in nb08._block_cases()]
    assert any(end % bs == 0 for (_, end), bs in spans)                        # ends on a block boundary
    assert any(len(span_blocks(s, bs)) == 2 for s, bs in spans)                # straddles two blocks
    assert any(len(span_blocks(s, bs)) == 1 for s, bs in spans)


def test_share_cases_tell_any_from_first_and_every():
    cases = nb08._share_cases()
    for wrong in (share_first_block_only, share_needing_every_block):
        assert any(not torch.allclose(sol08.hit_share(sel, b), wrong(sel, b)) for _, sel, b in cases)
    for _, sel, _ in cases:                                       # a selection row never repeats a block
        for row in sel.flatten(0, 1).tolist():
            ids = [b for b in row if b >= 0]
            assert len(ids) == len(set(ids))


# -- m3lite.viz.long_context

@pytest.mark.parametrize("query_pos, key_blocks, block_size, top_k", [
    (1017, [15], 32, 4), (1017, [15, 16], 32, 4), (200, [0, 1], 16, 5), (100, [3], 32, 4), (40, [0], 32, 4),
    (70, [2], 16, 1)])
def test_random_hit_probability_matches_the_models_random_selection(query_pos, key_blocks, block_size, top_k):
    # what Attention.forward does with attention="random": random scores on the visible blocks, then select_blocks
    trials, NB = 4000, query_pos // block_size + 3
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(1, 1, trials, NB, generator=g)
    scores[..., query_pos // block_size + 1:] = float("-inf")
    sel = select_blocks(scores, top_k=top_k, backend="torch")[0, 0]             # [trials, K]
    got = lc.hits(sel[:, None], [key_blocks] * trials).float().mean().item()
    p = lc.random_hit_probability(query_pos, key_blocks, block_size, top_k)
    assert abs(got - p) <= 4 * math.sqrt(max(p * (1 - p), 1e-6) / trials) + 1e-9


def test_random_hit_probability_by_hand():
    assert lc.random_hit_probability(1017, [15], 32, 4) == pytest.approx(3 / 31)
    assert lc.random_hit_probability(1017, [31], 32, 4) == 1.0                  # the own block
    assert lc.random_hit_probability(1017, [40], 32, 4) == 0.0                  # not visible
    assert lc.random_hit_probability(1017, [3, 4], 32, 4) == pytest.approx(1 - (29 * 28 * 27) / (31 * 30 * 29))


def test_hits():
    sel = torch.tensor([[[3, 0, -1], [1, 2, 5]], [[7, -1, -1], [0, 1, 2]]], dtype=torch.int32)
    assert lc.hits(sel, [[0], [7, 8]]).tolist() == [[True, False], [True, False]]
    assert lc.hits(sel, [[], [2]]).tolist() == [[False, False], [False, True]]
    with pytest.raises(ValueError, match="one list of blocks"):
        lc.hits(sel, [[0]])


def test_asked_and_other_blocks_cover_the_pairs():
    example = tasks.haystack(1024, 1, "test", key_modality="mixed")
    info = example.info
    asked, others = lc.asked_blocks(info, 32), lc.other_blocks(info, 32)
    start, end = info["pair_spans"][info["query_pair"]]
    assert asked == list(range(start // 32, (end - 1) // 32 + 1)) and not set(asked) & set(others)
    assert lc.final_query(example) == len(example.tokens) - len(example.answer) - 2
    assert example.tokens[lc.final_query(example) + 1] == ord(example.answer[0])


def test_attention_on_blocks_is_dense_attention_renormalised_over_the_selection():
    g = torch.Generator().manual_seed(0)
    HQ, HI, S, BS, D = 4, 2, 100, 16, 8
    q, k = torch.randn(HQ, D, generator=g), torch.randn(HQ, S, D, generator=g)
    probs = torch.softmax((q[:, None] @ k.transpose(-1, -2))[:, 0] * D ** -0.5, -1)      # [HQ, S]
    sel = torch.tensor([[6, 1, 3], [6, 0, -1]])
    dense, sparse = lc.attention_on_blocks(block_mass(probs, BS), sel, [1, 2])
    assert torch.allclose(dense, block_mass(probs, BS)[:, 1:3].sum(-1))
    for h in range(HQ):                                           # softmax over the selected tokens only
        keep = torch.zeros(S, dtype=torch.bool)
        for b in sel[h // (HQ // HI)].tolist():
            if b >= 0:
                keep[b * BS:(b + 1) * BS] = True
        p = torch.softmax((q[h] @ k[h].T * D ** -0.5).masked_fill(~keep, float("-inf")), -1)
        assert torch.isclose(sparse[h], p[BS:3 * BS].sum(), atol=1e-6)
    assert sparse[2:].eq(0).all()                                # group 1 did not select block 1 or 2


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return M3Lite(M3Config.tiny()).eval()


@pytest.mark.parametrize("attention", ["msa", "random", "untrained", "dense"])
def test_trace_final_query_shapes(tiny_model, attention):
    examples = [tasks.haystack(200, s, "test", key_modality="mixed") for s in range(3)]
    out = lc.trace_final_query(tiny_model, examples, attention, batch=2)
    c = tiny_model.config
    assert list(out) == [i for i in range(c.layers) if i >= c.dense_layers]
    for found in out.values():
        assert found.sel.shape == (3, c.kv_heads, c.top_k) and found.mass.shape == (3, c.heads, 13)
        assert torch.allclose(found.mass.sum(-1), torch.ones(3, c.heads), atol=1e-5)
        assert (found.sel == 192 // 16).any(-1).all()                        # the own block is always there


def test_trace_final_query_agrees_with_the_explorers_trace(tiny_model):
    examples = [tasks.haystack(300, s, "test", key_modality="mixed") for s in (4, 5)]
    out = lc.trace_final_query(tiny_model, examples, "msa")
    c = tiny_model.config
    for n, example in enumerate(examples):
        pos = lc.final_query(example)
        for layer, L in trace_layers(tiny_model, example).items():
            assert torch.allclose(out[layer].mass[n], block_mass(L.probs[:, pos], c.block_size), atol=1e-5)
            scores = block_scores(L.iq[None], L.ik[None], block_size=c.block_size)
            sel = select_blocks(scores, top_k=c.top_k)[0, :, pos]
            assert torch.equal(out[layer].sel[n].sort(-1).values, sel.sort(-1).values)


def test_trace_final_query_refuses_bad_input(tiny_model):
    with pytest.raises(ValueError, match="attention"):
        lc.trace_final_query(tiny_model, [tasks.haystack(200, 0)], "sparse")
    with pytest.raises(ValueError, match="haystacks"):
        lc.trace_final_query(tiny_model, [tasks.caption(0)])
    with pytest.raises(ValueError, match="one length"):
        lc.trace_final_query(tiny_model, [tasks.haystack(200, 0), tasks.haystack(210, 0)])


def test_wilson_interval():
    lo, hi = lc.wilson_interval(0.5, 64)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.24, abs=0.01)
    assert lc.wilson_interval(1.0, 16)[1] == 1.0 and lc.wilson_interval(0.0, 16)[0] == 0.0


def _table():
    rows = lambda acc: [{"context_len": n, "accuracy": a, "n_trials": 64} for n, a in zip((256, 1024, 4096), acc)]
    return {"haystack": {"dense": rows((1, .6, 0)), "msa": rows((1, .9, .8)), "untrained": rows((.5, .2, .1)),
                         "random": rows((.5, .2, 0))},
            "recall": {m: [{"context_len": n, "per_layer": [.9, .8, .7], "n": 16} for n in (256, 1024, 4096)]
                       for m in ("msa", "untrained", "oracle")},
            "recall_at_answer": {m: [{"context_len": n, "per_layer": [.5, .6, .7], "n": 16} for n in (256, 1024)]
                                 for m in ("msa", "oracle")}}


def test_read_table(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_table()))
    assert lc.read_table(path) == _table()
    path.write_text(json.dumps({"haystack": {"msa": [{"context_len": 256}]}}))
    with pytest.raises(ValueError, match="n_trials"):
        lc.read_table(path)


def test_pictures_are_figures(tiny_model):
    example = tasks.haystack(300, 4, "test", key_modality="mixed")
    traces = {label: lc.trace_final_query(tiny_model, [example], mode) for label, mode in
              (("msa", "msa"), ("a label", "random"))}
    live = {"msa": [{"context_len": 1024, "accuracy": 0.75, "n_trials": 16}]}
    rates = {1024: {"msa": {1: [0.5, 1.0], 2: [1.0, 1.0]}, "random": {1: [0, 0], 2: [0.1, 0.2]}},
             2048: {"msa": {1: [0.5, 1.0], 2: [1.0, 1.0]}, "random": {1: [0, 0], 2: [0.1, 0.2]}}}
    figs = [lc.plot_accuracy(_table()), lc.plot_accuracy(_table(), live, train_lens=(256, 1024)),
            lc.plot_recall(_table()), lc.plot_recall({"recall": _table()["recall"]}), lc.plot_final_query(example, traces, tiny_model.config.block_size),
            lc.plot_hit_rates(rates), lc.plot_hit_rates(rates, {1024: 0.1}, {1024: 16, 2048: 8})]
    for fig in figs:
        assert isinstance(fig, Figure) and 80 <= fig.dpi <= 100
