"""Pictures of the block indexer: block scores, the selection they lead to, and recall curves.

Figures are built without pyplot, so a notebook shows a returned figure exactly once.
"""
import numpy as np
import torch
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..attention.common import query_positions
from .attention import SELECTION_COLORS, SELECTION_NAMES, selection_categories


def block_mass(p, block_size):
    """Sum attention probabilities over the tokens of each block.

    Args:
        p: [..., T, S] attention probabilities (rows sum to 1).
    Returns:
        [..., T, NB]: the share of each query's attention that lands in each block.
    """
    S = p.shape[-1]
    NB = -(-S // block_size)
    p = torch.nn.functional.pad(p, (0, NB * block_size - S))
    return p.unflatten(-1, (NB, block_size)).sum(-1)


def plot_block_selection(scores, sel, S, block_size, mass=None, relative=False, dpi=90):
    """One selection row set as T x NB heatmaps: true attention mass, block scores, the selection.

    Args:
        scores: [T, NB] block scores of one (batch, index head), -inf = no visible token.
        sel: int [T, K] its selection; S, block_size: keys and tokens per block.
        mass: optional [T, NB] dense attention mass per block (e.g. from `block_mass`), drawn first.
        relative: draw each score minus its row's best (the selection only depends on the ranking).
    Returns:
        a matplotlib Figure.
    """
    T, NB = scores.shape
    pos = query_positions(T, S, "cpu")
    extent = (-0.5, NB - 0.5, int(pos[-1]) + 0.5, int(pos[0]) - 0.5)
    panels = 3 if mass is not None else 2
    fig = Figure(figsize=(2.7 * panels + 1.8, 3.4), dpi=dpi, layout="constrained")
    axes = list(fig.subplots(1, panels))
    if mass is not None:
        ax = axes.pop(0)
        m = np.ma.masked_less_equal(mass.detach().float().cpu().numpy(), 0)
        im = ax.imshow(m, norm=LogNorm(1e-4, 1), cmap="viridis", aspect="auto",
                       interpolation="nearest", extent=extent)
        fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
        _label(ax, "dense attention mass per block", ylabel="query position")
    ax = axes[0]
    s = scores.detach().float().cpu()
    vmin = None
    if relative:
        s = s - s.amax(-1, keepdim=True)
        vmin = float(s[s.isfinite()].quantile(0.05))                        # keep contrast near the top
    im = ax.imshow(np.ma.masked_invalid(s.numpy()), cmap="viridis", aspect="auto", vmin=vmin,
                   interpolation="nearest", extent=extent)
    fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    title = "block score - best in row" if relative else "block scores (max of iq . ik)"
    _label(ax, title, ylabel=None if mass is not None else "query position")
    ax = axes[1]
    grid = selection_categories(sel.cpu(), S, block_size)
    ax.imshow(grid.numpy(), cmap=ListedColormap(SELECTION_COLORS), vmin=-0.5,
              vmax=len(SELECTION_NAMES) - 0.5, aspect="auto", interpolation="nearest", extent=extent)
    _label(ax, f"selection (top_k = {sel.shape[-1]})")
    handles = [Patch(facecolor=c, edgecolor="#777777", label=n)
               for n, c in zip(SELECTION_NAMES, SELECTION_COLORS)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return fig


def _label(ax, title, ylabel=None):
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("KV block", fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)


def plot_curves(x, curves, xlabel, ylabel="recall", title=None, logx=False, dpi=90):
    """Line plot of named curves over a shared x axis, for recall against top-k or block size.

    Args:
        x: the x values; curves: dict name -> y values (one per x).
    Returns:
        a matplotlib Figure.
    """
    fig = Figure(figsize=(4.6, 3.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for name, y in curves.items():
        ax.plot(list(x), [float(v) for v in y], marker="o", markersize=3.5, label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x), [str(v) for v in x])
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    return fig
