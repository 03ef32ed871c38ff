"""What the fused loops of the cells share: the hoisted input projection, the ``custom_vjp``
that pairs a forward loop with its hand-written backward pass, and the weight gradients.

For ``SimpleRNN``, ``LSTM`` and ``GRU(reset_after=True)`` (see ``jaxrnn.drivers`` for when it
is used). The input half of every step is one matmul over all steps before the loop (the
loop adds the bias: XLA:CPU does not fuse it into the matmul, and a separate pass over the
whole projection cost up to a fifth of a forward pass), split per gate (``[time, batch,
hidden]`` each: XLA:CPU runs an elementwise fusion that slices several gates out of one
loop-indexed ``[time, batch, k*hidden]`` buffer several times slower); the backward loop
holds only the recurrent matmul and the cell's elementwise derivative, and the gradients of
``w_i``, ``w_h``, the biases and ``xs`` are one matmul each after it.

Every per-step value the forward loop writes is a separate buffer write (one more operation
per step, which dominates small models on CPU), so each cell keeps only what its backward
pass needs, and the previous ``h`` is the previous output (zeros after a reset): the
``SimpleRNN`` keeps nothing but its outputs (its derivative is a function of the output); the
LSTM keeps the previous cell state and its four gate activations (its backward loop then has
no exp or divide; ``docs/design/fused-loops.md`` has the measurements); the GRU keeps ``r, z,
n`` and the recurrent ``hh_n``, and its backward step is written out the same way.
Undifferentiated (the ``custom_vjp``'s primal), the forward pass keeps nothing. All functions
take and return time-major per-step arrays.

``resets`` (bool ``[time, batch]`` or None, in the loop's order: zero the carry before
visiting step ``t``; only where ``valid``): the forward loop zeroes the carry that the step
before a reset hands on (:func:`resets_after`), so that what the LSTM keeps as its previous
cell state is zero there; the backward loop zeroes the carry's cotangent where it leaves a
reset step, and the recurrent weights' gradient takes the state before a reset as zero
(:func:`states_before`). Without resets the loops are the graphs they are without the
argument.

On a CPU the three cells' two loops (and the weights' gradients) run as jaxrnn's kernels
instead (``jaxrnn._native``, under the conditions of :func:`_native_loops`); the XLA loops
here are then their derivatives, and what they run on other platforms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells._base import Params, accumulation_dtype, matmul

Array = jax.Array


def split_gates(a: Array, n: int) -> tuple[Array, ...]:
    return tuple(jnp.split(a, n, axis=-1))


def projection(params, xs, bias, dtype):
    """``(xs @ w_i, bias)`` in ``dtype``'s accumulation dtype, ``xs``'s layout kept: the loops
    add the bias themselves, which saves a pass over the projection (XLA:CPU does not fuse it
    into the matmul)."""
    lead = xs.shape[:2]
    flat = matmul(xs.reshape(lead[0] * lead[1], xs.shape[2]), params["w_i"], dtype)
    return flat.reshape(*lead, -1), bias.astype(accumulation_dtype(dtype))


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


def loop_gradients(params, time_major, d_z, d_w_h, d_w_i, d_b, xs, dtype):
    """``(d_params, d_xs)`` of the SimpleRNN and the LSTM, whose backward loops return the
    weights' gradients (``b_h``, where the parameters have one, gets ``b``'s)."""
    d_params = {"w_i": d_w_i, "w_h": d_w_h, "b": d_b}
    if "b_h" in params:
        d_params["b_h"] = d_b
    return cast_like(d_params, params), input_cotangent(params, time_major, d_z, xs, dtype)
