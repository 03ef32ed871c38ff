"""``rnn(..., remat=...)`` and the fused backward pass give plain autodiff's numbers.

Three ways of computing the same gradients are compared, in float64 so that only real
differences show: the default ``rnn`` (hand-written backward for the common cells),
``remat=True`` / ``remat=k`` (autodiff through checkpoints, including a ``k`` that does not
divide the length), and ``static_rnn`` (autodiff through a Python loop), with lengths,
``reverse`` and an initial carry.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CELL_CASES, random_params
from jax.test_util import check_grads

import jaxrnn

B, T, F = 3, 7, 4
LENGTHS = np.array([7, 3, 0])


def _inputs(seed):
    return np.random.default_rng(seed).normal(size=(B, T, F))


def _loss(driver, cell, lengths, reverse, **kwargs):
    def loss(params, xs, carry0):
        ys, carry = driver(
            cell, params, xs, lengths, initial_carry=carry0, reverse=reverse, **kwargs
        )
        weights = jnp.arange(1.0, ys.size + 1).reshape(ys.shape) / ys.size
        return jnp.sum(jnp.sin(ys) * weights) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

    return loss


@functools.cache
def _static_reference(cell, reverse, masked):
    """The arguments, and the value and gradients of the loss through ``static_rnn`` (shared
    by the remat cases), float64."""
    lengths = jnp.asarray(LENGTHS) if masked else None
    with jax.enable_x64(True):
        params = random_params(cell, F, dtype=jnp.float64, second_bias=True)
        xs = jnp.asarray(_inputs(1))
        carry0 = jax.tree.map(
            lambda c: c + 0.3, cell.initial_carry(B, jnp.float64)
        )  # a non-zero initial carry, so that its gradient is tested too
        ref = _loss(jaxrnn.static_rnn, cell, lengths, reverse)
        value, grads = jax.value_and_grad(ref, argnums=(0, 1, 2))(params, xs, carry0)
    return (params, xs, carry0), value, grads


# remat=1 is remat=True (drivers.py); 3 does not divide T, 7 is one block, 10 one padded.
# The blocks are the driver's, whatever the cell: every cell runs the fused path (False) and
# blocks of 3; the LSTM (a pair of carries) and the GRU run the other choices.
REMAT_CASES = [(name, cell, remat) for name, cell, *_ in CELL_CASES for remat in (False, 3)]
REMAT_CASES += [
    (name, cell, remat)
    for name, cell, *_ in CELL_CASES
    if name in ("lstm", "gru")
    for remat in (True, 7, 10)
]


@pytest.mark.parametrize(
    "cell, remat", [c[1:] for c in REMAT_CASES], ids=[f"{c[0]}-{c[2]}" for c in REMAT_CASES]
)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_values_and_gradients_equal_static_autodiff(cell, remat, reverse, masked):
    lengths = jnp.asarray(LENGTHS) if masked else None
    args, value, g_ref = _static_reference(cell, reverse, masked)
    with jax.enable_x64(True):
        got = _loss(jaxrnn.rnn, cell, lengths, reverse, remat=remat)
        got_value, g_got = jax.jit(jax.value_and_grad(got, argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(got_value, value, rtol=1e-12)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12), g_got, g_ref
        )


@pytest.mark.parametrize("cell", [jaxrnn.LSTM(3), jaxrnn.GRU(3), jaxrnn.SimpleRNN(3)])
def test_fused_backward_passes_check_grads(cell):
    """Numerical differences of the default (hand-written backward) path, reverse mode."""
    with jax.enable_x64(True):
        params = random_params(cell, F, dtype=jnp.float64)
        xs = jnp.asarray(_inputs(2))

        def f(params, xs):
            return jaxrnn.rnn(cell, params, xs, jnp.asarray(LENGTHS), reverse=True)

        check_grads(f, (params, xs), order=1, modes=("rev",))


def test_second_order_gradients_of_the_fused_path():
    """The hand-written backward pass is itself differentiable (reverse over reverse)."""
    cell = jaxrnn.LSTM(3)
    with jax.enable_x64(True):
        params = random_params(cell, F, dtype=jnp.float64)
        xs = jnp.asarray(_inputs(3))

        def loss(remat):
            return lambda p: jnp.sum(jaxrnn.rnn(cell, p, xs, remat=remat)[0] ** 2)

        def hvp(remat):
            return jax.grad(lambda p: jnp.vdot(jax.grad(loss(remat))(p)["w_h"], params["w_h"]))

        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
            hvp(False)(params),
            hvp(True)(params),
        )


def test_remat_reduces_backward_memory():
    """XLA's memory analysis: checkpointing every k steps keeps less than plain scan."""
    cell = jaxrnn.LSTM(32)
    params = cell.init(jax.random.key(0), 8)
    xs = jnp.zeros((4, 512, 8))

    def temp(remat):
        def loss(p):
            return jnp.sum(jaxrnn.rnn(cell, p, xs, remat=remat)[0][:, -1])

        analysis = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
        return analysis.temp_size_in_bytes

    plain, every, blocks = temp(False), temp(True), temp(23)
    assert blocks < every < plain
    assert blocks < plain / 4


@pytest.mark.parametrize("remat", [0, -1, 2.5, "yes"])
def test_bad_remat(remat):
    cell = jaxrnn.LSTM(2)
    params = cell.init(jax.random.key(0), F)
    with pytest.raises(ValueError, match="remat"):
        jaxrnn.rnn(cell, params, jnp.zeros((B, T, F)), remat=remat)
