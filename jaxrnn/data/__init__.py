"""Datasets for jaxrnn: tfds builders that need no TensorFlow, and in-memory batch iterators.

``load(name, split)`` prepares (first use) and loads a dataset of :data:`DATASETS` as NumPy
arrays; :class:`BatchIterator` and :func:`eval_batches` turn them into batches. The builders
are registered in tfds as ``jaxrnn_mnist`` and ``jaxrnn_sequences/<config>``.

The text datasets (:data:`TEXT_DATASETS`, :mod:`jaxrnn.data.text`) ship with jaxrnn:
``load_text(name)`` gives their train and held-out parts, :class:`Vocabulary` their ids, and
``text.streams`` the parallel streams a stateful language model trains on.

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
    from jaxrnn.data.text import TEXT_DATASETS, Vocabulary, load_text

__all__ = [
    "DATASETS",
    "MNIST_FILES",
    "SEQUENCE_CONFIGS",
    "TEXT_DATASETS",
    "BatchIterator",
    "DatasetSpec",
    "IdxError",
    "IdxSpec",
    "JaxrnnMnist",
    "JaxrnnSequences",
    "SequenceConfig",
    "Vocabulary",
    "default_data_dir",
    "eval_batches",
    "generate",
    "load",
    "load_text",
    "mnist_permutation",
    "prepare",
    "read_idx",
    "shard_bounds",
]
