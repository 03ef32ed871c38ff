"""Datasets for jaxrnn: tfds builders that need no TensorFlow, and in-memory batch iterators.

``load(name, split)`` prepares (first use) and loads a dataset of :data:`DATASETS` as NumPy
arrays; :class:`BatchIterator` and :func:`eval_batches` turn them into batches. The builders
are registered in tfds as ``jaxrnn_mnist`` and ``jaxrnn_sequences/<config>``.

Needs the ``data`` extra: ``pip install "jaxrnn[data]"``.
"""

from jaxrnn import _extras

with _extras.requires("data", __name__):
    from jaxrnn.data.idx import IdxError, IdxSpec, read_idx
    from jaxrnn.data.mnist import MNIST_FILES, JaxrnnMnist
    from jaxrnn.data.pipeline import (
        DATASETS,
        BatchIterator,
        DatasetSpec,
        default_data_dir,
        eval_batches,
        load,
        mnist_permutation,
        prepare,
        shard_bounds,
    )
    from jaxrnn.data.sequences import SEQUENCE_CONFIGS, JaxrnnSequences, SequenceConfig, generate

__all__ = [
    "DATASETS",
    "MNIST_FILES",
    "SEQUENCE_CONFIGS",
    "BatchIterator",
    "DatasetSpec",
    "IdxError",
    "IdxSpec",
    "JaxrnnMnist",
    "JaxrnnSequences",
    "SequenceConfig",
    "default_data_dir",
    "eval_batches",
    "generate",
    "load",
    "mnist_permutation",
    "prepare",
    "read_idx",
    "shard_bounds",
]
