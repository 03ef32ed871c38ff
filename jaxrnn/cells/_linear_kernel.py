"""The binding of jaxrnn's CPU kernels for the linear recurrence ``h[t] = a[t] * h[t-1] +
b[t]`` (elementwise; ``csrc/linear.cc``): the scan, and its derivative, that the
linear-recurrence cells' parallel path runs (:mod:`jaxrnn.cells.linear_scan`); and the
kernels of the cells that have their own (:data:`CELL_KERNELS`; ``csrc/linear_cells.cc``):
the gates, the semantics and the recurrence in one pass, from the projected input or from
the input and the weights.

Both take the time axis first (``[T, ...]``) or second (``[B, T, ...]``, the batch-first
layout, with a state ``[B, ...]``), so that neither layout is transposed. ``jaxrnn._native``
registers :data:`FFI_TARGETS` with XLA when it loads the kernels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _native

FFI_TARGETS = {
    "jaxrnn_linear_scan": "JaxrnnLinearScan",
    "jaxrnn_linear_scan_backward": "JaxrnnLinearScanBackward",
    "jaxrnn_linear_cell_forward": "JaxrnnLinearCellForward",
    "jaxrnn_linear_cell_backward": "JaxrnnLinearCellBackward",
    "jaxrnn_linear_cell_sequence_forward": "JaxrnnLinearCellSequenceForward",
    "jaxrnn_linear_cell_sequence_backward": "JaxrnnLinearCellSequenceBackward",
}
"""``{ffi_target: symbol}`` of the kernels in jaxrnn's compiled library."""


def _check(time_axis: int, h0, *arrays) -> tuple[int, int, int]:
    """``(P, T, N)``: the kernels' view of ``arrays`` (one shape, float32, the time axis
    ``time_axis``) and ``h0`` (that shape without the time axis)."""
    shape = arrays[0].shape
    if time_axis not in (0, 1) or len(shape) <= time_axis:
        raise ValueError(f"time_axis must be 0 or 1 and within the arrays' shape {shape}")
    if (
        any(x.shape != shape for x in arrays)
        or h0.shape != shape[:time_axis] + shape[time_axis + 1 :]
    ):
        raise ValueError(
            f"the arrays must share one shape and h0 be that shape without its time axis "
            f"{time_axis}; got {[x.shape for x in arrays]}, h0 {h0.shape}"
        )
    if not all(x.dtype == jnp.float32 for x in (*arrays, h0)):
        raise TypeError(f"float32 only; got {[x.dtype for x in (*arrays, h0)]}")
    _native.kernel_status()  # loads the kernels and registers the targets (once)
    sequences = math.prod(shape[:time_axis])
    return sequences, shape[time_axis], math.prod(shape[time_axis + 1 :])


def linear_scan_kernel(a, b, h0, *, reverse: bool, time_axis: int = 0) -> jax.Array:
    """The states of ``h[t] = a[t] * h[t-1] + b[t]`` from ``h[-1] = h0``, by the CPU kernel.

    Args:
      a: float32, time on axis ``time_axis`` (``[T, ...]`` or ``[B, T, ...]``).
      b: float32, ``a``'s shape.
      h0: float32, that shape without the time axis: the state before the first step visited.
      reverse: visit the steps from the last to the first: ``h[t] = a[t] * h[t+1] + b[t]``
        from ``h[T] = h0``.
      time_axis: 0 or 1.

    Returns:
      ``h``, float32, ``a``'s shape. Each step is one fused multiply-add where the CPU has
      FMA, as XLA:CPU computes the same step, else the product then the sum; NaN propagates.

    Runs only where the computation is placed on a CPU and the kernels are loaded
    (``jaxrnn._native.enabled()``); under ``vmap`` it runs once per batch element
    (``vmap_method="sequential"``). Not differentiable by JAX:
    :func:`linear_scan_backward_kernel` is its derivative.
    """
    shape = (sequences, steps, width) = _check(time_axis, h0, a, b)
    call = jax.ffi.ffi_call(
        "jaxrnn_linear_scan",
        jax.ShapeDtypeStruct(shape, jnp.float32),
        vmap_method="sequential",
    )
    flat = (a.reshape(shape), b.reshape(shape), h0.reshape(sequences, width))
    return call(*flat, reverse=np.int32(reverse)).reshape(a.shape)


def linear_scan_backward_kernel(a, h, h0, g, *, reverse: bool, time_axis: int = 0):
    """The derivative of :func:`linear_scan_kernel` at ``(a, h0)`` with states ``h``, given
    the cotangent ``g`` of ``h``: ``(d_a, d_b, d_h0)``.

    ``d_h[t] = g[t] + a[t+1] * d_h[t+1]`` (``a[t-1] * d_h[t-1]`` with ``reverse``), ``d_b =
    d_h``, ``d_a[t] = d_h[t] * h[t-1]`` (``h0`` before the first step visited) and ``d_h0``
    is ``a * d_h`` at the first step visited. Shapes and dtypes as
    :func:`linear_scan_kernel`'s.
    """
    shape = (sequences, steps, width) = _check(time_axis, h0, a, h, g)
    call = jax.ffi.ffi_call(
        "jaxrnn_linear_scan_backward",
        (
            jax.ShapeDtypeStruct(shape, jnp.float32),
            jax.ShapeDtypeStruct(shape, jnp.float32),
            jax.ShapeDtypeStruct((sequences, width), jnp.float32),
        ),
        vmap_method="sequential",
    )
    state = h0.reshape(sequences, width)
    d_a, d_b, d_h0 = call(
        a.reshape(shape), h.reshape(shape), state, g.reshape(shape), reverse=np.int32(reverse)
    )
    return d_a.reshape(a.shape), d_b.reshape(a.shape), d_h0.reshape(h0.shape)


CELL_KERNELS = {"mingru": 0, "minlstm": 1, "rglru": 2}
"""The cells with a kernel of their own (``csrc/linear_cells.cc``): the gates, the semantics
and the recurrence in one pass. Keyed by :attr:`jaxrnn.cells.linear.LinearCell.kernel`."""

UNIT_CELLS = frozenset({"rglru"})
"""The cells whose kernels take a per-unit parameter ``unit`` ``[H]`` (the RG-LRU's
``c * softplus(-a_param)``) and return its derivative."""


def _cell_args(cell: str, k, unit, h0, valid, resets, keep, time_major: bool):
    """The kernels' arguments after ``k`` (``unit`` an empty array where None) and their
    attributes but ``reverse``."""
    if cell not in CELL_KERNELS:
        raise ValueError(f"cell must be one of {sorted(CELL_KERNELS)}, got {cell!r}")
    if (unit is None) == (cell in UNIT_CELLS):
        raise ValueError(f"unit must be given for {sorted(UNIT_CELLS)} only; got cell {cell!r}")
    unit = jnp.zeros((0,), jnp.float32) if unit is None else unit
    if k.ndim != 3 or not all(x.dtype == jnp.float32 for x in (k, unit, h0, keep)):
        raise TypeError(f"k must be float32 [B, T, G * H] (or [T, B, G * H]); got {k.shape}")
    _native.kernel_status()
    attrs = dict(
        cell=np.int32(CELL_KERNELS[cell]),
        time_major=np.int32(time_major),
    )
    return (unit, h0, valid, resets, keep), attrs


def _d_unit(cell: str, h0) -> jax.ShapeDtypeStruct:
    """The shape of the kernels' d_unit: each batch element's share ``[B, H]``, or empty."""
    return jax.ShapeDtypeStruct(h0.shape if cell in UNIT_CELLS else (0,), jnp.float32)


def linear_cell_kernel(
    cell: str, k, h0, valid, resets, keep, *, reverse: bool, time_major: bool, unit=None
):
    """The states of a linear cell with a kernel of its own (:data:`CELL_KERNELS`) over a
    sequence, by the CPU kernel: its gates from ``k``, then ``h = a * h_prev + c``.

    Args:
      cell: a key of :data:`CELL_KERNELS`.
      k: float32 ``[B, T, G * H]`` (``[T, B, G * H]`` if ``time_major``): ``x @ w_i + b``.
      h0: float32 ``[B, H]``: the state before the first step visited.
      valid: bool ``[B, T]`` (``[T, B]``), or an empty array: a step where False keeps the
        state (``a = 1``, ``c = 0``).
      resets: bool, ``valid``'s layout, or empty: ``a = 0`` where True.
      keep: float32 ``[B, H]``, or empty: recurrent dropout's mask, ``a * keep``.
      reverse: visit the steps from the last to the first.
      time_major: the layout of ``k``, the masks and the states.
      unit: float32 ``[H]`` for the cells of :data:`UNIT_CELLS`, else None.

    Returns:
      ``h``, float32 ``[B, T, H]`` (``[T, B, H]``): the state after every step, not masked.
    """
    args, attrs = _cell_args(cell, k, unit, h0, valid, resets, keep, time_major)
    shape = (*k.shape[:2], h0.shape[-1])
    call = jax.ffi.ffi_call(
        "jaxrnn_linear_cell_forward",
        jax.ShapeDtypeStruct(shape, jnp.float32),
        vmap_method="sequential",
    )
    return call(k, *args, reverse=np.int32(reverse), **attrs)


def linear_cell_backward_kernel(
    cell: str, k, h, h0, valid, resets, keep, g, *, reverse: bool, time_major: bool, unit=None
):
    """The derivative of :func:`linear_cell_kernel` given the cotangent ``g`` of its states
    ``h``: ``(d_k, d_h0, d_unit)``, ``d_k`` and ``d_h0`` in the shapes of ``k`` and ``h0``,
    ``d_unit`` ``[B, H]`` (each batch element's share; None without ``unit``). The mask
    ``keep`` gets none."""
    args, attrs = _cell_args(cell, k, unit, h0, valid, resets, keep, time_major)
    call = jax.ffi.ffi_call(
        "jaxrnn_linear_cell_backward",
        (*(jax.ShapeDtypeStruct(a.shape, jnp.float32) for a in (k, h0)), _d_unit(cell, h0)),
        vmap_method="sequential",
    )
    unit, h0, valid, resets, keep = args
    d_k, d_h0, d_unit = call(
        k, unit, h, h0, valid, resets, keep, g, reverse=np.int32(reverse), **attrs
    )
    return d_k, d_h0, (d_unit if cell in UNIT_CELLS else None)


def linear_cell_sequence_kernel(
    cell: str, x, w_i, b, h0, valid, resets, keep, *, reverse: bool, time_major: bool, unit=None
):
    """:func:`linear_cell_kernel` with the input projection inside: ``k = x @ w_i + b``
    computed a chunk of steps at a time in the kernel (nothing of ``k``'s size is written).

    Args:
      x: float32 ``[B, T, I]`` (``[T, B, I]`` if ``time_major``).
      w_i: float32 ``[I, G * H]``; b: float32 ``[G * H]``.
      h0, valid, resets, keep, reverse, time_major, unit: as :func:`linear_cell_kernel`'s.

    Returns:
      ``h``, float32 ``[B, T, H]`` (``[T, B, H]``), not masked.
    """
    args, attrs = _cell_args(cell, x, unit, h0, valid, resets, keep, time_major)
    _check_projection(x, w_i, b)
    shape = (*x.shape[:2], h0.shape[-1])
    call = jax.ffi.ffi_call(
        "jaxrnn_linear_cell_sequence_forward",
        jax.ShapeDtypeStruct(shape, jnp.float32),
        vmap_method="sequential",
    )
    return call(x, w_i, b, *args, reverse=np.int32(reverse), **attrs)


def linear_cell_sequence_backward_kernel(
    cell: str,
    x,
    w_i,
    b,
    h,
    h0,
    valid,
    resets,
    keep,
    g,
    *,
    reverse: bool,
    time_major: bool,
    want_d_x: bool = True,
    unit=None,
):
    """The derivative of :func:`linear_cell_sequence_kernel` given the cotangent ``g`` of its
    states ``h``: ``(d_x, d_w_i, d_b, d_h0, d_unit)`` (the mask ``keep`` gets none); ``d_x``
    is ``None`` unless ``want_d_x`` (its matmul skipped), ``d_unit`` as
    :func:`linear_cell_backward_kernel`'s."""
    args, attrs = _cell_args(cell, x, unit, h0, valid, resets, keep, time_major)
    _check_projection(x, w_i, b)
    call = jax.ffi.ffi_call(
        "jaxrnn_linear_cell_sequence_backward",
        (
            *(
                jax.ShapeDtypeStruct(a.shape if want else (0,), jnp.float32)
                for a, want in ((x, want_d_x), (w_i, True), (b, True), (h0, True))
            ),
            _d_unit(cell, h0),
        ),
        vmap_method="sequential",
    )
    unit, h0, valid, resets, keep = args
    d_x, d_w, d_b, d_h0, d_unit = call(
        x, w_i, b, unit, h, h0, valid, resets, keep, g, reverse=np.int32(reverse), **attrs
    )
    return (d_x if want_d_x else None), d_w, d_b, d_h0, (d_unit if cell in UNIT_CELLS else None)


def _check_projection(x, w_i, b):
    if w_i.dtype != jnp.float32 or b.dtype != jnp.float32:
        raise TypeError(f"w_i and b must be float32; got {w_i.dtype}, {b.dtype}")
    if w_i.ndim != 2 or w_i.shape[0] != x.shape[-1] or b.shape != (w_i.shape[1],):
        raise ValueError(
            f"w_i must be [I, G * H] with I = x.shape[-1] and b [G * H]; got x {x.shape}, "
            f"w_i {w_i.shape}, b {b.shape}"
        )
