"""A small stand-in for ``jaxrnn.data`` (used only while the real package is absent).

``install()`` puts it into ``sys.modules["jaxrnn.data"]`` if ``import jaxrnn.data`` fails.
"""

from __future__ import annotations

import sys
import types

import numpy as np


def _linear_vs_random(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    inputs = np.full((n, 20, 1), -1.0, np.float32)
    lengths = rng.integers(5, 21, n).astype(np.int32)
    labels = rng.integers(0, 2, n).astype(np.int32)
    for i in range(n):
        t = lengths[i]
        if labels[i] == 0:
            start = rng.integers(0, 10000 - t)
            inputs[i, :t, 0] = np.arange(start, start + t) / 10000
        else:
            inputs[i, :t, 0] = rng.integers(0, 10000, t) / 10000
    return {"inputs": inputs, "lengths": lengths, "labels": labels}


def _adding(n: int, steps: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    values = rng.random((n, steps)).astype(np.float32)
    marks = np.zeros((n, steps), np.float32)
    for i in range(n):
        a, b = rng.choice(steps, 2, replace=False)
        marks[i, [a, b]] = 1
    return {
        "inputs": np.stack([values, marks], -1),
        "lengths": np.full(n, steps, np.int32),
        "targets": (values * marks).sum(1).astype(np.float32),
    }


def load(name, split, *, data_dir=None, mnist_dir=None):
    n = 2000 if split == "train" else 500
    seed = 0 if split == "train" else 1
    if name == "linear_vs_random":
        return _linear_vs_random(n, seed)
    if name.startswith("adding_"):
        return _adding(n, int(name.split("_")[1]), seed)
    if name.startswith("mnist"):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 10, n).astype(np.int32)
        inputs = rng.random((n, 28, 28)).astype(np.float32) * 0.1
        inputs[np.arange(n), labels, :] += 1.0  # learnable: the label's row is bright
        return {"inputs": inputs, "lengths": np.full(n, 28, np.int32), "labels": labels}
    raise ValueError(name)


class BatchIterator:
    def __init__(
        self,
        arrays,
        batch_size,
        *,
        seed=0,
        shuffle=True,
        drop_remainder=True,
        process_index=0,
        process_count=1,
    ):
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.n = len(next(iter(arrays.values())))
        self.epoch, self.position = 0, 0

    def _order(self):
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def __iter__(self):
        return self

    def __next__(self):
        if self.position + self.batch_size > self.n:
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._order()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return {k: v[idx] for k, v in self.arrays.items()}

    def get_state(self):
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


def eval_batches(arrays, batch_size, *, process_index=0, process_count=1):
    n = len(next(iter(arrays.values())))
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        batch = {
            k: np.concatenate([v[start:stop], np.zeros((pad,) + v.shape[1:], v.dtype)])
            for k, v in arrays.items()
        }
        batch["weights"] = np.concatenate([np.ones(stop - start), np.zeros(pad)]).astype(np.float32)
        yield batch


def install() -> None:
    try:
        import jaxrnn.data  # noqa: F401
    except ImportError:
        module = types.ModuleType("jaxrnn.data")
        module.load, module.BatchIterator, module.eval_batches = load, BatchIterator, eval_batches
        module.DATASETS = ()
        sys.modules["jaxrnn.data"] = module
