"""``implementation="pallas"`` (``jaxrnn.cells.pallas``, run here by Pallas's interpreter):
SimpleRNN (tanh, relu), LSTM and GRU, forward and reversed, with lengths (0 and T among them),
both layouts, resets and an initial carry, against the float64 NumPy reference loop and
against ``implementation="scan"`` (values and the gradients of every parameter, the inputs and
the initial carry), in float32 and in bfloat16; units that are not a power of two and a batch
that is not a multiple of the kernels' block; ``check_grads``; the errors where it cannot
run. Each cell's cases share one compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import run as np_run
from conftest import random_params
from jax.test_util import check_grads

import jaxrnn

B, T, F, H = 5, 4, 3, 24  # H pads to 32 units: two tiles of 16 over a TILE of 16
LENGTHS = np.array([4, 0, 2, 3, 1], np.int32)
CELLS = {
    "rnn_tanh": (jaxrnn.SimpleRNN(H), "rnn", {"activation": "tanh"}),
    "rnn_relu": (jaxrnn.SimpleRNN(H, activation="relu"), "rnn", {"activation": "relu"}),
    "lstm": (jaxrnn.LSTM(H, forget_bias=0.5), "lstm", {"forget_bias": 0.5}),
    "gru": (jaxrnn.GRU(H), "gru", {}),
}
# (reverse, lengths, time_major, resets)
CONFIGS = [
    (False, None, False, False),
    (True, None, True, False),
    (False, LENGTHS, False, True),
    (True, LENGTHS, True, False),
    (True, LENGTHS, False, True),
]


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of 16 units, so that a unit loop and a matmul loop of two tiles each run."""
    from jaxrnn.cells import pallas

    monkeypatch.setattr(pallas, "TILE", 16)


def _inputs(cell, seed=0):
    rng = np.random.default_rng(seed)
    params = random_params(cell, F, seed)
    xs = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
    carry0 = jax.tree.map(
        lambda c: jnp.asarray(rng.normal(0, 0.5, c.shape), jnp.float32), cell.initial_carry(B)
    )
    resets = np.zeros((B, T), bool)
    resets[0, 2] = resets[3, 1] = True
    return params, xs, carry0, jnp.asarray(resets)


def _loss_and_grads(cell, implementation, config, resets):
    reverse, lengths, time_major, with_resets = config

    def loss(params, xs, carry0):
        xs_in = jnp.swapaxes(xs, 0, 1) if time_major else xs
        r = resets if with_resets else None
        r = jnp.swapaxes(r, 0, 1) if (r is not None and time_major) else r
        ys, carry = jaxrnn.rnn(
            cell,
            params,
            xs_in,
            lengths,
            initial_carry=carry0,
            resets=r,
            reverse=reverse,
            time_major=time_major,
            implementation=implementation,
        )
        ys = jnp.swapaxes(ys, 0, 1) if time_major else ys
        weights = jnp.linspace(-1.0, 1.0, ys.size).reshape(ys.shape)
        total = jnp.sum(ys.astype(jnp.float32) * weights)
        total = total + sum(jnp.sum(c.astype(jnp.float32) ** 2) for c in jax.tree.leaves(carry))
        return total, (ys, carry)

    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)


def _all_configs(cell, implementation, resets):
    runs = [_loss_and_grads(cell, implementation, config, resets) for config in CONFIGS]
    return jax.jit(lambda *args: [run(*args) for run in runs])


def _close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w), rtol=tol, atol=tol)


def _np_run(kind, hyper, params, xs, config, resets, carry0):
    """The NumPy reference with resets: each segment between resets is its own sequence."""
    reverse, lengths, _, with_resets = config
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(xs, np.float64)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    carry0 = jax.tree.map(lambda c: np.asarray(c, np.float64), carry0)
    ys = np.zeros((B, T, H))
    finals = []
    for b in range(B):
        carry = jax.tree.map(lambda c, b=b: c[b], carry0)
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            starts = with_resets and bool(resets[b, t])
            # Backwards a segment is entered at its last step: the step before a reset.
            if with_resets and reverse:
                starts = t + 1 < lengths[b] and bool(resets[b, t + 1])
            if starts:
                carry = jax.tree.map(np.zeros_like, carry)
            one = np_run(kind, p, x[b : b + 1, t : t + 1], carry0=[carry], hidden=H, **hyper)
            ys[b, t] = one[0][0, 0]
            carry = jax.tree.map(lambda c: c[0], one[1])
        finals.append(carry)
    return ys, jax.tree.map(lambda *c: np.stack(c), *finals)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CELLS))
def test_pallas_against_numpy_and_scan(name):
    cell, kind, hyper = CELLS[name]
    params, xs, carry0, resets = _inputs(cell)
    got = _all_configs(cell, "pallas", resets)(params, xs, carry0)
    want = _all_configs(cell, "scan", resets)(params, xs, carry0)
    for config, (g, w) in zip(CONFIGS, zip(got, want, strict=True), strict=True):
        reverse, lengths, time_major, with_resets = config
        where = f"{reverse=} lengths={lengths is not None} {time_major=} {with_resets=}"
        (_, (ys, carry)), grads = g
        (_, scan_out), scan_grads = w
        ref_ys, ref_carry = _np_run(kind, hyper, params, xs, config, resets, carry0)
        try:
            _close(ys, ref_ys, 2e-5)
            _close(carry, ref_carry, 2e-5)
            _close((ys, carry), scan_out, 1e-5)
            _close(grads, scan_grads, 5e-5)
        except AssertionError as error:
            raise AssertionError(where) from error
        if config[1] is not None:  # exact zeros past each length, and no gradient there
            for b, n in enumerate(LENGTHS):
                assert not np.any(np.asarray(ys[b, n:])), where
                assert not np.any(np.asarray(grads[1][b, n:])), where


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_pallas_bfloat16_against_scan(name):
    """bfloat16 matmuls with a float32 state and accumulation: as ``"scan"`` computes them."""
    cell = CELLS[name][0].__class__(H, dtype=jnp.bfloat16)
    params, xs, carry0, resets = _inputs(cell, seed=1)
    config = CONFIGS[2]
    got = jax.jit(_loss_and_grads(cell, "pallas", config, resets))(params, xs, carry0)
    want = jax.jit(_loss_and_grads(cell, "scan", config, resets))(params, xs, carry0)
    (_, (ys, carry)), grads = got
    assert ys.dtype == jnp.bfloat16 and all(c.dtype == jnp.float32 for c in jax.tree.leaves(carry))
    _close(got, want, 2e-2)


def test_pallas_check_grads():
    cell = jaxrnn.LSTM(6)
    params = random_params(cell, F, 3)
    xs = jnp.asarray(np.random.default_rng(3).normal(size=(3, T, F)), jnp.float32)

    def loss(params, xs):
        ys, (c, h) = jaxrnn.rnn(cell, params, xs, jnp.array([4, 2, 3]), implementation="pallas")
        return jnp.sum(ys**2) + jnp.sum(c)

    check_grads(loss, (params, xs), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "cell,kwargs,reason",
    [
        (jaxrnn.LSTM(4, peepholes=True), {}, "no Pallas kernels"),
        (jaxrnn.GRU(4, reset_after=False), {}, "has no fused loop"),
        (jaxrnn.LSTM(4), {"remat": True}, "remat is set"),
    ],
)
def test_pallas_where_it_cannot_run_is_an_error(cell, kwargs, reason):
    params = cell.init(jax.random.key(0), F)
    xs = jnp.zeros((2, T, F))
    with pytest.raises(ValueError, match="implementation='pallas' cannot run: .*" + reason):
        jaxrnn.rnn(cell, params, xs, implementation="pallas", **kwargs)
