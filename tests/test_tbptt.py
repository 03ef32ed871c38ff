"""``jaxrnn.tbptt``: the values of one long run; the gradients of a run whose carry is
stopped at every window boundary (built here as a Python loop over windows)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params

import jaxrnn

B, T, F = 3, 11, 2
CELLS = [jaxrnn.SimpleRNN(4), jaxrnn.LSTM(4), jaxrnn.GRU(4)]


def _data(cell, seed=0):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
    resets = np.zeros((B, T), bool)
    resets[0, 5] = resets[2, [2, 8]] = True
    lengths = jnp.asarray([11, 7, 3])
    carry = jax.tree.map(lambda a: jnp.full_like(a, 0.3), cell.initial_carry(B))
    return random_params(cell, F, seed=seed), xs, jnp.asarray(resets), lengths, carry


def _windows_by_hand(cell, params, xs, window, lengths, resets, carry, implementation):
    """Consecutive ``rnn`` calls on slices of ``xs``, each window's carry stopped."""
    outputs = []
    for start in range(0, T, window):
        stop = min(start + window, T)
        if start:
            carry = jax.lax.stop_gradient(carry)
        ys, carry = jaxrnn.rnn(
            cell,
            params,
            xs[:, start:stop],
            jnp.clip(lengths - start, 0, stop - start),
            resets=resets[:, start:stop],
            initial_carry=carry,
            implementation=implementation,
        )
        outputs.append(ys)
    return jnp.concatenate(outputs, axis=1), carry


def _loss(run):
    def loss(params, xs, carry):
        ys, final = run(params, xs, carry)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(final))

    return loss


# Windows of 3 steps over 11 (a first window, a scan over two, a shorter last one) and of
# 20 (one window: no truncation), for each cell through its default path, the LSTM also
# through lax.scan.
CASES = [(cell, window, None) for cell in CELLS for window in (3, 20)]
CASES += [(CELLS[1], window, "scan") for window in (3, 20)]


@pytest.mark.parametrize(
    ("cell", "window", "implementation"),
    CASES,
    ids=[f"{type(c).__name__}-{w}-{i or 'default'}" for c, w, i in CASES],
)
def test_tbptt_values_and_gradients(cell, window, implementation):
    params, xs, resets, lengths, carry = _data(cell)
    kwargs = {"resets": resets, "implementation": implementation}

    def truncated(params, xs, carry):
        return jaxrnn.tbptt(cell, params, xs, window, lengths, initial_carry=carry, **kwargs)

    def by_hand(params, xs, carry):
        return _windows_by_hand(cell, params, xs, window, lengths, resets, carry, implementation)

    def whole(params, xs, carry):
        return jaxrnn.rnn(cell, params, xs, lengths, initial_carry=carry, **kwargs)

    got = jax.jit(truncated)(params, xs, carry)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(whole(params, xs, carry)), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    grads = jax.grad(_loss(truncated), argnums=(0, 1, 2))(params, xs, carry)
    want = jax.grad(_loss(by_hand), argnums=(0, 1, 2))(params, xs, carry)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    full = jax.grad(_loss(whole), argnums=(0, 1, 2))(params, xs, carry)
    if window < T:  # truncation changes the gradient (else it is the full one)
        assert not np.allclose(grads[1], full[1], rtol=1e-3, atol=1e-5)
    else:
        for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(full), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)


def test_tbptt_no_gradient_into_earlier_windows():
    cell = jaxrnn.LSTM(4)
    params, xs, _, _, _ = _data(cell)

    def last_window(xs):
        ys, _ = jaxrnn.tbptt(cell, params, xs, 4)
        return jnp.sum(ys[:, 8:])

    d_xs = jax.grad(last_window)(xs)
    assert np.all(np.asarray(d_xs[:, :8]) == 0.0)
    assert np.all(np.abs(np.asarray(d_xs[:, 8:])).sum(axis=-1) > 0)


def test_tbptt_time_major():
    cell = jaxrnn.GRU(4)
    params, xs, resets, lengths, _ = _data(cell)
    batch_first = jaxrnn.tbptt(cell, params, xs, 4, lengths, resets=resets)
    time_major = jaxrnn.tbptt(
        cell, params, jnp.swapaxes(xs, 0, 1), 4, lengths, resets=resets.T, time_major=True
    )
    np.testing.assert_allclose(jnp.swapaxes(time_major[0], 0, 1), batch_first[0], rtol=1e-6)
    np.testing.assert_allclose(time_major[1], batch_first[1], rtol=1e-6)


@pytest.mark.parametrize("window", [0, -2, 2.5, True, None])
def test_tbptt_rejects_bad_window(window):
    cell = jaxrnn.GRU(4)
    params, xs, *_ = _data(cell)
    with pytest.raises(ValueError, match="window must be a positive int"):
        jaxrnn.tbptt(cell, params, xs, window)
