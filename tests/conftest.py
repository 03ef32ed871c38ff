"""Shared fixtures: every cell variant with parameters that exercise every bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn

# (id, cell, reference kind, reference hyperparameters)
CELL_CASES = [
    ("rnn_tanh", jaxrnn.SimpleRNN(5), "rnn", {"activation": "tanh"}),
    ("rnn_relu", jaxrnn.SimpleRNN(5, activation="relu"), "rnn", {"activation": "relu"}),
    ("lstm", jaxrnn.LSTM(5), "lstm", {}),
    ("lstm_fb1", jaxrnn.LSTM(5, forget_bias=1.0), "lstm", {"forget_bias": 1.0}),
    ("gru", jaxrnn.GRU(5), "gru", {"reset_after": True}),
    ("gru_cho", jaxrnn.GRU(5, reset_after=False), "gru", {"reset_after": False}),
]


def random_params(cell, input_size, seed=0, dtype=jnp.float32, second_bias=False):
    """``cell.init`` params with every bias made non-zero (init leaves them zero)."""
    params = cell.init(jax.random.key(seed), input_size, dtype)
    rng = np.random.default_rng(seed + 100)
    params = {k: jnp.asarray(v) for k, v in params.items()}
    for name in ("b", "b_h"):
        if name in params:
            params[name] = params[name] + jnp.asarray(rng.normal(0, 0.5, params[name].shape), dtype)
    if second_bias and "b_h" not in params:
        params["b_h"] = jnp.asarray(rng.normal(0, 0.5, params["b"].shape), dtype)
    return params


@pytest.fixture(params=CELL_CASES, ids=[c[0] for c in CELL_CASES])
def cell_case(request):
    name, cell, kind, hyper = request.param
    return cell, kind, {"hidden": cell.hidden_size, **hyper}
