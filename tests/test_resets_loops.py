"""Per-step resets in the cells' fused loops (XLA and CPU kernels), called directly as the
drivers call them: ``cell.fused_loop()(cell, Loop(backwards, unroll, time_major, native),
params, xs, valid, resets, carry0)``, where ``resets[t, b]`` (time-major, in the loop's own terms)
zeroes row ``b``'s carry just before step ``t``. Outputs against a float64 NumPy loop of the
cell equations (``_reference.step``), gradients against JAX's derivative of a plain
``lax.scan`` of ``cell.step``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import step as np_step
from conftest import random_params

import jaxrnn
from jaxrnn import _native
from jaxrnn.cells import _loops

T, I = 7, 3  # noqa: E741
# Sizes at which the kernels split the work over two threads (where two cores are usable): the
# LSTM's batch rows (T * B * H * H * gates >= 2**21 and B >= 32), the others' units
# (B * H * H * gates >= 2**17 and H >= 32; GRU: chunks of 32 and 16 units).
CELLS = [
    ("rnn_tanh", jaxrnn.SimpleRNN(64), "rnn", {"activation": "tanh"}, 32),
    ("lstm", jaxrnn.LSTM(64, forget_bias=1.0), "lstm", {"forget_bias": 1.0}, 32),
    ("gru", jaxrnn.GRU(48), "gru", {"reset_after": True}, 20),
]
KERNELS = _native.unavailable_reason()  # None where they are built and loaded
NEEDS_KERNELS = pytest.mark.skipif(KERNELS is not None, reason=str(KERNELS))
IMPLEMENTATIONS = [
    pytest.param(False, id="fused"),
    pytest.param(True, id="kernel", marks=NEEDS_KERNELS),
]


_CASES = {
    name: (cell.resolve(None, jnp.float32), kind, {**hyper, "hidden": cell.hidden_size}, batch)
    for name, cell, kind, hyper, batch in CELLS
}


@pytest.fixture(params=list(_CASES))
def case(request):
    """A name of ``_CASES``: ``(cell, reference kind, reference hyperparameters, batch)``."""
    return request.param


def _inputs(cell, batch, backwards, masked, seed=0):
    """``(xs [T, B, I], valid [T, B] or None, resets [T, B], carry0)``: ``valid`` in the loop's
    order (the loops take each row's valid steps first in the order they run: a prefix, or a
    suffix with ``backwards``), lengths 0 and T included; resets only on valid steps, and at
    the first visited step of row 1 (whose carry0 then gets no gradient)."""
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(T, batch, I)).astype(np.float32)
    valid = None
    if masked:
        lengths = rng.integers(0, T + 1, batch)
        lengths[:3] = [T, T, 0]
        steps = np.arange(T)[:, None]
        valid = steps >= T - lengths[None] if backwards else steps < lengths[None]
    resets = rng.random((T, batch)) < 0.25
    resets[:, 0] = False  # row 0: no reset at all
    resets[T - 1 if backwards else 0, 1] = True
    if valid is not None:
        resets &= valid
    carry0 = jax.tree.map(
        lambda c: jnp.asarray(rng.normal(size=c.shape), jnp.float32), cell.initial_carry(batch)
    )
    return xs, valid, resets, carry0


def _numpy_loop(kind, hyper, params, xs, valid, resets, carry0, backwards):
    """Time-major ``(ys, carry)`` in float64, row by row: the carry zeroed before a reset step,
    copied (output zero) past the length."""
    steps, batch = xs.shape[:2]
    ys = np.zeros((steps, batch, hyper["hidden"]))
    carries = []
    for b in range(batch):
        carry = jax.tree.map(lambda c, b=b: np.asarray(c[b], np.float64), carry0)
        for t in range(steps - 1, -1, -1) if backwards else range(steps):
            if valid is not None and not valid[t, b]:
                continue
            if resets[t, b]:
                carry = jax.tree.map(np.zeros_like, carry)
            carry, ys[t, b] = np_step(kind, params, carry, xs[t, b], **hyper)
        carries.append(carry)
    return ys, jax.tree.map(lambda *rows: np.stack(rows), *carries)


def _scan_reference(cell, params, xs, valid, resets, carry0, backwards):
    """Time-major ``(ys, carry)``: ``lax.scan`` of ``cell.step``, differentiated by JAX."""

    def body(carry, inputs):
        x_t, valid_t, reset_t = inputs
        carry = jax.tree.map(lambda c: jnp.where(reset_t[:, None], 0.0, c), carry)
        new, y = cell.step(params, carry, cell.project_inputs(params, x_t))
        keep = valid_t[:, None]
        carry = jax.tree.map(lambda n, c: jnp.where(keep, n, c), new, carry)
        return carry, jnp.where(keep, y, 0.0)

    if valid is None:
        valid = jnp.ones(xs.shape[:2], bool)
    carry, ys = jax.lax.scan(body, carry0, (xs, valid, resets), reverse=backwards)
    return ys, carry


def _loss(run, weights):
    """A scalar of every output and the final carry, with fixed random weights."""

    def loss(params, xs, carry0):
        ys, carry = run(params, xs, carry0)
        total = jnp.sum(ys * weights[0])
        for c, w in zip(jax.tree.leaves(carry), weights[1:], strict=True):
            total = total + jnp.sum(c * w)
        return total, (ys, carry)

    return loss


def _fused(cell, backwards, time_major, native, valid, resets):
    """The cell's fused loop on ``xs`` in its layout; ``ys`` time-major."""

    def run(params, xs, carry0):
        loop = _loops.Loop(backwards, 1, time_major, native)
        return cell.fused_loop()(cell, loop, params, xs, valid, resets, carry0)

    return run


def _weights(cell, batch):
    """The loss's weights of ``ys`` and of each leaf of the final carry."""
    rng = np.random.default_rng(7)
    carry = jax.tree.leaves(cell.initial_carry(batch))
    shapes = [(T, batch, cell.hidden_size)] + [c.shape for c in carry]
    return [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]


@functools.cache
def _references(name, backwards, masked):
    """``(ys, carry, (d_params, d_xs, d_carry0))`` of the references, time-major (the same for
    either layout and implementation: computed once)."""
    cell, kind, hyper, batch = _CASES[name]
    params = random_params(cell, I)
    xs, valid, resets, carry0 = _inputs(cell, batch, backwards, masked)
    ys, carry = _numpy_loop(kind, hyper, params, xs, valid, resets, carry0, backwards)
    reference = functools.partial(
        _scan_reference,
        cell,
        valid=None if valid is None else jnp.asarray(valid),
        resets=jnp.asarray(resets),
        backwards=backwards,
    )
    loss = _loss(lambda p, x, c: reference(p, x, carry0=c), _weights(cell, batch))
    grads, _ = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, jnp.asarray(xs), carry0
    )
    return ys, carry, grads


# Both layouts with lengths in both directions; batch-first without lengths.
@pytest.mark.parametrize("native", IMPLEMENTATIONS)
@pytest.mark.parametrize("backwards", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize(
    ("masked", "time_major"),
    [(False, False), (True, False), (True, True)],
    ids=["full-bf", "masked-bf", "masked-tm"],
)
def test_resets_match_the_references(case, native, backwards, masked, time_major):
    cell, _, _, batch = _CASES[case]
    params = random_params(cell, I)
    xs, valid, resets, carry0 = _inputs(cell, batch, backwards, masked)
    valid_j = None if valid is None else jnp.asarray(valid)
    weights = _weights(cell, batch)
    run = _fused(cell, backwards, time_major, native, valid_j, jnp.asarray(resets))
    grad = jax.value_and_grad(_loss(run, weights), argnums=(0, 1, 2), has_aux=True)
    xs_in = xs if time_major else np.swapaxes(xs, 0, 1)
    (_, (ys, carry)), grads = jax.jit(grad)(params, jnp.asarray(xs_in), carry0)

    ref_ys, ref_carry, ref_grads = _references(case, backwards, masked)
    np.testing.assert_allclose(ys, ref_ys, rtol=2e-5, atol=2e-6)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    d_params, d_xs, d_carry0 = grads
    if not time_major:
        d_xs = np.swapaxes(d_xs, 0, 1)
    for name in params:
        np.testing.assert_allclose(
            d_params[name], ref_grads[0][name], rtol=1e-4, atol=1e-5, err_msg=name
        )
    np.testing.assert_allclose(d_xs, ref_grads[1], rtol=1e-4, atol=1e-5)
    for got, want in zip(jax.tree.leaves(d_carry0), jax.tree.leaves(ref_grads[2]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        # A reset at the first visited step: no gradient reaches that row's carry0 at all,
        # and the row without resets (row 0, all steps valid) gets one.
        assert (np.asarray(got)[1] == 0).all()
        assert (np.asarray(got)[0] != 0).any()


@pytest.mark.parametrize(
    "native, backwards",
    [
        pytest.param(False, True, id="fused-bw"),  # (fw: the same code, less the reversal)
        pytest.param(True, False, id="kernel-fw", marks=NEEDS_KERNELS),
        pytest.param(True, True, id="kernel-bw", marks=NEEDS_KERNELS),
    ],
)
def test_all_false_resets_are_no_resets_exactly(case, native, backwards):
    """Outputs, final carry and every gradient bitwise equal to ``resets=None``."""
    cell, _, _, batch = _CASES[case]
    params = random_params(cell, I)
    xs, valid, _, carry0 = _inputs(cell, batch, backwards, masked=True, seed=1)
    weights = _weights(cell, batch)
    results = []
    for resets in (None, jnp.zeros((T, batch), bool)):
        run = _fused(cell, backwards, True, native, jnp.asarray(valid), resets)
        grad = jax.value_and_grad(_loss(run, weights), argnums=(0, 1, 2), has_aux=True)
        results.append(jax.jit(grad)(params, jnp.asarray(xs), carry0))
    for got, want in zip(jax.tree.leaves(results[1]), jax.tree.leaves(results[0]), strict=True):
        np.testing.assert_array_equal(got, want)


@NEEDS_KERNELS
def test_the_kernels_run_with_resets(case):
    """With resets the kernels still run (a silent fallback to the XLA loops would hide them)
    and the primal skips nothing: the same values as differentiated."""
    cell, _, _, batch = _CASES[case]
    params = random_params(cell, I)
    xs, _, resets, carry0 = _inputs(cell, batch, False, masked=False)
    run = _fused(cell, False, True, True, None, jnp.asarray(resets))
    target = {"rnn": "simple", "lstm": "lstm", "gru": "gru"}[_CASES[case][1]]
    hlo = jax.jit(run).lower(params, jnp.asarray(xs), carry0).as_text()
    assert f"jaxrnn_{target}_forward" in hlo
    weights = _weights(cell, batch)
    grad = jax.jit(jax.grad(_loss(run, weights), argnums=(0, 1, 2), has_aux=True))
    assert f"jaxrnn_{target}_backward" in grad.lower(params, jnp.asarray(xs), carry0).as_text()
    primal = jax.jit(run)(params, jnp.asarray(xs), carry0)
    value_and_grad = jax.value_and_grad(_loss(run, weights), argnums=(0, 1, 2), has_aux=True)
    (_, differentiated), _ = jax.jit(value_and_grad)(params, jnp.asarray(xs), carry0)
    for got, want in zip(jax.tree.leaves(primal), jax.tree.leaves(differentiated), strict=True):
        np.testing.assert_array_equal(got, want)
