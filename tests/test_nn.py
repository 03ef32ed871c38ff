"""Flax NNX modules: same numbers as the functional core, and trainable inside a Flax model."""

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxrnn
import jaxrnn.nn as jnn

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
