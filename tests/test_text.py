"""jaxrnn.data.text: the shipped corpus and its split, the vocabulary, the unigram score, and
the stream and held-out layouts against hand computations."""

import collections
import gzip
import math
import os

import numpy as np
import pytest

from jaxrnn.data import text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_corpus_is_shipped_and_split_at_the_held_out_play():
    train, held_out = text.load_text("shakespeare")
    path = os.path.join(ROOT, "jaxrnn", "data", "corpora", "shakespeare_tragedies.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        whole = f.read()
    assert train + held_out == whole
    assert (len(train), len(held_out)) == (733_037, 101_523)  # the docstring's figures
    assert train.startswith("Hamlet\n\nACT I\n") and held_out.startswith("Macbeth\n\nACT I\n")
    assert "Macbeth\n\nACT I" not in train and "MACBETH:" not in train
    for play in ("Hamlet", "King Lear", "Othello", "Romeo and Juliet", "Timon of Athens"):
        assert f"\n\n{play}\n\nACT I\n" in "\n\n" + train
    assert "**" not in whole and "_" not in whole and "\\" not in whole  # the Markdown is gone
    with pytest.raises(ValueError, match="unknown text dataset 'poems'"):
        text.load_text("poems")


def test_vocabulary_ids_and_unknown_characters():
    vocab = text.Vocabulary.from_text("banana band")
    assert vocab.chars == " abdn" and vocab.size == 6
    ids = vocab.encode("a bad cab!")
    # id 0 for c and ! (not in "banana band"), i + 1 for chars[i].
    np.testing.assert_array_equal(ids, [2, 1, 3, 2, 4, 1, 0, 2, 3, 0])
    assert ids.dtype == np.int32
    assert vocab.decode(ids) == f"a bad {text.UNKNOWN}ab{text.UNKNOWN}"
    assert vocab.decode(vocab.encode("and")) == "and"
    assert vocab.encode("").shape == (0,)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 6\)"):
        vocab.decode([6])
    with pytest.raises(ValueError, match="distinct and in code-point order"):
        text.Vocabulary("ba")

    train, held_out = text.load_text("shakespeare")
    full = text.Vocabulary.from_text(train)
    assert full.decode(full.encode(train)) == train
    unknown = sorted({c for c in held_out if c not in train})
    assert np.sum(full.encode(held_out) == 0) == sum(held_out.count(c) for c in unknown)


def test_unigram_bits_is_the_smoothed_frequency_model():
    train, held_out = "abracadabra", "cabbage"
    vocab = text.Vocabulary.from_text(train)  # a b c d r: g and e are unknown
    counts = collections.Counter(vocab.encode(train).tolist())
    n = len(train)
    want = -sum(
        math.log2((counts.get(i, 0) + 1) / (n + vocab.size)) for i in vocab.encode(held_out)
    ) / len(held_out)
    got = text.unigram_bits(vocab.encode(train), vocab.encode(held_out), vocab.size)
    assert got == pytest.approx(want, rel=1e-12)
    # On the training text itself, close to its entropy (the smoothing moves it a little).
    ids = vocab.encode(train)
    p = np.bincount(ids) / n
    entropy = -sum(q * math.log2(q) for q in p if q > 0)
    assert text.unigram_bits(ids, ids, vocab.size) == pytest.approx(entropy, abs=0.15)


def test_streams_are_contiguous_windows_in_batch_order():
    ids = np.arange(100, 123)  # 23 ids: 22 (input, target) pairs, 7 windows of 3
    inputs, targets = text.streams(ids, num_streams=2, window=3)
    # 7 windows // 2 streams = 3 windows per stream: stream s is ids[9 s : 9 s + 9].
    np.testing.assert_array_equal(inputs, [np.arange(100, 109), np.arange(109, 118)])
    np.testing.assert_array_equal(targets, inputs + 1)
    for index in range(7):  # two passes and a bit
        batch = text.stream_batch(inputs, targets, index, window=3)
        w = index % 3
        for s in range(2):
            start = 100 + 9 * s + 3 * w
            np.testing.assert_array_equal(batch["inputs"][s], [start, start + 1, start + 2])
            np.testing.assert_array_equal(batch["labels"][s], [start + 1, start + 2, start + 3])
        # Batch i + 1 continues batch i in every row, except where a pass starts again.
        np.testing.assert_array_equal(batch["starts"], [w == 0, w == 0])
    with pytest.raises(ValueError, match="fewer than one for each of 8 streams"):
        text.streams(ids, num_streams=8, window=3)


@pytest.mark.parametrize("streams,window", [(1, 4), (3, 4), (3, 7), (5, 2), (19, 1)])
def test_held_out_windows_score_every_prediction_once(streams, window):
    ids = np.arange(50, 70)  # 19 (input, next) pairs
    w = text.held_out_windows(ids, streams, window)
    count = w["inputs"].shape[0]
    assert w["inputs"].shape == w["labels"].shape == w["weights"].shape == (count, streams, window)
    length = math.ceil(19 / streams)
    assert count == math.ceil(length / window)
    assert w["weights"].sum() == 19
    # Each stream, window after window, is a contiguous run of the text, padded at its end.
    for s in range(streams):
        row_in = w["inputs"][:, s].reshape(-1)
        row_label = w["labels"][:, s].reshape(-1)
        real = w["weights"][:, s].reshape(-1) == 1
        first = s * length
        want = np.arange(50 + first, 50 + min(first + length, 19))
        np.testing.assert_array_equal(row_in[real], want)
        np.testing.assert_array_equal(row_label[real], want + 1)
        assert not real[len(want) :].any()
    with pytest.raises(ValueError, match="at least 2 characters"):
        text.held_out_windows(ids[:1], 1, 4)


def test_examples_are_windows():
    assert text.num_windows(23, 3) == 7
    assert text.num_windows(22, 3) == 7  # 21 pairs
    assert text.num_windows(21, 3) == 6
    assert text.num_windows(0, 3) == 0
    assert text.is_text("shakespeare") and not text.is_text("mnist_rows")
