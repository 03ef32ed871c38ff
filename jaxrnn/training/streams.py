"""Training over text streams: the character model, its stateful feed, its held-out score.

A text dataset (``jaxrnn.data.text``) trains a character-level language model: a
:class:`jaxrnn.models.Model` with one-hot inputs (``vocab_size``) and a head on every step
(``readout="sequence"``) predicts each next character. The run's training text is cut into
``batch_size`` parallel streams (:func:`jaxrnn.data.text.streams`); batch ``i`` is window
``i`` of every stream, so with ``Config.stateful`` the carry each step ends with is the one
the next step starts from (``TrainState.carry``, checkpointed with the parameters), and the
first batch of each pass restarts it from zeros (its ``starts`` rows).

:class:`StreamFeed` has :class:`jaxrnn.training.feed.TrainFeed`'s interface. Its position
is the number of batches drawn, which the train loop keeps equal to the step: batch ``t`` is
window ``t % W`` of the streams, a function of ``t`` alone, and the carry comes from the
checkpoint, so a resumed run takes exactly the steps of an uninterrupted one. With ``P``
processes, process ``p`` feeds streams ``[p * B / P, (p + 1) * B / P)``.

The held-out part is scored in bits per character: the model reads it as
``Config.eval_batch_size`` contiguous streams (1: the whole text in order), window after
window with the carry kept (:func:`jaxrnn.training.steps.make_stream_eval`), every next
character counted once. The unigram model of the run's training text (character frequencies
with add-one smoothing, :func:`jaxrnn.data.text.unigram_bits`) is scored on the same text
as a reference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from jaxrnn import parallel
from jaxrnn.configs.base import Config
from jaxrnn.data import text
from jaxrnn.training import feed as feed_lib
from jaxrnn.training import steps

LN2 = math.log(2.0)


@dataclasses.dataclass(frozen=True)
class TextData:
    """The run's text: the vocabulary (of the whole train part), the training ids (the first
    ``train_examples`` windows, or all) and the held-out ids (``test_examples`` windows)."""

    vocab: text.Vocabulary
    train_ids: np.ndarray
    held_out_ids: np.ndarray

    @property
    def unigram_bpc(self) -> float:
        """The unigram model's bits per character on the held-out ids."""
        return text.unigram_bits(self.train_ids, self.held_out_ids, self.vocab.size)


def check_config(config: Config) -> None:
    """The settings a text dataset needs, or the errors naming them (a non-text config with
    ``stateful`` or the sequence readout is refused too)."""
    if not text.is_text(config.dataset):
        if config.stateful:
            raise ValueError(
                f"stateful=True carries the state through the streams of a text dataset "
                f"({', '.join(text.TEXT_DATASETS)}); dataset {config.dataset!r} has none"
            )
        if config.readout == "sequence":
            raise ValueError(
                f"readout='sequence' needs a label per step, which only the text datasets "
                f"({', '.join(text.TEXT_DATASETS)}) have; dataset {config.dataset!r} has not"
            )
        return
    if config.readout != "sequence":
        raise ValueError(
            f"a text dataset predicts every next character: set readout=sequence, "
            f"got {config.readout!r}"
        )
    if config.bidirectional:
        raise ValueError("a language model reads left to right: bidirectional must be false")
    if config.window < 1:
        raise ValueError(f"window must be >= 1, got {config.window}")
    if config.eval_batch_size < 1:
        raise ValueError(f"eval_batch_size must be >= 1, got {config.eval_batch_size}")


def load(config: Config) -> TextData:
    """The texts of ``config.dataset`` that the run uses, encoded."""
    train, held_out = text.load_text(config.dataset)
    vocab = text.Vocabulary.from_text(train)
    return TextData(
        vocab,
        _first_windows(vocab.encode(train), config.train_examples, config.window),
        _first_windows(vocab.encode(held_out), config.test_examples, config.window),
    )


def _first_windows(ids: np.ndarray, examples: int, window: int) -> np.ndarray:
    return ids[: examples * window + 1] if examples else ids


def num_examples(data: TextData, config: Config) -> int:
    """The training examples (windows) of the run's text."""
    return text.num_windows(len(data.train_ids), config.window)


class StreamFeed:
    """Blocks of stream batches for this process (see the module docstring).

    Args:
      ids: the whole training text, int ids (every process passes the same).
      batch_size: ``B``, the streams (a multiple of ``process_count``).
      window: characters per row of a batch.
    """

    shards = 1  # the batch order depends on the text, B and the window only

    def __init__(
        self,
        ids: np.ndarray,
        *,
        batch_size: int,
        window: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if batch_size % process_count:
            raise ValueError(
                f"batch_size {batch_size} must be a multiple of the {process_count} processes"
            )
        inputs, targets = text.streams(ids, batch_size, window)
        per = batch_size // process_count
        rows = slice(process_index * per, (process_index + 1) * per)
        self._inputs, self._targets = inputs[rows], targets[rows]
        self.batch_size, self.window = batch_size, window
        self.num_examples = text.num_windows(len(ids), window)
        self.batches_per_pass = inputs.shape[1] // window
        self._next = 0

    def row_specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """What one row of a batch holds: ``inputs`` and ``labels`` int32 ``[window]``,
        ``starts`` a bool scalar (:func:`jaxrnn.data.text.stream_batch`)."""
        window = (self.window,)
        return {
            "inputs": jax.ShapeDtypeStruct(window, np.int32),
            "labels": jax.ShapeDtypeStruct(window, np.int32),
            "starts": jax.ShapeDtypeStruct((), np.bool_),
        }

    def next_local(self, steps: int) -> dict[str, np.ndarray]:
        """This process's rows of the next ``steps`` batches: ``[steps, B / P, window]``."""
        batches = [
            text.stream_batch(self._inputs, self._targets, self._next + i, self.window)
            for i in range(steps)
        ]
        self._next += steps
        return {key: np.stack([b[key] for b in batches]) for key in batches[0]}

    def next_block(self, steps: int, mesh: Mesh) -> dict:
        """The next ``steps`` global batches as arrays ``[steps, B, window]`` over ``data``."""
        return parallel.global_batch(self.next_local(steps), mesh, axis=1)

    def recycle(self, block: dict) -> None:
        """Nothing to reuse: a block is a few small arrays."""

    def blocks(self, sizes: Sequence[int], mesh: Mesh) -> Iterator[dict]:
        """``next_block(k)`` for each ``k`` of ``sizes``, each gathered ahead in a thread."""
        return feed_lib.prefetch(self.next_block, sizes, mesh)

    def _setup(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "window": self.window,
        }

    def state(self, batches: int) -> dict:
        """The JSON state of the position after ``batches`` batches."""
        return {"batches": int(batches), "streams": self.batch_size, **self._setup()}

    def restore(self, state: Mapping) -> tuple[int, int]:
        """Continue after the batches ``state`` counts; returns ``(batches, 1)``.

        Raises:
          ValueError: the state belongs to another text size, batch size or window.
        """
        mismatched = {k: (state.get(k), v) for k, v in self._setup().items() if state.get(k) != v}
        batches = int(state.get("batches", -1))
        if mismatched or batches < 0:
            detail = ", ".join(f"{k}: state {s!r} vs {v!r}" for k, (s, v) in mismatched.items())
            raise ValueError(f"data state is from a different setup ({detail or state})")
        self._next = batches
        return batches, self.shards


def make_feed(data: TextData, config: Config) -> StreamFeed:
    return StreamFeed(
        data.train_ids,
        batch_size=config.batch_size,
        window=config.window,
        process_index=parallel.process_index(),
        process_count=parallel.process_count(),
    )


def make_evaluate(model, data: TextData, config: Config, mesh: Mesh) -> Callable[..., dict]:
    """``evaluate(params) -> {"loss", "accuracy", "bpc"}`` on the held-out text: the mean
    cross-entropy in nats and in bits per character, and the share of next characters that
    are the model's most likely one."""
    streams = max(1, min(config.eval_batch_size, len(data.held_out_ids) - 1))
    windows = text.held_out_windows(data.held_out_ids, streams, config.window)
    windows = parallel.replicate(windows, mesh)
    stream_eval = steps.make_stream_eval(model, stateful=config.stateful)

    def evaluate(params) -> dict:
        loss_sum, correct, total = (
            float(x) for x in parallel.to_host(stream_eval(params, windows))
        )
        loss = loss_sum / max(total, 1.0)
        return {"loss": loss, "accuracy": correct / max(total, 1.0), "bpc": loss / LN2}

    return evaluate
