"""Loading jaxrnn's CPU kernels for the SimpleRNN, LSTM and GRU recurrences (the XLA FFI), and
what every cell's binding shares (each cell's ``ffi_call`` sits with the cell, in
``jaxrnn.cells``, and its FFI targets are registered with it: ``jaxrnn.cells.registry``).

XLA:CPU runs a ``lax.scan`` body one operation at a time on one core, and pays a dispatch for
each: at the tutorials' sizes that, not arithmetic, sets the step time. The kernels
(``csrc/``: ``recurrence.h`` and one file per cell) run the whole recurrent loop (forward,
or backward with every weight gradient) in one call on every core, splitting a large batch's
rows among the threads, or else every step's hidden units (a small matmul of their own for
each step's recurrent product, OpenBLAS ``sgemm`` from ``scipy-openblas32`` for the weights'
gradients). It is built with the package (``setup.py``); where it is missing, or
``JAXRNN_NATIVE=0``, or the computation is not float32, or ``rnn`` is given an explicit
``unroll``, jaxrnn runs its XLA loops instead.

:func:`on_cpu` is how the fused path uses a kernel: the kernel where the computation runs on
a CPU (``lax.platform_dependent``), the XLA loop on GPU and TPU, and the XLA loop's
derivative everywhere, so that the kernels need no derivatives of their own and higher-order
gradients keep working. Every kernel takes and returns time-major ``[time, batch, ...]``
per-step arrays (``xp`` may be batch-first), a ``[time, batch]`` bool ``valid`` mask and a
``[time, batch]`` bool ``resets`` mask (empty where nothing resets).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp

ENV_NATIVE = "JAXRNN_NATIVE"  # "0": never use the kernels
ENV_THREADS = "JAXRNN_NATIVE_THREADS"  # threads per kernel call (default: the usable cores)

_log = logging.getLogger(__name__)
_libraries: list[ctypes.CDLL] = []  # kept alive for the life of the process
_max_threads = 1  # what the kernels were told at load time


def _threads() -> int:
    value = os.environ.get(ENV_THREADS)
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"{ENV_THREADS}={value!r} is not an integer") from None
        if threads < 1:
            raise ValueError(f"{ENV_THREADS} must be at least 1, got {threads}")
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _blas_requirement() -> str:
    """The ``scipy-openblas32`` requirement that jaxrnn was installed with (pinned exactly)."""
    try:
        for requirement in importlib.metadata.requires("jaxrnn") or ():
            if requirement.startswith("scipy-openblas32"):
                return requirement.partition(";")[0].strip()
    except importlib.metadata.PackageNotFoundError:
        pass
    return "scipy-openblas32"


def _targets() -> dict[str, str]:
    """The FFI targets of every registered cell's kernels and of the linear scan's
    (``{target: symbol}``). Asked at load time: the cells' modules import this one, so it
    cannot import them first."""
    from jaxrnn.cells import _linear_kernel, registry

    return {**registry.kernel_targets(), **_linear_kernel.FFI_TARGETS}


@functools.cache
def kernel_status() -> tuple[bool, str]:
    """``(True, "loaded")`` once the kernels are loaded and registered with XLA (on the first
    call), else ``(False, why not)``: turned off, not built, their BLAS missing, a failed load."""
    if os.environ.get(ENV_NATIVE, "1") == "0":
        return False, f"turned off by {ENV_NATIVE}=0"
    spec = importlib.util.find_spec("jaxrnn._recurrence")
    if spec is None or spec.origin is None:
        return False, (
            "not built: jaxrnn was installed without its compiled kernels (the C++ build "
            "failed or was skipped; `pip install -v` shows the compiler's error)"
        )
    try:
        import scipy_openblas32
    except ImportError:
        return False, f"their BLAS is not installed: pip install {_blas_requirement()!r}"
    # The kernels split the work themselves: their OpenBLAS (a private copy, not NumPy's or
    # SciPy's) starts no threads of its own (idle, they poll, on the cores the kernels need).
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        name = scipy_openblas32.get_library(fullname=True)
        blas = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), name))
        lib = ctypes.CDLL(spec.origin)
        sgemm = blas.scipy_cblas_sgemm
        blas.scipy_openblas_set_num_threads(1)
        handlers = {target: getattr(lib, symbol) for target, symbol in _targets().items()}
    except (OSError, AttributeError) as err:  # a build for another jaxlib, machine or BLAS
        return False, f"did not load: {err}"
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    lib.jaxrnn_set_sgemm(ctypes.cast(sgemm, ctypes.c_void_p))
    global _max_threads
    _max_threads = _threads()
    lib.jaxrnn_set_max_threads(_max_threads)
    for target, handler in handlers.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(handler), platform="cpu")
    _libraries.extend([blas, lib])
    return True, "loaded"


@functools.cache
def _report(reason: str) -> None:
    """Logs once why the kernels are missing: a warning where they would have run (a CPU
    computation, not turned off), else at info level."""
    level = logging.INFO
    if not reason.startswith("turned off") and jax.default_backend() == "cpu":
        level = logging.WARNING
    _log.log(level, "jaxrnn's CPU kernels are not available (%s); the XLA loops run", reason)


def _load() -> bool:
    """Load the kernels and register them with XLA once; False where they cannot be used."""
    loaded, reason = kernel_status()
    if not loaded:
        _report(reason)
    return loaded


def available(*arrays: jax.Array) -> bool:
    """Whether the kernels are built and every one of ``arrays`` is float32."""
    return all(a.dtype == jnp.float32 for a in arrays) and _load()


def enabled() -> bool:
    """Whether the kernels are loaded and not turned off (``JAXRNN_NATIVE=0``)."""
    return _load()


def max_threads() -> int:
    """The threads the kernels split a loop over (set when they load; 1 before)."""
    return _max_threads


def unavailable_reason() -> str | None:
    """Why the kernels cannot run in this process (:func:`kernel_status`), or ``None``."""
    loaded, why = kernel_status()
    return None if loaded else f"jaxrnn's CPU kernels are {why}"


def mask(valid: jax.Array | None, steps: int, batch: int) -> jax.Array:
    """The kernels' ``[time, batch]`` bool mask (all steps valid where ``valid`` is None)."""
    return jnp.ones((steps, batch), jnp.bool_) if valid is None else valid


def reset_mask(resets: jax.Array | None) -> jax.Array:
    """The kernels' ``resets`` input: the ``[time, batch]`` bool mask, or an empty one where
    there are none (the kernels then skip every reset check)."""
    return jnp.zeros((0,), jnp.bool_) if resets is None else resets


def on_cpu(native: Callable, xla: Callable, *args):
    """``native(*args)`` where the computation runs on a CPU and ``xla(*args)`` elsewhere, both
    differentiated as ``xla`` (the two compute the same function)."""

    def either(*args):
        return jax.lax.platform_dependent(*args, cpu=native, default=xla)

    def fwd(*args):
        return either(*args), args

    def bwd(args, cotangents):
        return jax.vjp(xla, *args)[1](cotangents)

    call = jax.custom_vjp(either)
    call.defvjp(fwd, bwd)
    return call(*args)


def outputs(*shapes) -> list[jax.ShapeDtypeStruct]:
    """float32 result shapes for ``jax.ffi.ffi_call``."""
    return [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]


def chunk_starts(batch: int, hidden: int, gates: int) -> list[int]:
    """The first unit of each chunk the kernels split ``hidden`` units into, then ``hidden``
    (``SplitUnits`` in ``csrc/recurrence.h``: one chunk per thread, multiples of 16)."""
    n = min(_max_threads, hidden // 16)
    if batch * hidden * hidden * gates < 1 << 17:
        n = 1
    n = max(n, 1)
    chunk = -(-hidden // n)
    if n > 1:
        chunk = -(-chunk // 16) * 16
    return [*range(0, hidden, chunk), hidden]


def pack_kept(arrays, gates: int):
    """What a forward kernel keeps for the backward pass, in its layout (``KeptRow`` in
    ``csrc/recurrence.h``), from ``K`` arrays ``[T, B, H]`` (the LSTM's previous cell state and
    gates ``i, f, g, o``; the GRU's ``r, z, n, hh_n``): per chunk of units of a cell with
    ``gates`` gate blocks, ``[T, B, K, n]``, chunks one after another, flat."""
    steps, batch, hidden = arrays[0].shape
    stacked = jnp.stack(arrays, axis=2)
    starts = chunk_starts(batch, hidden, gates)
    return jnp.concatenate(
        [stacked[..., a:b].reshape(-1) for a, b in zip(starts, starts[1:], strict=False)]
    )


def unpack_kept(kept, count: int, gates: int, steps: int, batch: int, hidden: int):
    """The ``count`` arrays ``[T, B, H]`` of :func:`pack_kept`'s layout."""
    starts = chunk_starts(batch, hidden, gates)
    size = steps * batch * count
    parts = [
        kept[size * a : size * b].reshape(steps, batch, count, b - a)
        for a, b in zip(starts, starts[1:], strict=False)
    ]
    stacked = jnp.concatenate(parts, axis=-1)
    return tuple(stacked[:, :, k] for k in range(count))
