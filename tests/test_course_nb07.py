"""Checkers of notebook 07 (training the indexer), and the numbers and pictures of m3lite.viz.training."""
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from m3lite import tasks
from m3lite.attention import block_attention_mass, indexer_distillation_loss
from m3lite.course import nb07
from m3lite.model import M3Config, M3Lite
from m3lite.solutions import nb07 as sol07
from m3lite.viz.training import (answer_position, blocks_holding, effective_tokens, headroom_won, join_runs,
                                 mass_by_distance, plot_indexer_kl, plot_kl_curves, plot_mass_by_distance,
                                 plot_query_selections, plot_recall_per_layer, running_mean, trace_indexers)
from conftest import exercise_checker_tests

NEG_INF = float("-inf")


def _blocks(p, block_size, reduce="sum"):
    S = p.shape[-1]
    NB = -(-S // block_size)
    blocks = torch.nn.functional.pad(p, (0, NB * block_size - S)).view(*p.shape[:-1], NB, block_size)
    return getattr(blocks, reduce)(-1)


def target_without_scale(q, k, block_size):
    return _blocks(torch.softmax(q @ k.T, -1), block_size).mean(0)


def target_summed_over_heads(q, k, block_size):
    return _blocks(torch.softmax(q @ k.T * q.shape[1] ** -0.5, -1), block_size).sum(0)


def target_per_head(q, k, block_size):
    return _blocks(torch.softmax(q @ k.T * q.shape[1] ** -0.5, -1), block_size)


def target_block_max(q, k, block_size):
    return _blocks(torch.softmax(q @ k.T * q.shape[1] ** -0.5, -1), block_size, "amax").mean(0)


def target_softmax_of_block_max(q, k, block_size):
    s = q @ k.T * q.shape[1] ** -0.5
    S = s.shape[-1]
    NB = -(-S // block_size)
    best = torch.nn.functional.pad(s, (0, NB * block_size - S), value=NEG_INF).view(-1, NB, block_size).amax(-1)
    return torch.softmax(best, -1).mean(0)


def target_whole_blocks_only(q, k, block_size):
    S = k.shape[0] // block_size * block_size
    p = torch.softmax(q @ k.T * q.shape[1] ** -0.5, -1)[:, :S]
    return p.view(q.shape[0], -1, block_size).sum(-1).mean(0)


def _keep(scores, sel, pad):
    """Visible selected blocks; pad: what -1 becomes ('spare' = nothing, 'python' = NB - 1, 'zero' = 0)."""
    NB = scores.shape[-1]
    sel = sel.long()
    if pad == "spare":
        sel = torch.where(sel < 0, NB, sel)
    elif pad == "zero":
        sel = sel.clamp(min=0)
    mask = torch.zeros(sel.shape[0], NB + (pad == "spare"), dtype=torch.bool)
    for r in range(sel.shape[0]):
        for j in sel[r].tolist():
            mask[r, j] = True                                  # j = -1 is NB - 1 in Python ("python" pad)
    return mask[:, :NB] & (scores > NEG_INF)


def _kl(scores, target, keep, renormalise=True):
    t = torch.where(keep, target, 0.0)
    if renormalise:
        t = t / t.sum(-1, keepdim=True)
    log_p = torch.log_softmax(scores.masked_fill(~keep, NEG_INF), -1)
    return torch.where(t > 0, t * (torch.log(t) - log_p), 0.0).sum(-1)


def kl_negative_index(scores, target, sel):
    return _kl(scores, target, _keep(scores, sel, "python")).mean()


def kl_padding_as_block_0(scores, target, sel):
    return _kl(scores, target, _keep(scores, sel, "zero")).mean()


def kl_not_renormalised(scores, target, sel):
    return _kl(scores, target, _keep(scores, sel, "spare"), renormalise=False).mean()


def kl_over_all_visible(scores, target, sel):
    return _kl(scores, target, scores > NEG_INF).mean()


def kl_reversed(scores, target, sel):
    keep = _keep(scores, sel, "spare")
    t = torch.where(keep, target, 0.0)
    t = t / t.sum(-1, keepdim=True)
    log_p = torch.log_softmax(scores.masked_fill(~keep, NEG_INF), -1)
    return torch.where(keep, log_p.exp() * (log_p - torch.log(t)), 0.0).sum(-1).mean()


def kl_cross_entropy(scores, target, sel):
    keep = _keep(scores, sel, "spare")
    t = torch.where(keep, target, 0.0)
    t = t / t.sum(-1, keepdim=True)
    log_p = torch.log_softmax(scores.masked_fill(~keep, NEG_INF), -1)
    return torch.where(t > 0, -t * log_p, 0.0).sum() / scores.shape[0]


def kl_summed_over_rows(scores, target, sel):
    return _kl(scores, target, _keep(scores, sel, "spare")).sum()


def _grad(scores, target, keep, renormalise=True):
    t = torch.where(keep, target, 0.0)
    if renormalise:
        t = t / t.sum(-1, keepdim=True)
    p = torch.softmax(scores.masked_fill(~keep, NEG_INF), -1)
    return torch.where(keep, p - t, 0.0)


def grad_sign_flipped(scores, target, sel):
    return -sol07.kl_gradient(scores, target, sel)


def grad_not_averaged(scores, target, sel):
    return _grad(scores, target, _keep(scores, sel, "spare"))


def grad_over_all_visible(scores, target, sel):
    return _grad(scores, target, scores > NEG_INF) / scores.shape[0]


def grad_negative_index(scores, target, sel):
    return _grad(scores, target, _keep(scores, sel, "python")) / scores.shape[0]


def grad_not_renormalised(scores, target, sel):
    return _grad(scores, target, _keep(scores, sel, "spare"), renormalise=False) / scores.shape[0]


def grad_nan_at_invisible(scores, target, sel):
    keep = _keep(scores, sel, "spare")
    t = torch.where(keep, target, 0.0)
    t = t / t.sum(-1, keepdim=True)
    p = torch.exp(scores) / torch.exp(scores.masked_fill(~keep, NEG_INF)).sum(-1, keepdim=True)
    g = torch.where(keep, p - t, 0.0) / scores.shape[0]
    return torch.where(scores > NEG_INF, g, torch.nan)


CHECKS = [
    (nb07.check_block_mass_target, sol07.block_mass_target, target_without_scale, "D ** -0.5"),
    (nb07.check_block_mass_target, sol07.block_mass_target, target_summed_over_heads, "average over the group"),
    (nb07.check_block_mass_target, sol07.block_mass_target, target_per_head, "one target for the whole group"),
    (nb07.check_block_mass_target, sol07.block_mass_target, target_block_max, "max over a block"),
    (nb07.check_block_mass_target, sol07.block_mass_target, target_softmax_of_block_max, "softmax over tokens first"),
    (nb07.check_block_mass_target, sol07.block_mass_target, target_whole_blocks_only, "may be partial"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_negative_index, "negative indexing"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_padding_as_block_0, "selects block 0"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_not_renormalised, "renormalise the target"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_over_all_visible, "warm-up KL"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_reversed, "KL(target || prediction)"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_cross_entropy, "cross-entropy"),
    (nb07.check_selected_kl, sol07.selected_kl, kl_summed_over_rows, "average over the rows"),
    (nb07.check_kl_gradient, sol07.kl_gradient, grad_sign_flipped, "prediction minus target"),
    (nb07.check_kl_gradient, sol07.kl_gradient, grad_not_averaged, "mean over the rows"),
    (nb07.check_kl_gradient, sol07.kl_gradient, grad_over_all_visible, "outside the selection get no gradient"),
    (nb07.check_kl_gradient, sol07.kl_gradient, grad_negative_index, "not the last block"),
    (nb07.check_kl_gradient, sol07.kl_gradient, grad_not_renormalised, "renormalise the target"),
    (nb07.check_kl_gradient, sol07.kl_gradient, grad_nan_at_invisible, "gradient 0"),
]
(test_checker_accepts_the_solution, test_checker_rejects_a_typical_mistake_and_names_it,
 test_checker_reports_an_unfinished_stub,
 test_checker_survives_an_answer_that_raises_or_returns_nonsense) = exercise_checker_tests(CHECKS)


def test_checkers_accept_a_float_and_other_float_dtypes(capsys):
    assert nb07.check_selected_kl(lambda *args: sol07.selected_kl(*args).item()) is True
    assert nb07.check_block_mass_target(lambda q, k, bs: sol07.block_mass_target(q.double(), k.double(), bs)) is True
    capsys.readouterr()


def test_target_by_hand():
    # one head, two keys in one block and one in the next: the softmax mass adds up per block
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    p = torch.softmax(torch.tensor([0.0, 2.0, 0.0]) * 2 ** -0.5, -1)
    torch.testing.assert_close(sol07.block_mass_target(q, k, 2), torch.stack([p[0] + p[1], p[2]]))
    torch.testing.assert_close(nb07._target_of_one_query(q, k, 2), torch.stack([p[0] + p[1], p[2]]))


def test_selected_kl_by_hand():
    # two selected blocks of three; the target renormalised over them; -1 padding selects nothing
    scores, target = torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[0.2, 0.6, 0.2]])
    sel = torch.tensor([[0, 1, -1]], dtype=torch.int32)
    expected = 0.25 * np.log(0.25 / 0.5) + 0.75 * np.log(0.75 / 0.5)
    assert abs(sol07.selected_kl(scores, target, sel).item() - expected) < 1e-6
    assert abs(indexer_distillation_loss(scores, target, sel).item() - expected) < 1e-6
    grad = sol07.kl_gradient(scores, target, sel)
    torch.testing.assert_close(grad, torch.tensor([[0.25, -0.25, 0.0]]))


def test_hand_rows_hold_what_the_hints_need():
    scores, target, sel = nb07._hand_rows()
    NB = scores.shape[-1]
    padded = (sel < 0).any(-1)
    last_visible_unpicked = (scores[:, -1] > NEG_INF) & ~(sel == NB - 1).any(-1)
    assert (padded & last_visible_unpicked).any()
    assert (padded & ~(sel == 0).any(-1)).any()                 # padding where block 0 is not selected
    torch.testing.assert_close(target.sum(-1), torch.ones(len(target)))


# -- m3lite.viz.training

def test_running_mean_and_headroom():
    np.testing.assert_allclose(running_mean([1, 3, 5, 7], 2), [1, 2, 4, 6])
    np.testing.assert_allclose(running_mean([2.0], 10), [2.0])
    assert headroom_won([0.5, 0.2], [0.75, 0.2], [1.0, 0.6]) == [0.5, 0.0]
    assert np.isnan(headroom_won([0.9], [0.9], [0.9])[0])


def test_mass_by_distance_by_hand():
    # T = 6 tokens in blocks of 2: queries 2-5 have a block behind their own; distance 0 and 1
    target = torch.zeros(1, 6, 3)
    target[0, :, 0] = torch.tensor([1.0, 1.0, 0.25, 0.5, 0.1, 0.2])
    target[0, 2:4, 1] = torch.tensor([0.75, 0.5])
    target[0, 4:, 2] = torch.tensor([0.6, 0.4])
    target[0, 4:, 1] = torch.tensor([0.3, 0.4])
    torch.testing.assert_close(mass_by_distance(target, 2, 2), torch.tensor([(0.75 + 0.5 + 0.6 + 0.4) / 4,
                                                                             (0.25 + 0.5 + 0.3 + 0.4) / 4]))
    torch.testing.assert_close(mass_by_distance(target, 2, 3), torch.tensor([0.5, 0.35, 0.15]))
    with pytest.raises(ValueError, match="blocks"):
        mass_by_distance(target, 2, 4)


def _records(steps, warm, kl=0.1, every=None):
    return [dict(step=s, loss=1.0, indexer_kl=kl, phase="dense warm-up" if s <= warm else "msa",
                 **({"eval": {"step": s, "haystack_msa": 0.5, "haystack_dense": 0.4}} if every and s % every == 0
                    else {})) for s in range(1, steps + 1)]


def test_effective_tokens_by_hand():
    T, D = 6, 4
    k = torch.zeros(1, T, D)
    even = effective_tokens(torch.zeros(2, T, D), k)                     # equal logits: even over t + 1 keys
    torch.testing.assert_close(even, torch.full((2,), (T + 1) / 2))
    torch.testing.assert_close(effective_tokens(torch.zeros(2, T, D), k, first_query=4), torch.full((2,), 5.5))
    k = torch.eye(T, D)[None] * 1e4                                      # key t points along axis t
    q = torch.zeros(1, T, D)
    q[0, :, 0] = 1.0                                                     # every query: key 0, far ahead
    torch.testing.assert_close(effective_tokens(q, k), torch.ones(1))
    with pytest.raises(ValueError, match="first_query"):
        effective_tokens(q, k, first_query=T)


def test_blocks_holding_by_hand():
    target = torch.tensor([[[1.0, 0.0, 0.0, 0.0],              # one block holds it all
                            [0.5, 0.3, 0.2, 0.0],              # 0.5 + 0.3 < 0.9: three blocks
                            [0.25, 0.25, 0.25, 0.25]]])        # even: all four
    torch.testing.assert_close(blocks_holding(target), torch.tensor([(1 + 3 + 4) / 3]))
    torch.testing.assert_close(blocks_holding(target, share=0.8, first_query=1), torch.tensor([(2 + 4) / 2]))
    with pytest.raises(ValueError, match="share"):
        blocks_holding(target, share=0)


def test_join_runs_numbers_steps_on():
    run = join_runs([("first", _records(10, 3, every=5)), ("then", _records(4, 0, kl=0.2, every=2))])
    assert run["step"].tolist() == list(range(1, 15))
    assert run["warmup"].tolist() == [True] * 3 + [False] * 11
    assert run["starts"] == [(0, "first"), (10, "then")]
    assert [(s, label) for s, _, label in run["evals"]] == [(5, "first"), (10, "first"), (12, "then"), (14, "then")]
    assert run["kl"][-1] == 0.2


def _tiny(seed=0):
    torch.manual_seed(seed)
    return M3Lite(M3Config.tiny()).eval()


def test_trace_indexers_gives_the_target_and_the_selection_of_each_msa_layer():
    model = _tiny()
    example = tasks.haystack(100, 0, "test", key_modality="image")
    layers = trace_indexers(model, example)
    c = model.config
    assert [layer["layer"] for layer in layers] == list(range(c.dense_layers, c.layers))
    T, NB = len(example.tokens), -(-len(example.tokens) // c.block_size)
    for layer in layers:
        assert layer["scores"].shape == layer["target"].shape == (c.kv_heads, T, NB)
        assert layer["sel"].shape == (c.kv_heads, T, c.top_k)
        torch.testing.assert_close(layer["target"].sum(-1), torch.ones(c.kv_heads, T))
        torch.testing.assert_close(layer["target"], block_attention_mass(layer["q"][None], layer["k"][None],
                                                                         c.block_size, c.kv_heads)[0])
    assert answer_position(example) == len(example.tokens) - len(example.answer) - 2


def test_dense_traces_of_two_indexers_share_the_target():
    from m3lite import evals
    model = _tiny()
    fresh = evals.with_untrained_indexers(model, seed=1)
    example = tasks.haystack(100, 1, "test", key_modality="image")
    a, b = trace_indexers(model, example), trace_indexers(fresh, example)
    for x, y in zip(a, b):
        torch.testing.assert_close(x["target"], y["target"])
        assert not torch.equal(x["scores"], y["scores"])


def test_pictures_are_figures():
    model = _tiny()
    example = tasks.haystack(100, 0, "test", key_modality="image")
    layer = trace_indexers(model, example)[-1]
    t = answer_position(example)
    info = example.info
    spans = {"asked pair": [info["pair_spans"][info["query_pair"]]], "query": [info["query_span"]]}
    figs = [plot_indexer_kl([("run", _records(30, 10, every=10)), ("more", _records(10, 0, every=5))]),
            plot_indexer_kl([("run", _records(30, 30))], smooth=5),
            plot_recall_per_layer({"256": {"layers": [1, 2], "before": [0.5, 0.6], "after": [0.7, 0.8],
                                           "best possible": [0.8, 0.9]},
                                   "1024": {"before": [0.5, 0.6], "after": [0.7, 0.8]}, "x": {"a": [0.1, 0.2]}}),
            plot_recall_per_layer({"one": {"a": [0.1], "b": [0.2], "c": [0.3], "d": [0.4], "best possible": [0.5]}}),
            plot_query_selections(layer["target"][0, t], {"before": layer["sel"][0, t], "after": layer["sel"][1, t]},
                                  t, model.config.block_size, spans=spans),
            plot_query_selections(layer["target"][0, 3], {"only": layer["sel"][0, 3]}, 3, model.config.block_size),
            plot_kl_curves({"a": [0.3, 0.2, 0.1], "b": [0.3, 0.25, 0.2]}),
            plot_mass_by_distance({"layer 1": mass_by_distance(layer["target"], model.config.block_size, 4)},
                                  model.config.block_size, periods=(20,))]
    for fig in figs:
        assert isinstance(fig, Figure) and 80 <= fig.dpi <= 100
