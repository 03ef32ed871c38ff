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
  first and write each output back at its original time position;
* with ``resets`` (bool ``[batch, time]``, ``[time, batch]`` with ``time_major=True``), split
  each sequence into segments that each start from a zero carry: where ``resets[b, t]`` is
  True, the carry is zeros before step ``t`` (a new episode or document starts there; the
  first segment continues ``initial_carry`` unless ``resets[b, 0]``). No gradient crosses a
  reset, a reset past a sequence's length has no effect, and all-False resets give bit for bit
  the outputs and carries of none (gradients agree to rounding). With ``reverse=True`` each
  segment runs from its own last step to its first, from zeros, but for the last segment,
  which continues ``initial_carry``.

Precision follows the cell's ``dtype`` and ``param_dtype`` (see :mod:`jaxrnn.cells`): ``xs``
and the parameters may be of any floating dtype; ``ys`` come out in the computation dtype and
the final carry in its accumulation dtype (float32 for a bfloat16 or float16 computation),
and parameter gradients in each parameter's dtype, every sum over time and batch accumulated
in at least float32.

How ``rnn`` computes is its ``implementation`` argument: ``"scan"`` (``lax.scan``,
differentiated by JAX; the one for forward-mode differentiation), ``"fused"`` (the cell's
fused XLA loop with a hand-written backward pass), ``"kernel"`` (that loop as jaxrnn's CPU
kernels), ``"pallas"`` (that loop as Pallas kernels), ``"parallel"`` (a linear recurrence,
all steps at once) or ``None`` (chosen). The numbers agree to rounding whichever runs. The
rules, and the one rule for bfloat16 and float16 with the kernels, are :func:`jaxrnn.plan.plan`'s; a
call's options travel as one :class:`jaxrnn.options.RunOptions`, and :func:`drive` runs a
cell under them. ``unroll`` is the ``lax.scan`` loops' unroll factor (the kernels have
none); ``static_rnn`` is its own implementation, differentiated by JAX (every
transformation applies); ``remat`` trades compute for memory in the backward pass (see
:func:`rnn`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import Carry, Cell, Params, _loops, accumulation_dtype, linear
from jaxrnn.masking import reverse_sequence
from jaxrnn.options import IMPLEMENTATIONS, RunOptions
from jaxrnn.plan import Plan, has_fused_path, plan

Array = jax.Array
__all__ = ["IMPLEMENTATIONS", "drive", "has_fused_path", "reset_carry", "rnn", "static_rnn"]


def reset_carry(carry: Carry, where: Array) -> Carry:
    """``carry`` with the rows where ``where`` (bool ``[batch]``) is True replaced by zeros: a
    new sequence (episode, document) starts from the initial state there."""
    leaves, tree = jax.tree.flatten(carry)
    return jax.tree.unflatten(tree, _loops.zero_where(where, *leaves))


def _step_fn(cell: Cell, params: Params, hidden_mask: Array | None) -> Callable:
    """``(carry, xp_t, valid_t, reset_after_t) -> (carry, y_t)`` for projected inputs, masked
    by length; ``y_t`` in the cell's computation dtype.

    ``reset_after_t`` (bool ``[batch]`` or ``None``): rows whose carry is zeroed after the
    step, for the next step visited (``docs/design/resets.md`` says why after, not before).
    ``hidden_mask`` (``[batch, H]``), when given, multiplies ``h`` before it enters the
    recurrent matmul at every step (variational recurrent dropout); the carry kept is
    unmasked.
    """

    def step(carry, xp_t, valid_t, reset_after_t=None):
        if hidden_mask is None:
            new_carry, y = cell.step(params, carry, xp_t)
        else:
            new_carry, y = cell.masked_step(params, carry, xp_t, hidden_mask)
        y = y.astype(cell.dtype)
        if valid_t is not None:
            keep = valid_t[:, None]
            new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
            y = jnp.where(keep, y, jnp.zeros_like(y))
        if reset_after_t is not None:
            new_carry = reset_carry(new_carry, reset_after_t)
        return new_carry, y

    return step


def _scan(cell, params, xs, carry0, how: Plan, *, valid, resets, hidden_mask):
    """``lax.scan`` differentiated by JAX (the path of ``remat`` and recurrent dropout);
    ``xs`` ``[time, batch, input_size]``, returns ``(ys, carry)`` with ``ys`` time-major.

    The input projection stays inside the step (under JAX's autodiff, hoisting it out of the
    loop was slower on XLA:CPU).
    ``remat=True`` checkpoints each step (only the carry and the input of each step are kept
    for the backward pass); ``remat=k`` scans blocks of ``k`` steps and checkpoints each
    block (only the carry at each block boundary is kept, and each block's steps are
    recomputed in the backward pass).
    """
    step = _step_fn(cell, params, hidden_mask)
    backwards, unroll, remat = how.backwards, how.unroll, how.remat

    def body(carry, inputs):
        x_t, valid_t, reset_t = inputs
        return step(carry, cell.project_inputs(params, x_t), valid_t, reset_t)

    if remat is True or remat == 1:
        body = jax.checkpoint(body, prevent_cse=False)
    if remat is False or remat is True or remat == 1:
        inputs = (xs, valid, resets)
        carry, ys = jax.lax.scan(body, carry0, inputs, reverse=backwards, unroll=unroll)
        return ys, carry

    steps, batch = xs.shape[:2]
    blocks = -(-steps // remat)
    pad = blocks * remat - steps
    if valid is None:
        valid = jnp.ones((steps, batch), bool)
    if pad:  # padded steps are invalid: they copy the carry and output zeros
        xs = jnp.concatenate([xs, jnp.zeros((pad, *xs.shape[1:]), xs.dtype)])
        valid = jnp.concatenate([valid, jnp.zeros((pad, batch), bool)])
        if resets is not None:
            resets = jnp.concatenate([resets, jnp.zeros((pad, batch), bool)])
    xs = xs.reshape(blocks, remat, *xs.shape[1:])
    valid = valid.reshape(blocks, remat, batch)
    if resets is not None:
        resets = resets.reshape(blocks, remat, batch)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def block(carry, inputs):
        return jax.lax.scan(body, carry, inputs, reverse=backwards, unroll=unroll)

    carry, ys = jax.lax.scan(block, carry0, (xs, valid, resets), reverse=backwards)
    ys = ys.reshape(blocks * remat, *ys.shape[2:])
    return ys[:steps], carry


def _static(cell, params, xs, carry0, how: Plan, *, valid, resets, hidden_mask):
    """A Python loop over the steps of ``xs`` ``[time, batch, input_size]`` (all projected
    with one matmul first); returns ``(ys, carry)`` with ``ys`` time-major."""
    steps = xs.shape[0]
    xp = cell.project_inputs(params, xs)  # one matmul for all steps
    step = _step_fn(cell, params, hidden_mask)
    carry, outputs = carry0, [jnp.zeros(())] * steps
    order = range(steps - 1, -1, -1) if how.backwards else range(steps)
    for t in order:
        valid_t = None if valid is None else valid[t]
        reset_t = None if resets is None else resets[t]
        carry, outputs[t] = step(carry, xp[t], valid_t, reset_t)
    return jnp.stack(outputs), carry


def _fused(cell, params, xs, carry0, how: Plan, *, valid, resets):
    """The cell's fused loop (``cell.fused_loop()``, under ``how.loop``) on ``xs`` in either
    layout; returns ``(ys, carry)``, ``ys`` time-major in the computation dtype. Where
    ``how.round_to`` is set, the loop runs in float32 on inputs and weights rounded to it."""
    loop_cell, loop_params, loop_xs = cell, params, xs
    if how.round_to is not None:
        loop_cell = dataclasses.replace(cell, dtype=how.loop_dtype)
        loop_params = {  # the weights rounded (they enter matmuls), not the biases
            k: _round_to(v.astype(how.loop_dtype), how.round_to) if k.startswith("w_") else v
            for k, v in params.items()
        }
        loop_xs = xs.astype(how.round_to).astype(how.loop_dtype)
    scan = loop_cell.fused_loop()
    if how.path == "pallas":
        from jaxrnn.cells import pallas  # imports Pallas only where asked for

        scan = pallas.scan
    ys, carry = scan(loop_cell, how.loop, loop_params, loop_xs, valid, resets, carry0)
    return ys.astype(how.dtype), carry


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _round_to(x: Array, dtype) -> Array:
    """``x`` rounded to ``dtype`` and back; its derivative is the identity (so that the
    gradients of a computation run in float32 on rounded values are not rounded again)."""
    return x.astype(dtype).astype(x.dtype)


@_round_to.defjvp
def _round_to_jvp(dtype, primals, tangents):
    (x,), (t,) = primals, tangents
    return _round_to(x, dtype), t


def _loop_resets(resets, valid, lengths, how: Plan) -> Array:
    """The loops' resets (bool ``[time, batch]``, in the order the loop visits the steps of
    the data it is given): where True, the carry is zeroed just before that step.

    A reset past a sequence's length is dropped. Running backwards, a segment is entered at
    its last step, which is the step before the next segment's start: so the flags move one
    step earlier (and the segment that holds the last valid step continues the initial
    carry); with ``lengths`` the data's valid prefix is reversed, and so are the flags.
    """
    resets = jnp.asarray(resets)
    resets = resets if how.time_major else resets.T
    if valid is not None:
        resets = resets & valid
    if not (how.backwards or how.reverse_data):
        return resets
    resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])])
    if how.reverse_data:
        resets = reverse_sequence(resets, lengths, time_major=True)
    return resets


def drive(
    cell: Cell,
    params: Params,
    xs: Array,
    options: RunOptions,
    *,
    lengths: Array | None = None,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
    hidden_mask: Array | None = None,
) -> tuple[Array, Carry]:
    """Run ``cell`` over ``xs`` as ``options`` asks: what :func:`rnn`, :func:`static_rnn`, the
    layers, ``tbptt`` and the NNX modules call. ``cell``, ``params``, ``xs``, ``lengths``,
    ``resets`` and ``initial_carry`` are as in :func:`rnn`.

    Args:
      options: a :class:`~jaxrnn.options.RunOptions`; its ``static`` runs the Python loop of
        :func:`static_rnn`.
      hidden_mask: optional ``[batch, hidden_size]``: multiplies ``h`` where it enters the
        recurrent matmul at every step (variational recurrent dropout; the carry kept is
        unmasked). It makes ``implementation=None`` run ``"scan"``.

    Returns:
      ``(ys, final_carry)`` as :func:`rnn` returns them.

    Raises:
      TypeError, ValueError: an argument of the wrong shape, dtype or value (named), or an
        explicit implementation that cannot run (:func:`jaxrnn.plan.plan`); raised before
        anything is traced.
    """
    time_major = options.time_major
    _checks.check_xs(xs, time_major=time_major)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    _checks.check_params(cell, params, xs.shape[-1])
    if lengths is not None:
        _checks.check_lengths(lengths, batch, steps)
    if resets is not None:
        _checks.check_resets(resets, batch, steps, time_major=time_major)
    cell = cell.resolve(params, xs.dtype)
    dtype = cell.dtype
    if initial_carry is None:
        initial_carry = cell.initial_carry(batch)
    else:
        _checks.check_carry(cell, initial_carry, batch)
        acc = accumulation_dtype(dtype)
        initial_carry = jax.tree.map(lambda leaf: jnp.asarray(leaf).astype(acc), initial_carry)
    how = plan(
        cell,
        options,
        lengths=lengths is not None,
        resets=resets is not None,
        recurrent_dropout=hidden_mask is not None,
    )

    valid = None
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        valid = jnp.arange(steps)[:, None] < lengths[None, :]  # [time, batch]
        if how.reverse_data:
            xs = reverse_sequence(xs, lengths, time_major=time_major)
    if resets is not None:
        resets = _loop_resets(resets, valid, lengths, how)
    if how.loop is not None:
        # Takes either layout: the transpose to time-major is folded into the projection.
        ys, carry = _fused(cell, params, xs, initial_carry, how, valid=valid, resets=resets)
    elif how.path == "parallel":  # in the layout of xs: ys come back in it
        assert isinstance(cell, linear.LinearCell)  # the plan's rule
        ys, carry = linear.parallel(
            cell,
            params,
            xs,
            initial_carry,
            backwards=how.backwards,
            method=how.method or "chunked",
            time_major=time_major,
            valid=valid,
            resets=resets,
            hidden_mask=hidden_mask,
        )
        if lengths is not None and how.reverse_data:
            ys = reverse_sequence(ys, lengths, time_major=time_major)
        return ys, carry
    else:
        if how.resets == "step":
            # As the fused loops do (``_loops.resets_after``): zero what a step hands on.
            leaves, tree = jax.tree.flatten(initial_carry)
            resets, leaves = _loops.resets_after(how.backwards, resets, leaves)
            initial_carry = jax.tree.unflatten(tree, leaves)
        # Parameters narrower than float32 are widened once, outside the loop, so that their
        # gradients are summed over steps in float32 (each step casts them to ``dtype``).
        params = {k: v.astype(accumulation_dtype(v.dtype)) for k, v in params.items()}
        xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)  # [time, batch, input]
        run = _static if how.path == "static" else _scan
        ys, carry = run(
            cell,
            params,
            xs_tm,
            initial_carry,
            how,
            valid=valid,
            resets=resets,
            hidden_mask=hidden_mask,
        )

    if lengths is not None and how.reverse_data:
        ys = reverse_sequence(ys, lengths, time_major=True)
    return (ys if time_major else jnp.swapaxes(ys, 0, 1)), carry


def rnn(
    cell: Cell,
    params: Params,
    xs: Array,
    lengths: Array | None = None,
    *,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    time_major: bool = False,
    remat: bool | int = False,
    implementation: str | None = None,
) -> tuple[Array, Carry]:
    """Run ``cell`` over ``xs`` with ``jax.lax.scan``.

    Args:
      cell: a cell (``SimpleRNN``, ``LSTM``, ``GRU``, ``MinGRU``, ``MinLSTM``, ``RGLRU`` or
        one's own).
      params: the cell's parameters (``cell.init``).
      xs: ``[batch, time, input_size]``, or ``[time, batch, input_size]`` if ``time_major``.
      lengths: optional int ``[batch]`` in ``[0, time]``; steps at and after ``lengths[b]``
        are padding (see the module docstring). ``None`` means every step is valid.
      resets: optional bool ``[batch, time]`` (``[time, batch]`` if ``time_major``): where
        ``resets[b, t]``, the carry restarts from zeros before step ``t`` (a new episode or
        document begins there; see the module docstring).
      initial_carry: optional carry (default zeros), leaves ``[batch, hidden_size]``.
      reverse: run each sequence (its valid prefix, with ``lengths``) from the end.
      unroll: passed to ``lax.scan``: steps per loop iteration (``True``: all). The CPU
        kernels have none: ``implementation=None`` with ``unroll != 1`` runs ``"fused"``.
      time_major: layout of ``xs`` and ``ys``.
      remat: memory of the backward pass. ``False`` keeps every step's intermediate values
        (fastest); ``True`` keeps only each step's carry and input and recomputes the step in
        the backward pass (about one more forward pass of compute); an int ``k`` keeps only the
        carry every ``k`` steps and recomputes each block of ``k`` steps in the backward pass
        (memory ``O(time / k + k)`` carries instead of ``O(time)`` step values: ``k`` near
        ``sqrt(time)`` is smallest). The values and gradients are the same in every mode.
      implementation: ``None`` (choose), ``"scan"``, ``"fused"``, ``"kernel"``, ``"pallas"``
        or ``"parallel"`` (the rules, bfloat16 and float16 included:
        :func:`jaxrnn.plan.plan`).
        Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) needs
        ``"scan"``.

    Returns:
      ``(ys, final_carry)``: ``ys`` ``[batch, time, hidden_size]`` (or time-major) in the
      computation dtype, zero past each length; ``final_carry`` the carry after each
      sequence's last valid step, in the accumulation dtype (float32 under bfloat16).
    """
    options = RunOptions(
        reverse=reverse,
        unroll=unroll,
        time_major=time_major,
        remat=remat,
        implementation=implementation,
    )
    return drive(
        cell, params, xs, options, lengths=lengths, resets=resets, initial_carry=initial_carry
    )


def static_rnn(
    cell: Cell,
    params: Params,
    xs: Array,
    lengths: Array | None = None,
    *,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    time_major: bool = False,
    implementation: str | None = None,
) -> tuple[Array, Carry]:
    """Same signature and results as :func:`rnn`, as a Python loop over time steps.

    The traced graph holds one copy of the step per time step (static unrolling, like TF1
    ``static_rnn``): compile time and program size grow with ``time``. ``unroll`` is accepted
    for signature parity and ignored; ``implementation`` must be ``None`` (the loop is its
    own), and every JAX transformation applies.
    """
    options = RunOptions(
        reverse=reverse,
        unroll=unroll,
        time_major=time_major,
        implementation=implementation,
        static=True,
    )
    return drive(
        cell, params, xs, options, lengths=lengths, resets=resets, initial_carry=initial_carry
    )
