"""Pictures of the two gather orders: block load counts, and a selection inverted into a CSR.

Figures are built without pyplot, so a notebook shows a returned figure exactly once.
"""
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..attention import build_block_csr

PALETTE = ("#3b75af", "#ef8636", "#519e3e", "#c53a32", "#8d69b8", "#84584e", "#d57fbe", "#bcbd22",
           "#17becf", "#7f7f7f")


def plot_load_counts(counts, log=False, dpi=90, ax=None):
    """Grouped bar chart of how often each KV block is loaded.

    Args:
        counts: dict name -> int [NB] load counts (e.g. from `block_load_counts`).
        log: use a logarithmic y axis; ax: draw into this Axes instead of a new figure.
    Returns:
        a matplotlib Figure.
    """
    if ax is None:
        ax = Figure(figsize=(6.4, 2.8), dpi=dpi, layout="constrained").subplots()
    width = 0.8 / len(counts)
    for i, (name, c) in enumerate(counts.items()):
        c = np.asarray(c.cpu() if hasattr(c, "cpu") else c)
        ax.bar(np.arange(len(c)) + (i - (len(counts) - 1) / 2) * width, c, width,
               label=f"{name} ({int(c.sum())} in all)", color=PALETTE[i % len(PALETTE)])
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.7)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("KV block", fontsize=9)
    ax.set_ylabel("loads", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return ax.figure


def plot_selection_csr(sel, num_blocks, dpi=90):
    """A small selection next to its inversion: query -> blocks (sel) and block -> queries (CSR).

    Args:
        sel: int [T, K] block ids of one (batch, selection row), -1 = none; num_blocks: NB.
    Returns:
        a matplotlib Figure. Left, sel itself; right, a T x NB grid whose column j, read top
        down, is the CSR row of block j (the queries that chose it, labelled with their slot).
    """
    T, K = sel.shape
    csr = build_block_csr(sel[None, None], num_blocks)
    colors = ListedColormap(("#ffffff",) + tuple(PALETTE[j % len(PALETTE)] for j in range(num_blocks)))
    fig = Figure(figsize=(2.4 + 0.4 * (K + num_blocks), 0.9 + 0.28 * T), dpi=dpi, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(K, num_blocks))
    ids = sel.cpu().numpy()
    left.imshow(ids + 1, cmap=colors, vmin=-0.5, vmax=num_blocks + 0.5, interpolation="nearest")
    for t in range(T):
        for s in range(K):
            left.text(s, t, str(ids[t, s]), ha="center", va="center", fontsize=8)
    _grid(left, T, K, "sel: query -> blocks", "slot", "query")
    grid = np.zeros((T, num_blocks), dtype=int)
    offsets = csr.offsets.tolist()
    for j in range(num_blocks):
        for e in range(offsets[j], offsets[j + 1]):
            t = int(csr.query[e])
            grid[t, j] = j + 1
            right.text(j, t, f"s{int(csr.slot[e])}", ha="center", va="center", fontsize=7)
    right.imshow(grid, cmap=colors, vmin=-0.5, vmax=num_blocks + 0.5, interpolation="nearest")
    _grid(right, T, num_blocks, "CSR: block -> queries (slot)", "KV block", "query")
    return fig


def _grid(ax, rows, cols, title, xlabel, ylabel):
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    ax.set_xticks(np.arange(cols + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(rows + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="#999999", linewidth=0.5)
    ax.tick_params(which="both", length=0, labelsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
