"""``implementation=``: what runs for each choice, the errors, and forward-mode autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_params

import jaxrnn
from jaxrnn import _native
from jaxrnn.models import Model

B, T, F = 3, 5, 2
LENGTHS = np.array([5, 0, 3], np.int32)
KERNELS = _native.unavailable_reason() is None


def _xs(seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(B, T, F)).astype(dtype)


def _jaxpr(cell, params, implementation, **kwargs):
    def loss(p):
        return jnp.sum(
            jaxrnn.rnn(cell, p, _xs(), LENGTHS, implementation=implementation, **kwargs)[0]
        )

    return str(jax.make_jaxpr(loss)(params))


@pytest.mark.parametrize("cell", [jaxrnn.SimpleRNN(4), jaxrnn.LSTM(4), jaxrnn.GRU(4)])
def test_each_choice_runs_what_it_names(cell):
    params = random_params(cell, F)
    scan = _jaxpr(cell, params, "scan")
    assert "ffi_call" not in scan and "custom_vjp" not in scan  # lax.scan, JAX's derivative
    fused = _jaxpr(cell, params, "fused")
    assert "custom_vjp" in fused and "ffi_call" not in fused
    assert "ffi_call" not in _jaxpr(cell, params, None, unroll=2)  # unroll: the XLA loop
    if KERNELS:
        assert "ffi_call" in _jaxpr(cell, params, "kernel")
        assert "ffi_call" in _jaxpr(cell, params, None)  # the default on a CPU


@pytest.mark.parametrize("cell", [jaxrnn.SimpleRNN(4), jaxrnn.LSTM(4), jaxrnn.GRU(4)])
def test_every_choice_gives_the_same_numbers(cell):
    params, xs = random_params(cell, F), _xs()
    choices = ["scan", "fused"] + (["kernel"] if KERNELS else [])

    def run(implementation):
        def loss(p, x):
            ys, carry = jaxrnn.rnn(cell, p, x, LENGTHS, implementation=implementation)
            return jnp.sum(ys * ys) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), ys

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, xs)

    (want_grads, want_dxs), want_ys = run("scan")
    for choice in choices:
        (grads, d_xs), ys = run(choice)
        np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(d_xs, want_dxs, rtol=1e-4, atol=1e-5)
        for name in want_grads:
            np.testing.assert_allclose(grads[name], want_grads[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("cell", "kwargs", "implementation", "message"),
    [
        (jaxrnn.GRU(4, reset_after=False), {}, "fused", "has no fused loop"),
        (jaxrnn.LSTM(4), {"remat": True}, "fused", "remat is set"),
        (jaxrnn.LSTM(4), {"unroll": 2}, "kernel", "the kernels have no unroll"),
        (jaxrnn.LSTM(4, dtype=jnp.float64), {}, "kernel", "the kernels compute in float32"),
        (jaxrnn.LSTM(4), {}, "xla", "implementation must be one of"),
    ],
)
def test_choices_that_cannot_run_are_errors(cell, kwargs, implementation, message):
    with jax.enable_x64(cell.dtype == jnp.float64):  # a float64 cell as users would run one
        params = random_params(cell, F)
        with pytest.raises(ValueError, match=message):
            jaxrnn.rnn(cell, params, _xs(), implementation=implementation, **kwargs)


@pytest.mark.skipif(not KERNELS, reason="the CPU kernels are not built")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_kernels_asked_or_chosen_give_the_same_values(dtype):
    """One rule (``jaxrnn.plan.plan``): ``None`` and ``"kernel"`` both run the float32 kernels
    on values rounded to the narrow dtype, bit for bit the same, and not the XLA loop's
    numbers in that dtype."""
    cell = jaxrnn.GRU(4, dtype=dtype)
    params = random_params(cell, F)
    plans = [jaxrnn.plan.plan(cell, jaxrnn.RunOptions(implementation=i)) for i in (None, "kernel")]
    assert plans[0] == plans[1]
    assert plans[0].round_to == jnp.dtype(dtype) and plans[0].loop_dtype == jnp.float32

    def run(implementation):
        def loss(p, x):
            ys, carry = jaxrnn.rnn(cell, p, x, LENGTHS, implementation=implementation)
            return jnp.sum(ys.astype(jnp.float32) ** 2) + jnp.sum(carry), ys

        return jax.grad(loss, argnums=(0, 1), has_aux=True)(params, _xs())

    (grads, d_xs), ys = run(None)
    (k_grads, k_d_xs), k_ys = run("kernel")
    assert ys.dtype == k_ys.dtype == dtype
    np.testing.assert_array_equal(np.asarray(ys, np.float32), np.asarray(k_ys, np.float32))
    np.testing.assert_array_equal(d_xs, k_d_xs)
    for name in grads:
        np.testing.assert_array_equal(grads[name], k_grads[name])
    fused_ys = run("fused")[1]
    assert np.any(np.asarray(fused_ys, np.float32) != np.asarray(ys, np.float32))
    np.testing.assert_allclose(
        np.asarray(fused_ys, np.float32), np.asarray(ys, np.float32), rtol=0.05, atol=0.02
    )


def test_run_options_are_checked_when_made():
    for kwargs, message in [
        ({"unroll": 0}, "unroll must be a positive int"),
        ({"remat": 0}, "remat must be False, True or a positive int"),
        ({"implementation": "xla"}, "implementation must be one of"),
        ({"static": True, "implementation": "scan"}, "static_rnn is its own implementation"),
    ]:
        with pytest.raises(ValueError, match=message):
            jaxrnn.RunOptions(**kwargs)


def test_kernel_request_names_why_kernels_are_off(monkeypatch):
    monkeypatch.setattr(_native, "kernel_status", lambda: (False, "turned off by test"))
    cell = jaxrnn.LSTM(4)
    with pytest.raises(ValueError, match="kernels are turned off by test"):
        jaxrnn.rnn(cell, random_params(cell, F), _xs(), implementation="kernel")


def test_static_rnn_takes_no_implementation():
    cell = jaxrnn.GRU(4)
    with pytest.raises(ValueError, match="static_rnn is its own implementation"):
        jaxrnn.static_rnn(cell, random_params(cell, F), _xs(), implementation="scan")


def test_implementation_passes_through_layers_and_modules():
    cell = jaxrnn.LSTM(3)
    params = (random_params(cell, F, 1), random_params(cell, F, 2))
    with pytest.raises(ValueError, match="has no fused loop"):
        jaxrnn.bidirectional(
            jaxrnn.GRU(3, reset_after=False),
            cell,
            (random_params(jaxrnn.GRU(3, reset_after=False), F), params[1]),
            _xs(),
            implementation="fused",
        )
    stack = jaxrnn.Stack((cell, cell), recurrent_dropout=0.5)
    sp = stack.init(jax.random.key(0), F)
    with pytest.raises(ValueError, match="recurrent dropout is on"):
        jaxrnn.stacked(stack, sp, _xs(), key=jax.random.key(1), implementation="kernel")
    jaxrnn.stacked(stack, sp, _xs(), key=jax.random.key(1), implementation="scan")
    model = Model("gru", 4, 2, implementation="fused")
    mp = model.init(jax.random.key(0), F)
    assert "custom_vjp" in str(jax.make_jaxpr(model.apply)(mp, _xs(), LENGTHS))
    model = Model("gru", 4, 2, implementation="scan")
    assert "custom_vjp" not in str(jax.make_jaxpr(model.apply)(mp, _xs(), LENGTHS))


# --- forward mode (implementation="scan"), in float64 against central differences ---------


def _fd_jvp(f, x, v, eps=1e-6):
    return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


def _functions():
    """Scalar-valued functions of a flat parameter vector, through rnn, bidirectional, stacked."""
    lstm, gru = jaxrnn.LSTM(2), jaxrnn.GRU(2)

    def flat(params):
        leaves, tree = jax.tree.flatten(params)
        sizes = [leaf.size for leaf in leaves]
        vec = jnp.concatenate([leaf.ravel() for leaf in leaves])

        def unflat(v):
            parts = jnp.split(v, np.cumsum(sizes)[:-1])
            return tree.unflatten(
                [p.reshape(leaf.shape) for p, leaf in zip(parts, leaves, strict=True)]
            )

        return vec, unflat

    xs = jnp.asarray(_xs(dtype=np.float64))
    p_rnn = random_params(lstm, F, 1, dtype=jnp.float64)
    p_bi = (p_rnn, random_params(gru, F, 2, dtype=jnp.float64))
    stack = jaxrnn.Stack((gru, lstm))
    p_st = [
        random_params(gru, F, 3, dtype=jnp.float64),
        random_params(lstm, 2, 4, dtype=jnp.float64),
    ]

    def make(run, params):
        vec, unflat = flat(params)
        return vec, lambda v: jnp.sum(jnp.tanh(run(unflat(v))))

    impl = {"implementation": "scan"}
    return {
        "rnn": make(lambda p: jaxrnn.rnn(lstm, p, xs, LENGTHS, **impl)[0], p_rnn),
        "static_rnn": make(lambda p: jaxrnn.static_rnn(lstm, p, xs, LENGTHS)[0], p_rnn),
        "bidirectional": make(
            lambda p: jaxrnn.bidirectional(lstm, gru, p, xs, LENGTHS, **impl)[0], p_bi
        ),
        "stacked": make(lambda p: jaxrnn.stacked(stack, p, xs, LENGTHS, **impl)[0], p_st),
    }


# (reverse through bidirectional's backward direction)
@pytest.mark.parametrize("name", ["rnn", "static_rnn", "bidirectional", "stacked"])
def test_forward_mode_against_finite_differences(name):
    with jax.enable_x64(True):
        vec, f = _functions()[name]
        rng = np.random.default_rng(7)
        v = jnp.asarray(rng.normal(size=vec.shape))
        f_jit = jax.jit(f)
        _, tangent = jax.jit(lambda x, t: jax.jvp(f, (x,), (t,)))(vec, v)
        np.testing.assert_allclose(tangent, _fd_jvp(f_jit, vec, v), rtol=1e-6, atol=1e-8)

        grad = jax.jit(jax.grad(f))
        jac = jax.jit(jax.jacfwd(f))(vec)
        np.testing.assert_allclose(jac, grad(vec), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(jac @ v, _fd_jvp(f_jit, vec, v), rtol=1e-6, atol=1e-8)

        hess = jax.jit(jax.hessian(f))(vec)
        fd_hv = _fd_jvp(grad, vec, v)
        np.testing.assert_allclose(hess @ v, fd_hv, rtol=1e-5, atol=1e-7)
        hvp = jax.jit(lambda x, t: jax.jvp(jax.grad(f), (x,), (t,))[1])(vec, v)  # fwd-over-rev
        np.testing.assert_allclose(hvp, fd_hv, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(hess, hess.T, rtol=1e-10, atol=1e-12)


def test_forward_mode_agrees_with_static_rnn():
    with jax.enable_x64(True):
        fns = _functions()
        vec, f_scan = fns["rnn"]
        _, f_static = fns["static_rnn"]
        v = jnp.asarray(np.random.default_rng(8).normal(size=vec.shape))

        def jvp(f):
            return jax.jit(lambda x, t: jax.jvp(f, (x,), (t,))[1])(vec, v)

        np.testing.assert_allclose(jvp(f_scan), jvp(f_static), rtol=1e-12)
        hessians = [jax.jit(jax.hessian(f))(vec) for f in (f_scan, f_static)]
        np.testing.assert_allclose(*hessians, rtol=1e-10, atol=1e-12)
