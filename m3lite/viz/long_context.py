"""Long context: haystack accuracy against context length per attention mode, and where the final
query's selected blocks land.

The numbers come from pure functions, which are tested directly: `trace_final_query`,
`asked_blocks`, `hits`, `random_hit_probability` and `attention_on_blocks`. The `plot_*` functions
only draw them. Figures are built without pyplot, so a notebook shows each one once.
"""
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from ..attention import checks, num_blocks
from ..attention.common import chosen_blocks
from .attention import SELECTION_COLORS, SELECTION_NAMES
from .explorer import _load_model, span_blocks
from .gather import PALETTE
from .indexer import block_mass

MODES = ("dense", "msa", "untrained", "random")
MODE_LABELS = {"dense": "dense", "msa": "MSA, trained indexer", "untrained": "MSA, untrained indexer",
               "random": "MSA, random blocks"}
MODE_COLORS = {"dense": "#555555", "msa": PALETTE[0], "untrained": PALETTE[1], "random": PALETTE[3]}
ASKED_COLOR, OTHER_COLOR = "#d62728", "#8c564b"


def read_table(path):
    """The recorded evaluation (`python -m m3lite.evals ... --out`) as a dict; checks its haystack table."""
    with open(path) as f:
        table = json.load(f)
    for mode, rows in table.get("haystack", {}).items():
        for row in rows:
            if not {"context_len", "accuracy", "n_trials"} <= set(row):
                raise ValueError(f"{path}: haystack[{mode!r}] rows need context_len, accuracy and n_trials, got {row}")
    if not table.get("haystack"):
        raise ValueError(f"{path} has no haystack table")
    return table


def wilson_interval(accuracy, n, z=1.96):
    """The 95% Wilson score interval (lo, hi) of a share `accuracy` measured on `n` trials."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# -- where the final query looks

def final_query(example):
    """The position of the haystack's final query: its last token (the query item's END), which
    predicts the answer's first letter."""
    return example.info["query_span"][1] - 1


def asked_blocks(info, block_size):
    """The KV blocks holding the asked pair (<sep> key word <sep>) of a haystack's `info`: a list of ints."""
    return span_blocks(info["pair_spans"][info["query_pair"]], block_size)


def other_blocks(info, block_size):
    """The KV blocks holding the other pairs, without the asked pair's blocks: a sorted list of ints."""
    asked = set(asked_blocks(info, block_size))
    spans = [s for i, s in enumerate(info["pair_spans"]) if i != info["query_pair"]]
    return sorted({b for s in spans for b in span_blocks(s, block_size)} - asked)


@dataclass
class FinalQuery:
    """What the final query of each haystack did in one MSA layer.

    sel: int32 [N, HI, K] its selection (one row per KV group, -1 padded); mass: float32 [N, HQ, NB]
    each query head's dense attention mass per KV block (the same q and k, all visible tokens).
    """
    sel: torch.Tensor
    mass: torch.Tensor


@torch.no_grad()
def trace_final_query(model, examples, attention="msa", seed=0, batch=4):
    """Run `model` on haystacks in one attention mode; per MSA layer, the final query's FinalQuery.

    Args:
        model: an M3Lite or a checkpoint path; examples: haystacks (`m3lite.tasks.haystack`).
        attention: "msa", "untrained" (fresh indexers, as `m3lite.evals`), "random" or "dense" (the
            selection is then the indexer's, but attention reads every block).
        seed: for the untrained indexers and the random selection; batch: haystacks per forward.
    Returns:
        dict MSA layer index -> FinalQuery over all the examples.
    """
    from .. import evals, tasks
    model = _load_model(model)
    if attention not in evals.MODES:
        raise ValueError(f"attention must be one of {evals.MODES}, got {attention!r}")
    checks.positive_int(batch, "batch")
    if not examples or any("query_span" not in e.info for e in examples):
        raise ValueError("examples must be a non-empty list of haystacks (m3lite.tasks.haystack)")
    if len({len(e.tokens) for e in examples}) > 1:
        raise ValueError(f"examples must be haystacks of one length, got {sorted({len(e.tokens) for e in examples})}")
    if attention == "untrained":
        model, attention = evals.with_untrained_indexers(model, seed), "msa"
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    layers = [i for i, block in enumerate(model.blocks) if block.attn.sparse]
    found = {layer: ([], []) for layer in layers}
    for start in range(0, len(examples), batch):
        chunk = examples[start:start + batch]
        tokens, media, _ = tasks.collate(chunk)
        trace = []
        model(tokens.to(device), {m: x.to(device) for m, x in media.items()}, attention=attention,
              generator=generator, trace=trace)
        rows = torch.arange(len(chunk))
        pos = torch.tensor([final_query(e) for e in chunk])
        for layer, t in zip(layers, trace):
            q, k = t["q"][rows, :, pos].float(), t["k"].float()           # [n, HQ, D], [n, HKV, S, D]
            HQ, HKV = q.shape[1], k.shape[1]
            logits = torch.einsum("nhd,nhsd->nhs", q, k.repeat_interleave(HQ // HKV, 1)) * q.shape[-1] ** -0.5
            future = torch.arange(k.shape[2], device=device) > pos.to(device)[:, None, None]
            probs = torch.softmax(logits.masked_fill(future, float("-inf")), -1)    # [n, HQ, S]
            found[layer][0].append(t["sel"][rows, :, pos].cpu())
            found[layer][1].append(block_mass(probs, model.config.block_size).cpu())
    return {layer: FinalQuery(torch.cat(sel), torch.cat(mass)) for layer, (sel, mass) in found.items()}


def hits(sel, blocks):
    """Which selection rows hold at least one of their example's `blocks`.

    Args:
        sel: int [N, HI, K] selections (-1 = none); blocks: N lists of block ids (the asked pair's).
    Returns:
        bool [N, HI].
    """
    if sel.dim() != 3 or len(blocks) != sel.shape[0]:
        raise ValueError(f"sel must be [N, HI, K] with one list of blocks per row of N, got sel "
                         f"{tuple(sel.shape)} and {len(blocks)} lists")
    out = torch.zeros(sel.shape[:2], dtype=torch.bool)
    for n, ids in enumerate(blocks):
        out[n] = torch.isin(sel[n], torch.tensor(list(ids), dtype=sel.dtype)).any(-1)
    return out


def random_hit_probability(query_pos, key_blocks, block_size, top_k):
    """The chance that MSA's random selection for the query at `query_pos` holds one of `key_blocks`.

    The selection is the query's own block (forced) plus `top_k - 1` distinct blocks drawn uniformly
    from the other visible ones, blocks 0 .. own - 1, as `attention="random"` does.
    """
    own = query_pos // block_size
    keys = {b for b in key_blocks if 0 <= b <= own}
    if own in keys:
        return 1.0
    picks = min(top_k - 1, own)
    return 1.0 - math.comb(own - len(keys), picks) / math.comb(own, picks)


def attention_on_blocks(mass, sel, blocks):
    """The share of attention on `blocks`: dense (over all visible tokens) and within the selected blocks.

    Sparse attention is the dense softmax of the same q . k renormalised over the selected blocks' tokens,
    so its share on a block is the block's dense mass over the selected blocks' dense mass.
    Args:
        mass: [HQ, NB] dense attention mass per block of one query; sel: int [HI, K] its selection
            (query head h uses row h // (HQ // HI)); blocks: block ids (the asked pair's).
    Returns:
        (dense [HQ], sparse [HQ]): sparse counts a block only when it is selected.
    """
    HQ, NB = mass.shape
    group = torch.arange(HQ) // (HQ // sel.shape[0])
    picked = chosen_blocks(sel, NB)[group]                                  # [HQ, NB]
    target = torch.zeros(NB, dtype=torch.bool)
    target[list(blocks)] = True
    dense = mass[:, target].sum(-1)
    sparse = (mass * (picked & target)).sum(-1) / (mass * picked).sum(-1)
    return dense, sparse


# -- pictures

def plot_accuracy(table, live=None, train_lens=None, dpi=90):
    """Haystack accuracy against context length, one line per attention mode, with 95% intervals.

    Args:
        table: the recorded evaluation (`read_table`); its `haystack` maps mode -> rows of
            context_len, accuracy, n_trials.
        live: optional mode -> rows of the same form, measured here, drawn as open markers.
        train_lens: optional (shortest, longest) training length, shaded.
    """
    fig = Figure(figsize=(7.2, 3.6), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    recorded = table["haystack"]
    trials = sorted({r["n_trials"] for rows in recorded.values() for r in rows})
    for mode in [m for m in MODES if m in recorded]:
        rows = sorted(recorded[mode], key=lambda r: r["context_len"])
        x = [r["context_len"] for r in rows]
        y = [r["accuracy"] for r in rows]
        lo, hi = zip(*(wilson_interval(r["accuracy"], r["n_trials"]) for r in rows))
        ax.fill_between(x, lo, hi, color=MODE_COLORS[mode], alpha=0.15, lw=0)
        ax.plot(x, y, "o-", color=MODE_COLORS[mode], lw=1.5, ms=4, label=f"{MODE_LABELS[mode]} (recorded)")
    for mode, rows in (live or {}).items():
        ax.plot([r["context_len"] for r in rows], [r["accuracy"] for r in rows], "D", mfc="none", ms=8, mew=1.5,
                color=MODE_COLORS[mode], label=f"{MODE_LABELS[mode]}: here, {rows[0]['n_trials']} new trials")
    if train_lens:
        ax.axvspan(*train_lens, color="#000000", alpha=0.06, lw=0)
        ax.text(math.sqrt(train_lens[0] * train_lens[1]), 0.03, "training lengths", ha="center", fontsize=8)
    lengths = sorted({r["context_len"] for rows in recorded.values() for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("context length (tokens)", fontsize=9)
    ax.set_ylabel("haystack accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"recorded: {' / '.join(map(str, trials))} test haystacks per point (bands: 95% intervals)",
                 fontsize=9)
    fig.legend(fontsize=7, frameon=False, loc="outside right center")
    return fig


RECALL_PANELS = {"recall": "every query", "recall_at_answer": "the final query (it predicts the answer)"}
RECALL_COLORS = {"msa": MODE_COLORS["msa"], "untrained": MODE_COLORS["untrained"], "oracle": "#000000"}
RECALL_LABELS = {"msa": "trained indexer", "untrained": "untrained indexer", "oracle": "best possible (oracle)"}
LAYER_STYLES = ("-", "--", ":", "-.")


def plot_recall(table, dpi=90):
    """The recorded recall per MSA layer against context length: the dense attention mass inside the
    selected blocks, for the trained and untrained indexers and the best possible selection.

    One panel per table the recording has: `recall` (mean over every query) and `recall_at_answer`
    (the final query only). Each maps "msa", "untrained", "oracle" -> rows of context_len,
    per_layer, n. Colour is the selection and line style the layer; the last layer is drawn thicker.
    """
    panels = [name for name in RECALL_PANELS if name in table]
    fig = Figure(figsize=(4.0 * len(panels) + 1.8, 3.0), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, name in zip(axes, panels):
        n = sorted({r["n"] for rows in table[name].values() for r in rows})
        for mode, rows in table[name].items():
            rows = sorted(rows, key=lambda r: r["context_len"])
            per_layer = np.array([r["per_layer"] for r in rows])                # [lengths, MSA layers]
            for j in range(per_layer.shape[1]):
                last = j == per_layer.shape[1] - 1                          # the last layer drawn thicker
                ax.plot([r["context_len"] for r in rows], per_layer[:, j], LAYER_STYLES[j % len(LAYER_STYLES)],
                        marker="o", ms=3, lw=2.2 if last else 1.1, color=RECALL_COLORS.get(mode, PALETTE[5]))
        lengths = sorted({r["context_len"] for rows in table[name].values() for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(x) for x in lengths])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("context length (tokens)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(f"{RECALL_PANELS[name]}, {'/'.join(map(str, n))} haystacks", fontsize=9)
    axes[0].set_ylabel("recall (mass in the selection)", fontsize=9)
    modes = list(dict.fromkeys(m for name in panels for m in table[name]))
    layers = max(len(r["per_layer"]) for name in panels for rows in table[name].values() for r in rows)
    handles = [Line2D([], [], color=RECALL_COLORS.get(m, PALETTE[5]), lw=2, label=RECALL_LABELS.get(m, m))
               for m in modes]
    handles += [Line2D([], [], color="#777777", ls=LAYER_STYLES[j % len(LAYER_STYLES)],
                       lw=2.2 if j == layers - 1 else 1.1, label=f"MSA layer {j + 1}") for j in range(layers)]
    fig.legend(handles=handles, fontsize=7, frameon=False, loc="outside right center")
    return fig


def selection_row(sel, query_pos, num_kv_blocks, block_size):
    """Categories of one query's blocks, as `viz.attention.selection_categories`: int64 [HI, NB];
    0 not visible, 1 visible but not picked, 2 picked, 3 the own block (picked)."""
    own = query_pos // block_size
    grid = (torch.arange(num_kv_blocks) <= own).long().repeat(sel.shape[0], 1)
    picked = chosen_blocks(sel, num_kv_blocks)
    grid[picked] = 2
    grid[:, own][picked[:, own]] = 3
    return grid


def plot_final_query(example, traces, block_size, dpi=90):
    """Where the final query of one haystack looks, in every MSA layer and KV group.

    The top panel is the dense attention mass per block of the final query, mean over each group's
    query heads, taken from the first trace. Below it comes one panel per trace, with the blocks
    each (layer, group) row selected. The asked pair's blocks are outlined in red, and the other
    pairs' blocks are marked in brown above each panel.
    Args:
        example: the haystack; traces: mode or label -> `trace_final_query(model, [example], mode)`
            (a mode is named by `MODE_LABELS`).
    """
    info, pos = example.info, final_query(example)
    first = next(iter(traces.values()))
    layers = sorted(first)
    HQ, HI = first[layers[0]].mass.shape[1], first[layers[0]].sel.shape[1]
    NB = first[layers[0]].mass.shape[-1]
    names = [f"layer {l}, group {g}" for l in layers for g in range(HI)]
    asked, others = asked_blocks(info, block_size), other_blocks(info, block_size)
    fig = Figure(figsize=(8.2, 1.2 + 1.15 * (1 + len(traces))), dpi=dpi, layout="constrained")
    axes = fig.subplots(1 + len(traces), 1, sharex=True)
    mass = torch.cat([first[l].mass[0].unflatten(0, (HI, HQ // HI)).mean(1) for l in layers])     # [rows, NB]
    image = axes[0].imshow(np.ma.masked_less_equal(mass.numpy(), 0), norm=LogNorm(1e-3, 1), cmap="viridis",
                           aspect="auto", interpolation="nearest")
    bar = fig.colorbar(image, ax=list(axes), shrink=1 / (1 + len(traces)), anchor=(0, 1), pad=0.01, aspect=8)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("dense mass (top)", fontsize=7)
    axes[0].set_title(f"dense attention mass per block of the final query (position {pos}), "
                      f"{MODE_LABELS.get(next(iter(traces)), next(iter(traces)))} run", fontsize=9)
    cmap = ListedColormap(SELECTION_COLORS)
    for ax, (label, trace) in zip(axes[1:], traces.items()):
        label = MODE_LABELS.get(label, label)
        grid = torch.cat([selection_row(trace[l].sel[0], pos, NB, block_size) for l in layers])
        ax.imshow(grid.numpy(), cmap=cmap, vmin=-0.5, vmax=len(SELECTION_NAMES) - 0.5, aspect="auto",
                  interpolation="nearest")
        found = int(torch.cat([hits(trace[l].sel, [asked]) for l in layers], 1).sum())
        ax.set_title(f"{label}: the asked pair's block picked in {found} of {len(names)} rows", fontsize=9)
    for ax in axes:
        for b in others:
            ax.plot(b, -0.5, "v", color=OTHER_COLOR, ms=5, clip_on=False)
        for b in asked:
            ax.add_patch(Rectangle((b - 0.5, -0.5), 1, len(names), fill=False, edgecolor=ASKED_COLOR, lw=1.6))
        ax.set_yticks(range(len(names)), names)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel(f"KV block ({block_size} tokens each)", fontsize=9)
    handles = [Patch(facecolor=c, edgecolor="#777777", label=n) for n, c in zip(SELECTION_NAMES, SELECTION_COLORS)]
    handles += [Patch(facecolor="none", edgecolor=ASKED_COLOR, lw=1.6, label="the asked pair's block(s)"),
                Patch(facecolor=OTHER_COLOR, label="other pairs (marks on top)")]
    fig.legend(handles=handles, fontsize=7, frameon=False, loc="outside lower center", ncols=3)
    fig.suptitle(f"{len(example.tokens)} tokens, {num_blocks(len(example.tokens), block_size)} blocks; "
                 f"asked: {info['modalities'][info['query_pair']]} of digit {info['query_class']} -> "
                 f"{example.answer!r}", fontsize=10)
    return fig


def plot_hit_rates(rates, expected_random=None, n_haystacks=None, dpi=90):
    """Share of haystacks whose final query selects the asked pair's block, per (layer, group).

    Args:
        rates: context length -> mode ("msa", "untrained", "random") -> {layer: float [HI] shares}.
        expected_random: optional context length -> the exact chance for random blocks (drawn as a line).
        n_haystacks: optional context length -> how many haystacks the shares are over (for the titles).
    """
    lengths = list(rates)
    fig = Figure(figsize=(3.3 * len(lengths) + 1.6, 2.8), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(lengths), sharey=True))
    for ax, length in zip(axes, lengths):
        modes = list(rates[length])
        first = rates[length][modes[0]]
        names = [f"L{l} g{g}" for l in first for g in range(len(first[l]))]
        width = 0.8 / len(modes)
        for i, mode in enumerate(modes):
            values = torch.cat([torch.as_tensor(v, dtype=torch.float32) for v in rates[length][mode].values()])
            ax.bar(np.arange(len(names)) + (i - (len(modes) - 1) / 2) * width, values.numpy(), width,
                   color=MODE_COLORS[mode], label=MODE_LABELS[mode])
        if expected_random and length in expected_random:
            ax.axhline(expected_random[length], color="#000000", ls="--", lw=1,
                       label="random blocks: the exact chance")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, 1.05)
        n = (n_haystacks or {}).get(length)
        ax.set_title(f"{length} tokens" + (f", {n} haystacks" if n else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("asked pair's block selected", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="outside right center")
    return fig
