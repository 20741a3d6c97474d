"""The long-context multimodal haystack: find the word paired with a digit, shown again differently.

Layout of one example, exactly `context_len` tokens in all (answer and <eos> included):

    <bos> filler <sep>KEY apple<sep> filler <sep>KEY river<sep> ... filler <sep>QUERY  ->  "river<eos>"

Each KEY is an image (6 tokens) or an audio clip (14 tokens) of a digit class; the classes of one
example are distinct, so a class names one pair. Words come from WORDS (all 5 letters), distinct
within an example and unrelated to the digit. The QUERY is a *different* sample of one key's class
(another image of that digit, or a fresh clip) in the same modality as that key. Filler is random
lowercase words (from FILLER, none of them a word of WORDS) split into random gaps around the
pairs, so where the pairs sit, and which one is asked for, change with the seed.

The word follows its key directly, and the answer follows the query's END token: a key item's END
token carries the model's summary of the item, so reading "the word after the item like this one"
is the classic induction pattern (match the token before, copy the token after).

Token counts: a pair is 7 + key tokens (13 image, 21 audio); the query is 1 + key tokens; the
answer with <eos> is 6; <bos> is 1. So 2 image pairs need at least 40 tokens, 10 need 144;
10 audio pairs need 224.
"""
from .media import SLOTS, digit_features
from .stream import Stream, make_rng
from .vocab import BOS, SEP

WORDS = ("apple", "bread", "chair", "cloud", "dream", "eagle", "flame", "grape", "honey", "juice",
         "lemon", "mango", "music", "ocean", "piano", "queen", "river", "stone", "tiger", "water")
FILLER = ("the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "with",
          "as", "at", "be", "this", "have", "from", "or", "had", "by", "but", "not", "what", "all",
          "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she",
          "do", "how", "their", "if", "will", "other", "about", "out", "many", "then", "them", "these",
          "so", "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "more",
          "go", "see", "no", "way", "could", "people", "my", "than", "first", "been", "call", "who",
          "its", "now", "find", "long", "day", "did", "get", "come", "made", "may", "part")
KEY_MODALITIES = ("image", "audio", "mixed")
MAX_PAIRS = 10                        # one per digit class
HAYSTACK_SALT = 4


def key_tokens(modality):
    """Tokens of one key item: START + slots + END."""
    return SLOTS[modality] + 2


def pair_tokens(modality):
    """Tokens of one pair: <sep> KEY WORD <sep>."""
    return 1 + key_tokens(modality) + len(WORDS[0]) + 1


def min_context_len(n_pairs, key_modality="image"):
    """The shortest haystack with `n_pairs` pairs (no filler); 'mixed' counts the longer audio keys."""
    modality = "audio" if key_modality == "mixed" else key_modality
    query = 1 + key_tokens(modality)
    return 1 + n_pairs * pair_tokens(modality) + query + len(WORDS[0]) + 1


def filler_text(rng, length):
    """Random filler words joined by spaces, cut to exactly `length` bytes."""
    words, written = [], 0
    while written <= length:                # the joined text is written - 1 bytes long
        words.append(FILLER[rng.integers(len(FILLER))])
        written += len(words[-1]) + 1
    return " ".join(words)[:length]


def gap_lengths(rng, total, n_gaps):
    """Split `total` filler tokens into `n_gaps` random non-negative gaps (sorted uniform cuts)."""
    cuts = sorted(rng.integers(0, total + 1, size=n_gaps - 1).tolist())
    edges = [0] + cuts + [total]
    return [b - a for a, b in zip(edges, edges[1:])]


def check_haystack_args(context_len, key_modality, n_pairs, max_pairs=None):
    """Raise a ValueError naming the bad argument; return the number of pairs that fit (<= 10)."""
    if key_modality not in KEY_MODALITIES:
        raise ValueError(f"key_modality must be one of {KEY_MODALITIES}, got {key_modality!r}")
    if n_pairs is not None and (not isinstance(n_pairs, int) or not 1 <= n_pairs <= MAX_PAIRS):
        raise ValueError(f"n_pairs must be an int in 1..{MAX_PAIRS} or None, got {n_pairs!r}")
    if max_pairs is not None and (not isinstance(max_pairs, int) or not 1 <= max_pairs <= MAX_PAIRS):
        raise ValueError(f"max_pairs must be an int in 1..{MAX_PAIRS} or None, got {max_pairs!r}")
    if not isinstance(context_len, int):
        raise ValueError(f"context_len must be an int, got {context_len!r}")
    fewest = n_pairs or 2
    if context_len < min_context_len(fewest, key_modality):
        raise ValueError(f"context_len={context_len} is too short: {fewest} {key_modality} pairs need at least "
                         f"{min_context_len(fewest, key_modality)} tokens")
    return max(n for n in range(1, MAX_PAIRS + 1) if min_context_len(n, key_modality) <= context_len)


def haystack(context_len, seed, split="train", key_modality="image", n_pairs=None, max_pairs=None):
    """A haystack of exactly `context_len` tokens (answer and <eos> included).

    Args:
        context_len: total tokens, at least `min_context_len(n_pairs or 2, key_modality)`.
        seed: non-negative int; split: 'train' or 'test' (which digit images are drawn).
        key_modality: 'image', 'audio' or 'mixed' (each key's modality drawn at random).
        n_pairs: pairs in the context, 1..10; None draws it in 2..(as many as fit, at most 10).
        max_pairs: with n_pairs None, draw at most this many pairs (1 gives one pair): a
            training curriculum starts with few pairs.
    Returns:
        an Example; `info` holds the pairs' classes, words, modalities, sample ids and token spans,
        `query_pair` (which pair is asked for) and the query's class, sample id and span.
    """
    fits = check_haystack_args(context_len, key_modality, n_pairs, max_pairs)
    rng = make_rng(seed, split, HAYSTACK_SALT)
    most = min(fits, max_pairs or MAX_PAIRS)
    n_pairs = n_pairs or int(rng.integers(min(2, most), most + 1))
    classes = rng.permutation(10)[:n_pairs].tolist()
    words = [WORDS[i] for i in rng.permutation(len(WORDS))[:n_pairs]]
    modalities = [key_modality if key_modality != "mixed" else ("image", "audio")[rng.integers(2)]
                  for _ in range(n_pairs)]
    keys = [digit_features(m, c, rng, split) for m, c in zip(modalities, classes)]
    asked = int(rng.integers(n_pairs))
    query, query_id = digit_features(modalities[asked], classes[asked], rng, split, avoid=(keys[asked][1],))

    fixed = 1 + sum(pair_tokens(m) for m in modalities) + 1 + key_tokens(modalities[asked]) + len(words[asked]) + 1
    gaps = gap_lengths(rng, context_len - fixed, n_pairs + 1)
    stream, spans = Stream(), []
    stream.special(BOS)
    for gap, modality, (features, _), word in zip(gaps, modalities, keys, words):
        stream.text(filler_text(rng, gap))
        start = len(stream)
        stream.special(SEP)
        stream.media(modality, features)
        stream.text(word)
        stream.special(SEP)
        spans.append((start, len(stream)))
    stream.text(filler_text(rng, gaps[-1]))
    query_start = len(stream)
    stream.special(SEP)
    stream.media(modalities[asked], query)
    return stream.finish(words[asked], task="haystack", classes=classes, words=words, modalities=modalities,
                         sample_ids=[key[1] for key in keys], pair_spans=spans, query_pair=asked,
                         query_class=classes[asked], query_sample_id=query_id,
                         query_span=(query_start, len(stream)))
