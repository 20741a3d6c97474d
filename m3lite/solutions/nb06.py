"""Reference solutions of notebook 06 (the M3-lite model): item tokens, loss mask, slot positions, MLP size."""
import torch

from ..tasks import SLOT, SLOTS


def item_tokens(modality):
    """START + one slot per patch or frame + END."""
    return 1 + SLOTS[modality] + 1


def loss_mask(prompt_len, answer):
    """False over the prompt, True over the answer's UTF-8 bytes and the <eos> after them."""
    answer_len = len(answer.encode("utf-8")) + 1
    return torch.cat([torch.zeros(prompt_len, dtype=torch.bool), torch.ones(answer_len, dtype=torch.bool)])


def slot_positions(tokens, modality):
    """(batch, position) of every slot token, in row-major (batch-major) order: what masked_scatter fills."""
    return (tokens == SLOT[modality]).nonzero()


def swiglu_parameters(dim, hidden):
    """Gate and up (dim -> hidden each, one fused matrix) and down (hidden -> dim), no biases."""
    return 2 * dim * hidden + hidden * dim
