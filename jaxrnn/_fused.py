"""The fused path of :func:`jaxrnn.rnn`: hoisted input projections, hand-written backward passes.

For ``SimpleRNN``, ``LSTM`` and ``GRU(reset_after=True)`` (see ``jaxrnn.drivers`` for when it
is used). The input half of every step is one matmul over all steps before the loop, kept per
gate (``[time, batch, hidden]`` each: XLA:CPU runs an elementwise fusion that slices several
gates out of one loop-indexed ``[time, batch, k*hidden]`` buffer several times slower); the
backward loop holds only the recurrent matmul and the cell's elementwise derivative, and the
gradients of ``w_i``, ``w_h``, the biases and ``xs`` are one matmul each after it.

Every per-step value the forward loop writes is a separate buffer write (one more operation
per step, which dominates small models on CPU), so each cell keeps only what its backward
pass needs, and the previous ``h`` is always the previous output: the ``SimpleRNN`` keeps
nothing but its outputs (its derivative is a function of the output); the LSTM keeps the
previous cell state and its four gate activations (its backward loop then has no exp or
divide: about 5% off W1 and W2 and 12% off W5 in ``benchmarks/NOTES.md``); the GRU keeps the
recurrent pre-activations and differentiates its elementwise step with ``jax.vjp``. All
functions take and return time-major per-step arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn.cells import GRU, LSTM, Cell, Params, SimpleRNN

Array = jax.Array


def _gru_pointwise(h, xp, hh):
    """The elementwise half of ``GRU(reset_after=True).step`` (``xp``, ``hh`` split per gate)."""
    (xr, xz, xn), (hr, hz, hn) = xp, hh
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    h = (1.0 - z) * n + z * h
    return h, h


def _recurrent(cell: Cell, params: Params, h: Array) -> Array:
    """The recurrent pre-activation ``hh`` of the cells that have a fused path."""
    hh = h @ params["w_h"]
    return hh + params["b_h"] if isinstance(cell, GRU) else hh


def _gates(a: Array, n: int) -> tuple[Array, ...]:
    return tuple(jnp.split(a, n, axis=-1))


def _time_major_gates(cell, params, xs, time_major):
    """The input projection of all steps, per gate, each ``[time, batch, hidden]``.

    Batch-first ``xs`` is projected as it lies and each gate block is transposed to
    time-major on its way out of the split (one copy that is needed anyway), instead of
    transposing ``xs`` first."""
    lead = xs.shape[:2]
    xp = cell.project_inputs(params, xs.reshape(lead[0] * lead[1], xs.shape[2]))
    gates = _gates(xp.reshape(*lead, -1), cell.gates)
    return gates if time_major else tuple(jnp.swapaxes(g, 0, 1) for g in gates)


def _with_backward(forward: Callable, backward: Callable) -> Callable:
    """``scan(cell, backwards, unroll, time_major, params, xs, valid, carry0) -> (ys, carry)``
    as a ``jax.custom_vjp``, from ``forward(cell, params, xs, valid, carry0, backwards,
    unroll, time_major) -> (ys, carry, kept)`` and ``backward(cell, backwards, unroll,
    time_major, (params, xs, valid, kept), (d_ys, d_carry))``."""

    def scan(cell, backwards, unroll, time_major, params, xs, valid, carry0):
        ys, carry, _ = forward(cell, params, xs, valid, carry0, backwards, unroll, time_major)
        return ys, carry

    def scan_fwd(cell, backwards, unroll, time_major, params, xs, valid, carry0):
        ys, carry, kept = forward(cell, params, xs, valid, carry0, backwards, unroll, time_major)
        return (ys, carry), (params, xs, valid, kept)

    scan = jax.custom_vjp(scan, nondiff_argnums=(0, 1, 2, 3))
    scan.defvjp(scan_fwd, backward)
    return scan


def _previous_h(cell, backwards, carry0, ys):
    """The ``h`` before every step: the previous output (time-major). Past a sequence's length
    (where ``ys`` is zero) the values are wrong, and unused: those steps get no gradient."""
    h0 = cell.hidden(carry0)[None]
    return jnp.concatenate([ys[1:], h0]) if backwards else jnp.concatenate([h0, ys[:-1]])


# ------------------------------------------------------------------------------------------
# GRU (reset_after=True): the recurrent pre-activations are kept; its elementwise step is
# differentiated with ``jax.vjp``.


def _gru_forward(cell, params, xs, valid, h0, backwards, unroll, time_major):
    xp = _time_major_gates(cell, params, xs, time_major)

    def body(h, inputs):
        xp_t, valid_t = inputs
        hh = _gates(_recurrent(cell, params, h), 3)
        new, y = _gru_pointwise(h, xp_t, hh)
        if valid_t is not None:
            keep = valid_t[:, None]
            new, y = jnp.where(keep, new, h), jnp.where(keep, y, jnp.zeros_like(y))
        return new, (y, hh)

    h, (ys, hhs) = jax.lax.scan(body, h0, (xp, valid), reverse=backwards, unroll=unroll)
    return ys, h, (h0, ys, xp, hhs)


def _gru_backward(cell, backwards, unroll, time_major, saved, cotangents):
    params, xs, valid, (h0, ys, xp, hhs) = saved
    d_ys, d_h = cotangents
    h_prev = _previous_h(cell, backwards, h0, ys)
    w_h_t = params["w_h"].T

    def body(d_h, inputs):
        h, xp_t, hh_t, valid_t, d_y = inputs
        _, vjp = jax.vjp(_gru_pointwise, h, xp_t, hh_t)
        if valid_t is not None:
            keep = valid_t[:, None]
            d_y = jnp.where(keep, d_y, jnp.zeros_like(d_y))
        d_prev, d_xp, d_hh = vjp((d_h, d_y))
        d_xp, d_hh = jnp.concatenate(d_xp, axis=-1), jnp.concatenate(d_hh, axis=-1)
        # h entered the step through the elementwise part and through ``h @ w_h``.
        d_prev = d_prev + d_hh @ w_h_t
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            d_prev = jnp.where(keep, d_prev, d_h)
            d_xp = jnp.where(keep, d_xp, jnp.zeros_like(d_xp))
            d_hh = jnp.where(keep, d_hh, jnp.zeros_like(d_hh))
        return d_prev, (d_xp, d_hh)

    d_h0, (d_xp, d_hh) = jax.lax.scan(
        body, d_h, (h_prev, xp, hhs, valid, d_ys), reverse=not backwards, unroll=unroll
    )
    d_params, d_xs = _weight_gradients(cell, params, xs, time_major, h_prev, d_xp, d_hh)
    return d_params, d_xs, None, d_h0


_gru_scan = _with_backward(_gru_forward, _gru_backward)


def _weight_gradients(cell, params, xs, time_major, h_prev, d_xp, d_hh):
    """The gradients of the parameters and of ``xs`` from all steps at once (one matmul each),
    given the state before each step and the cotangents of the input and recurrent
    pre-activations (time-major, gates concatenated)."""
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    steps, batch, features = xs_tm.shape
    flat = xs_tm.reshape(steps * batch, features)
    _, project_vjp = jax.vjp(cell.project_inputs, params, flat)
    d_params, d_flat = project_vjp(d_xp.reshape(steps * batch, -1))
    h_flat = h_prev.reshape(steps * batch, -1)
    (d_params_h,) = jax.vjp(lambda p: _recurrent(cell, p, h_flat), params)[1](
        d_hh.reshape(steps * batch, -1)
    )
    d_params = jax.tree.map(jnp.add, d_params, d_params_h)
    d_xs = d_flat.reshape(xs_tm.shape)
    return d_params, d_xs if time_major else jnp.swapaxes(d_xs, 0, 1)


# ------------------------------------------------------------------------------------------
# SimpleRNN: only the outputs are kept.


def _simple_forward(cell, params, xs, valid, h0, backwards, unroll, time_major):
    act = jnp.tanh if cell.activation == "tanh" else jax.nn.relu
    (xp,) = _time_major_gates(cell, params, xs, time_major)

    def body(h, inputs):
        xp_t, valid_t = inputs
        new = act(xp_t + h @ params["w_h"])
        if valid_t is None:
            return new, new
        keep = valid_t[:, None]
        return jnp.where(keep, new, h), jnp.where(keep, new, jnp.zeros_like(new))

    h, ys = jax.lax.scan(body, h0, (xp, valid), reverse=backwards, unroll=unroll)
    return ys, h, (h0, ys)


def _simple_backward(cell, backwards, unroll, time_major, saved, cotangents):
    params, xs, valid, (h0, ys) = saved
    d_ys, d_h = cotangents
    w_h_t = params["w_h"].T

    def body(d_h, inputs):
        y_t, d_y, valid_t = inputs
        # Past a sequence's length y is zero and its state is copied: the state's cotangent
        # passes through and the step gets none.
        g = d_h + d_y
        d_z = g * (1.0 - y_t * y_t) if cell.activation == "tanh" else jnp.where(y_t > 0, g, 0.0)
        if valid_t is not None:
            keep = valid_t[:, None]
            d_z = jnp.where(keep, d_z, jnp.zeros_like(d_z))
            return jnp.where(keep, d_z @ w_h_t, d_h), d_z
        return d_z @ w_h_t, d_z

    d_h0, d_z = jax.lax.scan(body, d_h, (ys, d_ys, valid), reverse=not backwards, unroll=unroll)
    # The state before each step is the previous step's output (where d_z is not zero).
    if backwards:
        h_prev = jnp.concatenate([ys[1:], h0[None]])
    else:
        h_prev = jnp.concatenate([h0[None], ys[:-1]])
    d_params, d_xs = _weight_gradients(cell, params, xs, time_major, h_prev, d_z, d_z)
    return d_params, d_xs, None, d_h0


_simple_scan = _with_backward(_simple_forward, _simple_backward)


# ------------------------------------------------------------------------------------------
# LSTM: the gate activations are kept, so that the backward loop has no exp or divide.


def _lstm_forward(cell, params, xs, valid, carry0, backwards, unroll, time_major):
    xp = _time_major_gates(cell, params, xs, time_major)

    def body(carry, inputs):
        xp_t, valid_t = inputs
        c_prev, h_prev = carry
        hh = _gates(h_prev @ params["w_h"], 4)
        zi, zf, zg, zo = (a + b for a, b in zip(xp_t, hh, strict=True))
        if cell.forget_bias:
            zf = zf + cell.forget_bias
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

    carry, (ys, c_prevs, gates) = jax.lax.scan(
        body, carry0, (xp, valid), reverse=backwards, unroll=unroll
    )
    return ys, carry, (carry0, ys, c_prevs, gates)


def _lstm_backward(cell, backwards, unroll, time_major, saved, cotangents):
    params, xs, valid, (carry0, ys, c_prevs, gates) = saved
    d_ys, (d_c, d_h) = cotangents
    w_h_t = params["w_h"].T

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
            return (jnp.where(keep, d_c_prev, d_c), jnp.where(keep, d_z @ w_h_t, d_h)), d_z
        return (d_c_prev, d_z @ w_h_t), d_z

    d_carry0, d_z = jax.lax.scan(
        body, (d_c, d_h), (c_prevs, gates, valid, d_ys), reverse=not backwards, unroll=unroll
    )
    h_prev = _previous_h(cell, backwards, carry0, ys)
    d_params, d_xs = _weight_gradients(cell, params, xs, time_major, h_prev, d_z, d_z)
    return d_params, d_xs, None, d_carry0


_lstm_scan = _with_backward(_lstm_forward, _lstm_backward)


def has_fused_path(cell: Cell) -> bool:
    """Whether :func:`fused_scan` runs ``cell``."""
    return isinstance(cell, SimpleRNN | LSTM) or (isinstance(cell, GRU) and cell.reset_after)


def fused_scan(
    cell: Cell,
    backwards: bool,
    unroll: int | bool,
    time_major: bool,
    params: Params,
    xs: Array,
    valid: Array | None,
    carry0,
):
    """``(ys, carry)`` of ``cell`` over ``xs`` (either layout), ``ys`` time-major; ``valid``
    ``[time, batch]`` bool (a valid prefix per sequence) or ``None``. ``backwards`` scans
    from the last step (only without ``valid``: masked runs are reversed on the data)."""
    if isinstance(cell, SimpleRNN):
        return _simple_scan(cell, backwards, unroll, time_major, params, xs, valid, carry0)
    if isinstance(cell, LSTM):
        return _lstm_scan(cell, backwards, unroll, time_major, params, xs, valid, carry0)
    return _gru_scan(cell, backwards, unroll, time_major, params, xs, valid, carry0)
