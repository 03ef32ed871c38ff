"""``rnn`` and ``static_rnn`` against the NumPy reference: masks, reversal, layouts, transforms."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import run as np_run
from conftest import random_params
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxrnn

B, T, I = 5, 7, 3  # noqa: E741 (batch, time, input: the shapes the docstrings use)
LENGTHS = np.array([0, 3, 7, 1, 5], np.int32)  # includes 0 and T

DRIVERS = {
    "scan": jaxrnn.rnn,
    "scan_unroll3": functools.partial(jaxrnn.rnn, unroll=3),
    "scan_unroll_all": functools.partial(jaxrnn.rnn, unroll=True),
    "static": jaxrnn.static_rnn,
}


def _inputs(seed=0, batch=B, steps=T):
    return np.random.default_rng(seed).normal(size=(batch, steps, I)).astype(np.float32)


def _assert_carry_close(got, want, **tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, **tol)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
def test_matches_numpy(cell_case, driver, reverse, masked):
    cell, kind, hyper = cell_case
    params = random_params(cell, I)
    xs = _inputs()
    lengths = LENGTHS if masked else None
    ys, carry = DRIVERS[driver](cell, params, xs, lengths, reverse=reverse)
    ref_ys, ref_carry = np_run(kind, params, xs, lengths, reverse=reverse, **hyper)
    np.testing.assert_allclose(ys, ref_ys, rtol=2e-5, atol=2e-6)
    _assert_carry_close(carry, ref_carry, rtol=2e-5, atol=2e-6)
    if masked:  # exactly zero past each length, not merely small
        for b, n in enumerate(LENGTHS):
            assert not np.any(np.asarray(ys[b, n:]))


@pytest.mark.parametrize("reverse", [False, True])
def test_time_major_and_initial_carry(cell_case, reverse):
    cell, kind, hyper = cell_case
    params = random_params(cell, I)
    xs = _inputs(1)
    rng = np.random.default_rng(3)
    carry0 = jax.tree.map(
        lambda z: jnp.asarray(rng.normal(size=z.shape), jnp.float32), cell.initial_carry(B)
    )
    ys_bf, c_bf = jaxrnn.rnn(cell, params, xs, LENGTHS, initial_carry=carry0, reverse=reverse)
    ys_tm, c_tm = jaxrnn.rnn(
        cell,
        params,
        np.swapaxes(xs, 0, 1),
        LENGTHS,
        initial_carry=carry0,
        reverse=reverse,
        time_major=True,
    )
    np.testing.assert_array_equal(ys_bf, np.swapaxes(ys_tm, 0, 1))
    _assert_carry_close(c_bf, c_tm, rtol=0, atol=0)
    per_seq = [jax.tree.map(lambda z, b=b: np.asarray(z[b], np.float64), carry0) for b in range(B)]
    ref_ys, ref_carry = np_run(kind, params, xs, LENGTHS, reverse=reverse, carry0=per_seq, **hyper)
    np.testing.assert_allclose(ys_bf, ref_ys, rtol=2e-5, atol=2e-6)
    # Length 0 keeps the initial carry exactly.
    _assert_carry_close(
        jax.tree.map(lambda z: z[0], c_bf), jax.tree.map(lambda z: z[0], carry0), rtol=0, atol=0
    )
    _assert_carry_close(c_bf, ref_carry, rtol=2e-5, atol=2e-6)


def test_jit_matches_eager(cell_case):
    cell, _, _ = cell_case
    params = random_params(cell, I)
    xs = _inputs(2)
    eager = jaxrnn.rnn(cell, params, xs, LENGTHS, reverse=True)
    jitted = jax.jit(jaxrnn.rnn, static_argnums=0, static_argnames=("reverse",))(
        cell, params, xs, LENGTHS, reverse=True
    )
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reverse", [False, True])
def test_padded_inputs_get_exactly_zero_gradient(cell_case, reverse):
    cell, _, _ = cell_case
    params = random_params(cell, I)

    def loss(xs):
        ys, carry = jaxrnn.rnn(cell, params, xs, LENGTHS, reverse=reverse)
        return jnp.sum(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry))

    grads = np.asarray(jax.grad(loss)(jnp.asarray(_inputs(3))))
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    assert not np.any(grads[~mask])
    if getattr(cell, "activation", "tanh") != "relu":  # relu may be dead at a step
        assert np.all(np.abs(grads[mask]).sum(-1) > 0)  # every valid step gets a gradient


@pytest.mark.parametrize("driver", ["scan", "static"])
@pytest.mark.parametrize("reverse", [False, True])
def test_driver_gradients(cell_case, driver, reverse):
    cell, _, _ = cell_case
    with jax.enable_x64(True):
        params = random_params(cell, I, dtype=jnp.float64)
        xs = jnp.asarray(_inputs(4, batch=3, steps=4), jnp.float64)
        lengths = jnp.array([4, 2, 0])

        def f(params, xs):
            ys, carry = DRIVERS[driver](cell, params, xs, lengths, reverse=reverse)
            return ys, carry

        check_grads(f, (params, xs), order=1, modes=("rev",))


def test_vmap_over_parameter_sets():
    cell = jaxrnn.LSTM(4)
    stacked_params = jax.vmap(lambda k: cell.init(k, I))(jax.random.split(jax.random.key(0), 3))
    xs = _inputs(5)
    ys, _ = jax.vmap(lambda p: jaxrnn.rnn(cell, p, xs, LENGTHS, reverse=True))(stacked_params)
    for m in range(3):
        one = jax.tree.map(lambda a, m=m: a[m], stacked_params)
        np.testing.assert_allclose(
            ys[m], jaxrnn.rnn(cell, one, xs, LENGTHS, reverse=True)[0], rtol=1e-5, atol=1e-6
        )


def test_vmap_over_sequences_matches_batch():
    """vmap over single sequences (batch of 1 inside) equals running the batch at once."""
    cell = jaxrnn.GRU(4)
    params = cell.init(jax.random.key(1), I)
    xs = _inputs(6)

    def one(x, n):
        ys, carry = jaxrnn.rnn(cell, params, x[None], n[None], reverse=True)
        return ys[0], carry[0]

    ys, carry = jax.vmap(one)(jnp.asarray(xs), jnp.asarray(LENGTHS))
    ys_b, carry_b = jaxrnn.rnn(cell, params, xs, LENGTHS, reverse=True)
    np.testing.assert_allclose(ys, ys_b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry, carry_b, rtol=1e-5, atol=1e-6)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(0, T), min_size=B, max_size=B), reverse=st.booleans())
def test_random_lengths_under_jit(lengths, reverse):
    cell = jaxrnn.LSTM(5, forget_bias=1.0)
    params = random_params(cell, I)
    xs = _inputs(7)
    lengths = np.asarray(lengths, np.int32)
    ys, carry = _jitted_rnn(cell, params, xs, lengths, reverse)
    ref_ys, ref_carry = np_run(
        "lstm", params, xs, lengths, reverse=reverse, hidden=5, forget_bias=1.0
    )
    np.testing.assert_allclose(ys, ref_ys, rtol=2e-5, atol=2e-6)
    _assert_carry_close(carry, ref_carry, rtol=2e-5, atol=2e-6)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _jitted_rnn(cell, params, xs, lengths, reverse):
    return jaxrnn.rnn(cell, params, xs, lengths, reverse=reverse)


def test_no_length_equals_full_length(cell_case):
    cell, _, _ = cell_case
    params = random_params(cell, I)
    xs = _inputs(8)
    full = np.full(B, T, np.int32)
    for reverse in (False, True):
        a = jaxrnn.rnn(cell, params, xs, reverse=reverse)
        b = jaxrnn.rnn(cell, params, xs, full, reverse=reverse)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


# --- bad input --------------------------------------------------------------------------------

CELL = jaxrnn.LSTM(4)
PARAMS = CELL.init(jax.random.key(0), I)
XS = np.zeros((B, T, I), np.float32)


@pytest.mark.parametrize("driver", [jaxrnn.rnn, jaxrnn.static_rnn])
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (
            {"xs": np.zeros((T, I), np.float32)},
            ValueError,
            r"xs must have rank 3 .*got shape \(7, 3\)",
        ),
        ({"xs": np.zeros((B, T, I), np.int32)}, TypeError, "xs must have a floating dtype"),
        (
            {"xs": np.zeros((B, T, 6), np.float32)},
            ValueError,
            r"params\['w_i'\] has shape \(3, 16\), expected \(6, 16\).*input_size",
        ),
        ({"lengths": np.zeros((B, 1), np.int32)}, ValueError, r"lengths must have shape \(5,\)"),
        ({"lengths": np.zeros(B, np.float32)}, TypeError, "lengths must have an integer dtype"),
        ({"lengths": np.array([0, 1, 2, 3, 8])}, ValueError, r"lengths must lie in \[0, 7\]"),
        ({"lengths": np.array([0, -1, 2, 3, 4])}, ValueError, r"lengths must lie in \[0, 7\]"),
        ({"initial_carry": np.zeros((B, 4), np.float32)}, ValueError, "initial_carry must have"),
        (
            {"initial_carry": (np.zeros((B, 3)), np.zeros((B, 3)))},
            ValueError,
            r"initial_carry leaves must have shape \(5, 4\)",
        ),
        ({"unroll": 0}, ValueError, "unroll must be a positive int"),
        ({"params": {"w": 1}}, TypeError, "params must be the dict made by LSTM.init"),
        (
            {"params": PARAMS | {"b": np.zeros(15, np.float32)}},
            ValueError,
            r"params\['b'\] has shape \(15,\), expected \(16,\) \(a value per column of w_i\)",
        ),
        (
            {"params": PARAMS | {"b_h": np.zeros((1, 16), np.float32)}},
            ValueError,
            r"params\['b_h'\] has shape \(1, 16\), expected \(16,\)",
        ),
    ],
)
def test_bad_input_errors(driver, kwargs, error, message):
    args = {"params": PARAMS, "xs": XS, "lengths": None} | kwargs
    with pytest.raises(error, match=message):
        driver(CELL, args.pop("params"), args.pop("xs"), args.pop("lengths"), **args)


def test_bad_hidden_size_in_params():
    with pytest.raises(ValueError, match="mismatch in hidden_size"):
        jaxrnn.rnn(jaxrnn.LSTM(5), PARAMS, XS)


def test_lengths_checked_under_jit_shape_and_dtype():
    """Under jit the values are unknown, but shape and dtype are still checked at trace time."""
    f = jax.jit(lambda xs, n: jaxrnn.rnn(CELL, PARAMS, xs, n)[0])
    with pytest.raises(ValueError, match=r"lengths must have shape \(5,\)"):
        f(XS, jnp.zeros(4, jnp.int32))
