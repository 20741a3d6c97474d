"""Checkers of notebook 06 (the M3-lite model): tokens of a media item, the loss mask, slot positions, MLP size.

Expected answers come from the package: token counts from a real `Stream`, loss masks from
`Stream.finish`, slot positions read off what `M3Lite.embed_stream` does, parameter counts from a
real `Block`. When an answer is wrong in a way learners often get it wrong, the verdict says which
mistake it looks like.
"""
import dataclasses

import torch
from torch import nn

from ..model import M3Config, M3Lite
from ..model.model import Block
from ..tasks import (FEATURE_DIMS, MODALITIES, SLOT, SLOTS, START, Stream, caption, collate, haystack, transcribe,
                     video)
from ..tasks.media import VIDEO_FRAMES
from .checker import close, verdict


def _tokens_of_one_item(modality):
    """Tokens a Stream writes for one media item of `modality`."""
    stream = Stream()
    stream.media(modality, torch.zeros(SLOTS[modality], FEATURE_DIMS[modality]))
    return len(stream)


def same_count(got, expected):
    """Compare token counts of one item; expected is (count, modality) so that hints can be found."""
    count, modality = expected
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if not isinstance(got, int) or isinstance(got, bool):
        return False, f"expected an int, got {got!r}"
    if got == count:
        return True, ""
    hints = [(SLOTS[modality], "the item also has its START and END tokens around the slots"),
             (SLOTS[modality] + 1, "count both START and END"),
             (FEATURE_DIMS[modality] + 2, "FEATURE_DIMS is how many numbers one slot's features hold; "
                                          "SLOTS is how many slots the item takes"),
             (FEATURE_DIMS[modality], "FEATURE_DIMS is the size of one slot's features, not the number of slots"),
             (VIDEO_FRAMES + 2 if modality == "video" else None,
              "a video has a slot for every patch of every frame, not one per frame")]
    hint = next((h for wrong, h in hints if got == wrong), "")
    return False, f"expected {count}, got {got}" + (f" ({hint})" if hint else "")


def check_item_tokens(fn):
    """fn(modality) -> tokens one media item of `modality` takes in the stream."""
    cases = [(f"modality={m!r}", (m,), (_tokens_of_one_item(m), m)) for m in MODALITIES]
    return verdict("item_tokens", fn, cases, compare=same_count)


def _mask_of_stream(prompt_len, answer):
    """The loss mask Stream.finish writes after `prompt_len` prompt tokens."""
    stream = Stream()
    stream.text("x" * prompt_len)
    return stream.finish(answer).loss_mask


def same_mask(got, expected):
    """Compare loss masks; expected is (mask, prompt_len, answer) so that hints can be found."""
    mask, prompt_len, answer = expected
    ok, why = close(got, mask)
    if ok or not isinstance(got, torch.Tensor) or got.dim() != 1:
        return ok, why
    n = len(answer.encode("utf-8"))
    got = got.bool().cpu()
    if len(got) == prompt_len + n and got[prompt_len:].all() and not got[:prompt_len].any():
        return False, f"{why} (the <eos> after the answer is a target too: the model must learn to stop)"
    if len(answer) != n and len(got) == prompt_len + len(answer) + 1:
        return False, f"{why} (the stream holds UTF-8 bytes: an answer takes len(answer.encode()) tokens)"
    if len(got) == len(mask) and torch.equal(got, mask.roll(-1)):
        return False, (f"{why} (mark the tokens to be predicted; the shift by one, position t predicting "
                       "token t + 1, is done by the loss)")
    if len(got) == len(mask) and torch.equal(got, ~mask):
        return False, f"{why} (upside down: True marks the answer, False the prompt)"
    return False, why


def check_loss_mask(fn):
    """fn(prompt_len, answer) -> bool [prompt_len + answer bytes + 1]: True at the answer and its <eos>."""
    cases = [(f"prompt_len={p}, answer={a!r}", (p, a), (_mask_of_stream(p, a), p, a))
             for p, a in [(15, "seven"), (26, "three left"), (28, "four"), (378, "river"), (3, "größe"), (4, "")]]
    return verdict("loss_mask", fn, cases, compare=same_mask)


class _RowNumber(nn.Module):
    """An encoder that puts each slot's row number (feature 0) into every dimension of its embedding,
    and nothing into the items' END tokens (zero summaries)."""

    def __init__(self, dim, slots):
        super().__init__()
        self.dim, self.slots = dim, slots

    def forward(self, features):
        summaries = features.new_zeros(features.shape[0] // self.slots, self.dim)
        return features[:, :1].expand(-1, self.dim), summaries


@torch.no_grad()
def _fill_order_of_embed_stream(tokens, modality):
    """(batch, position) of each row of media[modality], in row order, read off M3Lite.embed_stream: [N, 2].

    The token embeddings are zeroed and every encoder passes on feature 0, which is row number + 1
    for `modality` and 0 for the others, so each slot's embedding says which row was put there.
    """
    config = M3Config.tiny()
    model = M3Lite(config)
    model.embed.weight.zero_()
    for m in MODALITIES:
        model.encoders[m] = _RowNumber(config.dim, SLOTS[m])
    media = {m: torch.zeros(int((tokens == SLOT[m]).sum()), FEATURE_DIMS[m]) for m in MODALITIES}
    media[modality][:, 0] = torch.arange(1, len(media[modality]) + 1)
    filled = model.embed_stream(tokens, media)[..., 0]                 # [B, L]: row + 1 at the slots, else 0
    where = (filled != 0).nonzero()
    rows = filled[filled != 0].long() - 1
    return where[rows.argsort()]


def same_positions(got, expected):
    """Compare slot positions [N, 2]; expected is (positions, tokens, modality) so that hints can be found."""
    positions, tokens, modality = expected
    if isinstance(got, torch.Tensor) and got.dim() == 1 and len(got) == len(positions):
        return False, (f"expected shape {tuple(positions.shape)}, got {tuple(got.shape)} (return (batch, "
                       "position) pairs, one row per slot: the batch matters too)")
    ok, why = close(got, positions)
    if ok or not isinstance(got, torch.Tensor) or got.dim() != 2 or got.dtype.is_floating_point:
        return ok, why
    starts = int((tokens == START[modality]).sum())
    if len(got) == starts != len(positions):
        return False, (f"{why} (those look like the {modality} START tokens; the slots are the "
                       f"SLOT[{modality!r}] tokens)")
    if got.shape != positions.shape:
        return False, why
    got = got.long().cpu()
    position_major = positions[(positions[:, 1] * tokens.shape[0] + positions[:, 0]).argsort()]
    hints = [(position_major, "rows are filled in batch-major stream order: every slot of example 0 first, "
                              "then example 1, ..."),
             (positions[:, [1, 0]], "each row is (batch, position), in that order"),
             (positions + torch.tensor([0, 1]), "off by one: count positions from 0"),
             (positions - torch.tensor([0, 1]), "off by one: count positions from 0")]
    hint = next((h for wrong, h in hints if torch.equal(got, wrong)), "")
    if not hint and _sorted_rows(got) == _sorted_rows(positions):
        hint = "the right slots in the wrong order: row i of media fills the i-th slot of the stream"
    return False, why + (f" ({hint})" if hint else "")


def _sorted_rows(x):
    return sorted(map(tuple, x.tolist()))


def _batches():
    """(label, tokens [B, L], modality): batches with several items, padding and absent modalities."""
    mixed = collate([caption(0, "test"), video(1, "test"), haystack(200, 1, "test", key_modality="mixed"),
                     transcribe(3, "test"), caption(4, "test")])
    images = collate([haystack(120, 5, "test", key_modality="image"), caption(6, "test")])[0]
    return [("a mixed batch of 5, image", mixed[0], "image"), ("a mixed batch of 5, audio", mixed[0], "audio"),
            ("a mixed batch of 5, video", mixed[0], "video"), ("two haystack-and-caption rows, image", images, "image"),
            ("the same rows, video (none)", images, "video")]


def check_slot_positions(fn):
    """fn(tokens, modality) -> int [N, 2]: (batch, position) of the slot that row i of media[modality] fills."""
    cases = [(label, (tokens.clone(), m), (_fill_order_of_embed_stream(tokens, m), tokens, m))
             for label, tokens, m in _batches()]
    return verdict("slot_positions", fn, cases, compare=same_positions)


def _mlp_parameters_of_a_block(dim, hidden):
    """Parameters of the SwiGLU MLP of a real M3Lite Block of this width (built on the meta device)."""
    config = dataclasses.replace(M3Config(), dim=dim, mlp_hidden=hidden)
    with torch.device("meta"):
        block = Block(config, sparse=False)
    return sum(p.numel() for p in (*block.w_gate_up.parameters(), *block.w_down.parameters()))


def same_parameters(got, expected):
    """Compare parameter counts; expected is (count, dim, hidden) so that hints can be found."""
    count, dim, hidden = expected
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        got = got.item()
    if isinstance(got, float) and got.is_integer():
        got = int(got)
    if not isinstance(got, int) or isinstance(got, bool):
        return False, f"expected an int, got {got!r}"
    if got == count:
        return True, ""
    hints = [(2 * dim * hidden, "SwiGLU has three matrices: gate and up (dim -> hidden each) and down"),
             (count + 2 * hidden + dim, "m3lite's linear layers have no bias"),
             (count + dim, "the RMSNorm before the MLP is not part of the MLP"),
             (dim * hidden, "count every matrix: gate, up and down")]
    hint = next((h for wrong, h in hints if got == wrong), "")
    return False, f"expected {count:,}, got {got:,}" + (f" ({hint})" if hint else "")


def check_swiglu_parameters(fn):
    """fn(dim, hidden) -> parameters of one SwiGLU MLP of M3-lite."""
    cases = [(f"dim={d}, hidden={h}", (d, h), (_mlp_parameters_of_a_block(d, h), d, h))
             for d, h in [(64, 192), (128, 384), (96, 250), (6144, 9216)]]
    return verdict("swiglu_parameters", fn, cases, compare=same_parameters)
