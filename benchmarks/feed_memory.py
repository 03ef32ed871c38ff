"""Host memory of the training feed's blocks: recycled or fresh, 64-byte aligned or not.

    python benchmarks/feed_memory.py [--out benchmarks/results/feed_memory.json]

Times one block of ``K`` MNIST-shaped batches (``inputs`` float32 ``[K, 128, 784, 1]``,
``labels`` int32 ``[K, 128]``) from ``TrainFeed.next_block`` until a jitted function that
reads every byte of it (as a train block does) has finished, in four variants taking turns
repeat by repeat (see ``_common``):

* ``recycled_aligned``: what training does: the block's host memory, 64-byte aligned (used in
  place by JAX's CPU client), is handed back with ``TrainFeed.recycle`` and reused;
* ``recycled_misaligned``: the same memory placed 16 bytes past a 64-byte boundary, where
  ``malloc`` puts a large array: JAX copies it;
* ``fresh_aligned`` and ``fresh_misaligned``: new memory for every block (never recycled).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

from jaxrnn import parallel  # noqa: E402
from jaxrnn.training import feed as feed_lib  # noqa: E402

BATCH, TIME, EXAMPLES = 128, 784, 6000
ALIGNED = feed_lib._aligned_empty


def misaligned_empty(shape, dtype) -> np.ndarray:
    """Uninitialized memory 16 bytes past a 64-byte boundary (as ``malloc`` places it)."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + 128, np.uint8)
    offset = -raw.ctypes.data % 64 + 16
    return raw[offset : offset + size].view(dtype).reshape(shape)


def variant(arrays: dict, block: int, mesh, *, recycle: bool, aligned: bool):
    """A function timing one block of this variant, in seconds."""
    feed = feed_lib.TrainFeed(arrays, num_examples=EXAMPLES, batch_size=BATCH, shards=1, seed=0)
    consume = jax.jit(lambda b: b["inputs"].sum())

    def one_block() -> float:
        feed_lib._aligned_empty = ALIGNED if aligned else misaligned_empty
        start = time.perf_counter()
        data = feed.next_block(block, mesh)
        jax.block_until_ready(consume(data))
        seconds = time.perf_counter() - start
        if recycle:
            feed.recycle(data)
        return seconds

    return one_block


def _summary(seconds: list[float]) -> dict:
    q1, q3 = np.percentile(seconds, [25, 75]) * 1e3
    return {**_common.summarize(seconds), "quartiles_ms": [float(q1), float(q3)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=200, help="batches per block")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=None, help="JSON results (default: print only)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    arrays = {
        "inputs": rng.random((EXAMPLES, TIME, 1), dtype=np.float32),
        "labels": rng.integers(0, 10, EXAMPLES).astype(np.int32),
    }
    mesh = parallel.make_mesh()
    runs = {
        f"{'recycled' if r else 'fresh'}_{'aligned' if a else 'misaligned'}": variant(
            arrays, args.block, mesh, recycle=r, aligned=a
        )
        for r in (True, False)
        for a in (True, False)
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(2 + args.repeats):  # the first two are warm-up
        for name, run in runs.items():
            seconds = run()
            if repeat >= 2:
                times[name].append(seconds)
    mib = args.block * BATCH * TIME * 4 / 2**20
    payload = {
        "benchmark": "feed_memory",
        "env": {**_common.environment(), "load_average": os.getloadavg()[0]},
        "block": [args.block, BATCH, TIME, 1],
        "block_mib": mib,
        "results": {name: _summary(ts) for name, ts in times.items()},
    }
    for name, summary in payload["results"].items():
        q1, q3 = summary["quartiles_ms"]
        print(f"{name:20s} {summary['median_ms']:7.1f} ms (quartiles {q1:.1f}-{q3:.1f})")
    if args.out:
        _common.write_json(args.out, payload)


if __name__ == "__main__":
    main()
