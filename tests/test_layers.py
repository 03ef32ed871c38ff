"""Bidirectional runs, stacks with dropout, and the mask helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import run as np_run
from conftest import random_params
from jax.test_util import check_grads

import jaxrnn

B, T, F = 4, 6, 3
LENGTHS = np.array([6, 0, 2, 4], np.int32)


def _xs(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, F)).astype(np.float32)


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_matches_numpy(static, masked):
    fw, bw = jaxrnn.LSTM(4, forget_bias=1.0), jaxrnn.GRU(3)
    params = (random_params(fw, F, 1), random_params(bw, F, 2))
    xs, lengths = _xs(), (LENGTHS if masked else None)
    ys, (c_fw, c_bw) = jaxrnn.bidirectional(fw, bw, params, xs, lengths, static=static)
    ref_fw, ref_cfw = np_run("lstm", params[0], xs, lengths, hidden=4, forget_bias=1.0)
    ref_bw, ref_cbw = np_run("gru", params[1], xs, lengths, reverse=True, hidden=3)
    np.testing.assert_allclose(ys, np.concatenate([ref_fw, ref_bw], -1), rtol=2e-5, atol=2e-6)
    for got, want in zip(c_fw, ref_cfw, strict=True):  # the LSTM's c and h
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(c_bw, ref_cbw, rtol=2e-5, atol=2e-6)
    if masked:
        for b, n in enumerate(LENGTHS):
            assert not np.any(np.asarray(ys[b, n:]))


@pytest.mark.parametrize("unroll", [2, True])
def test_bidirectional_initial_carry_and_unroll(unroll):
    """Each direction starts from its own initial carry (the backward one at each sequence's
    last valid step); a length-0 sequence returns both initial carries unchanged."""
    fw, bw = jaxrnn.LSTM(4), jaxrnn.GRU(3, reset_after=False)
    params = (random_params(fw, F, 3), random_params(bw, F, 4))
    rng = np.random.default_rng(5)
    carry_fw = tuple(rng.normal(size=(B, 4)).astype(np.float32) for _ in range(2))
    carry_bw = rng.normal(size=(B, 3)).astype(np.float32)
    xs = _xs(6)
    run = jax.jit(
        lambda p, x, c: jaxrnn.bidirectional(
            fw, bw, p, x, LENGTHS, initial_carry=c, unroll=unroll, merge=None
        )
    )
    (ys_fw, ys_bw), (out_fw, out_bw) = run(params, xs, (carry_fw, carry_bw))
    ref_fw, ref_cfw = np_run(
        "lstm", params[0], xs, LENGTHS, carry0=list(zip(*carry_fw, strict=True)), hidden=4
    )
    ref_bw, ref_cbw = np_run(
        "gru", params[1], xs, LENGTHS, reverse=True, carry0=carry_bw, hidden=3, reset_after=False
    )
    for got, want in ((ys_fw, ref_fw), (ys_bw, ref_bw), (out_bw, ref_cbw)):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    for got, want in zip(out_fw, ref_cfw, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    empty = int(np.flatnonzero(LENGTHS == 0)[0])
    np.testing.assert_array_equal(out_fw[0][empty], carry_fw[0][empty])
    np.testing.assert_array_equal(out_bw[empty], carry_bw[empty])


def test_backward_direction_reverses_only_the_valid_prefix():
    """The backward output at t depends on steps t..len-1 of the sequence only, never padding."""
    cell = jaxrnn.SimpleRNN(3)
    params = (random_params(cell, F, 1), random_params(cell, F, 2))
    xs = _xs(1)
    garbage = xs.copy()
    for b, n in enumerate(LENGTHS):
        garbage[b, n:] = 1e3
    a, _ = jaxrnn.bidirectional(cell, cell, params, xs, LENGTHS, merge=None)
    g, _ = jaxrnn.bidirectional(cell, cell, params, garbage, LENGTHS, merge=None)
    np.testing.assert_array_equal(a[1], g[1])
    # backward output at the last valid step has read exactly one input
    one_step, _ = jaxrnn.rnn(cell, params[1], xs[2:3, 1:2])
    np.testing.assert_allclose(a[1][2, 1], one_step[0, 0], rtol=1e-6)


@pytest.mark.parametrize(
    "merge, combine",
    [("sum", np.add), ("mul", np.multiply), ("ave", lambda a, b: (a + b) / 2)],
)
def test_merge_modes(merge, combine):
    cell = jaxrnn.LSTM(4)
    params = (cell.init(jax.random.key(0), F), cell.init(jax.random.key(1), F))
    fw, bw = jaxrnn.bidirectional(cell, cell, params, _xs(), LENGTHS, merge=None)[0]
    ys, _ = jaxrnn.bidirectional(cell, cell, params, _xs(), LENGTHS, merge=merge)
    np.testing.assert_allclose(ys, combine(np.asarray(fw), np.asarray(bw)), rtol=1e-6)


def test_bidirectional_time_major_and_gradients():
    cell = jaxrnn.GRU(3, reset_after=False)
    with jax.enable_x64(True):
        params = (random_params(cell, F, 1, jnp.float64), random_params(cell, F, 2, jnp.float64))
        xs = jnp.asarray(_xs(2), jnp.float64)
        bf, _ = jaxrnn.bidirectional(cell, cell, params, xs, LENGTHS)
        tm, _ = jaxrnn.bidirectional(
            cell, cell, params, jnp.swapaxes(xs, 0, 1), LENGTHS, time_major=True
        )
        np.testing.assert_array_equal(bf, np.swapaxes(tm, 0, 1))
        check_grads(
            lambda p, x: jaxrnn.bidirectional(cell, cell, p, x, LENGTHS),
            (params, xs),
            order=1,
            modes=("rev",),
        )


def test_bidirectional_bad_input():
    cell = jaxrnn.LSTM(2)
    params = cell.init(jax.random.key(0), F)
    with pytest.raises(ValueError, match="merge must be one of"):
        jaxrnn.bidirectional(cell, cell, (params, params), _xs(), merge="max")
    with pytest.raises(TypeError, match=r"params must be a pair \(params_fw, params_bw\)"):
        jaxrnn.bidirectional(cell, cell, params, _xs())


# --- stacks ---------------------------------------------------------------------------------

STACK = jaxrnn.Stack(
    (
        jaxrnn.LSTM(4),
        jaxrnn.Bidirectional(jaxrnn.GRU(3), jaxrnn.SimpleRNN(3), "concat"),
        jaxrnn.SimpleRNN(2),
    ),
    dropout=0.3,
    input_dropout=0.2,
    recurrent_dropout=0.4,
)


def test_stack_without_key_is_the_composition_of_its_layers():
    params = STACK.init(jax.random.key(0), F)
    xs = _xs(3)
    ys, carries = jaxrnn.stacked(STACK, params, xs, LENGTHS)
    h1, c1 = jaxrnn.rnn(STACK.layers[0], params[0], xs, LENGTHS)
    h2, c2 = jaxrnn.bidirectional(jaxrnn.GRU(3), jaxrnn.SimpleRNN(3), params[1], h1, LENGTHS)
    h3, c3 = jaxrnn.rnn(STACK.layers[2], params[2], h2, LENGTHS)
    np.testing.assert_allclose(ys, h3, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(carries), jax.tree.leaves([c1, c2, c3]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert STACK.output_size == 2 and params[1][0]["w_i"].shape == (4, 9)
    static, _ = jaxrnn.stacked(STACK, params, xs, LENGTHS, static=True)
    np.testing.assert_allclose(static, ys, rtol=1e-5, atol=1e-6)


def test_stack_dropout_is_keyed_reproducible_and_respects_padding():
    params = STACK.init(jax.random.key(0), F)
    xs = _xs(4)
    run = jax.jit(lambda p, x, k: jaxrnn.stacked(STACK, p, x, LENGTHS, key=k)[0])
    a, b = run(params, xs, jax.random.key(1)), run(params, xs, jax.random.key(1))
    c = run(params, xs, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    for b_, n in enumerate(LENGTHS):
        assert not np.any(np.asarray(a[b_, n:]))


def test_input_dropout_mask_is_the_same_at_every_step():
    """A memoryless layer fed a constant input gives a constant output iff the mask is fixed."""
    cell = jaxrnn.SimpleRNN(8)
    stack = jaxrnn.Stack((cell,), input_dropout=0.5)
    params = [dict(cell.init(jax.random.key(0), F), w_h=jnp.zeros((8, 8)))]
    xs = np.ones((B, T, F), np.float32)
    ys, _ = jaxrnn.stacked(stack, params, xs, key=jax.random.key(3))
    np.testing.assert_allclose(ys, np.broadcast_to(ys[:, :1], ys.shape), rtol=1e-6)
    clean, _ = jaxrnn.stacked(stack, params, xs)
    assert not np.allclose(ys, clean)  # some features were dropped


def test_recurrent_dropout_mask_is_the_same_at_every_step():
    """relu(1 + m * h): with a fixed per-unit multiplier m, h_t follows 1, 1+m, 1+m+m^2, ..."""
    hidden, rate = 16, 0.5
    cell = jaxrnn.SimpleRNN(hidden, activation="relu")
    stack = jaxrnn.Stack((cell,), recurrent_dropout=rate)
    params = [{"w_i": jnp.ones((1, hidden)), "w_h": jnp.eye(hidden), "b": jnp.zeros(hidden)}]
    xs = np.ones((B, T, 1), np.float32)
    ys = np.asarray(jaxrnn.stacked(stack, params, xs, key=jax.random.key(5))[0])
    fits = [
        np.all(np.isclose(ys, np.cumsum(m ** np.arange(T))[None, :, None], rtol=1e-5), axis=1)
        for m in (0.0, 1.0 / (1.0 - rate))  # h_t = 1 + m h_{t-1}
    ]
    assert np.all(fits[0] | fits[1]), "a unit's multiplier changed between steps"
    assert fits[0].any() and fits[1].any(), "expected both dropped and kept units"


@pytest.mark.parametrize(
    "merge, combine",
    [("sum", np.add), ("mul", np.multiply), ("ave", lambda a, b: (a + b) / 2)],
)
def test_stack_with_merged_bidirectional_layer(merge, combine):
    fw, bw, top = jaxrnn.LSTM(4), jaxrnn.GRU(4), jaxrnn.SimpleRNN(2)
    stack = jaxrnn.Stack((jaxrnn.Bidirectional(fw, bw, merge), top))
    params = [(random_params(fw, F, 1), random_params(bw, F, 2)), random_params(top, 4, 3)]
    assert stack.output_size == 2 and stack.layers[0].output_size == 4
    assert stack.init(jax.random.key(0), F)[1]["w_i"].shape == (4, 2)
    xs = _xs(7)
    ys, _ = jaxrnn.stacked(stack, params, xs, LENGTHS)
    ref_fw, _ = np_run("lstm", params[0][0], xs, LENGTHS, hidden=4)
    ref_bw, _ = np_run("gru", params[0][1], xs, LENGTHS, reverse=True, hidden=4)
    ref, _ = np_run("rnn", params[1], combine(ref_fw, ref_bw), LENGTHS, hidden=2)
    np.testing.assert_allclose(ys, ref, rtol=2e-5, atol=2e-6)


def test_stack_time_major_equals_batch_major():
    """Also under a key: the input and recurrent masks are per sequence, in either layout."""
    stack = jaxrnn.Stack(STACK.layers, input_dropout=0.3, recurrent_dropout=0.3)
    params = stack.init(jax.random.key(0), F)
    xs = _xs(8)
    run = jax.jit(
        lambda p, x, k, tm: jaxrnn.stacked(stack, p, x, LENGTHS, key=k, time_major=tm),
        static_argnums=3,
    )
    for key in (None, jax.random.key(4)):
        bm_ys, bm_carries = run(params, xs, key, False)
        tm_ys, tm_carries = run(params, np.swapaxes(xs, 0, 1), key, True)
        np.testing.assert_allclose(np.swapaxes(tm_ys, 0, 1), bm_ys, rtol=1e-6, atol=1e-7)
        for got, want in zip(jax.tree.leaves(tm_carries), jax.tree.leaves(bm_carries), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_stack_bad_input():
    with pytest.raises(ValueError, match="Bidirectional in a Stack needs a merge mode"):
        jaxrnn.Bidirectional(jaxrnn.LSTM(2), jaxrnn.LSTM(2), merge=None)
    with pytest.raises(ValueError, match=r"dropout must lie in \[0, 1\)"):
        jaxrnn.Stack((jaxrnn.LSTM(2),), dropout=1.0)
    with pytest.raises(TypeError, match="layers must be a non-empty tuple"):
        jaxrnn.Stack([jaxrnn.LSTM(2)])
    with pytest.raises(ValueError, match="params has 1 entries, stack has 3"):
        jaxrnn.stacked(STACK, [None], _xs())


# --- mask helpers -----------------------------------------------------------------------------


def test_lengths_from_mask_and_padding():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]], bool)
    np.testing.assert_array_equal(jaxrnn.lengths_from_mask(mask), [2, 4, 0, 1])
    np.testing.assert_array_equal(jaxrnn.lengths_from_mask(mask.T, time_major=True), [2, 4, 0, 1])
    xs = np.random.default_rng(0).uniform(size=(3, 5, 1)).astype(np.float32)
    xs[0, 3:] = -1
    xs[2, :] = -1
    np.testing.assert_array_equal(jaxrnn.lengths_from_padding(xs, -1.0), [3, 5, 0])
    with pytest.raises(TypeError, match="mask must be boolean"):
        jaxrnn.lengths_from_mask(mask.astype(np.int32))
    with pytest.raises(ValueError, match=r"xs must have shape \[batch, time, features\]"):
        jaxrnn.lengths_from_padding(xs[0])
    np.testing.assert_array_equal(
        jaxrnn.mask_from_lengths(np.array([2, 0]), 3), [[True, True, False], [False, False, False]]
    )


def test_reverse_sequence_matches_loop_and_is_an_involution():
    xs = np.arange(B * T * 2, dtype=np.float32).reshape(B, T, 2)
    out = np.asarray(jaxrnn.reverse_sequence(xs, LENGTHS))
    want = xs.copy()
    for b, n in enumerate(LENGTHS):
        want[b, :n] = xs[b, :n][::-1]
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(jaxrnn.reverse_sequence(out, LENGTHS), xs)
    tm = jaxrnn.reverse_sequence(np.swapaxes(xs, 0, 1), LENGTHS, time_major=True)
    np.testing.assert_array_equal(np.swapaxes(tm, 0, 1), want)
