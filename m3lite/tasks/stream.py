"""Writing one token stream (text, media items, the answer) and batching several of them.

    stream = Stream()
    stream.special(BOS)
    stream.media("image", features)          # <image_start> <image> x slots <image_end>
    stream.text("caption:")
    example = stream.finish("seven")         # the answer and <eos> carry the loss
"""
import numpy as np
import torch

from .media import FEATURE_DIMS, SPLITS, check_modality, check_split
from .vocab import EOS, END, MODALITIES, PAD, SLOT, START, Example, encode_text


def make_rng(seed, split, salt):
    """The random generator of one example: a numpy Generator from (seed, split, task salt).

    The same seed gives different draws in 'train' and 'test' and in different tasks.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    check_split(split)
    return np.random.default_rng([int(seed), SPLITS.index(split), salt])


class Stream:
    """A token stream under construction: tokens, media features per modality, loss mask."""

    def __init__(self):
        self.tokens, self.loss_mask = [], []
        self.features = {m: [] for m in MODALITIES}

    def __len__(self):
        return len(self.tokens)

    def special(self, token, target=False):
        self.tokens.append(token)
        self.loss_mask.append(target)

    def text(self, text, target=False):
        ids = encode_text(text)
        self.tokens += ids
        self.loss_mask += [target] * len(ids)

    def media(self, modality, features):
        """Append START, one SLOT per row of `features` [slots, FEATURE_DIMS[modality]], END."""
        check_modality(modality)
        self.special(START[modality])
        for _ in range(features.shape[0]):
            self.special(SLOT[modality])
        self.special(END[modality])
        self.features[modality].append(features)

    def finish(self, answer, **info):
        """Append the answer and <eos> (both with loss) and return the Example."""
        self.text(answer, target=True)
        self.special(EOS, target=True)
        media = {m: torch.cat(rows) for m, rows in self.features.items() if rows}
        return Example(tokens=torch.tensor(self.tokens, dtype=torch.int64), media=media,
                       loss_mask=torch.tensor(self.loss_mask, dtype=torch.bool), answer=answer, info=info)


def check_example(example):
    """Raise a ValueError unless every modality's slot count and feature dim match its media rows."""
    for modality in example.media:
        check_modality(modality)
    for modality in MODALITIES:
        slots = int((example.tokens == SLOT[modality]).sum())
        rows = example.media.get(modality, torch.zeros(0, FEATURE_DIMS[modality]))
        if rows.shape != (slots, FEATURE_DIMS[modality]):
            raise ValueError(f"example has {slots} {modality} slots but media[{modality!r}] has shape "
                             f"{tuple(rows.shape)}, expected ({slots}, {FEATURE_DIMS[modality]})")


def collate(examples):
    """Batch examples, right-padded with <pad>.

    Args:
        examples: a non-empty list of Example.
    Returns:
        tokens int64 [B, L]; media: modality -> float32 [slots in the batch, FEATURE_DIMS[m]] for
        every modality (0 rows when absent), in batch-major stream order, so that row i fills the
        i-th position of `(tokens == SLOT[m]).nonzero()`; loss_mask bool [B, L], False at padding.
    """
    if not examples:
        raise ValueError("examples must be a non-empty list of Example")
    for example in examples:
        check_example(example)
    length = max(len(example.tokens) for example in examples)
    tokens = torch.full((len(examples), length), PAD, dtype=torch.int64)
    loss_mask = torch.zeros(len(examples), length, dtype=torch.bool)
    for b, example in enumerate(examples):
        tokens[b, :len(example.tokens)] = example.tokens
        loss_mask[b, :len(example.tokens)] = example.loss_mask
    media = {m: torch.cat([torch.zeros(0, FEATURE_DIMS[m])] + [e.media[m] for e in examples if m in e.media])
             for m in MODALITIES}
    return tokens, media, loss_mask
