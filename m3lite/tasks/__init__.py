"""Data for M3-lite: digits as images, videos and sounds in one token stream, and the tasks on them.

    from m3lite import tasks
    example = tasks.caption(seed=0)                        # Example(tokens, media, loss_mask, answer, info)
    example = tasks.haystack(1024, seed=0, key_modality="mixed")
    tokens, media, loss_mask = tasks.collate([tasks.sample("video", s) for s in range(8)])
    tasks.FEATURE_DIMS                                     # {'image': 20, 'video': 73, 'audio': 44}

Everything is built from a seed, with no download: the same (task, seed, split) gives the same
example. Evaluate on `split="test"`: its digit images are never used in training.
"""
from .haystack import KEY_MODALITIES, MAX_PAIRS, WORDS, haystack, min_context_len
from .media import DIGIT_WORDS, DIRECTIONS, FEATURE_DIMS, SLOTS, SPLITS
from .perception import caption, transcribe, video
from .stream import Stream, check_example, collate, make_rng
from .vocab import (BOS, END, EOS, ID, MODALITIES, PAD, SEP, SLOT, SPECIALS, START, VOCAB_SIZE, Example,
                    decode_text, encode_text)

TASKS = {"caption": caption, "video": video, "transcribe": transcribe, "haystack": haystack}
MIX_SALT = 5


def sample(task, seed, split="train", **kwargs):
    """One example of `task` (a name in TASKS); `kwargs` go to the task (haystack needs context_len)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    return TASKS[task](seed=seed, split=split, **kwargs)


def mixed(seed, split="train", tasks=("caption", "video", "transcribe", "haystack"), context_len=256,
          key_modality="mixed", max_pairs=None):
    """One example of a task drawn uniformly from `tasks` by `seed`: the training stream.

    Haystacks get `context_len` tokens, keys of `key_modality` and at most `max_pairs` pairs (None:
    as many as fit); the other tasks ignore these.
    """
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"tasks must name tasks of {tuple(TASKS)}, got {task!r}")
    task = tasks[make_rng(seed, split, MIX_SALT).integers(len(tasks))]
    if task == "haystack":
        return haystack(context_len, seed, split, key_modality, max_pairs=max_pairs)
    return TASKS[task](seed, split)


__all__ = ["TASKS", "sample", "mixed", "caption", "video", "transcribe", "haystack", "min_context_len",
           "collate", "check_example", "Stream", "make_rng", "FEATURE_DIMS", "SLOTS", "SPLITS", "DIGIT_WORDS",
           "DIRECTIONS", "WORDS", "MAX_PAIRS", "KEY_MODALITIES", "Example", "encode_text", "decode_text", "ID", "SPECIALS",
           "VOCAB_SIZE", "PAD", "BOS", "EOS", "SEP", "MODALITIES", "SLOT", "START", "END"]
