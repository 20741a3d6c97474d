"""Pictures and numbers of indexer training: what a layer's indexer sees, its distillation loss over
a training run, recall per layer before and after, and one query's blocks against its target.

`trace_indexers`, `mass_by_distance`, `join_runs`, `running_mean`, `answer_position` and
`headroom_won` are pure and tested directly; the `plot_*` functions return matplotlib figures built
without pyplot, so a notebook shows each once.
"""
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..attention import block_attention_mass, block_scores
from ..attention.common import visible_mask
from .attention import SELECTION_COLORS, SELECTION_NAMES, selection_categories
from .explorer import SPAN_COLORS
from .gather import PALETTE

WARMUP = "dense warm-up"


@torch.no_grad()
def trace_indexers(model, example, attention="dense"):
    """Run `model` on one Example and return, per MSA layer, what its indexer saw and was taught.

    With attention="dense" the hidden states do not depend on the indexers, so two models that
    differ only in their indexers give the same q, k and target, and different scores and selections.
    Returns:
        a list, one dict per MSA layer: layer (its index in model.blocks), q [HQ, T, D],
        k [HKV, T, D], scores float32 [HI, T, NB] (the indexer's block scores), sel int32 [HI, T, K]
        (its selection) and target [HI, T, NB] (`block_attention_mass`, the distillation target).
    """
    c = model.config
    msa = [i for i, block in enumerate(model.blocks) if block.attn.sparse]
    trace, device = [], next(model.parameters()).device
    media = {m: x.to(device) for m, x in example.media.items()}
    model(example.tokens[None].to(device), media, attention=attention, trace=trace)
    layers = []
    for i, t in zip(msa, trace):
        layers.append(dict(layer=i, q=t["q"][0].cpu(), k=t["k"][0].cpu(), sel=t["sel"][0].cpu(),
                           scores=block_scores(t["iq"], t["ik"], block_size=c.block_size, backend="torch")[0].cpu(),
                           target=block_attention_mass(t["q"], t["k"], c.block_size, c.kv_heads)[0].cpu()))
    return layers


def answer_position(example):
    """The position of the last prompt token, which predicts the answer's first token (as `evals` has it)."""
    return int(example.loss_mask.nonzero()[0]) - 1


def headroom_won(before, after, best):
    """Per layer, the share of the possible gain that training won: (after - before) / (best - before).

    1 = the selection became as good as any selection of its size; 0 = no better than before.
    """
    return [(a - b) / (o - b) if o > b else float("nan") for b, a, o in zip(before, after, best)]


def effective_tokens(q, k, first_query=0):
    """Per query head, how many tokens a query attends: exp of its causal attention's entropy, averaged
    over the queries from `first_query` on (1 = all on one token; t + 1 = even over all it sees).

    q [HQ, T, D] and k [HKV, T, D] of one sequence (as `trace_indexers` gives them). Returns float [HQ].
    """
    HQ, T, D = q.shape
    if not 0 <= first_query < T:
        raise ValueError(f"first_query must be in [0, {T}), got {first_query}")
    logits = q[:, first_query:] @ k.repeat_interleave(HQ // k.shape[0], 0).transpose(-1, -2) * D ** -0.5
    future = ~visible_mask(T, T, True, q.device)[first_query:]
    probs = logits.float().masked_fill(future, float("-inf")).softmax(-1)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)                    # [HQ, rows]
    return entropy.exp().mean(-1)


def blocks_holding(target, share=0.9, first_query=0):
    """Per index head, how many key blocks it takes to hold `share` of a query's group attention mass
    (the heaviest blocks first), averaged over the queries from `first_query` on.

    target [HI, T, NB] (`block_attention_mass` of one sequence). Returns float [HI]. Compare with
    top_k: a query whose mass needs more blocks than top_k cannot reach a recall of `share`.
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    mass = target[:, first_query:].sort(-1, descending=True).values.cumsum(-1)      # [HI, rows, NB]
    needed = (mass < share - 1e-6).sum(-1) + 1                                      # blocks until the share is reached
    return needed.clamp_max(target.shape[-1]).float().mean(-1)


def mass_by_distance(target, block_size, distances):
    """The mean target mass of the key block `d` blocks behind each query's own block, d = 0 .. distances - 1.

    Averaged over the index heads and over the queries that have at least `distances - 1` blocks
    behind their own (so every distance is averaged over the same queries).
    Args:
        target: [HI, T, NB] (`block_attention_mass` of one sequence, query t at position t).
    Returns:
        float [distances].
    """
    HI, T, NB = target.shape
    own = torch.arange(T) // block_size
    rows = (own >= distances - 1).nonzero()[:, 0]
    if len(rows) == 0:
        raise ValueError(f"no query of {T} tokens has {distances - 1} blocks of {block_size} behind its own")
    cols = own[rows, None] - torch.arange(distances)                       # [rows, distances]
    return target[:, rows].gather(-1, cols.expand(HI, -1, -1)).mean((0, 1))


def running_mean(x, window):
    """The mean of each `window` consecutive values (fewer at the start): float array as long as x."""
    x = np.asarray(x, dtype=float)
    sums = np.cumsum(np.insert(x, 0, 0.0))
    n = np.minimum(np.arange(1, len(x) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(x) + 1) - n]) / n


def join_runs(runs):
    """Training runs continued one after another, as one series.

    Args:
        runs: list of (label, records), records as in a log.jsonl (step, indexer_kl, phase, eval...).
    Returns:
        dict: step (numbered on across runs), kl, warmup (bool per step), starts ([(step, label)]: where
        each run begins), evals ([(step, eval dict, run label)]).
    """
    steps, kl, warm, starts, evals, offset = [], [], [], [], [], 0
    for label, records in runs:
        starts.append((offset, label))
        for r in records:
            steps.append(offset + r["step"])
            kl.append(r["indexer_kl"])
            warm.append(r["phase"] == WARMUP)
            if "eval" in r:
                evals.append((offset + r["step"], r["eval"], label))
        offset = steps[-1] if steps else offset
    return dict(step=np.array(steps), kl=np.array(kl), warmup=np.array(warm, dtype=bool), starts=starts,
                evals=evals)


def plot_indexer_kl(runs, smooth=50, accuracy=("haystack_msa", "haystack_dense"), dpi=90):
    """The indexer's distillation loss per step over one run or runs continued one after another, and
    (when the logs have them) the accuracies named in `accuracy` at each evaluation.

    The dense warm-up is shaded; a dashed line marks the switch to MSA and each continued run.
    Args:
        runs: list of (label, records); smooth: steps of the running mean drawn over the raw loss;
        accuracy: eval keys drawn in a second panel (none, or absent from the logs: no second panel).
    """
    run = join_runs(runs)
    evals = [(s, e) for s, e, _ in run["evals"] if any(k in e for k in accuracy)]
    fig = Figure(figsize=(7.4 if evals else 4.6, 2.7), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=(3, 2)) if evals else [fig.subplots()]
    ax = axes[0]
    ax.plot(run["step"], run["kl"], color=PALETTE[1], alpha=0.25, lw=0.6)
    ax.plot(run["step"], running_mean(run["kl"], smooth), color=PALETTE[1], lw=1.5,
            label=f"indexer KL (mean of {smooth} steps)")
    if run["warmup"].any():
        ax.axvspan(0, run["step"][run["warmup"]].max(), color="#eeeeee", zorder=0, label=WARMUP)
    for ax_ in axes:
        _mark_switches(ax_, run)
    ax.set_ylim(0, float(np.quantile(run["kl"], 0.995)) * 1.15)
    ax.set_xlabel("step", fontsize=9)
    ax.set_title("distillation loss of the indexers (mean of the MSA layers)", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="lower center", ncols=2)
    if evals:
        ax = axes[1]
        for i, key in enumerate(accuracy):
            points = [(s, e[key]) for s, e in evals if key in e]
            ax.plot(*zip(*points), "o-", ms=3, color=PALETTE[(2 * i) % len(PALETTE)], label=key)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(0, run["step"].max())
        ax.set_xlabel("step", fontsize=9)
        ax.set_title("accuracy at the evaluations", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    for ax_ in axes:
        ax_.tick_params(labelsize=8)
        ax_.grid(alpha=0.3)
    return fig


def _mark_switches(ax, run):
    """Dashed lines where the warm-up ends and where each continued run starts, labelled at the top."""
    marks = []
    if run["warmup"].any() and not run["warmup"].all():
        marks.append((run["step"][run["warmup"]].max(), "MSA from here"))
    marks += [(step, label) for step, label in run["starts"][1:]]
    for step, label in marks:
        ax.axvline(step, color="#555555", lw=0.8, ls="--")
        ax.text(step, 0.97, f"{label} ", transform=ax.get_xaxis_transform(), fontsize=7, va="top", ha="right",
                rotation=90, color="#333333")


def plot_recall_per_layer(panels, best="best possible", dpi=90):
    """Recall per MSA layer as grouped bars, one panel per setting; `best` drawn as a black tick.

    Args:
        panels: dict panel title -> dict label -> recall per layer (e.g. from `evals.indexer_recall`);
            an optional entry "layers" gives the layers' names (default 1, 2, ...);
        best: the label drawn as a tick over each layer's bars rather than as a bar (if present).
    """
    fig = Figure(figsize=(7.4, 2.5 * -(-len(panels) // 2)), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(-(-len(panels) // 2), min(2, len(panels)), sharey=True)).ravel()
    for ax, (title, curves) in zip(axes, panels.items()):
        curves = dict(curves)
        names = curves.pop("layers", None)
        ticks = curves.pop(best, None)
        n_layers = len(next(iter(curves.values())))
        x = np.arange(n_layers)
        width = 0.8 / len(curves)
        for i, (label, values) in enumerate(curves.items()):
            bars = ax.bar(x + (i - (len(curves) - 1) / 2) * width, values, width, color=PALETTE[i % len(PALETTE)],
                          label=label)
            if len(curves) <= 3:                               # more labels than that overlap
                ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=6, padding=1)
        if ticks is not None:
            ax.hlines(ticks, x - 0.45, x + 0.45, color="#000000", lw=1.6, label=best)
        ax.set_xticks(x, [f"layer {n}" for n in (names or range(1, n_layers + 1))])
        ax.set_ylim(0, 1.12)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("recall", fontsize=9)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, frameon=False, loc="outside lower center", ncols=len(labels))
    return fig


def plot_query_selections(mass, selections, query, block_size, spans=None, dpi=90):
    """One query's target (its KV group's attention mass per block) as bars, once per selection, each
    bar coloured by what that selection did with the block (own block, picked, not picked).

    Args:
        mass: float [NB] the query's target mass per key block (`block_attention_mass` row);
        selections: dict label -> int [K] the query's selected block ids (-1 padded);
        query: the query's position (its own block is block query // block_size);
        spans: optional dict label -> [(start, end)] token spans to shade (e.g. the asked pair).
    """
    mass = torch.as_tensor(mass, dtype=torch.float32).cpu()
    NB = query // block_size + 1                                       # the blocks the query can see
    shown = mass[:NB].numpy()
    best = float(mass[NB - 1] + mass[:NB - 1].topk(min(len(next(iter(selections.values()))) - 1, NB - 1)).values.sum())
    fig = Figure(figsize=(7.2, 1.55 * len(selections) + 0.5), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(selections), 1, sharex=True, sharey=True))
    starts = np.arange(NB) * block_size
    for ax, (label, sel) in zip(axes, selections.items()):
        sel = torch.as_tensor(sel).cpu()
        kind = selection_categories(sel[None], query + 1, block_size)[0].numpy()
        kept = float(mass[:NB][kind >= 2].sum())
        ax.bar(starts, shown, width=block_size, align="edge", color=np.array(SELECTION_COLORS)[kind],
               edgecolor="#555555", linewidth=0.4)
        for (name, pieces), color in zip((spans or {}).items(), SPAN_COLORS):
            for start, end in pieces:
                ax.axvspan(start - 0.5, end - 0.5, facecolor=color, edgecolor=color, lw=1.2, alpha=0.45, zorder=0)
        ax.axvline(query, color="#000000", lw=0.8, ls="--")
        ax.set_title(f"{label}: its {len(sel[sel >= 0])} blocks keep {kept:.0%} of the mass "
                     f"(best possible {best:.0%})", fontsize=9)
        ax.set_ylabel("mass", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1].set_xlim(0, NB * block_size)
    axes[-1].set_ylim(0, max(float(shown.max()), 1e-3) * 1.15)
    axes[-1].set_xlabel(f"key position (a bar per block of {block_size}); dashed: the query", fontsize=8)
    handles = [Patch(facecolor=SELECTION_COLORS[i], edgecolor="#555555", label=SELECTION_NAMES[i]) for i in (3, 2, 1)]
    handles += [Patch(facecolor=color, alpha=0.45, label=name) for name, color in zip(spans or {}, SPAN_COLORS)]
    fig.legend(handles=handles, fontsize=7, frameon=False, loc="outside lower center", ncols=len(handles))
    return fig


def plot_kl_curves(curves, smooth=10, dpi=90):
    """Distillation loss per step of several runs side by side: dict label -> list of losses."""
    fig = Figure(figsize=(4.6, 2.6), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for i, (label, kl) in enumerate(curves.items()):
        steps = np.arange(1, len(kl) + 1)
        ax.plot(steps, kl, color=PALETTE[i % len(PALETTE)], alpha=0.3, lw=0.7)
        ax.plot(steps, running_mean(kl, smooth), color=PALETTE[i % len(PALETTE)], lw=1.5, label=label)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel("KL over all visible blocks", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


def plot_mass_by_distance(profiles, block_size, periods=(), dpi=90):
    """Mean attention mass per key block against its distance (in blocks) from the query's own block.

    Args:
        profiles: dict label -> float [distances] (from `mass_by_distance`);
        periods: token distances to mark with dotted lines (e.g. RoPE's rotation periods).
    """
    fig = Figure(figsize=(5.6, 2.7), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for i, (label, profile) in enumerate(profiles.items()):
        profile = torch.as_tensor(profile).cpu().numpy()
        ax.plot(np.arange(len(profile)), profile, "o-", ms=3, color=PALETTE[i % len(PALETTE)], label=label)
    for period in periods:
        for m in range(1, int((len(profile) - 1) * block_size // period) + 1):
            ax.axvline(m * period / block_size, color="#777777", lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("distance from the query's own block (blocks)", fontsize=9)
    ax.set_ylabel("mean mass per block", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig
