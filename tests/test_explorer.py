"""The sparsity explorer (m3lite.viz.explorer): its sources, the numbers of a view, its pictures and its widget."""
import itertools

import pytest
import torch
from matplotlib.colors import to_rgba

import m3lite as m3
from m3lite import tasks
from m3lite.attention import block_load_counts
from m3lite.model import M3Config, M3Lite
from m3lite.viz.attention import SELECTION_COLORS
from m3lite.viz.explorer import (SparsityExplorer, explorer_view, figure_png, make_layer, mass_in_selection,
                                 model_source, oracle_recall, plot_attention, plot_explorer, plot_loads,
                                 plot_query, plot_recall, span_blocks, synthetic_qk, synthetic_source)
from m3lite.viz.indexer import block_mass


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_source(S=256, block_size=16, top_k=4)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return M3Lite(M3Config.tiny()).eval()


@pytest.fixture(scope="module")
def haystack_source(tiny_model):
    return model_source(tiny_model, context_len=256, seed=1)


# -- sources

def test_synthetic_heads_attend_as_their_roles_say():
    roles = ("local", "sink", "retrieval", "local")
    q, k, seekers = synthetic_qk(S=256, roles=roles, HKV=2, seed=0)
    assert q.shape == (4, 256, 32) and k.shape == (2, 256, 32)
    p = make_layer(q, k, q[::2, :, :16], k[:1, :, :16]).probs                # [HQ, T, T]
    late = slice(64, None)
    assert p[1, late, 0].mean() > 0.2 > 20 * p[0, late, 0].mean()             # the sink head, on token 0
    for needle, who in seekers.items():
        far = who[who > needle + 64]                                           # beyond the local heads' reach
        if len(far):
            assert p[2, far, needle].mean() > 0.3 > 10 * p[3, far, needle].mean()   # retrieval vs local head
    near = torch.stack([p[0, t, max(0, t - 31):t + 1].sum() for t in range(64, 256)])
    assert near.mean() > 0.6                                                   # the local head looks near
    q2, k2, seekers2 = synthetic_qk(S=256, roles=roles, HKV=2, seed=0)
    assert torch.equal(q, q2) and torch.equal(k, k2) and seekers.keys() == seekers2.keys()


def test_make_layer_probs_are_dense_causal_attention(synthetic):
    L = synthetic.layers[0]
    HQ, T, D = L.q.shape
    v = torch.randn(L.k.shape, generator=torch.Generator().manual_seed(0))
    out = m3.dense_attention(L.q[None], L.k[None], v[None])[0]
    torch.testing.assert_close(L.probs @ v.repeat_interleave(HQ // L.k.shape[0], 0), out, atol=1e-5, rtol=1e-4)
    assert (L.probs.triu(1) == 0).all()


def test_synthetic_source_marks_the_sink_and_needles(synthetic):
    assert synthetic.spans["sink"] == [(0, 1)] and len(synthetic.spans["needles"]) == 4
    assert synthetic.head_roles == ("local", "sink", "retrieval", "local")
    assert synthetic.heads == 4 and synthetic.tokens == 256 and list(synthetic.layers) == [0]
    assert synthetic.head == 2                                                # the view starts at the retrieval head


def test_model_source_traces_every_msa_layer(tiny_model, haystack_source):
    c = tiny_model.config
    example = tasks.haystack(256, 1, split="test", key_modality="mixed")
    trace = []
    with torch.no_grad():
        tiny_model(example.tokens[None], example.media, attention="msa", trace=trace)
    assert list(haystack_source.layers) == list(range(c.dense_layers, c.layers))
    for t, layer in zip(trace, haystack_source.layers.values()):
        torch.testing.assert_close(layer.q, t["q"][0])
        sel = m3.select_blocks(m3.block_scores(layer.iq[None], layer.ik[None], block_size=c.block_size), top_k=c.top_k)
        assert torch.equal(sel, t["sel"])                       # the hooked iq, ik are the ones the model used
    info = example.info
    assert haystack_source.query == info["query_span"][1] - 1
    assert haystack_source.spans["asked pair"] == [info["pair_spans"][info["query_pair"]]]
    assert (haystack_source.block_size, haystack_source.top_k) == (c.block_size, c.top_k)


def test_model_source_loads_a_checkpoint_path(tiny_model, haystack_source, tmp_path):
    tiny_model.save(tmp_path / "tiny.safetensors")
    from_path = model_source(tmp_path / "tiny.safetensors", context_len=256, seed=1)
    for a, b in zip(from_path.layers.values(), haystack_source.layers.values()):
        torch.testing.assert_close(a.probs, b.probs)


def test_model_source_refuses_what_is_not_a_model():
    with pytest.raises(TypeError, match="model must be an M3Lite"):
        model_source(object())
    dense = M3Lite(M3Config(dim=32, layers=1, dense_layers=1, heads=2, kv_heads=1, head_dim=16, rope_dim=8,
                            index_dim=8, mlp_hidden=32))
    with pytest.raises(ValueError, match="no MSA layer"):
        model_source(dense, context_len=128)


@pytest.mark.parametrize("kwargs, match", [(dict(roles=("local", "lazy")), "roles"), (dict(roles=()), "roles"),
                                           (dict(roles=("local",) * 3, HKV=2), "HKV"), (dict(S=10), "S must"),
                                           (dict(D=0), "D must be positive"), (dict(DI=2.0), "DI must be an int")])
def test_synthetic_source_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        synthetic_source(**kwargs)


# -- the numbers of a view

def test_view_matches_the_package(synthetic):
    L = synthetic.layers[0]
    for head, block_size, top_k in ((0, 16, 4), (3, 32, 2), (2, 8, 5)):
        view = explorer_view(synthetic, 0, head, 200, block_size, top_k)
        group = head // 2
        sel = m3.select_blocks(m3.block_scores(L.iq[None], L.ik[None], block_size=block_size), top_k=top_k)
        assert torch.equal(view.sel, sel[0, group]) and view.group == group
        recall = m3.attention_recall(L.q[None], L.k[None], sel, block_size=block_size)[0, head]
        torch.testing.assert_close(view.recall, recall, atol=1e-5, rtol=1e-4)
        assert torch.equal(view.loads["KV-outer"], block_load_counts(sel[:, group:group + 1], view.mass.shape[1], "kv"))
        assert view.loads["query-major"].sum() == (view.sel >= 0).sum()     # one load per (query, picked block)
        assert (view.oracle >= view.recall - 1e-6).all()


def test_every_block_picked_keeps_everything(synthetic):
    view = explorer_view(synthetic, 0, 1, 100, 16, 16)
    torch.testing.assert_close(view.recall, torch.ones(256))
    torch.testing.assert_close(view.oracle, torch.ones(256))


def test_oracle_recall_is_the_best_subset_by_brute_force():
    g = torch.Generator().manual_seed(0)
    T, BS = 9, 2
    NB = -(-T // BS)
    p = torch.rand(T, T, generator=g).tril().softmax(-1) * torch.ones(T, T).tril()
    mass = block_mass(p / p.sum(-1, keepdim=True), BS)
    for top_k in (1, 2, 3, 6):
        best = torch.zeros(T)
        for t in range(T):
            own = t // BS
            others = [j for j in range(NB) if j != own]
            for chosen in itertools.combinations(others, min(top_k - 1, len(others))):
                best[t] = max(best[t], mass[t, [own, *chosen]].sum())
        torch.testing.assert_close(oracle_recall(mass, top_k, BS), best)


def test_mass_in_selection_skips_padding():
    mass = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    sel = torch.tensor([[0, -1], [2, 0]], dtype=torch.int32)
    torch.testing.assert_close(mass_in_selection(mass, sel), torch.tensor([0.5, 0.9]))


def test_span_blocks():
    assert span_blocks((0, 1), 32) == [0]
    assert span_blocks((64, 96), 32) == [2]
    assert span_blocks((31, 33), 32) == [0, 1]
    assert span_blocks((100, 300), 64) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="span"):
        span_blocks((5, 5), 4)
    with pytest.raises(ValueError, match="block_size"):
        span_blocks((0, 5), 0)


@pytest.mark.parametrize("args, match", [((7, 0, 10, 16, 4), "layer must be one of"),
                                         ((0, 4, 10, 16, 4), r"head must be an int in \[0, 4\)"),
                                         ((0, -1, 10, 16, 4), "head must"),
                                         ((0, 0, 256, 16, 4), r"query must be an int in \[0, 256\)"),
                                         ((0, 0, 1.5, 16, 4), "query must"),
                                         ((0, 0, 10, 0, 4), "block_size must be positive"),
                                         ((0, 0, 10, 16, "4"), "top_k must be an int")])
def test_view_bad_arguments_name_the_argument(synthetic, args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        explorer_view(synthetic, *args)


def test_view_refuses_what_is_not_a_source():
    with pytest.raises(TypeError, match="source must be a Source"):
        explorer_view("synthetic", 0, 0, 0, 16, 4)


def test_oracle_recall_bad_arguments():
    with pytest.raises(ValueError, match="mass must have NB"):
        oracle_recall(torch.rand(10, 3), 2, 2)
    with pytest.raises(ValueError, match="top_k must be positive"):
        oracle_recall(torch.rand(10, 5), 0, 2)


# -- pictures

def test_pictures_draw_the_view(synthetic):
    view = explorer_view(synthetic, 0, 2, 150, 16, 4)
    fig = plot_query(view, synthetic.spans)
    bars = fig.axes[0].patches[:view.mass.shape[1]]
    torch.testing.assert_close(torch.tensor([b.get_height() for b in bars]).float(), view.mass[150])
    assert [b.get_facecolor() for b in bars] == [to_rgba(SELECTION_COLORS[int(c)]) for c in view.categories[150]]
    attention = plot_attention(view).axes[0]
    assert attention.images[0].get_array().shape == (48, 160)                 # 48 queries, keys up to block 10
    assert len(attention.collections) == 1                                    # the outline of the selection
    recall = plot_recall(view).axes[0]
    torch.testing.assert_close(torch.tensor(recall.lines[1].get_ydata()).float(), view.recall)
    assert len(plot_loads(view).axes[0].patches) == 2 * view.mass.shape[1]
    full = plot_explorer(view, synthetic)
    assert len(full.axes) == 5 and "head 2 (retrieval)" in full.get_suptitle()    # 4 panels and a colorbar
    assert figure_png(full)[:8] == b"\x89PNG\r\n\x1a\n" and 80 <= full.dpi <= 100


# -- the widget

def test_every_control_changes_the_figure(synthetic, haystack_source):
    explorer = SparsityExplorer(synthetic, haystack_source)
    first = explorer.state()
    assert first == dict(source="synthetic", layer=0, head=2, query=synthetic.query, block_size=16, top_k=4)
    changes = [("head", 1), ("query", 100), ("block_size", 32), ("top_k", 2), ("source", "model"), ("layer", 2)]
    for name, value in changes:
        before = explorer.image.value
        explorer.controls[name].value = value
        assert explorer.image.value != before, name
        assert explorer.controls[name].value == value
    c = haystack_source
    assert explorer.state() == dict(source="model", layer=2, head=0, query=c.query, block_size=c.block_size,
                                    top_k=c.top_k)                            # a new source starts at its defaults
    assert explorer.seconds > 0 and "ms" in explorer.status.value


def test_top_k_range_follows_the_block_size(synthetic):
    explorer = SparsityExplorer(synthetic)
    explorer.set(block_size=64)
    assert explorer.controls["top_k"].max == 4
    assert explorer.controls["top_k"].value == 4
    explorer.set(block_size=8, top_k=20)
    assert explorer.controls["top_k"].max == 32 and explorer.state()["top_k"] == 20


def test_set_draws_once_and_refuses_unknown_controls(synthetic):
    explorer = SparsityExplorer(synthetic)
    drawn = []
    explorer.image.observe(drawn.append, names="value")
    explorer.set(head=1, query=50, top_k=3)
    assert len(drawn) == 1
    with pytest.raises(ValueError, match="set"):
        explorer.set(colour="red")


def test_explorer_bad_arguments(synthetic):
    with pytest.raises(ValueError, match="sources"):
        SparsityExplorer()
    with pytest.raises(TypeError, match="sources must be Source"):
        SparsityExplorer("synthetic")
    with pytest.raises(ValueError, match="distinct names"):
        SparsityExplorer(synthetic, synthetic)
