"""Training input: each process reads its shard of the examples and feeds its part of each batch.

The ``N`` training examples are cut into ``S`` data shards, contiguous blocks
``jaxrnn.data.shard_bounds(N, s, S)`` (``S`` is ``Config.data_shards``, 0 meaning one shard
per process). Shard ``s`` is an endless stream of batches of ``B / S`` examples, shuffled per
epoch exactly as ``BatchIterator(..., seed=seed, process_index=s, process_count=S)``; the
global batch of step ``t`` is the concatenation, in shard order, of every shard's ``t``-th
batch. So the batch sequence depends on ``(seed, S)`` only, never on the devices, and with one
shard it is ``BatchIterator(range(N), B, seed=seed)``'s.

Process ``p`` of ``P`` owns shards ``[p * S / P, (p + 1) * S / P)``: it loads only their
examples (:func:`process_rows`), gathers its rows of ``K`` steps on the host (``[K, B / P,
...]``) and :func:`jaxrnn.parallel.global_batch` assembles the global ``[K, B, ...]`` arrays,
process ``p``'s rows at ``[p * B / P, (p + 1) * B / P)`` as the mesh expects.

:meth:`TrainFeed.blocks` gathers the next block in a background thread while the caller runs
the current one. Blocks go into 64-byte-aligned host memory, which JAX's CPU client uses in
place; the caller hands each block back (:meth:`TrainFeed.recycle`) once it has run, and later
blocks of the same shape reuse its memory.

The position in the stream is the number of batches drawn, which the train loop keeps equal
to the step: :meth:`TrainFeed.state` and :meth:`TrainFeed.restore` save and restore it with
the setup it belongs to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import Mesh

from jaxrnn import parallel


def num_shards(data_shards: int, process_count: int) -> int:
    """The number of data shards: ``data_shards``, or the process count if it is 0.

    Raises:
      ValueError: ``data_shards`` is negative or not a multiple of ``process_count``.
    """
    shards = data_shards or process_count
    if data_shards < 0 or shards % process_count:
        raise ValueError(
            f"data_shards={data_shards} must be 0 (one per process) or a multiple of the "
            f"{process_count} processes"
        )
    return shards


def process_rows(
    num_examples: int, shards: int, process_index: int, process_count: int
) -> tuple[int, int]:
    """``(start, stop)``: the examples of the shards that process ``process_index`` owns."""
    from jaxrnn.data.pipeline import shard_bounds

    per = shards // process_count
    first, last = process_index * per, (process_index + 1) * per - 1
    return shard_bounds(num_examples, first, shards)[0], shard_bounds(num_examples, last, shards)[1]


class TrainFeed:
    """Blocks of training batches for this process (see the module docstring).

    Args:
      arrays: this process's examples, rows ``process_rows(num_examples, shards, ...)`` of
        the training split, ``{key: [rows, ...]}``.
      num_examples: ``N``, the examples of the split over all shards.
      batch_size: the global batch ``B``, a multiple of ``shards``.
      shards: ``S``, a multiple of ``process_count``.
      seed: the shuffling seed.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        *,
        num_examples: int,
        batch_size: int,
        shards: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        from jaxrnn.data.pipeline import BatchIterator

        if batch_size % shards:
            raise ValueError(
                f"batch_size {batch_size} must be a multiple of the {shards} data shards"
            )
        self._start, stop = process_rows(num_examples, shards, process_index, process_count)
        self._arrays = dict(arrays)
        for key, value in self._arrays.items():
            if len(value) != stop - self._start:
                raise ValueError(
                    f"{key!r} has {len(value)} rows; process {process_index} owns examples "
                    f"[{self._start}, {stop}) of {num_examples}"
                )
        self.num_examples, self.batch_size, self.shards, self.seed = (
            num_examples,
            batch_size,
            shards,
            seed,
        )
        per = shards // process_count
        index = {"index": np.arange(num_examples, dtype=np.int32)}
        self._streams = [
            BatchIterator(
                index, batch_size // shards, seed=seed, process_index=s, process_count=shards
            )
            for s in range(process_index * per, (process_index + 1) * per)
        ]
        # Host blocks handed to JAX (by id of the global block) and ones free for reuse.
        self._lock = threading.Lock()
        self._lent: dict[int, dict[str, np.ndarray]] = {}
        self._spare: list[dict[str, np.ndarray]] = []

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """This process's examples, ``{key: [rows, ...]}`` (what a batch holds, per row)."""
        return self._arrays

    def next_local(self, steps: int) -> dict[str, np.ndarray]:
        """This process's rows of the next ``steps`` global batches: ``[steps, B / P, ...]``."""
        rows = np.empty((steps, self.batch_size * len(self._streams) // self.shards), np.int64)
        for i in range(steps):
            rows[i] = np.concatenate([next(s)["index"] for s in self._streams])
        rows -= self._start
        out = self._host_block(rows.shape)
        for key, value in self._arrays.items():
            # mode="clip" (the rows are valid) writes straight into out; "raise" buffers.
            np.take(value, rows, axis=0, out=out[key], mode="clip")
        return out

    def _host_block(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        with self._lock:
            for i, spare in enumerate(self._spare):
                if next(iter(spare.values())).shape[:2] == shape:
                    return self._spare.pop(i)
        return {k: _aligned_empty(shape + v.shape[1:], v.dtype) for k, v in self._arrays.items()}

    def next_block(self, steps: int, mesh: Mesh) -> dict:
        """The next ``steps`` global batches as arrays ``[steps, B, ...]`` sharded over ``data``.

        Hand the block to :meth:`recycle` once the computation that reads it has finished.
        """
        host = self.next_local(steps)
        block = parallel.global_batch(host, mesh, axis=1)
        with self._lock:
            self._lent[id(block)] = host
        return block

    def recycle(self, block: dict) -> None:
        """Reuse the host memory of ``block`` (from :meth:`next_block`) for a later block.

        Call only once every computation reading ``block`` has finished (e.g. its results
        were fetched), and never read ``block`` again: JAX's CPU client may use the host
        memory in place.
        """
        with self._lock:
            host = self._lent.pop(id(block), None)
            if host is not None:
                self._spare.append(host)

    def blocks(self, sizes: Sequence[int], mesh: Mesh) -> Iterator[dict]:
        """``next_block(k)`` for each ``k`` of ``sizes``, in order, each one gathered and sent
        by a background thread while the caller runs the previous one."""
        return prefetch(self.next_block, sizes, mesh)

    def row_specs(self) -> dict[str, jax.ShapeDtypeStruct]:
        """The shape and dtype of one row of a batch, per key."""
        return {k: jax.ShapeDtypeStruct(v.shape[1:], v.dtype) for k, v in self._arrays.items()}

    def _setup(self) -> dict:
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
        }

    def state(self, batches: int) -> dict:
        """The JSON state of the position after ``batches`` global batches."""
        return {"batches": int(batches), "shards": self.shards, **self._setup()}

    def restore(self, state: Mapping) -> tuple[int, int]:
        """Continue after the batches ``state`` counts; returns ``(batches, saved shards)``.

        A state saved with another number of shards is accepted: the batches from here on
        follow this feed's shards (a different order than the saved run would have drawn).
        A state of jaxrnn 0.1's single ``BatchIterator`` is read as one shard.

        Raises:
          ValueError: the state belongs to another dataset size, batch size or seed.
        """
        if "batches" in state:
            saved_shards, batches = int(state["shards"]), int(state["batches"])
        else:  # {"epoch", "step", ...} of BatchIterator(range(N), B, seed=seed)
            saved_shards = int(state.get("process_count", 1))
            steps_per_epoch = self.num_examples // self.batch_size
            batches = int(state["epoch"]) * steps_per_epoch + int(state["step"])
        mismatched = {k: (state.get(k), v) for k, v in self._setup().items() if state.get(k) != v}
        if mismatched or batches < 0:
            detail = ", ".join(f"{k}: state {s!r} vs {v!r}" for k, (s, v) in mismatched.items())
            raise ValueError(f"data state is from a different setup ({detail or state})")
        for stream in self._streams:
            per_epoch = stream.steps_per_epoch
            position = {"epoch": batches // per_epoch, "step": batches % per_epoch}
            stream.set_state({**stream.get_state(), **position})
        return batches, saved_shards


def prefetch(next_block: Callable[[int, Mesh], dict], sizes: Sequence[int], mesh: Mesh):
    """``next_block(k, mesh)`` for each ``k`` of ``sizes``, in order, each one made by a
    background thread while the caller runs the previous one."""
    with ThreadPoolExecutor(1, thread_name_prefix="jaxrnn-feed") as pool:
        ahead = pool.submit(next_block, sizes[0], mesh) if sizes else None
        for i in range(len(sizes)):
            assert ahead is not None
            block = ahead.result()
            if i + 1 < len(sizes):
                ahead = pool.submit(next_block, sizes[i + 1], mesh)
            yield block


def _aligned_empty(shape: tuple[int, ...], dtype, alignment: int = 64) -> np.ndarray:
    """``np.empty`` whose data starts on an ``alignment``-byte boundary.

    JAX's CPU client uses such a host array in place instead of copying it (the block is
    never written again once handed over).
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + alignment, np.uint8)
    offset = -raw.ctypes.data % alignment
    return raw[offset : offset + size].view(dtype).reshape(shape)
