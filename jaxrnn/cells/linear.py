"""Cells whose state update is linear in the state, ``h' = a * h + b`` with ``a`` and ``b``
computed from the input alone (no recurrent matrix): the base class :class:`LinearCell`, and
:func:`parallel`, which runs such a cell over a whole sequence at once (the path
``implementation="parallel"``, :func:`jaxrnn.plan.plan`).

Because ``a`` and ``b`` do not depend on the state, every step's pair comes from one
computation over all steps (the input projection, then the cell's :meth:`~LinearCell.coefficients`),
and the recurrence itself is :func:`jaxrnn.cells.linear_scan.linear_scan`. The sequence
semantics become coefficients: a step past a sequence's length keeps the state (``a = 1``,
``b = 0``) and outputs zeros, a reset before a step drops the state there (``a = 0``, so no
gradient crosses it), recurrent dropout scales ``a`` by its mask (the state enters the step
only through ``a * h``), and the initial carry is the scan's ``h0``. The outputs are the states.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from jaxrnn.cells._base import Array, CellBase, Params, accumulation_dtype, check_floating
from jaxrnn.cells.linear_scan import linear_scan

_glorot = jax.nn.initializers.glorot_uniform()


class LinearCell(CellBase):
    """The base class of a cell with ``h' = a * h + b``, ``(a, b) =
    coefficients(params, x @ w_i + b)``; the output is ``h'``.

    A subclass sets ``gates`` (the blocks of ``hidden_size`` columns in ``w_i``) and defines
    :meth:`coefficients`. It runs under every path of ``rnn``: ``"parallel"`` (the default),
    ``"scan"`` and ``static_rnn`` step it through :meth:`update`.
    """

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``w_i [input_size, gates * hidden_size]`` (besides the bias ``b``)."""
        return {"w_i": (input_size, self.gates * self.hidden_size)}

    def init(self, key, input_size: int, dtype=None) -> Params:
        """``w_i`` Glorot-uniform, ``b`` zeros, in ``dtype`` (default ``param_dtype``)."""
        dtype = self.param_dtype if dtype is None else dtype
        check_floating(dtype, "dtype")
        if not isinstance(input_size, int) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        width = self.gates * self.hidden_size
        wide = jnp.promote_types(dtype, jnp.float32)
        w_i = _glorot(key, (input_size, width), wide).astype(dtype)
        return {"w_i": w_i, "b": jnp.zeros((width,), dtype)}

    def coefficients(self, params: Params, xp: Array) -> tuple[Array, Array]:
        """``(a, b)``, each ``[..., hidden_size]`` in ``xp``'s dtype (the accumulation dtype),
        from the projected input ``xp`` (``[..., gates * hidden_size]``,
        :meth:`project_inputs`)."""
        raise NotImplementedError

    def recurrent(self, params: Params, h: Array) -> None:
        """``None``: the state enters the step only through ``a * h``."""
        return None

    def update(self, params: Params, carry: Array, xp: Array, hw: None) -> tuple[Array, Array]:
        """``h' = a * h + b`` with ``(a, b)`` = :meth:`coefficients`; the output is ``h'``."""
        del hw
        a, b = self.coefficients(params, xp)
        h = a * carry + b
        return h, h

    def masked_step(self, params: Params, carry: Array, xp: Array, mask: Array):
        """Recurrent dropout: ``h' = a * (h * mask) + b`` (the one place the state enters)."""
        return self.update(params, carry * mask.astype(carry.dtype), xp, None)


def is_linear(cell: CellBase) -> bool:
    """Whether ``cell`` is a :class:`LinearCell` (runs ``implementation="parallel"``)."""
    return isinstance(cell, LinearCell)


def parallel(
    cell: LinearCell,
    params: Params,
    xs: Array,
    carry0: Array,
    *,
    backwards: bool,
    method: str,
    time_major: bool = True,
    valid: Array | None = None,
    resets: Array | None = None,
    hidden_mask: Array | None = None,
    chunk: int | None = None,
) -> tuple[Array, Array]:
    """Run ``cell`` over ``xs`` in parallel over time, in the layout ``xs`` has.

    Args:
      cell: with its computation dtype set.
      params: the cell's parameters.
      xs: ``[T, B, I]`` (``time_major``) or ``[B, T, I]``.
      carry0: ``[B, H]`` in the accumulation dtype.
      backwards: visit the steps from the last to the first.
      method: how the recurrence is solved (:data:`jaxrnn.cells.linear_scan.METHODS`).
      time_major: the layout of ``xs`` and of the returned ``ys``.
      valid: bool ``[T, B]`` (or None): steps past a sequence's length are False.
      resets: bool ``[T, B]`` (or None), in the order the steps are visited: the state is
        zero before the steps where True (only where ``valid``).
      hidden_mask: ``[B, H]`` (or None): recurrent dropout's mask on the state.
      chunk: the steps per time chunk (default: :func:`chunk_steps`). With the CPU kernel
        the sequence runs in chunks under ``lax.scan``, each recomputed in the backward pass:
        every pass over a chunk's values then stays in the CPU's cache.

    Returns:
      ``(ys, carry)``: ``ys`` ``[T, B, H]`` (or ``[B, T, H]``) in the computation dtype,
      zero where not ``valid``; ``carry`` ``[B, H]``, the state after the last valid step
      visited.
    """
    time_axis = 0 if time_major else 1
    if not time_major:  # the masks in the layout of the data
        valid = None if valid is None else valid.T
        resets = None if resets is None else resets.T
    run = _Run(cell, params, hidden_mask, backwards, method, time_axis)
    carry0 = carry0.astype(accumulation_dtype(cell.dtype))
    size = chunk_steps(xs.shape[0 if time_major else 1], carry0.shape, method, chunk)
    if size is None:
        ys, carry = run(xs, carry0, valid, resets)
    else:
        ys, carry = run.in_chunks(size, xs, carry0, valid, resets)
    return ys.astype(cell.dtype), carry


def chunk_steps(steps: int, state_shape, method: str, chunk: int | None = None) -> int | None:
    """The steps per time chunk of :func:`parallel`, or ``None`` for the whole sequence at
    once: with the CPU kernel, chunks whose arrays of ``[batch, steps, H]`` hold about
    ``2**15`` values (so that a chunk's passes stay in the CPU's cache), unless ``chunk``
    says otherwise."""
    if chunk is None:
        if method != "kernel":
            return None
        chunk = max(8, 2**15 // max(1, math.prod(state_shape)))
    return chunk if chunk < steps else None


@dataclasses.dataclass(frozen=True)
class _Run:
    """One linear cell's steps, given its projection's inputs, in one layout and direction."""

    cell: LinearCell
    params: Params
    hidden_mask: Array | None
    backwards: bool
    method: str
    time_axis: int

    def __call__(self, xs, carry0, valid, resets):
        """``(ys, carry)`` over ``xs`` from ``carry0`` (``ys`` in the accumulation dtype)."""
        time_major = self.time_axis == 0
        xp = self.cell.project_inputs(self.params, xs)
        # Recomputed from xp in the backward pass: fewer arrays of the sequence's size written.
        a, b = jax.checkpoint(self.cell.coefficients)(self.params, xp)
        if self.hidden_mask is not None:
            mask = self.hidden_mask.astype(a.dtype)
            a = a * (mask[None] if time_major else mask[:, None])
        if resets is not None:
            a = jnp.where(resets[..., None], jnp.zeros_like(a), a)
        if valid is not None:
            keep = valid[..., None]
            a = jnp.where(keep, a, jnp.ones_like(a))
            b = jnp.where(keep, b, jnp.zeros_like(b))
        h = linear_scan(
            a, b, carry0, reverse=self.backwards, method=self.method, time_axis=self.time_axis
        )
        steps = h.shape[self.time_axis]
        if steps == 0:
            carry = carry0
        else:
            last = 0 if self.backwards else steps - 1
            carry = jax.lax.index_in_dim(h, last, self.time_axis, keepdims=False)
        ys = h if valid is None else jnp.where(valid[..., None], h, jnp.zeros_like(h))
        return ys, carry

    def in_chunks(self, size: int, xs, carry0, valid, resets):
        """As :meth:`__call__`, in chunks of ``size`` steps under ``lax.scan``, each chunk
        recomputed in the backward pass (only the carry between chunks is kept)."""
        axis = self.time_axis
        steps = xs.shape[axis]
        count = -(-steps // size)
        pad = count * size - steps
        if pad:  # steps past the end: not valid, so they keep the state and output zeros

            def padded(x, value):
                widths = [(0, 0)] * x.ndim
                widths[axis] = (0, pad)
                return jnp.pad(x, widths, constant_values=value)

            if valid is None:
                valid = jnp.ones(xs.shape[:2], bool)
            xs, valid = padded(xs, 0), padded(valid, False)
            resets = None if resets is None else padded(resets, False)

        def split(x):  # [..., count * size, ...] -> [count, ..., size, ...]
            if x is None:
                return None
            shape = (*x.shape[:axis], count, size, *x.shape[axis + 1 :])
            return jnp.moveaxis(x.reshape(shape), axis, 0)

        @functools.partial(jax.checkpoint, prevent_cse=False)
        def chunk(carry, inputs):
            x, v, r = inputs
            ys, carry = self(x, carry, v, r)
            return carry, ys

        inputs = (split(xs), split(valid), split(resets))
        carry, ys = jax.lax.scan(chunk, carry0, inputs, reverse=self.backwards)
        ys = jnp.moveaxis(ys, 0, axis)
        ys = ys.reshape(*ys.shape[:axis], count * size, *ys.shape[axis + 2 :])
        return jax.lax.slice_in_dim(ys, 0, steps, axis=axis), carry
