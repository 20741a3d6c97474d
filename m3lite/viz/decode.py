"""Pictures of decoding: the cache filling up, the bytes one step reads, and measured GPU results.

`step_bytes` and `decode_row` are pure and tested directly; the `plot_*` functions return
matplotlib figures built without pyplot, so a notebook shows each once. Measured results are read
by method name, so a method added to the recorded file shows up without a change here.
"""
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from .gather import PALETTE

M3_DECODE = dict(HKV=4, D=128, DI=128, BS=128, K=16)     # M3's decode shape (64 query heads share these)
METHOD_NAMES = {"sdpa_dense": "SDPA dense", "naive_gather_sdpa": "torch gather + SDPA",
                "ours_index": "ours: index scan + top-k", "ours_attend": "ours: attend to the selection",
                "ours_step": "ours: whole MSA step", "ours_index_fp8": "ours: index scan + top-k, fp8 keys",
                "ours_step_fp8": "ours: whole step, fp8 index keys"}
METHOD_COLORS = {"sdpa_dense": "#7f7f7f", "naive_gather_sdpa": PALETTE[4], "ours_index": PALETTE[5],
                 "ours_attend": PALETTE[1], "ours_step": PALETTE[2], "ours_index_fp8": PALETTE[6],
                 "ours_step_fp8": PALETTE[0]}
CACHE_COLORS = ("#ffffff", "#e4e4e4", PALETTE[0], PALETTE[1])   # not allocated, spare, cached, new
CACHE_NAMES = ("not allocated", "spare capacity", "cached", "newest tokens")


def step_bytes(S, B=1, HKV=4, D=128, DI=128, BS=128, K=16, kv_bytes=2, index_bytes=2, index_scale_bytes=0):
    """Bytes one decode step (one new token per sequence) must read from the caches.

    Args:
        S: cached tokens per sequence; B: sequences; HKV, D: KV heads and head dim; DI: index dim
        (one shared index-key head); BS, K: block size and top-k; kv_bytes, index_bytes: bytes per
        element of K/V and of the index keys (2 for bf16, 1 for fp8); index_scale_bytes: bytes
        stored per token beside its index key (4 in m3lite's fp8 cache: a float32 scale).
    Returns:
        dict with `dense` (all of K and V), `index` (all index keys), `selected` (K and V of the
        top-k blocks, at most the whole cache) and `msa` (index + selected).
    """
    dense = 2 * B * HKV * S * D * kv_bytes
    index = B * S * (DI * index_bytes + index_scale_bytes)
    selected = 2 * B * HKV * min(S, K * BS) * D * kv_bytes
    return dict(dense=dense, index=index, selected=selected, msa=index + selected)


def plot_cache(snapshots, block_size, new=1, dpi=90):
    """What the cache holds, one panel per snapshot: rows are sequences, columns token slots.

    Args:
        snapshots: list of (title, lengths, capacity); block_size: tokens per block (grid lines);
        new: how many of each sequence's last tokens to mark as this step's (0 for none).
    Returns:
        a matplotlib Figure; slots past a snapshot's capacity are drawn as not allocated.
    """
    width = max(capacity for _, _, capacity in snapshots)
    fig = Figure(figsize=(6.6, 0.5 + 0.32 * sum(len(lengths) + 2 for _, lengths, _ in snapshots)),
                 dpi=dpi, layout="constrained")
    axes = fig.subplots(len(snapshots), 1, sharex=True, squeeze=False,
                        height_ratios=[len(lengths) for _, lengths, _ in snapshots])[:, 0]
    for ax, (title, lengths, capacity) in zip(axes, snapshots):
        grid = np.zeros((len(lengths), width), dtype=int)
        grid[:, :capacity] = 1
        for b, length in enumerate(lengths):
            grid[b, :length] = 2
            grid[b, max(0, length - new):length] = 3
        ax.imshow(grid, cmap=ListedColormap(CACHE_COLORS), vmin=-0.5, vmax=3.5, aspect="auto",
                  interpolation="nearest")
        for edge in range(0, width + 1, block_size):
            ax.axvline(edge - 0.5, color="#555555" if edge <= capacity else "#cccccc", linewidth=0.8)
        ax.set_yticks(range(len(lengths)), [f"seq {b}: {n}" for b, n in enumerate(lengths)], fontsize=7)
        ax.set_title(f"{title}: capacity {capacity} = {capacity // block_size} blocks", fontsize=8, loc="left")
        ax.tick_params(labelsize=7, length=0)
    axes[-1].set_xlabel(f"token slot (blocks of {block_size})", fontsize=8)
    handles = [Patch(facecolor=c, edgecolor="#999999", label=n) for c, n in zip(CACHE_COLORS, CACHE_NAMES)]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=7, frameon=False)
    return fig


INDEX_FORMATS = {"bf16 index keys": (2, 0), "fp8 index keys + fp32 scale": (1, 4)}


def plot_step_bytes(contexts, index_formats=INDEX_FORMATS, dpi=90, **shape):
    """Bytes read per decode step against the context, dense vs MSA, and their ratio.

    Args:
        contexts: cached tokens per sequence (x axis); index_formats: dict label ->
        (index_bytes, index_scale_bytes), one MSA curve each; shape: other `step_bytes` arguments
        (default M3's shape, K and V in bf16).
    Returns:
        a matplotlib Figure: left, bytes per step (log-log); right, dense / MSA with its limit
        for each index format as a dashed line.
    """
    shape = {**M3_DECODE, **shape}
    S = np.asarray(contexts, dtype=float)
    fig = Figure(figsize=(7.6, 3.0), dpi=dpi, layout="constrained")
    left, right = fig.subplots(1, 2)
    dense = np.array([step_bytes(s, **shape)["dense"] for s in S])
    left.plot(S, dense, "-", color=METHOD_COLORS["sdpa_dense"], label="dense: all of K and V")
    limits = []
    for i, (label, (index_bytes, scale_bytes)) in enumerate(index_formats.items()):
        parts = [step_bytes(s, **shape, index_bytes=index_bytes, index_scale_bytes=scale_bytes) for s in S]
        msa = np.array([p["msa"] for p in parts])
        color = PALETTE[(2, 0, 4)[i % 3]]
        left.plot(S, msa, "-", color=color, label=f"MSA, {label}")
        left.plot(S, [p["index"] for p in parts], ":", color=color, label="  of which the index scan")
        right.plot(S, dense / msa, "-", color=color, label=f"MSA, {label}")
        limit = parts[-1]["dense"] / parts[-1]["index"]              # both grow with S: their ratio is the limit
        limits.append(limit)
        right.axhline(limit, color=color, linestyle="--", linewidth=0.8)
        right.text(S[0], limit * 1.02, f"limit {limit:.3g}x", color=color, fontsize=7, va="bottom")
    left.plot(S, [step_bytes(s, **shape)["selected"] for s in S], "--", color=PALETTE[1],
              label="top-k blocks of K and V")
    left.set_ylabel("bytes read per step", fontsize=8)
    right.set_ylabel("dense bytes / MSA bytes", fontsize=8)
    right.set_ylim(0, 1.15 * max(limits))
    right.legend(fontsize=6.5, frameon=False, loc="lower right")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: _tokens(x)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("context (cached tokens)", fontsize=8)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
    left.legend(fontsize=6.5, frameon=False)
    left.set_yscale("log")
    left.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _bytes(y)))
    return fig


def decode_row(rows, case, method):
    """The one recorded row for (case, method), or None."""
    return next((r for r in rows if (r["case"], r["method"]) == (case, method)), None)


def plot_decode_measured(rows, value, ylabel, log=True, reference=None, methods=None, dpi=90):
    """Recorded decode results as grouped bars: one group per case, one bar per method.

    Args:
        rows: the "rows" of a recorded decode benchmark; value: the row field to draw;
        methods: which methods, in order (default: every method in the file, in file order);
        reference: optional y value drawn as a dashed line (e.g. 1 for a speedup).
    Returns:
        a matplotlib Figure.
    """
    cases = list(dict.fromkeys(r["case"] for r in rows))
    methods = methods or list(dict.fromkeys(r["method"] for r in rows))
    fig = Figure(figsize=(7.6, 3.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        ys = [decode_row(rows, c, method) for c in cases]
        ys = [r[value] if r and r[value] is not None else np.nan for r in ys]
        ax.bar(np.arange(len(cases)) + (i - (len(methods) - 1) / 2) * width, ys, width,
               color=METHOD_COLORS.get(method, PALETTE[(i + 6) % len(PALETTE)]),
               label=METHOD_NAMES.get(method, method))
    if reference is not None:
        ax.axhline(reference, color="black", linestyle="--", linewidth=0.8)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.tick_params(labelsize=7)
    fig.legend(loc="outside right center", fontsize=7, frameon=False)
    return fig


SHARE_SERIES = {"dense_share": ("dense attention", "sdpa_dense"), "msa_share": ("MSA", "ours_step"),
                "msa_fp8_share": ("MSA, fp8 index keys", "ours_step_fp8")}


def plot_attention_share(share, dpi=90):
    """Share of attention in one layer's decode step against the context, dense vs MSA.

    Args:
        share: the "share" rows of a recorded decode benchmark (batch, context, dense_share,
        msa_share, ...); every field ending in `_share` is drawn, the first (above its points) and
        the last (below them) annotated with their values.
    Returns:
        a matplotlib Figure, one panel per batch size.
    """
    batches = sorted({r["batch"] for r in share})
    fields = [f for f in share[0] if f.endswith("_share")]
    fig = Figure(figsize=(3.3 * len(batches) + 0.6, 2.9), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(batches), sharey=True, squeeze=False)[0]
    for ax, batch in zip(axes, batches):
        mine = sorted((r for r in share if r["batch"] == batch), key=lambda r: r["context"])
        x = [r["context"] for r in mine]
        for i, field in enumerate(fields):
            label, method = SHARE_SERIES.get(field, (field, None))
            color = METHOD_COLORS.get(method, PALETTE[(i + 6) % len(PALETTE)])
            ys = [100 * r[field] for r in mine]
            ax.plot(x, ys, "o-", color=color, label=label, markersize=4)
            for xi, y in zip(x, ys if i in (0, len(fields) - 1) else []):
                ax.annotate(f"{y:.0f}%", (xi, y), textcoords="offset points", xytext=(0, 5 if i == 0 else -11),
                            ha="center", fontsize=6.5, color=color)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tokens(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.set_xlabel("context (cached tokens)", fontsize=8)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("attention's share of the layer's step (%)", fontsize=8)
    axes[0].legend(fontsize=7, frameon=False, loc="upper left")
    return fig


def _tokens(x):
    return f"{x / 2 ** 20:g}M" if x >= 2 ** 20 else f"{x / 2 ** 10:g}K" if x >= 2 ** 10 else f"{x:g}"


def _bytes(y):
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if y >= size:
            return f"{y / size:g} {unit}"
    return f"{y:g} B"
