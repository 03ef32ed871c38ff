"""What the fused loop (:mod:`jaxrnn.cells.fused`) is built from besides the cell: the
``custom_vjp`` that pairs its forward loop with its backward pass, the resets' bookkeeping,
the weights' gradients after the backward loop, and the values that the loop and the CPU
kernels take (:class:`Loop`, :class:`LoopInputs`, :class:`BackwardInputs`,
:class:`Kernels`). All functions take and return time-major per-step arrays.

``resets`` (bool ``[time, batch]`` or None, in the loop's order: zero the carry before
visiting step ``t``; only where ``valid``): the forward loop zeroes the carry that the step
before a reset hands on (:func:`resets_after`), so that what a cell keeps of its previous
state is zero there; the backward loop zeroes the carry's cotangent where it leaves a reset
step, and the recurrent weights' gradient takes the state before a reset as zero
(:func:`states_before`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells._base import Params, accumulation_dtype, matmul

Array = jax.Array


def split_gates(a: Array, n: int) -> tuple[Array, ...]:
    return tuple(jnp.split(a, n, axis=-1))


def per_gate(xp, gates, time_major):
    """``xp`` split per gate, each time-major (see the module docstring for why)."""
    split = split_gates(xp, gates)
    return split if time_major else tuple(jnp.swapaxes(g, 0, 1) for g in split)


def native_loops(native: bool, *arrays: Array) -> bool:
    """Whether the loops run as jaxrnn's CPU kernels (on a CPU): where the driver chose them
    (``native``) and every one of ``arrays`` is float32."""
    return native and _native.available(*arrays)


def cast_like(grads: dict, params: Params) -> dict:
    """Each gradient in its parameter's dtype (``param_dtype``), once summed."""
    return {k: v.astype(params[k].dtype) for k, v in grads.items()}


@dataclasses.dataclass(frozen=True)
class Loop:
    """How a fused loop runs (hashable: a static argument of the loops' ``custom_vjp``).

    ``backwards``: visit the steps from the last to the first; ``unroll``: ``lax.scan``'s
    unroll factor; ``time_major``: the layout of ``xs`` (``ys`` is always time-major);
    ``native``: run jaxrnn's CPU kernels where the arrays allow (:func:`native_loops`)."""

    backwards: bool = False
    unroll: int | bool = 1
    time_major: bool = True
    native: bool = False


def with_backward(forward: Callable, backward: Callable) -> Callable:
    """``scan(cell, loop, params, xs, valid, resets, carry0) -> (ys, carry)`` as a
    ``jax.custom_vjp``, from ``forward(cell, loop, params, xs, valid, resets, carry0, keep) ->
    (ys, carry, kept)`` and ``backward(cell, loop, (params, xs, valid, resets, kept), (d_ys,
    d_carry))``; ``loop`` is a :class:`Loop`. The primal (nothing differentiates it) runs
    ``forward`` with ``keep=False``: what it keeps may be skipped."""

    def scan(cell, loop, params, xs, valid, resets, carry0):
        ys, carry, _ = forward(cell, loop, params, xs, valid, resets, carry0, keep=False)
        return ys, carry

    def scan_fwd(cell, loop, params, xs, valid, resets, carry0):
        ys, carry, kept = forward(cell, loop, params, xs, valid, resets, carry0)
        return (ys, carry), (params, xs, valid, resets, kept)

    scan = jax.custom_vjp(scan, nondiff_argnums=(0, 1))
    scan.defvjp(scan_fwd, backward)
    return scan


def states_before(backwards, h0, ys, resets=None):
    """The ``h`` before every step: the previous output (time-major), or ``h0`` ``[batch,
    hidden]``, and zeros where ``resets`` (``[time, batch]`` bool, or None) restarts the carry.
    Past a sequence's length (where ``ys`` is zero) the values are wrong, and unused: those
    steps get no gradient (the loops' ``valid`` steps come first in the order they run)."""
    h0 = h0[None]
    h_prev = jnp.concatenate([ys[1:], h0]) if backwards else jnp.concatenate([h0, ys[:-1]])
    if resets is None:
        return h_prev
    return jnp.where(resets[..., None], jnp.zeros_like(h_prev), h_prev)


def recurrent_weight_gradient(backwards, h0, ys, d_z, dtype, resets=None, h_prev=None):
    """``w_h``'s gradient, ``sum_t h_prev[t]^T d_z[t]``, as one matmul over all steps
    (``h_prev``: :func:`states_before`, computed here if not given)."""
    if h_prev is None:
        h_prev = states_before(backwards, h0, ys, resets)
    return matmul(h_prev.reshape(-1, h_prev.shape[-1]).T, d_z.reshape(-1, d_z.shape[-1]), dtype)


def resets_after(backwards, resets, carry0):
    """``(after, carry0)``: the loop's resets (zero the carry before visiting step ``t``) as
    flags to zero it after the step visited before (``[time, batch]``: the flag of the step
    visited next, none after the last one), and ``carry0`` zeroed where the first step visited
    resets; ``(None, carry0)`` without resets. The loops zero the carry they hand on, not the
    one they read: the recurrent matmul then reads the loop's state as it does without resets
    (XLA:CPU compiles a matmul of a ``jnp.where`` differently, rounding differently in the last
    bit), so that all-False resets give exactly the results of none."""
    if resets is None:
        return None, carry0
    carry0 = zero_where(resets[-1 if backwards else 0], *carry0)
    none = jnp.zeros_like(resets[:1])
    after = jnp.concatenate([none, resets[:-1]] if backwards else [resets[1:], none])
    return after, carry0


def zero_where(resets_t, *arrays):
    """``arrays`` (``[batch, ...]``) with zero rows where ``resets_t`` (``[batch]``) is True;
    unchanged where it is None."""
    if resets_t is None:
        return arrays
    reset = resets_t[:, None]
    return tuple(jnp.where(reset, jnp.zeros_like(a), a) for a in arrays)


def input_weight_gradient(xs, d_z, time_major, dtype):
    """``(d_w_i, d_b)``: ``sum_t xs[t]^T d_z[t]`` and the sum of ``d_z`` (time-major) over
    steps and rows, both accumulated in ``dtype``'s accumulation dtype; ``xs`` in either
    layout."""
    spec = "tbf,tbg->fg" if time_major else "btf,tbg->fg"
    acc = accumulation_dtype(dtype)
    d_w_i = jnp.einsum(spec, xs.astype(dtype), d_z.astype(dtype), preferred_element_type=acc)
    return d_w_i, d_z.astype(acc).sum(axis=(0, 1))


def input_cotangent(params, time_major, d_xp, xs, dtype):
    """``xs``'s cotangent, ``d_xp @ w_i^T``, in ``xs``'s layout and dtype (dropped by XLA where
    unused)."""
    d_xs = matmul(d_xp, params["w_i"].T, dtype).astype(xs.dtype)
    return d_xs if time_major else jnp.swapaxes(d_xs, 0, 1)


class LoopInputs(NamedTuple):
    """What a forward loop (XLA or kernel) reads.

    ``w_h``: ``[R, G*H]`` in the computation dtype (None: the cell has no recurrent matmul);
    ``xw``: the input projection without its bias, ``[T, B, G*H]`` or ``[B, T, G*H]`` as
    the inputs lie, or the tuple of its ``G`` gate blocks (``[T, B, H]`` each); ``bias``:
    ``[G*H]`` (or None), added per step; ``inner``: the parameters the cell's ``update``
    reads (``update_params``); ``valid``: ``[T, B]`` bool (or None); ``resets``: ``[T, B]``
    bool (or None); ``carry0``: the initial carry."""

    w_h: Array | None
    xw: Array | tuple[Array, ...]
    bias: Array | None
    inner: Params
    valid: Array | None
    resets: Array | None
    carry0: Any


class BackwardInputs(NamedTuple):
    """What a backward loop (XLA or kernel) reads besides the weights.

    ``kept``: what the forward loop kept per step (a tuple of ``[T, B, H]`` arrays) or, for
    the kernels, :func:`jaxrnn._native.pack_kept`'s flat array; ``valid``: ``[T, B]`` bool (or
    None: every step valid); ``d_ys``: the outputs' cotangent ``[T, B,
    H]``; ``d_carry``: the final carry's cotangent (the carry's structure); ``ys``: the
    outputs; ``h0``: the initial ``h``; ``xs``: the inputs (``[T, B, F]`` or ``[B, T, F]``);
    ``resets``: ``[T, B]`` bool or None."""

    kept: Any
    valid: Array | None
    d_ys: Array
    d_carry: Any
    ys: Array
    h0: Array
    xs: Array
    resets: Array | None


@dataclasses.dataclass(frozen=True)
class Kernels:
    """A cell's CPU kernels (``jaxrnn._native``): its fused loop's two passes.

    ``forward(cell, inputs, *, reverse, time_major, keep) -> (ys, carry, kept)`` with
    ``inputs`` a :class:`LoopInputs` (the projection as the inputs lie) and ``kept`` packed
    (:func:`jaxrnn._native.pack_kept`; empty with ``keep=False``);
    ``backward(cell, w_h, inner, inputs, *, reverse, time_major) -> (d_xw, d_carry0, d_w_h,
    d_inner, d_w_i, d_b)`` with ``inputs`` a :class:`BackwardInputs`. ``kept``: how many
    ``[T, B, H]`` arrays the cell's ``update_kept`` keeps per step, in its order. Each pass
    computes what the XLA loop generated from the cell's ``update`` computes (the kernels'
    twin, :func:`jaxrnn.cells.fused.kernel_twins`)."""

    forward: Callable
    backward: Callable
    kept: int = 0
