"""The registry of cells: a cell defined here, outside the package (a minimal gated cell with
no recurrent matrix), registered under a name and run through ``rnn``, ``static_rnn``,
``bidirectional``, ``Stack`` and ``Model`` against a NumPy loop; jaxrnn's own cells built
from a model's options as before."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.cells import registry
from jaxrnn.configs import get_config
from jaxrnn.configs.base import Config, apply_overrides
from jaxrnn.models import CELL_OPTIONS, Model

B, T, F, H = 3, 5, 4, 6
LENGTHS = np.array([5, 2, 0], np.int32)
NAME = "mingated_test"


@jaxrnn.cells.register(NAME)
@dataclasses.dataclass(frozen=True)
class MinGated(jaxrnn.Cell):
    """``[a, c] = x @ w_i + b``, ``s = sigmoid(a)``, ``h' = s * h + (1 - s) * tanh(c)``: a
    gated cell with no recurrent matrix (the state enters only the interpolation)."""

    hidden_size: int
    dtype: Any = dataclasses.field(default=None, kw_only=True)
    param_dtype: Any = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 2

    def param_shapes(self, input_size):
        return {"w_i": (input_size, 2 * self.hidden_size)}

    def init(self, key, input_size, dtype=None):
        dtype = self.param_dtype if dtype is None else dtype
        shape = (input_size, 2 * self.hidden_size)
        w_i = jax.nn.initializers.glorot_uniform()(key, shape, jnp.float32)
        return {"w_i": w_i.astype(dtype), "b": jnp.zeros((2 * self.hidden_size,), dtype)}

    def recurrent(self, params, h):
        return None  # no recurrent matmul

    def update(self, params, carry, xp, hw):
        a, c = jnp.split(xp, 2, axis=-1)
        s = jax.nn.sigmoid(a)
        h = s * carry + (1.0 - s) * jnp.tanh(c)
        return h, h


def _params(seed, input_size=F):
    """Init params with a non-zero bias (init leaves it zero)."""
    params = MinGated(H).init(jax.random.key(seed), input_size)
    bias = np.random.default_rng(seed).normal(0.0, 0.5, params["b"].shape)
    return {"w_i": params["w_i"], "b": jnp.asarray(bias, jnp.float32)}


def _xs(seed=0, features=F):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, features)), jnp.float32)


def np_gated(params, xs, lengths, reverse=False):
    """The cell's recurrence per sequence in float64 over its first ``lengths[i]`` steps
    (visited last to first if ``reverse``); outputs at their own steps, zero past the length;
    returns ``(ys [B, T, H], h [B, H])``."""
    w = np.asarray(params["w_i"], np.float64)
    b = np.asarray(params["b"], np.float64)
    xs = np.asarray(xs, np.float64)
    ys = np.zeros((xs.shape[0], xs.shape[1], H))
    final = np.zeros((xs.shape[0], H))
    for i in range(xs.shape[0]):
        h = np.zeros(H)
        steps = range(int(lengths[i]))
        for t in reversed(steps) if reverse else steps:
            z = xs[i, t] @ w + b
            s = 1.0 / (1.0 + np.exp(-z[:H]))
            h = s * h + (1.0 - s) * np.tanh(z[H:])
            ys[i, t] = h
        final[i] = h
    return ys, final


def _close(got, want):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2e-5, atol=2e-6)


def _implementations(cell):
    """``"scan"``, and ``"fused"`` where the cell has a fused loop."""
    return ["scan"] + (["fused"] if cell.fused_loop() is not None else [])


def test_rnn_and_static_rnn_against_numpy():
    cell, params, xs = MinGated(H), _params(0), _xs()
    want_ys, want_h = np_gated(params, xs, LENGTHS)
    runs = {
        name: jaxrnn.rnn(cell, params, xs, LENGTHS, implementation=name)
        for name in _implementations(cell)
    }
    runs["static"] = jaxrnn.static_rnn(cell, params, xs, LENGTHS)
    for ys, h in runs.values():
        _close(ys, want_ys)
        _close(h, want_h)
    # Without lengths (backwards over the valid prefix: test_bidirectional_against_numpy).
    ys, _ = jaxrnn.rnn(cell, params, xs)
    _close(ys, np_gated(params, xs, np.full(B, T))[0])


def test_fused_gradients_match_scan_where_the_cell_has_a_fused_loop():
    cell, params, xs = MinGated(H), _params(1), _xs(1)
    if cell.fused_loop() is None:
        with pytest.raises(ValueError, match="has no fused loop"):
            jaxrnn.rnn(cell, params, xs, implementation="fused")
        return

    def loss(implementation):
        def f(p, x):
            ys, h = jaxrnn.rnn(cell, p, x, LENGTHS, implementation=implementation)
            return jnp.sum(ys * ys) + jnp.sum(jnp.sin(h))

        return jax.grad(f, argnums=(0, 1))(params, xs)

    fused, scan = loss("fused"), loss("scan")
    for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(scan), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bidirectional_against_numpy():
    cell = MinGated(H)
    params = (_params(2), _params(3))
    xs = _xs(2)
    ys, (h_fw, h_bw) = jaxrnn.bidirectional(cell, cell, params, xs, LENGTHS)
    fw_ys, fw_h = np_gated(params[0], xs, LENGTHS)
    bw_ys, bw_h = np_gated(params[1], xs, LENGTHS, reverse=True)
    _close(ys, np.concatenate([fw_ys, bw_ys], axis=-1))
    _close(h_fw, fw_h)
    _close(h_bw, bw_h)


def test_stack_of_two_layers_with_dropout():
    cell = MinGated(H)
    stack = jaxrnn.Stack((cell, cell), dropout=0.5)
    params = [_params(4), _params(5, input_size=H)]
    xs = _xs(4)
    run = jax.jit(lambda params, xs, key: jaxrnn.stacked(stack, params, xs, LENGTHS, key=key))
    ys, carries = run(params, xs, None)
    mid, h0 = np_gated(params[0], xs, LENGTHS)
    want_ys, h1 = np_gated(params[1], mid, LENGTHS)
    _close(ys, want_ys)
    _close(carries[0], h0)
    _close(carries[1], h1)
    # Training: dropout between the layers changes the outputs, the same key the same way,
    # and steps past each length still output zeros.
    key = jax.random.key(6)
    dropped, _ = run(params, xs, key)
    again, _ = run(params, xs, key)
    np.testing.assert_array_equal(dropped, again)
    assert not np.allclose(dropped, ys)
    valid = np.arange(T)[None, :] < LENGTHS[:, None]
    assert np.all(np.asarray(dropped)[~valid] == 0.0)
    assert stack.init(jax.random.key(0), F)[1]["w_i"].shape == (H, 2 * H)


def test_model_trains_with_the_registered_cell():
    optax = pytest.importorskip("optax")
    model = Model(NAME, H, 2, bidirectional=True, readout="state", input_dropout=0.1)
    assert model._cell() == MinGated(H, param_dtype=jnp.float32)
    rng = np.random.default_rng(7)
    inputs = jnp.asarray(rng.normal(size=(16, T, F)), jnp.float32)
    labels = jnp.asarray(inputs[:, :, 0].mean(axis=1) > 0, jnp.int32)
    lengths = jnp.asarray(rng.integers(1, T + 1, 16), jnp.int32)
    params = model.init(jax.random.key(8), F)
    tx = optax.adam(0.05)

    def loss_fn(params, key):
        logits = model.apply(params, inputs, lengths, key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    @jax.jit
    def train_step(params, opt_state, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, key)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = tx.init(params), []
    for key in jax.random.split(jax.random.key(9), 15):
        params, opt_state, loss = train_step(params, opt_state, key)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_config_override_builds_the_registered_cell():
    from jaxrnn.training.build import model_of

    config = apply_overrides(Config(), [f"cell={NAME}", "hidden_size=8"])
    model = model_of(config, "classification", 3)
    assert model._cell() == MinGated(8, dtype="float32", param_dtype="float32")
    assert sorted(model.init(jax.random.key(0), F)["rnn"][0]) == ["b", "w_i"]
    # An experiment's options for its own cell (the LSTM's forget_bias) are left out.
    lstm_config = apply_overrides(get_config("lstm_mnist"), [f"cell={NAME}"])
    assert model_of(lstm_config, "classification", 10)._cell() == MinGated(
        lstm_config.hidden_size, dtype="float32", param_dtype="float32"
    )
    # A variant the cell does not have is an error naming the cells that have it.
    with pytest.raises(ValueError, match="layer_norm applies to cell='lstm' or 'gru'"):
        model_of(config.replace(layer_norm=True), "classification", 3)
    assert set(CELL_OPTIONS) <= {f.name for f in dataclasses.fields(Config)}


def test_params_are_checked_against_what_the_cell_needs():
    cell, xs = MinGated(H), _xs()
    params = _params(0)
    with pytest.raises(ValueError, match=r"params\['w_i'\] has shape \(3, 12\), expected"):
        jaxrnn.rnn(cell, _params(0, input_size=3), xs)
    with pytest.raises(
        TypeError, match=r"params must be the dict made by MinGated.init \(keys w_i"
    ):
        jaxrnn.rnn(cell, {"b": params["b"]}, xs)
    with pytest.raises(TypeError, match="must be a floating-point array"):
        jaxrnn.rnn(cell, {**params, "w_i": params["w_i"].astype(jnp.int32)}, xs)


def test_registry_names_and_builtin_cells():
    assert registry.names()[:3] == ("rnn", "lstm", "gru")
    assert NAME in registry.names()
    assert registry.get("rnn").cell_type is jaxrnn.SimpleRNN
    assert registry.get(NAME).cell_type is MinGated
    assert jaxrnn.Cell is jaxrnn.cells.Cell
    for cell in (jaxrnn.SimpleRNN(2), jaxrnn.LSTM(2), jaxrnn.GRU(2), MinGated(2)):
        assert isinstance(cell, jaxrnn.Cell)
    targets = registry.kernel_targets()
    assert sorted(targets) == sorted(
        f"jaxrnn_{kind}_{way}"
        for kind in ("simple", "lstm", "gru")
        for way in ("forward", "backward")
    )
    assert targets["jaxrnn_gru_backward"] == "JaxrnnGruBackward"
    with pytest.raises(ValueError, match=r"cell must be one of \('rnn', 'lstm', 'gru', .*'nope'"):
        Model("nope", 4, 2)


def test_models_build_the_builtin_cells_from_their_options():
    f32 = {"param_dtype": jnp.float32}
    assert Model("rnn", 4, 2, activation="relu")._cell() == jaxrnn.SimpleRNN(4, "relu", **f32)
    lstm = Model("lstm", 4, 2, forget_bias=1.0, forget_bias_init=0.5, cell_clip=0.0)._cell()
    assert lstm == jaxrnn.LSTM(4, 1.0, 0.5, **f32) and lstm.cell_clip is None
    clipped = Model("lstm", 4, 2, proj_size=2, cell_clip=3.0, proj_clip=1.0, peepholes=True)
    assert clipped._cell() == jaxrnn.LSTM(
        4, proj_size=2, cell_clip=3.0, proj_clip=1.0, peepholes=True, **f32
    )
    # Options a cell does not take (activation, the forget biases) are left out, as before.
    gru = Model("gru", 4, 2, activation="relu", forget_bias=1.0, layer_norm=True, dtype="bfloat16")
    assert gru._cell() == jaxrnn.GRU(4, layer_norm=True, dtype="bfloat16", **f32)
    with pytest.raises(ValueError, match="proj_size applies to cell='lstm'"):
        Model("gru", 4, 2, proj_size=2)


def test_register_refuses_what_is_not_a_cell():
    # The same class again replaces its entry (a reloaded module).
    assert jaxrnn.cells.register(NAME)(MinGated) is MinGated

    @dataclasses.dataclass(frozen=True)
    class Other(MinGated):
        pass

    with pytest.raises(ValueError, match=f"the name '{NAME}' is taken"):
        jaxrnn.cells.register(NAME)(Other)
    with pytest.raises(ValueError, match="name must be a non-empty identifier"):
        jaxrnn.cells.register("my cell")
    with pytest.raises(TypeError, match="expected a subclass of jaxrnn.Cell"):
        jaxrnn.cells.register("plain_object")(object)

    @dataclasses.dataclass
    class Mutable(jaxrnn.Cell):
        hidden_size: int
        dtype: Any = None
        param_dtype: Any = jnp.float32

    with pytest.raises(TypeError, match="must be a frozen dataclass"):
        jaxrnn.cells.register("mutable_test")(Mutable)

    @dataclasses.dataclass(frozen=True)
    class NoDtypes(jaxrnn.Cell):
        hidden_size: int

    with pytest.raises(TypeError, match="lacks the field.*dtype, param_dtype"):
        jaxrnn.cells.register("nodtypes_test")(NoDtypes)
    assert "mutable_test" not in registry.names() and "nodtypes_test" not in registry.names()
    with pytest.raises(TypeError, match="SimpleRNN, LSTM or GRU"):
        jaxrnn.interop.from_torch(MinGated(H), {})
