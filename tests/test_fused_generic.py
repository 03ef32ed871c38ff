"""The fused loop generated from a cell's ``update`` (``jaxrnn.cells.fused.scan``), for a cell
defined here (a gated cell with no recurrent matmul, ``recurrent`` returning None, its
derivative JAX's) and for jaxrnn's cells run through it (the layer-normalized LSTM's gains in
the projection and in the step, derived by JAX; the SimpleRNN through its written-out
``update_backward``): outputs and final carry against a float64
NumPy loop (the gated cell) or JAX's derivative of ``lax.scan`` of ``cell.step`` (values and
gradients), both layouts, forward and backwards, with lengths and resets; ``check_grads``."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.cells import _base, _loops, fused

T, B, I, H = 5, 4, 3, 6  # noqa: E741


@dataclasses.dataclass(frozen=True)
class DecayCell(_base.CellBase):
    """``f = sigmoid(xp_f + a * h)``, ``h' = f * h + (1 - f) * tanh(xp_z)``: a gated cell whose
    state enters only elementwise (through ``a [H]``), no ``w_h``."""

    hidden_size: int
    dtype: _base.DType = None
    param_dtype: _base.DType = jnp.float32
    gates = 2

    def init(self, key, input_size, dtype=None):
        k_w, k_a = jax.random.split(key)
        w = jax.random.normal(k_w, (input_size, 2 * self.hidden_size)) / np.sqrt(input_size)
        return {
            "w_i": w,
            "b": jnp.full((2 * self.hidden_size,), 0.3),
            "a": jax.random.normal(k_a, (self.hidden_size,)),
        }

    def param_shapes(self, input_size):
        return {"w_i": (input_size, 2 * self.hidden_size), "a": (self.hidden_size,)}

    def recurrent(self, params, h):
        return None

    def update(self, params, carry, xp, hw):
        assert hw is None
        xf, xz = jnp.split(xp, 2, axis=-1)
        f = jax.nn.sigmoid(xf + params["a"] * carry)
        h = f * carry + (1.0 - f) * jnp.tanh(xz)
        return h, h

    def fused_loop(self):
        return fused.scan


def _numpy_decay(params, xs, valid, resets, h0, backwards):
    """Time-major float64 loop of :class:`DecayCell`, per row."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    ys = np.zeros((T, B, H))
    h = np.asarray(h0, np.float64).copy()
    for b in range(B):
        for t in range(T - 1, -1, -1) if backwards else range(T):
            if valid is not None and not valid[t, b]:
                continue
            if resets[t, b]:
                h[b] = 0.0
            z = xs[t, b] @ p["w_i"] + p["b"]
            f = 1.0 / (1.0 + np.exp(-(z[:H] + p["a"] * h[b])))
            h[b] = f * h[b] + (1.0 - f) * np.tanh(z[H:])
            ys[t, b] = h[b]
    return ys, h


def _scan_reference(cell, params, xs, valid, resets, carry0, backwards):
    """Time-major ``(ys, carry)``: ``lax.scan`` of ``cell.step``, differentiated by JAX."""

    def body(carry, inputs):
        x_t, valid_t, reset_t = inputs
        carry = jax.tree.map(lambda c: jnp.where(reset_t[:, None], 0.0, c), carry)
        new, y = cell.step(params, carry, cell.project_inputs(params, x_t))
        keep = valid_t[:, None]
        carry = jax.tree.map(lambda n, c: jnp.where(keep, n, c), new, carry)
        return carry, jnp.where(keep, y, 0.0)

    valid = jnp.ones(xs.shape[:2], bool) if valid is None else valid
    carry, ys = jax.lax.scan(body, carry0, (xs, valid, resets), reverse=backwards)
    return ys, carry


CELLS = {
    "decay": DecayCell(H).resolve(None, jnp.float32),
    "lstm_layer_norm": jaxrnn.LSTM(H, layer_norm=True, forget_bias=0.5).resolve(None, jnp.float32),
    # A written-out derivative; the GRU's and the LSTM variants' are checked through rnn in
    # test_variants_fused, test_resets_loops and test_native.
    "rnn_relu": jaxrnn.SimpleRNN(H, "relu").resolve(None, jnp.float32),
}


def _inputs(cell, backwards, seed=0):
    rng = np.random.default_rng(seed)
    params = random_params(cell, I, seed)
    params = {
        k: v + 0.2 * jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in params.items()
    }
    xs = rng.normal(size=(T, B, I)).astype(np.float32)
    lengths = np.array([T, 0, 2, 4])
    valid = np.arange(T)[:, None] < lengths[None, :]
    if backwards:  # the loops take each row's valid steps first in the order they run
        valid = valid[::-1]
    resets = (rng.random((T, B)) < 0.3) & valid
    carry0 = jax.tree.map(
        lambda c: jnp.asarray(rng.normal(size=c.shape), jnp.float32), cell.initial_carry(B)
    )
    return params, jnp.asarray(xs), jnp.asarray(valid), jnp.asarray(resets), carry0


def _run(cell, backwards, time_major, valid, resets):
    def run(params, xs, carry0):
        xs = xs if time_major else jnp.swapaxes(xs, 0, 1)
        loop = _loops.Loop(backwards, 1, time_major, False)
        return fused.scan(cell, loop, params, xs, valid, resets, carry0)

    return run


def _loss(run):
    def loss(params, xs, carry0):
        ys, carry = run(params, xs, carry0)
        weights = jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(ys * weights) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(carry))

    return loss


@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backwards"])
@pytest.mark.parametrize("name", list(CELLS))
def test_the_generated_loop_matches_scan(name, backwards):
    cell = CELLS[name]
    params, xs, valid, resets, carry0 = _inputs(cell, backwards)
    reference = _scan_reference(cell, params, xs, valid, resets, carry0, backwards)
    ref_grads = jax.grad(
        _loss(lambda p, x, c: _scan_reference(cell, p, x, valid, resets, c, backwards)),
        argnums=(0, 1, 2),
    )(params, xs, carry0)
    for time_major in (True, False):
        run = _run(cell, backwards, time_major, valid, resets)
        ys, carry = jax.jit(run)(params, xs, carry0)
        np.testing.assert_allclose(ys, reference[0], rtol=1e-5, atol=1e-6)
        for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(reference[1]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        grads = jax.jit(jax.grad(_loss(run), argnums=(0, 1, 2)))(params, xs, carry0)
        assert set(grads[0]) == set(params)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
    if name == "decay":
        ys_np, h_np = _numpy_decay(params, np.asarray(xs), valid, resets, carry0, backwards)
        np.testing.assert_allclose(ys, ys_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(carry, h_np, rtol=1e-5, atol=1e-6)


def test_the_generated_derivative_passes_check_grads():
    cell = CELLS["decay"]
    params, xs, valid, resets, carry0 = _inputs(cell, False)
    with jax.enable_x64():
        params, xs, carry0 = jax.tree.map(
            lambda v: jnp.asarray(np.asarray(v, np.float64)), (params, xs, carry0)
        )
        run = _run(dataclasses.replace(cell, dtype=jnp.float64), False, True, valid, resets)
        check_grads(_loss(run), (params, xs, carry0), order=1, modes=["rev"])


def test_a_cell_of_ones_own_runs_fused_through_rnn():
    cell = DecayCell(H)
    params, xs, *_ = _inputs(cell.resolve(None, jnp.float32), False)
    xs_bf = jnp.swapaxes(xs, 0, 1)
    lengths = jnp.array([T, 0, 2, 4])
    fused_out = jaxrnn.rnn(cell, params, xs_bf, lengths, implementation="fused")
    scan_out = jaxrnn.rnn(cell, params, xs_bf, lengths, implementation="scan")
    for a, b in zip(jax.tree.leaves(fused_out), jax.tree.leaves(scan_out), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
