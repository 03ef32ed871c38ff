"""The linear-scan CPU kernel (``csrc/linear.cc``): against a NumPy loop, forwards and
backwards, at widths not a multiple of 16 and one that the kernel splits over threads; and the
MinGRU, MinLSTM and RG-LRU kernels (``csrc/linear_cells.cc``) against a NumPy loop of the
papers' equations and JAX's derivative of the cells' XLA computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import _native
from jaxrnn.cells import linear
from jaxrnn.cells._linear_kernel import (
    linear_cell_backward_kernel,
    linear_cell_kernel,
    linear_cell_sequence_backward_kernel,
    linear_cell_sequence_kernel,
    linear_scan_kernel,
)

pytestmark = pytest.mark.skipif(
    not _native.kernel_status()[0], reason=f"no CPU kernels: {_native.kernel_status()[1]}"
)


@pytest.fixture(autouse=True)
def three_threads():
    """The kernel may split a call over three threads, however many cores this machine has."""
    library = _native._libraries[-1]
    library.jaxrnn_set_max_threads(3)
    yield
    library.jaxrnn_set_max_threads(_native.max_threads())


def numpy_scan(a, b, h0, reverse):
    """``h[t] = a[t] * h[t-1] + b[t]`` step by step (``h[t+1]`` with ``reverse``)."""
    h, out = h0, np.empty_like(b)
    for t in reversed(range(len(a))) if reverse else range(len(a)):
        h = out[t] = a[t] * h + b[t]
    return out


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    b = rng.normal(size=shape).astype(np.float32)
    h0 = rng.normal(size=shape[1:]).astype(np.float32)
    return a, b, h0


# At (772, 2040), T * N >= 3 * 2**19: three threads, on columns [0, 688), [688, 1360), [1360,
# 2040) (kElementsPerThread in csrc/linear.cc); one thread at the others.
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (37, 3, 5), (772, 2040)])
@pytest.mark.parametrize("reverse", [False, True])
def test_against_numpy(shape, reverse):
    a, b, h0 = inputs(shape)
    expected = numpy_scan(a, b, h0, reverse)
    h = linear_scan_kernel(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), reverse=reverse)
    assert h.shape == shape and h.dtype == jnp.float32
    np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-6)
    jitted = jax.jit(linear_scan_kernel, static_argnames="reverse")
    np.testing.assert_array_equal(jitted(a, b, h0, reverse=reverse), h)


@pytest.mark.parametrize("reverse", [False, True])
def test_against_lax_scan_threaded(reverse):
    """The threaded path, against the XLA loop it replaces (the same step)."""
    a, b, h0 = inputs((520, 16 * 130), seed=1)  # two threads

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    expected = jax.jit(lambda a, b, h0: jax.lax.scan(step, h0, (a, b), reverse=reverse)[1])
    h = linear_scan_kernel(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), reverse=reverse)
    np.testing.assert_allclose(h, expected(a, b, h0), rtol=1e-6, atol=1e-6)


def test_nan_propagates():
    a, b, h0 = inputs((6, 40))
    a[2, 3] = np.nan
    b[4, 17] = np.nan
    h0[39] = np.nan
    for reverse in (False, True):
        expected = numpy_scan(a, b, h0, reverse)
        h = np.asarray(linear_scan_kernel(*map(jnp.asarray, (a, b, h0)), reverse=reverse))
        np.testing.assert_array_equal(np.isnan(h), np.isnan(expected))
        np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-6)
    # Forwards: column 3 from step 2 on, column 17 from step 4 on, column 39 throughout.
    h = np.asarray(linear_scan_kernel(*map(jnp.asarray, (a, b, h0)), reverse=False))
    assert np.isnan(h[2:, 3]).all() and not np.isnan(h[:2, 3]).any()
    assert np.isnan(h[4:, 17]).all() and np.isnan(h[:, 39]).all()


def test_vmap():
    a, b, _ = inputs((3, 9, 20))  # vmapped over the first axis: [9, 20] each, h0 [20]
    h0 = inputs((3, 20))[1]
    h = jax.vmap(lambda a, b, h0: linear_scan_kernel(a, b, h0, reverse=True))(a, b, h0)
    expected = np.stack([numpy_scan(a[i], b[i], h0[i], True) for i in range(3)])
    np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-6)


def test_checks_shapes_and_dtypes():
    a, b, h0 = inputs((4, 6))
    with pytest.raises(ValueError, match="without its time axis"):
        linear_scan_kernel(a, b, h0[:5], reverse=False)
    with pytest.raises(TypeError, match="float32"):
        linear_scan_kernel(a.astype(np.float64), b, h0, reverse=False)


# ---------------------------------------------------------------- the cells' own kernels


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def candidate(v):
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def numpy_cell(cell, k, h0, valid, resets, keep, reverse, unit=None):
    """The papers' equations step by step, batch-first ``k [B, T, G * H]``, float64: MinGRU
    ``h = (1 - z) h + z g(k_h)``, MinLSTM ``h = f / (f + i) h + i / (f + i) g(k_h)``, RG-LRU
    ``h = a h + sqrt(1 - a^2) i x~`` with ``a = exp(-unit * r)`` (``unit = c *
    softplus(-a_param)``); a step where not ``valid`` keeps the state, ``resets`` drop it,
    ``keep`` scales it."""
    batch, steps, _ = k.shape
    hidden = h0.shape[-1]
    out = np.empty((batch, steps, hidden))
    for b in range(batch):
        h = h0[b].astype(np.float64)
        for t in reversed(range(steps)) if reverse else range(steps):
            if valid is not None and not valid[b, t]:
                out[b, t] = h
                continue
            blocks = [k[b, t, g * hidden : (g + 1) * hidden].astype(np.float64) for g in range(3)]
            if cell == "mingru":
                z = sigmoid(blocks[0])
                a, c = 1 - z, z * candidate(blocks[1])
            elif cell == "rglru":
                r, i = sigmoid(blocks[0]), sigmoid(blocks[1])
                a = np.exp(-unit.astype(np.float64) * r)
                c = np.sqrt(1 - a**2) * i * blocks[2]
            else:
                f, i = sigmoid(blocks[0]), sigmoid(blocks[1])
                a, c = f / (f + i), i / (f + i) * candidate(blocks[2])
            carried = h * (1.0 if keep is None else keep[b])
            if resets is not None and resets[b, t]:
                carried = 0.0 * carried
            h = out[b, t] = a * carried + c
    return out


GATES = {"mingru": 2, "minlstm": 3, "rglru": 3}


def cell_inputs(cell, batch, steps, hidden, seed=0):
    rng = np.random.default_rng(seed)
    gates = GATES[cell]
    k = rng.normal(scale=2.0, size=(batch, steps, gates * hidden)).astype(np.float32)
    h0 = rng.normal(size=(batch, hidden)).astype(np.float32)
    lengths = rng.integers(0, steps + 1, batch)
    valid = np.arange(steps)[None] < lengths[:, None]
    resets = rng.random((batch, steps)) < 0.15
    keep = (rng.random((batch, hidden)) < 0.8).astype(np.float32) / 0.8
    return k, h0, valid, resets, keep


CELLS = {"mingru": jaxrnn.MinGRU, "minlstm": jaxrnn.MinLSTM, "rglru": jaxrnn.RGLRU}


def unit_of(cell, hidden, seed=3):
    """The RG-LRU's kernel parameter ``c * softplus(-a_param)`` (None for the others): a
    decay ``a ** c`` from 0.6 to 0.999 per step with the gate open."""
    if cell != "rglru":
        return None
    a_c = np.random.default_rng(seed).uniform(0.6, 0.999, hidden)
    return (-np.log(a_c)).astype(np.float32)


def a_param_of(unit, c=8.0):
    """The ``a_param`` with ``c * softplus(-a_param) == unit`` (differentiable)."""
    return -jnp.log(jnp.expm1(unit / c))


def xla_states(cell, k, h0, valid, resets, keep, reverse, time_major, unit=None):
    """jaxrnn's XLA computation of the same states (the cell's ``coefficients``)."""
    model = CELLS[cell](h0.shape[-1])
    update = {} if unit is None else {"a_param": a_param_of(unit)}
    axis = 0 if time_major else 1
    return linear._xla_states(model, reverse, axis, k, update, h0, valid, resets, keep)


EMPTY = np.zeros((0,), bool)


# (3, 400, 144): three threads on whole sequences; (1, 700, 144): one sequence's columns over
# three threads (Split in csrc/linear_blocks.h); (2, 9, 21): one thread, a partial vector.
@pytest.mark.parametrize("cell", ["mingru", "minlstm", "rglru"])
@pytest.mark.parametrize("shape", [(2, 9, 21), (3, 400, 144), (1, 700, 144)])
def test_cell_kernels_against_numpy(cell, shape):
    """Forward against the NumPy loop, backward against JAX's derivative of the XLA
    computation, in both directions with and without the semantics, each in one layout and
    the semantics in both (the threaded shapes: forward without them, reverse with them)."""
    k, h0, valid, resets, keep = cell_inputs(cell, *shape)
    unit = unit_of(cell, shape[2])
    cotangent = np.random.default_rng(1).normal(size=(*shape[:2], h0.shape[-1]))
    cotangent = cotangent.astype(np.float32)
    cases = [(False, False), (True, False), (False, True), (True, True)]
    for reverse, semantics in cases if shape[1] < 100 else cases[::3]:
        v, r, m = (valid, resets, keep) if semantics else (None, None, None)
        expected = numpy_cell(cell, k, h0, v, r, m, reverse, unit)
        flat = (
            EMPTY if v is None else v,
            EMPTY if r is None else r,
            np.zeros((0,), np.float32) if m is None else m,
        )
        for time_major in (False, True) if semantics else (reverse,):

            def layout(x, time_major=time_major):
                return np.swapaxes(x, 0, 1) if time_major else x

            args = (layout(k), h0, layout(flat[0]) if v is not None else flat[0])
            args += (layout(flat[1]) if r is not None else flat[1], flat[2])
            options = dict(reverse=reverse, time_major=time_major)
            h = linear_cell_kernel(cell, *map(jnp.asarray, args), unit=unit, **options)
            np.testing.assert_allclose(layout(np.asarray(h)), expected, rtol=2e-5, atol=2e-5)
            g = jnp.asarray(layout(cotangent))
            d_k, d_h0, d_unit = linear_cell_backward_kernel(
                cell, *args[:1], h, *args[1:], g, unit=unit, **options
            )

            def states(k, h0, unit, args=args, options=options):
                return xla_states(cell, k, h0, *args[2:], **options, unit=unit)

            primals = (jnp.asarray(args[0]), jnp.asarray(h0), unit)
            want_k, want_h0, want_unit = jax.vjp(states, *primals)[1](g)
            np.testing.assert_allclose(d_k, want_k, rtol=1e-4, atol=2e-5)
            np.testing.assert_allclose(d_h0, want_h0, rtol=1e-4, atol=2e-5)
            if unit is None:
                assert d_unit is None
            else:
                scale = float(np.max(np.abs(want_unit)))
                np.testing.assert_allclose(d_unit.sum(0) / scale, want_unit / scale, atol=1e-4)


def test_cell_kernel_nan_propagates_and_checks_shapes():
    k, h0, *_ = cell_inputs("mingru", 2, 6, 20)
    k[1, 2, 3] = np.nan  # z of unit 3 at step 2
    none = np.zeros((0,), np.float32)
    h = np.asarray(
        linear_cell_kernel("mingru", k, h0, EMPTY, EMPTY, none, reverse=False, time_major=False)
    )
    assert np.isnan(h[1, 2:, 3]).all() and not np.isnan(h[1, :2]).any()
    assert not np.isnan(np.delete(h[1], 3, axis=1)).any() and not np.isnan(h[0]).any()
    with pytest.raises(ValueError, match="cell must be one of"):
        linear_cell_kernel("gru", k, h0, EMPTY, EMPTY, none, reverse=False, time_major=False)
    with pytest.raises(TypeError, match="float32"):
        linear_cell_kernel(
            "mingru", k.astype(np.float64), h0, EMPTY, EMPTY, none, reverse=False, time_major=False
        )


# (3, 400, 21): three threads, chunks of 32768 // (G * 21) steps and a partial last one
# (ChunkSteps in csrc/linear_cells.cc); (2, 9, 21): one thread, one chunk.
@pytest.mark.parametrize("cell", ["mingru", "minlstm", "rglru"])
@pytest.mark.parametrize("shape", [(2, 9, 21), (3, 400, 144)])
def test_cell_sequence_kernels_against_numpy(cell, shape):
    """The kernels with the input projection inside: the states against the NumPy loop on
    ``x @ w_i + b``, every derivative (``x``'s only when asked for) against JAX's derivative
    of the XLA computation (the RG-LRU's: ``w = [w_i | w_x]``, ``b = [b | 0]``)."""
    batch, steps, hidden = shape
    rng = np.random.default_rng(2)
    inputs = 5
    gates = GATES[cell]
    x = rng.normal(size=(batch, steps, inputs)).astype(np.float32)
    w = rng.normal(scale=0.8, size=(inputs, gates * hidden)).astype(np.float32)
    b = rng.normal(size=(gates * hidden,)).astype(np.float32)
    unit = unit_of(cell, hidden)
    if cell == "rglru":
        b[2 * hidden :] = 0.0  # x~ = x @ w_x, no bias
    _, h0, valid, resets, keep = cell_inputs(cell, *shape)
    cotangent = rng.normal(size=(batch, steps, hidden)).astype(np.float32)
    k = x.astype(np.float64) @ w + b
    model = CELLS[cell](hidden)
    for reverse, semantics, time_major in [
        (False, False, False),
        (True, True, False),
        (False, True, True),
        (True, False, True),
    ]:

        def layout(a, time_major=time_major):
            return np.swapaxes(a, 0, 1) if time_major else a

        v, r, m = (layout(valid), layout(resets), keep) if semantics else (EMPTY, EMPTY, None)
        m = np.zeros((0,), np.float32) if m is None else m
        expected = numpy_cell(
            cell, k, h0, *((valid, resets, keep) if semantics else (None,) * 3), reverse, unit
        )
        options = dict(reverse=reverse, time_major=time_major, unit=unit)
        args = tuple(map(jnp.asarray, (layout(x), w, b, h0, v, r, m)))
        h = linear_cell_sequence_kernel(cell, *args, **options)
        np.testing.assert_allclose(layout(np.asarray(h)), expected, rtol=2e-5, atol=2e-5)

        g = jnp.asarray(layout(cotangent))
        d_x, d_w, d_b, d_h0, d_unit = linear_cell_sequence_backward_kernel(
            cell, *args[:3], h, *args[3:], g, **options
        )
        got = {"d_x": d_x, "d_w": d_w, "d_b": d_b, "d_h0": d_h0}

        def states(x, params, h0, args=args, reverse=reverse, time_major=time_major):
            axis = 0 if time_major else 1
            return linear._xla_sequence_states(model, reverse, axis, x, params, h0, *args[4:])

        if cell == "rglru":
            params = {"w_i": args[1][:, : 2 * hidden], "b": args[2][: 2 * hidden]}
            params |= {"w_x": args[1][:, 2 * hidden :], "a_param": a_param_of(unit)}
        else:
            params = {"w_i": args[1], "b": args[2]}
        want_x, want_p, want_h0 = jax.vjp(states, args[0], params, args[3])[1](g)
        want = {"d_x": want_x, "d_w": want_p["w_i"], "d_b": want_p["b"], "d_h0": want_h0}
        if cell == "rglru":
            want["d_w"] = jnp.concatenate([want_p["w_i"], want_p["w_x"]], axis=1)
            got["d_b"] = got["d_b"][: 2 * hidden]
            unit_pullback = jax.vjp(a_param_of, unit)[1]
            want["d_unit"] = unit_pullback(want_p["a_param"])[0]
            got["d_unit"] = d_unit.sum(0)
        else:
            assert d_unit is None
        for name, want_value in want.items():
            scale = max(1.0, float(jnp.max(jnp.abs(want_value))))
            np.testing.assert_allclose(
                got[name] / scale, want_value / scale, atol=2e-5, err_msg=name
            )
        without = linear_cell_sequence_backward_kernel(
            cell, *args[:3], h, *args[3:], g, want_d_x=False, **options
        )
        assert without[0] is None
        for a, want_value in zip(without[1:], (d_w, d_b, d_h0, d_unit), strict=True):
            np.testing.assert_array_equal(a, want_value)
