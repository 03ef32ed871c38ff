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
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import Carry, Cell, Params
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
) -> tuple[Array, Carry]:
    _checks.check_xs(xs, time_major=time_major)
    _checks.check_unroll(unroll)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    _checks.check_params(cell, params, xs.shape[-1])
    if lengths is not None:
        _checks.check_lengths(lengths, batch, steps)
    if initial_carry is None:
        initial_carry = cell.initial_carry(batch, xs.dtype)
    else:
        _checks.check_carry(cell, initial_carry, batch)

    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)  # [time, batch, input]
    valid = None
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        valid = jnp.arange(steps)[:, None] < lengths[None, :]  # [time, batch]
        if reverse:
            xs_tm = reverse_sequence(xs_tm, lengths, time_major=True)
    # With lengths, reversal is done on the data (valid prefix only), so time runs forward.
    backwards = reverse and lengths is None

    xp = cell.project_inputs(params, xs_tm)  # one matmul for all steps: [time, batch, gates*H]
    step = _step_fn(cell, params, hidden_mask)

    if static:
        carry, outputs = initial_carry, [None] * steps
        order = range(steps - 1, -1, -1) if backwards else range(steps)
        for t in order:
            carry, outputs[t] = step(carry, xp[t], None if valid is None else valid[t])
        ys = jnp.stack(outputs)
    else:

        def body(carry, inputs):
            xp_t, valid_t = inputs
            return step(carry, xp_t, valid_t)

        carry, ys = jax.lax.scan(body, initial_carry, (xp, valid), reverse=backwards, unroll=unroll)

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

    Returns:
      ``(ys, final_carry)``: ``ys`` ``[batch, time, hidden_size]`` (or time-major), zero past
      each length; ``final_carry`` the carry after each sequence's last valid step.
    """
    return _drive(
        cell, params, xs, lengths, initial_carry, reverse, unroll, time_major, static=False
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
