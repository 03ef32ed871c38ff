"""The linear-recurrence cells (``MinGRU``, ``MinLSTM``, ``RGLRU``) and their parallel path.

The reference is a plain NumPy float64 loop of the papers' equations written here, per
sequence and step, independent of jaxrnn's coefficients and of ``linear_scan``: lengths,
reverse over the valid prefix, resets, the initial carry and recurrent dropout are handled by
the loop itself. Against it run ``rnn`` (``"parallel"``, the default, and ``"scan"``),
``static_rnn``, ``bidirectional`` and ``Stack``; then the gradients, ``linear_scan``'s
methods, mixed precision, ``Model``, bad input and the plan.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxrnn
from jaxrnn import _native
from jaxrnn.cells import linear, registry
from jaxrnn.cells.linear_scan import METHODS, linear_scan
from jaxrnn.drivers import drive
from jaxrnn.models import Model
from jaxrnn.options import RunOptions

B, T, F, H = 4, 7, 5, 8
LENGTHS = np.array([7, 4, 0, 5], np.int32)  # a full length, a zero, two partial
RESET_AT = {0: (0, 3, 6), 1: (2, 5), 2: (1,), 3: ()}  # 5 in row 1 and 1 in row 2: past the length
RESETS = np.zeros((B, T), bool)
for _row, _steps in RESET_AT.items():
    RESETS[_row, list(_steps)] = True

# (id, cell, input size F): RGLRU with an input projection w_x (F != H) and without (F == H).
CELLS = [
    ("mingru", jaxrnn.MinGRU(H), F),
    ("minlstm", jaxrnn.MinLSTM(H), F),
    ("rglru", jaxrnn.RGLRU(H), F),
    ("rglru_square", jaxrnn.RGLRU(H, c=4.0, a_min=0.5, a_max=0.95), H),
]
CELL_IDS = [c[0] for c in CELLS]


# ----------------------------------------------------------------------------- reference


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _g(v):
    """The papers' candidate activation: ``v + 0.5`` for ``v >= 0``, else ``sigmoid(v)``."""
    return np.where(v >= 0, v + 0.5, _sigmoid(v))


def np_step(cell, p, h, x, keep=1.0):
    """One step of one sequence in float64: ``h`` [H], ``x`` [F]; ``keep`` multiplies ``h``
    where it enters the step (recurrent dropout). Returns the new ``h``."""
    hid = cell.hidden_size
    k = x @ p["w_i"] + p["b"]
    hm = h * keep
    if isinstance(cell, jaxrnn.MinGRU):
        z, cand = _sigmoid(k[:hid]), _g(k[hid:])
        return (1.0 - z) * hm + z * cand
    if isinstance(cell, jaxrnn.MinLSTM):
        f, i, cand = _sigmoid(k[:hid]), _sigmoid(k[hid : 2 * hid]), _g(k[2 * hid :])
        return f / (f + i) * hm + i / (f + i) * cand
    if isinstance(cell, jaxrnn.RGLRU):
        r, i = _sigmoid(k[:hid]), _sigmoid(k[hid:])
        x_in = x @ p["w_x"] if "w_x" in p else x
        log_a = -cell.c * r * np.log1p(np.exp(-p["a_param"]))  # softplus(-a_param)
        a_t = np.exp(log_a)
        return a_t * hm + np.sqrt(1.0 - a_t**2) * (i * x_in)
    raise TypeError(cell)


def np_run(cell, params, xs, lengths=None, *, reverse=False, resets=None, carry0=None, keep=None):
    """Batch-first ``xs`` [B, T, F] -> ``(ys [B, T, H], final h [B, H])`` in float64.

    Each sequence runs over its valid prefix; ``resets[b, t]`` zeroes the state before step
    ``t`` (ignored past the length). With ``reverse`` each segment runs from its own last step
    to its first from zeros, but the segment that holds the last valid step, which continues
    ``carry0``. ``keep`` [B, H]: recurrent dropout's multiplier of the state."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    xs = np.asarray(xs, np.float64)
    batch, steps, _ = xs.shape
    hid = cell.hidden_size
    lengths = np.full(batch, steps) if lengths is None else np.asarray(lengths)
    resets = np.zeros((batch, steps), bool) if resets is None else np.asarray(resets)
    carry0 = np.zeros((batch, hid)) if carry0 is None else np.asarray(carry0, np.float64)
    keep = np.ones((batch, hid)) if keep is None else np.asarray(keep, np.float64)
    ys, finals = np.zeros((batch, steps, hid)), np.zeros((batch, hid))
    for b in range(batch):
        n = int(lengths[b])
        bounds = [t for t in range(n) if t == 0 or resets[b, t]] + [n]
        segments = list(zip(bounds[:-1], bounds[1:], strict=True))  # [start, end) of each segment
        h = carry0[b]
        if not reverse:
            for s, e in segments:
                if resets[b, s]:
                    h = np.zeros(hid)
                for t in range(s, e):
                    h = ys[b, t] = np_step(cell, p, h, xs[b, t], keep[b])
        else:
            for s, e in reversed(segments):
                h = carry0[b] if e == n else np.zeros(hid)
                for t in range(e - 1, s - 1, -1):
                    h = ys[b, t] = np_step(cell, p, h, xs[b, t], keep[b])
        finals[b] = h
    return ys, finals


def make_params(cell, input_size, seed=0, dtype=jnp.float32):
    """``cell.init`` params with a non-zero bias (init leaves it zero) and ``a_param``
    perturbed."""
    params = cell.init(jax.random.key(seed), input_size, dtype)
    rng = np.random.default_rng(seed + 100)
    params = dict(params)
    params["b"] = params["b"] + jnp.asarray(rng.normal(0, 0.7, params["b"].shape), dtype)
    if "a_param" in params:
        params["a_param"] = params["a_param"] + jnp.asarray(
            rng.normal(0, 0.5, params["a_param"].shape), dtype
        )
    return params


def make_xs(seed=0, features=F, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, features)), dtype)


def make_carry(seed=0):
    return jnp.asarray(np.random.default_rng(seed + 50).normal(size=(B, H)), jnp.float32)


def close(got, want, rtol=2e-5, atol=5e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


def tree_close(got, want, rtol=2e-5, atol=5e-6):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        close(g, np.asarray(w, np.float64), rtol, atol)


# (config id, rnn's keyword arguments but the implementation)
CONFIGS = [
    ("plain", {}),
    ("lengths_resets_carry", {"lengths": LENGTHS, "resets": RESETS, "initial_carry": True}),
    (
        "reverse_lengths_resets_carry",
        {"lengths": LENGTHS, "resets": RESETS, "initial_carry": True, "reverse": True},
    ),
    (
        "reverse_resets_carry_time_major",
        {"resets": RESETS, "initial_carry": True, "reverse": True, "time_major": True},
    ),
]


# ----------------------------------------------------------------------------- 1-2: forward


@pytest.mark.parametrize("case", CELLS, ids=CELL_IDS)
def test_rnn_parallel_scan_and_static_against_numpy(case):
    _, cell, input_size = case
    params, xs, carry = make_params(cell, input_size), make_xs(1, input_size), make_carry()
    for name, config in CONFIGS:
        kwargs = dict(config)
        if kwargs.pop("initial_carry", False):
            kwargs["initial_carry"] = carry
        want_ys, want_h = np_run(
            cell,
            params,
            xs,
            kwargs.get("lengths"),
            reverse=kwargs.get("reverse", False),
            resets=kwargs.get("resets"),
            carry0=kwargs.get("initial_carry"),
        )
        call_xs = xs
        if kwargs.get("time_major"):
            call_xs = jnp.swapaxes(xs, 0, 1)
            kwargs["resets"] = kwargs["resets"].T
        runs = {
            "parallel": jaxrnn.rnn(cell, params, call_xs, **kwargs),
            "scan": jaxrnn.rnn(cell, params, call_xs, implementation="scan", **kwargs),
        }
        if "initial_carry" in kwargs:  # static_rnn: all but "plain"
            runs["static"] = jaxrnn.static_rnn(cell, params, call_xs, **kwargs)
        for impl, (ys, h) in runs.items():
            if kwargs.get("time_major"):
                ys = jnp.swapaxes(ys, 0, 1)
            assert ys.shape == (B, T, H) and ys.dtype == jnp.float32, (name, impl)
            assert h.shape == (B, H) and h.dtype == jnp.float32, (name, impl)
            try:
                close(ys, want_ys, rtol=1e-4, atol=1e-5)
                close(h, want_h, rtol=1e-4, atol=1e-5)
            except AssertionError as error:
                raise AssertionError(f"{name}, {impl}: {error}") from None
            if "lengths" in kwargs:  # exactly zero past each length
                pad = np.arange(T)[None, :] >= LENGTHS[:, None]
                assert np.all(np.asarray(ys)[pad] == 0.0), (name, impl)


def test_all_false_resets_and_zero_length_keep_the_initial_carry():
    cell = jaxrnn.MinLSTM(H)
    params, xs, carry = make_params(cell, F), make_xs(), make_carry()
    for reverse in (False, True):
        plain = jaxrnn.rnn(cell, params, xs, LENGTHS, initial_carry=carry, reverse=reverse)
        none = jaxrnn.rnn(
            cell,
            params,
            xs,
            LENGTHS,
            resets=np.zeros((B, T), bool),
            initial_carry=carry,
            reverse=reverse,
        )
        for got, want in zip(jax.tree.leaves(none), jax.tree.leaves(plain), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(plain[1][2], carry[2])  # length 0: the initial carry


# ----------------------------------------------------------------------------- 3: gradients


def _loss_fn(cell, implementation, reverse, cotangent, lengths=LENGTHS, resets=RESETS):
    def loss(p, x, c):
        ys, h = jaxrnn.rnn(
            cell,
            p,
            x,
            lengths,
            resets=resets,
            initial_carry=c,
            reverse=reverse,
            implementation=implementation,
        )
        return jnp.sum(ys * cotangent) + jnp.sum(jnp.sin(h))

    return loss


@pytest.mark.parametrize("case", CELLS[:3], ids=CELL_IDS[:3])
def test_gradients_parallel_match_scan(case):
    """With lengths, resets and an initial carry, both directions."""
    _, cell, input_size = case
    cot = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, H)), jnp.float32)
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    params, xs, carry = make_params(cell, input_size, 2), make_xs(2, input_size), make_carry(2)

    @jax.jit
    def grads(p, x, c):
        return {
            (impl, reverse): jax.grad(_loss_fn(cell, impl, reverse, cot), (0, 1, 2))(p, x, c)
            for impl in ("parallel", "scan")
            for reverse in (False, True)
        }

    got = grads(params, xs, carry)
    for reverse in (False, True):
        parallel = got["parallel", reverse]
        try:
            tree_close(parallel, got["scan", reverse], rtol=1e-4, atol=1e-5)
        except AssertionError as error:
            raise AssertionError(f"reverse={reverse}: {error}") from None
        d_xs = np.asarray(parallel[1])
        assert np.all(d_xs[pad] == 0.0), reverse  # padded inputs: exactly zero
        assert np.all(np.abs(d_xs[~pad]).max(-1) > 0), reverse
        # Length 0: the carry passes through, d carry0 = cos(carry0).
        close(parallel[2][2], np.cos(np.asarray(carry[2], np.float64)))


def test_check_grads_of_the_parallel_path_in_float64():
    cell = jaxrnn.RGLRU(4, c=4.0, a_min=0.3)
    with jax.enable_x64(True):
        params = make_params(cell, 3, 4, jnp.float64)
        rng = np.random.default_rng(4)
        xs = jnp.asarray(rng.normal(size=(3, 5, 3)))
        carry = jnp.asarray(rng.normal(size=(3, 4)))
        cot = jnp.asarray(rng.normal(size=(3, 5, 4)))
        lengths = np.array([5, 3, 0], np.int32)
        resets = np.zeros((3, 5), bool)
        resets[0, 2] = resets[1, 1] = True
        assert jaxrnn.plan.plan(cell.resolve(params, xs.dtype)).path == "parallel"

        @jax.jit
        def loss(p, x, c):  # both directions
            forward = _loss_fn(cell, None, False, cot, lengths, resets)(p, x, c)
            return forward + _loss_fn(cell, None, True, cot[::-1], lengths, resets)(p, x, c)

        check_grads(loss, (params, xs, carry), order=1, modes=["rev"])


@pytest.mark.parametrize("method", ["sequential", "chunked", "associative"])
def test_check_grads_of_linear_scan(method):
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        a = jnp.asarray(rng.uniform(-1.0, 1.0, (6, 2, 3)))
        b = jnp.asarray(rng.normal(size=(6, 2, 3)))
        h0 = jnp.asarray(rng.normal(size=(2, 3)))

        @jax.jit
        def both(a, b, h0):
            forward = linear_scan(a, b, h0, method=method)
            return forward, linear_scan(a, b, h0, reverse=True, method=method)

        check_grads(both, (a, b, h0), order=1, modes=["rev"])


def test_jvp_with_scan_matches_parallel_gradient():
    cell = jaxrnn.RGLRU(H)
    params, xs, carry = make_params(cell, F, 6), make_xs(6), make_carry(6)
    cot = jnp.asarray(np.random.default_rng(6).normal(size=(B, T, H)), jnp.float32)
    tangent = jax.tree.map(
        lambda v: jnp.asarray(np.random.default_rng(7).normal(size=v.shape), v.dtype), params
    )

    @jax.jit
    def both(params, tangent):
        scan = _loss_fn(cell, "scan", False, cot)
        _, jvp = jax.jvp(lambda p: scan(p, xs, carry), (params,), (tangent,))
        return jvp, jax.grad(_loss_fn(cell, None, False, cot))(params, xs, carry)

    jvp, grad = both(params, tangent)
    want = sum(jnp.vdot(grad[k], tangent[k]) for k in params)
    np.testing.assert_allclose(jvp, want, rtol=1e-4)


def test_second_order_reverse_gradient_matches_scan():
    cell = jaxrnn.MinGRU(4)
    params, xs = make_params(cell, 3, 14), make_xs(14, 3)[:2, :5]

    @jax.jit
    def both(params):
        def grad_norm(p, impl):
            def loss(q):
                return jnp.sum(jaxrnn.rnn(cell, q, xs, implementation=impl)[0] ** 2)

            return jnp.sum(jax.grad(loss)(p)["w_i"] ** 2)

        return [jax.grad(grad_norm)(params, impl) for impl in ("parallel", "scan")]

    parallel, scan = both(params)
    tree_close(parallel, scan, rtol=1e-4, atol=1e-5)


def test_vmap_and_jit():
    cell = jaxrnn.MinGRU(H)
    xs = make_xs(8)
    batched = jax.tree.map(lambda *v: jnp.stack(v), *[make_params(cell, F, s) for s in (8, 9)])

    def run(p, x):
        return jaxrnn.rnn(cell, p, x, LENGTHS, resets=RESETS, reverse=True)

    def take(tree, i):
        return jax.tree.map(lambda v: v[i], tree)

    eager = [run(take(batched, i), xs) for i in range(2)]
    want = np_run(cell, take(batched, 0), xs, LENGTHS, reverse=True, resets=RESETS)
    tree_close(eager[0], want, rtol=1e-4, atol=1e-5)
    tree_close(jax.jit(run)(take(batched, 0), xs), eager[0], rtol=1e-6, atol=1e-6)
    # vmap over a batch of parameters (jitted), over a batch of input batches (not).
    got = jax.jit(jax.vmap(run, (0, None)))(batched, xs)
    for i in range(2):
        tree_close(take(got, i), eager[i], rtol=1e-6, atol=1e-6)
    got = jax.vmap(run, (None, 0))(take(batched, 0), jnp.stack([make_xs(10), xs]))
    tree_close(take(got, 1), eager[0], rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- 4: linear_scan


def np_scan(a, b, h0, reverse):
    h, out = np.asarray(h0, np.float64), np.zeros(a.shape)
    for t in reversed(range(len(a))) if reverse else range(len(a)):
        h = out[t] = a[t] * h + b[t]
    return out


def test_linear_scan_methods_against_numpy():
    rng = np.random.default_rng(11)
    cases = []
    for steps in (1, 2, 16, 37):  # 16: a perfect square (chunks of 4 without padding)
        a = rng.uniform(-1.0, 1.0, (steps, 3, 5)).astype(np.float32)
        b = rng.normal(size=(steps, 3, 5)).astype(np.float32)
        cases.append((a, b, rng.normal(size=(3, 5)).astype(np.float32)))

    @jax.jit
    def solve(cases):
        out = []
        for a, b, h0 in cases:
            runs = {}
            for m in METHODS:
                for r in (False, True):
                    runs[m, r, 0] = linear_scan(a, b, h0, reverse=r, method=m)
                    if a.shape[0] in (2, 37):  # batch first: [3, T, 5]
                        a1, b1 = jnp.swapaxes(a, 0, 1), jnp.swapaxes(b, 0, 1)
                        h1 = linear_scan(a1, b1, h0, reverse=r, method=m, time_axis=1)
                        runs[m, r, 1] = jnp.swapaxes(h1, 0, 1)
            out.append(runs)
        return out

    for (a, b, h0), got in zip(cases, solve(cases), strict=True):
        for (method, reverse, axis), h in got.items():
            want = np_scan(a.astype(np.float64), b.astype(np.float64), h0, reverse)
            assert h.shape == a.shape and h.dtype == jnp.float32
            try:
                close(h, want, rtol=2e-5, atol=2e-5)
            except AssertionError as error:
                where = f"T={len(a)} {reverse=} {method} time_axis={axis}"
                raise AssertionError(f"{where}: {error}") from None
    a, b, h0 = cases[2]  # not jitted
    close(linear_scan(a, b, h0, reverse=True), np_scan(a, b, h0, True), rtol=2e-5, atol=2e-5)
    empty = jnp.zeros((0, 3))
    assert linear_scan(empty, empty, jnp.ones(3)).shape == (0, 3)


def test_linear_scan_gradients_of_every_method_agree():
    rng = np.random.default_rng(12)
    a = jnp.asarray(rng.uniform(-1.0, 1.0, (9, 2, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(9, 2, 3)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(9, 2, 3)), jnp.float32)

    @jax.jit
    def grads(a, b, h0):
        def loss(a, b, h0, method, reverse):
            return jnp.sum(g * linear_scan(a, b, h0, reverse=reverse, method=method))

        return {
            (m, r): jax.grad(loss, (0, 1, 2))(a, b, h0, m, r)
            for m in METHODS
            for r in (False, True)
        }

    got = grads(a, b, h0)
    for (method, reverse), grad in got.items():
        try:
            tree_close(grad, got["sequential", reverse], rtol=1e-5, atol=1e-5)
        except AssertionError as error:
            raise AssertionError(f"{method} {reverse=}: {error}") from None


def test_linear_scan_nan_in_b_propagates():
    rng = np.random.default_rng(13)
    a = rng.uniform(0.1, 1.0, (10, 2, 3)).astype(np.float32)
    b = rng.normal(size=(10, 2, 3)).astype(np.float32)
    b[4, 1, 2] = np.nan
    h0 = rng.normal(size=(2, 3)).astype(np.float32)
    got = jax.jit(
        lambda a, b, h0: {
            (m, r): linear_scan(a, b, h0, reverse=r, method=m)
            for m in METHODS
            for r in (False, True)
        }
    )(a, b, h0)
    for (method, reverse), h in got.items():
        want = np.isnan(np_scan(a, b, h0, reverse))
        hit = slice(None, 5) if reverse else slice(4, None)
        assert want[hit, 1, 2].all() and want.sum() == want[hit, 1, 2].size
        np.testing.assert_array_equal(np.isnan(h), want, err_msg=f"{method} {reverse=}")


def test_linear_scan_checks_its_arguments():
    a = jnp.ones((4, 3))
    with pytest.raises(ValueError, match="method must be one of"):
        linear_scan(a, a, jnp.zeros(3), method="fast")
    with pytest.raises(ValueError, match=r"h0 \(2,\)"):
        linear_scan(a, a, jnp.zeros(2))


# ----------------------------------------------------------------------------- 5: layers


def test_bidirectional_against_numpy():
    cell = jaxrnn.MinGRU(H)
    params = (make_params(cell, F, 20), make_params(cell, F, 21))
    xs, c_fw, c_bw = make_xs(20), make_carry(20), make_carry(21)
    fw_ys, fw_h = np_run(cell, params[0], xs, LENGTHS, resets=RESETS, carry0=c_fw)
    bw_ys, bw_h = np_run(cell, params[1], xs, LENGTHS, resets=RESETS, carry0=c_bw, reverse=True)
    for implementation in (None, "scan"):
        ys, (h_fw, h_bw) = jaxrnn.bidirectional(
            cell,
            cell,
            params,
            xs,
            LENGTHS,
            resets=RESETS,
            initial_carry=(c_fw, c_bw),
            implementation=implementation,
        )
        close(ys, np.concatenate([fw_ys, bw_ys], axis=-1), rtol=1e-4, atol=1e-5)
        close(h_fw, fw_h, rtol=1e-4, atol=1e-5)
        close(h_bw, bw_h, rtol=1e-4, atol=1e-5)


def test_stack_with_dropout():
    cell = jaxrnn.MinGRU(H)
    plain = jaxrnn.Stack((cell, cell))
    stack = jaxrnn.Stack((cell, cell), dropout=0.3, input_dropout=0.2, recurrent_dropout=0.25)
    params = [make_params(cell, F, 30), make_params(cell, H, 31)]
    xs, key = make_xs(30), jax.random.key(32)

    def loss(params, key):
        ys, carries = jaxrnn.stacked(stack, params, xs, LENGTHS, key=key)
        return jnp.sum(ys**2) + jnp.sum(carries[-1]), ys

    @jax.jit
    def run(params):
        evaluated, carries = jaxrnn.stacked(stack, params, xs, LENGTHS)  # key None: no dropout
        without, _ = jaxrnn.stacked(plain, params, xs, LENGTHS)
        grads, trained = jax.grad(loss, has_aux=True)(params, key)
        return evaluated, carries, without, trained, grads

    evaluated, carries, without, trained, grads = run(params)
    # Evaluation: the same as the stack without dropout and as two NumPy layers.
    np.testing.assert_array_equal(evaluated, without)
    mid, h0 = np_run(cell, params[0], xs, LENGTHS)
    want_ys, h1 = np_run(cell, params[1], mid, LENGTHS)
    close(evaluated, want_ys, rtol=1e-4, atol=1e-5)
    tree_close(carries, [h0, h1], rtol=1e-4, atol=1e-5)
    # Training: the masks change the outputs, padding stays zero, the gradients are finite.
    assert not np.allclose(trained, evaluated)
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(np.asarray(trained)[pad] == 0.0)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0


def test_recurrent_dropout_mask_parallel_scan_static_against_numpy():
    """``h' = a * (h * mask) + b``: the mask scales the state where it enters the step."""
    keep = np.random.default_rng(40).binomial(1, 0.7, (B, H)) / 0.7
    mask = jnp.asarray(keep, jnp.float32)
    cot = jnp.asarray(np.random.default_rng(41).normal(size=(B, T, H)), jnp.float32)

    def run(cell, params, xs, carry, impl, reverse):
        options = RunOptions(
            reverse=reverse,
            implementation=None if impl == "static" else impl,
            static=impl == "static",
        )
        kwargs = {"lengths": LENGTHS, "resets": RESETS, "initial_carry": carry}
        return drive(cell, params, xs, options, hidden_mask=mask, **kwargs)

    for name, cell, input_size in CELLS[:3]:
        params, xs, carry = make_params(cell, input_size, 40), make_xs(40, input_size), make_carry()
        for reverse in (False, True) if name == "mingru" else (False,):
            want = np_run(
                cell, params, xs, LENGTHS, reverse=reverse, resets=RESETS, carry0=carry, keep=keep
            )
            for impl in ("parallel", "scan", "static"):
                try:
                    tree_close(run(cell, params, xs, carry, impl, reverse), want, 1e-4, 1e-5)
                except AssertionError as error:
                    raise AssertionError(f"{name} {impl} {reverse=}: {error}") from None

    cell = jaxrnn.MinLSTM(H)
    params, xs, carry = make_params(cell, F, 42), make_xs(42), make_carry(42)

    @jax.jit
    def grads(params):
        def loss(p, impl):
            ys, h = run(cell, p, xs, carry, impl, True)
            return jnp.sum(ys * cot) + jnp.sum(h)

        return [jax.grad(loss)(params, impl) for impl in ("parallel", "scan")]

    parallel, scan = grads(params)
    tree_close(parallel, scan, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- 6: precision


def test_bfloat16_computation():
    cot = jnp.asarray(np.random.default_rng(50).normal(size=(B, T, H)), jnp.float32)
    for name, cell, input_size in CELLS[:3]:
        params, xs, carry = make_params(cell, input_size, 50), make_xs(50, input_size), make_carry()
        narrow = dataclasses.replace(cell, dtype=jnp.bfloat16)
        kwargs = {"resets": RESETS, "initial_carry": carry}
        ys32, h32 = jaxrnn.rnn(cell, params, xs, LENGTHS, **kwargs)
        runs = {
            impl: jaxrnn.rnn(narrow, params, xs, LENGTHS, implementation=impl, **kwargs)
            for impl in (None, "scan")
        }
        for impl, (ys, h) in runs.items():
            assert ys.dtype == jnp.bfloat16 and h.dtype == jnp.float32, (name, impl)
            close(ys, np.asarray(ys32, np.float64), rtol=2e-2, atol=2e-2)
            close(h, np.asarray(h32, np.float64), rtol=2e-2, atol=2e-2)
        close(runs[None][0], np.asarray(runs["scan"][0], np.float64), rtol=1e-2, atol=1e-2)
        close(runs[None][1], np.asarray(runs["scan"][1], np.float64), rtol=1e-2, atol=1e-2)
    # bfloat16 parameters: gradients in bfloat16, finite.
    cell = jaxrnn.MinGRU(H, dtype=jnp.bfloat16)
    params = make_params(cell, F, 51, jnp.bfloat16)
    grads = jax.grad(_loss_fn(cell, None, True, cot))(params, make_xs(51), make_carry())
    for leaf in jax.tree.leaves(grads):
        assert leaf.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(leaf, np.float32)))


# ----------------------------------------------------------------------------- 7: Model


def test_models_build_and_train_the_linear_cells():
    assert {"mingru", "minlstm", "rglru"} <= set(registry.names())
    for name, cell_type in (("mingru", jaxrnn.MinGRU), ("minlstm", jaxrnn.MinLSTM)):
        assert registry.get(name).cell_type is cell_type
    assert registry.get("rglru").cell_type is jaxrnn.RGLRU
    rng = np.random.default_rng(60)
    inputs = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
    labels = jnp.asarray([0, 1, 1, 0])
    lengths = jnp.asarray(LENGTHS)
    models = [
        Model("mingru", H, 2, recurrent_dropout=0.1),
        Model("minlstm", H, 2, bidirectional=True, readout="state"),
        Model("rglru", H, 2, input_dropout=0.1),
    ]
    for model in models:
        assert type(model._cell()) is registry.get(model.cell).cell_type
        params = model.init(jax.random.key(61), F)

        @jax.jit
        def train_step(params, key, model=model):
            def loss_fn(params):
                logits = model.apply(params, inputs, lengths, key)
                log_p = jax.nn.log_softmax(logits)
                return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], 1))

            loss, grads = jax.value_and_grad(loss_fn)(params)
            return loss, grads, jax.tree.map(lambda p, g: p - 0.1 * g, params, grads)

        loss, grads, params = train_step(params, jax.random.key(62))
        assert np.isfinite(loss), model.cell
        for leaf in jax.tree.leaves(grads):
            assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0, model.cell
        assert np.isfinite(train_step(params, jax.random.key(63))[0]), model.cell


# ----------------------------------------------------------------------------- 8: bad input


def test_bad_input_raises():
    xs = make_xs()
    gru = jaxrnn.MinGRU(H)
    params = make_params(gru, F)
    wide = {**params, "w_i": jnp.zeros((F, 3 * H))}
    with pytest.raises(
        ValueError, match=r"params\['w_i'\] has shape \(5, 24\), expected \(5, 16\)"
    ):
        jaxrnn.rnn(gru, wide, xs)
    with pytest.raises(ValueError, match=r"params\['b'\] has shape \(24,\), expected \(16,\)"):
        jaxrnn.rnn(gru, {**params, "b": jnp.zeros(3 * H)}, xs)
    with pytest.raises(ValueError, match=r"params holds \['b_h'\], which MinGRU"):
        jaxrnn.rnn(gru, {**params, "b_h": params["b"]}, xs)
    rglru = jaxrnn.RGLRU(H)
    r_params = make_params(rglru, F)
    no_a = {k: v for k, v in r_params.items() if k != "a_param"}
    with pytest.raises(ValueError, match=r"lacks 'a_param' \(shape \(8,\)\)"):
        jaxrnn.rnn(rglru, no_a, xs)
    no_wx = {k: v for k, v in r_params.items() if k != "w_x"}
    with pytest.raises(ValueError, match=r"lacks 'w_x' \(shape \(5, 8\)\)"):
        jaxrnn.rnn(rglru, no_wx, xs)
    for implementation in ("fused", "kernel", "pallas"):
        with pytest.raises(ValueError, match="parallel"):
            jaxrnn.rnn(gru, params, xs, implementation=implementation)
    with pytest.raises(ValueError, match="remat"):
        jaxrnn.rnn(gru, params, xs, implementation="parallel", remat=True)
    lstm = jaxrnn.LSTM(H)
    with pytest.raises(ValueError, match="not a linear recurrence"):
        jaxrnn.rnn(lstm, lstm.init(jax.random.key(0), F), xs, implementation="parallel")
    with pytest.raises(ValueError, match="a_min <= a_max"):
        jaxrnn.RGLRU(8, a_min=0.5, a_max=0.2)
    with pytest.raises(ValueError, match="c must be a positive"):
        jaxrnn.RGLRU(8, c=0.0)
    with pytest.raises(ValueError, match="hidden_size"):
        jaxrnn.MinLSTM(0)


# ----------------------------------------------------------------------------- 9: plan


def test_plan():
    method = "kernel" if _native.enabled() else "chunked"
    for cell in (jaxrnn.MinGRU(8), jaxrnn.MinLSTM(8), jaxrnn.RGLRU(8)):
        how = jaxrnn.plan.plan(cell)
        assert (how.path, how.method, how.loop) == ("parallel", method, None), how
        assert jaxrnn.plan.plan(cell, RunOptions(remat=True)).path == "scan"
        assert jaxrnn.plan.plan(cell, RunOptions(remat=2)).method is None
        assert jaxrnn.plan.plan(cell, RunOptions(implementation="scan")).path == "scan"
        assert jaxrnn.plan.plan(cell, RunOptions(static=True)).path == "static"
    with jax.enable_x64(True):  # float64: no kernel
        how = jaxrnn.plan.plan(jaxrnn.MinGRU(8, dtype=jnp.float64))
        assert (how.path, how.method) == ("parallel", "chunked")
    how = jaxrnn.plan.plan(jaxrnn.MinGRU(8, dtype=jnp.bfloat16))  # runs in float32
    assert (how.path, how.method) == ("parallel", method)
    # remat through rnn: scan, the same numbers.
    cell = jaxrnn.MinGRU(H)
    params, xs = make_params(cell, F), make_xs()
    tree_close(
        jaxrnn.rnn(cell, params, xs, LENGTHS, remat=True),
        jaxrnn.rnn(cell, params, xs, LENGTHS),
        rtol=1e-5,
        atol=1e-6,
    )


# ------------------------------------------------------------------------ time chunks


def test_time_chunks_against_numpy_and_scan(monkeypatch):
    """The parallel path cut into time chunks of 3 steps (7 = 3 + 3 + 1 padded): values
    against the NumPy loop, gradients against scan, in both directions (MinGRU both, the others
    one each) and both layouts."""
    monkeypatch.setattr(linear, "chunk_steps", lambda steps, shape, method, chunk=None: 3)
    cot = jnp.asarray(np.random.default_rng(60).normal(size=(B, T, H)), jnp.float32)
    for directions, (_name, cell, input_size) in zip(
        ((False, True), (True,), (False,)), CELLS[:3], strict=True
    ):
        params, xs, carry = make_params(cell, input_size, 60), make_xs(60, input_size), make_carry()
        for reverse in directions:
            want_ys, want_h = np_run(
                cell, params, xs, LENGTHS, reverse=reverse, resets=RESETS, carry0=carry
            )
            ys, h = jaxrnn.rnn(
                cell, params, xs, LENGTHS, resets=RESETS, initial_carry=carry, reverse=reverse
            )
            close(ys, want_ys)
            close(h, want_h)
            grads = [
                jax.grad(_loss_fn(cell, impl, reverse, cot), argnums=(0, 1, 2))(params, xs, carry)
                for impl in (None, "scan")
            ]
            tree_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
        ys_tm, _ = jaxrnn.rnn(
            cell, params, jnp.swapaxes(xs, 0, 1), LENGTHS, resets=RESETS.T, time_major=True
        )
        close(jnp.swapaxes(ys_tm, 0, 1), np_run(cell, params, xs, LENGTHS, resets=RESETS)[0])
