"""Pictures, videos and sounds of digits, and the feature vector of each of their slots.

Every slot's feature vector holds everything the model learns about that slot: its values
(pixels or spectrum) followed by one-hot codes of where it sits (patch position, frame index).

- image: an 8x8 handwritten digit (scikit-learn's bundled set, no download) cut into 4 patches of
  4x4 pixels; a slot = 16 pixels + one-hot of 4 patch positions = 20 numbers.
- video: the digit moving 2 pixels a frame across a 16x16 canvas (left, right, up or down) for 5
  frames, each frame cut into 4 patches of 8x8; a slot = 64 pixels + 4 positions + 5 frames = 73.
- audio: a DTMF telephone tone of the digit (the sum of its row and column frequencies), 8 kHz,
  turned into 12 spectrogram frames of 32 log-magnitude bins (625-1594 Hz); a slot = 32 bins +
  one-hot of 12 frames = 44.

Train and test images are disjoint: within each class, every fifth image (by dataset order) is
a test image. Audio is synthesised, so every clip is fresh; the split only picks the random stream.
"""
import functools

import numpy as np
import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "test")
TEST_EVERY = 5                     # within each class, images 4, 9, 14, ... are test images

IMAGE_SIZE, IMAGE_PATCH = 8, 4
IMAGE_SLOTS = (IMAGE_SIZE // IMAGE_PATCH) ** 2                                     # 4

CANVAS, VIDEO_PATCH, VIDEO_FRAMES, VIDEO_STEP = 16, 8, 5, 2
DIRECTIONS = ("left", "right", "up", "down")
VIDEO_PATCHES = (CANVAS // VIDEO_PATCH) ** 2                                        # 4 a frame
VIDEO_SLOTS = VIDEO_FRAMES * VIDEO_PATCHES                                          # 20

SAMPLE_RATE, N_FFT, HOP, AUDIO_FRAMES = 8000, 256, 128, 12
CLIP_SAMPLES = N_FFT + HOP * (AUDIO_FRAMES - 1)                                     # 1664 (0.21 s)
FIRST_BIN, AUDIO_BINS = 20, 32                                                      # 625 .. 1594 Hz
AUDIO_SLOTS = AUDIO_FRAMES
DTMF_ROWS = (697, 770, 852, 941)
DTMF_COLS = (1209, 1336, 1477)
DTMF_KEYS = {1: (0, 0), 2: (0, 1), 3: (0, 2), 4: (1, 0), 5: (1, 1), 6: (1, 2),
             7: (2, 0), 8: (2, 1), 9: (2, 2), 0: (3, 1)}                              # keypad (row, col)

FEATURE_DIMS = {"image": IMAGE_PATCH ** 2 + IMAGE_SLOTS,                            # 20
                "video": VIDEO_PATCH ** 2 + VIDEO_PATCHES + VIDEO_FRAMES,           # 73
                "audio": AUDIO_BINS + AUDIO_FRAMES}                                 # 44
SLOTS = {"image": IMAGE_SLOTS, "video": VIDEO_SLOTS, "audio": AUDIO_SLOTS}


def check_split(split):
    """Raise a ValueError naming `split` unless it is 'train' or 'test'."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


def check_modality(modality, allowed=tuple(FEATURE_DIMS)):
    """Raise a ValueError naming `modality` unless it is one of `allowed`."""
    if modality not in allowed:
        raise ValueError(f"modality must be one of {allowed}, got {modality!r}")


def check_direction(direction):
    """Raise a ValueError naming `direction` unless it is left, right, up or down."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


@functools.lru_cache(maxsize=None)
def _digits():
    from sklearn.datasets import load_digits       # imported here: sklearn is slow to import
    data = load_digits()
    images = torch.tensor(data.images / 16.0, dtype=torch.float32)               # [1797, 8, 8] in [0, 1]
    labels = torch.tensor(data.target, dtype=torch.int64)                        # [1797]
    return images, labels


@functools.lru_cache(maxsize=None)
def _split_ids(split):
    """Dataset indices of `split`, grouped by class: a tuple of 10 int tuples."""
    _, labels = _digits()
    groups = []
    for digit in range(10):
        ids = torch.nonzero(labels == digit).flatten().tolist()
        is_test = [k % TEST_EVERY == TEST_EVERY - 1 for k in range(len(ids))]
        groups.append(tuple(i for i, test in zip(ids, is_test) if test == (split == "test")))
    return tuple(groups)


def digit_ids(split, digit=None):
    """Dataset indices of the images in `split` (of one class when `digit` is given), ascending."""
    check_split(split)
    groups = _split_ids(split)
    return list(groups[digit]) if digit is not None else sorted(i for group in groups for i in group)


def digit_image(image_id):
    """The image with dataset index `image_id`: (float32 [8, 8] in [0, 1], its digit)."""
    images, labels = _digits()
    return images[image_id], int(labels[image_id])


def pick_image(rng, digit, split, avoid=()):
    """A random dataset index of an image of `digit` in `split`, not one of `avoid`."""
    ids = [i for i in digit_ids(split, digit) if i not in avoid]
    return ids[rng.integers(len(ids))]


def one_hot(index, size):
    """float32 [size] with a 1 at `index`."""
    vec = torch.zeros(size)
    vec[index] = 1.0
    return vec


def patches(picture, patch):
    """Cut a square picture [H, H] into row-major patches: [(H // patch) ** 2, patch * patch]."""
    n = picture.shape[0] // patch
    return picture.reshape(n, patch, n, patch).transpose(1, 2).reshape(n * n, patch * patch)


def image_features(image):
    """Slot features of one image [8, 8]: float32 [4, 20] = 16 pixels + one-hot patch position."""
    return torch.cat([patches(image, IMAGE_PATCH), torch.eye(IMAGE_SLOTS)], dim=1)


def render_video(image, direction):
    """Frames of `image` [8, 8] sliding across the canvas: float32 [5, 16, 16].

    The digit moves VIDEO_STEP pixels a frame along the middle of the canvas, from one edge to the
    other ('right' starts at the left edge; 'down' starts at the top, rows grow downwards).
    """
    check_direction(direction)
    travel = [VIDEO_STEP * f for f in range(VIDEO_FRAMES)]                        # 0, 2, ..., 8
    if direction in ("left", "up"):
        travel = travel[::-1]
    middle = (CANVAS - IMAGE_SIZE) // 2
    frames = torch.zeros(VIDEO_FRAMES, CANVAS, CANVAS)
    for f, offset in enumerate(travel):
        row, col = (middle, offset) if direction in ("left", "right") else (offset, middle)
        frames[f, row:row + IMAGE_SIZE, col:col + IMAGE_SIZE] = image
    return frames


def video_features(frames):
    """Slot features of a video [5, 16, 16]: float32 [20, 73], frame-major then patch row-major.

    Each slot = 64 pixels of an 8x8 patch + one-hot patch position (4) + one-hot frame index (5).
    """
    rows = []
    for f in range(VIDEO_FRAMES):
        frame_code = one_hot(f, VIDEO_FRAMES).expand(VIDEO_PATCHES, VIDEO_FRAMES)
        rows.append(torch.cat([patches(frames[f], VIDEO_PATCH), torch.eye(VIDEO_PATCHES), frame_code], dim=1))
    return torch.cat(rows)


def dtmf_frequencies(digit):
    """The (low, high) frequencies in Hz of `digit`'s telephone key."""
    row, col = DTMF_KEYS[digit]
    return DTMF_ROWS[row], DTMF_COLS[col]


def dtmf_clip(digit, rng):
    """A noisy DTMF tone of `digit`: float32 [CLIP_SAMPLES] at SAMPLE_RATE.

    Random: each tone's amplitude (0.3-1.0), frequency (+-1%) and phase, the tone's length (50-80%
    of the clip) and start, and the background noise level (std 0.01-0.1).
    """
    t = np.arange(CLIP_SAMPLES) / SAMPLE_RATE
    tone = np.zeros(CLIP_SAMPLES)
    for freq in dtmf_frequencies(digit):
        freq = freq * (1 + rng.uniform(-0.01, 0.01))
        tone += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    length = int(rng.uniform(0.5, 0.8) * CLIP_SAMPLES)
    start = rng.integers(CLIP_SAMPLES - length + 1)
    envelope = np.zeros(CLIP_SAMPLES)
    envelope[start:start + length] = 1.0
    noise = rng.normal(0.0, rng.uniform(0.01, 0.1), CLIP_SAMPLES)
    return torch.tensor(tone * envelope + noise, dtype=torch.float32)


def spectrogram(clip):
    """Log-magnitude spectrogram frames of a clip [CLIP_SAMPLES]: float32 [12, 32] in about [0, 1].

    Hann window of N_FFT samples, hop HOP, bins FIRST_BIN .. FIRST_BIN + 31 (31.25 Hz apart).
    Magnitudes are scaled so a unit sine peaks near 1, then log10(mag + 0.01) / 2 + 1 maps the
    floor 0.01 to 0 and 1 to 1.
    """
    window = torch.hann_window(N_FFT)
    spec = torch.stft(clip, N_FFT, hop_length=HOP, window=window, center=False, return_complex=True)
    mag = spec.abs()[FIRST_BIN:FIRST_BIN + AUDIO_BINS].T / (window.sum() / 2)     # [12, 32]
    return torch.log10(mag + 0.01) / 2 + 1


def bin_frequencies():
    """Centre frequency in Hz of each of the 32 audio bins: float32 [32]."""
    return (torch.arange(AUDIO_BINS) + FIRST_BIN) * SAMPLE_RATE / N_FFT


def audio_features(clip):
    """Slot features of a clip [CLIP_SAMPLES]: float32 [12, 44] = 32 spectrum bins + one-hot frame."""
    return torch.cat([spectrogram(clip), torch.eye(AUDIO_FRAMES)], dim=1)


def digit_features(modality, digit, rng, split, avoid=()):
    """Features of one random sample of `digit` as an image or audio key: ([slots, dim], sample id).

    The sample id is the dataset index for images (never one of `avoid`) and None for audio.
    """
    check_modality(modality, ("image", "audio"))
    if modality == "image":
        image_id = pick_image(rng, digit, split, avoid)
        return image_features(digit_image(image_id)[0]), image_id
    return audio_features(dtmf_clip(digit, rng)), None
