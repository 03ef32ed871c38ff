"""The three dropouts of ``jaxrnn.stacked`` against the NumPy reference, with read-off masks.

A dropout mask depends on the PRNG key and the stack's shapes, never on the values of the
parameters or inputs. So a *probe* run (the same stack, key and shapes, but transparent
parameters) shows each mask in its outputs: a probe cell computes
``h' = act(x @ w_in + h @ w_rec)`` with ``act`` odd and zero only at zero (``tanh``; the LSTM's
``tanh(tanh(.))``), so a unit reads exactly zero where a mask dropped everything that fed it.
The reference (``tests/_reference.py``) then runs real parameters with those masks scaled by
``1 / (1 - rate)``, and the library must give its numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import run as np_run
from conftest import random_params
from jax.test_util import check_grads

import jaxrnn
from jaxrnn.models import Model
from jaxrnn.training import steps

B, T, F = 4, 6, 3
LENGTHS = np.array([6, 0, 2, 4], np.int32)
BIG = 40.0  # saturates a gate: sigmoid(40) is 1 and sigmoid(-40) ~4e-18 in float32
TOL = dict(rtol=2e-5, atol=2e-6)
stacked = jax.jit(jaxrnn.stacked, static_argnums=0, static_argnames="time_major")


def _xs(seed=0, shape=(B, T, F)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def probe(cell, w_in, w_rec=None):
    """Parameters that make ``cell`` compute ``h' = act(x @ w_in + h @ w_rec)``.

    SimpleRNN (tanh): as written. LSTM: i = o = 1, f = 0 (BIG outweighs any forget_bias), the
    g block carries the map, so ``c' = tanh(...)`` and ``h' = tanh(c')``. GRU: r = 1, z = 0,
    so ``h' = n = tanh(...)``.
    """
    w_in = jnp.asarray(w_in, jnp.float32)
    size, hidden = w_in.shape
    w_rec = jnp.zeros((hidden, hidden)) if w_rec is None else jnp.asarray(w_rec, jnp.float32)
    zi, zh, zb = jnp.zeros((size, hidden)), jnp.zeros((hidden, hidden)), jnp.zeros(hidden)
    if isinstance(cell, jaxrnn.SimpleRNN):
        assert cell.activation == "tanh"
        return {"w_i": w_in, "w_h": w_rec, "b": zb}
    if isinstance(cell, jaxrnn.LSTM):
        bias = [zb + BIG, zb - BIG, zb, zb + BIG]
        return {
            "w_i": jnp.concatenate([zi, zi, w_in, zi], 1),
            "w_h": jnp.concatenate([zh, zh, w_rec, zh], 1),
            "b": jnp.concatenate(bias),
        }
    params = {
        "w_i": jnp.concatenate([zi, zi, w_in], 1),
        "w_h": jnp.concatenate([zh, zh, w_rec], 1),
        "b": jnp.concatenate([zb + BIG, zb - BIG, zb]),
    }
    if cell.reset_after:
        params["b_h"] = jnp.zeros(3 * hidden)
    return params


def kept(values):
    """Where a probe output is not zero (dropped units read 0, or ~1e-18 through a gate)."""
    return np.abs(np.asarray(values)) > 1e-9


def _multiplier(keep, rate):
    return np.where(keep, 1.0 / (1.0 - rate), 0.0)


def _valid(lengths, steps):
    return np.arange(steps)[None, :] < np.asarray(lengths)[:, None]


# --- dropout between layers -------------------------------------------------------------------


def test_between_layer_dropout_matches_reference():
    """A fresh mask for every element and step of the first layer's (bidirectional, merged)
    outputs, scaled by 1 / (1 - rate); nothing after the last layer."""
    rate = 0.4
    fw, bw, top = jaxrnn.LSTM(3), jaxrnn.GRU(3), jaxrnn.GRU(6)
    stack = jaxrnn.Stack((jaxrnn.Bidirectional(fw, bw), top), dropout=rate)
    real = [(random_params(fw, F, 1), random_params(bw, F, 2)), random_params(top, 6, 3)]
    key = jax.random.key(7)
    xs = _xs()

    # The probe's top layer passes its input through: tanh(dropped first-layer outputs).
    probe_params = [real[0], probe(top, np.eye(6))]
    seen = np.asarray(stacked(stack, probe_params, xs, LENGTHS, key=key)[0])
    below = np.asarray(jaxrnn.bidirectional(fw, bw, real[0], xs, LENGTHS)[0])
    valid = _valid(LENGTHS, T)
    assert kept(below)[valid].all()  # so every valid element shows its mask
    keep = kept(seen) & valid[..., None]
    mask = _multiplier(keep, rate)
    np.testing.assert_allclose(seen, np.tanh(below * mask), rtol=1e-5, atol=1e-6)  # the scale
    assert keep[valid].any() and not keep[valid].all()
    full = keep[0]  # the sequence of length T: its mask varies along time and features
    assert (full != full[:1]).any() and (full != full[:, :1]).any()
    assert (keep[3, :4] != keep[0, :4]).any()  # and between sequences

    ys, carries = stacked(stack, real, xs, LENGTHS, key=key)
    ref_fw, _ = np_run("lstm", real[0][0], xs, LENGTHS, hidden=3)
    ref_bw, _ = np_run("gru", real[0][1], xs, LENGTHS, reverse=True, hidden=3)
    below_ref = np.concatenate([ref_fw, ref_bw], -1)
    ref, ref_carry = np_run("gru", real[1], below_ref * mask, LENGTHS, hidden=6)
    np.testing.assert_allclose(ys, ref, **TOL)  # no mask on the last layer's outputs
    np.testing.assert_allclose(carries[1], ref_carry, **TOL)
    for b, n in enumerate(LENGTHS):
        assert (np.asarray(ys[b, n:]) == 0).all()


def test_dropout_follows_every_layer_but_the_last():
    cells = (jaxrnn.LSTM(4), jaxrnn.GRU(4), jaxrnn.SimpleRNN(4))
    stack = jaxrnn.Stack(cells, dropout=0.5)
    real = [random_params(c, n, i) for i, (c, n) in enumerate(zip(cells, (F, 4, 4), strict=True))]
    key, xs = jax.random.key(11), _xs(1)
    # Mask after layer 2: the top layer passes it through.
    after_2 = kept(stacked(stack, [*real[:2], probe(cells[2], np.eye(4))], xs, key=key)[0])
    # Masks after layers 1 and 2 together: layers 2 and 3 pass them through.
    through = [real[0], probe(cells[1], np.eye(4)), probe(cells[2], np.eye(4))]
    both = kept(stacked(stack, through, xs, key=key)[0])
    assert not after_2.all() and after_2.any()
    assert (after_2 & ~both).any()  # zeros that layer 2's mask does not explain: layer 1's
    assert not (both & ~after_2).any()
    # A single layer is the last one: a key changes nothing.
    single = jaxrnn.Stack(cells[:1], dropout=0.9)
    np.testing.assert_array_equal(
        stacked(single, real[:1], xs, LENGTHS, key=key)[0],
        stacked(single, real[:1], xs, LENGTHS)[0],
    )


# --- input dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("time_major", [False, True], ids=["batch_major", "time_major"])
def test_input_dropout_matches_reference(time_major):
    """One mask per sequence and feature on every layer's input, the same at every step.
    batch == time here, so a mask broadcast along the wrong axis gives wrong numbers, not an
    error."""
    rate, n = 0.3, 5
    first, second = jaxrnn.GRU(4), jaxrnn.LSTM(5)
    stack = jaxrnn.Stack((first, second), input_dropout=rate)
    key = jax.random.key(5)
    lengths = np.array([5, 0, 2, 4, 3], np.int32)
    layout = (lambda a: np.swapaxes(a, 0, 1)) if time_major else (lambda a: a)
    run = lambda p, x, k, n_: stacked(stack, p, x, n_, key=k, time_major=time_major)

    # Probe: unit j < 3 of layer 1 reads (x_j m_j + sum_i x_i m_i) / 4 and unit 3 the sum / 4,
    # so atanh(h_j) - atanh(h_3) = x_j m_j / 4; layer 2 passes layer 1's units through.
    x_probe = np.random.default_rng(2).uniform(0.5, 1.5, (n, n, F)).astype(np.float32)
    w_first = 0.25 * (np.eye(F, 4) + np.ones((F, 4)))
    probe_params = [probe(first, w_first), probe(second, np.eye(4, 5))]
    _, (h1, (_, h2)) = run(probe_params, layout(x_probe), key, None)
    z1 = np.arctanh(np.asarray(h1, np.float64))
    dropped_x = 4 * (z1[:, :F] - z1[:, F:])  # x_j m_j at the last step
    keep_1 = np.abs(dropped_x) > 1e-3
    np.testing.assert_allclose(dropped_x, x_probe[:, -1] * _multiplier(keep_1, rate), rtol=1e-4)
    assert kept(h1).all(), "a sequence lost every input feature: pick another key"
    keep_2 = kept(h2[:, :4])
    np.testing.assert_allclose(
        h2[:, :4], np.tanh(np.tanh(h1 * _multiplier(keep_2, rate))), rtol=1e-5, atol=1e-6
    )
    for keep in (keep_1, keep_2):  # layer 2's input is dropped too
        assert keep.any() and not keep.all()

    real = [random_params(first, F, 1), random_params(second, 4, 2)]
    xs = _xs(3, (n, n, F))
    ys, (c1, (c2_c, c2_h)) = run(real, layout(xs), key, lengths)
    dropped = xs * _multiplier(keep_1, rate)[:, None]
    ref_1, ref_c1 = np_run("gru", real[0], dropped, lengths, hidden=4)
    ref_2, (ref_c, ref_h) = np_run(
        "lstm", real[1], ref_1 * _multiplier(keep_2, rate)[:, None], lengths, hidden=5
    )
    np.testing.assert_allclose(layout(np.asarray(ys)), ref_2, **TOL)
    for got, want in ((c1, ref_c1), (c2_c, ref_c), (c2_h, ref_h)):
        np.testing.assert_allclose(got, want, **TOL)

    # A dropped feature has exactly zero gradient at every step.
    grad = jax.grad(lambda x: jnp.sum(run(real, x, key, lengths)[0] ** 2))(layout(xs))
    grad = layout(np.asarray(grad))
    zero = (grad == 0).all(axis=1)  # [batch, feature]
    has_steps = lengths > 0
    np.testing.assert_array_equal(zero[has_steps], ~keep_1[has_steps])


# --- recurrent dropout -----------------------------------------------------------------------


@pytest.mark.parametrize("reset_after", [True, False], ids=["gru", "gru_cho"])
def test_recurrent_dropout_matches_reference(reset_after):
    """On h where it enters the recurrent weights: the LSTM's c and the GRU's z * h term see
    the unmasked state; each direction of a bidirectional layer has its own mask."""
    rate = 0.4
    bottom = jaxrnn.LSTM(4, forget_bias=1.0)
    fw, bw = jaxrnn.GRU(4, reset_after=reset_after), jaxrnn.SimpleRNN(4)
    stack = jaxrnn.Stack((bottom, jaxrnn.Bidirectional(fw, bw)), recurrent_dropout=rate)
    key = jax.random.key(3)
    eye, spread = np.eye(4), 0.5 * np.ones((F, 4))

    # Probe 1: the bottom layer is fed at step 0 only; a unit is still non-zero at the last
    # step iff its recurrent multiplier is not 0 (h_t = tanh(tanh(m * h_{t-1}))).
    pulse = np.zeros((B, T, F), np.float32)
    pulse[:, 0] = 1.0
    p_bottom = probe(bottom, spread, eye)
    p_top = (probe(fw, eye, eye), probe(bw, eye, eye))
    carries = stacked(stack, [p_bottom, p_top], pulse, key=key)[1]
    keep_bottom = kept(carries[0][1])

    # Probe 2: the bottom layer passes steps 0 and T-1 (w_rec = 0, zeros between); the
    # forward direction's output at step 1 and the backward one's at step T-2 are each
    # tanh(m * h) of the step before.
    ends = np.zeros((B, T, F), np.float32)
    ends[:, [0, T - 1]] = 1.0
    ys = stacked(stack, [probe(bottom, spread), p_top], ends, key=key)[0]
    keep_fw, keep_bw = kept(ys[:, 1, :4]), kept(ys[:, T - 2, 4:])
    for keep in (keep_bottom, keep_fw, keep_bw):
        assert keep.any() and not keep.all()
    assert (keep_fw != keep_bw).any()  # separate masks for the two directions

    xs = _xs(4)
    real = [random_params(bottom, F, 1), (random_params(fw, 4, 2), random_params(bw, 4, 3))]
    ys, carries = stacked(stack, real, xs, LENGTHS, key=key)
    m_bottom, m_fw, m_bw = (_multiplier(k, rate) for k in (keep_bottom, keep_fw, keep_bw))
    ref_1, (ref_c, ref_h) = np_run(
        "lstm", real[0], xs, LENGTHS, rec_mask=m_bottom, hidden=4, forget_bias=1.0
    )
    gru = {"hidden": 4, "reset_after": reset_after}
    ref_fw, ref_cfw = np_run("gru", real[1][0], ref_1, LENGTHS, rec_mask=m_fw, **gru)
    ref_bw, ref_cbw = np_run(
        "rnn", real[1][1], ref_1, LENGTHS, reverse=True, rec_mask=m_bw, hidden=4
    )
    np.testing.assert_allclose(ys, np.concatenate([ref_fw, ref_bw], -1), **TOL)
    (c, h), (c_fw, c_bw) = carries
    for got, want in ((c, ref_c), (h, ref_h), (c_fw, ref_cfw), (c_bw, ref_cbw)):
        np.testing.assert_allclose(got, want, **TOL)


# --- gradients, statistics, evaluation -------------------------------------------------------


def test_gradients_through_every_dropout():
    layers = (
        jaxrnn.Bidirectional(jaxrnn.LSTM(2), jaxrnn.GRU(2)),
        jaxrnn.GRU(2, reset_after=False),
    )
    stack = jaxrnn.Stack(layers, dropout=0.3, input_dropout=0.2, recurrent_dropout=0.4)
    key = jax.random.key(2)
    with jax.enable_x64(True):
        f64 = jnp.float64
        pair = (
            random_params(layers[0].forward, F, 1, f64),
            random_params(layers[0].backward, F, 2, f64),
        )
        params = [pair, random_params(layers[1], 4, 3, f64)]
        xs = jnp.asarray(_xs(5), f64)
        run = jax.jit(lambda p, x: jaxrnn.stacked(stack, p, x, LENGTHS, key=key)[0])
        assert not np.allclose(run(params, xs), stacked(stack, params, xs, LENGTHS)[0])
        check_grads(run, (params, xs), order=1, modes=("rev",))


def _within_sampling_error(keep, rate, sigmas=4.0):
    n = keep.size
    spread = sigmas * np.sqrt(rate * (1 - rate) / n)
    assert abs(keep.mean() - (1 - rate)) < spread, (keep.mean(), 1 - rate, spread)


@pytest.mark.parametrize("rate", [0.25, 0.7])
def test_keep_rates_within_sampling_error(rate):
    """Each dropout keeps 1 - rate of its units (4 sigmas over 4 keys), independently of the
    step and of the neighbouring unit for the between-layer masks."""
    hidden, batch = 32, 32
    cell = jaxrnn.SimpleRNN(hidden)
    ones = np.ones((batch, 16, 1), np.float32)
    keys = jax.random.split(jax.random.key(0), 4)

    between = jaxrnn.Stack((cell, cell), dropout=rate)
    through = [probe(cell, 0.5 * np.ones((1, hidden))), probe(cell, np.eye(hidden))]
    run = jax.jit(lambda k: stacked(between, through, ones, key=k)[0])
    masks = np.stack([kept(run(k)) for k in keys])  # [keys, batch, time, hidden]
    _within_sampling_error(masks, rate)
    pairs_in_time = masks[:, :, 1:] & masks[:, :, :-1]
    pairs_in_units = masks[..., 1:] & masks[..., :-1]
    for pairs in (pairs_in_time, pairs_in_units):
        _within_sampling_error(pairs, 1 - (1 - rate) ** 2, sigmas=6.0)

    wide = np.ones((256, 2, hidden), np.float32)
    inputs = jaxrnn.Stack((cell,), input_dropout=rate)
    run = jax.jit(lambda k: stacked(inputs, [probe(cell, np.eye(hidden))], wide, key=k))
    masks = np.stack([kept(run(k)[0][:, 0]) for k in keys])
    _within_sampling_error(masks, rate)
    assert (masks[0] != masks[1]).any()  # a new key, a new mask

    pulse = np.zeros((256, 2, 1), np.float32)
    pulse[:, 0] = 1.0
    recurrent = jaxrnn.Stack((cell,), recurrent_dropout=rate)
    loop = [probe(cell, 0.5 * np.ones((1, hidden)), np.eye(hidden))]
    run = jax.jit(lambda k: stacked(recurrent, loop, pulse, key=k)[0])
    masks = np.stack([kept(run(k)[:, 1]) for k in keys])
    _within_sampling_error(masks, rate)


def test_dropout_is_off_without_a_key_and_in_evaluation():
    """Model and eval step: no key (evaluation) gives exactly the numbers of the same model
    without dropout; a Model of 2 layers with a key is its stack's output."""
    rates = {"dropout": 0.5, "input_dropout": 0.3, "recurrent_dropout": 0.3}
    model = Model("lstm", 6, 3, num_layers=2, **rates)
    plain = Model("lstm", 6, 3, num_layers=2)
    params = model.init(jax.random.key(0), F)
    xs = _xs(6)
    labels = np.array([0, 1, 2, 1], np.int32)
    batch = {"inputs": xs, "lengths": LENGTHS, "labels": labels}
    apply, apply_plain = jax.jit(model.apply), jax.jit(plain.apply)
    np.testing.assert_array_equal(apply(params, xs, LENGTHS), apply_plain(params, xs, LENGTHS))
    np.testing.assert_array_equal(
        steps.make_eval_step(model)(params, batch), steps.make_eval_step(plain)(params, batch)
    )

    key = jax.random.key(1)
    trained = apply(params, xs, LENGTHS, key)
    assert not np.allclose(trained, apply_plain(params, xs, LENGTHS))
    ys, _ = stacked(model.stack, params["rnn"], xs, LENGTHS, key=key)
    last = ys[np.arange(B), np.maximum(LENGTHS - 1, 0)]
    np.testing.assert_allclose(
        trained, last @ params["head"]["w"] + params["head"]["b"], rtol=1e-6, atol=1e-7
    )
    assert len(params["rnn"]) == 2 and params["rnn"][1]["w_i"].shape == (6, 24)
