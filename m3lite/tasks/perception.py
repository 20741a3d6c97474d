"""Three short tasks, one per modality: name the digit of an image, a video, a sound.

    caption:     <bos><image_start><image>x4<image_end>caption:      -> "seven<eos>"      (19-21 tokens)
    video:       <bos><video_start><video>x20<video_end>video:       -> "three left<eos>" (36-41 tokens)
    transcribe:  <bos><audio_start><audio>x12<audio_end>transcribe:  -> "four<eos>"       (30-32 tokens)
"""
from .media import (DIGIT_WORDS, DIRECTIONS, audio_features, digit_image, dtmf_clip, image_features,
                    pick_image, render_video, video_features)
from .stream import Stream, make_rng
from .vocab import BOS

CAPTION_SALT, VIDEO_SALT, AUDIO_SALT = 1, 2, 3


def caption(seed, split="train"):
    """An image of a random digit from `split`; the answer is the digit's word ("seven")."""
    rng = make_rng(seed, split, CAPTION_SALT)
    digit = int(rng.integers(10))
    image_id = pick_image(rng, digit, split)
    stream = Stream()
    stream.special(BOS)
    stream.media("image", image_features(digit_image(image_id)[0]))
    stream.text("caption:")
    return stream.finish(DIGIT_WORDS[digit], task="caption", digit=digit, image_id=image_id)


def video(seed, split="train"):
    """A digit from `split` sliding across the canvas; the answer is digit and direction ("three left")."""
    rng = make_rng(seed, split, VIDEO_SALT)
    digit = int(rng.integers(10))
    direction = DIRECTIONS[rng.integers(len(DIRECTIONS))]
    image_id = pick_image(rng, digit, split)
    stream = Stream()
    stream.special(BOS)
    stream.media("video", video_features(render_video(digit_image(image_id)[0], direction)))
    stream.text("video:")
    return stream.finish(f"{DIGIT_WORDS[digit]} {direction}", task="video", digit=digit,
                         direction=direction, image_id=image_id)


def transcribe(seed, split="train"):
    """A noisy DTMF tone of a random digit; the answer is the digit's word ("four")."""
    rng = make_rng(seed, split, AUDIO_SALT)
    digit = int(rng.integers(10))
    stream = Stream()
    stream.special(BOS)
    stream.media("audio", audio_features(dtmf_clip(digit, rng)))
    stream.text("transcribe:")
    return stream.finish(DIGIT_WORDS[digit], task="transcribe", digit=digit)
