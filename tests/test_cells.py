"""Each cell's single step against the NumPy reference, its gradients, and its contract."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import step as np_step
from conftest import random_params
from jax.test_util import check_grads

import jaxrnn


@pytest.mark.parametrize("jit", [False, True])
def test_step_matches_numpy(cell_case, jit):
    cell, kind, hyper = cell_case
    params = random_params(cell, 3, second_bias=True)
    if isinstance(cell, jaxrnn.GRU) and not cell.reset_after:
        params.pop("b_h")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3)).astype(np.float32)
    carry = jax.tree.map(
        lambda z: jnp.asarray(rng.normal(size=z.shape), jnp.float32), cell.initial_carry(4)
    )
    fn = jax.jit(cell) if jit else cell
    new_carry, y = fn(params, carry, x)
    for b in range(4):
        ref_carry = jax.tree.map(lambda z, b=b: np.asarray(z[b], np.float64), carry)
        ref_new, ref_y = np_step(kind, params, ref_carry, x[b], **hyper)
        np.testing.assert_allclose(y[b], ref_y, rtol=1e-5, atol=1e-6)
        for got, want in zip(jax.tree.leaves(new_carry), jax.tree.leaves(ref_new), strict=True):
            np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


def test_step_gradients(cell_case):
    cell, _, _ = cell_case
    with jax.enable_x64(True):
        params = random_params(cell, 3, dtype=jnp.float64)
        x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3)))
        carry = jax.tree.map(lambda z: z + 0.3, cell.initial_carry(2, jnp.float64))
        check_grads(
            lambda p, c, x: cell(p, c, x), (params, carry, x), order=2, modes=("fwd", "rev")
        )


def test_init_layout_and_dtype():
    key = jax.random.key(0)
    lstm = jaxrnn.LSTM(4, forget_bias_init=1.0)
    p = lstm.init(key, 3, jnp.bfloat16)
    assert {k: v.shape for k, v in p.items()} == {"w_i": (3, 16), "w_h": (4, 16), "b": (16,)}
    assert all(v.dtype == jnp.bfloat16 for v in p.values())
    np.testing.assert_array_equal(
        np.asarray(p["b"], np.float32), np.r_[np.zeros(4), np.ones(4), np.zeros(8)]
    )
    gru = jaxrnn.GRU(4).init(key, 3)
    assert set(gru) == {"w_i", "w_h", "b", "b_h"}
    assert set(jaxrnn.GRU(4, reset_after=False).init(key, 3)) == {"w_i", "w_h", "b"}
    w_h = np.asarray(jaxrnn.SimpleRNN(6).init(key, 3)["w_h"])
    np.testing.assert_allclose(w_h @ w_h.T, np.eye(6), atol=1e-5)  # orthogonal recurrent init


def test_initial_carry_shapes():
    c, h = jaxrnn.LSTM(7).initial_carry(3)
    assert c.shape == h.shape == (3, 7) and not np.any(c) and not np.any(h)
    np.testing.assert_array_equal(jaxrnn.GRU(2).initial_carry(1), np.zeros((1, 2)))


def test_cells_are_frozen_hashable_and_static():
    a, b = jaxrnn.LSTM(8, forget_bias=1.0), jaxrnn.LSTM(8, forget_bias=1.0)
    assert a == b and hash(a) == hash(b) and a != jaxrnn.LSTM(8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.hidden_size = 3
    traces = []

    @jax.jit
    def f(params, x, cell=None):
        return x

    @jax.jit
    def g(params, carry, x):
        return a(params, carry, x)

    def run(cell, params, carry, x):
        traces.append(cell)
        return cell(params, carry, x)

    run_jit = jax.jit(run, static_argnums=0)
    params = a.init(jax.random.key(0), 2)
    x = jnp.ones((1, 2))
    run_jit(a, params, a.initial_carry(1), x)
    run_jit(b, params, b.initial_carry(1), x)  # equal cell: no retrace
    assert len(traces) == 1


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: jaxrnn.SimpleRNN(4, activation="sigmoid"), "activation must be 'tanh' or 'relu'"),
        (lambda: jaxrnn.LSTM(0), "hidden_size must be a positive int"),
        (lambda: jaxrnn.GRU(3.5), "hidden_size must be a positive int"),
        (lambda: jaxrnn.GRU(3, reset_after="yes"), "reset_after must be a bool"),
        (lambda: jaxrnn.LSTM(3).init(jax.random.key(0), 0), "input_size must be a positive"),
    ],
)
def test_bad_hyperparameters(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()
