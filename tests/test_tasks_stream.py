"""m3lite.tasks: examples are deterministic, consistent with their media, learnable, and checked."""
import numpy as np
import pytest
import torch

from m3lite import tasks
from m3lite.tasks import media

PERCEPTION = ("caption", "video", "transcribe")


def same(a, b):
    return torch.equal(a.tokens, b.tokens) and all(torch.equal(a.media[m], b.media[m]) for m in a.media)


@pytest.mark.parametrize("task", PERCEPTION)
def test_examples_are_deterministic_and_consistent(task):
    a, b, c = tasks.sample(task, 7), tasks.sample(task, 7), tasks.sample(task, 8)
    assert same(a, b) and set(a.media) == set(b.media)
    assert not same(a, c) or a.answer != c.answer
    tasks.check_example(a)
    for m, rows in a.media.items():
        assert rows.shape == (int((a.tokens == tasks.SLOT[m]).sum()), tasks.FEATURE_DIMS[m])
    answer = a.tokens[a.loss_mask]
    assert answer[-1] == tasks.EOS and tasks.decode_text(answer[:-1].tolist()) == a.answer
    assert a.loss_mask.sum() == len(a.answer) + 1 and a.loss_mask[-len(a.answer) - 1:].all()


def test_test_images_are_never_training_images():
    assert not set(media.digit_ids("train")) & set(media.digit_ids("test"))
    assert len(media.digit_ids("train")) + len(media.digit_ids("test")) == 1797


@pytest.mark.parametrize("context_len", [300, 1000, 4000])
@pytest.mark.parametrize("key_modality", ["image", "audio", "mixed"])
def test_haystack_length_and_query(context_len, key_modality):
    for seed in range(3):
        ex = tasks.haystack(context_len, seed, split="test", key_modality=key_modality)
        info = ex.info
        assert len(ex.tokens) == context_len
        tasks.check_example(ex)
        asked = info["query_pair"]
        assert info["query_class"] == info["classes"][asked] and ex.answer == info["words"][asked]
        assert len(set(info["classes"])) == len(info["classes"])
        if info["modalities"][asked] == "image":                    # another image of the same digit
            assert info["query_sample_id"] != info["sample_ids"][asked]


def test_haystack_needle_moves_with_the_seed():
    starts = {tasks.haystack(1000, seed).info["pair_spans"][0][0] for seed in range(8)}
    assert len(starts) > 4


def test_dtmf_digits_are_separable():
    """A nearest-centroid classifier on the audio features: the transcription task is learnable."""
    rng = np.random.default_rng(0)
    train = {d: torch.stack([media.audio_features(media.dtmf_clip(d, rng)).flatten() for _ in range(20)])
             for d in range(10)}
    centroids = torch.stack([train[d].mean(0) for d in range(10)])
    hits = 0
    for d in range(10):
        for _ in range(20):
            x = media.audio_features(media.dtmf_clip(d, rng)).flatten()
            hits += int((centroids - x).norm(dim=1).argmin() == d)
    assert hits / 200 > 0.95


def test_collate_pads_and_keeps_media_in_stream_order():
    examples = [tasks.sample("caption", 1), tasks.sample("transcribe", 2), tasks.sample("caption", 3)]
    tokens, feats, loss_mask = tasks.collate(examples)
    assert tokens.shape == (3, max(len(e.tokens) for e in examples))
    for b, e in enumerate(examples):
        assert torch.equal(tokens[b, :len(e.tokens)], e.tokens) and (tokens[b, len(e.tokens):] == tasks.PAD).all()
        assert not loss_mask[b, len(e.tokens):].any()
    assert torch.equal(feats["image"], torch.cat([examples[0].media["image"], examples[2].media["image"]]))
    assert feats["video"].shape == (0, tasks.FEATURE_DIMS["video"])


@pytest.mark.parametrize("call, match", [
    (lambda: tasks.sample("dance", 0), "task must be one of"),
    (lambda: tasks.caption(0, split="valid"), "split"),
    (lambda: tasks.caption(-1), "seed must be a non-negative int"),
    (lambda: tasks.haystack(20, 0), "context_len"),
    (lambda: tasks.haystack(500, 0, key_modality="smell"), "key_modality"),
    (lambda: tasks.mixed(0, tasks=("caption", "dance")), "tasks must name tasks"),
])
def test_bad_arguments_are_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
