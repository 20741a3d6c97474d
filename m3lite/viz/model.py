"""Pictures and tables of the M3-lite model: a readable token strip, parameter counts, answers, training.

`readable`, `answer_text`, `parameter_counts` and `read_log` are pure and tested directly; the
`show_*` and `plot_*` functions return matplotlib figures built without pyplot, so a notebook shows
each once.
"""
import json

import numpy as np
import torch
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..tasks.media import AUDIO_BINS, IMAGE_PATCH, VIDEO_PATCH, bin_frequencies
from ..tasks.vocab import EOS, ID, SLOT, decode_text
from .gather import PALETTE
from .tasks import KIND_COLORS, KIND_NAMES, frames_from_features, image_from_features, token_kinds

NAMES = {i: name for name, i in ID.items()}
SLOT_IDS = set(SLOT.values())
PARTS = ("token embedding", "encoders", "attention", "indexers", "MLPs", "norms", "output head")


def readable(tokens, slot="▮"):
    """A token stream as one line: bytes as text, special tokens by name, every media slot as `slot`.

    Args:
        tokens: int tensor [L] or a list of ids.
    """
    ids, out, text = [int(t) for t in tokens], [], []
    for i in ids + [-1]:                                   # -1 flushes the last run of bytes
        if 0 <= i < 256:
            text.append(i)
            continue
        if text:
            out.append(decode_text(text))
            text = []
        if i >= 0:
            out.append(slot if i in SLOT_IDS else NAMES[i])
    return "".join(out)


def parameter_part(name):
    """The part of an M3Lite that parameter `name` belongs to (one of PARTS)."""
    if name.startswith("embed."):
        return "token embedding"
    if name.startswith("head."):
        return "output head"
    if name.startswith("encoders."):
        return "encoders"
    if ".attn.indexer." in name:
        return "indexers"
    if ".attn." in name and "_norm" not in name:
        return "attention"
    if ".w_gate_up." in name or ".w_down." in name:
        return "MLPs"
    return "norms"                                         # RMSNorm gains: per block, QK-norm, final


def parameter_counts(model):
    """Parameters of each part of an M3Lite: dict part -> count (in PARTS order; they add up to the total)."""
    counts = dict.fromkeys(PARTS, 0)
    for name, p in model.named_parameters():
        counts[parameter_part(name)] += p.numel()
    return counts


def plot_parameter_counts(counts, dpi=90):
    """Grouped horizontal bars of parameters per part, one colour per model.

    Args:
        counts: dict model name -> dict part -> count (from `parameter_counts`).
    """
    fig = Figure(figsize=(6.6, 3.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    height = 0.8 / len(counts)
    y = np.arange(len(PARTS))
    for i, (label, parts) in enumerate(counts.items()):
        values = [parts[p] for p in PARTS]
        bars = ax.barh(y + (i - (len(counts) - 1) / 2) * height, values, height, color=PALETTE[i % len(PALETTE)],
                       label=f"{label}: {sum(values):,} in all")
        ax.bar_label(bars, labels=[f"{v:,}" for v in values], fontsize=7, padding=2)
    ax.set_xscale("log")
    ax.set_xlim(right=ax.get_xlim()[1] * 4)
    ax.set_yticks(y, PARTS)
    ax.invert_yaxis()
    ax.set_xlabel("parameters (log scale)", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return fig


def show_slot_features(examples, dpi=90):
    """The slot features of one media item per example, as the encoders get them: [slots, feature dim].

    Each panel is one modality's feature matrix, a row per slot; the dashed line splits the values
    (pixels or spectrum) from the one-hot position codes (patch, frame).
    """
    panels = [(m, e.media[m]) for e in examples for m in e.media]
    fig = Figure(figsize=(7.2, 2.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, len(panels), width_ratios=[max(f.shape[1], 36) for _, f in panels])
    values = {"image": IMAGE_PATCH ** 2, "video": VIDEO_PATCH ** 2, "audio": AUDIO_BINS}
    for ax, (modality, features) in zip(np.atleast_1d(axes), panels):
        ax.imshow(features.numpy(), cmap="gray_r", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        ax.axvline(values[modality] - 0.5, color=PALETTE[1], lw=1.2, ls="--")
        ax.set_title(f"{modality}: {values[modality]} values | {features.shape[1] - values[modality]} code",
                     fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("feature", fontsize=8)
        ax.set_ylabel("slot", fontsize=8)
        ax.tick_params(labelsize=7)
    return fig


def plot_logit_change(example, change, span=None, dpi=90):
    """How much each position's logits moved when one media item changed, over the stream's token kinds.

    Args:
        example: the Example (for the strip of token kinds); change: float [L], e.g. the max
        absolute change of each position's logits; span: (start, end) tokens of the changed item.
    """
    change = torch.as_tensor(change, dtype=torch.float32).cpu()
    kinds = token_kinds(example).tolist()
    fig = Figure(figsize=(7.0, 2.8), dpi=dpi, layout="constrained")
    top, strip = fig.subplots(2, 1, sharex=True, height_ratios=(5, 1))
    top.bar(np.arange(len(change)), change.numpy(), width=1.0, color=[KIND_COLORS[k] for k in kinds],
            edgecolor="#555555", linewidth=0.2)
    handles = [Patch(facecolor=KIND_COLORS[k], edgecolor="#555555", label=KIND_NAMES[k]) for k in sorted(set(kinds))]
    if span is not None:
        top.axvspan(span[0] - 0.5, span[1] - 0.5, color="#ffe08a", zorder=0)
        handles.append(Patch(facecolor="#ffe08a", label="the changed item"))
    top.set_ylabel("max |logit change|", fontsize=8)
    top.tick_params(labelsize=7)
    top.grid(axis="y", alpha=0.3)
    strip.imshow(np.array([to_rgb(KIND_COLORS[k]) for k in kinds])[None], aspect="auto", interpolation="nearest")
    strip.set_yticks([])
    strip.set_xlabel("token position", fontsize=8)
    strip.tick_params(labelsize=7)
    fig.legend(handles=handles, fontsize=7, frameon=False, ncols=len(handles), loc="outside upper center")
    return fig


def _picture(example):
    """What to draw for an example's one media item: (array, imshow keywords)."""
    modality = next(iter(example.media))
    features = example.media[modality]
    if modality == "image":
        return image_from_features(features), dict(cmap="gray_r", vmin=0, vmax=1)
    if modality == "video":                                # the frames side by side, a blank column between
        frames = frames_from_features(features)
        gap = torch.full((frames.shape[1], 2), float("nan"))
        strip = torch.cat([part for frame in frames for part in (frame, gap)][:-1], dim=1)
        return strip, dict(cmap="gray_r", vmin=0, vmax=1)
    freqs = bin_frequencies()
    return features[:, :AUDIO_BINS].T, dict(cmap="magma", vmin=0, vmax=1, origin="lower", aspect="auto",
                                            extent=(-0.5, features.shape[0] - 0.5, float(freqs[0]), float(freqs[-1])))


def show_answers(examples, answers, dpi=90):
    """Examples (one media item each) with the model's answer above each: green when right, red when not.

    Videos are drawn as their frames side by side, two examples a row.
    Args:
        examples: list of Example; answers: list of str, the model's answers (without <eos>).
    """
    video = "video" in examples[0].media
    cols = min(2, len(examples)) if video else len(examples)
    rows = -(-len(examples) // cols)
    fig = Figure(figsize=(7.2, (1.0 if video else 1.9) * rows), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, example, answer in zip(axes, examples, answers):
        picture, style = _picture(example)
        ax.imshow(picture.numpy(), **style)
        right = answer == example.answer
        title = f"said: {answer}" + ("" if right else f" (truth: {example.answer})")
        ax.set_title(title, fontsize=8, color=PALETTE[2] if right else PALETTE[3])
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(examples):]:
        ax.set_axis_off()
    return fig


def read_log(path):
    """The records of a training run's log.jsonl: a list of dicts, one per step."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training(records, title="", smooth=20, dpi=90):
    """A training run from its log records: answer loss and indexer KL per step, and evaluated accuracy.

    Args:
        records: list of dicts with step, loss, indexer_kl, phase and, at evaluations, eval;
        smooth: steps of the running mean drawn over the raw loss.
    """
    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records])
    kl = np.array([r["indexer_kl"] for r in records])
    fig = Figure(figsize=(7.2, 2.6), dpi=dpi, layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(steps, loss, color=PALETTE[0], alpha=0.3, lw=0.8)
    window = min(smooth, len(loss))
    left.plot(steps[window - 1:], np.convolve(loss, np.ones(window) / window, mode="valid"), color=PALETTE[0],
              label="answer loss")
    left.plot(steps, kl, color=PALETTE[1], lw=0.8, label="indexer KL")
    warm = [r["step"] for r in records if r["phase"] == "dense warm-up"]
    if warm:
        left.axvspan(0, max(warm), color="#eeeeee", zorder=0, label="dense warm-up")
    left.set_yscale("log")
    left.set_xlabel("step", fontsize=9)
    left.set_title("loss", fontsize=9)
    left.legend(fontsize=7, frameon=False)
    evals = [r["eval"] for r in records if "eval" in r]
    tasks = [k for k in (evals[0] if evals else {}) if k != "step"]
    for i, task in enumerate(tasks):
        right.plot([e["step"] for e in evals], [e[task] for e in evals], "o-", ms=3, color=PALETTE[i % len(PALETTE)],
                   label=task)
    if tasks:
        right.legend(fontsize=7, frameon=False)
    right.set_ylim(-0.03, 1.03)
    right.set_xlim(0, steps.max())
    right.set_xlabel("step", fontsize=9)
    right.set_title("accuracy on test examples", fontsize=9)
    for ax in (left, right):
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def answer_text(new_tokens):
    """The text of generated tokens, up to (not including) <eos>."""
    new_tokens = list(new_tokens)
    return decode_text(new_tokens[:new_tokens.index(EOS)] if EOS in new_tokens else new_tokens)
