"""Per-step resets (``rnn(..., resets=)``) against a NumPy reference that runs each segment
alone, for every implementation, direction, length and initial carry; gradients that stop at
a reset; the layers, the NNX modules and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _reference import run as np_run
from conftest import CELL_CASES, random_params
from jax.test_util import check_grads

import jaxrnn
from jaxrnn import _native

B, T, F = 4, 9, 3
LENGTHS = np.array([9, 6, 0, 4])
# Row 0: resets inside and at t=0; row 1: one past its length (no effect) and one inside;
# row 2 (length 0): one at t=0 (no effect); row 3: adjacent resets and one at its last step.
RESETS = np.zeros((B, T), bool)
RESETS[0, [0, 3, 7]] = True
RESETS[1, [2, 7]] = True
RESETS[2, 0] = True
RESETS[3, [1, 2, 3]] = True


def _segments(resets_row, length):
    """``[start, end)`` of each segment of a valid prefix, and whether the first one starts
    from a reset (not from the initial carry)."""
    starts = [t for t in range(1, length) if resets_row[t]]
    bounds = [0, *starts, length]
    return list(zip(bounds[:-1], bounds[1:], strict=True)), bool(length and resets_row[0])


def _zero_carry(kind, hidden):
    zeros = np.zeros(hidden)
    return (zeros, zeros) if kind == "lstm" else zeros


def _row_carry(kind, carry, b):
    if carry is None:
        return None
    return (carry[0][b], carry[1][b]) if kind == "lstm" else carry[b]


def reference(kind, params, xs, resets, lengths=None, *, reverse=False, carry0=None, **hyper):
    """Each segment run alone by the NumPy reference: forwards, the first one from the
    initial carry (unless it starts with a reset) and the others from zeros; backwards, the
    last one from the initial carry and the others from zeros."""
    xs = np.asarray(xs, np.float64)
    hidden = hyper["hidden"]
    lengths = np.full(B, T) if lengths is None else lengths
    ys = np.zeros((B, T, hidden))
    finals = []
    for b in range(B):
        initial = _row_carry(kind, carry0, b)
        if initial is None:
            initial = _zero_carry(kind, hidden)
        segments, first_reset = _segments(resets[b], lengths[b])
        final = initial
        order = list(reversed(segments)) if reverse else segments
        for index, (start, end) in enumerate(order):
            continues = index == 0 and not (first_reset and not reverse)
            start_carry = initial if continues else _zero_carry(kind, hidden)
            row0 = [start_carry]
            seg_ys, seg_final = np_run(
                kind, params, xs[b : b + 1, start:end], reverse=reverse, carry0=row0, **hyper
            )
            ys[b, start:end] = seg_ys[0]
            final = (seg_final[0][0], seg_final[1][0]) if kind == "lstm" else seg_final[0]
        finals.append(final)
    if kind == "lstm":
        return ys, (np.stack([c for c, _ in finals]), np.stack([h for _, h in finals]))
    return ys, np.stack(finals)


def _inputs(cell, seed=0):
    rng = np.random.default_rng(seed)
    xs = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
    carry = jax.tree.map(
        lambda leaf: jnp.asarray(rng.normal(size=leaf.shape), jnp.float32),
        cell.initial_carry(B),
    )
    return random_params(cell, F, seed=seed), xs, carry


def _implementations(cell):
    out = ["scan", "static"]
    if jaxrnn.drivers.has_fused_path(cell):
        out.append("fused")
        if _native.unavailable_reason() is None and cell.has_kernels():
            out.append("kernel")
    return out


def _run(cell, params, xs, how, **kwargs):
    if how == "static":
        return jaxrnn.static_rnn(cell, params, xs, **kwargs)
    return jaxrnn.rnn(cell, params, xs, implementation=how, **kwargs)


# Every implementation of every cell, but the cases whose difference from another one does
# not touch the loop (the relu SimpleRNN, the constant forget bias), and static_rnn only for
# the LSTM: static_rnn runs the scan's step function in a Python loop.
_CASES = [case for case in CELL_CASES if case[0] not in ("rnn_relu", "lstm_fb1")]
ALL = [
    (case, how)
    for case in _CASES
    for how in _implementations(case[1])
    if how != "static" or case[0] == "lstm"
]


@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize(("case", "how"), ALL, ids=[f"{c[0]}-{h}" for c, h in ALL])
def test_resets_match_segments_run_alone(case, how, reverse, with_lengths):
    _, cell, kind, hyper = case
    hyper = {"hidden": cell.hidden_size, **hyper}
    params, xs, carry = _inputs(cell)
    lengths = LENGTHS if with_lengths else None
    carry0 = carry if with_lengths else None  # the initial carry with the lengths case
    ys, final = _run(
        cell,
        params,
        xs,
        how,
        lengths=None if lengths is None else jnp.asarray(lengths),
        resets=jnp.asarray(RESETS),
        reverse=reverse,
        initial_carry=carry0,
    )
    np_carry0 = None if carry0 is None else jax.tree.map(np.asarray, carry0)
    want_ys, want_final = reference(
        kind, params, xs, RESETS, lengths, reverse=reverse, carry0=np_carry0, **hyper
    )
    np.testing.assert_allclose(ys, want_ys, rtol=2e-5, atol=2e-6)
    for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(want_final), strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(("case", "how"), ALL, ids=[f"{c[0]}-{h}" for c, h in ALL])
def test_resets_time_major_jit_and_vmap(case, how):
    _, cell, kind, hyper = case
    hyper = {"hidden": cell.hidden_size, **hyper}
    params, xs, carry = _inputs(cell, seed=1)
    lengths = jnp.asarray(LENGTHS)
    want = _run(cell, params, xs, how, lengths=lengths, resets=jnp.asarray(RESETS))

    @jax.jit
    def time_major(params, xs, resets):
        ys, final = _run(
            cell,
            params,
            jnp.swapaxes(xs, 0, 1),
            how,
            lengths=lengths,
            resets=resets.T,
            time_major=True,
        )
        return jnp.swapaxes(ys, 0, 1), final

    got = time_major(params, xs, jnp.asarray(RESETS))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)

    # vmap over a leading axis of independent batches: each slice as its own call.
    stack = jnp.stack([xs, xs[::-1]])
    resets = jnp.stack([jnp.asarray(RESETS), jnp.asarray(RESETS[::-1])])

    def one(x, r):
        return _run(cell, params, x, how, lengths=lengths, resets=r)[0]

    mapped = jax.vmap(one)(stack, resets)
    for k in range(2):
        np.testing.assert_allclose(mapped[k], one(stack[k], resets[k]), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(("case", "how"), ALL, ids=[f"{c[0]}-{h}" for c, h in ALL])
def test_all_false_resets_are_no_resets(case, how):
    cell = case[1]
    params, xs, carry = _inputs(cell, seed=2)
    for reverse in (False, True):
        kwargs = {"lengths": jnp.asarray(LENGTHS), "initial_carry": carry, "reverse": reverse}
        plain = _run(cell, params, xs, how, **kwargs)
        none = _run(cell, params, xs, how, resets=jnp.zeros((B, T), bool), **kwargs)
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(none), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("case", "how"), ALL, ids=[f"{c[0]}-{h}" for c, h in ALL])
def test_no_gradient_crosses_a_reset(case, how):
    """Forwards, outputs at and after a reset do not depend on the inputs or the carry
    before it; backwards, outputs before a reset do not depend on what follows it."""
    cell = case[1]
    kind_relu = getattr(cell, "activation", None) == "relu"  # dead units have no gradient
    params, xs, carry = _inputs(cell, seed=3)
    resets = np.zeros((B, T), bool)
    resets[:, 5] = True

    def loss(xs, carry, reverse):
        ys, _ = _run(
            cell, params, xs, how, resets=jnp.asarray(resets), initial_carry=carry, reverse=reverse
        )
        part = ys[:, :5] if reverse else ys[:, 5:]
        return jnp.sum(jnp.sin(part))

    d_xs, d_carry = jax.grad(loss, argnums=(0, 1))(xs, carry, False)
    assert np.all(np.asarray(d_xs[:, :5]) == 0.0)
    assert all(np.all(np.asarray(leaf) == 0.0) for leaf in jax.tree.leaves(d_carry))
    assert np.abs(np.asarray(d_xs[:, 5:])).sum(axis=-1).min() > 0 or kind_relu  # after it
    assert np.abs(np.asarray(d_xs[:, 5:])).sum() > 0
    d_xs, d_carry = jax.grad(loss, argnums=(0, 1))(xs, carry, True)
    assert np.all(np.asarray(d_xs[:, 5:]) == 0.0)
    assert all(np.all(np.asarray(leaf) == 0.0) for leaf in jax.tree.leaves(d_carry))
    assert np.abs(np.asarray(d_xs[:, :5])).sum(axis=-1).min() > 0 or kind_relu
    assert np.abs(np.asarray(d_xs[:, :5])).sum() > 0


@pytest.mark.parametrize(("case", "how"), ALL, ids=[f"{c[0]}-{h}" for c, h in ALL])
def test_gradients_with_resets_agree(case, how):
    """Every implementation's gradient equals the scan's, which ``check_grads`` checks
    against finite differences (float64, forward and reverse mode)."""
    cell = case[1]
    params, xs, carry = _inputs(cell, seed=4)
    lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(RESETS)

    def loss(params, xs, carry, how):
        ys, final = _run(
            cell, params, xs, how, lengths=lengths, resets=resets, initial_carry=carry, reverse=True
        )
        return jnp.sum(ys**2) + sum(jnp.sum(jnp.cos(leaf)) for leaf in jax.tree.leaves(final))

    want = jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry, "scan")
    got = jax.grad(loss, argnums=(0, 1, 2))(params, xs, carry, how)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    if how == "scan" and case[0] in ("lstm", "gru"):
        with jax.enable_x64(True):
            p64, x64, c64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, xs, carry))
            check_grads(
                lambda p, x: loss(p, x, c64, "scan"), (p64, x64), order=1, modes=("fwd", "rev")
            )


@pytest.mark.parametrize("implementation", [None, "scan"])
def test_bidirectional_resets(implementation):
    cell = jaxrnn.GRU(5)
    params = (random_params(cell, F, seed=5), random_params(cell, F, seed=6))
    xs = _inputs(cell, seed=5)[1]
    lengths, resets = jnp.asarray(LENGTHS), jnp.asarray(RESETS)
    ys, (fw, bw) = jaxrnn.bidirectional(
        cell, cell, params, xs, lengths, resets=resets, implementation=implementation
    )
    hyper = {"hidden": 5, "reset_after": True}
    ys_fw, fw_want = reference("gru", params[0], xs, RESETS, LENGTHS, **hyper)
    ys_bw, bw_want = reference("gru", params[1], xs, RESETS, LENGTHS, reverse=True, **hyper)
    np.testing.assert_allclose(ys, np.concatenate([ys_fw, ys_bw], -1), rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(fw, fw_want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(bw, bw_want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("implementation", [None, "scan"])
def test_stacked_resets_and_initial_carries(implementation):
    """Two layers, the second bidirectional: each layer's segments restart from zeros, the
    first segment continues the given carries; the returned carries continue a stream."""
    lstm, gru = jaxrnn.LSTM(5), jaxrnn.GRU(5)
    stack = jaxrnn.Stack((lstm, jaxrnn.Bidirectional(gru, gru)))
    params = stack.init(jax.random.key(7), F)
    params[0] = random_params(lstm, F, seed=7)
    xs, lengths = _inputs(lstm, seed=7)[1], jnp.asarray(LENGTHS)
    rng = np.random.default_rng(7)
    carry0 = [
        tuple(jnp.asarray(rng.normal(size=(B, 5)), jnp.float32) for _ in range(2)),
        tuple(jnp.asarray(rng.normal(size=(B, 5)), jnp.float32) for _ in range(2)),
    ]
    ys, carries = jaxrnn.stacked(
        stack,
        params,
        xs,
        lengths,
        resets=jnp.asarray(RESETS),
        initial_carry=carry0,
        implementation=implementation,
    )
    np0 = jax.tree.map(np.asarray, carry0)
    h1, c1 = reference("lstm", params[0], xs, RESETS, LENGTHS, carry0=np0[0], hidden=5)
    hyper = {"hidden": 5, "reset_after": True}
    fw, fw_c = reference("gru", params[1][0], h1, RESETS, LENGTHS, carry0=np0[1][0], **hyper)
    bw, bw_c = reference(
        "gru", params[1][1], h1, RESETS, LENGTHS, reverse=True, carry0=np0[1][1], **hyper
    )
    np.testing.assert_allclose(ys, np.concatenate([fw, bw], -1), rtol=5e-5, atol=5e-6)
    for got, want in zip(jax.tree.leaves(carries), [*c1, fw_c, bw_c], strict=True):
        np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-6)
    with pytest.raises(ValueError, match="one carry per layer"):
        jaxrnn.stacked(stack, params, xs, initial_carry=carry0[:1])


def test_nnx_modules_take_resets():
    from flax import nnx

    from jaxrnn import nn

    cell = jaxrnn.LSTM(5)
    xs, lengths, resets = _inputs(cell)[1], jnp.asarray(LENGTHS), jnp.asarray(RESETS)
    layer = nn.RNN(cell, F, rngs=nnx.Rngs(0), return_carry=True)
    want = jaxrnn.rnn(cell, layer.params(), xs, lengths, resets=resets)
    got = layer(xs, lengths, resets=resets)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)
    bi = nn.Bidirectional(cell, cell, F, rngs=nnx.Rngs(1))
    want = jaxrnn.bidirectional(cell, cell, bi.params(), xs, lengths, resets=resets)[0]
    np.testing.assert_array_equal(bi(xs, lengths, resets=resets), want)
    stack = jaxrnn.Stack((cell, cell))
    module = nn.Stacked(stack, F, rngs=nnx.Rngs(2), return_carry=True)
    ys, carries = module(xs, lengths, resets=resets)
    want_ys, want_carries = jaxrnn.stacked(stack, module.params(), xs, lengths, resets=resets)
    np.testing.assert_array_equal(ys, want_ys)
    again, _ = module(xs, lengths, carries, resets=resets)  # a stream's next batch
    want_again, _ = jaxrnn.stacked(
        stack, module.params(), xs, lengths, resets=resets, initial_carry=want_carries
    )
    np.testing.assert_array_equal(again, want_again)


def test_reset_carry():
    cell = jaxrnn.LSTM(3)
    carry = jax.tree.map(lambda a: a + 1.0, cell.initial_carry(3))
    out = jaxrnn.reset_carry(carry, jnp.asarray([True, False, True]))
    for leaf in out:
        np.testing.assert_array_equal(leaf[:, 0], [0.0, 1.0, 0.0])


@pytest.mark.parametrize(
    ("resets", "error", "match"),
    [
        (np.zeros((T, B), bool), ValueError, r"resets must have shape \[batch, time\]"),
        (np.zeros((B, T + 1), bool), ValueError, r"= \(4, 9\), got \(4, 10\)"),
        (np.zeros((B, T), np.int32), TypeError, "resets must be a bool array"),
        (np.zeros((B, T), np.float32), TypeError, "got dtype float32"),
    ],
)
def test_bad_resets_are_errors(resets, error, match):
    cell = jaxrnn.GRU(5)
    params, xs, _ = _inputs(cell)
    with pytest.raises(error, match=match):
        jaxrnn.rnn(cell, params, xs, resets=resets)
    with pytest.raises(error, match=match):
        jax.jit(lambda x, r: jaxrnn.rnn(cell, params, x, resets=r))(xs, resets)
    with pytest.raises(error, match=match):
        jaxrnn.tbptt(cell, params, xs, 3, resets=resets)


VARIANTS = [
    jaxrnn.LSTM(5, proj_size=3),
    jaxrnn.LSTM(5, peepholes=True, cell_clip=0.5, proj_size=3, proj_clip=0.4),
    jaxrnn.LSTM(5, layer_norm=True),
    jaxrnn.GRU(5, layer_norm=True),
]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", VARIANTS, ids=["lstmp", "tf1", "ln_lstm", "ln_gru"])
def test_variants_reset_like_segments_run_alone(cell, reverse):
    """The variants (checked against their NumPy references in test_variants.py) with
    resets: each segment as its own ``rnn`` call, from zeros (the first one forwards and the
    last one backwards from the initial carry)."""
    params = random_params(cell, F, seed=8)
    xs, carry = _inputs(cell, seed=8)[1:]
    ys, final = jaxrnn.rnn(
        cell,
        params,
        xs,
        jnp.asarray(LENGTHS),
        resets=jnp.asarray(RESETS),
        reverse=reverse,
        initial_carry=carry,
    )
    for b in range(B):
        segments, first_reset = _segments(RESETS[b], LENGTHS[b])
        order = list(reversed(segments)) if reverse else segments
        row_carry = jax.tree.map(lambda leaf, b=b: leaf[b : b + 1], carry)
        want_final = row_carry
        for index, (start, end) in enumerate(order):
            continues = index == 0 and not (first_reset and not reverse)
            start_carry = row_carry if continues else None
            seg_ys, want_final = jaxrnn.rnn(
                cell,
                params,
                xs[b : b + 1, start:end],
                initial_carry=start_carry,
                reverse=reverse,
                implementation="scan",
            )
            np.testing.assert_allclose(ys[b, start:end], seg_ys[0], rtol=2e-5, atol=2e-6)
        assert np.all(np.asarray(ys[b, LENGTHS[b] :]) == 0.0)
        for got, want in zip(jax.tree.leaves(final), jax.tree.leaves(want_final), strict=True):
            np.testing.assert_allclose(got[b], want[0], rtol=2e-5, atol=2e-6)
