"""The LSTM's and GRU's variants against NumPy references written from their papers and APIs.

* LSTMP: Sak, Senior & Beaufays 2014, as PyTorch ``nn.LSTM(proj_size=P)`` documents it:
  ``h_t = W_hr (o_t * tanh(c_t))``.
* Peepholes and clipping: TF1 ``tf.compat.v1.nn.rnn_cell.LSTMCell(use_peepholes=True,
  cell_clip=..., num_proj=..., proj_clip=...)``: ``i`` and ``f`` see ``c_{t-1}``, the cell
  state is clipped, ``o`` sees the clipped ``c_t``, the projection is clipped.
* Layer normalization: Ba, Kiros & Hinton 2016, eqs. 20-22 (LSTM); the GRU normalizes its
  input and recurrent pre-activations the same way.

Every reference loops per sequence and per gate (its own weight slice), in float64.
"""

import dataclasses
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.drivers import drive
from jaxrnn.options import RunOptions

B, T, F = 4, 6, 3
LENGTHS = np.array([6, 0, 2, 4], np.int32)
H, P = 5, 3

CASES = [
    ("lstmp", jaxrnn.LSTM(H, proj_size=P)),
    ("lstmp_clip", jaxrnn.LSTM(H, proj_size=P, proj_clip=0.25, cell_clip=0.5)),
    ("peepholes", jaxrnn.LSTM(H, forget_bias=1.0, peepholes=True)),
    ("peepholes_clip", jaxrnn.LSTM(H, peepholes=True, cell_clip=0.4)),
    ("tf1_all", jaxrnn.LSTM(H, peepholes=True, cell_clip=0.5, proj_size=P, proj_clip=0.3)),
    ("ln_lstm", jaxrnn.LSTM(H, layer_norm=True)),
    ("ln_lstmp_peepholes", jaxrnn.LSTM(H, layer_norm=True, proj_size=P, peepholes=True)),
    ("ln_gru", jaxrnn.GRU(H, layer_norm=True)),
    ("ln_gru_cho", jaxrnn.GRU(H, reset_after=False, layer_norm=True)),
]
IDS = [c[0] for c in CASES]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ln(a, gain, shift=0.0, eps=1e-5):
    """Ba et al.'s layer normalization of the vector ``a`` (mean and variance of its units)."""
    mu = a.mean()
    sigma = np.sqrt(((a - mu) ** 2).mean() + eps)
    return gain * (a - mu) / sigma + shift


def lstm_step(cell, p, carry, x, keep=1.0):
    """One TF1/PyTorch/Ba et al. LSTM step for one sequence; ``keep`` multiplies ``h`` where
    it enters ``W_h`` (recurrent dropout)."""
    c, h = carry
    hm = h * keep
    size = cell.hidden_size

    def block(w, k):
        return w[:, k * size : (k + 1) * size]

    def pre(k):
        """Gate ``k``'s pre-activation: (LN of) the input and recurrent products, plus bias."""
        if cell.layer_norm:  # normalized over all 4H pre-activations of each product
            xw = ln(x @ p["w_i"], p["g_i"])[k * size : (k + 1) * size]
            hw = ln(hm @ p["w_h"], p["g_h"])[k * size : (k + 1) * size]
        else:
            xw, hw = x @ block(p["w_i"], k), hm @ block(p["w_h"], k)
        b = p["b"][k * size : (k + 1) * size]
        return xw + hw + b + (p["b_h"][k * size : (k + 1) * size] if "b_h" in p else 0.0)

    peep = cell.peepholes
    i = sigmoid(pre(0) + (p["w_ci"] * c if peep else 0.0))
    f = sigmoid(pre(1) + cell.forget_bias + (p["w_cf"] * c if peep else 0.0))
    g = np.tanh(pre(2))
    c_new = f * c + i * g
    if cell.cell_clip is not None:
        c_new = np.clip(c_new, -cell.cell_clip, cell.cell_clip)
    o = sigmoid(pre(3) + (p["w_co"] * c_new if peep else 0.0))
    m = o * np.tanh(ln(c_new, p["g_c"], p["b_c"]) if cell.layer_norm else c_new)
    if cell.proj_size:
        m = m @ p["w_hr"]
        if cell.proj_clip is not None:
            m = np.clip(m, -cell.proj_clip, cell.proj_clip)
    return (c_new, m), m


def gru_step(cell, p, h, x, keep=1.0):
    """One layer-normalized GRU step for one sequence (r, z, n gate order)."""
    size, hm = cell.hidden_size, h * keep
    xi = ln(x @ p["w_i"], p["g_i"]) + p["b"]
    if cell.reset_after:
        hh = ln(hm @ p["w_h"], p["g_h"]) + p["b_h"]
        r = sigmoid(xi[:size] + hh[:size])
        z = sigmoid(xi[size : 2 * size] + hh[size : 2 * size])
        n = np.tanh(xi[2 * size :] + r * hh[2 * size :])
    else:
        rz = ln(hm @ p["w_h"][:, : 2 * size], p["g_h"][: 2 * size])
        r = sigmoid(xi[:size] + rz[:size])
        z = sigmoid(xi[size : 2 * size] + rz[size:])
        cand = ln((r * hm) @ p["w_h"][:, 2 * size :], p["g_h"][2 * size :])
        n = np.tanh(xi[2 * size :] + cand)
    h = z * h + (1.0 - z) * n
    return h, h


def np_run(cell, params, xs, lengths=None, *, reverse=False, carry0=None, rec_mask=None):
    """Batch-first ``xs`` -> (ys [B, T, out], final carry), per sequence, float64."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    xs = np.asarray(xs, np.float64)
    batch, steps, _ = xs.shape
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    lstm = isinstance(cell, jaxrnn.LSTM)
    out = cell.output_size
    ys, finals = np.zeros((batch, steps, out)), []
    for b in range(batch):
        if carry0 is not None:
            carry = jax.tree.map(lambda a, b=b: np.asarray(a, np.float64)[b], carry0)
        else:
            carry = (np.zeros(cell.hidden_size), np.zeros(out)) if lstm else np.zeros(out)
        keep = 1.0 if rec_mask is None else np.asarray(rec_mask, np.float64)[b]
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            step = lstm_step if lstm else gru_step
            carry, ys[b, t] = step(cell, p, carry, xs[b, t], keep)
        finals.append(carry)
    if lstm:
        return ys, tuple(np.stack(leaves) for leaves in zip(*finals, strict=True))
    return ys, np.stack(finals)


def random_params(cell, input_size, seed=0, dtype=jnp.float32):
    """Every parameter random (init leaves biases, peepholes and shifts zero, gains one)."""
    params = cell.init(jax.random.key(seed), input_size, dtype)
    rng = np.random.default_rng(seed + 100)
    out = {}
    for name, value in params.items():
        if name.startswith("g_"):
            value = 1.0 + rng.normal(0, 0.3, value.shape)
        elif name.startswith(("b", "w_c")):
            value = rng.normal(0, 0.5, value.shape)
        out[name] = jnp.asarray(value, dtype)
    return out


def _xs(seed=0, shape=(B, T, F)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _close(got, want, tol=2e-5):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol, atol=tol)


# Cases that together turn on every option, for the tests whose subject is the composition
# (stacks, dropout, vmap, remat) rather than one option's equations.
COVERING = [c for c in CASES if c[0] in ("tf1_all", "ln_lstmp_peepholes", "ln_gru", "ln_gru_cho")]


@pytest.fixture(params=CASES, ids=IDS)
def cell(request):
    return request.param[1]


# reverse with lengths (row 0 has every step: the full reverse among them)
@pytest.mark.parametrize(
    ("lengths", "reverse"),
    [(None, False), (LENGTHS, False), (LENGTHS, True)],
    ids=["full-fw", "lengths-fw", "lengths-bw"],
)
def test_rnn_matches_reference(cell, lengths, reverse):
    params, xs = random_params(cell, F), _xs()
    want_ys, want_carry = np_run(cell, params, xs, lengths, reverse=reverse)
    for implementation in (None, "scan"):
        ys, carry = jax.jit(
            lambda p, x, n, i=implementation: jaxrnn.rnn(
                cell, p, x, n, reverse=reverse, implementation=i
            )
        )(params, xs, lengths)
        assert ys.shape == (B, T, cell.output_size)
        _close(ys, want_ys)
        for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry), strict=True):
            _close(got, want)
    static_ys, _ = jaxrnn.static_rnn(cell, params, xs, lengths, reverse=reverse)
    _close(static_ys, want_ys)
    # time-major gives the same numbers
    tm_ys, _ = jaxrnn.rnn(
        cell, params, xs.swapaxes(0, 1), lengths, reverse=reverse, time_major=True
    )
    _close(tm_ys.swapaxes(0, 1), want_ys)
    if lengths is not None:
        for b, n in enumerate(lengths):  # exact zeros past each length
            assert not np.any(np.asarray(ys[b, n:]))


def test_the_options_change_the_numbers():
    """Each option is live: the reference without it gives other numbers (so the clips bind
    at these values, and the peepholes, projection and normalization act)."""
    xs = _xs()
    for name, cell in CASES:
        params = random_params(cell, F)
        want, _ = np_run(cell, params, xs)
        for option in ("cell_clip", "proj_clip"):
            if getattr(cell, option, None) is not None:
                loose = dataclasses.replace(cell, **{option: 1e9})
                other, _ = np_run(loose, params, xs)
                assert np.abs(other - want).max() > 1e-3, (name, option)
        if getattr(cell, "peepholes", False):
            zero = {k: v * 0 if k.startswith("w_c") else v for k, v in params.items()}
            assert np.abs(np_run(cell, zero, xs)[0] - want).max() > 1e-3, name


def test_initial_carry(cell):
    params, xs = random_params(cell, F), _xs()
    rng = np.random.default_rng(3)
    carry0 = jax.tree.map(
        lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), cell.initial_carry(B)
    )
    ys, carry = jaxrnn.rnn(cell, params, xs, LENGTHS, initial_carry=carry0)
    want_ys, want_carry = np_run(cell, params, xs, LENGTHS, carry0=carry0)
    _close(ys, want_ys)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry), strict=True):
        _close(got, want)
    for got, leaf in zip(jax.tree.leaves(carry), jax.tree.leaves(carry0), strict=True):
        np.testing.assert_array_equal(np.asarray(got[1]), leaf[1])  # length 0: unchanged


def test_gradients_check_grads(cell):
    """Reverse- and forward-mode derivatives against finite differences, in float64."""
    with jax.enable_x64(True):
        c64 = dataclasses.replace(cell, dtype=jnp.float64, param_dtype=jnp.float64)
        params = random_params(c64, F, dtype=jnp.float64)
        xs = _xs(1, (3, 4, F)).astype(np.float64)
        lengths = np.array([4, 1, 3], np.int32)

        def loss(p, x, implementation=None):
            ys, carry = jaxrnn.rnn(c64, p, x, lengths, reverse=True, implementation=implementation)
            return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(carry))

        # Reverse mode as chosen (the fused loop where the variant has one); forward mode
        # needs lax.scan.
        check_grads(loss, (params, xs), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)
        scan_loss = functools.partial(loss, implementation="scan")
        check_grads(scan_loss, (params, xs), order=1, modes=("fwd",), atol=1e-5, rtol=1e-5)


def test_bidirectional_and_stacked(cell):
    params = (random_params(cell, F, 1), random_params(cell, F, 2))
    xs = _xs()
    ys, (c_fw, c_bw) = jaxrnn.bidirectional(cell, cell, params, xs, LENGTHS)
    ref_fw, ref_cfw = np_run(cell, params[0], xs, LENGTHS)
    ref_bw, ref_cbw = np_run(cell, params[1], xs, LENGTHS, reverse=True)
    _close(ys, np.concatenate([ref_fw, ref_bw], -1))
    for got, want in zip(
        jax.tree.leaves((c_fw, c_bw)), jax.tree.leaves((ref_cfw, ref_cbw)), strict=True
    ):
        _close(got, want)

    stack = jaxrnn.Stack((cell, jaxrnn.Bidirectional(cell, cell)))
    out = cell.output_size
    sp = [random_params(cell, F, 3), (random_params(cell, out, 4), random_params(cell, out, 5))]
    ys, carries = jaxrnn.stacked(stack, sp, xs, LENGTHS)
    mid, _ = np_run(cell, sp[0], xs, LENGTHS)
    top_fw, _ = np_run(cell, sp[1][0], mid, LENGTHS)
    top_bw, _ = np_run(cell, sp[1][1], mid, LENGTHS, reverse=True)
    assert ys.shape == (B, T, stack.output_size) == (B, T, 2 * out)
    _close(ys, np.concatenate([top_fw, top_bw], -1), 5e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_recurrent_dropout_masks_h_where_it_enters_w_h(cell, reverse):
    params, xs = random_params(cell, F), _xs()
    mask = np.random.default_rng(7).choice([0.0, 2.0], (B, cell.output_size)).astype(np.float32)
    ys, carry = drive(
        cell, params, xs, RunOptions(reverse=reverse), lengths=LENGTHS, hidden_mask=mask
    )
    want_ys, want_carry = np_run(cell, params, xs, LENGTHS, reverse=reverse, rec_mask=mask)
    _close(ys, want_ys)
    for got, want in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry), strict=True):
        _close(got, want)


@pytest.mark.parametrize("cell", [c[1] for c in COVERING], ids=[c[0] for c in COVERING])
def test_the_three_dropouts_in_a_stack(cell):
    stack = jaxrnn.Stack(
        (cell, jaxrnn.Bidirectional(cell, cell)),
        dropout=0.3,
        input_dropout=0.2,
        recurrent_dropout=0.4,
    )
    params, xs = stack.init(jax.random.key(0), F), _xs()

    def loss(p, key):
        ys, _ = jaxrnn.stacked(stack, p, xs, LENGTHS, key=key)
        return jnp.sum(ys**2), ys

    (value, ys), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, jax.random.key(1))
    again, _ = loss(params, jax.random.key(1))
    other, _ = loss(params, jax.random.key(2))
    plain, _ = jaxrnn.stacked(stack, params, xs, LENGTHS)
    np.testing.assert_allclose(value, again, rtol=1e-6)  # a key fixes the masks
    assert abs(float(value) - float(other)) > 1e-4
    assert np.any(np.asarray(ys) != np.asarray(plain))  # dropout acted
    for b, n in enumerate(LENGTHS):
        assert not np.any(np.asarray(ys[b, n:]))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_mixed_precision(cell):
    """Operands of the matmuls in bfloat16, state and normalization in float32: within 8 eps
    of the float64 reference (as the other cells, ``tests/test_precision.py``)."""
    _check_mixed_precision(cell, jnp.bfloat16)


# float16 through the same code: the LSTM with every option but layer_norm, a normalized GRU
@pytest.mark.parametrize("name", ["tf1_all", "ln_gru_cho"])
def test_float16(name):
    _check_mixed_precision(dict(CASES)[name], jnp.float16)


def _check_mixed_precision(cell, dtype):
    low = dataclasses.replace(cell, dtype=dtype)
    params, xs = random_params(low, F), _xs()
    ys, carry = jax.jit(lambda p, x: jaxrnn.rnn(low, p, x, LENGTHS, reverse=True))(params, xs)
    want, want_carry = np_run(cell, params, xs, LENGTHS, reverse=True)
    tol = 8 * float(jnp.finfo(dtype).eps)
    assert ys.dtype == dtype
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(carry))
    _close(ys, want, tol)
    for got, ref in zip(jax.tree.leaves(carry), jax.tree.leaves(want_carry), strict=True):
        _close(got, ref, tol)
    ys32, _ = jaxrnn.rnn(cell, params, xs, LENGTHS, reverse=True)
    assert np.any(np.asarray(ys, np.float32) != np.asarray(ys32))

    p16 = low.init(jax.random.key(0), F, jnp.bfloat16)
    grads = jax.grad(lambda p: jnp.sum(jaxrnn.rnn(low, p, xs.astype(dtype))[0].astype(float)))(p16)
    assert set(grads) == set(p16)
    assert all(g.dtype == jnp.bfloat16 for g in grads.values())


def test_implementation_choice(cell):
    params, xs = random_params(cell, F), _xs()

    def jaxpr(implementation):
        def loss(p):
            return jnp.sum(jaxrnn.rnn(cell, p, xs, LENGTHS, implementation=implementation)[0])

        return str(jax.make_jaxpr(jax.grad(loss))(params))

    chosen = jaxpr(None)
    assert "ffi_call" not in chosen  # no CPU kernels for the variants
    if cell.layer_norm:  # None runs lax.scan, JAX's derivative
        assert "custom_vjp" not in chosen
        assert not jaxrnn.drivers.has_fused_path(cell)
        for implementation in ("fused", "kernel"):
            with pytest.raises(ValueError, match="has no fused loop"):
                jaxrnn.rnn(cell, params, xs, implementation=implementation)
    else:  # the variants' fused XLA loop
        assert "custom_vjp" in str(
            jax.make_jaxpr(lambda p: jaxrnn.rnn(cell, p, xs, LENGTHS)[0])(params)
        )
        assert jaxrnn.drivers.has_fused_path(cell) and not cell.has_kernels()
        with pytest.raises(ValueError, match="has no CPU kernels"):
            jaxrnn.rnn(cell, params, xs, implementation="kernel")


def test_init_layout():
    cell = jaxrnn.LSTM(H, proj_size=P, peepholes=True, layer_norm=True)
    params = cell.init(jax.random.key(0), F)
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {
        "w_i": (F, 4 * H),
        "w_h": (P, 4 * H),
        "b": (4 * H,),
        "w_hr": (H, P),
        "w_ci": (H,),
        "w_cf": (H,),
        "w_co": (H,),
        "g_i": (4 * H,),
        "g_h": (4 * H,),
        "g_c": (H,),
        "b_c": (H,),
    }
    assert np.all(np.asarray(params["g_c"]) == 1) and not np.any(np.asarray(params["w_ci"]))
    c, h = cell.initial_carry(2)
    assert c.shape == (2, H) and h.shape == (2, P) and cell.output_size == P
    gru = jaxrnn.GRU(H, layer_norm=True).init(jax.random.key(0), F)
    assert {k: v.shape for k, v in gru.items()} == {
        "w_i": (F, 3 * H),
        "w_h": (H, 3 * H),
        "b": (3 * H,),
        "b_h": (3 * H,),
        "g_i": (3 * H,),
        "g_h": (3 * H,),
    }


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: jaxrnn.LSTM(4, proj_size=-1), ValueError, "proj_size must be >= 0"),
        (lambda: jaxrnn.LSTM(4, proj_size=2.0), TypeError, "proj_size must be an int"),
        (lambda: jaxrnn.LSTM(4, proj_clip=1.0), ValueError, "needs proj_size > 0"),
        (lambda: jaxrnn.LSTM(4, cell_clip=0.0), ValueError, "cell_clip must be None or a pos"),
        (lambda: jaxrnn.LSTM(4, peepholes=1), TypeError, "peepholes must be a bool"),
        (lambda: jaxrnn.GRU(4, layer_norm="yes"), TypeError, "layer_norm must be a bool"),
    ],
)
def test_bad_options_are_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_params_of_another_variant_are_an_error():
    plain = jaxrnn.LSTM(H).init(jax.random.key(0), F)
    with pytest.raises(
        ValueError, match=r"params\['w_h'\] has shape \(5, 20\), expected \(3, 20\)"
    ):
        jaxrnn.rnn(jaxrnn.LSTM(H, proj_size=P), plain, _xs())
    with pytest.raises(ValueError, match="params lacks 'w_ci'"):
        jaxrnn.rnn(jaxrnn.LSTM(H, peepholes=True), plain, _xs())
    # The other way round the extra parameters would be dropped without a word.
    peepholes = jaxrnn.LSTM(H, peepholes=True).init(jax.random.key(0), F)
    with pytest.raises(ValueError, match=r"params holds \['w_cf', 'w_ci', 'w_co'\], which LSTM"):
        jaxrnn.rnn(jaxrnn.LSTM(H), peepholes, _xs())
    with pytest.raises(ValueError, match=r"holds \['w_hh'\].*takes w_i, w_h, b \(optional\)"):
        jaxrnn.rnn(jaxrnn.LSTM(H), {**plain, "w_hh": plain["w_h"]}, _xs())


def test_nnx_modules_model_and_configs():
    from flax import nnx

    from jaxrnn import nn
    from jaxrnn.configs.base import Config, apply_overrides
    from jaxrnn.models import Model
    from jaxrnn.training.loop import build_model

    xs = _xs()
    cell = jaxrnn.LSTM(H, proj_size=P, peepholes=True)
    layer = nn.RNN(cell, F, rngs=nnx.Rngs(0), return_carry=True)
    ys, (c, h) = layer(xs, LENGTHS)
    want, (want_c, _) = np_run(cell, layer.params(), xs, LENGTHS)
    _close(ys, want)
    _close(c, want_c)
    bi = nn.Bidirectional(cell, cell, F, rngs=nnx.Rngs(1), dtype=jnp.bfloat16)
    assert bi(xs, LENGTHS).shape == (B, T, 2 * P)
    stack = jaxrnn.Stack((jaxrnn.GRU(4, layer_norm=True), cell), recurrent_dropout=0.2)
    st = nn.Stacked(stack, F, rngs=nnx.Rngs(2))
    assert st(xs, LENGTHS, rngs=nnx.Rngs(dropout=3)).shape == (B, T, P)

    config = apply_overrides(
        Config(),
        ["proj_size=3", "peepholes=true", "cell_clip=2.5", "proj_clip=1.5", "layer_norm=true"],
    )
    train = {"inputs": xs, "lengths": LENGTHS, "labels": np.array([0, 1, 2, 1])}
    model = build_model(config.replace(bidirectional=True, readout="state"), train)
    assert model._cell() == jaxrnn.LSTM(
        32,
        proj_size=3,
        peepholes=True,
        cell_clip=2.5,
        proj_clip=1.5,
        layer_norm=True,
        dtype="float32",
        param_dtype="float32",
    )
    params = model.init(jax.random.key(0), F)
    assert params["head"]["w"].shape == (6, 3)  # both directions' projected h
    logits = model.apply(params, xs, LENGTHS)
    assert logits.shape == (B, 3) and np.all(np.isfinite(logits))
    gru = Model("gru", 4, 2, layer_norm=True, num_layers=2)
    assert gru.apply(gru.init(jax.random.key(1), F), xs, LENGTHS).shape == (B, 2)
    with pytest.raises(ValueError, match="proj_size applies to cell='lstm'"):
        Model("gru", 4, 2, proj_size=2)
    with pytest.raises(ValueError, match="layer_norm applies to cell='lstm' or 'gru'"):
        Model("rnn", 4, 2, layer_norm=True)


@pytest.mark.slow
def test_the_benchmarks_flax_twins_are_the_same_models():
    """``benchmarks/variants.py`` times each variant against a Flax cell: one step of each
    twin must compute the jaxrnn cell's function (it exits non-zero otherwise)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "variants.py")
    done = subprocess.run(
        [sys.executable, script, "--check"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("largest difference of one step") == 8


@pytest.mark.parametrize("cell", [c[1] for c in COVERING], ids=[c[0] for c in COVERING])
def test_bidirectional_under_vmap_and_remat(cell):
    """One sequence per vmapped call gives the batch's numbers; ``remat`` (``True`` and
    blocks of ``k`` steps) gives the same gradients, to float32 rounding (the recomputation
    sums in another order)."""
    params = (random_params(cell, F, 1), random_params(cell, F, 2))
    xs = _xs()

    def one(x, n):
        ys, _ = jaxrnn.bidirectional(cell, cell, params, x[None], n[None])
        return ys[0]

    ys = jax.jit(jax.vmap(one))(xs, LENGTHS)
    ref_fw, _ = np_run(cell, params[0], xs, LENGTHS)
    ref_bw, _ = np_run(cell, params[1], xs, LENGTHS, reverse=True)
    _close(ys, np.concatenate([ref_fw, ref_bw], -1))

    def loss(p, remat):
        ys, carry = jaxrnn.rnn(cell, p, xs, LENGTHS, reverse=True, remat=remat)
        return jnp.sum(ys * ys) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(carry))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    want = grad(params[0], False)
    for remat in (True, 4):
        got = grad(params[0], remat)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
