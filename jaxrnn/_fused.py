"""The fused path of :func:`jaxrnn.rnn`: hoisted input projections, hand-written backward passes.

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
pass needs, and the previous ``h`` is always the previous output: the ``SimpleRNN`` keeps
nothing but its outputs (its derivative is a function of the output); the LSTM keeps the
previous cell state and its four gate activations (its backward loop then has no exp or
divide; ``docs/design/fused-loops.md`` has the measurements); the GRU keeps
``r, z, n`` and the recurrent ``hh_n``, and its backward step is written out the same way.
Undifferentiated (the ``custom_vjp``'s primal), the forward pass keeps nothing. All functions
take and return time-major per-step arrays.

On a CPU the three cells' two loops (and the weights' gradients) run as jaxrnn's kernels
instead (``jaxrnn._native``, under the conditions of :func:`_native_loops`); the XLA loops
here are then their derivatives, and what they run on other platforms.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells import GRU, LSTM, Cell, Params, SimpleRNN, accumulation_dtype, input_bias, matmul

Array = jax.Array


def _gates(a: Array, n: int) -> tuple[Array, ...]:
    return tuple(jnp.split(a, n, axis=-1))


def _projection(params, xs, bias, dtype):
    """``(xs @ w_i, bias)`` in ``dtype``'s accumulation dtype, ``xs``'s layout kept: the loops
    add the bias themselves, which saves a pass over the projection (XLA:CPU does not fuse it
    into the matmul)."""
    lead = xs.shape[:2]
    flat = matmul(xs.reshape(lead[0] * lead[1], xs.shape[2]), params["w_i"], dtype)
    return flat.reshape(*lead, -1), bias.astype(accumulation_dtype(dtype))


def _per_gate(xp, gates, time_major):
    """``xp`` split per gate, each time-major (see the module docstring for why)."""
    split = _gates(xp, gates)
    return split if time_major else tuple(jnp.swapaxes(g, 0, 1) for g in split)


def _native_loops(native: bool, *arrays: Array) -> bool:
    """Whether the loops run as jaxrnn's CPU kernels (on a CPU): where the driver chose them
    (``native``) and every one of ``arrays`` is float32."""
    return native and _native.available(*arrays)


def _cast_like(grads: dict, params: Params) -> dict:
    """Each gradient in its parameter's dtype (``param_dtype``), once summed."""
    return {k: v.astype(params[k].dtype) for k, v in grads.items()}


def _with_backward(forward: Callable, backward: Callable) -> Callable:
    """``scan(cell, backwards, unroll, time_major, native, params, xs, valid, carry0) -> (ys,
    carry)`` as a ``jax.custom_vjp``, from ``forward(cell, params, xs, valid, carry0,
    backwards, unroll, time_major, native, keep) -> (ys, carry, kept)`` and
    ``backward(cell, backwards, unroll, time_major, native, (params, xs, valid, kept), (d_ys,
    d_carry))``. The primal (nothing differentiates it) runs ``forward`` with ``keep=False``:
    what it keeps may be skipped."""

    def scan(cell, backwards, unroll, time_major, native, params, xs, valid, carry0):
        args = (cell, params, xs, valid, carry0, backwards, unroll, time_major, native)
        ys, carry, _ = forward(*args, keep=False)
        return ys, carry

    def scan_fwd(cell, backwards, unroll, time_major, native, params, xs, valid, carry0):
        args = (cell, params, xs, valid, carry0, backwards, unroll, time_major, native)
        ys, carry, kept = forward(*args)
        return (ys, carry), (params, xs, valid, kept)

    scan = jax.custom_vjp(scan, nondiff_argnums=(0, 1, 2, 3, 4))
    scan.defvjp(scan_fwd, backward)
    return scan


def _states_before(backwards, h0, ys):
    """The ``h`` before every step: the previous output (time-major), or ``h0`` ``[batch,
    hidden]``. Past a sequence's length (where ``ys`` is zero) the values are wrong, and
    unused: those steps get no gradient."""
    h0 = h0[None]
    return jnp.concatenate([ys[1:], h0]) if backwards else jnp.concatenate([h0, ys[:-1]])


def _recurrent_weight_gradient(backwards, h0, ys, d_z, dtype):
    """``w_h``'s gradient, ``sum_t h_prev[t]^T d_z[t]``, as one matmul over all steps."""
    h_prev = _states_before(backwards, h0, ys)
    return matmul(h_prev.reshape(-1, h_prev.shape[-1]).T, d_z.reshape(-1, d_z.shape[-1]), dtype)


def _input_weight_gradient(xs, d_z, time_major, dtype):
    """``(d_w_i, d_b)``: ``sum_t xs[t]^T d_z[t]`` and the sum of ``d_z`` (time-major) over
    steps and rows, both accumulated in ``dtype``'s accumulation dtype; ``xs`` in either
    layout."""
    spec = "tbf,tbg->fg" if time_major else "btf,tbg->fg"
    acc = accumulation_dtype(dtype)
    d_w_i = jnp.einsum(spec, xs.astype(dtype), d_z.astype(dtype), preferred_element_type=acc)
    return d_w_i, d_z.astype(acc).sum(axis=(0, 1))


def _input_cotangent(params, time_major, d_xp, xs, dtype):
    """``xs``'s cotangent, ``d_xp @ w_i^T``, in ``xs``'s layout and dtype (dropped by XLA where
    unused)."""
    d_xs = matmul(d_xp, params["w_i"].T, dtype).astype(xs.dtype)
    return d_xs if time_major else jnp.swapaxes(d_xs, 0, 1)


def _loop_gradients(params, time_major, d_z, d_w_h, d_w_i, d_b, xs, dtype):
    """``(d_params, d_xs)`` of the SimpleRNN and the LSTM, whose backward loops return the
    weights' gradients (``b_h``, where the parameters have one, gets ``b``'s)."""
    d_params = {"w_i": d_w_i, "w_h": d_w_h, "b": d_b}
    if "b_h" in params:
        d_params["b_h"] = d_b
    return _cast_like(d_params, params), _input_cotangent(params, time_major, d_z, xs, dtype)


# ------------------------------------------------------------------------------------------
# SimpleRNN: only the outputs are kept. The loops take the projected inputs ``xp`` as laid out
# (``[time, batch, hidden]`` or ``[batch, time, hidden]``) and run on jaxrnn's CPU kernel where
# one is available (``jaxrnn._native``), else in XLA.


def _simple_forward_xla(w_h, xp, b, valid, h0, *, relu, backwards, time_major, unroll):
    act = jax.nn.relu if relu else jnp.tanh
    (xp,) = _per_gate(xp, 1, time_major)

    def body(h, inputs):
        xp_t, valid_t = inputs
        new = act(xp_t + b + matmul(h, w_h, w_h.dtype))
        if valid_t is None:
            return new, new
        keep = valid_t[:, None]
        return jnp.where(keep, new, h), jnp.where(keep, new, jnp.zeros_like(new))

    h, ys = jax.lax.scan(body, h0, (xp, valid), reverse=backwards, unroll=unroll)
    return ys, h


def _simple_backward_xla(w_h, ys, valid, d_ys, d_h, h0, xs, *, relu, backwards, unroll, time_major):
    w_h_t, dtype = w_h.T, w_h.dtype

    def body(d_h, inputs):
        y_t, d_y, valid_t = inputs
        # Past a sequence's length y is zero and its state is copied: the state's cotangent
        # passes through and the step gets none.
        g = d_h + d_y
        d_z = jnp.where(y_t > 0, g, 0.0) if relu else g * (1.0 - y_t * y_t)
        if valid_t is not None:
            keep = valid_t[:, None]
            d_z = jnp.where(keep, d_z, jnp.zeros_like(d_z))
            return jnp.where(keep, matmul(d_z, w_h_t, dtype), d_h), d_z
        return matmul(d_z, w_h_t, dtype), d_z

    d_h0, d_z = jax.lax.scan(body, d_h, (ys, d_ys, valid), reverse=not backwards, unroll=unroll)
    d_w_h = _recurrent_weight_gradient(backwards, h0, ys, d_z, dtype)
    return d_z, d_h0, d_w_h, *_input_weight_gradient(xs, d_z, time_major, dtype)


def _simple_forward(cell, params, xs, valid, h0, backwards, unroll, time_major, native, keep=True):
    del keep  # what it keeps is dropped by XLA where unused
    relu, dtype = cell.activation == "relu", cell.dtype
    (xp, b), w_h = _projection(params, xs, input_bias(params), dtype), params["w_h"].astype(dtype)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    xla = functools.partial(
        _simple_forward_xla, relu=relu, backwards=backwards, time_major=time_major, unroll=unroll
    )
    if _native_loops(native, w_h, xp, h0):
        kernel = functools.partial(
            _native.simple_forward, relu=relu, reverse=backwards, time_major=time_major
        )
        ys, h = _native.on_cpu(kernel, xla, w_h, xp, b, _native.mask(valid, steps, batch), h0)
    else:
        ys, h = xla(w_h, xp, b, valid, h0)
    return ys, h, (h0, ys)


def _simple_backward(cell, backwards, unroll, time_major, native, saved, cotangents):
    params, xs, valid, (h0, ys) = saved
    d_ys, d_h = cotangents
    relu, dtype = cell.activation == "relu", cell.dtype
    w_h, d_ys = params["w_h"].astype(dtype), d_ys.astype(ys.dtype)
    options = {"relu": relu, "time_major": time_major}
    xla = functools.partial(_simple_backward_xla, backwards=backwards, unroll=unroll, **options)
    if _native_loops(native, w_h, ys, d_ys, d_h):
        kernel = functools.partial(_native.simple_backward, reverse=backwards, **options)
        valid_ = _native.mask(valid, *ys.shape[:2])
        xs32 = xs.astype(jnp.float32)
        grads = _native.on_cpu(kernel, xla, w_h, ys, valid_, d_ys, d_h, h0, xs32)
    else:
        grads = xla(w_h, ys, valid, d_ys, d_h, h0, xs)
    d_z, d_h0, *weights = grads
    d_params, d_xs = _loop_gradients(params, time_major, d_z, *weights, xs, dtype)
    return d_params, d_xs, None, d_h0


_simple_scan = _with_backward(_simple_forward, _simple_backward)


# ------------------------------------------------------------------------------------------
# LSTM: the gate activations are kept, so that the backward loop has no exp or divide.


def _lstm_forward_xla(w_h, xp, b, valid, c0, h0, *, forget_bias, backwards, time_major, unroll):
    xp, b = _per_gate(xp, 4, time_major), _gates(b, 4)

    def body(carry, inputs):
        xp_t, valid_t = inputs
        c_prev, h_prev = carry
        hh = _gates(matmul(h_prev, w_h, w_h.dtype), 4)
        zi, zf, zg, zo = (x + b_ + h for x, b_, h in zip(xp_t, b, hh, strict=True))
        if forget_bias:
            zf = zf + forget_bias
        i, f, o = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jax.nn.sigmoid(zo)
        g = jnp.tanh(zg)
        c = f * c_prev + i * g
        h = o * jnp.tanh(c)
        y = h
        if valid_t is not None:
            keep = valid_t[:, None]
            c, h = jnp.where(keep, c, c_prev), jnp.where(keep, h, h_prev)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        return (c, h), (y, c_prev, (i, f, g, o))

    (c, h), (ys, c_prevs, gates) = jax.lax.scan(
        body, (c0, h0), (xp, valid), reverse=backwards, unroll=unroll
    )
    return ys, c, h, c_prevs, gates


def _lstm_backward_xla(
    w_h, c_prevs, gates, valid, d_ys, d_c, d_h, ys, h0, xs, *, backwards, unroll, time_major
):
    w_h_t, dtype = w_h.T, w_h.dtype

    def body(d_carry, inputs):
        d_c, d_h = d_carry
        c_prev, (i, f, g, o), valid_t, d_y = inputs
        tanh_c = jnp.tanh(f * c_prev + i * g)
        d_h_all = d_h + d_y  # h is both the output and the next step's state
        d_o = d_h_all * tanh_c * o * (1.0 - o)
        d_c_all = d_c + d_h_all * o * (1.0 - tanh_c * tanh_c)
        d_z = jnp.concatenate(
            [
                d_c_all * g * i * (1.0 - i),
                d_c_all * c_prev * f * (1.0 - f),
                d_c_all * i * (1.0 - g * g),
                d_o,
            ],
            axis=-1,
        )
        d_c_prev = d_c_all * f
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            keep = valid_t[:, None]
            d_z = jnp.where(keep, d_z, jnp.zeros_like(d_z))
            d_h_prev = jnp.where(keep, matmul(d_z, w_h_t, dtype), d_h)
            return (jnp.where(keep, d_c_prev, d_c), d_h_prev), d_z
        return (d_c_prev, matmul(d_z, w_h_t, dtype)), d_z

    (d_c0, d_h0), d_z = jax.lax.scan(
        body, (d_c, d_h), (c_prevs, gates, valid, d_ys), reverse=not backwards, unroll=unroll
    )
    d_w_h = _recurrent_weight_gradient(backwards, h0, ys, d_z, dtype)
    return d_z, d_c0, d_h0, d_w_h, *_input_weight_gradient(xs, d_z, time_major, dtype)


def _lstm_forward(
    cell, params, xs, valid, carry0, backwards, unroll, time_major, native, keep=True
):
    dtype = cell.dtype
    (xp, b), w_h = _projection(params, xs, input_bias(params), dtype), params["w_h"].astype(dtype)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    options = {"forget_bias": cell.forget_bias, "time_major": time_major}
    xla = functools.partial(_lstm_forward_xla, backwards=backwards, unroll=unroll, **options)
    if not _native_loops(native, w_h, xp, *carry0):
        ys, c, h, c_prevs, gates = xla(w_h, xp, b, valid, *carry0)
        return ys, (c, h), (carry0, ys, (c_prevs, gates))

    def xla_packed(*args):
        ys, c, h, c_prevs, gates = xla(*args)
        kept = _native.pack_kept((c_prevs, *gates), 4) if keep else jnp.zeros((0,))
        return ys, c, h, kept

    kernel = functools.partial(_native.lstm_forward, reverse=backwards, keep=keep, **options)
    valid_ = _native.mask(valid, steps, batch)
    ys, c, h, kept = _native.on_cpu(kernel, xla_packed, w_h, xp, b, valid_, *carry0)
    return ys, (c, h), (carry0, ys, kept)


def _lstm_backward(cell, backwards, unroll, time_major, native, saved, cotangents):
    params, xs, valid, (carry0, ys, kept) = saved
    d_ys, (d_c, d_h) = cotangents
    w_h, h0, d_ys, dtype = (
        params["w_h"].astype(cell.dtype),
        carry0[1],
        d_ys.astype(ys.dtype),
        cell.dtype,
    )
    xla = functools.partial(
        _lstm_backward_xla, backwards=backwards, unroll=unroll, time_major=time_major
    )
    if isinstance(kept, tuple):  # the forward pass ran the XLA loop
        grads = xla(w_h, *kept, valid, d_ys, d_c, d_h, ys, h0, xs)
    else:

        def xla_packed(w_h, kept, *args):
            c_prevs, *gates = _native.unpack_kept(kept, 5, 4, *ys.shape)
            return xla(w_h, c_prevs, tuple(gates), *args)

        kernel = functools.partial(_native.lstm_backward, reverse=backwards, time_major=time_major)
        valid_, xs32 = _native.mask(valid, *ys.shape[:2]), xs.astype(jnp.float32)
        args = (w_h, kept, valid_, d_ys, d_c, d_h, ys, h0, xs32)
        grads = _native.on_cpu(kernel, xla_packed, *args)
    d_z, d_c0, d_h0, *weights = grads
    d_params, d_xs = _loop_gradients(params, time_major, d_z, *weights, xs, dtype)
    return d_params, d_xs, None, (d_c0, d_h0)


_lstm_scan = _with_backward(_lstm_forward, _lstm_backward)


# ------------------------------------------------------------------------------------------
# GRU (reset_after=True): r, z, n and the recurrent pre-activation hh_n are kept.


def _gru_forward_xla(w_h, xp, b, b_h, valid, h0, *, backwards, time_major, unroll):
    xp, b, b_h = _per_gate(xp, 3, time_major), _gates(b, 3), _gates(b_h, 3)

    def body(h, inputs):
        xp_t, valid_t = inputs
        hh = _gates(matmul(h, w_h, w_h.dtype), 3)
        hr, hz, hn = (a + c for a, c in zip(hh, b_h, strict=True))
        r = jax.nn.sigmoid(xp_t[0] + b[0] + hr)
        z = jax.nn.sigmoid(xp_t[1] + b[1] + hz)
        n = jnp.tanh(xp_t[2] + b[2] + r * hn)
        new = (1.0 - z) * n + z * h
        y = new
        if valid_t is not None:
            keep = valid_t[:, None]
            new, y = jnp.where(keep, new, h), jnp.where(keep, y, jnp.zeros_like(y))
        return new, (y, (r, z, n, hn))

    h, (ys, kept) = jax.lax.scan(body, h0, (xp, valid), reverse=backwards, unroll=unroll)
    return ys, h, kept


def _gru_backward_xla(w_h, kept, valid, d_ys, d_h, ys, h0, xs, *, backwards, unroll, time_major):
    w_h_t, dtype = w_h.T, w_h.dtype

    def body(d_h, inputs):
        h_prev, (r, z, n, hn), valid_t, d_y = inputs
        g = d_h + d_y
        d_an = g * (1.0 - z) * (1.0 - n * n)
        d_az = g * (h_prev - n) * z * (1.0 - z)
        d_ar = d_an * hn * r * (1.0 - r)
        d_xp = jnp.concatenate([d_ar, d_az, d_an], axis=-1)
        d_hh = jnp.concatenate([d_ar, d_az, d_an * r], axis=-1)
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            keep = valid_t[:, None]
            d_xp = jnp.where(keep, d_xp, jnp.zeros_like(d_xp))
            d_hh = jnp.where(keep, d_hh, jnp.zeros_like(d_hh))
            return jnp.where(keep, g * z + matmul(d_hh, w_h_t, dtype), d_h), (d_xp, d_hh)
        return g * z + matmul(d_hh, w_h_t, dtype), (d_xp, d_hh)

    h_prev = _states_before(backwards, h0, ys)
    d_h0, (d_xp, d_hh) = jax.lax.scan(
        body, d_h, (h_prev, kept, valid, d_ys), reverse=not backwards, unroll=unroll
    )
    d_w_h = _recurrent_weight_gradient(backwards, h0, ys, d_hh, dtype)
    d_w_i, d_b = _input_weight_gradient(xs, d_xp, time_major, dtype)
    return d_xp, d_h0, d_w_h, d_hh.sum(axis=(0, 1)), d_w_i, d_b


def _gru_forward(cell, params, xs, valid, h0, backwards, unroll, time_major, native, keep=True):
    dtype = cell.dtype
    (xp, b), w_h = _projection(params, xs, params["b"], dtype), params["w_h"].astype(dtype)
    b_h = params["b_h"].astype(accumulation_dtype(dtype))
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    options = {"time_major": time_major}
    xla = functools.partial(_gru_forward_xla, backwards=backwards, unroll=unroll, **options)
    if not _native_loops(native, w_h, xp, h0):
        ys, h, kept = xla(w_h, xp, b, b_h, valid, h0)
        return ys, h, (h0, ys, kept)

    def xla_packed(*args):
        ys, h, kept = xla(*args)
        return ys, h, (_native.pack_kept(kept, 3) if keep else jnp.zeros((0,)))

    kernel = functools.partial(_native.gru_forward, reverse=backwards, keep=keep, **options)
    valid_ = _native.mask(valid, steps, batch)
    ys, h, kept = _native.on_cpu(kernel, xla_packed, w_h, xp, b, b_h, valid_, h0)
    return ys, h, (h0, ys, kept)


def _gru_backward(cell, backwards, unroll, time_major, native, saved, cotangents):
    params, xs, valid, (h0, ys, kept) = saved
    d_ys, d_h = cotangents
    dtype, options = cell.dtype, {"time_major": time_major}
    w_h, d_ys = params["w_h"].astype(dtype), d_ys.astype(ys.dtype)
    xla = functools.partial(_gru_backward_xla, backwards=backwards, unroll=unroll, **options)
    if isinstance(kept, tuple):  # the forward pass ran the XLA loop
        grads = xla(w_h, kept, valid, d_ys, d_h, ys, h0, xs)
    else:

        def xla_packed(w_h, kept, *args):
            return xla(w_h, _native.unpack_kept(kept, 4, 3, *ys.shape), *args)

        kernel = functools.partial(_native.gru_backward, reverse=backwards, **options)
        valid_, xs32 = _native.mask(valid, *ys.shape[:2]), xs.astype(jnp.float32)
        grads = _native.on_cpu(kernel, xla_packed, w_h, kept, valid_, d_ys, d_h, ys, h0, xs32)
    d_xp, d_h0, d_w_h, d_b_h, d_w_i, d_b = grads
    d_params = _cast_like({"w_i": d_w_i, "w_h": d_w_h, "b": d_b, "b_h": d_b_h}, params)
    return d_params, _input_cotangent(params, time_major, d_xp, xs, dtype), None, d_h0


_gru_scan = _with_backward(_gru_forward, _gru_backward)


def has_fused_path(cell: Cell) -> bool:
    """Whether :func:`fused_scan` runs ``cell``."""
    return isinstance(cell, SimpleRNN | LSTM) or (isinstance(cell, GRU) and cell.reset_after)


def fused_scan(
    cell: Cell,
    backwards: bool,
    unroll: int | bool,
    time_major: bool,
    native: bool,
    params: Params,
    xs: Array,
    valid: Array | None,
    carry0,
):
    """``(ys, carry)`` of ``cell`` over ``xs`` (either layout), ``ys`` time-major; ``valid``
    ``[time, batch]`` bool (a valid prefix per sequence) or ``None``. ``backwards`` scans
    from the last step (only without ``valid``: masked runs are reversed on the data).
    ``cell.dtype`` must be set (the computation dtype); ``ys`` and the carry come out in its
    accumulation dtype, the gradients of ``params`` in their own dtypes. ``native``: run
    the loops as jaxrnn's CPU kernels on a CPU (float32 only)."""
    scan = _simple_scan if isinstance(cell, SimpleRNN) else _lstm_scan
    if isinstance(cell, GRU):
        scan = _gru_scan
    return scan(cell, backwards, unroll, time_major, native, params, xs, valid, carry0)
