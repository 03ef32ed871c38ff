"""The CPU kernels (``csrc/`` through ``jaxrnn._native``): against the NumPy
reference and the XLA loops they replace, at sizes that split the units across threads."""

import ctypes
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import run as np_run
from conftest import random_params

import jaxrnn
from jaxrnn import _native
from jaxrnn.cells import fused
from jaxrnn.cells._loops import BackwardInputs, Loop, LoopInputs

# With two threads: T * B * H * H * gates >= 2**21 and B >= 32, the kernels split the batch's
# rows (ROWS); else, B * H * H * gates >= 2**17 and H >= 32, the units.
CASES = [
    ("lstm", jaxrnn.LSTM(64, forget_bias=1.0), {"forget_bias": 1.0}, 9),
    ("rnn_tanh", jaxrnn.SimpleRNN(64), {"activation": "tanh"}, 33),
    ("rnn_relu", jaxrnn.SimpleRNN(64, activation="relu"), {"activation": "relu"}, 33),
    ("lstm_uneven", jaxrnn.LSTM(40), {}, 64),  # two chunks of 32 and 8 units, rows split
    ("lstm_small", jaxrnn.LSTM(5), {}, 4),  # one thread, units not a multiple of 16
    ("gru", jaxrnn.GRU(64), {}, 11),
    ("gru_uneven", jaxrnn.GRU(40), {}, 30),
    ("gru_small", jaxrnn.GRU(5), {}, 4),
]
T, I = 6, 3  # noqa: E741
ROWS = {"lstm_uneven"}


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request):
    name, cell, hyper, batch = request.param
    kind = name.split("_")[0]
    return cell, kind, {**hyper, "hidden": cell.hidden_size}, batch


def _lengths(batch):
    return np.random.default_rng(1).integers(0, T + 1, batch).astype(np.int32)


def test_chunks_match_the_kernels_rule():
    """``chunk_starts`` (the kept activations' layout) mirrors ``SplitUnits`` in C++."""
    threads = _native._max_threads
    assert _native.chunk_starts(30, 40, 4) == ([0, 32, 40] if threads >= 2 else [0, 40])
    assert _native.chunk_starts(4, 5, 4) == [0, 5]  # too little work for a second thread
    assert _native.chunk_starts(9, 64, 4) == ([0, 32, 64] if threads >= 2 else [0, 64])


def _row_threads(steps, batch, hidden, gates) -> int:
    """How many threads split the batch's rows of such a loop (1: the threads split units)."""
    lib = ctypes.CDLL(importlib.util.find_spec("jaxrnn._recurrence").origin)
    lib.jaxrnn_row_threads.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int]
    return lib.jaxrnn_row_threads(steps, batch, hidden, gates)


@pytest.mark.skipif(not _native.kernel_status()[0], reason="kernels not built")
@pytest.mark.skipif(_native.max_threads() < 2, reason="one thread")
def test_the_cases_cover_both_ways_of_splitting_a_loop():
    """By the batch's rows (ROWS, and test_resets_loops' LSTM) and by units (the others)."""
    for name, cell, _, batch in CASES:
        want = 2 if name in ROWS else 1
        assert _row_threads(T, batch, cell.hidden_size, cell.gates) == want, name
    assert _row_threads(7, 32, 64, 4) == 2


def test_the_kernels_are_built_and_used():
    """CI builds them (setup.py); a silent fallback to the XLA loops would hide a broken build."""
    assert os.environ.get(_native.ENV_NATIVE, "1") != "0"
    assert _native.available(jnp.zeros(1, jnp.float32))
    assert not _native.available(np.zeros(1, np.float64))
    cell = jaxrnn.LSTM(8)
    params = cell.init(jax.random.key(0), I)
    hlo = jax.jit(lambda p, x: jaxrnn.rnn(cell, p, x)[0]).lower(params, jnp.zeros((2, T, I)))
    assert "jaxrnn_lstm_forward" in hlo.as_text()


@pytest.mark.parametrize("reverse", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("masked", [False, True], ids=["full", "masked"])
@pytest.mark.parametrize("time_major", [False, True], ids=["bf", "tm"])
def test_matches_numpy(case, reverse, masked, time_major):
    cell, kind, hyper, batch = case
    params = random_params(cell, I)
    xs = np.random.default_rng(0).normal(size=(batch, T, I)).astype(np.float32)
    lengths = _lengths(batch) if masked else None
    ys, carry = jax.jit(jaxrnn.rnn, static_argnums=0, static_argnames=("reverse", "time_major"))(
        cell,
        params,
        np.swapaxes(xs, 0, 1) if time_major else xs,
        lengths,
        reverse=reverse,
        time_major=time_major,
    )
    ref_ys, ref_carry = np_run(kind, params, xs, lengths, reverse=reverse, **hyper)
    ys = np.asarray(np.swapaxes(ys, 0, 1) if time_major else ys)
    np.testing.assert_allclose(ys, ref_ys, rtol=2e-5, atol=2e-6)
    if masked:  # exactly zero past each length, whichever thread computed the unit
        assert (ys[np.arange(T)[None, :] >= lengths[:, None]] == 0).all()
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(ref_carry), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def _loops(cell, batch, time_major, reverse, valid):
    """The kernel and the XLA loop (its twin, generated from the cell) of ``cell``'s forward
    and backward passes, same arguments."""
    rng = np.random.default_rng(2)
    hidden, gates = cell.hidden_size, cell.gates
    w_h = jnp.asarray(rng.normal(0, hidden**-0.5, (hidden, gates * hidden)), jnp.float32)
    lead = (T, batch) if time_major else (batch, T)
    xw = jnp.asarray(rng.normal(size=(*lead, gates * hidden)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(gates * hidden,)), jnp.float32)
    xs = jnp.asarray(rng.normal(size=(*lead, I)), jnp.float32)
    state = [jnp.asarray(rng.normal(size=(batch, hidden)), jnp.float32) for _ in range(2)]
    d_ys = jnp.asarray(rng.normal(size=(T, batch, hidden)), jnp.float32)
    inner = {}
    if isinstance(cell, jaxrnn.GRU):
        inner = {"b_h": jnp.asarray(rng.normal(size=(3 * hidden,)), jnp.float32)}
    if isinstance(cell, jaxrnn.LSTM):
        carry0, d_carry, h0 = tuple(state), tuple(state), state[1]
    else:
        carry0, d_carry, h0 = state[0], state[1], state[0]
    inputs = LoopInputs(w_h, xw, b, inner, valid, None, carry0)
    forward_xla, backward_xla = fused.kernel_twins(cell, Loop(reverse, 1, time_major))
    kernels, options = cell.kernels(), {"reverse": reverse, "time_major": time_major}

    def backward_inputs(fw):
        return BackwardInputs(fw[2], valid, d_ys, d_carry, fw[0], h0, xs, None)

    return (
        lambda: kernels.forward(cell, inputs, keep=True, **options),
        lambda: forward_xla(inputs),
        lambda fw: kernels.backward(cell, w_h, inner, backward_inputs(fw), **options),
        lambda fw: backward_xla(w_h, inner, backward_inputs(fw)),
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["fw", "bw"])
@pytest.mark.parametrize("time_major", [False, True], ids=["bf", "tm"])
def test_kernels_match_the_xla_loops(case, reverse, time_major):
    """Every output of both passes, including what the forward pass keeps for the backward
    one and the weights' gradients, with a mask that has empty, partial and full sequences."""
    cell, _, _, batch = case
    lengths = _lengths(batch)
    valid = jnp.arange(T)[:, None] < jnp.asarray(lengths)[None, :]
    forward, forward_xla, backward, backward_xla = _loops(cell, batch, time_major, reverse, valid)
    fw, fw_xla = jax.jit(forward)(), jax.jit(forward_xla)()
    # (the kept activations in the kernels' layout: pack_kept and unpack_kept invert each other)
    for got, want in zip(jax.tree.leaves(fw), jax.tree.leaves(fw_xla), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    bw, bw_xla = jax.jit(backward)(fw_xla), jax.jit(backward_xla)(fw_xla)
    for got, want in zip(jax.tree.leaves(bw), jax.tree.leaves(bw_xla), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _loss(driver, cell, lengths):
    def loss(params, xs):
        ys, carry = driver(cell, params, xs, lengths)
        weights = jnp.linspace(-1.0, 1.0, ys.size).reshape(ys.shape)
        return jnp.sum(ys * weights) + sum(jnp.sum(c**2) for c in jax.tree.leaves(carry))

    return loss


def test_gradients_match_the_autodiff_path(case):
    """The kernels' backward pass against autodiff of the Python-unrolled ``static_rnn``."""
    cell, _, _, batch = case
    params = random_params(cell, I)
    xs = jnp.asarray(np.random.default_rng(3).normal(size=(batch, T, I)), jnp.float32)
    lengths = jnp.asarray(_lengths(batch))
    got = jax.jit(jax.grad(_loss(jaxrnn.rnn, cell, lengths), argnums=(0, 1)))(params, xs)
    want = jax.grad(_loss(jaxrnn.static_rnn, cell, lengths), argnums=(0, 1))(params, xs)
    padded = np.arange(T)[None, :] >= np.asarray(lengths)[:, None]
    assert (np.asarray(got[1])[padded] == 0).all()  # padded inputs: exactly zero gradient
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_second_order_gradients_use_the_xla_derivatives():
    """The kernels have no derivatives of their own: reverse over reverse still works."""
    cell = jaxrnn.LSTM(32)
    params = random_params(cell, I)
    xs = jnp.asarray(np.random.default_rng(4).normal(size=(16, T, I)), jnp.float32)

    def hvp(driver):
        loss = _loss(driver, cell, None)
        return jax.grad(lambda p: jnp.vdot(jax.grad(loss)(p, xs)["w_h"], params["w_h"]))

    for g, w in zip(
        jax.tree.leaves(jax.jit(hvp(jaxrnn.rnn))(params)),
        jax.tree.leaves(hvp(jaxrnn.static_rnn)(params)),
        strict=True,
    ):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)


def test_vmap_and_repeat_runs():
    """``vmap`` over the kernels (one call per example) and bitwise-equal repeated runs."""
    cell = jaxrnn.LSTM(64)
    params = random_params(cell, I)
    xs = jnp.asarray(np.random.default_rng(5).normal(size=(3, 9, T, I)), jnp.float32)
    run = jax.jit(jax.vmap(lambda x: jaxrnn.rnn(cell, params, x)[0]))
    ys = run(xs)
    for k in range(3):
        np.testing.assert_allclose(ys[k], jaxrnn.rnn(cell, params, xs[k])[0], rtol=1e-6)
    np.testing.assert_array_equal(ys, run(xs))


@pytest.mark.parametrize(
    "cell, target",
    [
        (jaxrnn.LSTM(64), "lstm"),
        (jaxrnn.GRU(64), "gru"),
        (jaxrnn.SimpleRNN(64), "simple"),
        (jaxrnn.SimpleRNN(64, activation="relu"), "simple"),
    ],
    ids=["lstm", "gru", "rnn_tanh", "rnn_relu"],
)
def test_non_finite_values_propagate(cell, target):
    """A NaN input must reach the outputs and the weight gradients, through both kernels, at a
    size that splits the units over threads (the training loop's non-finite guard relies on
    it); the other sequences stay finite."""
    params = random_params(cell, I)
    xs = np.zeros((11, T, I), np.float32)
    xs[1, 2, 0] = np.nan
    run = jax.jit(lambda p, x: jaxrnn.rnn(cell, p, x)[0])
    assert f"jaxrnn_{target}_forward" in run.lower(params, xs).as_text()
    ys = np.asarray(run(params, xs))
    assert np.isnan(ys[1, 2:]).any(axis=-1).all()
    assert np.isfinite(np.delete(ys, 1, axis=0)).all()
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(run(p, x)), argnums=(0, 1)))
    assert f"jaxrnn_{target}_backward" in grad.lower(params, xs).as_text()
    d_params, d_xs = grad(params, xs)
    assert np.isnan(np.asarray(d_params["w_h"])).any()
    assert np.isfinite(np.delete(np.asarray(d_xs), 1, axis=0)).all()


def test_an_explicit_unroll_runs_lax_scan():
    cell = jaxrnn.LSTM(8)
    params = cell.init(jax.random.key(0), I)
    xs = jnp.zeros((2, T, I))
    for unroll, native in ((1, True), (False, True), (2, False), (True, False)):
        hlo = jax.jit(lambda p, x, u=unroll: jaxrnn.rnn(cell, p, x, unroll=u)[0]).lower(params, xs)
        assert ("jaxrnn_lstm_forward" in hlo.as_text()) == native, unroll


@pytest.mark.parametrize("cell", [jaxrnn.LSTM(8), jaxrnn.GRU(8)], ids=["lstm", "gru"])
def test_inference_skips_what_the_backward_pass_keeps(cell):
    """Undifferentiated, the forward kernel returns an empty ``kept`` (and writes none); under
    ``grad`` it keeps its ``[T, B, K, H]`` activations."""
    params = cell.init(jax.random.key(0), I)
    xs = jnp.zeros((2, T, I))
    kept = f"f32[{T * 2 * (5 if isinstance(cell, jaxrnn.LSTM) else 4) * 8}]"
    target = "jaxrnn_lstm_forward" if isinstance(cell, jaxrnn.LSTM) else "jaxrnn_gru_forward"
    infer = jax.jit(lambda p, x: jaxrnn.rnn(cell, p, x)[0]).lower(params, xs).as_text("hlo")
    train = jax.jit(jax.grad(lambda p, x: jaxrnn.rnn(cell, p, x)[0].sum())).lower(params, xs)
    forward = [line for line in infer.splitlines() if target in line]
    assert forward and all("f32[0]" in line and kept not in line for line in forward)
    assert kept in train.as_text("hlo")


VERSION_CODE = """
import ctypes, importlib.util, json
import jax, jax.numpy as jnp, numpy as np
import jaxrnn
from jaxrnn import _native
rng = np.random.default_rng(0)
errors = {}
# units split over two threads with a partial tile (40: chunks of 32 and 8), one thread and
# units not a multiple of a vector (5), rows not a multiple of a tile's (30, 13)
for name, cell, batch in [("lstm", jaxrnn.LSTM(40), 30), ("gru", jaxrnn.GRU(5), 13),
                          ("rnn", jaxrnn.SimpleRNN(70), 30), ("mingru", jaxrnn.MinGRU(40), 30),
                          ("minlstm", jaxrnn.MinLSTM(5), 13), ("rglru", jaxrnn.RGLRU(40), 30)]:
    params = cell.init(jax.random.key(0), 3)
    xs = jnp.asarray(rng.normal(size=(batch, 6, 3)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, 7, batch), jnp.int32)
    def loss(p, xs, how):
        ys, h = jaxrnn.rnn(cell, p, xs, lengths=lengths, implementation=how)
        return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(jnp.sin(c)) for c in jax.tree.leaves(h))
    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    got, want = f(params, xs, None), f(params, xs, "scan")
    # the largest difference of each output, relative to its largest magnitude (or 1)
    errors[name] = max(float(jnp.max(jnp.abs(a - b)) / max(1.0, float(jnp.max(jnp.abs(b)))))
                       for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
lib = ctypes.CDLL(importlib.util.find_spec("jaxrnn._recurrence").origin)
print(json.dumps({"loaded": _native.kernel_status()[0], "level": lib.jaxrnn_vector_level(),
                  "errors": errors}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not _native.kernel_status()[0], reason="kernels not built")
@pytest.mark.parametrize("level", [3, 1], ids=["avx2", "baseline"])
def test_every_vector_version_matches_scan(level):
    """The kernels' AVX2 and baseline versions (JAXRNN_MAX_VECTOR_LEVEL caps the version a
    machine runs), values and gradients against the scan path: an AVX-512 machine runs them
    too."""
    env = {**os.environ, "JAXRNN_MAX_VECTOR_LEVEL": str(level)}
    out = subprocess.run(
        [sys.executable, "-c", VERSION_CODE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["loaded"]
    assert result["level"] == min(level, _native_level())
    assert all(err < 1e-5 for err in result["errors"].values()), result["errors"]


def _native_level() -> int:
    spec = importlib.util.find_spec("jaxrnn._recurrence")
    assert spec is not None and spec.origin is not None
    return ctypes.CDLL(spec.origin).jaxrnn_vector_level()
