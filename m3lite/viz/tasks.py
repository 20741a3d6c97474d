"""Pictures of M3-lite's data: an image's patches, a video's frames, a sound's spectrogram, a haystack.

The pictures are drawn back from an Example's slot features (what the model sees), not from the
source data: `image_from_features`, `frames_from_features` and `token_kinds` are pure and tested
directly. Figures are built without pyplot, so a notebook shows each one once.
"""
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..tasks.media import (AUDIO_BINS, CANVAS, IMAGE_PATCH, VIDEO_FRAMES, VIDEO_PATCH, VIDEO_PATCHES,
                           bin_frequencies, dtmf_frequencies)
from ..tasks.vocab import MODALITIES, PAD, SLOT
from .gather import PALETTE

KIND_NAMES = ("text", "special token", "image slot", "video slot", "audio slot", "answer + <eos>", "padding")
KIND_COLORS = ("#d9d9d9", "#555555", PALETTE[0], PALETTE[2], PALETTE[1], PALETTE[3], "#ffffff")


def unpatch(patch_pixels, patch):
    """Put row-major patches [N * N, patch * patch] back together: [N * patch, N * patch]."""
    n = int(round(patch_pixels.shape[0] ** 0.5))
    return patch_pixels.reshape(n, n, patch, patch).transpose(1, 2).reshape(n * patch, n * patch)


def image_from_features(features):
    """The 8x8 image [8, 8] whose slot features [4, 20] these are (pixels placed by their position code)."""
    order = features[:, IMAGE_PATCH ** 2:].argmax(1)                        # each slot's patch position
    pixels = torch.zeros(features.shape[0], IMAGE_PATCH ** 2)
    pixels[order] = features[:, :IMAGE_PATCH ** 2]
    return unpatch(pixels, IMAGE_PATCH)


def frames_from_features(features):
    """The frames [5, 16, 16] of a video's slot features [20, 73]."""
    pixels = VIDEO_PATCH ** 2
    patch_ids = features[:, pixels:pixels + VIDEO_PATCHES].argmax(1)
    frame_ids = features[:, pixels + VIDEO_PATCHES:].argmax(1)
    frames = torch.zeros(VIDEO_FRAMES, VIDEO_PATCHES, pixels)
    frames[frame_ids, patch_ids] = features[:, :pixels]
    return torch.stack([unpatch(frame, VIDEO_PATCH) for frame in frames])


def token_kinds(example):
    """The kind of each token of an example, an index into KIND_NAMES: int64 [L]."""
    tokens = example.tokens
    kinds = torch.where(tokens < 256, 0, 1)
    for i, modality in enumerate(MODALITIES):
        kinds[tokens == SLOT[modality]] = 2 + i
    kinds[example.loss_mask] = 5
    kinds[tokens == PAD] = 6
    return kinds


def show_image(example, dpi=90):
    """An image example: the digit, and its 4 patches as the model gets them (one per slot)."""
    features = example.media["image"]
    fig = Figure(figsize=(6.4, 2.0), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 1 + features.shape[0])
    axes[0].imshow(image_from_features(features).numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[0].set_title(f"answer: {example.answer}", fontsize=9)
    for slot, (ax, row) in enumerate(zip(axes[1:], features)):
        ax.imshow(row[:IMAGE_PATCH ** 2].reshape(IMAGE_PATCH, IMAGE_PATCH).numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"slot {slot}, patch {int(row[IMAGE_PATCH ** 2:].argmax())}", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def show_video(example, dpi=90):
    """A video example: its frames left to right, with the 8x8 patch grid of each frame."""
    frames = frames_from_features(example.media["video"])
    fig = Figure(figsize=(1.4 * VIDEO_FRAMES, 1.8), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, VIDEO_FRAMES)
    for f, ax in enumerate(axes):
        ax.imshow(frames[f].numpy(), cmap="gray_r", vmin=0, vmax=1)
        ax.axhline(CANVAS / 2 - 0.5, color=PALETTE[0], lw=0.8)
        ax.axvline(CANVAS / 2 - 0.5, color=PALETTE[0], lw=0.8)
        ax.set_title(f"frame {f}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"answer: {example.answer}", fontsize=9)
    return fig


def show_audio(example, dpi=90):
    """An audio example's spectrogram (frames x frequency), the digit's two DTMF tones marked."""
    spectrum = example.media["audio"][:, :AUDIO_BINS]                       # [frames, bins]
    freqs = bin_frequencies()
    step = float(freqs[1] - freqs[0])
    fig = Figure(figsize=(4.2, 2.8), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(spectrum.T.numpy(), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                      extent=(-0.5, spectrum.shape[0] - 0.5, float(freqs[0]) - step / 2, float(freqs[-1]) + step / 2))
    if "digit" in example.info:
        for freq in dtmf_frequencies(example.info["digit"]):
            ax.axhline(freq, color="#ffffff", lw=0.8, ls="--")
    ax.set_xlabel("frame (one slot each)", fontsize=9)
    ax.set_ylabel("frequency (Hz)", fontsize=9)
    ax.set_title(f"answer: {example.answer}", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.colorbar(image, ax=ax, label="log magnitude")
    return fig


def show_haystack(example, row=128, dpi=90):
    """A haystack's layout: its tokens as a strip of kinds wrapped every `row` tokens (one row a block).

    The pair the query asks for and the query itself are outlined when `example.info` has their spans.
    """
    kinds = token_kinds(example)
    rows = -(-len(kinds) // row)
    grid = torch.full((rows * row,), len(KIND_NAMES) - 1)
    grid[:len(kinds)] = kinds
    fig = Figure(figsize=(7.0, 0.9 + 0.12 * rows), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid.reshape(rows, row).numpy(), cmap=ListedColormap(KIND_COLORS), vmin=-0.5, vmax=len(KIND_NAMES) - 0.5,
              interpolation="nearest", aspect="auto")
    info = example.info
    if "pair_spans" in info:
        _outline(ax, info["pair_spans"][info["query_pair"]], row, "#000000")
        _outline(ax, info["query_span"], row, "#000000")
    ax.set_xlabel(f"token within a row of {row}", fontsize=9)
    ax.set_ylabel("row", fontsize=9)
    ax.set_title(f"{len(kinds)} tokens; answer: {example.answer} (outlined: the asked pair and the query)",
                 fontsize=9)
    ax.tick_params(labelsize=8)
    handles = [Patch(facecolor=c, edgecolor="#777777", label=n) for n, c in zip(KIND_NAMES, KIND_COLORS)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, frameon=False)
    return fig


def _outline(ax, span, row, color):
    """Outline tokens [start, end) of a strip wrapped every `row` tokens, one rectangle per row piece."""
    start, end = span
    while start < end:
        stop = min(end, (start // row + 1) * row)
        ax.add_patch(Rectangle((start % row - 0.5, start // row - 0.5), stop - start, 1,
                               fill=False, edgecolor=color, lw=1.2))
        start = stop
