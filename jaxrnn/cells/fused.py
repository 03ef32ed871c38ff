"""The fused loop of any cell, generated from its one definition: ``project_inputs``, the
recurrent matmul (``recurrent``) and the cell's own ``update(params, carry, xp, hw) -> (carry,
y)`` (see :class:`jaxrnn.cells._base.CellBase`).

:func:`scan` has the signature of every fused loop, ``scan(cell, loop, params, xs, valid,
resets, carry0) -> (ys, carry)`` (``ys`` time-major, ``loop`` a
:class:`jaxrnn.cells._loops.Loop`), and is a ``jax.custom_vjp``:

* forward: the input projection for all steps at once (``project_inputs`` on the time-major
  inputs); a ``lax.scan`` whose step is the recurrent matmul and ``update``, keeping per step
  what the backward step needs (below);
* backward: a ``lax.scan`` whose step is the derivative of ``update`` and the recurrent
  matmul's transpose (``d_h += d_hw @ w_h^T``), with the gradients of the parameters that
  ``update`` reads (:meth:`~jaxrnn.cells._base.CellBase.update_params`) summed over the steps
  in its carry; after it, ``w_h``'s gradient is one matmul over all steps (``sum_t h_prev^T
  d_hw``, the previous states read back from the outputs) and the projection's parameters and
  inputs get theirs from the derivative of ``project_inputs`` over all steps.

What the forward step keeps: where the cell defines ``update_kept(params, carry, xp, hw) ->
(carry, y, kept)`` and ``update_backward(params, kept, d_carry, d_y) -> (d_carry, d_xp, d_hw,
d_params)`` (its per-step derivative written out, from values it chose to keep), those; else
the residuals of JAX's derivative of ``update`` (``jax.vjp``: the step keeps its pullback's
arrays, but for the parameters themselves, and the backward step calls it).

``valid`` (bool ``[time, batch]`` in the loop's order, or None) and ``resets`` (bool ``[time,
batch]``, zero the carry before visiting step ``t``) as the other fused loops
(:mod:`jaxrnn.cells._loops`): a step past a sequence's length copies the carry and outputs
zeros, the carry a step hands on is zeroed where the next step visited resets, and no
cotangent flows back through a reset.

A cell's outputs must be its fed-back state, ``y == hidden(carry)``, where it has a recurrent
matmul (``recurrent`` not ``None``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn.cells import _loops
from jaxrnn.cells._base import accumulation_dtype, matmul

Array = jax.Array


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class _Layout:
    """Where the kept values of the generated derivative come from: the pullback's tree, and
    for each of its leaves the index of the parameter it is (loop-invariant, not kept per
    step) or ``None`` (kept per step)."""

    tree: jax.tree_util.PyTreeDef
    params: tuple[int | None, ...]


def _step_forward(cell, params, inner, keep, layout_box):
    """The forward step: ``(carry, (y, kept))``; ``kept`` per step."""
    hand_written = keep and getattr(cell, "hand_written_derivative", False)
    inner_leaves = jax.tree.leaves(inner)

    def step(carry, hw, xp_t):
        if not keep:
            new, y = cell.update(params, carry, xp_t, hw)
            return new, y, ()
        if hand_written:
            return cell.update_kept(params, carry, xp_t, hw)

        def update(carry, xp_t, hw, inner):
            return cell.update({**params, **inner}, carry, xp_t, hw)

        (new, y), pullback = jax.vjp(update, carry, xp_t, hw, inner)
        leaves, tree = jax.tree.flatten(pullback)
        ids = {id(leaf): i for i, leaf in enumerate(inner_leaves)}
        positions = tuple(ids.get(id(leaf)) for leaf in leaves)
        layout_box.append(_Layout(tree, positions))
        kept = tuple(leaf for leaf, i in zip(leaves, positions, strict=True) if i is None)
        return new, y, kept

    return step


def _forward(cell, loop, params, xs, valid, resets, carry0, keep=True):
    xs_tm = xs if loop.time_major else jnp.swapaxes(xs, 0, 1)
    inner = cell.update_params(params)
    # Per gate block, separate buffers: see the module docstring of ``_loops``.
    xp = tuple(jnp.split(cell.project_inputs(params, xs_tm), cell.gates, axis=-1))
    layout_box: list[_Layout] = []
    step = _step_forward(cell, params, inner, keep, layout_box)
    leaves0, carry_tree = jax.tree.flatten(carry0)

    def body(carry_leaves, inputs):
        xp_t, valid_t, reset_after_t = inputs
        if not cell.accepts_gate_blocks:
            xp_t = jnp.concatenate(xp_t, axis=-1)
        carry = jax.tree.unflatten(carry_tree, carry_leaves)
        h = cell.hidden(carry)
        hw = cell.recurrent(params, h)
        new, y, kept = step(carry, hw, xp_t)
        new_leaves = jax.tree.leaves(new)
        if valid_t is not None:
            # A padded step copies the carry and outputs zeros.
            live = valid_t[:, None]
            new_leaves = [
                jnp.where(live, n, c) for n, c in zip(new_leaves, carry_leaves, strict=True)
            ]
            y = jnp.where(live, y, jnp.zeros_like(y))
        # The next step starts from zeros where it resets (and keeps them as its state).
        return list(_loops.zero_where(reset_after_t, *new_leaves)), (y, kept)

    after, leaves0 = _loops.resets_after(loop.backwards, resets, tuple(leaves0))
    leaves, (ys, kept) = jax.lax.scan(
        body, list(leaves0), (xp, valid, after), reverse=loop.backwards, unroll=loop.unroll
    )
    carry = jax.tree.unflatten(carry_tree, leaves)
    layout = layout_box[0] if layout_box else None
    return ys, carry, (carry0, ys, kept, layout)


def _pullback(cell, params, inner, layout):
    """``pullback(kept_t, d_carry, d_y) -> (d_carry, d_xp, d_hw, d_inner)`` of one step."""
    if layout is None:

        def hand_written(kept_t, y, d_carry, d_y):
            return cell.update_backward(params, kept_t, y, d_carry, d_y)

        return hand_written
    inner_leaves = jax.tree.leaves(inner)

    def generated(kept_t, y, d_carry, d_y):
        del y
        per_step = iter(kept_t)
        leaves = [next(per_step) if i is None else inner_leaves[i] for i in layout.params]
        pullback = jax.tree.unflatten(layout.tree, leaves)
        d_carry, d_xp, d_hw, d_inner = pullback((d_carry, d_y))
        return d_carry, d_xp, d_hw, d_inner

    return generated


def _backward(cell, loop, saved, cotangents):
    params, xs, valid, resets, (carry0, ys, kept, layout) = saved
    d_ys, d_carry = cotangents
    xs_tm = xs if loop.time_major else jnp.swapaxes(xs, 0, 1)
    inner = cell.update_params(params)
    pullback = _pullback(cell, params, inner, layout)
    has_w_h = cell.recurrent(params, cell.hidden(carry0)) is not None
    d_leaves0, carry_tree = jax.tree.flatten(d_carry)
    d_ys = d_ys.astype(ys.dtype)
    w_h_t = params["w_h"].astype(cell.dtype).T if has_w_h else None

    def body(state, inputs):
        d_leaves, d_inner = state
        kept_t, valid_t, reset_after_t, d_y, y_t = inputs
        # The carry this step handed on was zeroed where the next step resets: no cotangent
        # flows back through it.
        d_leaves = list(_loops.zero_where(reset_after_t, *d_leaves))
        d_new, d_y_in = d_leaves, d_y
        if valid_t is not None:
            live = valid_t[:, None]
            d_new = [jnp.where(live, d, jnp.zeros_like(d)) for d in d_leaves]
            d_y_in = jnp.where(live, d_y, jnp.zeros_like(d_y))
        d_prev, d_xp, d_hw, d_inner_t = pullback(
            kept_t, y_t, jax.tree.unflatten(carry_tree, d_new), d_y_in
        )
        same = d_hw is d_xp  # one array: emitted once
        if isinstance(d_xp, tuple | list):
            d_xp = jnp.concatenate(d_xp, axis=-1)
        if has_w_h:
            d_h = cell.hidden(d_prev) + matmul(d_hw, w_h_t, cell.dtype)
            d_prev = cell.with_hidden(d_prev, d_h)
        d_prev_leaves = jax.tree.leaves(d_prev)
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            d_prev_leaves = [
                jnp.where(live, p, d) for p, d in zip(d_prev_leaves, d_leaves, strict=True)
            ]
            d_xp = jnp.where(live, d_xp, jnp.zeros_like(d_xp))
            if has_w_h and not same:
                d_hw = jnp.where(live, d_hw, jnp.zeros_like(d_hw))
        d_inner = {k: v + d_inner_t[k] if k in d_inner_t else v for k, v in d_inner.items()}
        return (d_prev_leaves, d_inner), (d_xp, d_hw if has_w_h and not same else None)

    d_inner0 = {k: jnp.zeros(v.shape, accumulation_dtype(v.dtype)) for k, v in inner.items()}
    after = _loops.resets_after(loop.backwards, resets, ())[0]
    (d_leaves, d_inner), (d_xp, d_hw) = jax.lax.scan(
        body,
        (list(d_leaves0), d_inner0),
        (kept, valid, after, d_ys, ys),
        reverse=not loop.backwards,
        unroll=loop.unroll,
    )
    if resets is not None:  # the initial carry was zeroed where the first step resets
        d_leaves = _loops.zero_where(resets[-1 if loop.backwards else 0], *d_leaves)
    d_carry0 = jax.tree.unflatten(carry_tree, list(d_leaves))
    if has_w_h and d_hw is None:  # the step's d_hw was its d_xp
        d_hw = d_xp
    projected = {k: v for k, v in params.items() if k != "w_h"}

    def project(projected, xs_tm):
        return cell.project_inputs({**params, **projected}, xs_tm)

    _, project_vjp = jax.vjp(project, projected, xs_tm)
    d_projected, d_xs = project_vjp(d_xp.astype(accumulation_dtype(cell.dtype)))
    grads = dict(d_projected)
    for k, v in d_inner.items():
        grads[k] = grads[k] + v if k in grads else v
    if has_w_h:
        h_prev = _loops.states_before(loop.backwards, cell.hidden(carry0), ys, resets)
        d_w_h = _loops.recurrent_weight_gradient(
            loop.backwards, None, None, d_hw, cell.dtype, h_prev=h_prev
        )
        grads["w_h"] = grads["w_h"] + d_w_h if "w_h" in grads else d_w_h
    d_xs = d_xs.astype(xs.dtype)
    d_xs = d_xs if loop.time_major else jnp.swapaxes(d_xs, 0, 1)
    return _loops.cast_like(grads, params), d_xs, None, None, d_carry0


scan = _loops.with_backward(_forward, _backward)
