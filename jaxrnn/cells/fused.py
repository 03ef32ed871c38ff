"""The fused loop of every cell, generated from its one definition: :meth:`projection
<jaxrnn.cells._base.CellBase.projection>` and :meth:`~jaxrnn.cells._base.CellBase.bias`, the
recurrent matmul ``h @ w_h`` (where :meth:`~jaxrnn.cells._base.CellBase.recurrent` is not
``None``) and the cell's own ``update(params, carry, xp, hw) -> (carry, y)``.

:func:`scan` has the signature of the fused path, ``scan(cell, loop, params, xs, valid,
resets, carry0) -> (ys, carry)`` (``ys`` time-major, ``loop`` a
:class:`jaxrnn.cells._loops.Loop`), and is a ``jax.custom_vjp``:

* forward: the projection for all steps at once, as the inputs lie, split per gate block and
  each block time-major; a ``lax.scan`` whose step adds the bias, does the recurrent matmul
  and ``update``, and keeps what the backward step needs;
* backward: a ``lax.scan`` whose step is the derivative of ``update`` and the matmul's
  transpose (``d_h += d_hw @ w_h^T``), with the gradients of the parameters ``update`` reads
  (:meth:`~jaxrnn.cells._base.CellBase.update_params`) summed in its carry; after it, ``w_h``'s
  gradient is one matmul over all steps (``sum_t h_prev^T d_hw``, the previous states read
  back from the outputs), the bias's a sum, and the projection's parameters and the inputs get
  theirs from the projection's derivative over all steps.

The derivative of a step is the cell's own where it writes one out: ``update_kept(params,
carry, xp, hw) -> (carry, y, kept)`` (``kept`` a tuple of ``[batch, H]`` arrays) and
``update_backward(params, kept, h_prev, y, d_carry, d_y) -> (d_carry, d_xp, d_hw,
d_params)`` (``d_xp``, ``d_hw`` and a gradient may each be the tuple of its gate blocks),
with ``hand_written_derivative`` true; else JAX's derivative of ``update``
(``jax.vjp``: the step keeps its pullback's arrays but for the parameters themselves, and the
backward step calls it).

Where the cell has CPU kernels (:meth:`~jaxrnn.cells._base.CellBase.kernels`) and
``loop.native`` asks for them, the two loops run as the kernels on a CPU
(:func:`jaxrnn._native.on_cpu`), with the XLA loops as their twins on other platforms and as
their derivatives (:func:`kernel_twins`).

``valid`` (bool ``[time, batch]`` in the loop's order, or None) and ``resets`` (bool ``[time,
batch]``, zero the carry before visiting step ``t``; only where valid): a step past a
sequence's length copies the carry and outputs zeros; the carry a step hands on is zeroed
where the next step visited resets (:func:`jaxrnn.cells._loops.resets_after`), so that what a
cell keeps of its previous state is zero there; no cotangent flows back through a reset, and
``w_h``'s gradient takes the state before a reset as zero. Undifferentiated, the loop keeps
nothing.

A cell's outputs must be its fed-back state, ``y == hidden(carry)``, where it has a recurrent
matmul. ``docs/design/fused-loops.md`` gives the reasons for these layouts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells import _loops
from jaxrnn.cells._base import accumulation_dtype, matmul
from jaxrnn.cells._loops import BackwardInputs, LoopInputs

Array = jax.Array


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True, eq=False)
class _Layout:
    """Where the kept values of the generated derivative come from: the pullback's tree, and
    for each of its leaves the index of the parameter it is (loop-invariant, not kept per
    step) or ``None`` (kept per step)."""

    tree: jax.tree_util.PyTreeDef
    params: tuple[int | None, ...]


def _recurrent_weight(cell, params, carry0) -> Array | None:
    """``w_h`` in the computation dtype, or None for a cell without a recurrent matmul."""
    if cell.recurrent(params, cell.hidden(carry0)) is None:
        return None
    return params["w_h"].astype(cell.dtype)


def _inputs(cell, loop, params, xs, valid, resets, carry0) -> tuple[LoopInputs, bool]:
    """The loops' inputs, and whether they run as the cell's kernels. ``xw`` is laid out as
    the inputs where the kernels read it (or the cell has its own projection), else the
    tuple of its gate blocks, time-major, one matmul each."""
    w_h = _recurrent_weight(cell, params, carry0)
    kernels = (
        w_h is not None
        and cell.kernels() is not None
        and _loops.native_loops(loop.native, w_h, *jax.tree.leaves(carry0))
    )
    if cell.plain_projection and not kernels:
        xs_tm = xs if loop.time_major else jnp.swapaxes(xs, 0, 1)
        blocks = _loops.split_gates(params["w_i"], cell.gates)
        xw = tuple(matmul(xs_tm, w, cell.dtype) for w in blocks)
    else:
        lead = xs.shape[:2]
        xw = cell.projection(params, xs.reshape(lead[0] * lead[1], xs.shape[2]))
        xw = xw.reshape(*lead, -1)
    bias = cell.bias(params)
    acc = accumulation_dtype(cell.dtype)
    bias = None if bias is None else bias.astype(acc)
    inputs = LoopInputs(w_h, xw, bias, cell.update_params(params), valid, resets, carry0)
    return inputs, kernels


def _step_forward(cell, inner, keep, layout_box):
    """``step(carry, xp_t, hw) -> (carry, y, kept)``."""
    inner_leaves = jax.tree.leaves(inner)

    def step(carry, xp_t, hw):
        if not keep:
            return (*cell.update(inner, carry, xp_t, hw), ())
        if cell.hand_written_derivative:
            return cell.update_kept(inner, carry, xp_t, hw)
        (new, y), pullback = jax.vjp(
            lambda carry, xp_t, hw, inner: cell.update(inner, carry, xp_t, hw),
            carry,
            xp_t,
            hw,
            inner,
        )
        leaves, tree = jax.tree.flatten(pullback)
        ids = {id(leaf): i for i, leaf in enumerate(inner_leaves)}
        positions = tuple(ids.get(id(leaf)) for leaf in leaves)
        layout_box.append(_Layout(tree, positions))
        kept = tuple(leaf for leaf, i in zip(leaves, positions, strict=True) if i is None)
        return new, y, kept

    return step


def _loop_forward(cell, loop, keep, inputs: LoopInputs):
    """The XLA forward loop: ``(ys, carry, kept, layout)``."""
    w_h, xw, bias, inner, valid, resets, carry0 = inputs
    xp = xw if isinstance(xw, tuple) else _loops.per_gate(xw, cell.gates, loop.time_major)
    biases = None if bias is None else _loops.split_gates(bias, cell.gates)
    layout_box: list[_Layout] = []
    step = _step_forward(cell, inner, keep, layout_box)
    leaves0, carry_tree = jax.tree.flatten(carry0)

    def body(carry_leaves, inputs):
        xp_t, valid_t, reset_after_t = inputs
        if biases is not None:
            xp_t = tuple(x + b for x, b in zip(xp_t, biases, strict=True))
        if not cell.accepts_gate_blocks:
            xp_t = jnp.concatenate(xp_t, axis=-1)
        carry = jax.tree.unflatten(carry_tree, carry_leaves)
        hw = None if w_h is None else matmul(cell.hidden(carry), w_h, w_h.dtype)
        new, y, kept = step(carry, xp_t, hw)
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
    return ys, carry, kept, layout_box[0] if layout_box else None


def _pullback(cell, inner, layout):
    """``pullback(kept_t, h_prev, y, d_carry, d_y) -> (d_carry, d_xp, d_hw, d_inner)``."""
    if layout is None:

        def hand_written(kept_t, h_prev, y, d_carry, d_y):
            return cell.update_backward(inner, kept_t, h_prev, y, d_carry, d_y)

        return hand_written
    inner_leaves = jax.tree.leaves(inner)

    def generated(kept_t, h_prev, y, d_carry, d_y):
        del h_prev, y
        per_step = iter(kept_t)
        leaves = [next(per_step) if i is None else inner_leaves[i] for i in layout.params]
        pullback = jax.tree.unflatten(layout.tree, leaves)
        return pullback((d_carry, d_y))

    return generated


def _joined(blocks):
    """A value given as the tuple of its gate blocks, joined along its last axis."""
    return jnp.concatenate(blocks, axis=-1) if isinstance(blocks, tuple | list) else blocks


def _loop_backward(cell, loop, layout, w_h, inner, inputs: BackwardInputs):
    """The XLA backward loop: ``(d_xp, d_hw, d_carry0, d_inner, h_prev)``, ``d_xp`` and
    ``d_hw`` ``[T, B, G*H]`` (``d_hw`` None without ``w_h``), ``h_prev`` the state before
    every step."""
    kept, valid, d_ys, d_carry, ys, h0, _, resets = inputs
    pullback = _pullback(cell, inner, layout)
    d_leaves0, carry_tree = jax.tree.flatten(d_carry)
    w_h_t = None if w_h is None else w_h.T
    h_prev = _loops.states_before(loop.backwards, h0, ys, resets)

    def body(state, inputs):
        d_leaves, d_inner = state
        kept_t, valid_t, reset_after_t, d_y, y_t, h_prev_t = inputs
        # The carry this step handed on was zeroed where the next step resets: no cotangent
        # flows back through it.
        d_leaves = list(_loops.zero_where(reset_after_t, *d_leaves))
        d_new, d_y_in = d_leaves, d_y
        if valid_t is not None:
            live = valid_t[:, None]
            d_new = [jnp.where(live, d, jnp.zeros_like(d)) for d in d_leaves]
            d_y_in = jnp.where(live, d_y, jnp.zeros_like(d_y))
        d_prev, d_xp, d_hw, d_inner_t = pullback(
            kept_t, h_prev_t, y_t, jax.tree.unflatten(carry_tree, d_new), d_y_in
        )
        same = d_hw is d_xp  # one array: emitted once
        d_xp, d_hw = _joined(d_xp), _joined(d_hw)
        d_inner_t = {k: _joined(v) for k, v in d_inner_t.items()}
        if w_h_t is not None:
            d_h = cell.hidden(d_prev) + matmul(d_hw, w_h_t, w_h_t.dtype)
            d_prev = cell.with_hidden(d_prev, d_h)
        d_prev_leaves = jax.tree.leaves(d_prev)
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            d_prev_leaves = [
                jnp.where(live, p, d) for p, d in zip(d_prev_leaves, d_leaves, strict=True)
            ]
            d_xp = jnp.where(live, d_xp, jnp.zeros_like(d_xp))
            if w_h_t is not None and not same:
                d_hw = jnp.where(live, d_hw, jnp.zeros_like(d_hw))
        d_inner = {k: v + d_inner_t[k] if k in d_inner_t else v for k, v in d_inner.items()}
        return (d_prev_leaves, d_inner), (d_xp, d_hw if w_h_t is not None and not same else None)

    d_inner0 = {k: jnp.zeros(v.shape, accumulation_dtype(v.dtype)) for k, v in inner.items()}
    after = _loops.resets_after(loop.backwards, resets, ())[0]
    (d_leaves, d_inner), (d_xp, d_hw) = jax.lax.scan(
        body,
        (list(d_leaves0), d_inner0),
        (kept, valid, after, d_ys, ys, h_prev),
        reverse=not loop.backwards,
        unroll=loop.unroll,
    )
    if resets is not None:  # the initial carry was zeroed where the first step resets
        d_leaves = _loops.zero_where(resets[-1 if loop.backwards else 0], *d_leaves)
    if w_h is not None and d_hw is None:  # the step's d_hw was its d_xp
        d_hw = d_xp
    return d_xp, d_hw, jax.tree.unflatten(carry_tree, list(d_leaves)), d_inner, h_prev


def kernel_twins(cell, loop, keep=True):
    """``(forward, backward)``: the XLA loops with the signatures of the cell's kernels
    (:class:`jaxrnn.cells._loops.Kernels`, ``reverse`` and ``time_major`` from ``loop``),
    computing the same values: what runs in their place off a CPU, and their derivative."""
    kernels = cell.kernels()

    def forward(inputs: LoopInputs):
        ys, carry, kept, _ = _loop_forward(cell, loop, keep, inputs)
        packed = jnp.zeros((0,), jnp.float32)
        if keep and kernels.kept:
            packed = _native.pack_kept(tuple(kept), cell.gates)
        return ys, carry, packed

    def backward(w_h, inner, inputs: BackwardInputs):
        steps, batch, hidden = inputs.ys.shape
        kept = ()
        if kernels.kept:
            kept = _native.unpack_kept(inputs.kept, kernels.kept, cell.gates, *inputs.ys.shape)
        d_xp, d_hw, d_carry0, d_inner, h_prev = _loop_backward(
            cell, loop, None, w_h, inner, inputs._replace(kept=kept)
        )
        d_w_h = _loops.recurrent_weight_gradient(
            loop.backwards, None, None, d_hw, w_h.dtype, h_prev=h_prev
        )
        d_w_i, d_b = _loops.input_weight_gradient(inputs.xs, d_xp, loop.time_major, w_h.dtype)
        return d_xp, d_carry0, d_w_h, d_inner, d_w_i, d_b

    return forward, backward


def _float32(params):
    """The kernels read float32 (the plan rounds narrower parameters for them)."""
    return {k: v.astype(jnp.float32) for k, v in params.items()}


def _forward(loops, cell, loop, params, xs, valid, resets, carry0, keep=True):
    inputs, kernels = _inputs(cell, loop, params, xs, valid, resets, carry0)
    if not kernels:
        ys, carry, kept, layout = loops.forward(cell, loop, keep, inputs)
        return ys, carry, (carry0, ys, kept, layout)
    twin, _ = kernel_twins(cell, loop, keep)
    kernel = functools.partial(
        cell.kernels().forward, cell, reverse=loop.backwards, time_major=loop.time_major, keep=keep
    )
    inputs = inputs._replace(inner=_float32(inputs.inner))
    ys, carry, packed = _native.on_cpu(kernel, twin, inputs)
    return ys, carry, (carry0, ys, packed, None)


def _projection_gradients(cell, params, xs, d_xp, time_major):
    """``(d_params, d_xs)`` of the projection and its bias, given the cotangent ``d_xp`` of
    their sum (``[T, B, G*H]``): written out for a plain ``x @ w_i``
    (:attr:`~jaxrnn.cells._base.CellBase.plain_projection`), else JAX's derivative of the
    cell's projection."""
    d_xp = d_xp.astype(accumulation_dtype(cell.dtype))
    weights = {k: v for k, v in params.items() if k != "w_h"}
    if cell.plain_projection:
        d_w_i, d_bias = _loops.input_weight_gradient(xs, d_xp, time_major, cell.dtype)
        d_params = {k: jnp.zeros(v.shape, d_w_i.dtype) for k, v in weights.items()}
        d_params["w_i"] = d_w_i
        d_xs = _loops.input_cotangent(params, time_major, d_xp, xs, cell.dtype)
    else:
        xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
        _, projection_vjp = jax.vjp(
            lambda weights, xs_tm: cell.projection({**params, **weights}, xs_tm), weights, xs_tm
        )
        d_params, d_xs = projection_vjp(d_xp)
        d_xs = d_xs.astype(xs.dtype)
        d_xs = d_xs if time_major else jnp.swapaxes(d_xs, 0, 1)
        d_bias = d_xp.sum(axis=(0, 1))
    if cell.bias(params) is not None:
        _, bias_vjp = jax.vjp(lambda weights: cell.bias({**params, **weights}), weights)
        (d_from_bias,) = bias_vjp(d_bias.astype(cell.bias(params).dtype))
        d_params = jax.tree.map(jnp.add, d_params, d_from_bias)
    return d_params, d_xs


def _kernel_backward(cell, loop, params, inputs: BackwardInputs):
    """The backward pass on the kernels: ``(d_xp, d_carry0, grads)``."""
    w_h, inner = params["w_h"].astype(cell.dtype), _float32(cell.update_params(params))
    _, twin = kernel_twins(cell, loop)
    kernel = functools.partial(
        cell.kernels().backward, cell, reverse=loop.backwards, time_major=loop.time_major
    )
    inputs = inputs._replace(xs=inputs.xs.astype(jnp.float32))
    d_xp, d_carry0, d_w_h, d_inner, d_w_i, d_b = _native.on_cpu(kernel, twin, w_h, inner, inputs)
    grads = {"w_i": d_w_i, "w_h": d_w_h, "b": d_b} | dict(d_inner)
    if "b_h" in params and "b_h" not in grads:  # added to b
        grads["b_h"] = d_b
    return d_xp, d_carry0, grads


def _combined_gradients(cell, params, xs, h_prev, d_z, time_major):
    """``w_h``'s, ``w_i``'s and the bias's gradients as one matmul, ``[h_prev | x | 1]^T
    d_z``, where the step's ``d_hw`` is its ``d_xp`` (``d_z``) and the projection is plain;
    a computation narrower than float32 sums the bias's from ``d_z`` in float32."""
    acc = accumulation_dtype(cell.dtype)
    narrow = jnp.dtype(cell.dtype).itemsize < 4
    xs_tm = xs if time_major else jnp.swapaxes(xs, 0, 1)
    parts = [h_prev.astype(acc), xs_tm.astype(acc)]
    if not narrow:
        parts.append(jnp.ones((*xs_tm.shape[:2], 1), acc))
    rows = jnp.concatenate(parts, axis=-1)
    grads = matmul(rows.reshape(-1, rows.shape[-1]).T, d_z.reshape(-1, d_z.shape[-1]), cell.dtype)
    size = h_prev.shape[-1]
    d_bias = d_z.astype(acc).sum(axis=(0, 1)) if narrow else grads[-1]
    d_params = {k: jnp.zeros(v.shape, acc) for k, v in params.items()}
    d_params["w_h"], d_params["w_i"] = grads[:size], grads[size : size + xs_tm.shape[-1]]
    _, bias_vjp = jax.vjp(lambda params: cell.bias(params), params)
    (d_from_bias,) = bias_vjp(d_bias.astype(cell.bias(params).dtype))
    d_xs = _loops.input_cotangent(params, time_major, d_z, xs, cell.dtype)
    return jax.tree.map(jnp.add, d_params, d_from_bias), d_xs


def _backward(loops, cell, loop, saved, cotangents):
    params, xs, valid, resets, (carry0, ys, kept, layout) = saved
    d_ys, d_carry = cotangents
    inputs = BackwardInputs(
        kept, valid, d_ys.astype(ys.dtype), d_carry, ys, cell.hidden(carry0), xs, resets
    )
    if not isinstance(kept, tuple):  # the forward pass ran the kernel: a packed array
        d_xp, d_carry0, grads = _kernel_backward(cell, loop, params, inputs)
        d_xs = _loops.input_cotangent(params, loop.time_major, d_xp, xs, cell.dtype)
        return _loops.cast_like(grads, params), d_xs, None, None, d_carry0
    w_h = _recurrent_weight(cell, params, carry0)
    d_xp, d_hw, d_carry0, d_inner, h_prev = loops.backward(
        cell, loop, layout, w_h, cell.update_params(params), inputs
    )
    if d_hw is d_xp and cell.plain_projection and cell.bias(params) is not None:
        grads, d_xs = _combined_gradients(cell, params, xs, h_prev, d_xp, loop.time_major)
    else:
        grads, d_xs = _projection_gradients(cell, params, xs, d_xp, loop.time_major)
        if w_h is not None:
            d_w_h = _loops.recurrent_weight_gradient(
                loop.backwards, None, None, d_hw, cell.dtype, h_prev=h_prev
            )
            grads["w_h"] = grads["w_h"] + d_w_h if "w_h" in grads else d_w_h
    for k, v in d_inner.items():
        grads[k] = grads[k] + v if k in grads else v
    return _loops.cast_like(grads, params), d_xs, None, None, d_carry0


@dataclasses.dataclass(frozen=True)
class Loops:
    """The two time loops a fused loop runs between its projection and its gradients:
    ``forward(cell, loop, keep, inputs) -> (ys, carry, kept, layout)`` (``inputs`` a
    :class:`~jaxrnn.cells._loops.LoopInputs`, ``ys`` and ``kept`` time-major) and
    ``backward(cell, loop, layout, w_h, inner, inputs) -> (d_xp, d_hw, d_carry0, d_inner,
    h_prev)`` (``inputs`` a :class:`~jaxrnn.cells._loops.BackwardInputs`; ``d_xp`` and
    ``d_hw`` ``[T, B, G*H]``, the same array where the step's are; ``h_prev`` the state before
    every step). ``lax.scan`` here; the Pallas kernels in :mod:`jaxrnn.cells.pallas`."""

    forward: Callable
    backward: Callable

    def scan(self) -> Callable:
        """``scan(cell, loop, params, xs, valid, resets, carry0) -> (ys, carry)``."""
        return _loops.with_backward(
            functools.partial(_forward, self), functools.partial(_backward, self)
        )


scan = Loops(_loop_forward, _loop_backward).scan()
