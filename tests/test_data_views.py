"""The three MNIST views of ``jaxrnn.data.load`` against values computed here from the idx
files: pixel / 255, row-major pixel order, and the one fixed permutation (by its hash)."""

import hashlib

import numpy as np
import pytest
from test_data_builders import COUNTS, tiny_mnist

from jaxrnn import data
from jaxrnn.data import pipeline
from jaxrnn.data.mnist import MNIST_DIR_ENV, JaxrnnMnist

# SHA-256 of mnist_permutation() as little-endian int64: a changed seed or a changed NumPy
# shuffling algorithm would silently make mnist_permuted another task.
PERMUTATION_SHA256 = "3aa79b80c498bc4ee33c62762c6895443a58f28229ef2110a17c016a0653f9d5"
PERMUTATION_HEAD = [318, 2, 606, 446, 758, 13, 98, 539]


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """Tiny idx files (12 train, 5 test images) behind the real loading path."""
    monkeypatch.delenv(MNIST_DIR_ENV, raising=False)
    specs, arrays = tiny_mnist(tmp_path / "idx")
    real = pipeline.builder

    def builder(name, *, data_dir=None, mnist_dir=None):
        if name.startswith("mnist"):
            return JaxrnnMnist(data_dir=data_dir, mnist_dir=mnist_dir, file_specs=specs)
        return real(name, data_dir=data_dir, mnist_dir=mnist_dir)

    monkeypatch.setattr(pipeline, "builder", builder)
    where = {"data_dir": str(tmp_path / "data"), "mnist_dir": str(tmp_path / "idx")}
    return arrays, where


def test_the_permutation_is_fixed():
    perm = pipeline.mnist_permutation()
    assert hashlib.sha256(perm.astype("<i8").tobytes()).hexdigest() == PERMUTATION_SHA256
    assert perm[:8].tolist() == PERMUTATION_HEAD
    np.testing.assert_array_equal(np.sort(perm), np.arange(784))


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_views_hold_the_known_values(tiny, split):
    arrays, where = tiny
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    n = COUNTS[split]
    assert len(np.unique(images)) == 256  # every pixel value occurs
    scaled = images.astype(np.float32) / np.float32(255)

    rows = data.load("mnist_rows", split, **where)
    assert rows["inputs"].shape == (n, 28, 28) and rows["inputs"].dtype == np.float32
    np.testing.assert_array_equal(rows["inputs"], scaled)  # exactly pixel / 255

    pixels = data.load("mnist_pixels", split, **where)
    row_major = np.stack([scaled[:, r, c] for r in range(28) for c in range(28)], axis=1)
    np.testing.assert_array_equal(pixels["inputs"], row_major[..., None])

    permuted = data.load("mnist_permuted", split, **where)
    perm = pipeline.mnist_permutation()
    np.testing.assert_array_equal(permuted["inputs"][:, :, 0], row_major[:, perm])

    for view, steps in ((rows, 28), (pixels, 784), (permuted, 784)):
        np.testing.assert_array_equal(view["labels"], labels.astype(np.int32))
        np.testing.assert_array_equal(view["lengths"], np.full(n, steps, np.int32))
