"""The token stream every task writes and the model reads: bytes, special tokens, media slots.

Text is UTF-8 bytes (ids 0-255). Special tokens follow. A picture, a video or a sound enters the
stream between its start and end tokens as a run of slot tokens (`<image>`, `<video>`, `<audio>`),
one per patch or frame; the features of each slot travel beside the tokens, in stream order, and
the model's encoder for that modality turns them into the slot's embedding.
"""
from dataclasses import dataclass, field

import torch

SPECIALS = ["<pad>", "<bos>", "<eos>", "<sep>",
            "<image_start>", "<image_end>", "<video_start>", "<video_end>", "<audio_start>", "<audio_end>",
            "<image>", "<video>", "<audio>"]
ID = {name: 256 + i for i, name in enumerate(SPECIALS)}
VOCAB_SIZE = 256 + len(SPECIALS)
PAD, BOS, EOS, SEP = ID["<pad>"], ID["<bos>"], ID["<eos>"], ID["<sep>"]
MODALITIES = ("image", "video", "audio")
SLOT = {m: ID[f"<{m}>"] for m in MODALITIES}                 # the slot token of each modality
START = {m: ID[f"<{m}_start>"] for m in MODALITIES}
END = {m: ID[f"<{m}_end>"] for m in MODALITIES}


def encode_text(text):
    """UTF-8 bytes of `text` as a list of token ids."""
    return list(text.encode("utf-8"))


def decode_text(ids):
    """The text of the byte tokens in `ids` (special tokens are skipped)."""
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


@dataclass
class Example:
    """One training or evaluation sequence.

    tokens: int64 [L]; media: modality -> float32 [slots of that modality in the stream, feature
    dim], in stream order; loss_mask: bool [L], True at the tokens the model must predict (the
    answer and its <eos>); answer: the answer as text; info: what the builder chose (task, digit
    classes, sample ids, token spans), for evaluation and pictures, never read by the model.
    """
    tokens: torch.Tensor
    media: dict = field(default_factory=dict)
    loss_mask: torch.Tensor = None
    answer: str = ""
    info: dict = field(default_factory=dict)
