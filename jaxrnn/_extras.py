"""The optional parts of jaxrnn and the ``pip`` extras that install what they import.

``pip install jaxrnn`` is the core: cells, drivers, masking, layers and interop, on jax and
NumPy alone. ``jaxrnn.nn`` needs the ``nn`` extra (Flax), ``jaxrnn.data`` the ``data`` extra
(tensorflow-datasets), ``jaxrnn.training`` and the ``jaxrnn train|eval|plot`` commands the
``train`` extra. Such a module runs its imports inside :func:`requires`, so that using it
without its extra raises a :class:`MissingExtraError` that says what to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator

# extra -> the modules of its packages that jaxrnn imports
EXTRAS: dict[str, tuple[str, ...]] = {
    "nn": ("flax",),
    "data": ("tensorflow_datasets", "etils.epath"),
    "train": (
        "tensorflow_datasets",
        "etils.epath",
        "optax",
        "orbax.checkpoint",
        "tqdm",
        "tensorboardX",
        "matplotlib",
    ),
}


class MissingExtraError(ImportError):
    """A part of jaxrnn was used without the extra that installs its dependencies."""


def install_command(extra: str) -> str:
    """The command that installs ``extra``, e.g. ``pip install "jaxrnn[nn]"``."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    return f'pip install "jaxrnn[{extra}]"'


def _found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False
    except ValueError:  # imported already, without a spec
        return True


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` (:data:`EXTRAS`) that cannot be found; none are imported."""
    install_command(extra)  # checks the name
    return [module for module in EXTRAS[extra] if not _found(module)]


def _covers(module: str, name: str) -> bool:
    """Whether a failed import of ``name`` is one of ``module``, its parents or submodules."""
    return name == module or name.startswith(module + ".") or module.startswith(name + ".")


@contextlib.contextmanager
def requires(extra: str, user: str) -> Iterator[None]:
    """Runs the imports of module ``user``, which needs ``extra``.

    Raises a :class:`MissingExtraError` naming ``user``, the missing modules and
    :func:`install_command` where a module of the extra cannot be found (before the imports
    run), or where one of the imports fails on such a module; any other error passes through.
    """
    command = install_command(extra)
    absent = missing(extra)
    if absent:
        raise MissingExtraError(
            f"{user} needs {', '.join(absent)}, not installed; install with: {command}",
            name=absent[0],
        )
    try:
        yield
    except ImportError as error:
        name = error.name or ""
        if isinstance(error, MissingExtraError) or not any(
            _covers(module, name) for module in EXTRAS[extra]
        ):
            raise
        raise MissingExtraError(
            f"{user} needs {name}, which did not import ({error}); install with: {command}",
            name=name,
        ) from error
