"""Generated sequence tasks: NumPy generators and the ``jaxrnn_sequences`` tfds builder.

Every generator is vectorised and deterministic in its ``numpy.random.Generator``; each returns
a dict of NumPy arrays with ``inputs`` float32 ``[N, T, F]``, ``lengths`` int32 ``[N]`` (the
true length; steps at and past it are padding) and either ``labels`` int32 ``[N]``
(classification) or ``targets`` float32 ``[N]`` (regression).

Tasks:

* ``linear_vs_random`` -- the toy task of the dynamic-RNN tutorial (Aymeric Damien's
  TensorFlow-Examples): lengths uniform in 5..20, values integers / 10000, padded with -1 to
  20 steps, ``F = 1``. Class 0: a run of consecutive integers from a start uniform in
  ``0..10000 - length``; class 1: integers drawn uniformly from ``0..9999``. Classes are
  equally likely.
* ``adding`` -- the adding problem of Hochreiter & Schmidhuber (1997), in the form of Le et al.
  (2015): ``F = 2``, channel 0 uniform in [0, 1), channel 1 marks one step of the first half
  and one of the second half with 1; the target is the sum of the two marked values. All
  sequences have length ``T``; predicting the mean (1.0) scores an MSE of 1/6 ~ 0.167.
* ``temporal_order`` -- the temporal-order problem of Hochreiter & Schmidhuber (1997, Exp. 6a):
  one-hot symbols (``F = 8``: a, b, c, d, X, Y, B, E), lengths uniform in 100..110, padded
  with zeros to 110. A sequence is ``B``, random a-d, ``E``, except one step in 10..20 and one
  in 50..60 that hold X or Y; the class is their order: XX 0, XY 1, YX 2, YY 3. It needs
  long memory *and* variable-length masking.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from jaxrnn.data._builder import NumpyBuilder


def linear_vs_random(
    num_examples: int,
    rng: np.random.Generator,
    *,
    min_length: int = 5,
    max_length: int = 20,
    max_value: int = 10000,
    pad_value: float = -1.0,
) -> dict[str, np.ndarray]:
    """``inputs`` float32 ``[N, max_length, 1]`` (padded with ``pad_value``), ``lengths``
    int32 ``[N]`` in ``[min_length, max_length]``, ``labels`` int32 ``[N]`` (0 linear,
    1 random)."""
    n, t = num_examples, max_length
    lengths = rng.integers(min_length, max_length + 1, size=n)
    labels = rng.integers(0, 2, size=n)
    starts = rng.integers(0, max_value - lengths + 1)
    linear = starts[:, None] + np.arange(t)[None, :]
    random = rng.integers(0, max_value, size=(n, t))
    values = np.where(labels[:, None] == 0, linear, random) / max_value
    values = np.where(np.arange(t)[None, :] < lengths[:, None], values, pad_value)
    return {
        "inputs": values.astype(np.float32)[:, :, None],
        "lengths": lengths.astype(np.int32),
        "labels": labels.astype(np.int32),
    }


def adding(num_examples: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``inputs`` float32 ``[N, length, 2]`` (values, markers), ``lengths`` int32 ``[N]``
    (all ``length``), ``targets`` float32 ``[N]``: the sum of the two marked values."""
    if length < 2:
        raise ValueError(f"adding: length must be >= 2, got {length}")
    n, half = num_examples, length // 2
    values = rng.random((n, length), dtype=np.float32)
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    markers = np.zeros((n, length), np.float32)
    rows = np.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return {
        "inputs": np.stack([values, markers], axis=-1),
        "lengths": np.full((n,), length, np.int32),
        "targets": targets.astype(np.float32),
    }


TEMPORAL_ORDER_SYMBOLS = ("a", "b", "c", "d", "X", "Y", "B", "E")


def temporal_order(
    num_examples: int, rng: np.random.Generator, *, min_length: int = 100, max_length: int = 110
) -> dict[str, np.ndarray]:
    """``inputs`` float32 one-hot ``[N, max_length, 8]`` (zeros past each length), ``lengths``
    int32 ``[N]`` in ``[min_length, max_length]``, ``labels`` int32 ``[N]`` in 0..3."""
    if min_length < 62:
        raise ValueError(f"temporal_order: min_length must be >= 62, got {min_length}")
    n, t = num_examples, max_length
    x, y, b, e = (TEMPORAL_ORDER_SYMBOLS.index(s) for s in "XYBE")
    lengths = rng.integers(min_length, max_length + 1, size=n)
    symbols = rng.integers(0, 4, size=(n, t))  # a..d
    first_pos = rng.integers(10, 21, size=n)
    second_pos = rng.integers(50, 61, size=n)
    first_is_y = rng.integers(0, 2, size=n)
    second_is_y = rng.integers(0, 2, size=n)
    rows = np.arange(n)
    symbols[rows, first_pos] = np.where(first_is_y, y, x)
    symbols[rows, second_pos] = np.where(second_is_y, y, x)
    symbols[:, 0] = b
    symbols[rows, lengths - 1] = e
    valid = np.arange(t)[None, :] < lengths[:, None]
    inputs = (symbols[..., None] == np.arange(len(TEMPORAL_ORDER_SYMBOLS))) & valid[..., None]
    return {
        "inputs": inputs.astype(np.float32),
        "lengths": lengths.astype(np.int32),
        "labels": (2 * first_is_y + second_is_y).astype(np.int32),
    }


@dataclasses.dataclass(eq=False)
class SequenceConfig(tfds.core.BuilderConfig):
    """One generated task of :class:`JaxrnnSequences`.

    Attributes:
      task: ``"linear_vs_random"``, ``"adding"`` or ``"temporal_order"``.
      length: padded length ``T`` (for ``adding``: every sequence's length).
      features: ``F``, the size of each step.
      num_classes: classes for classification tasks, 0 for regression.
      train_size, test_size: examples per split.
      seed: the generation seed; split ``s`` uses ``np.random.default_rng([seed, s])``
        with ``s`` 0 for train and 1 for test.
    """

    task: str = ""
    length: int = 0
    features: int = 1
    num_classes: int = 0
    train_size: int = 0
    test_size: int = 0
    seed: int = 0


def _config(name, task, length, features, num_classes, train, test, description):
    return SequenceConfig(
        name=name,
        description=description,
        task=task,
        length=length,
        features=features,
        num_classes=num_classes,
        train_size=train,
        test_size=test,
        seed=0,
    )


SEQUENCE_CONFIGS = (
    _config("linear_vs_random", "linear_vs_random", 20, 1, 2, 50_000, 10_000,
            "Linear vs random integer runs, lengths 5..20 padded with -1 (dynamic-RNN tutorial)."),
    _config("adding_50", "adding", 50, 2, 0, 50_000, 10_000, "Adding problem, T = 50."),
    _config("adding_200", "adding", 200, 2, 0, 50_000, 5_000, "Adding problem, T = 200."),
    _config("adding_1000", "adding", 1000, 2, 0, 20_000, 2_000, "Adding problem, T = 1000."),
    _config("temporal_order", "temporal_order", 110, 8, 4, 20_000, 2_000,
            "Temporal order (H&S 1997, 6a): 4 classes, lengths 100..110 padded with zeros."),
)  # fmt: skip


def generate(config: SequenceConfig, split: str) -> dict[str, np.ndarray]:
    """The arrays of ``split`` (``"train"`` or ``"test"``) of ``config``, as documented above."""
    splits = {"train": (0, config.train_size), "test": (1, config.test_size)}
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    stream, n = splits[split]
    rng = np.random.default_rng([config.seed, stream])
    if config.task == "linear_vs_random":
        return linear_vs_random(n, rng, max_length=config.length)
    if config.task == "adding":
        return adding(n, config.length, rng)
    if config.task == "temporal_order":
        return temporal_order(n, rng, max_length=config.length)
    raise ValueError(
        f"unknown task {config.task!r}; choose linear_vs_random, adding or temporal_order"
    )


class JaxrnnSequences(NumpyBuilder):
    """Generated sequence tasks, one config per task (:data:`SEQUENCE_CONFIGS`).

    Registered in tfds as ``jaxrnn_sequences`` (``jaxrnn_sequences/adding_200`` etc.).
    Features: ``inputs`` float32 ``[T, F]``, ``length`` int32 scalar, and ``label``
    (``ClassLabel``) or ``target`` (float32 scalar). Deterministic: the same config and seed
    write the same examples in the same order.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "linear_vs_random, adding (50, 200, 1000), temporal_order."}
    BUILDER_CONFIGS = list(SEQUENCE_CONFIGS)

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = {
            "inputs": tfds.features.Tensor(
                shape=(config.length, config.features), dtype=np.float32
            ),
            "length": tfds.features.Tensor(shape=(), dtype=np.int32),
        }
        if config.num_classes:
            features["label"] = tfds.features.ClassLabel(num_classes=config.num_classes)
        else:
            features["target"] = tfds.features.Tensor(shape=(), dtype=np.float32)
        return self.make_info(
            description=config.description,
            features=tfds.features.FeaturesDict(features),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split: str):
        arrays = generate(self.builder_config, split)
        extra = "labels" if "labels" in arrays else "targets"
        key = "label" if extra == "labels" else "target"
        for i in range(len(arrays["lengths"])):
            yield (
                i,
                {
                    "inputs": arrays["inputs"][i],
                    "length": arrays["lengths"][i],
                    key: arrays[extra][i],
                },
            )
