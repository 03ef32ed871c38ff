"""Loading prepared datasets into memory, and the batch iterators that feed training.

Every dataset here fits in memory (MNIST train is 47 MB of uint8): :func:`load` returns
NumPy arrays and the iterators index them (the data guide compares the throughput with a
grain pipeline).

Sharding: with ``process_count`` processes, process ``i`` owns the contiguous block of examples
``shard_bounds(N, i, process_count)`` (sizes differ by at most one, as ``np.array_split``)
and never touches another block. Shuffling permutes within the block, from
``(seed, process_index, epoch)``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from jaxrnn.data.mnist import JaxrnnMnist
from jaxrnn.data.sequences import SEQUENCE_CONFIGS, JaxrnnSequences

DATA_DIR_ENV = "JAXRNN_DATA_DIR"
MNIST_PERMUTATION_SEED = 0
_CACHE_DIR = "jaxrnn_arrays"  # in-memory arrays saved inside the prepared dataset's folder


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One name of :data:`DATASETS`: where it comes from and what :func:`load` returns.

    ``shape`` is ``(T, F)`` of ``inputs``; ``num_classes`` is 0 for regression (``targets``).
    """

    name: str
    builder: str  # tfds name, with config
    view: str  # "rows", "pixels", "permuted" for MNIST; "sequence" otherwise
    shape: tuple[int, int]
    num_classes: int

    @property
    def task(self) -> str:
        return "classification" if self.num_classes else "regression"


DATASETS: Mapping[str, DatasetSpec] = {
    "mnist_rows": DatasetSpec("mnist_rows", "jaxrnn_mnist", "rows", (28, 28), 10),
    "mnist_pixels": DatasetSpec("mnist_pixels", "jaxrnn_mnist", "pixels", (784, 1), 10),
    "mnist_permuted": DatasetSpec("mnist_permuted", "jaxrnn_mnist", "permuted", (784, 1), 10),
    **{
        c.name: DatasetSpec(
            c.name, f"jaxrnn_sequences/{c.name}", "sequence", (c.length, c.features), c.num_classes
        )
        for c in SEQUENCE_CONFIGS
    },
}


def default_data_dir() -> str:
    """``$JAXRNN_DATA_DIR`` if set, else tfds' default (``~/tensorflow_datasets``)."""
    return os.environ.get(DATA_DIR_ENV) or os.fspath(tfds.core.constants.DATA_DIR)


def mnist_permutation() -> np.ndarray:
    """The fixed pixel order of ``mnist_permuted``: int64 ``[784]``, a permutation of 0..783."""
    return np.random.default_rng(MNIST_PERMUTATION_SEED).permutation(784)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def _check_writable(data_dir: str) -> None:
    try:
        os.makedirs(data_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as e:
        raise PermissionError(
            f"data_dir {data_dir} is not writable ({e.strerror or e}); the dataset must be "
            f"prepared there on first use: pass another data_dir or set ${DATA_DIR_ENV}"
        ) from None


def builder(
    name: str, *, data_dir: str | None = None, mnist_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """The tfds builder behind dataset ``name`` (not yet prepared)."""
    spec = _spec(name)
    data_dir = data_dir or default_data_dir()
    if spec.builder == "jaxrnn_mnist":
        return JaxrnnMnist(data_dir=data_dir, mnist_dir=mnist_dir)
    return JaxrnnSequences(data_dir=data_dir, config=spec.builder.split("/")[1])


def prepare(
    name: str, *, data_dir: str | None = None, mnist_dir: str | None = None
) -> tfds.core.DatasetBuilder:
    """Prepares dataset ``name`` in ``data_dir`` unless already there; returns its builder.

    tfds writes into a temporary folder renamed into place only on success, so a failure
    leaves nothing that looks complete. Downloads are checked against registered checksums.
    """
    b = builder(name, data_dir=data_dir, mnist_dir=mnist_dir)
    if b.is_prepared():
        return b
    root = os.fspath(b.data_dir_root)
    _check_writable(root)
    # Several processes (test workers, the processes of a multi-process run) may ask for the
    # same dataset at once; tfds' final rename fails for all but the first, so one prepares
    # and the others wait for it and then find it prepared.
    with open(os.path.join(root, f".{b.name}.prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        b = builder(name, data_dir=data_dir, mnist_dir=mnist_dir)
        if not b.is_prepared():
            b.download_and_prepare(
                file_format="array_record",
                download_config=tfds.download.DownloadConfig(
                    force_checksums_validation=True,
                    compute_stats=tfds.download.ComputeStatsMode.SKIP,
                ),
            )
    return b


def _read_split(
    b: tfds.core.DatasetBuilder, split: str, rows: tuple[int, int] | None = None
) -> dict[str, np.ndarray]:
    """Examples ``[start, stop)`` of ``split`` (default: all), stacked: ``{feature: [n, ...]}``.

    The whole split is read once through ``tfds.data_source`` and kept as .npy files inside the
    prepared dataset's folder (they go when it goes; a read-only folder just means no cache);
    a read of some rows maps those files and copies only those rows. Without the cache, a read
    of some rows takes only them from the data source (and writes no cache).
    """
    num_examples = b.info.splits[split].num_examples
    start, stop = (0, num_examples) if rows is None else rows
    if not 0 <= start <= stop <= num_examples:
        raise ValueError(f"rows [{start}, {stop}) out of the {num_examples} examples of {split}")
    cache = os.path.join(os.fspath(b.data_path), _CACHE_DIR, split)
    keys = sorted(b.info.features.keys())
    try:
        mapped = {k: np.load(os.path.join(cache, f"{k}.npy"), mmap_mode="r") for k in keys}
        if all(len(a) == num_examples for a in mapped.values()):
            return {k: np.array(a[start:stop]) for k, a in mapped.items()}
    except (OSError, ValueError):
        pass
    source = b.as_data_source(split)  # what tfds.data_source returns, without a registry lookup
    columns: dict[str, list] = {k: [] for k in keys}
    chunk = 4096
    # An empty read still reads one example, for the shapes of its empty arrays.
    lo, hi = (start, stop) if stop > start else (0, min(1, num_examples))
    for first in range(lo, hi, chunk):
        for example in source.__getitems__(range(first, min(first + chunk, hi))):
            for k in keys:
                columns[k].append(example[k])
    arrays = {k: np.stack([np.asarray(v) for v in vals]) for k, vals in columns.items()}
    arrays = {k: a[: stop - start] for k, a in arrays.items()}
    if (start, stop) != (0, num_examples):
        return arrays
    try:
        os.makedirs(cache, exist_ok=True)
        for k, a in arrays.items():
            # Write then rename: a reader never sees a half-written array.
            fd, tmp = tempfile.mkstemp(dir=cache, suffix=".npy.tmp")
            with os.fdopen(fd, "wb") as f:
                np.save(f, a)
            os.replace(tmp, os.path.join(cache, f"{k}.npy"))
    except OSError:
        pass
    return arrays


def split_size(
    name: str, split: str, *, data_dir: str | None = None, mnist_dir: str | None = None
) -> int:
    """The number of examples of ``split`` of dataset ``name`` (prepared on first use)."""
    _spec(name)
    return prepare(name, data_dir=data_dir, mnist_dir=mnist_dir).info.splits[split].num_examples


def load(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    mnist_dir: str | None = None,
    rows: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """Dataset ``name`` (a key of :data:`DATASETS`), split ``"train"`` or ``"test"``, in memory.

    ``rows=(start, stop)`` loads only those examples (e.g. one process's shard,
    :func:`shard_bounds`); ``N`` below is then ``stop - start``.

    Prepares the tfds dataset on first use (into ``data_dir``, default
    :func:`default_data_dir`); MNIST's idx files come from ``mnist_dir``, ``$JAXRNN_MNIST_DIR``,
    tfds' manual_dir or a download, in that order.

    Returns a dict of NumPy arrays:

    * ``inputs`` float32 ``[N, T, F]``: ``mnist_rows`` ``[N, 28, 28]`` (pixel / 255, one row
      per step); ``mnist_pixels`` ``[N, 784, 1]`` (row-major pixels); ``mnist_permuted``
      ``[N, 784, 1]`` (pixels in the order :func:`mnist_permutation`); generated tasks as in
      :mod:`jaxrnn.data.sequences` (their steps past ``lengths`` are padding).
    * ``lengths`` int32 ``[N]``: the true length of each sequence (``T`` for MNIST).
    * ``labels`` int32 ``[N]`` for classification, or ``targets`` float32 ``[N]`` for
      regression (``DATASETS[name].task``).
    """
    spec = _spec(name)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    raw = _read_split(prepare(name, data_dir=data_dir, mnist_dir=mnist_dir), split, rows)
    if spec.view == "sequence":
        out = {"inputs": raw["inputs"], "lengths": raw["length"].astype(np.int32)}
        if "label" in raw:
            out["labels"] = raw["label"].astype(np.int32)
        else:
            out["targets"] = raw["target"].astype(np.float32)
        return out
    # A division, not a multiply by float32(1 / 255), which is 1 ulp off for half the values.
    images = raw["image"].astype(np.float32) / np.float32(255)
    n = len(images)
    if spec.view == "rows":
        inputs = images
    elif spec.view == "pixels":
        inputs = images.reshape(n, 784, 1)
    else:
        inputs = np.ascontiguousarray(images.reshape(n, 784, 1)[:, mnist_permutation()])
    t = inputs.shape[1]
    return {
        "inputs": inputs,
        "lengths": np.full((n,), t, np.int32),
        "labels": raw["label"].astype(np.int32),
    }


def shard_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """``(start, stop)`` of process ``process_index``'s block of ``num_examples`` examples.

    Blocks are contiguous, disjoint, cover everything, and differ in size by at most one.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index {process_index} must lie in [0, process_count={process_count})"
        )
    base, extra = divmod(num_examples, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)


def _num_examples(arrays: Mapping[str, np.ndarray]) -> int:
    if not arrays:
        raise ValueError("arrays is empty")
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"arrays disagree in their leading dimension: {sizes}")
    return next(iter(sizes.values()))


class BatchIterator(Iterator[dict]):
    """Training batches from in-memory arrays: shuffled per epoch, sharded per process.

    ``next(it)`` returns ``{key: array[batch_size, ...]}`` for every key of ``arrays`` (the
    batch of this process). Epoch ``e`` visits this process's block in the order
    ``default_rng([seed, process_index, e]).permutation`` (or in order if not ``shuffle``).
    The last partial batch of an epoch is dropped if ``drop_remainder`` (static shapes),
    else yielded short. Infinite unless ``num_epochs`` is given; :attr:`steps_per_epoch`
    converts epochs to steps.

    ``get_state()`` is a small JSON-serialisable dict; ``set_state`` restores it exactly (the
    following batches are identical), and refuses a state from a different setup.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        num_epochs: int | None = None,
    ):
        self._arrays = dict(arrays)
        self._num_examples = _num_examples(self._arrays)
        self._start, stop = shard_bounds(self._num_examples, process_index, process_count)
        self._shard_size = stop - self._start
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if batch_size > self._shard_size:
            raise ValueError(
                f"batch_size {batch_size} is larger than the {self._shard_size} examples of "
                f"process {process_index}'s shard ({self._num_examples} examples over "
                f"{process_count} processes)"
            )
        self.batch_size = batch_size
        self.seed, self.shuffle, self.drop_remainder = seed, shuffle, drop_remainder
        self.process_index, self.process_count = process_index, process_count
        self.num_epochs = num_epochs
        full, rest = divmod(self._shard_size, batch_size)
        self.steps_per_epoch = full + (rest > 0 and not drop_remainder)
        self._order: np.ndarray | None = None
        self._epoch, self._step = 0, 0

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        return self._epoch

    def _epoch_order(self) -> np.ndarray:
        if not self.shuffle:
            return self._start + np.arange(self._shard_size)
        rng = np.random.default_rng([self.seed, self.process_index, self._epoch])
        return self._start + rng.permutation(self._shard_size)

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_epochs is not None and self._epoch >= self.num_epochs:
            raise StopIteration
        if self._order is None:
            self._order = self._epoch_order()
        b = self.batch_size
        idx = self._order[self._step * b : (self._step + 1) * b]
        batch = {k: v[idx] for k, v in self._arrays.items()}
        self._step += 1
        if self._step == self.steps_per_epoch:
            self._epoch, self._step, self._order = self._epoch + 1, 0, None
        return batch

    def _setup(self) -> dict:
        return {
            "num_examples": self._num_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
            "process_index": self.process_index,
            "process_count": self.process_count,
        }

    def get_state(self) -> dict:
        """``{"epoch", "step", ...setup}``: ints and bools only (JSON-serialisable)."""
        return {"epoch": self._epoch, "step": self._step, **self._setup()}

    def set_state(self, state: Mapping) -> None:
        """Continues from ``state`` (from :meth:`get_state` of an iterator set up alike)."""
        mismatched = {k: (state.get(k), v) for k, v in self._setup().items() if state.get(k) != v}
        if mismatched:
            detail = ", ".join(f"{k}: state {s!r} vs {v!r}" for k, (s, v) in mismatched.items())
            raise ValueError(f"iterator state is from a different setup ({detail})")
        epoch, step = int(state["epoch"]), int(state["step"])
        if epoch < 0 or not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"invalid iterator position epoch={epoch}, step={step}")
        self._epoch, self._step, self._order = epoch, step, None


def eval_batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over this process's block, in batches of exactly ``batch_size``.

    Each batch holds every key of ``arrays`` with leading dim ``batch_size`` plus ``weights``
    float32 ``[batch_size]``: 1 for real examples, 0 for padding. The last batch is padded by
    repeating the block's first example (so padded rows are valid inputs, e.g. lengths >= 1)
    with weight 0. Every process yields the same number of batches,
    ``ceil(ceil(N / process_count) / batch_size)``, so collective evaluation steps line up;
    a process with a smaller block pads more. Weighted sums over all batches of all
    processes count each example exactly once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = _num_examples(arrays)
    start, stop = shard_bounds(n, process_index, process_count)
    largest = -(-n // process_count)
    num_batches = -(-largest // batch_size)
    offsets = np.arange(batch_size)
    filler = start if stop > start else 0
    for i in range(num_batches):
        idx = start + i * batch_size + offsets
        real = idx < stop
        idx = np.where(real, idx, filler)
        batch = {k: v[idx] for k, v in arrays.items()}
        batch["weights"] = real.astype(np.float32)
        yield batch
