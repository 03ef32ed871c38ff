"""``jaxrnn_mnist``: MNIST as a tfds builder whose features NumPy encodes (no TensorFlow).

tfds' own ``mnist`` stores PNG images, which it encodes through TensorFlow while preparing;
this builder stores each image as a raw ``uint8 [28, 28]`` tensor and its label as a
``ClassLabel(10)``, in array_record files read back with ``tfds.data_source``.

Where the idx files come from, first match wins:

1. ``mnist_dir`` given to the builder (the training CLI's ``--mnist_dir``);
2. the ``JAXRNN_MNIST_DIR`` environment variable;
3. tfds' ``manual_dir`` (``DownloadConfig(manual_dir=...)``, default
   ``<data_dir>/downloads/manual``) if it holds the files;
4. otherwise the four files are downloaded by tfds' download manager from the mirror tfds'
   ``mnist`` uses, checked against the checksums tfds registers for those URLs.

Local files may be gzipped (any encoder) or raw; whatever the source, each file is verified
(idx magic number, counts 60000/10000, 28x28 images, labels 0..9, SHA-256 of the decompressed
bytes) before a single example is written, and errors name the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from jaxrnn.data._builder import NumpyBuilder
from jaxrnn.data.idx import IdxSpec, find_idx, read_idx

MNIST_DIR_ENV = "JAXRNN_MNIST_DIR"
# The CVDF mirror of yann.lecun.com that tfds' `mnist` builder downloads from; tfds registers
# the size and SHA-256 of these four URLs (tensorflow_datasets/url_checksums/mnist.txt), and
# its download manager checks every download against them.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"

# SHA-256 of the *decompressed* idx files (identical for every gzip encoding of them).
MNIST_FILES: Mapping[str, IdxSpec] = {
    "train_images": IdxSpec(
        "train-images-idx3-ubyte",
        2051,
        (60000, 28, 28),
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": IdxSpec(
        "train-labels-idx1-ubyte",
        2049,
        (60000,),
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        max_value=9,
    ),
    "test_images": IdxSpec(
        "t10k-images-idx3-ubyte",
        2051,
        (10000, 28, 28),
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": IdxSpec(
        "t10k-labels-idx1-ubyte",
        2049,
        (10000,),
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        max_value=9,
    ),
}


def mnist_urls() -> dict[str, str]:
    """``{file key: URL}`` of the four gzipped idx files on tfds' MNIST mirror."""
    return {key: f"{MNIST_URL}{spec.stem}.gz" for key, spec in MNIST_FILES.items()}


def read_mnist(
    paths: Mapping[str, str | os.PathLike], specs: Mapping[str, IdxSpec] = MNIST_FILES
) -> dict[str, np.ndarray]:
    """Reads and verifies the four files: ``{key: array}`` for the keys of ``specs``.

    ``train_images`` uint8 ``[60000, 28, 28]``, ``train_labels`` uint8 ``[60000]`` (and the
    ``test_`` pair with 10000). Images and labels of a split must agree in count.
    """
    arrays = {key: read_idx(paths[key], spec) for key, spec in specs.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise ValueError(
                f"{paths[f'{split}_images']} has {len(images)} images but "
                f"{paths[f'{split}_labels']} has {len(labels)} labels"
            )
    return arrays


def _has_all_files(directory: os.PathLike | str, specs: Mapping[str, IdxSpec]) -> bool:
    try:
        for spec in specs.values():
            find_idx(directory, spec.stem)
    except FileNotFoundError:
        return False
    return True


class JaxrnnMnist(NumpyBuilder):
    """MNIST with raw uint8 images: ``image`` uint8 ``[28, 28]``, ``label`` int64 in 0..9.

    Registered in tfds as ``jaxrnn_mnist``. Examples are written in the files' order (no tfds
    shuffling), so example ``i`` of a split is image ``i`` of its idx file.

    Args (beyond tfds' ``data_dir``, ``config``, ``version``):
      mnist_dir: directory holding the four idx files (gzipped or raw); see the module doc
        for the order in which sources are tried.
      file_specs: replaces :data:`MNIST_FILES` (counts, digests). For tests that build tiny
        idx files; production code never passes it.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raw uint8 images, NumPy-only encoding, array_record."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Optional: place train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each gzipped or raw) in "
        "manual_dir; without them the files are downloaded."
    )

    def __init__(
        self,
        *,
        mnist_dir: str | os.PathLike | None = None,
        file_specs: Mapping[str, IdxSpec] | None = None,
        **kwargs,
    ):
        self._mnist_dir = mnist_dir
        self._file_specs = dict(file_specs or MNIST_FILES)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.make_info(
            description="MNIST digits as raw uint8 28x28 arrays (row-major), labels 0..9.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(28, 28), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def source_paths(self, dl_manager) -> dict[str, str]:
        """``{file key: local path}``: from a local directory if one is configured, else
        downloaded (see the module doc for the order)."""
        directory = self._mnist_dir or os.environ.get(MNIST_DIR_ENV) or None
        if directory is not None:
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"MNIST directory not found: {directory}")
            return {k: find_idx(directory, s.stem) for k, s in self._file_specs.items()}
        # `dl_manager.manual_dir` raises when it is absent or empty: look before using it.
        manual = getattr(dl_manager, "_manual_dir", None)
        if (
            manual is not None
            and os.path.isdir(manual)
            and _has_all_files(manual, self._file_specs)
        ):
            return {k: find_idx(manual, s.stem) for k, s in self._file_specs.items()}
        # Keep the .gz (download, not download_and_extract): read_idx decompresses and checks.
        return {k: os.fspath(p) for k, p in dl_manager.download(mnist_urls()).items()}

    def _split_generators(self, dl_manager):
        # Verify all four files before writing anything: a bad test file must not cost the
        # time of writing the training split first.
        arrays = read_mnist(self.source_paths(dl_manager), self._file_specs)
        return {
            split: self._generate_examples(arrays[f"{split}_images"], arrays[f"{split}_labels"])
            for split in ("train", "test")
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i in range(len(images)):
            yield i, {"image": images[i], "label": int(labels[i])}
