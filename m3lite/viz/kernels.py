"""Pictures of the Triton kernels: which program loads which KV block, and measured GPU results.

The `*_loads` functions are pure and return small integer matrices (tested directly); the
`plot_*` functions return matplotlib figures built without pyplot, so a notebook shows each once.
"""
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from .gather import PALETTE

METHOD_NAMES = {"sdpa_dense_causal": "SDPA dense causal", "ours_query": "ours, query-major",
                "ours_kv": "ours, KV-outer", "ours_kv_no_tiles": "ours, KV-outer without the tile pass",
                "msa_end_to_end": "MSA end to end (indexer + KV-outer)",
                "flex_selection_mask": "FlexAttention, selection as mask", "indexer": "indexer"}
METHOD_COLORS = {"sdpa_dense_causal": "#7f7f7f", "ours_query": PALETTE[0], "ours_kv": PALETTE[1], "ours_kv_no_tiles": PALETTE[3],
                 "msa_end_to_end": PALETTE[2], "flex_selection_mask": PALETTE[4], "indexer": PALETTE[5]}


def query_program_loads(sel, num_blocks):
    """Block loads of the query-major kernel for one selection row: program t loads sel[t]'s blocks.

    Args:
        sel: int [T, K] block ids of one (batch, selection row), -1 = none; num_blocks: NB.
    Returns:
        int64 [T, NB]: entry (t, j) is how often program t loads block j (0 or 1).
    """
    T = sel.shape[0]
    loads = torch.zeros(T, num_blocks + 1, dtype=torch.long)
    loads.scatter_(1, torch.where(sel < 0, num_blocks, sel).long().cpu(), 1)
    return loads[:, :num_blocks]


def kv_program_loads(rows, num_blocks):
    """Block loads of the KV-outer kernel: program p loads block rows[p] % NB, once.

    Args:
        rows: int [P] the CSR row of each program (`p.rows[p.working()]` of a `plan`); num_blocks: NB.
    Returns:
        int64 [P, NB]: a single 1 per program, in the column of the block it loads.
    """
    return torch.nn.functional.one_hot(rows.long().cpu() % num_blocks, num_blocks)


def plot_program_loads(loads, dpi=90):
    """Programs (rows) against the KV blocks they load (columns), one panel per kernel order.

    Args:
        loads: dict title -> int [P, NB] load matrix (from `query_program_loads`, `kv_program_loads`).
    Returns:
        a matplotlib Figure; each panel's title says how many block loads it makes in all.
    """
    fig = Figure(figsize=(2.6 * len(loads) + 0.4, 3.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(loads), squeeze=False)[0]
    for i, (ax, (title, m)) in enumerate(zip(axes, loads.items())):
        m = np.asarray(m.cpu())
        P, NB = m.shape
        ax.imshow(np.ma.masked_equal(m, 0), cmap="Blues", vmin=0, vmax=1.3, aspect="auto",
                  interpolation="nearest", extent=(-0.5, NB - 0.5, P - 0.5, -0.5))
        ax.set_facecolor("#f4f4f4")
        ax.set_title(f"{title}\n{P} programs, {int(m.sum())} block loads", fontsize=9)
        ax.set_xlabel("KV block", fontsize=8)
        ax.set_ylabel("program", fontsize=8)
        ax.set_xticks(range(NB))
        ax.tick_params(labelsize=7)
    return fig


def case_rows(rows, case, pattern, method):
    """The one row of recorded results for (case, pattern, method), or None."""
    for r in rows:
        if (r["case"], r["pattern"], r["method"]) == (case, pattern, method):
            return r
    return None


def plot_measured(rows, cases, methods, value="useful_tflops", xlabels=None, targets=None,
                  ylabel="useful TFLOP/s", reference=None, dpi=90):
    """Recorded GPU results: `value` per method against the cases, one panel per pattern.

    Args:
        rows: the "rows" of a recorded benchmark JSON; cases: case names in x order;
        methods: method names to draw; value: the row field to plot (log y axis);
        xlabels: labels for the cases; targets: optional dict label -> (method, case, value),
            drawn as a star where a method was meant to arrive; reference: optional y value drawn
            as a dashed line (e.g. 1 for a speedup).
    Returns:
        a matplotlib Figure.
    """
    patterns = sorted({r["pattern"] for r in rows}, key=lambda p: p != "random")
    fig = Figure(figsize=(3.4 * len(patterns) + 1.9, 3.0), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(patterns), sharey=True, squeeze=False)[0]
    x = np.arange(len(cases))
    for ax, pattern in zip(axes, patterns):
        for method in methods:
            ys = [case_rows(rows, c, pattern, method) for c in cases]
            ys = [r[value] if r and r[value] is not None else np.nan for r in ys]
            ax.plot(x, ys, "o-", color=METHOD_COLORS.get(method), label=METHOD_NAMES.get(method, method),
                    markersize=4)
        for label, (method, case, target) in (targets or {}).items():
            ax.plot([cases.index(case)], [target], "*", color=METHOD_COLORS.get(method), markersize=11,
                    markeredgecolor="black", markeredgewidth=0.5, label=label)
        if reference is not None:
            ax.axhline(reference, color="black", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x, xlabels or cases)
        ax.set_title(f"{pattern} selection", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel(ylabel, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=7, frameon=False)
    return fig


def roof(intensity, bandwidth_tbs, peak_tflops):
    """The roofline: attainable TFLOP/s at an arithmetic intensity (FLOP per byte)."""
    return np.minimum(peak_tflops, np.asarray(intensity, dtype=float) * bandwidth_tbs)


def plot_roofline(points, bandwidth_tbs, peak_tflops, dpi=90):
    """Measured rates against arithmetic intensity, under the bandwidth and compute ceilings.

    Args:
        points: list of (label, method, intensities, tflops): one marker series per entry,
            coloured by method; bandwidth_tbs: memory ceiling (TB/s); peak_tflops: compute ceiling.
    Returns:
        a matplotlib Figure with log-log axes.
    """
    fig = Figure(figsize=(5.6, 3.4), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    xs = np.concatenate([np.atleast_1d(np.asarray(p[2], dtype=float)) for p in points])
    grid = np.logspace(np.log10(xs.min() / 3), np.log10(xs.max() * 3), 200)
    ax.plot(grid, grid * bandwidth_tbs, ":", color="#555555", linewidth=1)
    ax.plot(grid, np.full_like(grid, peak_tflops), ":", color="#555555", linewidth=1)
    ax.plot(grid, roof(grid, bandwidth_tbs, peak_tflops), "-", color="black", linewidth=1.2,
            label=f"roof: min({peak_tflops:g} TFLOP/s, intensity x {bandwidth_tbs:g} TB/s)")
    markers = "osD^v<>"
    for i, (label, method, intensity, tflops) in enumerate(points):
        ax.plot(intensity, tflops, markers[i % len(markers)], color=METHOD_COLORS.get(method, PALETTE[i]),
                label=label, markersize=5, markeredgecolor="black", markeredgewidth=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1, peak_tflops * 2)
    ax.set_xlim(grid[0], grid[-1])
    ax.set_xlabel("arithmetic intensity (useful FLOP per byte moved)", fontsize=9)
    ax.set_ylabel("useful TFLOP/s", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="lower right", frameon=True, framealpha=0.9)
    return fig
