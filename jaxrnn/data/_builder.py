"""The base of jaxrnn's tfds builders (not registered: it is abstract)."""

from __future__ import annotations

import sys

import tensorflow_datasets as tfds
from etils import epath


class NumpyBuilder(tfds.core.GeneratorBasedBuilder):
    """A ``GeneratorBasedBuilder`` whose examples keep their generation order: subclasses
    build their ``DatasetInfo`` with :meth:`make_info`.

    ``code_path`` is the module's file: tfds' default looks it up through
    ``importlib_resources``, a backport it only declares for Python < 3.9 and imports anyway
    for packages installed from a directory (tfds 4.9.10).
    """

    def make_info(self, **kwargs) -> tfds.core.DatasetInfo:
        """``DatasetInfo`` with ``disable_shuffling``: example i of a split is the i-th one
        generated (tfds otherwise reorders examples by a hash of their keys)."""
        return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(sys.modules[cls.__module__].__file__)
