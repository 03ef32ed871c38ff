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

How ``rnn`` computes is its ``implementation`` argument (the numbers agree to rounding):

* ``"scan"``: a plain ``lax.scan`` of the cell's step, differentiated by JAX. Every JAX
  transformation applies, forward-mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``) included.
* ``"fused"`` (``SimpleRNN``, ``LSTM`` with any options but ``layer_norm``,
  ``GRU(reset_after=True)``): the input half of every
  step (``cell.project_inputs``) is one matmul over all steps before the loop, and the backward
  pass is written by hand (``jax.custom_vjp``): its loop holds only the recurrent matmul and the
  cell's elementwise derivative, and the weight gradients are one matmul each after it.
  Reverse mode only: ``jax.jvp`` of it raises.
* ``"kernel"``: the fused path with both loops run as jaxrnn's CPU kernels (``csrc/``; the
  plain ``SimpleRNN``, ``LSTM`` and ``GRU(reset_after=True)``: the LSTM's variants have
  none): the whole loop in one call, each step's hidden units split over the cores. float32
  on a CPU, with ``unroll=1``; reverse mode only.
* ``None`` (the default) chooses: ``"scan"`` where the fused path does not apply
  (``layer_norm``, ``GRU(reset_after=False)``, ``remat``, recurrent dropout); ``"fused"``
  for the LSTM's ``proj_size``, peepholes and clipping, whose fused XLA loop has no CPU
  kernels, on every platform; else, with ``unroll=1`` and the kernels built, the kernels
  wherever the computation is placed on a CPU (the same call runs the fused XLA loop on a GPU
  or TPU); a bfloat16 or float16 computation takes the kernels only when the default backend
  is a CPU, and runs them in float32 on inputs and weights rounded to its dtype (faster on a
  CPU than its XLA loop); else ``"fused"`` (an ``unroll`` other than 1, or bfloat16 on GPU
  and TPU). ``JAXRNN_NATIVE=0`` in the environment keeps ``None`` from choosing the kernels.

``unroll`` is the ``lax.scan`` loops' unroll factor; it does not choose the implementation
(an explicit ``implementation="kernel"`` with ``unroll != 1`` is an error). For forward-mode
differentiation, pass ``implementation="scan"``. ``static_rnn`` projects all steps at once and
is differentiated by JAX (every transformation applies). ``remat`` trades compute for memory
in the backward pass (see :func:`rnn`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn._implementation import IMPLEMENTATIONS, has_fused_path, narrow, round_to
from jaxrnn._implementation import resolve as _resolve_implementation
from jaxrnn.cells import Carry, Cell, Params, _loops, accumulation_dtype
from jaxrnn.masking import reverse_sequence

Array = jax.Array
__all__ = ["IMPLEMENTATIONS", "has_fused_path", "reset_carry", "rnn", "static_rnn"]


def reset_carry(carry: Carry, where: Array) -> Carry:
    """``carry`` with the rows where ``where`` (bool ``[batch]``) is True replaced by zeros: a
    new sequence (episode, document) starts from the initial state there."""
    leaves, tree = jax.tree.flatten(carry)
    return jax.tree.unflatten(tree, _loops.zero_where(where, *leaves))


def _step_fn(cell: Cell, params: Params, hidden_mask: Array | None) -> Callable:
    """``(carry, xp_t, valid_t, reset_after_t) -> (carry, y_t)`` for projected inputs, masked
    by length; ``y_t`` in the cell's computation dtype.

    ``reset_after_t`` (bool ``[batch]`` or ``None``): rows whose carry is zeroed after the
    step, for the next step visited (zeroing the loop's output rather than the next step's
    input leaves the recurrent matmul reading the loop state as it does without resets, so
    all-False resets compute exactly what no resets do). ``hidden_mask`` (``[batch, H]``),
    when given, multiplies ``h`` before it enters the recurrent matmul at every step
    (variational recurrent dropout); the carry kept is unmasked.
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


def _check_remat(remat) -> None:
    if remat is True or remat is False:
        return
    if not isinstance(remat, int) or isinstance(remat, bool) or remat < 1:
        raise ValueError(f"remat must be False, True or a positive int, got {remat!r}")


def _autodiff_scan(cell, params, xs, valid, resets, carry0, backwards, unroll, remat, hidden_mask):
    """``lax.scan`` differentiated by JAX (the path of ``remat`` and recurrent dropout).

    The input projection stays inside the step: differentiated by autodiff, hoisting it was
    slower on XLA:CPU (``docs/design/fused-loops.md``). ``remat=True`` checkpoints each step (only
    the carry and the input of each step are kept for the backward pass); ``remat=k`` scans
    blocks of ``k`` steps and checkpoints each block (only the carry at each block boundary is
    kept, and each block's steps are recomputed in the backward pass).
    """
    step = _step_fn(cell, params, hidden_mask)

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


def _loop_resets(resets, valid, lengths, reverse, time_major) -> Array:
    """The loops' resets (bool ``[time, batch]``, in the order the loop visits the steps of
    the data it is given): where True, the carry is zeroed just before that step.

    A reset past a sequence's length is dropped. Running backwards, a segment is entered at
    its last step, which is the step before the next segment's start: so the flags move one
    step earlier (and the segment that holds the last valid step continues the initial
    carry); with ``lengths`` the data's valid prefix is reversed, and so are the flags.
    """
    resets = jnp.asarray(resets)
    resets = resets if time_major else resets.T
    if valid is not None:
        resets = resets & valid
    if not reverse:
        return resets
    resets = jnp.concatenate([resets[1:], jnp.zeros_like(resets[:1])])
    if lengths is not None:
        resets = reverse_sequence(resets, lengths, time_major=True)
    return resets


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
    implementation: str | None = None,
    resets: Array | None = None,
) -> tuple[Array, Carry]:
    _checks.check_xs(xs, time_major=time_major)
    _checks.check_unroll(unroll)
    _check_remat(remat)
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
    if static:
        if implementation is not None:
            raise ValueError(
                f"static_rnn is its own implementation; got implementation={implementation!r}"
            )
        how = "static"
    else:
        how = _resolve_implementation(implementation, cell, dtype, unroll, remat, hidden_mask)

    valid = None
    if lengths is not None:
        lengths = jnp.asarray(lengths)
        valid = jnp.arange(steps)[:, None] < lengths[None, :]  # [time, batch]
        if reverse:
            xs = reverse_sequence(xs, lengths, time_major=time_major)
    # With lengths, reversal is done on the data (valid prefix only), so time runs forward.
    backwards = reverse and lengths is None
    if resets is not None:
        resets = _loop_resets(resets, valid, lengths, reverse, time_major)
    if how in ("fused", "kernel"):
        native = how == "kernel"
        loop_cell, loop_params, loop_xs = cell, params, xs
        if native and narrow(dtype):
            # The float32 kernels on values rounded to the computation dtype.
            loop_cell = dataclasses.replace(cell, dtype=jnp.dtype(jnp.float32))
            loop_params = {  # the weights rounded (they enter matmuls), not the biases
                k: round_to(v.astype(jnp.float32), dtype) if k.startswith("w_") else v
                for k, v in params.items()
            }
            loop_xs = xs.astype(dtype).astype(jnp.float32)
        # Takes either layout: the transpose to time-major is folded into the projection.
        # The cell's own loop (``jaxrnn.cells._loops.with_backward``): ``ys`` time-major.
        loop = _loops.Loop(backwards, unroll, time_major, native)
        fused_loop = loop_cell.fused_loop()
        assert fused_loop is not None  # "fused" and "kernel" are chosen only where it exists
        ys, carry = fused_loop(loop_cell, loop, loop_params, loop_xs, valid, resets, initial_carry)
        ys = ys.astype(dtype)
        if lengths is not None and reverse:
            ys = reverse_sequence(ys, lengths, time_major=True)
        return (ys if time_major else jnp.swapaxes(ys, 0, 1)), carry

    if resets is not None:
        # As the fused loops do (``_loops.resets_after``): zero what a step hands on.
        leaves, tree = jax.tree.flatten(initial_carry)
        resets, leaves = _loops.resets_after(backwards, resets, leaves)
        initial_carry = jax.tree.unflatten(tree, leaves)
    # Parameters narrower than float32 are widened once, outside the loop, so that their
    # gradients are summed over steps in float32 (each step casts them to ``dtype``).
    params = {k: v.astype(accumulation_dtype(v.dtype)) for k, v in params.items()}
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)  # [time, batch, input]
    if how == "static":
        xp = cell.project_inputs(params, xs_tm)  # one matmul for all steps
        step = _step_fn(cell, params, hidden_mask)
        carry, outputs = initial_carry, [jnp.zeros(())] * steps
        order = range(steps - 1, -1, -1) if backwards else range(steps)
        for t in order:
            valid_t = None if valid is None else valid[t]
            reset_t = None if resets is None else resets[t]
            carry, outputs[t] = step(carry, xp[t], valid_t, reset_t)
        ys = jnp.stack(outputs)
    else:
        ys, carry = _autodiff_scan(
            cell, params, xs_tm, valid, resets, initial_carry, backwards, unroll, remat, hidden_mask
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
      cell: a ``SimpleRNN``, ``LSTM`` or ``GRU``.
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
      implementation: ``None`` (choose), ``"scan"``, ``"fused"`` or ``"kernel"`` (see the
        module docstring). Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``,
        ``jax.hessian``) needs ``"scan"``.

    Returns:
      ``(ys, final_carry)``: ``ys`` ``[batch, time, hidden_size]`` (or time-major) in the
      computation dtype, zero past each length; ``final_carry`` the carry after each
      sequence's last valid step, in the accumulation dtype (float32 under bfloat16).
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
        implementation=implementation,
        resets=resets,
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
    return _drive(
        cell,
        params,
        xs,
        lengths,
        initial_carry,
        reverse,
        unroll,
        time_major,
        static=True,
        implementation=implementation,
        resets=resets,
    )
