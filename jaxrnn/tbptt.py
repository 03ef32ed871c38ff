"""Truncated backpropagation through time: a long sequence run in windows, the gradient
stopped at each window's boundary."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import Carry, Cell, Params
from jaxrnn.drivers import drive
from jaxrnn.options import RunOptions

Array = jax.Array


def tbptt(
    cell: Cell,
    params: Params,
    xs: Array,
    window: int,
    lengths: Array | None = None,
    *,
    resets: Array | None = None,
    initial_carry: Carry | None = None,
    unroll: int | bool = 1,
    time_major: bool = False,
    implementation: str | None = None,
) -> tuple[Array, Carry]:
    """Run ``cell`` over ``xs`` in windows of ``window`` steps, the carry handed from each
    window to the next with its gradient stopped (truncated backpropagation through time).

    The values are exactly those of :func:`jaxrnn.rnn` over the whole sequence; only the
    gradients differ: each window is differentiated on its own, as if its initial carry were
    a constant (the first window's is ``initial_carry``, which does get its gradient). The
    backward pass keeps one window's intermediate values at a time, and a training step can
    take one window of a stream and hand the returned carry to the next (see the
    language-model guide).

    ``lengths``, ``resets``, ``initial_carry``, ``unroll``, ``time_major`` and
    ``implementation`` are those of :func:`jaxrnn.rnn` (which runs forwards only here).

    Args:
      cell: a ``SimpleRNN``, ``LSTM`` or ``GRU``.
      params: the cell's parameters (``cell.init``).
      xs: ``[batch, time, input_size]`` (``[time, batch, input_size]`` if ``time_major``).
      window: steps per window, a positive int; the last window is shorter where ``window``
        does not divide ``time``.

    Returns:
      ``(ys, final_carry)`` as :func:`jaxrnn.rnn` returns them.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (steps per window), got {window!r}")
    options = RunOptions(unroll=unroll, time_major=True, implementation=implementation)
    _checks.check_xs(xs, time_major=time_major)
    steps, batch = (xs.shape[0], xs.shape[1]) if time_major else (xs.shape[1], xs.shape[0])
    if lengths is not None:
        _checks.check_lengths(lengths, batch, steps)
    if resets is not None:
        _checks.check_resets(resets, batch, steps, time_major=time_major)
    tm_xs = xs if time_major else jnp.swapaxes(xs, 0, 1)  # [time, batch, features]
    tm_resets = None if resets is None else (resets if time_major else jnp.swapaxes(resets, 0, 1))

    def run(start, x, window_resets, carry):
        window_lengths = None
        if lengths is not None:
            window_lengths = jnp.clip(jnp.asarray(lengths) - start, 0, x.shape[0])
        return drive(
            cell,
            params,
            x,
            options,
            lengths=window_lengths,
            resets=window_resets,
            initial_carry=carry,
        )

    def part(start, stop):
        return tm_xs[start:stop], None if tm_resets is None else tm_resets[start:stop]

    # The first window continues initial_carry (and gives it its gradient).
    first = min(window, steps)
    x, window_resets = part(0, first)
    ys, carry = run(0, x, window_resets, initial_carry)
    outputs = [ys]
    middle = (steps - first) // window
    if middle:

        def body(carry, inputs):
            start, x, window_resets = inputs
            ys, carry = run(start, x, window_resets, jax.lax.stop_gradient(carry))
            return carry, ys

        stop = first + middle * window
        x, window_resets = part(first, stop)
        x = x.reshape(middle, window, *x.shape[1:])
        if window_resets is not None:
            window_resets = window_resets.reshape(middle, window, batch)
        starts = first + jnp.arange(middle) * window
        carry, ys = jax.lax.scan(body, carry, (starts, x, window_resets))
        outputs.append(ys.reshape(middle * window, *ys.shape[2:]))
    done = first + middle * window
    if done < steps:  # the last, shorter window
        x, window_resets = part(done, steps)
        ys, carry = run(done, x, window_resets, jax.lax.stop_gradient(carry))
        outputs.append(ys)
    ys = jnp.concatenate(outputs) if len(outputs) > 1 else outputs[0]
    return (ys if time_major else jnp.swapaxes(ys, 0, 1)), carry
