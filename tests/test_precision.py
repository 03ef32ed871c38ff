"""Mixed precision: bfloat16 and float16 computations against the float64 NumPy reference.

Tolerances are stated in units of the computation dtype's machine epsilon ``eps``
(``2**-7`` for bfloat16, ``2**-10`` for float16): every matmul operand is rounded to the
dtype (a relative error of ``eps / 2`` each), and over the few steps here the errors of the
outputs and carries stay below ``TOL_EPS * eps`` (measured: at most ``1.7 * eps`` over the
cases of ``test_rnn_matches_float64_reference``, in both dtypes).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from _reference import run as np_run
from conftest import CELL_CASES, random_params

import jaxrnn

B, T, F = 4, 6, 3
LENGTHS = np.array([6, 0, 2, 4], np.int32)  # 0 and T included
NARROW = [jnp.bfloat16, jnp.float16]
IMPLEMENTATIONS = [None, "fused", "scan"]
TOL_EPS = 8


def _eps(dtype):
    return float(jnp.finfo(dtype).eps)


def _xs(seed=0, shape=(B, T, F)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _assert_close(got, want, dtype):
    tol = TOL_EPS * _eps(dtype)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


def _cases():
    for name, cell, kind, hyper in CELL_CASES:
        for dtype in NARROW:
            yield pytest.param(cell, kind, hyper, dtype, id=f"{name}-{jnp.dtype(dtype).name}")


def _with_implementations():
    """Every case with every implementation it has ('fused' for a cell without a fused loop
    is an error, tested elsewhere)."""
    for case in _cases():
        cell = case.values[0]
        for implementation in IMPLEMENTATIONS:
            if implementation != "fused" or jaxrnn.drivers.has_fused_path(cell):
                yield pytest.param(*case.values, implementation, id=f"{case.id}-{implementation}")


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    ("cell", "kind", "hyper", "dtype", "implementation"), list(_with_implementations())
)
def test_rnn_matches_float64_reference(cell, kind, hyper, dtype, reverse, implementation):
    cell = dataclasses.replace(cell, dtype=dtype)
    params, xs = random_params(cell, F), _xs()
    ys, carry = jax.jit(
        lambda p, x: jaxrnn.rnn(cell, p, x, LENGTHS, reverse=reverse, implementation=implementation)
    )(params, xs)
    ref_ys, ref_carry = np_run(kind, params, xs, LENGTHS, reverse=reverse, hidden=5, **hyper)
    assert ys.dtype == dtype
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry))
    _assert_close(ys, ref_ys, dtype)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
        _assert_close(got, want, dtype)
    for b, n in enumerate(LENGTHS):  # exact zeros past each length
        assert not np.any(np.asarray(ys[b, n:], np.float32))
    # Length 0: the final carry is the initial one, exactly.
    assert all(not np.any(np.asarray(leaf[1])) for leaf in jax.tree.leaves(carry))
    # The computation really is narrower: float32 gives other numbers.
    ys32, _ = jaxrnn.rnn(dataclasses.replace(cell, dtype=jnp.float32), params, xs, LENGTHS)
    assert np.any(np.asarray(ys, np.float32) != np.asarray(ys32))


@pytest.mark.parametrize("dtype", NARROW)
def test_initial_carry_and_length_zero(dtype):
    cell = jaxrnn.LSTM(5, dtype=dtype)
    params, xs = random_params(cell, F), _xs()
    rng = np.random.default_rng(3)
    carry0 = tuple(rng.normal(size=(B, 5)).astype(np.float32) for _ in range(2))
    ys, (c, h) = jaxrnn.rnn(cell, params, xs, LENGTHS, initial_carry=carry0)
    ref_ys, (ref_c, ref_h) = np_run(
        "lstm", params, xs, LENGTHS, carry0=list(zip(*carry0, strict=True)), hidden=5
    )
    _assert_close(ys, ref_ys, dtype)
    _assert_close(c, ref_c, dtype)
    # Sequence 1 has length 0: its final carry is the float32 initial carry, bit for bit.
    np.testing.assert_array_equal(np.asarray(c[1]), carry0[0][1])
    np.testing.assert_array_equal(np.asarray(h[1]), carry0[1][1])


@pytest.mark.parametrize("dtype", NARROW)
def test_bidirectional_and_stacked(dtype):
    fw, bw = jaxrnn.LSTM(4, dtype=dtype), jaxrnn.GRU(3, dtype=dtype)
    params = (random_params(fw, F, 1), random_params(bw, F, 2))
    xs = _xs()
    ys, (c_fw, c_bw) = jaxrnn.bidirectional(fw, bw, params, xs, LENGTHS)
    ref_fw, ref_cfw = np_run("lstm", params[0], xs, LENGTHS, hidden=4)
    ref_bw, ref_cbw = np_run("gru", params[1], xs, LENGTHS, reverse=True, hidden=3)
    assert ys.dtype == dtype
    _assert_close(ys, np.concatenate([ref_fw, ref_bw], -1), dtype)
    _assert_close(c_fw[0], ref_cfw[0], dtype)
    _assert_close(c_bw, ref_cbw, dtype)
    assert c_fw[0].dtype == c_bw.dtype == jnp.float32

    # A stack feeds its own dtype between layers: the second layer reads the first's
    # outputs as rounded to ``dtype``.
    l1, l2 = jaxrnn.GRU(4, dtype=dtype), jaxrnn.SimpleRNN(3, dtype=dtype)
    stack = jaxrnn.Stack((l1, l2))
    sp = [random_params(l1, F, 3), random_params(l2, 4, 4)]
    ys, carries = jaxrnn.stacked(stack, sp, xs, LENGTHS)
    mid, _ = np_run("gru", sp[0], xs, LENGTHS, hidden=4)
    mid = np.asarray(mid.astype(jnp.dtype(dtype)), np.float64)
    ref, ref_carry = np_run("rnn", sp[1], mid, LENGTHS, hidden=3)
    assert ys.dtype == dtype and carries[1].dtype == jnp.float32
    _assert_close(ys, ref, dtype)
    _assert_close(carries[1], ref_carry, dtype)


@pytest.mark.parametrize(("cell", "kind", "hyper", "dtype"), list(_cases()))
def test_every_cell_bidirectional_under_vmap(cell, kind, hyper, dtype):
    """Each cell as both directions of a bidirectional layer, one sequence per vmapped call."""
    cell = dataclasses.replace(cell, dtype=dtype)
    params = (random_params(cell, F, 1), random_params(cell, F, 2))
    xs = _xs()

    def one(x, n):
        ys, (c_fw, c_bw) = jaxrnn.bidirectional(cell, cell, params, x[None], n[None])
        return ys[0], jax.tree.map(lambda a: a[0], (c_fw, c_bw))

    ys, (c_fw, c_bw) = jax.jit(jax.vmap(one))(xs, LENGTHS)
    ref_fw, ref_cfw = np_run(kind, params[0], xs, LENGTHS, hidden=5, **hyper)
    ref_bw, ref_cbw = np_run(kind, params[1], xs, LENGTHS, reverse=True, hidden=5, **hyper)
    assert ys.dtype == dtype
    _assert_close(ys, np.concatenate([ref_fw, ref_bw], -1), dtype)
    for got, want in zip(
        jax.tree.leaves((c_fw, c_bw)), jax.tree.leaves((ref_cfw, ref_cbw)), strict=False
    ):
        assert got.dtype == jnp.float32
        _assert_close(got, want, dtype)


_NP_GRADS: dict = {}


def _np_grads(case, kind, params, xs, lengths, g, hyper):
    """Central differences of ``sum(ys * g)`` in float64 NumPy, one parameter entry at a time
    (the same for every dtype and implementation of ``case``: computed once)."""
    if case in _NP_GRADS:
        return _NP_GRADS[case]
    out = _NP_GRADS[case] = {}
    for name, value in params.items():
        value = np.asarray(value, np.float64)
        grad = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            vals = []
            for sign in (1, -1):
                shifted = dict(params, **{name: value.copy()})
                shifted[name][idx] += sign * 1e-5
                ys, _ = np_run(kind, shifted, xs, lengths, **hyper)
                vals.append(np.sum(ys * g))
            grad[idx] = (vals[0] - vals[1]) / 2e-5
        out[name] = grad
    return out


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", NARROW)
@pytest.mark.parametrize("case", ["lstm", "gru", "rnn_tanh"])
def test_gradients_in_param_dtype(case, dtype, implementation):
    _, cell, kind, hyper = next(c for c in CELL_CASES if c[0] == case)
    cell = dataclasses.replace(cell, dtype=dtype)
    params, xs = random_params(cell, F), _xs()
    g = np.random.default_rng(5).normal(size=(B, T, cell.hidden_size))

    def loss(p, x):
        ys, _ = jaxrnn.rnn(cell, p, x, LENGTHS, implementation=implementation)
        return jnp.sum(ys.astype(jnp.float32) * g)

    grads, d_xs = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, xs)
    want = _np_grads(case, kind, params, xs, LENGTHS, g, {"hidden": 5, **hyper})
    for name, value in grads.items():
        assert value.dtype == jnp.float32, name
        scale = np.abs(want[name]).max()
        np.testing.assert_allclose(
            value, want[name], atol=TOL_EPS * _eps(dtype) * scale, err_msg=name
        )
    assert d_xs.dtype == jnp.float32  # the inputs' own dtype
    for b, n in enumerate(LENGTHS):  # zero gradient on padding
        assert not np.any(np.asarray(d_xs[b, n:]))


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bfloat16_params_get_bfloat16_gradients(implementation):
    cell = jaxrnn.LSTM(5, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    params = cell.init(jax.random.key(0), F)
    assert all(v.dtype == jnp.bfloat16 for v in params.values())
    xs = _xs().astype(jnp.bfloat16)
    grads = jax.grad(lambda p: jnp.sum(jaxrnn.rnn(cell, p, xs, implementation=implementation)[0]))(
        params
    )
    assert all(v.dtype == jnp.bfloat16 for v in grads.values())
    assert all(np.all(np.isfinite(np.asarray(v, np.float32))) for v in grads.values())


def test_dtype_none_promotes_inputs_and_params():
    cell = jaxrnn.GRU(5)
    p32 = random_params(cell, F)
    p16 = {k: v.astype(jnp.bfloat16) for k, v in p32.items()}
    x32 = _xs()
    assert jaxrnn.rnn(cell, p16, x32.astype(jnp.bfloat16))[0].dtype == jnp.bfloat16
    assert jaxrnn.rnn(cell, p16, x32)[0].dtype == jnp.float32  # promoted, as in flax.linen
    assert jaxrnn.rnn(cell, p32, x32.astype(jnp.bfloat16))[0].dtype == jnp.float32


def test_carry_stays_float32_from_step_to_step():
    """An LSTM whose cell state grows by 7e-4 per step: in a bfloat16 state the increments
    vanish once ``c`` passes 0.25 (half a bfloat16 ulp there is 9.8e-4); in float32 they add
    up to the NumPy value."""
    h, steps = 2, 1000
    cell = jaxrnn.LSTM(h, forget_bias=30.0, dtype=jnp.bfloat16)
    b = np.zeros(4 * h, np.float32)
    b[:h] = 30.0  # input gate open
    b[2 * h : 3 * h] = np.arctanh(7e-4)  # candidate 7e-4
    b[3 * h :] = -30.0  # output gate shut: h stays 0, so the recurrent weights play no part
    params = {
        "w_i": jnp.zeros((1, 4 * h)),
        "w_h": jnp.zeros((h, 4 * h)),
        "b": jnp.asarray(b),
    }
    xs = np.zeros((1, steps, 1), np.float32)
    for implementation in IMPLEMENTATIONS:
        _, (c, _) = jaxrnn.rnn(cell, params, xs, implementation=implementation)
        assert c.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(c), 0.7, rtol=1e-3)
    c16 = jnp.zeros((), jnp.bfloat16)  # the same sum kept in bfloat16 stalls
    for _ in range(steps):
        c16 = c16 + jnp.bfloat16(7e-4)
    assert float(c16) < 0.3


@pytest.mark.slow
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_weight_gradient_accumulates_in_float32(implementation):
    """10^5 rows (batch 100 x 1000 steps): the weight and bias gradients of a bfloat16
    computation are sums of 10^5 positive terms. Accumulated in float32 they agree with the
    float64 NumPy sum to well under eps; summed in bfloat16 the same terms stall (each is far
    below half an ulp of the running sum) and the sum is off by more than half."""
    batch, steps, features, hidden = 100, 1000, 4, 3
    cell = jaxrnn.SimpleRNN(hidden, dtype=jnp.bfloat16)
    rng = np.random.default_rng(0)
    w_i = rng.uniform(0.0, 0.3, (features, hidden)).astype(np.float32)
    # No recurrence (w_h = 0), so that each step's term is known in closed form below.
    params = {"w_i": jnp.asarray(w_i), "w_h": jnp.zeros((hidden, hidden)), "b": jnp.zeros(hidden)}
    xs = rng.uniform(0.0, 1.0, (batch, steps, features)).astype(np.float32)
    g = rng.uniform(0.5, 1.0, (batch, steps, hidden)).astype(np.float32)

    def loss(p):
        ys, _ = jaxrnn.rnn(cell, p, xs, implementation=implementation)
        return jnp.sum(ys.astype(jnp.float32) * g)

    grads = jax.jit(jax.grad(loss))(params)

    bf16 = ml_dtypes.bfloat16
    x = xs.astype(bf16).astype(np.float64).reshape(-1, features)
    w = w_i.astype(bf16).astype(np.float64)
    y = np.tanh(x @ w)
    d_z = g.reshape(-1, hidden) * (1.0 - y * y)  # per-row terms, all positive
    want_w_i, want_b = x.T @ d_z, d_z.sum(0)
    eps = _eps(jnp.bfloat16)
    for got, want in ((grads["w_i"], want_w_i), (grads["b"], want_b)):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=eps / 4)
    stalled = np.zeros(hidden, bf16)
    for row in d_z.astype(bf16):
        stalled = (stalled + row).astype(bf16)
    assert np.all(np.abs(stalled.astype(np.float64) - want_b) > 0.5 * want_b)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_every_floating_dtype_is_accepted(dtype):
    cell = jaxrnn.SimpleRNN(3, dtype=dtype, param_dtype=dtype)
    params = cell.init(jax.random.key(0), F)
    assert params["w_i"].dtype == jnp.dtype(dtype)
    ys, h = jaxrnn.rnn(cell, params, _xs().astype(dtype))
    assert ys.dtype == jnp.dtype(dtype) and h.dtype == jnp.float32


def test_float64_with_x64():
    with jax.enable_x64(True):
        cell = jaxrnn.LSTM(5, dtype=jnp.float64, param_dtype=jnp.float64)
        params = random_params(cell, F, dtype=jnp.float64)
        ys, (c, _) = jaxrnn.rnn(cell, params, _xs().astype(np.float64), LENGTHS)
        ref, (ref_c, _) = np_run("lstm", params, _xs(), LENGTHS, hidden=5)
        assert ys.dtype == c.dtype == jnp.float64
        np.testing.assert_allclose(ys, ref, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(c, ref_c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: jaxrnn.LSTM(4, dtype=jnp.int32), "dtype must be a floating dtype"),
        (lambda: jaxrnn.GRU(4, param_dtype="int8"), "param_dtype must be a floating dtype"),
        (lambda: jaxrnn.SimpleRNN(4, dtype="float17"), "dtype must be a floating dtype"),
    ],
)
def test_bad_dtypes_are_errors(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_integer_params_are_an_error():
    cell = jaxrnn.SimpleRNN(3)
    params = {k: v.astype(jnp.int32) for k, v in cell.init(jax.random.key(0), F).items()}
    with pytest.raises(TypeError, match=r"params\['w_i'\] must be a floating-point array"):
        jaxrnn.rnn(cell, params, _xs())


def test_nnx_modules_and_model_carry_the_policy():
    from flax import nnx

    from jaxrnn import nn
    from jaxrnn.models import Model

    xs = _xs()
    cell = jaxrnn.LSTM(4)
    layer = nn.RNN(cell, F, rngs=nnx.Rngs(0), dtype=jnp.bfloat16, return_carry=True)
    ys, (c, _) = layer(xs, LENGTHS)
    assert layer.cell.dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in layer.params().values())
    assert ys.dtype == jnp.bfloat16 and c.dtype == jnp.float32
    want, _ = jaxrnn.rnn(dataclasses.replace(cell, dtype=jnp.bfloat16), layer.params(), xs, LENGTHS)
    np.testing.assert_array_equal(np.asarray(ys, np.float32), np.asarray(want, np.float32))

    bi = nn.Bidirectional(cell, cell, F, rngs=nnx.Rngs(1), dtype=jnp.float16)
    assert bi(xs, LENGTHS).dtype == jnp.float16
    stack = jaxrnn.Stack((jaxrnn.GRU(3), jaxrnn.Bidirectional(cell, cell)))
    st = nn.Stacked(stack, F, rngs=nnx.Rngs(2), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert st(xs, LENGTHS).dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(st.params())} == {jnp.dtype(jnp.bfloat16)}

    model = Model("gru", 4, 3, num_layers=2, dtype="bfloat16")
    params = model.init(jax.random.key(0), F)
    assert {v.dtype for v in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    logits = model.apply(params, xs, LENGTHS)
    assert logits.dtype == jnp.float32
    grads = jax.grad(lambda p: jnp.sum(model.apply(p, xs, LENGTHS) ** 2))(params)
    assert {v.dtype for v in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    f32 = Model("gru", 4, 3, num_layers=2).apply(params, xs, LENGTHS)
    np.testing.assert_allclose(logits, f32, atol=TOL_EPS * _eps(jnp.bfloat16) * 4)
    assert np.any(np.asarray(logits) != np.asarray(f32))


def test_interop_keeps_the_dtype_it_is_given():
    cell = jaxrnn.GRU(3)
    params = {
        k: np.asarray(v).astype(ml_dtypes.bfloat16) for k, v in random_params(cell, F).items()
    }
    torch_sd = jaxrnn.interop.to_torch(cell, params)
    assert {v.dtype for v in torch_sd.values()} == {np.dtype(ml_dtypes.bfloat16)}
    back = jaxrnn.interop.from_torch(cell, torch_sd)
    for name, value in params.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(back[name]), value)
    keras = jaxrnn.interop.to_keras(cell, params)
    assert all(w.dtype == ml_dtypes.bfloat16 for w in keras)


@pytest.mark.parametrize(("cell", "kind", "hyper", "dtype"), list(_cases()))
def test_every_cell_stacked(cell, kind, hyper, dtype):
    """Two layers of each cell: the second reads the first's outputs rounded to ``dtype``."""
    cell = dataclasses.replace(cell, dtype=dtype)
    stack = jaxrnn.Stack((cell, cell))
    params = [random_params(cell, F, 1), random_params(cell, 5, 2)]
    xs = _xs()
    ys, carries = jax.jit(lambda p, x: jaxrnn.stacked(stack, p, x, LENGTHS))(params, xs)
    mid, _ = np_run(kind, params[0], xs, LENGTHS, hidden=5, **hyper)
    mid = np.asarray(mid.astype(jnp.dtype(dtype)), np.float64)
    ref, ref_carry = np_run(kind, params[1], mid, LENGTHS, hidden=5, **hyper)
    assert ys.dtype == dtype
    _assert_close(ys, ref, dtype)
    for got, want in zip(jax.tree.leaves(carries[1]), jax.tree.leaves(ref_carry), strict=True):
        assert got.dtype == jnp.float32
        _assert_close(got, want, dtype)
