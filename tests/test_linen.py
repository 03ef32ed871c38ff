"""Flax linen modules: their params are the functional API's pytrees, and they give its
numbers (values and gradients), under linen's transforms and inside a trained linen model."""

import dataclasses
import importlib
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
import jaxrnn.linen as jln
from jaxrnn import _extras

B, T, F, H = 3, 5, 4, 6
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(B, T, F)), jnp.float32)
LENGTHS = jnp.array([5, 2, 0], jnp.int32)
RESETS = jnp.asarray(_rng.random((B, T)) < 0.3)
KEY = jax.random.key(0)


class _Draw(nn.Module):
    stream: str

    @nn.compact
    def __call__(self):
        return self.make_rng(self.stream)


def first_key(stream, key, transform=lambda module: module):
    """The key that a root module's first ``self.make_rng(stream)`` gets from ``{stream:
    key}`` (under a linen ``transform``): the one the modules draw their params (or dropout)
    from."""
    return transform(_Draw)(stream).apply({}, rngs={stream: key})


def carry_like(cell, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda c: jnp.asarray(rng.normal(size=c.shape), c.dtype), cell.initial_carry(B)
    )


def loss(ys):
    weights = jnp.arange(1.0, ys.size + 1).reshape(ys.shape) / ys.size
    return jnp.sum(jnp.sin(ys) * weights)


def value_and_grad(f, params):
    """``((loss(ys), ys), grads)`` for ``ys = f(params)``: one trace for values and
    gradients."""
    return jax.value_and_grad(lambda p: (loss(ys := f(p)), ys), has_aux=True)(params)


def assert_trees_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def assert_trees_close(got, want, rtol=1e-6, atol=1e-6):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=rtol, atol=atol), got, want)


@pytest.mark.parametrize(
    "cell", [jaxrnn.SimpleRNN(H), jaxrnn.LSTM(H), jaxrnn.GRU(H)], ids=["rnn", "lstm", "gru"]
)
def test_rnn_params_are_cell_init_and_give_rnn_values_and_gradients(cell):
    module = jln.RNN(cell)
    variables = module.init(KEY, X, LENGTHS)
    params = variables["params"]
    assert set(variables) == {"params"}
    assert_trees_equal(params, cell.init(first_key("params", KEY), F))
    (_, ys), grads = value_and_grad(lambda p: module.apply({"params": p}, X, LENGTHS), params)
    (_, ref_ys), ref = value_and_grad(lambda p: jaxrnn.rnn(cell, p, X, LENGTHS)[0], params)
    np.testing.assert_array_equal(ys, ref_ys)
    assert_trees_close(grads, ref)
    assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "reverse, time_major, unroll, implementation",
    [(False, True, 1, None), (True, False, 2, "scan")],
)
def test_rnn_options_initial_carry_and_resets_equal_rnn(
    reverse, time_major, unroll, implementation
):
    cell = jaxrnn.LSTM(H)
    options = dict(
        reverse=reverse, time_major=time_major, unroll=unroll, implementation=implementation
    )
    module = jln.RNN(cell, return_carry=True, **options)
    x = jnp.swapaxes(X, 0, 1) if time_major else X
    resets = RESETS.T if time_major else RESETS
    carry0 = carry_like(cell, 1)
    variables = module.init(KEY, x, LENGTHS, carry0, resets=resets)
    ys, carry = module.apply(variables, x, LENGTHS, carry0, resets=resets)
    ref_ys, ref_carry = jaxrnn.rnn(
        cell, variables["params"], x, LENGTHS, resets=resets, initial_carry=carry0, **options
    )
    np.testing.assert_array_equal(ys, ref_ys)
    assert_trees_equal(carry, ref_carry)
    assert module.options == jaxrnn.RunOptions(**options)


def test_rnn_dtypes_replace_the_cells():
    cell = jaxrnn.GRU(H)
    module = jln.RNN(cell, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = module.init(KEY, X)
    assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.bfloat16)}
    ys = module.apply(variables, X)
    half = dataclasses.replace(cell, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert ys.dtype == jnp.bfloat16
    np.testing.assert_array_equal(ys, jaxrnn.rnn(half, variables["params"], X)[0])


def test_bidirectional_equals_functional_call():
    fw, bw = jaxrnn.LSTM(H), jaxrnn.GRU(3)
    module = jln.Bidirectional(fw, bw, return_carry=True)
    carry0 = (carry_like(fw, 2), carry_like(bw, 3))
    variables = module.init(KEY, X, LENGTHS, carry0, resets=RESETS)
    p = variables["params"]
    k_fw, k_bw = jax.random.split(first_key("params", KEY))
    assert_trees_equal(p, {"forward": fw.init(k_fw, F), "backward": bw.init(k_bw, F)})

    ys, carries = module.apply(variables, X, LENGTHS, carry0, resets=RESETS)
    pair = (p["forward"], p["backward"])
    ref_ys, ref_carries = jaxrnn.bidirectional(
        fw, bw, pair, X, LENGTHS, resets=RESETS, initial_carry=carry0
    )
    assert ys.shape == (B, T, H + 3)
    np.testing.assert_array_equal(ys, ref_ys)
    assert_trees_equal(carries, ref_carries)

    def module_loss(params):
        ys, _ = module.apply({"params": params}, X, LENGTHS, carry0, resets=RESETS)
        return loss(ys)

    def functional_loss(params):
        pair = (params["forward"], params["backward"])
        ys, _ = jaxrnn.bidirectional(fw, bw, pair, X, LENGTHS, resets=RESETS, initial_carry=carry0)
        return loss(ys)

    assert_trees_close(jax.grad(module_loss)(p), jax.grad(functional_loss)(p))

    pair_module = jln.Bidirectional(fw, bw, merge=None)
    ys_fw, ys_bw = pair_module.apply(variables, X, LENGTHS, carry0, resets=RESETS)
    np.testing.assert_array_equal(jnp.concatenate([ys_fw, ys_bw], -1), ys)


STACK = jaxrnn.Stack(
    (jaxrnn.LSTM(H), jaxrnn.Bidirectional(jaxrnn.GRU(H), jaxrnn.SimpleRNN(3))),
    dropout=0.5,
    input_dropout=0.2,
    recurrent_dropout=0.3,
)


def test_stacked_equals_stacked_with_and_without_dropout():
    module = jln.Stacked(STACK, return_carry=True)
    variables = module.init(KEY, X, LENGTHS)
    p = variables["params"]
    assert set(p) == {"layer_0", "layer_1"} and set(p["layer_1"]) == {"forward", "backward"}
    params = jln.stack_params(p)
    assert_trees_equal(params, STACK.init(first_key("params", KEY), F))
    assert_trees_equal(jln.stack_param_dict(params), p)

    ys, carries = module.apply(variables, X, LENGTHS)
    ref_ys, ref_carries = jaxrnn.stacked(STACK, params, X, LENGTHS)
    np.testing.assert_array_equal(ys, ref_ys)
    assert_trees_equal(carries, ref_carries)

    rngs = {"dropout": jax.random.key(7)}
    dropped, _ = module.apply(variables, X, LENGTHS, deterministic=False, rngs=rngs)
    key = first_key("dropout", rngs["dropout"])
    np.testing.assert_array_equal(dropped, jaxrnn.stacked(STACK, params, X, LENGTHS, key=key)[0])
    assert not np.allclose(dropped, ys)
    with pytest.raises(flax.errors.InvalidRngError):
        module.apply(variables, X, LENGTHS, deterministic=False)


def test_stacked_time_major_and_initial_carry():
    stack = jaxrnn.Stack((jaxrnn.GRU(H), jaxrnn.Bidirectional(jaxrnn.LSTM(3), jaxrnn.GRU(3))))
    module = jln.Stacked(stack, time_major=True)
    x = jnp.swapaxes(X, 0, 1)
    variables = module.init(KEY, x, LENGTHS)
    carry0 = [carry_like(stack.layers[0], 4), (carry_like(jaxrnn.LSTM(3), 5), None)]
    ys = module.apply(variables, x, LENGTHS, carry0, resets=RESETS.T)
    params = jln.stack_params(variables["params"])
    ref = jaxrnn.stacked(
        stack, params, x, LENGTHS, resets=RESETS.T, initial_carry=carry0, time_major=True
    )
    np.testing.assert_array_equal(ys, ref[0])


def test_remat_and_jit_give_the_same_values_and_gradients():
    cell = jaxrnn.GRU(H)
    plain = jln.RNN(cell)
    variables = plain.init(KEY, X, LENGTHS)
    (_, ys), grads = value_and_grad(lambda v: plain.apply(v, X, LENGTHS), variables)
    for transform in (nn.remat, nn.jit):
        module = transform(jln.RNN)(cell)
        # nn.jit derives other keys than a plain module (nn.remat the same), as for nn.Dense.
        want = cell.init(first_key("params", KEY, transform), F)
        assert_trees_equal(module.init(KEY, X, LENGTHS)["params"], want)
        (_, got_ys), got = value_and_grad(lambda v, m=module: m.apply(v, X, LENGTHS), variables)
        np.testing.assert_allclose(got_ys, ys, rtol=1e-6, atol=1e-7)
        assert_trees_close(got, grads)


class _Residual(nn.Module):
    """A residual GRU layer as the body of ``nn.scan`` over layers: ``x`` is the carry."""

    @nn.compact
    def __call__(self, x, lengths):
        return jln.RNN(jaxrnn.GRU(F))(x, lengths) + x, None


def test_nn_scan_over_layers_is_a_loop_over_their_params():
    """``nn.scan`` stacks each layer's params on a leading axis; the scanned model's values
    and gradients are those of a Python loop over ``rnn`` with each layer's slice."""
    layers = 3
    scanned = nn.scan(
        _Residual,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=nn.broadcast,
        length=layers,
    )()
    variables = scanned.init(KEY, X, LENGTHS)
    assert jax.tree.map(jnp.shape, variables["params"]["RNN_0"]) == {
        "w_i": (layers, F, 3 * F),
        "w_h": (layers, F, 3 * F),
        "b": (layers, 3 * F),
        "b_h": (layers, 3 * F),
    }

    def loop(params):
        x = X
        for i in range(layers):
            layer = jax.tree.map(lambda a, i=i: a[i], params)
            x = jaxrnn.rnn(jaxrnn.GRU(F), layer, x, LENGTHS)[0] + x
        return x

    (_, ys), grads = value_and_grad(lambda v: scanned.apply(v, X, LENGTHS)[0], variables)
    (_, want_ys), want = value_and_grad(loop, variables["params"]["RNN_0"])
    np.testing.assert_allclose(ys, want_ys, rtol=1e-6, atol=1e-6)
    assert_trees_close(grads["params"]["RNN_0"], want)


class Classifier(nn.Module):
    """An LSTM (a one-layer stack, for its input dropout) and a dense head on its final ``h``."""

    @nn.compact
    def __call__(self, x, lengths, *, deterministic=True):
        stack = jaxrnn.Stack((jaxrnn.LSTM(8),), input_dropout=0.1)
        _, carries = jln.Stacked(stack, return_carry=True)(x, lengths, deterministic=deterministic)
        return nn.Dense(2)(carries[-1][1])


def test_trains_inside_a_linen_model_with_optax():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(32, T, 2)), jnp.float32)
    lengths = jnp.asarray(rng.integers(1, T + 1, 32), jnp.int32)
    labels = (x[jnp.arange(32), lengths - 1, 0] > 0).astype(jnp.int32)
    model = Classifier()
    params = model.init(KEY, x, lengths)["params"]
    assert set(params) == {"Stacked_0", "Dense_0"}
    tx = optax.adam(3e-2)

    def loss_fn(params, key=None):
        rngs = None if key is None else {"dropout": key}
        logits = model.apply({"params": params}, x, lengths, deterministic=key is None, rngs=rngs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(loss_fn)(params, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    evaluate = jax.jit(loss_fn)
    before = float(evaluate(params))
    opt_state = tx.init(params)
    for key in jax.random.split(jax.random.key(1), 5):
        params, opt_state = step(params, opt_state, key)
    after = float(evaluate(params))
    assert after < before


def test_bad_input_raises_the_functional_errors():
    cell = jaxrnn.GRU(H)
    module = jln.RNN(cell)
    variables = module.init(KEY, X)
    bad_lengths = jnp.array([5, 2], jnp.int32)
    with pytest.raises(ValueError, match=r"lengths must have shape \(3,\)"):
        jaxrnn.rnn(cell, variables["params"], X, bad_lengths)
    for call in (
        lambda: module.init(KEY, X, bad_lengths),
        lambda: module.apply(variables, X, bad_lengths),
    ):
        with pytest.raises(ValueError, match=r"lengths must have shape \(3,\)"):
            call()
    with pytest.raises(ValueError, match="x must have rank 3"):
        module.apply(variables, X[0])
    with pytest.raises(ValueError, match="unroll"):
        jln.RNN(cell, unroll=0)
    with pytest.raises(ValueError, match="merge"):
        jln.Bidirectional(cell, cell, merge="max")


def test_without_flax_it_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flax", None)
    monkeypatch.delitem(sys.modules, "jaxrnn.linen")
    with pytest.raises(_extras.MissingExtraError, match=r'jaxrnn.linen needs flax.*"jaxrnn\[nn\]"'):
        importlib.import_module("jaxrnn.linen")
