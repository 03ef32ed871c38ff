"""The LSTM variants through the fused loop (``jaxrnn.cells.fused``, with the derivative that
``LSTM.update_backward`` writes out): every combination of
``proj_size``, peepholes, ``cell_clip`` and ``proj_clip``, forward and reversed, with and
without lengths (0 and T among them), both layouts, with and without resets: outputs and
final carry against a float64 NumPy loop (``test_variants.lstm_step``, per sequence, resets
as the drivers document them), and outputs, carry and gradients (parameters, inputs, initial
carry) against ``implementation="scan"`` (JAX's derivative of ``lax.scan``)."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from test_variants import lstm_step, random_params

import jaxrnn

B, T, F, H, P = 4, 5, 3, 4, 3
LENGTHS = np.array([5, 0, 2, 4], np.int32)


def _combinations():
    for proj, peep, cell_clip, proj_clip in itertools.product(
        (0, P), (False, True), (None, 0.5), (None, 0.3)
    ):
        if (proj_clip is not None and not proj) or not (proj or peep or cell_clip):
            continue
        name = "-".join(
            n
            for n, on in (
                ("proj", proj),
                ("peep", peep),
                ("cclip", cell_clip),
                ("pclip", proj_clip),
            )
            if on
        )
        cell = jaxrnn.LSTM(H, forget_bias=0.5, proj_size=proj, peepholes=peep)
        yield name, dataclasses.replace(cell, cell_clip=cell_clip, proj_clip=proj_clip)


COMBINATIONS = dict(_combinations())


def _inputs(cell, seed=0):
    """``(params, xs [B, T, F], carry0, resets [B, T])``: every parameter random, the resets
    on about a third of the steps (step 0 of row 0 among them)."""
    rng = np.random.default_rng(seed)
    params = random_params(cell, F, seed)
    if cell.peepholes:  # larger peepholes than random_params' so that they matter
        params |= {
            k: jnp.asarray(rng.normal(0, 1.0, (H,)), jnp.float32) for k in ("w_ci", "w_cf", "w_co")
        }
    xs = rng.normal(size=(B, T, F)).astype(np.float32)
    carry0 = tuple(rng.normal(size=leaf.shape).astype(np.float32) for leaf in cell.initial_carry(B))
    resets = rng.random((B, T)) < 0.35
    resets[0, 0] = True
    return params, xs, carry0, resets


def _np_run(cell, params, xs, lengths, resets, reverse, carry0):
    """Batch-first float64 reference: each row's valid steps split into segments at the
    resets; forward, the first segment continues ``carry0`` (unless reset at step 0) and the
    others start from zeros; reversed, each segment runs from its last step to its first, the
    last segment continuing ``carry0`` and the others from zeros."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    xs = np.asarray(xs, np.float64)
    ys = np.zeros((B, T, cell.output_size))
    finals = []
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        flags = np.zeros(T, bool) if resets is None else np.asarray(resets[b], bool)
        starts = [0] + [t for t in range(1, n) if flags[t]] + [n]
        segments = list(zip(starts[:-1], starts[1:], strict=True))
        initial = tuple(np.asarray(leaf[b], np.float64) for leaf in carry0)
        zeros = tuple(np.zeros_like(leaf) for leaf in initial)
        carry = initial
        if reverse:
            for k, (start, end) in enumerate(reversed(segments)):
                carry = initial if k == 0 else zeros
                for t in range(end - 1, start - 1, -1):
                    carry, ys[b, t] = lstm_step(cell, p, carry, xs[b, t])
        else:
            for k, (start, end) in enumerate(segments):
                carry = zeros if (k > 0 or (flags[0] and n > 0)) else carry
                for t in range(start, end):
                    carry, ys[b, t] = lstm_step(cell, p, carry, xs[b, t])
        finals.append(carry)
    return ys, tuple(np.stack(leaves) for leaves in zip(*finals, strict=True))


def _loss_and_grads(cell, implementation, lengths, resets, reverse, time_major):
    """A jitted ``(params, xs, carry0) -> ((loss, (ys, carry)), grads)``; ``xs`` and
    ``resets`` batch-first in, laid out as ``time_major`` says inside."""

    def loss(params, xs, carry0):
        x = jnp.swapaxes(xs, 0, 1) if time_major else xs
        r = None if resets is None else (resets.T if time_major else resets)
        ys, carry = jaxrnn.rnn(
            cell,
            params,
            x,
            lengths,
            initial_carry=carry0,
            reverse=reverse,
            time_major=time_major,
            resets=r,
            implementation=implementation,
        )
        ys = jnp.swapaxes(ys, 0, 1) if time_major else ys
        value = jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(leaf * leaf) for leaf in carry)
        return value, (ys, carry)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _close(got, want, tol):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(g, np.float64), np.asarray(w), rtol=tol, atol=tol)


@pytest.fixture(params=list(COMBINATIONS), ids=list(COMBINATIONS))
def cell(request):
    return COMBINATIONS[request.param]


def test_eleven_combinations():
    assert len(COMBINATIONS) == 11  # 3 without a projection, 8 with one


# (reverse, lengths, time_major, with resets): every configuration for all four options
# together; two that cover each value of each axis for the other ten combinations, which run
# the same loop with fewer options (CI time: the full grid of all eleven compiles 352 loops).
CONFIGS = list(itertools.product((False, True), (None, LENGTHS), (False, True), (False, True)))
COVERING = [
    (False, LENGTHS, False, True),
    (True, None, True, False),
]
FULL_GRID = ("proj-peep-cclip-pclip",)


def _all_configs(cell, implementation, resets, configs):
    """One jitted function running every one of ``configs`` (one compilation is several
    times faster than sixteen)."""
    runs = [
        _loss_and_grads(cell, implementation, lengths, resets if on else None, reverse, tm)
        for reverse, lengths, tm, on in configs
    ]
    return jax.jit(lambda *args: [run(*args) for run in runs])


def test_fused_against_numpy_and_scan(cell):
    assert cell.fused_loop() is jaxrnn.cells.fused.scan and not cell.has_kernels()
    params, xs, carry0, resets = _inputs(cell)
    name = next(k for k, v in COMBINATIONS.items() if v == cell)
    configs = CONFIGS if name in FULL_GRID else COVERING
    fused = _all_configs(cell, None, resets, configs)(params, xs, carry0)
    scan = _all_configs(cell, "scan", resets, configs)(params, xs, carry0)
    for (reverse, lengths, tm, on), got, want in zip(configs, fused, scan, strict=True):
        where = f"reverse={reverse} lengths={lengths is not None} time_major={tm} resets={on}"
        (_, (ys, carry)), grads = got
        (_, scan_out), scan_grads = want
        ref_ys, ref_carry = _np_run(
            cell, params, xs, lengths, resets if on else None, reverse, carry0
        )
        try:
            _close(ys, ref_ys, 2e-5)
            _close(carry, ref_carry, 2e-5)
            _close((ys, carry), scan_out, 1e-5)
            _close(grads, scan_grads, 5e-5)
        except AssertionError as error:
            raise AssertionError(where) from error
        if lengths is not None:
            for b, n in enumerate(LENGTHS):  # exact zeros past each length, no gradient
                assert not np.any(np.asarray(ys[b, n:])), where
                assert not np.any(np.asarray(grads[1][b, n:])), where
        if on:  # row 0 resets at step 0 (forward): its initial carry gets no gradient
            first = not reverse
            assert not first or not np.any(np.asarray(grads[2][0][0])), where
        assert set(grads[0]) == set(params)


def test_the_fused_loop_is_what_runs(cell):
    params, xs, _, resets = _inputs(cell)

    def jaxpr(implementation):
        def loss(p):
            ys, _ = jaxrnn.rnn(cell, p, xs, LENGTHS, resets=resets, implementation=implementation)
            return jnp.sum(ys)

        return str(jax.make_jaxpr(loss)(params))

    for implementation in (None, "fused"):
        chosen = jaxpr(implementation)
        assert "custom_vjp" in chosen and "ffi_call" not in chosen
    assert "custom_vjp" not in jaxpr("scan")
    with pytest.raises(ValueError, match="has no CPU kernels"):
        jaxrnn.rnn(cell, params, xs, implementation="kernel")


def test_all_false_resets_are_no_resets():
    """The outputs and final carry bitwise equal to ``resets=None``; the gradients equal to
    float32 rounding (reversed with lengths, XLA:CPU fuses some backward steps differently).
    Every option at once: the loop is the one every combination runs."""
    cell = COMBINATIONS["proj-peep-cclip-pclip"]
    params, xs, carry0, _ = _inputs(cell)
    for reverse, lengths in ((False, None), (True, None), (True, LENGTHS)):
        runs = [
            _loss_and_grads(cell, None, lengths, resets, reverse, False)(params, xs, carry0)
            for resets in (None, np.zeros((B, T), bool))
        ]
        (_, without), grads = runs[0]
        (_, none_set), none_set_grads = runs[1]
        for got, want in zip(jax.tree.leaves(none_set), jax.tree.leaves(without), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        for got, want in zip(jax.tree.leaves(none_set_grads), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["proj-peep-cclip-pclip", "peep-cclip"])
def test_check_grads(name):
    """The hand-written backward pass against finite differences, in float64, with lengths
    and resets."""
    with jax.enable_x64(True):
        cell = dataclasses.replace(COMBINATIONS[name], dtype=jnp.float64, param_dtype=jnp.float64)
        params, xs, carry0, resets = _inputs(cell, seed=3)
        params = {k: v.astype(jnp.float64) for k, v in params.items()}
        xs, carry0 = xs.astype(np.float64), tuple(c.astype(np.float64) for c in carry0)
        lengths = np.array([5, 3, 0, 4], np.int32)

        def loss(p, x, c0):
            ys, carry = jaxrnn.rnn(
                cell, p, x, lengths, initial_carry=c0, resets=resets, reverse=True
            )
            return jnp.sum(ys * jnp.cos(ys)) + sum(jnp.sum(leaf) for leaf in carry)

        assert "custom_vjp" in str(jax.make_jaxpr(loss)(params, xs, carry0))
        args = (params, xs, carry0)
        check_grads(jax.jit(loss), args, order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["proj-peep-cclip-pclip", "peep", "proj-pclip"])
def test_bfloat16_against_float32(name):
    """bfloat16 matmul operands, float32 state and sums: outputs within a few bfloat16 eps of
    the float32 loop's, gradients (in the parameters' bfloat16) within a few percent."""
    cell = COMBINATIONS[name]
    low = dataclasses.replace(cell, dtype=jnp.bfloat16)
    params, xs, carry0, resets = _inputs(cell)
    # The float32 run on the values bfloat16 holds: the difference is the computation's.
    p16 = {k: v.astype(jnp.bfloat16) for k, v in params.items()}
    params = {k: v.astype(jnp.float32) for k, v in p16.items()}
    xs = xs.astype(jnp.bfloat16).astype(np.float32)
    (_, (ys, carry)), grads = _loss_and_grads(cell, None, LENGTHS, resets, False, False)(
        params, xs, carry0
    )
    (_, (ys16, carry16)), grads16 = _loss_and_grads(low, None, LENGTHS, resets, False, False)(
        p16, xs, carry0
    )
    assert ys16.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.float32 for leaf in carry16)
    assert all(g.dtype == jnp.bfloat16 for g in grads16[0].values())
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    want = jax.tree.map(lambda a: np.asarray(a, np.float64), (ys, carry))
    _close((ys16, carry16), want, 8 * eps)
    assert np.any(np.asarray(ys16, np.float32) != np.asarray(ys))
    for k, g in grads[0].items():
        scale = float(jnp.abs(g).max())
        np.testing.assert_allclose(
            np.asarray(grads16[0][k], np.float32), g, atol=0.05 * scale, rtol=0.05, err_msg=k
        )
