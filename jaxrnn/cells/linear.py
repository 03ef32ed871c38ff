"""Cells whose state update is linear in the state, ``h' = a * h + b`` with ``a`` and ``b``
computed from the input alone (no recurrent matrix): the base class :class:`LinearCell`, and
:func:`parallel`, which runs such a cell over a whole sequence at once (the path
``implementation="parallel"``, :func:`jaxrnn.plan.plan`).

Because ``a`` and ``b`` do not depend on the state, every step's pair comes from one
computation over all steps (the input projection, then the cell's
``coefficients``), and the recurrence itself is
:func:`jaxrnn.cells.linear_scan.linear_scan`. The sequence semantics become coefficients: a
step past a sequence's length keeps the state (``a = 1``, ``b = 0``) and outputs zeros, a
reset before a step drops the state there (``a = 0``, so no gradient crosses it), recurrent
dropout scales ``a`` by its mask (the state enters the step only through ``a * h``), and the
initial carry is the scan's ``h0``. The outputs are the states.

On a CPU with jaxrnn's kernels, a cell with a kernel of its own (:attr:`LinearCell.kernel`:
MinGRU, MinLSTM, RGLRU) computing in float32 runs the whole layer in one kernel call each way
(the projection, :meth:`LinearCell.kernel_projection`, the gates, the semantics and the
recurrence; the weights' gradients in the backward call, the inputs' only where they are
differentiated). Otherwise the kernel method runs the sequence in time chunks, one after
another (:func:`chunk_steps`), each chunk's gates through the cell's kernel where it has one,
else through XLA and the plain recurrence's kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxrnn.cells._base import Array, CellBase, Params, accumulation_dtype, check_floating
from jaxrnn.cells.linear_scan import linear_scan

_glorot = jax.nn.initializers.glorot_uniform()


class LinearCell(CellBase):
    """The base class of a cell with ``h' = a * h + b``, ``(a, b) =
    coefficients(params, x @ w_i + b)``; the output is ``h'``.

    A subclass sets ``gates`` (the blocks of ``hidden_size`` columns in ``w_i``) and defines
    :meth:`coefficients`. It runs under every path of ``rnn``: ``"parallel"`` (the default),
    ``"scan"`` and ``static_rnn`` step it through :meth:`update`.
    """

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``w_i [input_size, gates * hidden_size]`` (besides the bias ``b``)."""
        return {"w_i": (input_size, self.gates * self.hidden_size)}

    def bias_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``b``, a value per column of ``w_i`` (no second bias)."""
        return {"b": super().bias_shapes(input_size)["b"]}

    def init(self, key, input_size: int, dtype=None) -> Params:
        """``w_i`` Glorot-uniform, ``b`` zeros, in ``dtype`` (default ``param_dtype``)."""
        dtype = self.param_dtype if dtype is None else dtype
        check_floating(dtype, "dtype")
        if not isinstance(input_size, int) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        width = self.gates * self.hidden_size
        wide = jnp.promote_types(dtype, jnp.float32)
        w_i = _glorot(key, (input_size, width), wide).astype(dtype)
        return {"w_i": w_i, "b": jnp.zeros((width,), dtype)}

    # The cell's kernel of its own in jaxrnn's CPU kernels (a key of
    # jaxrnn.cells._linear_kernel.CELL_KERNELS: its coefficients from xp and kernel_unit), or
    # None.
    kernel: str | None = None

    def kernel_unit(self, update_params: Params) -> Array | None:
        """The per-unit parameter that the cell's kernel takes (float32 ``[hidden_size]``),
        from :meth:`update_params`' parameters; None for none."""
        return None

    def kernel_projection(self, params: Params) -> tuple[Array, Array] | None:
        """``(w, b)`` with ``project_inputs(params, x) == x @ w + b`` (``w`` ``[I, gates *
        hidden_size]``): the projection that the cell's whole-layer kernel computes; None
        where the projection is not one matmul of the parameters."""
        if not self.plain_projection or set(params) != {"w_i", "b"}:
            return None
        return params["w_i"], params["b"]

    # Defined by each cell: (params, xp) -> (a, b), each [..., hidden_size] in xp's dtype (the
    # accumulation dtype), from the projected input xp [..., gates * hidden_size].
    coefficients: Callable[[Params, Array], tuple[Array, Array]]

    def recurrent(self, params: Params, h: Array) -> None:
        """``None``: the state enters the step only through ``a * h``."""
        return None

    def update(self, params: Params, carry: Array, xp: Array, hw: None) -> tuple[Array, Array]:
        """``h' = a * h + b`` with ``(a, b)`` = ``coefficients``; the output is ``h'``."""
        del hw
        a, b = self.coefficients(params, xp)
        h = a * carry + b
        return h, h

    def masked_step(self, params: Params, carry: Array, xp: Array, mask: Array):
        """Recurrent dropout: ``h' = a * (h * mask) + b`` (the one place the state enters)."""
        return self.update(params, carry * mask.astype(carry.dtype), xp, None)


def is_linear(cell: CellBase) -> bool:
    """Whether ``cell`` is a :class:`LinearCell` (runs ``implementation="parallel"``)."""
    return isinstance(cell, LinearCell)


def parallel(
    cell: LinearCell,
    params: Params,
    xs: Array,
    carry0: Array,
    *,
    backwards: bool,
    method: str,
    time_major: bool = True,
    valid: Array | None = None,
    resets: Array | None = None,
    hidden_mask: Array | None = None,
    chunk: int | None = None,
) -> tuple[Array, Array]:
    """Run ``cell`` over ``xs`` in parallel over time, in the layout ``xs`` has.

    Args:
      cell: with its computation dtype set.
      params: the cell's parameters.
      xs: ``[T, B, I]`` (``time_major``) or ``[B, T, I]``.
      carry0: ``[B, H]`` in the accumulation dtype.
      backwards: visit the steps from the last to the first.
      method: how the recurrence is solved (:data:`jaxrnn.cells.linear_scan.METHODS`).
      time_major: the layout of ``xs`` and of the returned ``ys``.
      valid: bool ``[T, B]`` (or None): steps past a sequence's length are False.
      resets: bool ``[T, B]`` (or None), in the order the steps are visited: the state is
        zero before the steps where True (only where ``valid``).
      hidden_mask: ``[B, H]`` (or None): recurrent dropout's mask on the state.
      chunk: the steps per time chunk (default: :func:`chunk_steps`): the chunks run one
        after another, each recomputed from its first state in the backward pass, so that
        every pass over a chunk's values stays in the CPU's cache.

    Returns:
      ``(ys, carry)``: ``ys`` ``[T, B, H]`` (or ``[B, T, H]``) in the computation dtype,
      zero where not ``valid``; ``carry`` ``[B, H]``, the state after the last valid step
      visited.
    """
    time_axis = 0 if time_major else 1
    if not time_major:  # the masks in the layout of the data
        valid = None if valid is None else valid.T
        resets = None if resets is None else resets.T
    carry0 = carry0.astype(accumulation_dtype(cell.dtype))
    if method == "kernel" and chunk is None and _sequence_kernel_runs(cell, params, xs, carry0):
        keep = None if hidden_mask is None else hidden_mask.astype(carry0.dtype)
        masks = _given(valid), _given(resets), _given(keep, carry0.dtype)
        fixed = (_WHOLE_LAYER, cell, backwards, time_axis)
        h = _kernel_states(*fixed, (xs, params), carry0, *masks)
        ys, carry = _outputs(h, carry0, valid, backwards, time_axis)
        return ys.astype(cell.dtype), carry
    size = chunk_steps(xs.shape[0 if time_major else 1], carry0.shape, method, chunk)
    if size is None:
        run = _Run(cell, backwards, method, time_axis)
        ys, carry = run(params, hidden_mask, xs, carry0, valid, resets)
    else:  # each chunk is recomputed whole in the backward pass
        run = _Run(cell, backwards, method, time_axis, recompute=False)
        ys, carry = _in_chunks(run, size, params, hidden_mask, xs, carry0, valid, resets)
    return ys.astype(cell.dtype), carry


def chunk_steps(steps: int, state_shape, method: str, chunk: int | None = None) -> int | None:
    """The steps per time chunk of :func:`parallel`, or ``None`` for the whole sequence at
    once: with the CPU kernel, chunks whose arrays of ``[batch, steps, H]`` hold about
    ``2**18`` values (so that a chunk's passes stay in the CPU's cache; measured in
    ``docs/design/linear-recurrences.md``), unless ``chunk`` says otherwise."""
    if chunk is None:
        if method != "kernel":
            return None
        chunk = max(8, 2**18 // max(1, math.prod(state_shape)))
    return chunk if chunk < steps else None


@dataclasses.dataclass(frozen=True)
class _Run:
    """A linear cell's steps over a sequence in one layout and direction (hashable)."""

    cell: LinearCell
    backwards: bool
    method: str
    time_axis: int
    recompute: bool = True  # the coefficients in the backward pass rather than kept

    def __call__(self, params, hidden_mask, xs, carry0, valid, resets):
        """``(ys, carry)`` over ``xs`` from ``carry0`` (``ys`` in the accumulation dtype);
        the arguments as :func:`parallel`'s, the masks in the layout of ``xs``."""
        xp = self.cell.project_inputs(params, xs)
        if self.method == "kernel" and _cell_kernel_runs(self.cell, xp, carry0):
            fixed = (self.cell, self.backwards, self.time_axis)
            update = self.cell.update_params(params)
            h = _cell_states(*fixed, xp, update, carry0, valid, resets, hidden_mask)
        else:
            h = self.states(params, xp, carry0, valid, resets, hidden_mask)
        return _outputs(h, carry0, valid, self.backwards, self.time_axis)

    def states(self, params, xp, carry0, valid, resets, hidden_mask):
        """The states after every step (not masked) from the projected input ``xp``: the
        cell's ``coefficients``, the semantics, then :func:`linear_scan`."""
        time_major = self.time_axis == 0
        coefficients = self.cell.coefficients
        if self.recompute:  # from xp in the backward pass: fewer arrays of the sequence's size
            coefficients = jax.checkpoint(coefficients)
        a, b = coefficients(params, xp)
        if hidden_mask is not None:
            mask = hidden_mask.astype(a.dtype)
            a = a * (mask[None] if time_major else mask[:, None])
        if resets is not None:
            a = jnp.where(resets[..., None], jnp.zeros_like(a), a)
        if valid is not None:
            keep = valid[..., None]
            a = jnp.where(keep, a, jnp.ones_like(a))
            b = jnp.where(keep, b, jnp.zeros_like(b))
        return linear_scan(
            a, b, carry0, reverse=self.backwards, method=self.method, time_axis=self.time_axis
        )


def _outputs(h, carry0, valid, backwards, time_axis):
    """``(ys, carry)`` from the states ``h`` after every step: ``ys`` zero where not
    ``valid``, ``carry`` the state after the last step visited (``carry0`` if none)."""
    steps = h.shape[time_axis]
    if steps == 0:
        carry = carry0
    else:
        last = 0 if backwards else steps - 1
        carry = jax.lax.index_in_dim(h, last, time_axis, keepdims=False)
    ys = h if valid is None else jnp.where(valid[..., None], h, jnp.zeros_like(h))
    return ys, carry


def _given(mask, dtype=bool):
    """A mask, or an empty array for none (as the kernels take it)."""
    return jnp.zeros((0,), dtype) if mask is None else mask


def _sequence_kernel_runs(cell: LinearCell, params, xs: Array, carry0: Array) -> bool:
    """Whether the whole layer can run as the cell's sequence kernel: a cell with a kernel of
    its own, computing in float32, with the plain projection ``x @ w_i + b``."""
    from jaxrnn import _native

    if cell.kernel is None or cell.kernel_projection(params) is None:
        return False
    if jnp.dtype(cell.dtype) != jnp.float32:
        return False
    return _native.available(xs, *jax.tree.leaves(params), carry0)


def _ungiven(mask):
    """:func:`_given`'s inverse: ``None`` for an empty array."""
    return None if mask.size == 0 else mask


def _xla_sequence_states(cell, backwards, time_axis, xs, params, h0, valid, resets, keep):
    """The states after every step of the whole layer by XLA, from the inputs ``xs``; masks
    as the kernels take them (empty for none)."""
    run = _Run(cell, backwards, "chunked", time_axis)
    xp = cell.project_inputs(params, xs)
    return run.states(params, xp, h0, _ungiven(valid), _ungiven(resets), _ungiven(keep))


def _xla_states(cell, backwards, time_axis, xp, update, h0, valid, resets, keep):
    """Likewise from the projected input ``xp`` and :meth:`update_params`' ``update``."""
    run = _Run(cell, backwards, "chunked", time_axis)
    return run.states(update, xp, h0, _ungiven(valid), _ungiven(resets), _ungiven(keep))


def _cell_kernel_runs(cell: LinearCell, xp: Array, carry0: Array) -> bool:
    """Whether ``cell`` has a kernel of its own and it can run on float32 ``xp``."""
    from jaxrnn import _native

    return cell.kernel is not None and _native.available(xp, carry0)


def _cell_states(cell, backwards, time_axis, xp, update, h0, valid, resets, hidden_mask):
    """:meth:`_Run.states` by the cell's own kernel where the computation runs on a CPU (the
    gates, the semantics and the recurrence in one pass, and their derivative in another),
    by the XLA computation elsewhere. Masks that are ``None`` become empty arrays."""
    keep = None if hidden_mask is None else hidden_mask.astype(xp.dtype)
    masks = _given(valid), _given(resets), _given(keep, xp.dtype)
    return _kernel_states(_PROJECTED, cell, backwards, time_axis, (xp, update), h0, *masks)


def _kernel_options(backwards, time_axis):
    return {"reverse": backwards, "time_major": time_axis == 0}


def _unit_cotangent(d_unit):
    """The cotangent of ``kernel_unit``'s output from the kernels' ``d_unit`` ``[B, H]`` (each
    batch element's share), or None for a cell without one."""
    return None if d_unit is None else jnp.sum(d_unit, axis=0)


def _projected_forward(cell, backwards, time_axis, inputs, h0, valid, resets, keep):
    from jaxrnn.cells import _linear_kernel

    xp, update = inputs
    options = _kernel_options(backwards, time_axis)
    return _linear_kernel.linear_cell_kernel(
        cell.kernel, xp, h0, valid, resets, keep, unit=cell.kernel_unit(update), **options
    )


def _projected_backward(cell, backwards, time_axis, inputs, h, h0, valid, resets, keep, g, _):
    from jaxrnn.cells import _linear_kernel

    xp, update = inputs
    unit, pullback = jax.vjp(cell.kernel_unit, update)
    options = _kernel_options(backwards, time_axis)
    d_xp, d_h0, d_unit = _linear_kernel.linear_cell_backward_kernel(
        cell.kernel, xp, h, h0, valid, resets, keep, g, unit=unit, **options
    )
    (d_update,) = pullback(_unit_cotangent(d_unit))
    return (d_xp, d_update), d_h0


def _whole_layer_weights(cell, params):
    """``(w, b, unit)``: what the whole-layer kernel takes of ``params``."""
    return (*cell.kernel_projection(params), cell.kernel_unit(cell.update_params(params)))


def _whole_layer_forward(cell, backwards, time_axis, inputs, h0, valid, resets, keep):
    from jaxrnn.cells import _linear_kernel

    xs, params = inputs
    w, b, unit = _whole_layer_weights(cell, params)
    options = _kernel_options(backwards, time_axis)
    return _linear_kernel.linear_cell_sequence_kernel(
        cell.kernel, xs, w, b, h0, valid, resets, keep, unit=unit, **options
    )


def _whole_layer_backward(cell, backwards, time_axis, inputs, h, h0, valid, resets, keep, g, want):
    from jaxrnn.cells import _linear_kernel

    xs, params = inputs
    (w, b, unit), pullback = jax.vjp(functools.partial(_whole_layer_weights, cell), params)
    options = _kernel_options(backwards, time_axis)
    d_x, d_w, d_b, d_h0, d_unit = _linear_kernel.linear_cell_sequence_backward_kernel(
        cell.kernel, xs, w, b, h, h0, valid, resets, keep, g, want_d_x=want, unit=unit, **options
    )
    (d_params,) = pullback((d_w, d_b, _unit_cotangent(d_unit)))
    return ((d_x if want else jnp.zeros_like(xs)), d_params), d_h0


@dataclasses.dataclass(frozen=True)
class _Kernels:
    """A cell's kernel pair on a CPU and the XLA computation it stands for elsewhere (and
    which second-order derivatives differentiate): the states after every step (not masked)
    from ``inputs``, a tuple, and ``h0``. Each takes ``(cell, backwards, time_axis)`` first
    and masks as the kernels take them (empty for none); ``backward`` gets the states ``h``,
    their cotangent ``g`` and whether the first input's derivative is wanted, and returns
    ``(d_inputs, d_h0)``."""

    forward: Callable
    backward: Callable
    xla: Callable


# From the projected input and the update's parameters ``(xp, update_params)`` (bfloat16
# computations, an explicit chunk); the whole layer from ``(xs, params)``: the projection,
# its derivative and the weights' inside.
_PROJECTED = _Kernels(
    _projected_forward,
    _projected_backward,
    lambda cell, backwards, time_axis, inputs, *rest: _xla_states(
        cell, backwards, time_axis, *inputs, *rest
    ),
)
_WHOLE_LAYER = _Kernels(
    _whole_layer_forward,
    _whole_layer_backward,
    lambda cell, backwards, time_axis, inputs, *rest: _xla_sequence_states(
        cell, backwards, time_axis, *inputs, *rest
    ),
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _kernel_states(kernels, cell, backwards, time_axis, inputs, h0, valid, resets, keep):
    """``kernels``' states where the computation runs on a CPU, their XLA computation
    elsewhere."""
    fixed = (cell, backwards, time_axis)
    return jax.lax.platform_dependent(
        inputs,
        h0,
        valid,
        resets,
        keep,
        cpu=functools.partial(kernels.forward, *fixed),
        default=functools.partial(kernels.xla, *fixed),
    )


def _kernel_states_fwd(kernels, cell, backwards, time_axis, inputs, h0, valid, resets, keep):
    # symbolic_zeros: whether the first input is differentiated (a first layer's inputs seldom
    # are; the whole-layer kernel then skips d_x). The answer travels as an empty array's length.
    values = jax.tree.map(lambda p: p.value, (inputs, h0, valid, resets, keep))
    h = _kernel_states(kernels, cell, backwards, time_axis, *values)
    want = jnp.zeros((int(inputs[0].perturbed),))
    return h, (values, h, want)


def _kernel_states_bwd(kernels, cell, backwards, time_axis, saved, g):
    from jaxrnn import _native

    fixed = (cell, backwards, time_axis)
    (inputs, h0, valid, resets, keep), h, want = saved
    want = want.shape[0] == 1
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        g = jnp.zeros(g.shape, g.dtype)

    def native(inputs, h, h0, valid, resets, keep, g):
        return kernels.backward(*fixed, inputs, h, h0, valid, resets, keep, g, want)

    def xla(inputs, h, h0, valid, resets, keep, g):
        def states(inputs, h0):
            return kernels.xla(*fixed, inputs, h0, valid, resets, keep)

        return jax.vjp(states, inputs, h0)[1](g)

    d_inputs, d_h0 = _native.on_cpu(native, xla, inputs, h, h0, valid, resets, keep, g)
    if not want:
        d_inputs = (None, *d_inputs[1:])
    return d_inputs, d_h0, None, None, jnp.zeros_like(keep)


_kernel_states.defvjp(_kernel_states_fwd, _kernel_states_bwd, symbolic_zeros=True)


def _in_chunks(run: _Run, size: int, params, hidden_mask, xs, carry0, valid, resets):
    """``run`` over ``xs`` in chunks of ``size`` steps, one after another, each written in
    place into the outputs, and recomputed from the carry it started from in the backward
    pass (only those carries are kept): a chunk's passes stay in the CPU's cache."""
    axis = run.time_axis
    steps = xs.shape[axis]
    pad = -steps % size
    if pad:  # steps past the end: not valid, so they keep the state and output zeros

        def padded(x, value):
            widths = [(0, 0)] * x.ndim
            widths[axis] = (0, pad)
            return jnp.pad(x, widths, constant_values=value)

        if valid is None:
            valid = jnp.ones(xs.shape[:2], bool)
        xs, valid = padded(xs, 0), padded(valid, False)
        resets = None if resets is None else padded(resets, False)
    ys, carry = _chunks(run, size, params, hidden_mask, xs, carry0, valid, resets)
    return jax.lax.slice_in_dim(ys, 0, steps, axis=axis), carry


def _chunk_order(run: _Run, count: int, i):
    """The chunk visited ``i``-th."""
    return count - 1 - i if run.backwards else i


def _at(run: _Run, size: int, k, *arrays):
    """Chunk ``k`` of each of ``arrays`` (``None`` stays ``None``)."""
    return tuple(
        None if x is None else jax.lax.dynamic_slice_in_dim(x, k * size, size, run.time_axis)
        for x in arrays
    )


def _chunks_forward(run: _Run, size: int, params, hidden_mask, xs, carry0, valid, resets):
    axis = run.time_axis
    count = xs.shape[axis] // size
    acc = carry0.dtype
    ys = jnp.zeros((*xs.shape[:-1], carry0.shape[-1]), acc)
    starts = jnp.zeros((count, *carry0.shape), acc)

    def chunk(i, state):
        ys, carry, starts = state
        k = _chunk_order(run, count, i)
        starts = starts.at[k].set(carry)
        x, v, r = _at(run, size, k, xs, valid, resets)
        y, carry = run(params, hidden_mask, x, carry, v, r)
        ys = jax.lax.dynamic_update_slice_in_dim(ys, y, k * size, axis)
        return ys, carry, starts

    return jax.lax.fori_loop(0, count, chunk, (ys, carry0, starts))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunks(run: _Run, size: int, params, hidden_mask, xs, carry0, valid, resets):
    ys, carry, _ = _chunks_forward(run, size, params, hidden_mask, xs, carry0, valid, resets)
    return ys, carry


def _chunks_fwd(run, size, params, hidden_mask, xs, carry0, valid, resets):
    ys, carry, starts = _chunks_forward(run, size, params, hidden_mask, xs, carry0, valid, resets)
    return (ys, carry), (params, hidden_mask, xs, valid, resets, starts)


def _chunks_bwd(run, size, saved, cotangents):
    params, hidden_mask, xs, valid, resets, starts = saved
    d_ys, d_carry = cotangents
    axis = run.time_axis
    count = xs.shape[axis] // size
    wide = {k: accumulation_dtype(v.dtype) for k, v in params.items()}
    d_params = {k: jnp.zeros(v.shape, wide[k]) for k, v in params.items()}

    def chunk(j, state):  # the chunks in the opposite order
        d_carry, d_params, d_xs = state
        k = _chunk_order(run, count, count - 1 - j)
        x, v, r, d_y = _at(run, size, k, xs, valid, resets, d_ys)

        def one(params, x, carry):
            return run(params, hidden_mask, x, carry, v, r)

        _, pullback = jax.vjp(one, params, x, starts[k])
        d_p, d_x, d_carry = pullback((d_y, d_carry))
        d_params = {key: d_params[key] + d_p[key].astype(wide[key]) for key in d_params}
        d_xs = jax.lax.dynamic_update_slice_in_dim(d_xs, d_x, k * size, axis)
        return d_carry, d_params, d_xs

    state = (d_carry, d_params, jnp.zeros_like(xs))
    d_carry0, d_params, d_xs = jax.lax.fori_loop(0, count, chunk, state)
    d_params = {k: v.astype(params[k].dtype) for k, v in d_params.items()}
    d_mask = None if hidden_mask is None else jnp.zeros_like(hidden_mask)
    return d_params, d_mask, d_xs, d_carry0, None, None


_chunks.defvjp(_chunks_fwd, _chunks_bwd)
