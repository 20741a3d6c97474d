"""Pictures of attention patterns: which keys, blocks or tiles each query uses.

The `*_categories` functions are pure and return small integer grids (tested directly);
`show_categories` turns grids into a matplotlib figure. Figures are built without pyplot, so a
notebook shows a returned figure exactly once and nothing leaks between calls.
"""
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..attention.common import chosen_blocks, query_positions
from ..attention.indexer import num_blocks

SELECTION_NAMES = ("future (invisible)", "visible, not picked", "picked", "own block (forced)")
SELECTION_COLORS = ("#ffffff", "#d9d9d9", "#3b75af", "#ef8636")
TILE_NAMES = ("skipped (all future)", "computed, partly masked", "computed, fully visible")
TILE_COLORS = ("#ffffff", "#ef8636", "#3b75af")
MASK_NAMES = ("hidden", "visible")
MASK_COLORS = ("#ffffff", "#3b75af")


def selection_categories(sel, S, block_size, causal=True):
    """Classify every (query, block) of one selection row set for a picture.

    Args:
        sel: int [T, K] block ids of one head (-1 = none); S: keys; block_size: BS.
    Returns:
        int64 [T, NB]: 0 no visible token, 1 visible but not picked, 2 picked, 3 picked own block.
    """
    T = sel.shape[0]
    NB = num_blocks(S, block_size)
    first_token = torch.arange(NB, device=sel.device) * block_size
    if causal:
        pos = query_positions(T, S, sel.device)
        visible = first_token <= pos[:, None]                               # [T, NB]
        own = torch.arange(NB, device=sel.device) == (pos // block_size)[:, None]
    else:
        visible = torch.ones(T, NB, dtype=torch.bool, device=sel.device)
        own = torch.zeros(T, NB, dtype=torch.bool, device=sel.device)
    picked = chosen_blocks(sel, NB)
    grid = visible.long()
    grid[picked] = 2
    grid[picked & own] = 3
    return grid


def tile_categories(T, S, block_q, block_k, causal=True):
    """Classify the [block_q, block_k] tiles of a T x S score matrix the way flash attention sees them.

    Args:
        T: queries; S: keys (bottom-right aligned when causal); block_q, block_k: tile sizes.
    Returns:
        int64 [ceil(T / block_q), ceil(S / block_k)]: 0 skipped (every key in the query tile's
        future), 1 computed with some entries masked, 2 computed and fully visible.
    """
    pos = query_positions(T, S, "cpu")
    q_first = pos[::block_q]                                                 # first query of each row tile
    q_last = pos[torch.arange(block_q - 1, T + block_q - 1, block_q).clamp(max=T - 1)]
    k_first = torch.arange(0, S, block_k)
    k_last = (k_first + block_k - 1).clamp(max=S - 1)
    if not causal:
        return torch.full((len(q_first), len(k_first)), 2, dtype=torch.long)
    computed = k_first[None, :] <= q_last[:, None]
    full = k_last[None, :] <= q_first[:, None]
    return computed.long() + full.long()


def show_categories(grids, names, colors, titles=None, xlabel=None, ylabel=None,
                    panel_size=(3.2, 2.8), dpi=90, extents=None, cell_lines=False, aspect="auto"):
    """Draw one or more integer grids side by side with a shared legend; return the figure.

    Args:
        grids: a 2-D int tensor or a list of them, values in [0, len(names)).
        names, colors: one label and one colour per category.
        titles: one title per grid; extents: optional (left, right, bottom, top) per grid, so
            axes can read in tokens rather than cells; cell_lines: draw the cell borders;
            aspect: "auto" fills each panel, "equal" keeps cells square.
    """
    grids = [grids] if torch.is_tensor(grids) else list(grids)
    titles = titles or [None] * len(grids)
    extents = extents or [None] * len(grids)
    fig = Figure(figsize=(panel_size[0] * len(grids) + 1.6, panel_size[1]), dpi=dpi,
                 layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    cmap = ListedColormap(colors)
    for ax, grid, title, extent in zip(axes, grids, titles, extents):
        ax.imshow(grid.cpu().numpy(), cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5,
                  interpolation="nearest", aspect=aspect, extent=extent)
        if cell_lines:
            _draw_cell_lines(ax, grid.shape, extent)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel(ylabel, fontsize=9)
    handles = [Patch(facecolor=c, edgecolor="#777777", label=n) for n, c in zip(names, colors)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return fig


def _draw_cell_lines(ax, shape, extent):
    """Thin lines on the borders of the cells of an image of `shape` drawn with `extent`."""
    rows, cols = shape
    left, right, bottom, top = extent or (-0.5, cols - 0.5, rows - 0.5, -0.5)
    ax.set_xticks(np.linspace(left, right, cols + 1), minor=True)
    ax.set_yticks(np.linspace(top, bottom, rows + 1), minor=True)
    ax.grid(which="minor", color="#888888", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
