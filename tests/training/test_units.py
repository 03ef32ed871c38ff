"""Models, optimizers, steps and config overrides, on numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxrnn
from jaxrnn.configs import NAMES, apply_overrides, get_config
from jaxrnn.models import Model
from jaxrnn.training import optimizers, steps
from jaxrnn.training import state as state_lib


def test_rmsprop_has_keras_semantics():
    # Keras: v = rho v + (1 - rho) g^2; x -= lr g / (sqrt(v) + eps). eps = 0.5 to tell apart.
    tx = optimizers.make_optimizer("rmsprop", 0.1, rho=0.9, eps=0.5, eps_in_sqrt=False)
    params = jnp.array([1.0])
    g = jnp.array([2.0])
    opt_state = tx.init(params)
    v = 0.0
    for _ in range(3):
        updates, opt_state = tx.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        v = 0.9 * v + 0.1 * 4.0
        expected = -0.1 * 2.0 / (np.sqrt(v) + 0.5)
        np.testing.assert_allclose(updates, [expected], rtol=1e-6)


def test_clipping_and_schedule():
    tx = optimizers.make_optimizer("sgd", 1.0, clip_norm=1.0, schedule="cosine", total_steps=4)
    params = jnp.zeros(2)
    updates, _ = tx.update(jnp.array([3.0, 4.0]), tx.init(params), params)
    np.testing.assert_allclose(updates, [-0.6, -0.8], rtol=1e-6)
    with pytest.raises(ValueError, match="optimizer"):
        optimizers.make_optimizer("nope", 1.0)


def _batch(batch=5, time=7, features=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "inputs": jnp.asarray(rng.normal(size=(batch, time, features)), jnp.float32),
        "lengths": jnp.asarray([7, 1, 4, 0, 5][:batch], jnp.int32),
        "labels": jnp.asarray(rng.integers(0, 4, batch), jnp.int32),
    }


def _init(model, input_size, seed=0):
    return jax.jit(model.init, static_argnums=1)(jax.random.key(seed), input_size)


def test_last_readout_is_output_at_last_valid_step():
    model = Model("lstm", 6, 4, readout="last")
    params = _init(model, 3)
    b = _batch()
    run = jax.jit(lambda p, x, n: jaxrnn.rnn(jaxrnn.LSTM(6), p, x, n)[0])
    ys = run(params["rnn"][0], b["inputs"], b["lengths"])
    feats = jax.jit(model.features)(params, b["inputs"], b["lengths"])
    for i, n in enumerate(np.asarray(b["lengths"])):
        want = ys[i, n - 1] if n > 0 else jnp.zeros(6)  # length 0: zeros (clipped index 0)
        np.testing.assert_array_equal(feats[i], want)
    logits = jax.jit(model.apply)(params, b["inputs"], b["lengths"])
    np.testing.assert_allclose(logits, feats @ params["head"]["w"] + params["head"]["b"])


def test_bidirectional_state_readout_concatenates_final_states():
    model = Model("gru", 5, 3, bidirectional=True, readout="state")
    params = _init(model, 3)
    b = _batch()
    cell = jaxrnn.GRU(5)
    both = jax.jit(lambda p, x, n: jaxrnn.bidirectional(cell, cell, p, x, n)[1])
    h_fw, h_bw = both(params["rnn"][0], b["inputs"], b["lengths"])
    feats = jax.jit(model.features)(params, b["inputs"], b["lengths"])
    np.testing.assert_array_equal(feats, jnp.concatenate([h_fw, h_bw], -1))
    # Unmasked: every step counts, whatever lengths say.
    unmasked = Model("gru", 5, 3, bidirectional=True, readout="state", masked=False)
    h_fw, h_bw = both(params["rnn"][0], b["inputs"], None)
    np.testing.assert_array_equal(
        jax.jit(unmasked.features)(params, b["inputs"], b["lengths"]),
        jnp.concatenate([h_fw, h_bw], -1),
    )


def test_eval_sums_ignore_padding_weights():
    model = Model("rnn", 4, 4)
    params = _init(model, 3, 2)
    b = _batch(4)
    b["lengths"] = jnp.array([7, 1, 4, 2])
    padded = {k: jnp.concatenate([v, v[:2]]) for k, v in b.items()}
    padded["weights"] = jnp.array([1.0, 1, 1, 1, 0, 0])
    eval_step = steps.make_eval_step(model)
    want = eval_step(params, b)
    got = eval_step(params, padded)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(got[2]) == 4.0


def test_block_equals_single_steps():
    model = Model("lstm", 4, 3)
    tx = optimizers.make_optimizer("adam", 1e-2)
    params = _init(model, 3, 3)
    data = {k: v for k, v in _batch(5).items()}
    data["labels"] = data["labels"] % 3
    indices = jnp.array([[0, 1], [2, 3], [4, 0]], jnp.int32)
    start = state_lib.create(params, tx, jax.random.key(4))
    state = start
    one_step = jax.jit(lambda s, b: steps.train_step(model, tx, s, b))
    for idx in indices:
        state, _ = one_step(state, {k: v[idx] for k, v in data.items()})
    block = steps.make_train_block(model, tx)
    fresh = state_lib.create(params, tx, jax.random.key(4))
    blocked, metrics = block(fresh, {k: v[indices] for k, v in data.items()})  # [3, 2, ...]
    assert metrics["loss"].shape == (3,)
    assert int(blocked.step) == 3
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        blocked.params,
        state.params,
    )


def test_overrides_parse_types_and_reject_unknown_keys():
    config = apply_overrides(
        get_config("lstm_mnist"),
        ["hidden_size=16", "learning_rate=3e-4", "bidirectional=true", "optimizer=rmsprop"],
    )
    assert (config.hidden_size, config.learning_rate) == (16, 3e-4)
    assert config.bidirectional is True and config.optimizer == "rmsprop"
    with pytest.raises(ValueError, match="unknown config key 'hidden'"):
        apply_overrides(config, ["hidden=3"])
    with pytest.raises(ValueError, match="expected int"):
        apply_overrides(config, ["hidden_size=abc"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(config, ["hidden_size"])
    with pytest.raises(ValueError, match="unknown config"):
        get_config("nope")
    assert all(get_config(name).batch_size > 0 for name in NAMES)


def test_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="cell"):
        Model("transformer", 4, 2)
    with pytest.raises(ValueError, match="readout"):
        Model("lstm", 4, 2, readout="mean")
    with pytest.raises(ValueError, match="regression"):
        Model("lstm", 4, 2, task="regression")


def test_tf_adam_matches_tf_formula():
    # TF1/Keras: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); x -= lr_t m / (sqrt(v) + eps).
    tx = optimizers.make_optimizer("adam", 0.1, eps=0.01, eps_hat=True)
    params = jnp.array([1.0])
    opt_state = tx.init(params)
    m = v = 0.0
    for t, g in enumerate([0.5, -0.2, 0.05], start=1):
        updates, opt_state = tx.update(jnp.array([g]), opt_state, params)
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        lr_t = 0.1 * np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
        np.testing.assert_allclose(updates, [-lr_t * m / (np.sqrt(v) + 0.01)], rtol=1e-4)
