"""The fused loop's two time loops as Pallas kernels (``implementation="pallas"``): each pass
runs the whole time loop in one launch.

The loops around them are the fused loop's (:class:`jaxrnn.cells.fused.Loops`): the input
projection before the forward kernel, the weights' gradients after the backward kernel, and
the step itself the cell's own ``update_kept``/``update_backward`` (the one definition of its
math), called on tiles of units. Each program of a kernel owns a block of ``BLOCK_B`` rows of
the batch for the whole sequence (rows are independent: no program waits for another); per
step it reads the recurrent weights from memory (on a GPU, from L2 after the first step) and
computes the matmul tile by tile (``TILE`` units of each gate at a time, over ``TILE`` rows of
``w_h`` at a time), so that no program holds more than a ``[BLOCK_B, TILE]`` block of any
operand. The state of its rows stays in a two-slot buffer of the program's own (the slot of
step ``t`` is read while the one of ``t + 1`` is written; a barrier ends each phase on a GPU).

The backward kernel runs each step in two phases: the cell's derivative for every tile of
units (``d_xp`` and ``d_hw`` written out per step), then ``d_h += d_hw @ w_h^T`` for every
tile. The gradients of the parameters ``update`` reads are summed per program and added
after the kernel.

Units are padded per gate to a power of two (at least 16) and rows to a multiple of
``BLOCK_B``, with zeros (a padded unit of SimpleRNN, LSTM and GRU stays zero); the padding is
cut off after the kernels. Where the computation runs: on a GPU through Triton
(``jax.experimental.pallas.triton``), on a TPU through Mosaic, on a CPU through Pallas's
interpreter (slow; what the tests run). ``docs/design/pallas.md`` gives the design and what
was measured.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from jaxrnn.cells import _loops, fused

Array = jax.Array

BLOCK_B = 16
TILE = 64
_CPU, _GPU, _TPU = "interpret", "triton", "mosaic_tpu"


def unsupported(cell) -> list[str]:
    """Why the Pallas kernels cannot run ``cell`` (empty where they can): they run the cells
    whose step has its derivative written out and whose projection is plain, with every
    parameter that ``update`` reads laid out in gate blocks (``SimpleRNN``, ``LSTM`` without
    variants, ``GRU(reset_after=True)`` without ``layer_norm``)."""
    reasons = []
    if not cell.hand_written_derivative or cell.kernels() is None:
        reasons.append(
            f"{type(cell).__name__} with these options has no Pallas kernels (they run "
            "SimpleRNN, the LSTM without variants and GRU(reset_after=True) without layer_norm)"
        )
    return reasons


@dataclasses.dataclass(frozen=True)
class _Shape:
    """The kernels' static sizes: ``steps``, padded ``batch`` and ``units`` per gate,
    ``gates``, the carry's leaves and which of them is ``h``, the unit tile."""

    steps: int
    batch: int
    units: int
    gates: int
    leaves: int
    hidden_leaf: int
    tile: int

    @property
    def tiles(self) -> int:
        return self.units // self.tile


def _padded_units(h: int) -> int:
    return max(16, 1 << (h - 1).bit_length())


def _pad(a: Array, axis: int, size: int) -> Array:
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, pad)


def _gate_rows(a: Array, gates: int, hidden_size: int, units: int) -> Array:
    """A ``[G*H]`` vector as float32 ``[G', units]`` rows, one per gate (``G'`` the power of two
    at or above ``G``: Triton's arrays have power-of-two sizes), padded with zeros."""
    rows = a.reshape(gates, hidden_size).astype(jnp.float32)
    return _pad(_pad(rows, 1, units), 0, 1 << (gates - 1).bit_length())


def _pad_gates(a: Array, gates: int, units: int) -> Array:
    """``[..., G*H] -> [..., G*units]``, each gate block padded with zeros."""
    blocks = jnp.split(a, gates, axis=-1)
    return jnp.concatenate([_pad(b, -1, units) for b in blocks], axis=-1)


def _hidden_leaf(cell, carry) -> int:
    leaves, tree = jax.tree.flatten(carry)
    marker = cell.hidden(jax.tree.unflatten(tree, list(range(len(leaves)))))
    return int(marker)


def _call(kernel, shape: _Shape, in_specs, out_specs, out_shape, backend):
    params = None
    if backend == _GPU:
        from jax.experimental.pallas import triton as pltriton

        params = pltriton.CompilerParams(num_warps=4, num_stages=1)
    return pl.pallas_call(
        functools.partial(kernel, backend=backend),
        grid=(shape.batch // BLOCK_B,),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=backend == _CPU,
        compiler_params=params,
    )


def _on_platforms(build, *args):
    """``build(backend)(*args)`` for the platform the computation runs on."""
    return jax.lax.platform_dependent(
        *args,
        cpu=build(_CPU),
        cuda=build(_GPU),
        rocm=build(_GPU),
        tpu=build(_TPU),
    )


def _barrier(backend):
    if backend == _GPU:
        from jax.experimental.pallas import triton as pltriton

        pltriton.debug_barrier()


def _rows(shape: _Shape):
    """BlockSpecs: ``[T, B, U]`` per block of rows, ``[B, U]`` per block, whole arrays."""
    steps, units = shape.steps, shape.units
    return (
        pl.BlockSpec((steps, BLOCK_B, units), lambda i: (0, i, 0)),
        pl.BlockSpec((BLOCK_B, units), lambda i: (i, 0)),
        pl.BlockSpec((steps, BLOCK_B), lambda i: (0, i)),
    )


def _whole(a) -> pl.BlockSpec:
    return pl.BlockSpec(a.shape, lambda i: (0,) * len(a.shape))


def _step_order(shape: _Shape, backwards: bool, s):
    return shape.steps - 1 - s if backwards else s


def _matmul_tile(h_at, w_ref, dtype, rows_of, cols, shape: _Shape):
    """``sum_k h[:, k] @ w[k, cols]`` (float32), ``k`` over the tiles of ``units``."""

    def add(k, acc):
        ks = pl.ds(pl.multiple_of(k * shape.tile, shape.tile), shape.tile)
        a = h_at(ks).astype(dtype)
        b = w_ref[rows_of(ks), cols].astype(dtype)
        return acc + jax.lax.dot(a, b, preferred_element_type=jnp.float32)

    zeros = jnp.zeros((BLOCK_B, shape.tile), jnp.float32)
    return jax.lax.fori_loop(0, shape.tiles, add, zeros)


def _matmul_t_tile(d_at, w_ref, dtype, gate, rows, shape: _Shape):
    """``sum_k d[:, k] @ w[rows, gate*U + k]^T`` (float32)."""

    def add(k, acc):
        start = pl.multiple_of(k * shape.tile, shape.tile)
        a = d_at(pl.ds(start, shape.tile)).astype(dtype)
        b = w_ref[rows, pl.ds(gate * shape.units + start, shape.tile)].astype(dtype)
        dims = (((1,), (1,)), ((), ()))
        return acc + jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)

    zeros = jnp.zeros((BLOCK_B, shape.tile), jnp.float32)
    return jax.lax.fori_loop(0, shape.tiles, add, zeros)


def _split(refs, *counts):
    """``refs`` cut into consecutive groups of ``counts``."""
    groups, start = [], 0
    for count in counts:
        groups.append(tuple(refs[start : start + count]))
        start += count
    return groups


def _forward_kernel(cell, shape: _Shape, backwards, keep, dtype, trees, *refs, backend):
    inner_keys, carry_tree = trees
    g, n = shape.gates, shape.leaves
    kept_count = len(refs) - (g + 4 + len(inner_keys) + 2 * n + 2)
    groups = _split(refs, g, 4, len(inner_keys), n, 1, n, kept_count, 1)
    xp_refs, (bias_ref, w_ref, valid_ref, after_ref), inner, carry0_refs = groups[:4]
    (ys_ref,), carry_refs, kept_refs, (hbuf_ref,) = groups[4:]
    inner_refs = dict(zip(inner_keys, inner, strict=True))
    hidden = shape.hidden_leaf
    for leaf in range(n):
        if leaf == hidden:
            hbuf_ref[0] = carry0_refs[leaf][...].astype(jnp.float32)
        else:
            carry_refs[leaf][...] = carry0_refs[leaf][...].astype(jnp.float32)
    _barrier(backend)

    def step(s, _):
        t = _step_order(shape, backwards, s)
        cur = jax.lax.rem(s, 2)
        nxt = 1 - cur
        live = (valid_ref[t] != 0)[:, None]
        reset = (after_ref[t] != 0)[:, None]

        def tile(j, _):
            cols = pl.ds(pl.multiple_of(j * shape.tile, shape.tile), shape.tile)
            hw = tuple(
                _matmul_tile(
                    lambda ks: hbuf_ref[cur, :, ks],
                    w_ref,
                    dtype,
                    lambda ks: ks,
                    pl.ds(
                        pl.multiple_of(gate * shape.units + j * shape.tile, shape.tile), shape.tile
                    ),
                    shape,
                )
                for gate in range(g)
            )
            xp_t = tuple(xp_refs[k][t, :, cols] + bias_ref[k, cols][None, :] for k in range(g))
            leaves = [
                hbuf_ref[cur, :, cols] if leaf == hidden else carry_refs[leaf][:, cols]
                for leaf in range(n)
            ]
            carry = jax.tree.unflatten(carry_tree, leaves)
            inner = {k: tuple(r[gate, cols] for gate in range(g)) for k, r in inner_refs.items()}
            if keep:
                new, y, kept = cell.update_kept(inner, carry, xp_t, hw)
            else:
                (new, y), kept = cell.update(inner, carry, xp_t, hw), ()
            new_leaves = [
                jnp.where(reset, 0.0, jnp.where(live, a, b))
                for a, b in zip(jax.tree.leaves(new), leaves, strict=True)
            ]
            ys_ref[t, :, cols] = jnp.where(live, y, 0.0).astype(ys_ref.dtype)
            for r, v in zip(kept_refs, kept, strict=True):
                r[t, :, cols] = v.astype(r.dtype)
            for leaf, v in enumerate(new_leaves):
                if leaf == hidden:
                    hbuf_ref[nxt, :, cols] = v
                else:
                    carry_refs[leaf][:, cols] = v
            return 0

        jax.lax.fori_loop(0, shape.tiles, tile, 0)
        _barrier(backend)
        return 0

    jax.lax.fori_loop(0, shape.steps, step, 0)
    carry_refs[hidden][...] = hbuf_ref[shape.steps % 2]


def _prepare(cell, inputs: _loops.LoopInputs, loop):
    """The padded, time-major operands of the forward kernel and its static shape."""
    w_h, xw, bias, inner, valid, resets, carry0 = inputs
    assert w_h is not None and isinstance(xw, tuple)  # as unsupported() requires
    g = cell.gates
    leaves = jax.tree.leaves(carry0)
    steps, batch = xw[0].shape[:2]
    hidden_size = xw[0].shape[-1]
    units = _padded_units(hidden_size)
    padded_batch = -(-batch // BLOCK_B) * BLOCK_B
    shape = _Shape(
        steps,
        padded_batch,
        units,
        g,
        len(leaves),
        _hidden_leaf(cell, carry0),
        min(units, TILE),
    )

    def rows(a, axis):
        return _pad(_pad(a, axis, padded_batch), -1, units)

    xp = tuple(rows(x, 1) for x in xw)
    bias = jnp.zeros((g * hidden_size,), jnp.float32) if bias is None else bias
    bias = _gate_rows(bias, g, hidden_size, units)
    w = _pad(_pad_gates(w_h, g, units), 0, units)
    flags = jnp.ones((steps, batch), jnp.bool_) if valid is None else valid
    after, carry0 = _loops.resets_after(loop.backwards, resets, tuple(leaves))
    after = jnp.zeros((steps, batch), jnp.bool_) if after is None else after
    valid_i = _pad(flags.astype(jnp.int32), 1, padded_batch)
    after_i = _pad(after.astype(jnp.int32), 1, padded_batch)
    inner_p = {k: _gate_rows(v, g, hidden_size, units) for k, v in inner.items()}
    carry_p = tuple(rows(c, 0) for c in carry0)
    return shape, xp, bias, w, valid_i, after_i, inner_p, carry_p


def forward(cell, loop, keep, inputs: _loops.LoopInputs):
    """The forward kernel: ``(ys, carry, kept, None)`` as :class:`jaxrnn.cells.fused.Loops`."""
    shape, xp, bias, w, valid_i, after_i, inner_p, carry_p = _prepare(cell, inputs, loop)
    batch, hidden_size = inputs.xw[0].shape[1], inputs.xw[0].shape[2]
    kept_count = cell.kernels().kept if keep else 0
    block, row, flags = _rows(shape)
    state = jax.ShapeDtypeStruct((shape.batch, shape.units), jnp.float32)
    series = jax.ShapeDtypeStruct((shape.steps, shape.batch, shape.units), jnp.float32)
    hbuf = jax.ShapeDtypeStruct((2 * shape.batch // BLOCK_B, BLOCK_B, shape.units), jnp.float32)
    inner_keys = tuple(inner_p)
    args = (*xp, bias, w, valid_i, after_i, *inner_p.values(), *carry_p)
    in_specs = [
        *[block] * shape.gates,
        _whole(bias),
        _whole(w),
        flags,
        flags,
        *[_whole(v) for v in inner_p.values()],
        *[row] * shape.leaves,
    ]
    out_specs = [
        block,
        *[row] * shape.leaves,
        *[block] * kept_count,
        pl.BlockSpec((2, BLOCK_B, shape.units), lambda i: (i, 0, 0)),
    ]
    out_shape = [series, *[state] * shape.leaves, *[series] * kept_count, hbuf]
    trees = (inner_keys, jax.tree.structure(inputs.carry0))
    kernel = functools.partial(_forward_kernel, cell, shape, loop.backwards, keep, w.dtype, trees)

    def build(backend):
        return _call(kernel, shape, in_specs, out_specs, out_shape, backend)

    outs = _on_platforms(build, *args)
    ys, carry_leaves, kept = outs[0], outs[1 : 1 + shape.leaves], outs[1 + shape.leaves : -1]

    def cut(a):
        return a[..., :batch, :hidden_size]

    carry = jax.tree.unflatten(jax.tree.structure(inputs.carry0), [cut(c) for c in carry_leaves])
    return cut(ys), carry, tuple(cut(k) for k in kept), None


def _same_cotangents(cell, inner_keys, kept_count, carry_tree, gates) -> bool:
    """Whether the cell's ``update_backward`` returns one value for ``d_xp`` and ``d_hw``."""
    tile = jax.ShapeDtypeStruct((BLOCK_B, 16), jnp.float32)
    vector = jax.ShapeDtypeStruct((16,), jnp.float32)
    inner = {k: (vector,) * gates for k in inner_keys}
    carry = jax.tree.unflatten(carry_tree, [tile] * carry_tree.num_leaves)
    box: list[bool] = []

    def probe(inner, kept, h_prev, y, d_carry, d_y):
        out = cell.update_backward(inner, kept, h_prev, y, d_carry, d_y)
        box.append(out[1] is out[2])
        return out[0]

    jax.eval_shape(probe, inner, (tile,) * kept_count, tile, tile, carry, tile)
    return box[0]


def _blocks(value) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _backward_kernel(cell, shape: _Shape, backwards, same, dtype, trees, *refs, backend):
    inner_keys, carry_tree, kept_count = trees
    g, n, hidden = shape.gates, shape.leaves, shape.hidden_leaf
    k = len(inner_keys)
    groups = _split(refs, kept_count, 6, k, n, g, 0 if same else g, n, k, 1)
    kept_refs, (ys_ref, hprev_ref, dys_ref, valid_ref, after_ref, w_ref), inner = groups[:3]
    dcarry_in, dxp_refs, dhw_refs, dcarry_refs, dinner, (dbuf_ref,) = groups[3:]
    dhw_refs = dxp_refs if same else dhw_refs
    inner_refs = dict(zip(inner_keys, inner, strict=True))
    dinner_refs = dict(zip(inner_keys, dinner, strict=True))
    for leaf in range(n):
        if leaf == hidden:
            dbuf_ref[0] = dcarry_in[leaf][...].astype(jnp.float32)
        else:
            dcarry_refs[leaf][...] = dcarry_in[leaf][...].astype(jnp.float32)
    for r in dinner_refs.values():
        r[...] = jnp.zeros(r.shape, jnp.float32)
    _barrier(backend)

    def step(s, _):
        t = _step_order(shape, not backwards, s)
        cur = jax.lax.rem(s, 2)
        nxt = 1 - cur
        live = (valid_ref[t] != 0)[:, None]
        reset = (after_ref[t] != 0)[:, None]

        def derivative(j, _):
            cols = pl.ds(pl.multiple_of(j * shape.tile, shape.tile), shape.tile)
            d_leaves = [
                dbuf_ref[cur, :, cols] if leaf == hidden else dcarry_refs[leaf][:, cols]
                for leaf in range(n)
            ]
            # The carry this step handed on was zeroed where the next step resets.
            d_leaves = [jnp.where(reset, 0.0, d) for d in d_leaves]
            d_in = [jnp.where(live, d, 0.0) for d in d_leaves]
            d_y = jnp.where(live, dys_ref[t, :, cols], 0.0)
            kept = tuple(r[t, :, cols] for r in kept_refs)
            inner = {k: tuple(r[gate, cols] for gate in range(g)) for k, r in inner_refs.items()}
            d_prev, d_xp, d_hw, d_inner = cell.update_backward(
                inner,
                kept,
                hprev_ref[t, :, cols],
                ys_ref[t, :, cols],
                jax.tree.unflatten(carry_tree, d_in),
                d_y,
            )
            for gate, v in enumerate(_blocks(d_xp)):
                dxp_refs[gate][t, :, cols] = jnp.where(live, v, 0.0)
            if not same:
                for gate, v in enumerate(_blocks(d_hw)):
                    dhw_refs[gate][t, :, cols] = jnp.where(live, v, 0.0)
            for leaf, (p, d) in enumerate(zip(jax.tree.leaves(d_prev), d_leaves, strict=True)):
                if leaf == hidden:  # its matmul's part is added in the second phase
                    dbuf_ref[nxt, :, cols] = p
                else:  # a padded step copied the carry: its cotangent passes through
                    dcarry_refs[leaf][:, cols] = jnp.where(live, p, d)
            for k, blocks in d_inner.items():
                for gate, v in enumerate(_blocks(blocks)):
                    dinner_refs[k][gate, cols] = dinner_refs[k][gate, cols] + v
            return 0

        def recurrent(j, _):
            cols = pl.ds(pl.multiple_of(j * shape.tile, shape.tile), shape.tile)
            acc = dbuf_ref[nxt, :, cols]
            for gate in range(g):
                acc = acc + _matmul_t_tile(
                    lambda ks, gate=gate: dhw_refs[gate][t, :, ks], w_ref, dtype, gate, cols, shape
                )
            d_after = jnp.where(reset, 0.0, dbuf_ref[cur, :, cols])
            dbuf_ref[nxt, :, cols] = jnp.where(live, acc, d_after)
            return 0

        jax.lax.fori_loop(0, shape.tiles, derivative, 0)
        _barrier(backend)
        jax.lax.fori_loop(0, shape.tiles, recurrent, 0)
        _barrier(backend)
        return 0

    jax.lax.fori_loop(0, shape.steps, step, 0)
    dcarry_refs[hidden][...] = dbuf_ref[shape.steps % 2]


def backward(cell, loop, layout, w_h, inner, inputs: _loops.BackwardInputs):
    """The backward kernel: ``(d_xp, d_hw, d_carry0, d_inner, h_prev)`` as
    :class:`jaxrnn.cells.fused.Loops`."""
    del layout  # the cells the kernels run write their derivative out
    kept, valid, d_ys, d_carry, ys, h0, _, resets = inputs
    steps, batch, hidden_size = ys.shape
    g = cell.gates
    carry_tree = jax.tree.structure(d_carry)
    leaves = jax.tree.leaves(d_carry)
    units = _padded_units(hidden_size)
    padded_batch = -(-batch // BLOCK_B) * BLOCK_B
    hidden_leaf = _hidden_leaf(cell, d_carry)
    shape = _Shape(steps, padded_batch, units, g, len(leaves), hidden_leaf, min(units, TILE))
    h_prev = _loops.states_before(loop.backwards, h0, ys, resets)

    def rows(a, axis):
        return _pad(_pad(a.astype(jnp.float32), axis, padded_batch), -1, units)

    flags = jnp.ones((steps, batch), jnp.bool_) if valid is None else valid
    after = _loops.resets_after(loop.backwards, resets, ())[0]
    after = jnp.zeros((steps, batch), jnp.bool_) if after is None else after
    w = _pad(_pad_gates(w_h, g, units), 0, units)
    inner_p = {k: _gate_rows(v, g, hidden_size, units) for k, v in inner.items()}
    inner_keys = tuple(inner_p)
    same = _same_cotangents(cell, inner_keys, len(kept), carry_tree, g)
    args = (
        *[rows(k, 1) for k in kept],
        rows(ys, 1),
        rows(h_prev, 1),
        rows(d_ys, 1),
        _pad(flags.astype(jnp.int32), 1, padded_batch),
        _pad(after.astype(jnp.int32), 1, padded_batch),
        w,
        *inner_p.values(),
        *[rows(d, 0) for d in leaves],
    )
    block, row, flag = _rows(shape)
    in_specs = [
        *[block] * (len(kept) + 3),
        flag,
        flag,
        _whole(w),
        *[_whole(v) for v in inner_p.values()],
        *[row] * shape.leaves,
    ]
    series = jax.ShapeDtypeStruct((steps, padded_batch, units), jnp.float32)
    state = jax.ShapeDtypeStruct((padded_batch, units), jnp.float32)
    programs = padded_batch // BLOCK_B
    rows_per_gate = 1 << (g - 1).bit_length()
    partial = jax.ShapeDtypeStruct((programs * rows_per_gate, units), jnp.float32)
    dbuf = jax.ShapeDtypeStruct((2 * programs, BLOCK_B, units), jnp.float32)
    per_gate = g if same else 2 * g
    out_specs = [
        *[block] * per_gate,
        *[row] * shape.leaves,
        *[pl.BlockSpec((rows_per_gate, units), lambda i: (i, 0))] * len(inner_keys),
        pl.BlockSpec((2, BLOCK_B, units), lambda i: (i, 0, 0)),
    ]
    out_shape = [*[series] * per_gate, *[state] * shape.leaves, *[partial] * len(inner_keys), dbuf]
    trees = (inner_keys, carry_tree, len(kept))
    kernel = functools.partial(
        _backward_kernel, cell, shape, loop.backwards, same, w_h.dtype, trees
    )

    def build(backend):
        return _call(kernel, shape, in_specs, out_specs, out_shape, backend)

    outs = _on_platforms(build, *args)

    def joined(blocks):
        return jnp.concatenate([b[:, :batch, :hidden_size] for b in blocks], axis=-1)

    d_xp = joined(outs[:g])
    d_hw = d_xp if same else joined(outs[g : 2 * g])
    d_leaves = [d[:batch, :hidden_size] for d in outs[per_gate : per_gate + shape.leaves]]
    if resets is not None:  # the initial carry was zeroed where the first step resets
        d_leaves = list(_loops.zero_where(resets[-1 if loop.backwards else 0], *d_leaves))
    sums = outs[per_gate + shape.leaves : -1]
    d_inner = {
        k: v.reshape(programs, rows_per_gate, units).sum(0)[:g, :hidden_size].reshape(-1)
        for k, v in zip(inner_keys, sums, strict=True)
    }
    return d_xp, d_hw, jax.tree.unflatten(carry_tree, d_leaves), d_inner, h_prev


scan = fused.Loops(forward, backward).scan()
