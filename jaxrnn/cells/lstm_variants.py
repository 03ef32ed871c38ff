"""The LSTM variants' fused XLA loop: ``proj_size``, ``peepholes``, ``cell_clip`` and
``proj_clip`` in any combination (not ``layer_norm``), with its hand-written backward pass.

The inputs are projected time-major, one matmul per gate; ``w_h``, ``w_i`` and the bias get
their gradients from one matmul after the backward loop, ``[h_prev | x | 1]^T d_z`` over all
``T * B`` rows (a computation narrower than float32 sums the bias's from ``d_z`` in float32);
the peepholes' gradients are summed inside the backward loop. The forward loop keeps the cell
state before each step and the four gate activations (``i, f, g, o``, after the peepholes).
With a projection the backward loop emits ``d_r`` (``[T, B, P]``, the cotangent of the
projection's output) and ``w_hr``'s gradient is ``sum_t m_t^T d_r_t`` with ``m = o * tanh(c)``
recomputed from what was kept; ``proj_clip``'s mask is ``|h| < proj_clip`` read from the
outputs. ``docs/design/fused-loops.md`` gives the reasons and the measurements.

The loop runs in XLA on every platform (the variants have no CPU kernels: ``Loop.native`` is
ignored). ``resets`` (``[T, B]`` bool, time-major, or ``None``) zero a row's carry just before a
step; no cotangent flows through a reset, and the zeros the step used enter the weights'
gradients.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn.cells import _loops
from jaxrnn.cells._base import accumulation_dtype, input_bias, matmul


def _rows(a):
    """``[T, B, k] -> [T * B, k]``."""
    return a.reshape(-1, a.shape[-1])


def _cell_state(c_prev, i, f, g, cell_clip):
    """``(c, inside)``: the new cell state and where the clip left it unchanged (``None``
    without a clip)."""
    c = f * c_prev + i * g
    if cell_clip is None:
        return c, None
    return jnp.clip(c, -cell_clip, cell_clip), jnp.abs(c) < cell_clip


def forward_xla(
    weights,
    xp,
    b,
    valid,
    resets,
    carry0,
    *,
    forget_bias,
    cell_clip,
    proj_clip,
    backwards,
    unroll,
    keep,
):
    """``(ys, c, h, kept)`` from the four gates' projected inputs ``xp`` (``[T, B, H]``
    each) and bias ``b`` (``[4H]``); ``w_hr`` and ``peep`` (``(w_ci, w_cf, w_co)``) are
    ``None`` where the cell has none (``weights``: ``(w_h, w_hr, peep)``, as :func:`_weights`
    returns them; ``carry0``: ``(c0, h0)``); ``kept``: ``(c_prevs, (i, f, g, o))`` per step, or
    ``()`` where ``keep`` is false."""
    w_h, w_hr, peep = weights
    b = _loops.split_gates(b, 4)
    dtype = w_h.dtype

    def body(carry, inputs):
        xp_t, valid_t, reset_after_t = inputs
        c_prev, h_prev = carry
        hh = _loops.split_gates(matmul(h_prev, w_h, dtype), 4)
        zi, zf, zg, zo = (x + b_ + h for x, b_, h in zip(xp_t, b, hh, strict=True))
        if forget_bias:
            zf = zf + forget_bias
        if peep is not None:
            zi, zf = zi + peep[0] * c_prev, zf + peep[1] * c_prev
        i, f, g = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg)
        c, _ = _cell_state(c_prev, i, f, g, cell_clip)
        if peep is not None:
            zo = zo + peep[2] * c
        o = jax.nn.sigmoid(zo)
        h = o * jnp.tanh(c)
        if w_hr is not None:
            h = matmul(h, w_hr, dtype)
            if proj_clip is not None:
                h = jnp.clip(h, -proj_clip, proj_clip)
        y = h
        if valid_t is not None:
            # A padded step copies the carry (a reset is never padded).
            live = valid_t[:, None]
            c, h = jnp.where(live, c, c_prev), jnp.where(live, h, h_prev)
            y = jnp.where(live, y, jnp.zeros_like(y))
        # The next step starts from zeros where it resets (and keeps them as its c_prev).
        carry = _loops.zero_where(reset_after_t, c, h)
        return carry, (y, (c_prev, (i, f, g, o)) if keep else ())

    after, carry0 = _loops.resets_after(backwards, resets, carry0)
    (c, h), (ys, kept) = jax.lax.scan(
        body, carry0, (xp, valid, after), reverse=backwards, unroll=unroll
    )
    return ys, c, h, kept


def backward_xla(
    weights,
    kept,
    valid,
    resets,
    d_ys,
    d_carry,
    ys,
    *,
    cell_clip,
    proj_clip,
    backwards,
    unroll,
):
    """``(d_c0, d_h0, d_z, d_r, d_peep)``: the initial state's cotangents, those of the four
    gates' pre-activations (``[T, B, 4H]``), with a projection those of its output before
    ``proj_clip`` (``[T, B, P]``, else ``None``), and with peepholes their gradients
    (``[3, H]``: ``w_ci, w_cf, w_co``; else ``None``)."""
    (w_h, w_hr, peep), (d_c, d_h) = weights, d_carry
    dtype = w_h.dtype
    w_h_t = w_h.T
    w_hr_t = None if w_hr is None else w_hr.T
    clipped_ys = ys if proj_clip is not None else None

    def body(d_carry, inputs):
        (c_prev, (i, f, g, o)), valid_t, reset_after_t, d_y, y_t = inputs
        # The carry this step handed on was zeroed where the next step resets: no cotangent
        # flows back through it (zeroed here, as the forward loop zeroes it, so that
        # all-False resets compile to exactly what no resets do).
        d_c, d_h = _loops.zero_where(reset_after_t, *d_carry[:2])
        d_peep = d_carry[2]
        c, inside = _cell_state(c_prev, i, f, g, cell_clip)
        tanh_c = jnp.tanh(c)
        d_r = d_h + d_y  # h is both the output and the next step's state
        if w_hr_t is not None:
            if y_t is not None:
                d_r = jnp.where(jnp.abs(y_t) < proj_clip, d_r, jnp.zeros_like(d_r))
            d_m = matmul(d_r, w_hr_t, dtype)
        else:
            d_m = d_r
        d_o = d_m * tanh_c * o * (1.0 - o)
        d_c_all = d_c + d_m * o * (1.0 - tanh_c * tanh_c)
        if peep is not None:
            d_c_all = d_c_all + d_o * peep[2]
        if inside is not None:
            d_c_all = jnp.where(inside, d_c_all, jnp.zeros_like(d_c_all))
        d_i = d_c_all * g * i * (1.0 - i)
        d_f = d_c_all * c_prev * f * (1.0 - f)
        d_g = d_c_all * i * (1.0 - g * g)
        d_c_prev = d_c_all * f
        if peep is not None:
            d_c_prev = d_c_prev + d_i * peep[0] + d_f * peep[1]
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            live = valid_t[:, None]
            d_i, d_f, d_g, d_o, d_r = (
                jnp.where(live, a, jnp.zeros_like(a)) for a in (d_i, d_f, d_g, d_o, d_r)
            )
        d_z = jnp.concatenate([d_i, d_f, d_g, d_o], axis=-1)
        d_h_prev = matmul(d_z, w_h_t, dtype)
        if valid_t is not None:
            d_h_prev = jnp.where(live, d_h_prev, d_h)
            d_c_prev = jnp.where(live, d_c_prev, d_c)
        if peep is not None:
            sums = [(d_i * c_prev).sum(0), (d_f * c_prev).sum(0), (d_o * c).sum(0)]
            d_peep = d_peep + jnp.stack(sums)
        return (d_c_prev, d_h_prev, d_peep), (d_z, d_r if w_hr_t is not None else None)

    d_peep = None if peep is None else jnp.zeros((3, d_c.shape[-1]), d_c.dtype)
    after = _loops.resets_after(backwards, resets, ())[0]
    (d_c0, d_h0, d_peep), (d_z, d_r) = jax.lax.scan(
        body,
        (d_c, d_h, d_peep),
        (kept, valid, after, d_ys, clipped_ys),
        reverse=not backwards,
        unroll=unroll,
    )
    if resets is not None:  # the initial carry was zeroed where the first step resets
        d_c0, d_h0 = _loops.zero_where(resets[-1 if backwards else 0], d_c0, d_h0)
    return d_c0, d_h0, d_z, d_r, d_peep


def _weights(cell, params):
    """``(w_h, w_hr, peep)``: ``w_h`` and ``w_hr`` in the computation dtype, the peepholes
    ``(w_ci, w_cf, w_co)`` in its accumulation dtype; ``None`` where the cell has none."""
    dtype = cell.dtype
    acc = accumulation_dtype(dtype)
    w_hr = params["w_hr"].astype(dtype) if cell.proj_size else None
    peep = None
    if cell.peepholes:
        peep = tuple(params[k].astype(acc) for k in ("w_ci", "w_cf", "w_co"))
    return params["w_h"].astype(dtype), w_hr, peep


def _time_major(xs, time_major):
    return xs if time_major else jnp.swapaxes(xs, 0, 1)


def _forward(cell, loop, params, xs, valid, resets, carry0, keep=True):
    backwards, unroll, time_major, native = dataclasses.astuple(loop)
    del native  # the variants have no kernels: always the XLA loop
    dtype = cell.dtype
    xs_tm = _time_major(xs, time_major)
    xp = tuple(matmul(xs_tm, w, dtype) for w in _loops.split_gates(params["w_i"], 4))
    ys, c, h, kept = forward_xla(
        _weights(cell, params),
        xp,
        input_bias(params).astype(accumulation_dtype(dtype)),
        valid,
        resets,
        carry0,
        forget_bias=cell.forget_bias,
        cell_clip=cell.cell_clip,
        proj_clip=cell.proj_clip,
        backwards=backwards,
        unroll=unroll,
        keep=keep,
    )
    return ys, (c, h), (carry0, ys, kept)


def _weight_gradients(h_prev, xs_tm, d_z, dtype):
    """``(d_w_h, d_w_i, d_b)`` as one matmul, ``[h_prev | x | 1]^T d_z``; the bias's in
    float32 from ``d_z`` itself where ``dtype`` is narrower (its operands are rounded to
    ``dtype``)."""
    acc = accumulation_dtype(dtype)
    narrow = jnp.dtype(dtype).itemsize < 4
    parts = [h_prev.astype(acc), xs_tm.astype(acc)]
    if not narrow:
        parts.append(jnp.ones((*xs_tm.shape[:2], 1), acc))
    grads = matmul(_rows(jnp.concatenate(parts, axis=-1)).T, _rows(d_z), dtype)
    size = h_prev.shape[-1]
    d_w_h, d_w_i = grads[:size], grads[size : size + xs_tm.shape[-1]]
    d_b = d_z.astype(acc).sum(axis=(0, 1)) if narrow else grads[-1]
    return d_w_h, d_w_i, d_b


def _backward(cell, loop, saved, cotangents):
    backwards, unroll, time_major = loop.backwards, loop.unroll, loop.time_major
    params, xs, valid, resets, (carry0, ys, kept) = saved
    d_ys, (d_c, d_h) = cotangents
    dtype = cell.dtype
    w_h, w_hr, peep = weights = _weights(cell, params)
    d_c0, d_h0, d_z, d_r, d_peep = backward_xla(
        weights,
        kept,
        valid,
        resets,
        d_ys.astype(ys.dtype),
        (d_c, d_h),
        ys,
        cell_clip=cell.cell_clip,
        proj_clip=cell.proj_clip,
        backwards=backwards,
        unroll=unroll,
    )
    h_prev = _loops.states_before(backwards, carry0[1], ys, resets)
    d_w_h, d_w_i, d_b = _weight_gradients(h_prev, _time_major(xs, time_major), d_z, dtype)
    grads = {"w_i": d_w_i, "w_h": d_w_h, "b": d_b}
    if "b_h" in params:
        grads["b_h"] = d_b
    if d_peep is not None:
        grads["w_ci"], grads["w_cf"], grads["w_co"] = d_peep
    if w_hr is not None:
        c_prevs, (i, f, g, o) = kept
        m = o * jnp.tanh(_cell_state(c_prevs, i, f, g, cell.cell_clip)[0])
        grads["w_hr"] = matmul(_rows(m).T, _rows(d_r), dtype)
    d_xs = _loops.input_cotangent(params, time_major, d_z, xs, dtype)
    return _loops.cast_like(grads, params), d_xs, None, None, (d_c0, d_h0)


scan = _loops.with_backward(_forward, _backward)
