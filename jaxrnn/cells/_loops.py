"""What the fused loops of the cells share: the hoisted input projection, the ``custom_vjp``
that pairs a forward loop with its hand-written backward pass, the weights' gradients, and
:class:`CellLoops`, the scaffolding around each cell's loops.

For ``SimpleRNN``, ``LSTM`` and ``GRU(reset_after=True)`` (:func:`jaxrnn.plan.plan` says when
they run). The input half of every step is one matmul over all steps before the loop, split per
gate (``[time, batch, hidden]`` each), with the bias added in the loop; the backward loop holds
the recurrent matmul and the cell's elementwise derivative, and the gradients of ``w_i``,
``w_h``, the biases and ``xs`` are one matmul each after it. The forward loop keeps what the
backward step reads (the ``SimpleRNN`` nothing but its outputs; the LSTM the previous cell state
and its four gate activations; the GRU ``r, z, n`` and the recurrent ``hh_n``); the previous
``h`` is the previous output. Undifferentiated, it keeps nothing. All functions take and return
time-major per-step arrays. ``docs/design/fused-loops.md`` gives the reasons for these layouts
and their measurements.

``resets`` (bool ``[time, batch]`` or None, in the loop's order: zero the carry before
visiting step ``t``; only where ``valid``): the forward loop zeroes the carry that the step
before a reset hands on (:func:`resets_after`), so that what the LSTM keeps as its previous
cell state is zero there; the backward loop zeroes the carry's cotangent where it leaves a
reset step, and the recurrent weights' gradient takes the state before a reset as zero
(:func:`states_before`).

On a CPU the three cells' two loops (and the weights' gradients) run as jaxrnn's kernels
instead (``jaxrnn._native``, under the conditions of :func:`native_loops`); the XLA loops
are then their derivatives, and what runs on other platforms.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells._base import Params, accumulation_dtype, input_bias, matmul

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


def weight_gradients(params, d_w_h, d_w_i, d_b, d_b_h=None):
    """The parameters' gradients, each in its parameter's dtype: ``b_h`` gets ``d_b_h`` (the
    GRU's recurrent bias) or, where the parameters have one, ``b``'s (the SimpleRNN's and the
    LSTM's, added to ``b``)."""
    d_params = {"w_i": d_w_i, "w_h": d_w_h, "b": d_b}
    if d_b_h is not None:
        d_params["b_h"] = d_b_h
    elif "b_h" in params:
        d_params["b_h"] = d_b
    return cast_like(d_params, params)


class BackwardInputs(NamedTuple):
    """What a backward loop (XLA or kernel) reads besides ``w_h``.

    ``kept``: what the forward loop kept, ``K`` arrays ``[T, B, H]`` (a tuple; empty for the
    SimpleRNN) or, for the kernels, :func:`jaxrnn._native.pack_kept`'s flat array; ``valid``:
    ``[T, B]`` bool (or None: every step valid; the kernels' mask); ``d_ys``: the outputs'
    cotangent ``[T, B, H]``; ``d_carry``: the final carry's cotangent, a tuple of ``[B, H]``
    (``(d_c, d_h)`` for the LSTM, ``(d_h,)`` otherwise); ``ys``: the outputs; ``h0``: the
    initial ``h``; ``xs``: the inputs (``[T, B, F]`` or ``[B, T, F]``); ``resets``: ``[T, B]``
    bool or None."""

    kept: Any
    valid: Array | None
    d_ys: Array
    d_carry: tuple[Array, ...]
    ys: Array
    h0: Array
    xs: Array
    resets: Array | None


def _as_tuple(carry) -> tuple:
    return carry if isinstance(carry, tuple) else (carry,)


def _like(carry, parts: tuple):
    return parts if isinstance(carry, tuple) else parts[0]


@dataclasses.dataclass(frozen=True)
class CellLoops:
    """A cell's fused loops: its XLA loops and CPU kernels, and what runs around them.

    ``forward_xla(w_h, xp, b, [b_h,] valid, *carry0, resets, *, backwards, time_major, unroll,
    **options) -> (ys, *carry, *kept)``; ``forward_kernel`` the same with ``reverse`` for
    ``backwards``, no ``unroll``, ``keep`` (where ``kept > 0``) and ``kept`` packed;
    ``backward_xla(w_h, inputs, *, backwards, unroll, time_major, **backward_options)`` and
    ``backward_kernel(w_h, inputs, *, reverse, time_major, **backward_options)`` with
    ``inputs`` a :class:`BackwardInputs`, both returning ``(d_xp, *d_carry0, d_w_h, [d_b_h,]
    d_w_i, d_b)``. ``kept``: how many ``[T, B, H]`` arrays the forward loop keeps (flattened
    in order); ``gates``: the cell's gate blocks; ``recurrent_bias``: the loops take ``b_h``
    apart (the GRU) rather than added to ``b``; ``options(cell)`` and
    ``backward_options(cell)``: the cell's static options of the loops."""

    forward_xla: Callable
    backward_xla: Callable
    forward_kernel: Callable
    backward_kernel: Callable
    gates: int
    kept: int = 0
    recurrent_bias: bool = False
    options: Callable[[Any], dict] = lambda cell: {}
    backward_options: Callable[[Any], dict] = lambda cell: {}

    def scan(self) -> Callable:
        """The cell's fused loop, ``scan(cell, loop, params, xs, valid, resets, carry0) ->
        (ys, carry)`` (:func:`with_backward`)."""
        return with_backward(self.forward, self.backward)

    def forward(self, cell, loop, params, xs, valid, resets, carry0, *, keep=True):
        backwards, unroll, time_major, native = dataclasses.astuple(loop)
        dtype, carry = cell.dtype, _as_tuple(carry0)
        if self.recurrent_bias:
            xp, b = projection(params, xs, params["b"], dtype)
            w_h = params["w_h"].astype(dtype)
            biases: tuple = (b, params["b_h"].astype(accumulation_dtype(dtype)))
        else:
            xp, b = projection(params, xs, input_bias(params), dtype)
            w_h, biases = params["w_h"].astype(dtype), (b,)
        steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
        options = self.options(cell) | {"time_major": time_major}
        xla = functools.partial(self.forward_xla, backwards=backwards, unroll=unroll, **options)
        n = len(carry)
        if not native_loops(native, w_h, xp, *carry):
            ys, *rest = xla(w_h, xp, *biases, valid, *carry, resets)
            kept = tuple(jax.tree.leaves(rest[n:]))
            return ys, _like(carry0, tuple(rest[:n])), (carry, ys, kept)
        kernel = functools.partial(self.forward_kernel, reverse=backwards, **options)
        if self.kept:
            kernel = functools.partial(kernel, keep=keep)

            def xla_packed(*args):
                ys, *rest = xla(*args)
                kept = jax.tree.leaves(rest[n:])
                packed = _native.pack_kept(tuple(kept), self.gates) if keep else jnp.zeros((0,))
                return ys, *rest[:n], packed
        else:
            xla_packed = xla
        args = (w_h, xp, *biases, _native.mask(valid, steps, batch), *carry, resets)
        ys, *rest = _native.on_cpu(kernel, xla_packed, *args)
        kept = rest[n] if self.kept else ()
        return ys, _like(carry0, tuple(rest[:n])), (carry, ys, kept)

    def backward(self, cell, loop, saved, cotangents):
        backwards, unroll, time_major, native = dataclasses.astuple(loop)
        params, xs, valid, resets, (carry0, ys, kept) = saved
        d_ys, d_carry = cotangents
        dtype, d_carry_ = cell.dtype, _as_tuple(d_carry)
        w_h, d_ys = params["w_h"].astype(dtype), d_ys.astype(ys.dtype)
        options = self.backward_options(cell) | {"time_major": time_major}
        xla = functools.partial(self.backward_xla, backwards=backwards, unroll=unroll, **options)
        if self.kept:  # where the forward pass ran the kernel, it kept a packed array
            kernels = not isinstance(kept, tuple)
        else:
            kernels = native_loops(native, w_h, ys, d_ys, *d_carry_)
        h0 = carry0[-1]
        if not kernels:
            grads = xla(w_h, BackwardInputs(kept, valid, d_ys, d_carry_, ys, h0, xs, resets))
        else:
            xla_packed = xla
            if self.kept:

                def xla_packed(w_h, inputs):
                    unpacked = _native.unpack_kept(inputs.kept, self.kept, self.gates, *ys.shape)
                    return xla(w_h, inputs._replace(kept=unpacked))

            kernel = functools.partial(self.backward_kernel, reverse=backwards, **options)
            valid_, xs32 = _native.mask(valid, *ys.shape[:2]), xs.astype(jnp.float32)
            inputs = BackwardInputs(kept, valid_, d_ys, d_carry_, ys, h0, xs32, resets)
            grads = _native.on_cpu(kernel, xla_packed, w_h, inputs)
        n = len(d_carry_)
        d_xp, d_carry0, weights = grads[0], tuple(grads[1 : 1 + n]), grads[1 + n :]
        if self.recurrent_bias:
            d_w_h, d_b_h, d_w_i, d_b = weights
            d_params = weight_gradients(params, d_w_h, d_w_i, d_b, d_b_h)
        else:
            d_params = weight_gradients(params, *weights)
        d_xs = input_cotangent(params, time_major, d_xp, xs, dtype)
        return d_params, d_xs, None, None, _like(d_carry, d_carry0)
