"""Flax NNX modules: same numbers as the functional core, and trainable inside a Flax model."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _reference import run as np_run
from flax import nnx

import jaxrnn
import jaxrnn.nn as jnn
from jaxrnn import interop

GOLDEN = pathlib.Path(__file__).parent / "golden"

X = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
LENGTHS = np.array([5, 2, 0], np.int32)


def test_rnn_module_equals_functional_call():
    cell = jaxrnn.GRU(4)
    layer = jnn.RNN(cell, 2, rngs=nnx.Rngs(0), reverse=True, return_carry=True)
    ys, carry = layer(X, LENGTHS)
    ref_ys, ref_carry = jaxrnn.rnn(cell, layer.params(), X, LENGTHS, reverse=True)
    np.testing.assert_array_equal(ys, ref_ys)
    np.testing.assert_array_equal(carry, ref_carry)
    assert set(layer.params()) == {"w_i", "w_h", "b", "b_h"}


def test_bidirectional_and_stacked_modules_equal_functional_calls():
    fw, bw = jaxrnn.LSTM(3), jaxrnn.SimpleRNN(2)
    bi = jnn.Bidirectional(fw, bw, 2, rngs=nnx.Rngs(1), merge="concat")
    np.testing.assert_array_equal(
        bi(X, LENGTHS), jaxrnn.bidirectional(fw, bw, bi.params(), X, LENGTHS)[0]
    )
    stack = jaxrnn.Stack((jaxrnn.LSTM(3), jaxrnn.Bidirectional(fw, bw)), dropout=0.5)
    st = jnn.Stacked(stack, 2, rngs=nnx.Rngs(2))
    np.testing.assert_array_equal(st(X, LENGTHS), jaxrnn.stacked(stack, st.params(), X, LENGTHS)[0])
    dropped = st(X, LENGTHS, rngs=nnx.Rngs(dropout=7))
    assert not np.allclose(dropped, st(X, LENGTHS))


class Classifier(nnx.Module):
    def __init__(self, rngs):
        self.rnn = jnn.Bidirectional(
            jaxrnn.LSTM(8), jaxrnn.LSTM(8), 2, rngs=rngs, return_carry=True
        )
        self.head = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x, lengths):
        _, ((_, h_fw), (_, h_bw)) = self.rnn(x, lengths)
        return self.head(jnp.concatenate([h_fw, h_bw], -1))


def test_module_trains_inside_a_flax_model():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 5, 2)).astype(np.float32)
    lengths = rng.integers(1, 6, 32).astype(np.int32)
    labels = (x[np.arange(32), lengths - 1, 0] > 0).astype(np.int32)  # sign of the last valid x
    model = Classifier(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        def loss_fn(model):
            logits = model(x, lengths)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt)) for _ in range(60)]
    assert losses[-1] < 0.5 * losses[0]


def test_rnn_module_initial_carry_and_time_major_against_numpy():
    cell = jaxrnn.LSTM(4)
    layer = jnn.RNN(cell, 2, rngs=nnx.Rngs(3), time_major=True, return_carry=True)
    rng = np.random.default_rng(2)
    carry = tuple(rng.normal(size=(3, 4)).astype(np.float32) for _ in range(2))
    ys, (c, h) = layer(np.swapaxes(X, 0, 1), LENGTHS, initial_carry=carry)
    ref_ys, (ref_c, ref_h) = np_run(
        "lstm", layer.params(), X, LENGTHS, carry0=list(zip(*carry, strict=True)), hidden=4
    )
    np.testing.assert_allclose(np.swapaxes(ys, 0, 1), ref_ys, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(c, ref_c, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(h, ref_h, rtol=2e-5, atol=2e-6)
    np.testing.assert_array_equal(h[2], carry[1][2])  # length 0 keeps the initial carry


def test_bidirectional_and_stacked_modules_time_major():
    fw, bw = jaxrnn.GRU(3), jaxrnn.SimpleRNN(2)
    x_tm = np.swapaxes(X, 0, 1)
    bi = jnn.Bidirectional(fw, bw, 2, rngs=nnx.Rngs(4))
    bi_tm = jnn.Bidirectional(fw, bw, 2, rngs=nnx.Rngs(4), time_major=True)
    np.testing.assert_allclose(np.swapaxes(bi_tm(x_tm, LENGTHS), 0, 1), bi(X, LENGTHS), rtol=1e-6)
    stack = jaxrnn.Stack((jaxrnn.LSTM(3), jaxrnn.Bidirectional(fw, bw)))
    st = jnn.Stacked(stack, 2, rngs=nnx.Rngs(5))
    st_tm = jnn.Stacked(stack, 2, rngs=nnx.Rngs(5), time_major=True)
    np.testing.assert_allclose(np.swapaxes(st_tm(x_tm, LENGTHS), 0, 1), st(X, LENGTHS), rtol=1e-6)


def test_split_merge_and_state_updates_reach_the_numbers():
    cell = jaxrnn.GRU(4)
    layer = jnn.RNN(cell, 2, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(layer)
    np.testing.assert_array_equal(nnx.merge(graphdef, state)(X, LENGTHS), layer(X, LENGTHS))
    doubled = jax.tree.map(lambda v: 2 * v, state)
    twice = nnx.merge(graphdef, doubled)
    params = jax.tree.map(lambda v: 2 * v, layer.params())
    np.testing.assert_array_equal(twice(X, LENGTHS), jaxrnn.rnn(cell, params, X, LENGTHS)[0])
    assert not np.allclose(twice(X, LENGTHS), layer(X, LENGTHS))


def test_pytorch_weights_loaded_into_a_stacked_module():
    """A 2-layer bidirectional PyTorch LSTM's state_dict, converted by jaxrnn.interop and set
    with nnx.update, reproduces PyTorch's stored outputs."""
    with np.load(GOLDEN / "torch_lstm.npz") as data:
        g = {k: data[k] for k in data.files}
    cell = jaxrnn.LSTM(int(g["hidden_size"]))
    sd = {k[len("bi2/sd/") :]: v for k, v in g.items() if k.startswith("bi2/sd/")}
    stack = jaxrnn.Stack((jaxrnn.Bidirectional(cell, cell),) * 2)
    module = jnn.Stacked(stack, g["x"].shape[-1], rngs=nnx.Rngs(0))
    loaded = {
        layer: {d: interop.from_torch(cell, sd, layer, bool(d)) for d in (0, 1)} for layer in (0, 1)
    }
    nnx.update(module, nnx.State({"weights": loaded}))
    ys = np.asarray(module(g["x"], g["lengths"]))
    valid = np.arange(g["x"].shape[1])[None, :] < g["lengths"][:, None]
    np.testing.assert_allclose(ys[valid], g["bi2/masked/ys"][valid], rtol=1e-5, atol=1e-5)
    assert (ys[~valid] == 0).all()
