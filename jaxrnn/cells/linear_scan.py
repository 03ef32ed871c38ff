"""The linear recurrence ``h[t] = a[t] * h[t-1] + b[t]`` (elementwise) over a whole sequence at
once: what the linear-recurrence cells (:mod:`jaxrnn.cells.linear`) run in parallel over time.

:func:`linear_scan` solves it forwards or backwards from ``h0`` by one of several
:data:`METHODS`, each differentiated by the same rule: the gradient is the same recurrence run
the other way, ``d_h[t] = g[t] + a[t+1] * d_h[t+1]``, then ``d_a[t] = d_h[t] * h[t-1]``,
``d_b[t] = d_h[t]`` and ``d_h0 = a[0] * d_h[0]``. The methods compute the same values up to
rounding (the order of the products differs):

* ``"sequential"``: ``lax.scan`` over the steps, one ``[batch, H]`` update each.
* ``"chunked"``: the steps cut into chunks of about ``sqrt(T)``; a loop over the positions
  within a chunk updates every chunk at once (from zeros, keeping each chunk's last state and
  the product of its ``a``), a short loop over the chunks joins them, and a second pass over
  the positions writes the states from each chunk's true first state. Two reads of ``a`` and
  ``b`` and one write, ``2 * sqrt(T)`` loop steps.
* ``"associative"``: ``lax.associative_scan`` of the pairs ``(a, b)`` (``log2(T)`` levels).
* ``"kernel"``: jaxrnn's CPU kernel (``csrc/linear.cc``), one pass; the ``"chunked"`` loop
  where the computation is placed on another platform.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

Array = jax.Array

METHODS = ("sequential", "chunked", "associative", "kernel")


def linear_scan(
    a: Array,
    b: Array,
    h0: Array,
    *,
    reverse: bool = False,
    method: str = "chunked",
    time_axis: int = 0,
) -> Array:
    """The states ``h`` of ``h[t] = a[t] * h[t-1] + b[t]`` from ``h[-1] = h0``.

    Args:
      a: the multipliers, floating, time on axis ``time_axis``: ``[T, ...]`` (0) or ``[B, T,
        ...]`` (1).
      b: the added terms, ``a``'s shape and dtype.
      h0: that shape without the time axis: the state before the first step visited.
      reverse: visit the steps from the last to the first (``h[t] = a[t] * h[t+1] + b[t]``,
        ``h[T] = h0``).
      method: one of :data:`METHODS` (see the module docstring).
      time_axis: 0 or 1 (the kernel reads either layout as it lies; the loops move the time
        axis first).

    Returns:
      ``h``, ``a``'s shape and dtype. Differentiable in ``a``, ``b`` and ``h0`` (reverse
      mode: ``jax.grad``, ``jax.vjp``).
    """
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if time_axis not in (0, 1) or a.ndim <= time_axis:
        raise ValueError(f"time_axis must be 0 or 1 and an axis of a {a.shape}, got {time_axis}")
    state_shape = a.shape[:time_axis] + a.shape[time_axis + 1 :]
    if a.shape != b.shape or h0.shape != state_shape:
        raise ValueError(
            f"a and b must have one shape and h0 that shape without its time axis {time_axis}; "
            f"got a {a.shape}, b {b.shape}, h0 {h0.shape}"
        )
    return _scan(a, b, h0.astype(a.dtype), reverse, method, time_axis)


def _kernel_runs(method, *arrays) -> bool:
    """Whether ``method`` is the kernel and it can run on ``arrays`` (float32, loaded)."""
    from jaxrnn import _native

    return method == "kernel" and _native.available(*arrays)


def _solve(a, b, h0, reverse, method, time_axis):
    if a.shape[time_axis] == 0:
        return b
    if method == "associative":
        return _associative(a, b, h0, reverse, time_axis)
    if _kernel_runs(method, a, b, h0):
        from jaxrnn import _native
        from jaxrnn.cells import _linear_kernel

        def native(a, b, h0):
            return _linear_kernel.linear_scan_kernel(a, b, h0, reverse=reverse, time_axis=time_axis)

        # On other platforms, and differentiated (second order), as the chunked loop.
        xla = functools.partial(_loop, "chunked", reverse, time_axis)
        return _native.on_cpu(native, xla, a, b, h0)
    loop = "chunked" if method == "kernel" else method
    return _loop(loop, reverse, time_axis, a, b, h0)


def _loop(method, reverse, time_axis, a, b, h0):
    """A loop over the time axis (moved first and back where it is not)."""
    solve = _chunked if method == "chunked" else _sequential
    if time_axis == 0:
        return solve(a, b, h0, reverse)
    h = solve(jnp.moveaxis(a, 1, 0), jnp.moveaxis(b, 1, 0), h0, reverse)
    return jnp.moveaxis(h, 0, 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _scan(a, b, h0, reverse, method, time_axis):
    return _solve(a, b, h0, reverse, method, time_axis)


def _scan_fwd(a, b, h0, reverse, method, time_axis):
    h = _solve(a, b, h0, reverse, method, time_axis)
    return h, (a, h, h0)


def _scan_bwd(reverse, method, time_axis, saved, g):
    a, h, h0 = saved
    if a.shape[time_axis] == 0:
        return jnp.zeros_like(a), g, jnp.zeros_like(h0)
    if _kernel_runs(method, a, h, h0, g):
        from jaxrnn import _native
        from jaxrnn.cells import _linear_kernel

        def native(a, h, h0, g):
            return _linear_kernel.linear_scan_backward_kernel(
                a, h, h0, g, reverse=reverse, time_axis=time_axis
            )

        # Differentiated (second order) as the chunked loop's derivative.
        xla = functools.partial(_derivative, reverse, "chunked", time_axis)
        return _native.on_cpu(native, xla, a, h, h0, g)
    return _derivative(reverse, method, time_axis, a, h, h0, g)


def _derivative(reverse, method, time_axis, a, h, h0, g):
    """``(d_a, d_b, d_h0)``: the recurrence run the other way (see the module docstring)."""
    if time_axis == 1:
        a, h, g = (jnp.moveaxis(x, 1, 0) for x in (a, h, g))
    zero = jnp.zeros_like(a[:1])
    # The state that step t hands on is read by the next step visited, scaled by its a.
    if reverse:
        a_next, h_prev = jnp.concatenate([zero, a[:-1]]), jnp.concatenate([h[1:], h0[None]])
    else:
        a_next, h_prev = jnp.concatenate([a[1:], zero]), jnp.concatenate([h0[None], h[:-1]])
    d_h = _solve(a_next, g, jnp.zeros_like(h0), not reverse, method, 0)
    d_h0 = a[-1] * d_h[-1] if reverse else a[0] * d_h[0]
    d_a = d_h * h_prev
    if time_axis == 1:
        d_a, d_h = jnp.moveaxis(d_a, 0, 1), jnp.moveaxis(d_h, 0, 1)
    return d_a, d_h, d_h0


_scan.defvjp(_scan_fwd, _scan_bwd)


def _sequential(a, b, h0, reverse):
    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    return jax.lax.scan(step, h0, (a, b), reverse=reverse)[1]


def _associative(a, b, h0, reverse, time_axis):
    first = -1 if reverse else 0
    index = (slice(None),) * time_axis + (first,)
    b = b.at[index].add(a[index] * h0)

    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 * a2, a2 * b1 + b2

    return jax.lax.associative_scan(combine, (a, b), reverse=reverse, axis=time_axis)[1]


def chunk_length(steps: int) -> int:
    """The chunk length of ``"chunked"`` for ``steps`` steps: about ``sqrt(steps)``."""
    return max(1, math.isqrt(max(steps, 1)))


def _chunked(a, b, h0, reverse):
    if reverse:
        return jnp.flip(_chunked(jnp.flip(a, 0), jnp.flip(b, 0), h0, False), 0)
    steps = a.shape[0]
    size = chunk_length(steps)
    chunks = -(-steps // size)
    pad = chunks * size - steps
    if pad:  # steps that keep the state: a = 1, b = 0
        a = jnp.concatenate([a, jnp.ones((pad, *a.shape[1:]), a.dtype)])
        b = jnp.concatenate([b, jnp.zeros((pad, *b.shape[1:]), b.dtype)])
    a = a.reshape(chunks, size, *a.shape[1:])
    b = b.reshape(chunks, size, *b.shape[1:])

    def at(x, i):  # position i of every chunk: [chunks, ...]
        return jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)

    # Each chunk from zeros: its last state and the product of its a.
    def local(i, state):
        h, prod = state
        a_i = at(a, i)
        return a_i * h + at(b, i), a_i * prod

    zeros = jnp.zeros((chunks, *a.shape[2:]), a.dtype)
    ends, prods = jax.lax.fori_loop(0, size, local, (zeros, jnp.ones_like(zeros)))

    # Each chunk's first state: h0, then the state after the chunk before.
    def join(h, end_prod):
        end, prod = end_prod
        return prod * h + end, h

    _, starts = jax.lax.scan(join, h0, (ends, prods))

    def final(i, state):
        h, out = state
        h = at(a, i) * h + at(b, i)
        return h, jax.lax.dynamic_update_index_in_dim(out, h, i, axis=1)

    _, out = jax.lax.fori_loop(0, size, final, (starts, jnp.zeros_like(a)))
    return out.reshape(chunks * size, *a.shape[2:])[:steps]
