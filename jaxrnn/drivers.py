"""Time drivers: run a cell over a sequence, with ``lax.scan`` or with a Python loop.

``rnn`` and ``static_rnn`` share one signature and one step function, so they give the same
numbers; they differ only in how time is looped (one compiled loop vs ``T`` copies of the step
in the graph). Both

* take ``xs`` of shape ``[batch, time, input_size]`` (``[time, batch, input_size]`` with
  ``time_major=True``) and return ``ys`` of shape ``[batch, time, hidden_size]`` (same layout)
  and the final carry (each leaf ``[batch, hidden_size]``);
* with ``lengths`` (int ``[batch]``), treat steps ``t >= lengths[b]`` as padding: ``ys[b, t]``
  is exactly zero there, the carry stops changing after step ``lengths[b] - 1`` (so the final
  carry is the state at the last valid step, or the initial carry for length 0, as TF1
  ``dynamic_rnn(sequence_length=...)``), and padded inputs get exactly zero gradient;
* with ``reverse=True``, process each sequence's valid prefix from its last valid step to its
  first and write each output back at its original time position.

How ``rnn`` computes (the numbers are the same either way; ``benchmarks/NOTES.md`` has the
measurements behind each choice):

* For ``SimpleRNN``, ``LSTM`` and ``GRU(reset_after=True)``, without ``remat`` or recurrent
  dropout (the fused path): the input half of every step (``cell.project_inputs``) is one
  matmul over all steps before the loop, and the backward pass is written by hand
  (``jax.custom_vjp``): the backward loop holds only the recurrent matmul and the cell's
  elementwise derivative, and the gradients of ``w_i``, ``w_h``, the biases and ``xs`` are one
  matmul each after it. Per-step values are kept gate by gate (``[time, batch, hidden]``
  each): XLA:CPU runs an elementwise fusion that slices several gates out of one loop-indexed
  ``[time, batch, k*hidden]`` buffer several times slower than one that reads separate
  buffers. Forward-mode differentiation (``jax.jvp``) of this path is not defined.
* Otherwise (``GRU(reset_after=False)``, ``remat``, recurrent dropout) ``lax.scan`` is
  differentiated by JAX, with the input projection inside the step; it supports ``jax.jvp``.
  ``static_rnn`` projects all steps at once and is differentiated by JAX.
* ``remat`` trades compute for memory in the backward pass (see :func:`rnn`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import GRU, LSTM, Carry, Cell, Params, SimpleRNN
from jaxrnn.masking import reverse_sequence

Array = jax.Array


def _step_fn(cell: Cell, params: Params, hidden_mask: Array | None) -> Callable:
    """``(carry, xp_t, valid_t) -> (carry, y_t)`` for projected inputs, masked by length.

    ``hidden_mask`` (``[batch, H]``), when given, multiplies ``h`` before it enters the
    recurrent matmul at every step (variational recurrent dropout); the carry kept is unmasked.
    """

    def step(carry, xp_t, valid_t):
        carry_in = carry
        if hidden_mask is not None:
            carry_in = cell.with_hidden(carry, cell.hidden(carry) * hidden_mask)
        new_carry, y = cell.step(params, carry_in, xp_t)
        if valid_t is not None:
            keep = valid_t[:, None]
            new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        return new_carry, y

    return step


# ------------------------------------------------------------------------------------------
# The fused path: hoisted projections and a hand-written backward pass.


def _pointwise_fn(cell: Cell) -> Callable | None:
    """``(carry, xp, hh) -> (carry, y)``: the elementwise half of ``cell.step``, with ``xp`` and
    ``hh`` (the input and recurrent pre-activations) split per gate. ``None``: no fused path."""
    if isinstance(cell, SimpleRNN):
        act = jnp.tanh if cell.activation == "tanh" else jax.nn.relu

        def simple(carry, xp, hh):
            h = act(xp[0] + hh[0])
            return h, h

        return simple
    if isinstance(cell, LSTM):

        def lstm(carry, xp, hh):
            c, _ = carry
            zi, zf, zg, zo = (a + b for a, b in zip(xp, hh, strict=True))
            if cell.forget_bias:
                zf = zf + cell.forget_bias
            c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
            h = jax.nn.sigmoid(zo) * jnp.tanh(c)
            return (c, h), h

        return lstm
    if isinstance(cell, GRU) and cell.reset_after:

        def gru(h, xp, hh):
            (xr, xz, xn), (hr, hz, hn) = xp, hh
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1.0 - z) * n + z * h
            return h, h

        return gru
    return None


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


def _fused_forward(cell, params, xs, valid, carry0, backwards, unroll, time_major):
    pointwise = _pointwise_fn(cell)
    xp = _time_major_gates(cell, params, xs, time_major)

    def body(carry, inputs):
        xp_t, valid_t = inputs
        hh = _gates(_recurrent(cell, params, cell.hidden(carry)), cell.gates)
        new_carry, y = pointwise(carry, xp_t, hh)
        if valid_t is not None:
            keep = valid_t[:, None]
            new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        return new_carry, (y, carry, hh)

    carry, (ys, carries, hhs) = jax.lax.scan(
        body, carry0, (xp, valid), reverse=backwards, unroll=unroll
    )
    return ys, carry, (carries, xp, hhs)


def _fused_scan(cell, backwards, unroll, time_major, params, xs, valid, carry0):
    """``(ys, carry)``, ``ys`` time-major, over ``xs`` in either layout; ``valid``
    ``[time, batch]`` bool or ``None``."""
    ys, carry, _ = _fused_forward(cell, params, xs, valid, carry0, backwards, unroll, time_major)
    return ys, carry


def _fused_scan_fwd(cell, backwards, unroll, time_major, params, xs, valid, carry0):
    ys, carry, residuals = _fused_forward(
        cell, params, xs, valid, carry0, backwards, unroll, time_major
    )
    return (ys, carry), (params, xs, valid, residuals)


def _fused_scan_bwd(cell, backwards, unroll, time_major, saved, cotangents):
    params, xs, valid, (carries, xp, hhs) = saved
    d_ys, d_carry = cotangents
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    steps, batch, features = xs_tm.shape
    pointwise = _pointwise_fn(cell)
    additive = not isinstance(cell, GRU)  # xp and hh enter only through their sum

    def body(d_carry, inputs):
        carry, xp_t, hh_t, valid_t, d_y = inputs
        _, vjp = jax.vjp(pointwise, carry, xp_t, hh_t)
        if valid_t is not None:
            keep = valid_t[:, None]
            d_y = jnp.where(keep, d_y, jnp.zeros_like(d_y))
        d_prev, d_xp, d_hh = vjp((d_carry, d_y))
        d_hh = jnp.concatenate(d_hh, axis=-1)
        # h entered the step through the cell's elementwise part and through ``h @ w_h``.
        d_h = cell.hidden(d_prev) + d_hh @ params["w_h"].T
        d_prev = cell.with_hidden(d_prev, d_h)
        d_xp = d_hh if additive else jnp.concatenate(d_xp, axis=-1)
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            d_prev = jax.tree.map(lambda n, o: jnp.where(keep, n, o), d_prev, d_carry)
            d_xp = jnp.where(keep, d_xp, jnp.zeros_like(d_xp))
            d_hh = d_xp if additive else jnp.where(keep, d_hh, jnp.zeros_like(d_hh))
        return d_prev, (d_xp, d_hh) if not additive else d_xp

    d_carry0, d_steps = jax.lax.scan(
        body,
        d_carry,
        (carries, xp, hhs, valid, d_ys),
        reverse=not backwards,
        unroll=unroll,
    )
    d_xp, d_hh = d_steps if not additive else (d_steps, d_steps)
    # The weight gradients of all steps at once: one matmul each.
    flat = xs_tm.reshape(steps * batch, features)
    _, project_vjp = jax.vjp(cell.project_inputs, params, flat)
    d_params, d_flat = project_vjp(d_xp.reshape(steps * batch, -1))
    h_prev = cell.hidden(carries).reshape(steps * batch, -1)
    (d_params_h,) = jax.vjp(lambda p: _recurrent(cell, p, h_prev), params)[1](
        d_hh.reshape(steps * batch, -1)
    )
    d_params = jax.tree.map(jnp.add, d_params, d_params_h)
    d_xs = d_flat.reshape(xs_tm.shape)
    return d_params, d_xs if time_major else jnp.swapaxes(d_xs, 0, 1), None, d_carry0


_fused_scan = jax.custom_vjp(_fused_scan, nondiff_argnums=(0, 1, 2, 3))
_fused_scan.defvjp(_fused_scan_fwd, _fused_scan_bwd)


def _check_remat(remat) -> None:
    if remat is True or remat is False:
        return
    if not isinstance(remat, int) or isinstance(remat, bool) or remat < 1:
        raise ValueError(f"remat must be False, True or a positive int, got {remat!r}")


def _autodiff_scan(cell, params, xs, valid, carry0, backwards, unroll, remat, hidden_mask):
    """``lax.scan`` differentiated by JAX (the path of ``remat`` and recurrent dropout).

    The input projection stays inside the step: differentiated by autodiff, hoisting it was
    slower on XLA:CPU (``benchmarks/NOTES.md``). ``remat=True`` checkpoints each step (only
    the carry and the input of each step are kept for the backward pass); ``remat=k`` scans
    blocks of ``k`` steps and checkpoints each block (only the carry at each block boundary is
    kept, and each block's steps are recomputed in the backward pass).
    """
    step = _step_fn(cell, params, hidden_mask)

    def body(carry, inputs):
        x_t, valid_t = inputs
        return step(carry, cell.project_inputs(params, x_t), valid_t)

    if remat is True or remat == 1:
        body = jax.checkpoint(body, prevent_cse=False)
    if remat is False or remat is True or remat == 1:
        carry, ys = jax.lax.scan(body, carry0, (xs, valid), reverse=backwards, unroll=unroll)
        return ys, carry

    steps, batch = xs.shape[:2]
    blocks = -(-steps // remat)
    pad = blocks * remat - steps
    if valid is None:
        valid = jnp.ones((steps, batch), bool)
    if pad:  # padded steps are invalid: they copy the carry and output zeros
        xs = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
        valid = jnp.concatenate([valid, jnp.zeros((pad, batch), bool)])
    xs = xs.reshape(blocks, remat, *xs.shape[1:])
    valid = valid.reshape(blocks, remat, batch)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def block(carry, inputs):
        return jax.lax.scan(body, carry, inputs, reverse=backwards, unroll=unroll)

    carry, ys = jax.lax.scan(block, carry0, (xs, valid), reverse=backwards)
    ys = ys.reshape(blocks * remat, *ys.shape[2:])
    return ys[:steps], carry


def _drive(
    cell: Cell,
    params: Params,
    xs: Array,
    lengths: Array | None,
    initial_carry: Carry | None,
    reverse: bool,
    unroll: int | bool,
    time_major: bool,
    *,
    static: bool,
    hidden_mask: Array | None = None,
    remat: bool | int = False,
) -> tuple[Array, Carry]:
    _checks.check_xs(xs, time_major=time_major)
    _checks.check_unroll(unroll)
    _check_remat(remat)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    _checks.check_params(cell, params, xs.shape[-1])
    if lengths is not None:
        _checks.check_lengths(lengths, batch, steps)
    if initial_carry is None:
        initial_carry = cell.initial_carry(batch, xs.dtype)
    else:
        _checks.check_carry(cell, initial_carry, batch)

    valid = None
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        valid = jnp.arange(steps)[:, None] < lengths[None, :]  # [time, batch]
        if reverse:
            xs = reverse_sequence(xs, lengths, time_major=time_major)
    # With lengths, reversal is done on the data (valid prefix only), so time runs forward.
    backwards = reverse and lengths is None
    fused = not static and remat is False and hidden_mask is None
    if fused and _pointwise_fn(cell) is not None:
        # Takes either layout: the transpose to time-major is folded into the projection.
        ys, carry = _fused_scan(
            cell, backwards, unroll, time_major, params, xs, valid, initial_carry
        )
        if lengths is not None and reverse:
            ys = reverse_sequence(ys, lengths, time_major=True)
        return (ys if time_major else jnp.swapaxes(ys, 0, 1)), carry

    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)  # [time, batch, input]
    if static:
        xp = cell.project_inputs(params, xs_tm)  # one matmul for all steps
        step = _step_fn(cell, params, hidden_mask)
        carry, outputs = initial_carry, [jnp.zeros(())] * steps
        order = range(steps - 1, -1, -1) if backwards else range(steps)
        for t in order:
            carry, outputs[t] = step(carry, xp[t], None if valid is None else valid[t])
        ys = jnp.stack(outputs)
    else:
        ys, carry = _autodiff_scan(
            cell, params, xs_tm, valid, initial_carry, backwards, unroll, remat, hidden_mask
        )

    if lengths is not None and reverse:
        ys = reverse_sequence(ys, lengths, time_major=True)
    return (ys if time_major else jnp.swapaxes(ys, 0, 1)), carry


def rnn(
    cell: Cell,
    params: Params,
    xs: Array,
    lengths: Array | None = None,
    *,
    initial_carry: Carry | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    time_major: bool = False,
    remat: bool | int = False,
) -> tuple[Array, Carry]:
    """Run ``cell`` over ``xs`` with ``jax.lax.scan``.

    Args:
      cell: a ``SimpleRNN``, ``LSTM`` or ``GRU``.
      params: the cell's parameters (``cell.init``).
      xs: ``[batch, time, input_size]``, or ``[time, batch, input_size]`` if ``time_major``.
      lengths: optional int ``[batch]`` in ``[0, time]``; steps at and after ``lengths[b]``
        are padding (see the module docstring). ``None`` means every step is valid.
      initial_carry: optional carry (default zeros), leaves ``[batch, hidden_size]``.
      reverse: run each sequence (its valid prefix, with ``lengths``) from the end.
      unroll: passed to ``lax.scan``: steps per loop iteration (``True``: all).
      time_major: layout of ``xs`` and ``ys``.
      remat: memory of the backward pass. ``False`` keeps every step's intermediate values
        (fastest); ``True`` keeps only each step's carry and input and recomputes the step in
        the backward pass (about one more forward pass of compute); an int ``k`` keeps only the
        carry every ``k`` steps and recomputes each block of ``k`` steps in the backward pass
        (memory ``O(time / k + k)`` carries instead of ``O(time)`` step values: ``k`` near
        ``sqrt(time)`` is smallest). The values and gradients are the same in every mode.

    Returns:
      ``(ys, final_carry)``: ``ys`` ``[batch, time, hidden_size]`` (or time-major), zero past
      each length; ``final_carry`` the carry after each sequence's last valid step.
    """
    return _drive(
        cell,
        params,
        xs,
        lengths,
        initial_carry,
        reverse,
        unroll,
        time_major,
        static=False,
        remat=remat,
    )


def static_rnn(
    cell: Cell,
    params: Params,
    xs: Array,
    lengths: Array | None = None,
    *,
    initial_carry: Carry | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    time_major: bool = False,
) -> tuple[Array, Carry]:
    """Same signature and results as :func:`rnn`, as a Python loop over time steps.

    The traced graph holds one copy of the step per time step (static unrolling, like TF1
    ``static_rnn``): compile time and program size grow with ``time``. ``unroll`` is accepted
    for signature parity and ignored.
    """
    return _drive(
        cell, params, xs, lengths, initial_carry, reverse, unroll, time_major, static=True
    )
