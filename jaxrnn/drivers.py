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
  dropout (the fused path, ``jaxrnn/_fused.py``): the input half of every step
  (``cell.project_inputs``) is one matmul over all steps before the loop, and the backward
  pass is written by hand (``jax.custom_vjp``): its loop holds only the recurrent matmul and
  the cell's elementwise derivative, and the weight and input gradients are one matmul each
  after it. Forward-mode differentiation (``jax.jvp``) of this path is not defined. On a CPU,
  in float32 with the default ``unroll=1``, both loops of each of these cells run as
  jaxrnn's kernels (``csrc/`` via ``jaxrnn/_native.py``): the whole loop in one call, each
  step's hidden units split over the cores; an explicit ``unroll``, another platform or
  dtype, or ``JAXRNN_NATIVE=0`` runs ``lax.scan`` instead.
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
from jaxrnn._fused import fused_scan, has_fused_path
from jaxrnn.cells import Carry, Cell, Params
from jaxrnn.masking import reverse_sequence

Array = jax.Array


def _step_fn(cell: Cell, params: Params, hidden_mask: Array | None) -> Callable:
    """``(carry, xp_t, valid_t) -> (carry, y_t)`` for projected inputs, masked by length.

    ``hidden_mask`` (``[batch, H]``), when given, multiplies ``h`` before it enters the
    recurrent matmul at every step (variational recurrent dropout); the carry kept is unmasked.
    """

    def step(carry, xp_t, valid_t):
        if hidden_mask is None:
            new_carry, y = cell.step(params, carry, xp_t)
        else:
            new_carry, y = cell.masked_step(params, carry, xp_t, hidden_mask)
        if valid_t is not None:
            keep = valid_t[:, None]
            new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        return new_carry, y

    return step


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
    if fused and has_fused_path(cell):
        # Takes either layout: the transpose to time-major is folded into the projection.
        ys, carry = fused_scan(
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
      unroll: passed to ``lax.scan``: steps per loop iteration (``True``: all). Any value but
        1 also turns off the CPU kernels (see the module docstring).
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
