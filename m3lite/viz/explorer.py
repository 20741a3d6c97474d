"""The sparsity explorer: one head's dense attention against MSA's selection, the attention mass the
selection keeps, and how often each gather order loads each KV block.

Three parts, each usable alone:
- sources hold what every view needs, computed once: `synthetic_source` (locality, an attention sink,
  retrieval heads) and `model_source` (a real M3Lite's attention on a haystack);
- `explorer_view` computes one view's numbers and `plot_explorer` draws them: pure, tested directly;
- `SparsityExplorer` only wires ipywidgets controls to those two and shows the figure as a PNG.
"""
import io
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.colors import LogNorm
from matplotlib.patches import Patch

from ..attention import block_load_counts, block_scores, num_blocks, select_blocks, selection_mask
from ..attention import checks
from ..attention.common import NEG_INF, visible_mask
from .attention import SELECTION_COLORS, SELECTION_NAMES, selection_categories
from .gather import PALETTE, plot_load_counts
from .indexer import block_mass

ROLES = ("local", "sink", "retrieval")
BLOCK_SIZES = (8, 16, 32, 64, 128)
ORDERS = {"query-major": "query", "KV-outer": "kv"}
SPAN_COLORS = (PALETTE[2], PALETTE[4], PALETTE[7], PALETTE[3])
OUTLINE = "#ff3b3b"


@dataclass
class Layer:
    """One layer's attention for one sequence (self-attention: T queries over the same T keys).

    q: [HQ, T, D]; k: [HKV, T, D]; iq: [HI, T, DI] index queries; ik: [1, T, DI] the shared index
    keys; probs: float32 [HQ, T, T] dense causal attention (rows sum to 1).
    """
    q: torch.Tensor
    k: torch.Tensor
    iq: torch.Tensor
    ik: torch.Tensor
    probs: torch.Tensor


@dataclass
class Source:
    """What the explorer can show: named layers of one sequence, and where to start.

    layers: layer index -> Layer; block_size, top_k, query, head: the first view; spans: label ->
    [(start, end)] token spans worth marking (a sink, needles, the haystack's pairs and query);
    head_roles: optional name of each query head.
    """
    name: str
    layers: dict
    block_size: int
    top_k: int
    query: int
    spans: dict = field(default_factory=dict)
    head_roles: tuple = ()
    head: int = 0

    @property
    def heads(self):
        return next(iter(self.layers.values())).q.shape[0]

    @property
    def tokens(self):
        return next(iter(self.layers.values())).q.shape[1]


@dataclass
class View:
    """The numbers of one view: head `head` of one layer, its KV group's selection, one query marked.

    probs: [T, T] the head's dense attention; sel: int [T, K] the group's selection; mass: [T, NB]
    the head's attention mass per block; categories: [T, NB] from `selection_categories`;
    recall: [T] mass inside the selection; oracle: [T] the most any top-k selection (own block
    forced) could keep; loads: order name -> int64 [NB] loads of each KV block by the group.
    """
    layer: int
    head: int
    group: int
    query: int
    block_size: int
    top_k: int
    probs: torch.Tensor
    sel: torch.Tensor
    mass: torch.Tensor
    categories: torch.Tensor
    recall: torch.Tensor
    oracle: torch.Tensor
    loads: dict


def make_layer(q, k, iq, ik):
    """A Layer from one sequence's q [HQ, T, D], k [HKV, T, D], iq [HI, T, DI], ik [1, T, DI]."""
    HQ, T, D = checks.tensor(q, "q", rank=3, layout="[HQ, T, D]")
    HKV = checks.tensor(k, "k", rank=3, layout="[HKV, T, D]")[0]
    checks.index_qk(iq[None], ik[None], HKV)
    if k.shape[1:] != (T, D) or iq.shape[1] != T or HQ % HKV:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, iq {tuple(iq.shape)}: expected k [HKV, T, D] "
                         "with HQ % HKV == 0 and iq [HI, T, DI], for the same T")
    s = q.float() @ k.float().repeat_interleave(HQ // HKV, 0).transpose(-1, -2) * D ** -0.5
    probs = torch.softmax(s.masked_fill(~visible_mask(T, T, True, q.device), NEG_INF), -1)
    return Layer(q.detach().cpu(), k.detach().cpu(), iq.detach().cpu(), ik.detach().cpu(), probs.cpu())


# -- sources

def _walk(heads, S, D, rho, g):
    """AR(1) random walks [heads, S, D] with unit variance: neighbouring tokens look alike."""
    x = torch.randn(heads, S, D, generator=g)
    for t in range(1, S):
        x[:, t] = rho * x[:, t - 1] + (1 - rho ** 2) ** 0.5 * x[:, t]
    return x


def _unit(x):
    return x / x.norm()


def synthetic_qk(S=512, roles=("local", "sink", "retrieval", "local"), HKV=2, D=32, needles=4, rho=0.98,
                 seed=0):
    """Queries and keys whose heads attend the way real heads do, one role per query head.

    Every key drifts slowly along the sequence (locality); token 0 has a large key along a direction
    that "sink" heads' queries share; a few needle tokens have a distinctive key, and in "retrieval"
    heads (which look near only half as much) about 15% of the later queries look for each needle.
    "local" heads just attend near.
    Args:
        S: tokens; roles: one of ROLES per query head (HQ = len(roles), HQ % HKV == 0); HKV: KV heads.
    Returns:
        q [HQ, S, D], k [HKV, S, D], and a dict needle position -> int64 positions of its seekers.
    """
    if not roles or any(r not in ROLES for r in roles):
        raise ValueError(f"roles must be a non-empty sequence of {ROLES}, got {roles!r}")
    for value, name in ((S, "S"), (HKV, "HKV"), (D, "D"), (needles, "needles")):
        checks.positive_int(value, name)
    if len(roles) % HKV:
        raise ValueError(f"HKV ({HKV}) must divide the number of query heads, len(roles) = {len(roles)}")
    if S < 2 * needles + 16:
        raise ValueError(f"S must be at least 2 * needles + 16 = {2 * needles + 16}, got {S}")
    g = torch.Generator().manual_seed(seed)
    HQ = len(roles)
    k = 0.6 * _walk(1, S, D, rho, g) + 0.8 * _walk(HKV, S, D, rho, g)        # shared part + each head's own
    role = np.array(roles)
    nearness = torch.from_numpy(np.where(role == "retrieval", 0.75, 1.5)).float()[:, None, None]
    q = nearness * k.repeat_interleave(HQ // HKV, 0) + 0.7 * torch.randn(HQ, S, D, generator=g)
    sink = _unit(torch.randn(D, generator=g))
    k[:, 0] += 8 * sink
    q[torch.from_numpy(role == "sink")] += 8 * sink                            # a logit of about 11 on token 0
    seekers = {}
    for n in sorted((torch.randperm(S // 2 - 8, generator=g)[:needles] + 8).tolist()):
        e = _unit(torch.randn(D, generator=g))
        k[:, n] += 7 * e
        seekers[n] = ((torch.rand(S, generator=g) < 0.15) & (torch.arange(S) > n)).nonzero()[:, 0]
        for h in np.flatnonzero(role == "retrieval"):
            q[h, seekers[n]] += 7 * e
    return q, k, seekers


def synthetic_source(S=512, roles=("local", "sink", "retrieval", "local"), HKV=2, D=32, DI=16, needles=4,
                     block_size=32, top_k=4, seed=0):
    """A one-layer Source from `synthetic_qk`, with a stand-in indexer (as in notebook 02): per KV group
    the mean of its query heads, and for the shared key the mean of the KV heads, both through one
    random projection to DI dimensions. The first view shows the first retrieval head (if any) at the
    last query that seeks a needle."""
    checks.positive_int(DI, "DI")
    q, k, seekers = synthetic_qk(S, roles, HKV, D, needles, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    P = torch.randn(D, DI, generator=g) / DI ** 0.5
    iq = q.unflatten(0, (HKV, -1)).mean(1) @ P                                 # [HI, S, DI], HI = HKV
    ik = k.mean(0, keepdim=True) @ P                                          # [1, S, DI]
    seeking = torch.cat(list(seekers.values()))
    query = int(seeking.max()) if len(seeking) else S - 1
    return Source("synthetic", {0: make_layer(q, k, iq, ik)}, block_size, top_k, query,
                  spans={"sink": [(0, 1)], "needles": [(n, n + 1) for n in seekers]}, head_roles=tuple(roles),
                  head=list(roles).index("retrieval") if "retrieval" in roles else 0)


def _load_model(model):
    from ..model import M3Lite
    if isinstance(model, (str, Path)):
        return M3Lite.from_pretrained(model)
    if not isinstance(model, M3Lite):
        raise TypeError(f"model must be an M3Lite or the path of a checkpoint, got {type(model).__name__}")
    return model


@torch.no_grad()
def trace_layers(model, example):
    """Run `model` on one Example in MSA mode; return MSA layer index -> Layer (from the model's trace)."""
    msa = [i for i, block in enumerate(model.blocks) if block.attn.sparse]
    if not msa:
        raise ValueError("model has no MSA layer (dense_layers == layers): nothing to explore")
    trace, device = [], next(model.parameters()).device
    media = {m: x.to(device) for m, x in example.media.items()}
    model(example.tokens[None].to(device), media, attention="msa", trace=trace)
    return {i: make_layer(t["q"][0], t["k"][0], t["iq"][0], t["ik"][0]) for i, t in zip(msa, trace)}


def model_source(model, context_len=512, seed=0, key_modality="mixed", name="model"):
    """A Source from a real M3Lite's attention on a test haystack, one entry per MSA layer.

    Args:
        model: an M3Lite, or the path of a checkpoint (`M3Lite.from_pretrained`).
        context_len, seed, key_modality: the haystack (`m3lite.tasks.haystack`, split "test").
    The first query shown is the one that predicts the answer; block size and top-k start at the
    model's own; the asked pair, the other pairs and the query are marked.
    """
    from .. import tasks
    model = _load_model(model)
    example = tasks.haystack(context_len, seed, split="test", key_modality=key_modality)
    info = example.info
    asked = info["query_pair"]
    spans = {"asked pair": [info["pair_spans"][asked]],
             "other pairs": [s for i, s in enumerate(info["pair_spans"]) if i != asked],
             "query": [info["query_span"]]}
    c = model.config
    return Source(name, trace_layers(model, example), c.block_size, c.top_k, info["query_span"][1] - 1, spans)


# -- the numbers of one view

def mass_in_selection(mass, sel):
    """Share of each query's attention mass inside its selected blocks.

    Args:
        mass: [T, NB] attention mass per block; sel: int [T, K] block ids, -1 = none.
    Returns:
        [T].
    """
    padded = torch.nn.functional.pad(mass, (0, 1))                           # column NB: where -1 points
    ids = torch.where(sel < 0, mass.shape[-1], sel).long()
    return padded.gather(-1, ids).sum(-1)


def oracle_recall(mass, top_k, block_size):
    """The most attention mass any MSA selection of `top_k` blocks can keep: each query's own block
    (forced) plus its `top_k - 1` heaviest other blocks.

    Args:
        mass: [T, NB] attention mass per block, query t at position t (self-attention).
    Returns:
        [T].
    """
    T, NB = checks.tensor(mass, "mass", rank=2, layout="[T, NB]")
    checks.positive_int(top_k, "top_k")
    checks.positive_int(block_size, "block_size")
    if NB != num_blocks(T, block_size):
        raise ValueError(f"mass must have NB = ceil(T / block_size) = {num_blocks(T, block_size)} blocks for "
                         f"T={T} queries at positions 0..T-1, got {NB}")
    own = (torch.arange(T, device=mass.device) // block_size)[:, None]
    own_mass = mass.gather(-1, own)[:, 0]
    others = mass.scatter(-1, own, 0.0)
    return own_mass + others.topk(min(top_k - 1, NB), dim=-1).values.sum(-1)


def span_blocks(span, block_size):
    """The ids of the KV blocks that tokens [start, end) touch, ascending: a list of ints."""
    start, end = span
    if not 0 <= start < end:
        raise ValueError(f"span must be (start, end) with 0 <= start < end, got {span!r}")
    checks.positive_int(block_size, "block_size")
    return list(range(start // block_size, (end - 1) // block_size + 1))


def _check_view_args(source, layer, head, query, block_size, top_k):
    if not isinstance(source, Source):
        raise TypeError(f"source must be a Source (synthetic_source, model_source), got {type(source).__name__}")
    if layer not in source.layers:
        raise ValueError(f"layer must be one of {list(source.layers)} (the MSA layers of {source.name!r}), "
                         f"got {layer!r}")
    for value, name, bound in ((head, "head", source.heads), (query, "query", source.tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
            raise ValueError(f"{name} must be an int in [0, {bound}), got {value!r}")
    checks.positive_int(block_size, "block_size")
    checks.positive_int(top_k, "top_k")


def explorer_view(source, layer, head, query, block_size, top_k):
    """Compute one view: head `head` of layer `layer`, query `query` marked, blocks of `block_size`,
    the `top_k` blocks its KV group's index head scores best (own block forced). Returns a View."""
    _check_view_args(source, layer, head, query, block_size, top_k)
    L = source.layers[layer]
    HQ, HI = L.q.shape[0], L.iq.shape[0]
    group = head // (HQ // HI)
    scores = block_scores(L.iq[None, group:group + 1], L.ik[None], block_size=block_size)    # [1, 1, T, NB]
    sel = select_blocks(scores, top_k=top_k)                                  # [1, 1, T, K]
    NB = scores.shape[-1]
    mass = block_mass(L.probs[head], block_size)
    row = sel[0, 0]
    return View(layer, head, group, query, block_size, top_k, L.probs[head], row, mass,
                selection_categories(row, L.q.shape[1], block_size), mass_in_selection(mass, row),
                oracle_recall(mass, top_k, block_size),
                {name: block_load_counts(sel, NB, order) for name, order in ORDERS.items()})


# -- pictures

def _axes(ax, figsize, dpi):
    return ax if ax is not None else Figure(figsize=figsize, dpi=dpi, layout="constrained").subplots()


def plot_attention(view, rows=48, ax=None, dpi=80):
    """The head's dense attention (log colour) for the `rows` queries up to the marked one, with the
    blocks each of them selected outlined. Returns the Figure."""
    ax = _axes(ax, (6.4, 3.0), dpi)
    T = view.probs.shape[0]
    hi = view.query + 1
    lo = max(0, hi - rows)
    right = min(T, -(-hi // view.block_size) * view.block_size)               # up to the query's block end
    picked = selection_mask(view.sel[None, None], T, view.block_size)[0, 0] & visible_mask(T, T, True, "cpu")
    probs = np.ma.masked_less_equal(view.probs[lo:hi, :right].numpy(), 0)
    image = ax.imshow(probs, norm=LogNorm(1e-4, 1), cmap="viridis", interpolation="nearest", aspect="auto",
                      extent=(-0.5, right - 0.5, hi - 0.5, lo - 0.5))
    framed = torch.nn.functional.pad(picked[lo:hi, :right].float(), (1, 1, 1, 1))   # so outlines close at the edges
    ax.contour(np.arange(-1, right + 1), np.arange(lo - 1, hi + 1), framed.numpy(), levels=[0.5], colors=OUTLINE,
               linewidths=0.9)
    ax.set_xlim(-0.5, right - 0.5)
    ax.set_ylim(hi - 0.5, lo - 0.5)
    colorbar = ax.figure.colorbar(image, ax=ax, pad=0.02)
    colorbar.ax.tick_params(labelsize=7)
    colorbar.ax.minorticks_off()                        # minor ticks of log axes cost a widget update time
    ax.set_title(f"dense attention of queries {lo}-{view.query}; their {view.top_k} blocks outlined", fontsize=9)
    _tokens_axes(ax, "key position", "query position")
    return ax.figure


def plot_query(view, spans=None, ax=None, dpi=80):
    """The marked query's attention mass per KV block, each bar coloured as `selection_categories`
    says (picked, own, visible but not picked); `spans` (label -> [(start, end)]) shaded."""
    ax = _axes(ax, (6.4, 3.0), dpi)
    mass = view.mass[view.query].numpy()
    kind = view.categories[view.query].numpy()
    starts = np.arange(len(mass)) * view.block_size
    ax.bar(starts, mass, width=view.block_size, align="edge", color=np.array(SELECTION_COLORS)[kind],
           edgecolor="#555555", linewidth=0.4)
    handles = [Patch(facecolor=SELECTION_COLORS[i], edgecolor="#555555", label=SELECTION_NAMES[i]) for i in (3, 2, 1)]
    for (label, pieces), color in zip((spans or {}).items(), SPAN_COLORS):
        for start, end in pieces:                       # the edges keep a one-token span visible
            ax.axvspan(start - 0.5, end - 0.5, facecolor=color, edgecolor=color, lw=1.2, alpha=0.45, zorder=0)
        handles.append(Patch(facecolor=color, alpha=0.45, label=label))
    ax.axvline(view.query, color="#000000", lw=0.8, ls="--")
    ax.set_xlim(0, len(mass) * view.block_size)
    ax.set_ylim(0, max(float(mass.max()), 1e-3) * 1.5)                       # room for the legend
    ax.set_title(f"query {view.query}: {view.recall[view.query]:.0%} of its attention in its blocks "
                 f"(best possible {view.oracle[view.query]:.0%})", fontsize=9)
    _tokens_axes(ax, "key position (a bar per block)", "attention mass")
    ax.legend(handles=handles, fontsize=7, frameon=False, loc="upper center", ncols=3)
    return ax.figure


def plot_recall(view, ax=None, dpi=80):
    """Attention mass kept at every query position: the indexer's selection against the best possible."""
    ax = _axes(ax, (6.4, 3.0), dpi)
    x = np.arange(len(view.recall))
    ax.plot(x, view.oracle.numpy(), color=PALETTE[1], lw=0.9, label=f"best possible (mean {view.oracle.mean():.0%})")
    ax.plot(x, view.recall.numpy(), color=PALETTE[0], lw=0.9, label=f"indexer (mean {view.recall.mean():.0%})")
    ax.plot([view.query], [float(view.recall[view.query])], "o", color="#000000", ms=4)
    ax.set_ylim(0, 1.03)
    ax.set_title(f"attention mass kept by {view.top_k} blocks of {view.block_size}, every query", fontsize=9)
    ax.grid(alpha=0.3)
    _tokens_axes(ax, "query position", "recall")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    return ax.figure


def plot_loads(view, ax=None, dpi=80):
    """Loads of each KV block by the head's KV group in both gather orders (log scale)."""
    ax = _axes(ax, (6.4, 3.0), dpi)
    plot_load_counts(view.loads, log=True, ax=ax)
    ax.minorticks_off()
    ax.set_title(f"KV-block loads of KV group {view.group}, all its queries", fontsize=9)
    return ax.figure


def plot_explorer(view, source=None, dpi=80):
    """The four pictures of a view in one figure; `source` adds its name, head roles and spans.

    The layout is fixed rather than constrained: that halves the time to draw, which the widget pays
    at every change."""
    fig = Figure(figsize=(10.4, 6.4), dpi=dpi)
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.08, top=0.9, wspace=0.2, hspace=0.42)
    (a, b), (c, d) = fig.subplots(2, 2)
    plot_attention(view, ax=a)
    plot_query(view, spans=source.spans if source else None, ax=b)
    plot_recall(view, ax=c)
    plot_loads(view, ax=d)
    role = f" ({source.head_roles[view.head]})" if source and source.head_roles else ""
    name = f"{source.name}: " if source else ""
    fig.suptitle(f"{name}layer {view.layer}, head {view.head}{role}, KV group {view.group}, "
                 f"{view.top_k} blocks of {view.block_size} tokens", fontsize=10)
    return fig


def _tokens_axes(ax, xlabel, ylabel):
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)


def figure_png(fig):
    """The PNG bytes of a figure."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# -- the widget

class SparsityExplorer:
    """ipywidgets controls (source, layer, head, query, block size, top-k) wired to `explorer_view`
    and `plot_explorer`. Display it in a notebook; `set(**values)` changes several controls at once.

    Args:
        *sources: Source objects, shown in the source menu by name.
    """

    def __init__(self, *sources, dpi=80):
        import ipywidgets as widgets
        if not sources:
            raise ValueError("sources: give at least one Source (synthetic_source(), model_source(model))")
        for s in sources:
            if not isinstance(s, Source):
                raise TypeError(f"sources must be Source objects, got {type(s).__name__}")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"sources must have distinct names, got {names}")
        self.sources, self.dpi, self.seconds, self._quiet = {s.name: s for s in sources}, dpi, None, False
        slider = dict(continuous_update=False, layout=widgets.Layout(width="320px"))
        self.controls = {"source": widgets.Dropdown(options=names, description="source"),
                         "layer": widgets.Dropdown(description="layer"),
                         "head": widgets.IntSlider(description="head", **slider),
                         "query": widgets.IntSlider(description="query", **slider),
                         "block_size": widgets.Dropdown(description="block size"),
                         "top_k": widgets.IntSlider(description="top-k", min=1, **slider)}
        self.image = widgets.Image(format="png")
        self.status = widgets.Label()
        c = self.controls
        self.widget = widgets.VBox([widgets.HBox([c["source"], c["layer"], c["block_size"]]),
                                    widgets.HBox([c["head"], c["query"], c["top_k"]]), self.image, self.status])
        with self._holding():
            self._reset()
        self.update()
        for control in self.controls.values():
            control.observe(self._changed, names="value")

    def state(self):
        """The controls' values: dict source, layer, head, query, block_size, top_k."""
        return {name: control.value for name, control in self.controls.items()}

    def set(self, **values):
        """Set several controls, then draw once. A new source first resets the others to its defaults."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise ValueError(f"set() takes {tuple(self.controls)}, got {sorted(unknown)}")
        if "source" in values:
            with self._holding():
                self.controls["source"].value = values.pop("source")
                self._reset()
        with self._holding():
            for name in self.controls:                  # in order: block_size sets the range of top_k
                if name in values:
                    self.controls[name].value = values[name]
                if name == "block_size":
                    self._fit_top_k()
        self.update()

    def update(self):
        """Draw the current view into the image; `self.seconds` is how long it took."""
        start = time.perf_counter()
        state = self.state()
        source = self.sources[state.pop("source")]
        fig = plot_explorer(explorer_view(source, **state), source, dpi=self.dpi)
        self.image.value = figure_png(fig)
        self.seconds = time.perf_counter() - start
        self.status.value = f"drawn in {self.seconds * 1000:.0f} ms"

    def _changed(self, change):
        if self._quiet:
            return
        with self._holding():
            if change["owner"] is self.controls["source"]:
                self._reset()
            self._fit_top_k()
        self.update()

    def _reset(self):
        """Point every control at the current source's ranges and first view."""
        s, c = self.sources[self.controls["source"].value], self.controls
        c["layer"].options = list(s.layers)
        c["layer"].value = next(iter(s.layers))
        c["head"].max, c["head"].value = s.heads - 1, s.head
        c["query"].max, c["query"].value = s.tokens - 1, s.query
        c["block_size"].options = sorted({b for b in BLOCK_SIZES if b < s.tokens} | {s.block_size})
        c["block_size"].value = s.block_size
        c["top_k"].max = num_blocks(s.tokens, s.block_size)
        c["top_k"].value = s.top_k

    def _fit_top_k(self):
        """top-k can go up to the number of blocks at the current block size."""
        source = self.sources[self.controls["source"].value]
        self.controls["top_k"].max = num_blocks(source.tokens, self.controls["block_size"].value)

    @contextmanager
    def _holding(self):
        """Change controls without drawing for each change."""
        self._quiet = True
        try:
            yield
        finally:
            self._quiet = False

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
