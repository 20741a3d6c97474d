"""M3-lite's data: determinism, slots against media rows, loss masks, splits, haystack layout, collate,
learnable audio classes, bad arguments, and the pictures of m3lite.viz.tasks."""
import pytest
import torch
from matplotlib.figure import Figure

from m3lite import tasks
from m3lite.tasks import media
from m3lite.tasks.haystack import FILLER, WORDS
from m3lite.tasks.vocab import EOS, MODALITIES, PAD, SLOT, START, decode_text
from m3lite.viz import tasks as viz

SHORT_TASKS = ("caption", "video", "transcribe")


def build(task, seed, split="train"):
    return tasks.sample(task, seed, split, **({"context_len": 400} if task == "haystack" else {}))


def same(a, b):
    return (torch.equal(a.tokens, b.tokens) and torch.equal(a.loss_mask, b.loss_mask) and a.answer == b.answer
            and a.media.keys() == b.media.keys() and all(torch.equal(a.media[m], b.media[m]) for m in a.media))


@pytest.mark.parametrize("task", tuple(tasks.TASKS))
def test_same_seed_same_example_other_seed_or_split_differs(task):
    assert same(build(task, 7), build(task, 7))
    assert not same(build(task, 7), build(task, 8))
    assert not same(build(task, 7), build(task, 7, "test"))


@pytest.mark.parametrize("task", tuple(tasks.TASKS))
def test_slots_match_media_rows_and_feature_dims(task):
    for seed in range(20):
        example = build(task, seed)
        tasks.check_example(example)
        for m in MODALITIES:
            slots = int((example.tokens == SLOT[m]).sum())
            assert slots == (example.media[m].shape[0] if m in example.media else 0)
            assert slots % tasks.SLOTS[m] == 0 and int((example.tokens == START[m]).sum()) == slots // tasks.SLOTS[m]
        assert all(rows.dtype == torch.float32 for rows in example.media.values())


@pytest.mark.parametrize("task", tuple(tasks.TASKS))
def test_loss_mask_is_exactly_the_answer_and_eos(task):
    for seed in range(20):
        example = build(task, seed)
        n = len(tasks.encode_text(example.answer)) + 1
        assert example.loss_mask.dtype == torch.bool and example.loss_mask.shape == example.tokens.shape
        assert example.loss_mask[-n:].all() and not example.loss_mask[:-n].any()
        assert example.tokens[-1] == EOS and int((example.tokens == EOS).sum()) == 1
        assert decode_text(example.tokens[example.loss_mask][:-1].tolist()) == example.answer


def test_answers_name_the_digit_and_direction():
    for seed in range(30):
        assert tasks.caption(seed).answer == tasks.DIGIT_WORDS[tasks.caption(seed).info["digit"]]
        assert tasks.transcribe(seed).answer == tasks.DIGIT_WORDS[tasks.transcribe(seed).info["digit"]]
        info = tasks.video(seed).info
        assert tasks.video(seed).answer == f"{tasks.DIGIT_WORDS[info['digit']]} {info['direction']}"
    assert {tasks.video(s).info["direction"] for s in range(40)} == set(tasks.DIRECTIONS)


def test_token_counts_per_task():
    assert {len(tasks.caption(s).tokens) for s in range(100)} <= set(range(19, 22))
    assert {len(tasks.video(s).tokens) for s in range(100)} <= set(range(36, 42))
    assert {len(tasks.transcribe(s).tokens) for s in range(100)} <= set(range(30, 33))
    assert tasks.FEATURE_DIMS == {"image": 20, "video": 73, "audio": 44}


def test_train_and_test_images_are_disjoint_and_cover_every_class():
    train, test = set(media.digit_ids("train")), set(media.digit_ids("test"))
    assert not train & test and len(train | test) == 1797
    assert 0.15 < len(test) / 1797 < 0.25
    for digit in range(10):
        assert len(media.digit_ids("test", digit)) >= 30
    for seed in range(50):
        assert tasks.caption(seed, "test").info["image_id"] in test
        assert tasks.video(seed, "train").info["image_id"] in train


def test_image_features_hold_pixels_and_position():
    image, _ = media.digit_image(5)
    features = media.image_features(image)                                  # [4, 20]
    assert features.shape == (4, 20)
    assert torch.equal(features[:, 16:], torch.eye(4))
    assert torch.equal(features[1, :16], image[:4, 4:].flatten())           # patch 1 = top right
    assert torch.equal(viz.image_from_features(features[[2, 0, 3, 1]]), image)


@pytest.mark.parametrize("direction", ("left", "right", "up", "down"))
def test_video_moves_the_digit_the_named_way(direction):
    image, _ = media.digit_image(0)
    frames = media.render_video(image, direction)                           # [5, 16, 16]
    assert frames.shape == (5, 16, 16) and torch.allclose(frames.sum((1, 2)), image.sum().expand(5))
    grid = torch.arange(16.0)
    rows = [(f.sum(1) * grid).sum() / f.sum() for f in frames]
    cols = [(f.sum(0) * grid).sum() / f.sum() for f in frames]
    moves = {"left": (0, -2), "right": (0, 2), "up": (-2, 0), "down": (2, 0)}[direction]
    for f in range(4):
        step = torch.stack([rows[f + 1] - rows[f], cols[f + 1] - cols[f]])
        assert torch.allclose(step, torch.tensor(moves, dtype=torch.float32))
    features = media.video_features(frames)
    assert features.shape == (20, 73)
    assert torch.equal(viz.frames_from_features(features), frames)


def test_dtmf_classes_are_distinguishable_by_nearest_centroid():
    def spectra(split, n):
        examples = [tasks.transcribe(seed, split) for seed in range(n)]
        x = torch.stack([e.media["audio"][:, :32].mean(0) for e in examples])   # [n, 32] mean spectrum
        return x, torch.tensor([e.info["digit"] for e in examples])
    x, y = spectra("train", 300)
    centroids = torch.stack([x[y == d].mean(0) for d in range(10)])
    x_test, y_test = spectra("test", 200)
    accuracy = (torch.cdist(x_test, centroids).argmin(1) == y_test).float().mean()
    assert accuracy > 0.95


@pytest.mark.parametrize("key_modality", tasks.KEY_MODALITIES)
@pytest.mark.parametrize("context_len", (300, 777, 2048, 4000))
def test_haystack_has_exact_length_and_a_different_sample_of_a_key_class(context_len, key_modality):
    for seed in range(3):
        example = tasks.haystack(context_len, seed, key_modality=key_modality)
        info = example.info
        tasks.check_example(example)
        assert len(example.tokens) == context_len
        assert len(set(info["classes"])) == len(info["classes"]) <= 10
        assert info["query_class"] == info["classes"][info["query_pair"]]
        assert example.answer == info["words"][info["query_pair"]] and example.answer in WORDS
        start, end = info["pair_spans"][info["query_pair"]]
        pair_tokens = example.tokens[start:end].tolist()
        assert decode_text(pair_tokens).endswith(example.answer)
        q_start, q_end = info["query_span"]
        modality = info["modalities"][info["query_pair"]]
        key = [t for t in pair_tokens if t == SLOT[modality]]
        assert example.tokens[q_start:q_end].tolist() == pair_tokens[:len(key) + 3]
        if modality == "image":
            assert info["query_sample_id"] != info["sample_ids"][info["query_pair"]]
            assert info["query_sample_id"] in media.digit_ids("train", info["query_class"])
        rows = slot_rows(example, modality)
        assert not torch.equal(rows[q_start + 2], rows[start + 2])         # the two keys' first slots differ


def slot_rows(example, modality):
    """Token position -> feature row of every `modality` slot of an example."""
    positions = (example.tokens == SLOT[modality]).nonzero().flatten().tolist()
    return dict(zip(positions, example.media[modality]))


def test_haystack_needle_moves_with_the_seed_and_filler_is_plain_words():
    starts = {tasks.haystack(1000, s).info["pair_spans"][tasks.haystack(1000, s).info["query_pair"]][0]
              for s in range(20)}
    assert len(starts) > 10 and min(starts) < 300 and max(starts) > 600
    example = tasks.haystack(1000, 0, n_pairs=3)
    assert len(example.info["classes"]) == 3
    text = decode_text(example.tokens.tolist())
    for word in set(example.info["words"]):
        assert text.count(word) == 2 if word == example.answer else text.count(word) == 1
    assert not set(FILLER) & set(WORDS)


def test_haystack_max_pairs_caps_the_drawn_pairs():
    drawn = {m: {len(tasks.haystack(600, s, key_modality="image", max_pairs=m).info["words"]) for s in range(30)}
             for m in (1, 2, 4)}
    assert drawn == {1: {1}, 2: {2}, 4: {2, 3, 4}}
    assert len(tasks.mixed(3, tasks=("haystack",), context_len=600, max_pairs=1).info["words"]) == 1


def test_haystack_minimum_length():
    for key_modality in tasks.KEY_MODALITIES:
        shortest = tasks.min_context_len(2, key_modality)
        assert len(tasks.haystack(shortest, 1, key_modality=key_modality).tokens) == shortest
        with pytest.raises(ValueError, match="context_len"):
            tasks.haystack(shortest - 1, 1, key_modality=key_modality)
    with pytest.raises(ValueError, match="context_len"):
        tasks.haystack(143, 0, n_pairs=10)
    assert len(tasks.haystack(144, 0, n_pairs=10).info["classes"]) == 10


def test_collate_pads_and_keeps_media_in_batch_major_stream_order():
    examples = [tasks.caption(0), tasks.haystack(120, 1, key_modality="mixed"), tasks.video(2), tasks.transcribe(3)]
    tokens, batch_media, loss_mask = tasks.collate(examples)
    assert tokens.shape == loss_mask.shape == (4, 120)
    assert set(batch_media) == set(MODALITIES)
    for b, example in enumerate(examples):
        n = len(example.tokens)
        assert torch.equal(tokens[b, :n], example.tokens) and (tokens[b, n:] == PAD).all()
        assert torch.equal(loss_mask[b, :n], example.loss_mask) and not loss_mask[b, n:].any()
    for m in MODALITIES:
        expected = torch.cat([torch.zeros(0, tasks.FEATURE_DIMS[m])] + [e.media[m] for e in examples if m in e.media])
        assert torch.equal(batch_media[m], expected)
        assert batch_media[m].shape[0] == int((tokens == SLOT[m]).sum())
    b, _ = (tokens == SLOT["audio"]).nonzero()[-1].tolist()                  # the last audio slot is example 3's
    assert b == 3 and torch.equal(batch_media["audio"][-1], examples[3].media["audio"][-1])


def test_mixed_stream_draws_every_task_deterministically():
    names = [tasks.mixed(s, context_len=300).info["task"] for s in range(40)]
    assert set(names) == set(tasks.TASKS)
    assert same(tasks.mixed(5), tasks.mixed(5))


@pytest.mark.parametrize("call, argument", [
    (lambda: tasks.caption(0, split="val"), "split"),
    (lambda: tasks.haystack(500, 0, split="dev"), "split"),
    (lambda: tasks.haystack(500, 0, key_modality="video"), "key_modality"),
    (lambda: tasks.haystack(500, 0, key_modality="smell"), "key_modality"),
    (lambda: tasks.haystack(39, 0), "context_len"),
    (lambda: tasks.haystack(500, 0, max_pairs=0), "max_pairs"),
    (lambda: tasks.haystack(500.0, 0), "context_len"),
    (lambda: tasks.haystack(500, 0, n_pairs=11), "n_pairs"),
    (lambda: tasks.caption(-1), "seed"),
    (lambda: tasks.transcribe(1.5), "seed"),
    (lambda: tasks.sample("poem", 0), "task"),
    (lambda: tasks.mixed(0, tasks=("caption", "poem")), "tasks"),
    (lambda: media.render_video(torch.zeros(8, 8), "diagonal"), "direction"),
    (lambda: tasks.Stream().media("smell", torch.zeros(2, 3)), "modality"),
    (lambda: tasks.collate([]), "examples"),
])
def test_bad_arguments_raise_value_errors_naming_them(call, argument):
    with pytest.raises(ValueError, match=argument):
        call()


def test_collate_rejects_media_that_do_not_match_the_slots():
    example = tasks.caption(0)
    example.media["image"] = example.media["image"][:3]
    with pytest.raises(ValueError, match="image"):
        tasks.collate([example])


def test_token_kinds_and_pictures():
    example = tasks.haystack(300, 0, key_modality="mixed")
    kinds = viz.token_kinds(example)
    assert kinds.shape == example.tokens.shape
    assert (kinds == 5).sum() == example.loss_mask.sum()
    assert (kinds == 2).sum() == (example.tokens == SLOT["image"]).sum()
    assert (kinds == 4).sum() == (example.tokens == SLOT["audio"]).sum()
    figures = [viz.show_image(tasks.caption(0)), viz.show_video(tasks.video(0)),
               viz.show_audio(tasks.transcribe(0)), viz.show_haystack(example, row=64)]
    assert all(isinstance(fig, Figure) for fig in figures)
