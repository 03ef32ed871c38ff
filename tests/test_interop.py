"""jaxrnn.interop against golden PyTorch and Keras outputs, round trips, and its errors.

The golden files in ``tests/golden/`` were made by ``tests/golden/make_golden.py`` (see its
docstring for their layout); neither torch nor TensorFlow is needed here.
"""

import functools
import pathlib

import jax
import numpy as np
import pytest

import jaxrnn
from jaxrnn import interop

GOLDEN = pathlib.Path(__file__).parent / "golden"
TORCH_FILES = ["torch_rnn_tanh", "torch_rnn_relu", "torch_lstm", "torch_gru", "torch_lstm_proj"]
KERAS_FILES = ["keras_simple_rnn", "keras_lstm", "keras_gru", "keras_gru_cho"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def random_params(cell, input_size, seed=0, second_bias=False):
    """Float32 NumPy params of the layout ``cell.init`` makes, every entry random."""
    rng = np.random.default_rng(seed)
    width = cell.gates * cell.hidden_size
    shapes = {"w_i": (input_size, width), "w_h": (cell.output_size, width), "b": (width,)}
    if getattr(cell, "proj_size", 0):
        shapes["w_hr"] = (cell.hidden_size, cell.proj_size)
    if second_bias or (isinstance(cell, jaxrnn.GRU) and cell.reset_after):
        shapes["b_h"] = (width,)
    return {k: rng.normal(0, 0.5, shape).astype(np.float32) for k, shape in shapes.items()}


def load(name):
    with np.load(GOLDEN / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def golden_cell(g):
    kind, hidden = str(g["kind"]), int(g["hidden_size"])
    if kind == "rnn":
        return jaxrnn.SimpleRNN(hidden, activation=str(g["activation"]))
    if kind == "lstm":  # nn.LSTM(proj_size=P) for torch_lstm_proj
        return jaxrnn.LSTM(hidden, proj_size=int(g["proj_size"]) if "proj_size" in g else 0)
    return jaxrnn.GRU(hidden, reset_after=bool(g["reset_after"]))


def torch_state_dict(g, model):
    prefix = f"{model}/sd/"
    return {k[len(prefix) :]: v for k, v in g.items() if k.startswith(prefix)}


def keras_weights(g, model, layer, direction):
    prefix = f"{model}/l{layer}_{direction}/"
    return [g[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) for k in g))]


def load_params(framework, g, cell, model, layer, reverse):
    if framework == "torch":
        return interop.from_torch(cell, torch_state_dict(g, model), layer, reverse)
    return interop.from_keras(cell, keras_weights(g, model, layer, "bw" if reverse else "fw"))


@functools.partial(jax.jit, static_argnames=("cell",))
def run_model(cell, layers, x, lengths):
    """Outputs ``[B, T, D*H]`` and final carries in PyTorch's ``h_n`` order (layer, direction).

    ``layers``: ``[params]`` for one forward layer, or ``[(params_fw, params_bw), ...]`` for a
    stack of bidirectional layers, each reading the previous one's concatenated outputs.
    """
    if isinstance(layers[0], dict):
        ys, carry = jaxrnn.rnn(cell, layers[0], x, lengths)
        return ys, [carry]
    carries = []
    for params in layers:
        x, (carry_fw, carry_bw) = jaxrnn.bidirectional(cell, cell, params, x, lengths)
        carries += [carry_fw, carry_bw]
    return x, carries


def model_params(framework, g, cell, model):
    if model == "uni":
        return [load_params(framework, g, cell, model, 0, False)]
    return [
        tuple(load_params(framework, g, cell, model, layer, rev) for rev in (False, True))
        for layer in range(2)
    ]


def check_states(cell, carries, g, prefix):
    if isinstance(cell, jaxrnn.LSTM):
        np.testing.assert_allclose(np.stack([c for c, _ in carries]), g[f"{prefix}/c"], **TOL)
        carries = [h for _, h in carries]
    np.testing.assert_allclose(np.stack(carries), g[f"{prefix}/h"], **TOL)


CASES = [("torch", name) for name in TORCH_FILES] + [("keras", name) for name in KERAS_FILES]


@pytest.mark.parametrize("model", ["uni", "bi2"])
@pytest.mark.parametrize("mode", ["full", "masked"])
@pytest.mark.parametrize(("framework", "name"), CASES, ids=[c[1] for c in CASES])
def test_golden_outputs(framework, name, model, mode):
    g = load(name)
    cell = golden_cell(g)
    x, lengths = g["x"], g["lengths"] if mode == "masked" else None
    ys, carries = run_model(cell, model_params(framework, g, cell, model), x, lengths)
    want = g[f"{model}/{mode}/ys"]
    assert ys.shape == want.shape and ys.dtype == np.float32
    if lengths is not None:
        valid = np.arange(x.shape[1])[None, :] < lengths[:, None]
        np.testing.assert_array_equal(np.asarray(ys)[~valid], 0.0)  # jaxrnn: zero past lengths
        # Keras differs there (see test_keras_padding_outputs); PyTorch also gives zeros.
        ys, want = np.asarray(ys)[valid], want[valid]
    np.testing.assert_allclose(ys, want, **TOL)
    check_states(cell, carries, g, f"{model}/{mode}")


def test_keras_padding_outputs():
    """What Keras writes past each length, the one place jaxrnn (zeros) differs from it.

    A single masked layer repeats its last valid output; inside ``Bidirectional`` both halves
    are zero, as in jaxrnn.
    """
    g = load("keras_lstm")
    lengths = g["lengths"]
    uni, bi = g["uni/masked/ys"], g["bi2/masked/ys"]
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(uni[b, n:], np.broadcast_to(uni[b, n - 1], uni[b, n:].shape))
        np.testing.assert_array_equal(bi[b, n:], 0.0)


@pytest.mark.parametrize("name", TORCH_FILES)
def test_torch_round_trip_is_exact(name):
    g = load(name)
    cell = golden_cell(g)
    for model, layers, directions in (("uni", 1, (False,)), ("bi2", 2, (False, True))):
        sd = torch_state_dict(g, model)
        back = {}
        for layer in range(layers):
            for reverse in directions:
                params = interop.from_torch(cell, sd, layer, reverse)
                assert params["b_h"].dtype == np.float32
                back |= interop.to_torch(cell, params, layer, reverse)
        assert sorted(back) == sorted(sd)
        for key, value in sd.items():
            assert back[key].dtype == value.dtype and back[key].flags.c_contiguous
            np.testing.assert_array_equal(back[key], value, err_msg=key)


@pytest.mark.parametrize("name", KERAS_FILES)
def test_keras_round_trip_is_exact(name):
    g = load(name)
    cell = golden_cell(g)
    for model, layers, directions in (("uni", 1, ("fw",)), ("bi2", 2, ("fw", "bw"))):
        for layer in range(layers):
            for direction in directions:
                weights = keras_weights(g, model, layer, direction)
                back = interop.to_keras(cell, interop.from_keras(cell, weights))
                assert len(back) == len(weights) == 3
                for got, want in zip(back, weights, strict=True):
                    assert got.dtype == want.dtype and got.shape == want.shape
                    np.testing.assert_array_equal(got, want)


CELLS = [
    jaxrnn.SimpleRNN(4),
    jaxrnn.LSTM(4),
    jaxrnn.LSTM(4, proj_size=2),
    jaxrnn.GRU(4),
    jaxrnn.GRU(4, reset_after=False),
]


@pytest.mark.parametrize("cell", CELLS, ids=repr)
def test_params_round_trip_is_exact(cell):
    """from_*(to_*(params)) == params, wherever the framework can hold the params."""
    params = random_params(cell, 3, second_bias=not isinstance(cell, jaxrnn.GRU))
    if not (isinstance(cell, jaxrnn.GRU) and not cell.reset_after):
        back = interop.from_torch(cell, interop.to_torch(cell, params, 1, True), 1, True)
        jax.tree.map(np.testing.assert_array_equal, back, params)
    if getattr(cell, "proj_size", 0):
        with pytest.raises(ValueError, match="proj_size, which Keras's recurrent layers do not"):
            interop.to_keras(cell, params)
        return
    keras_params = dict(params)
    if not isinstance(cell, jaxrnn.GRU):
        keras_params.pop("b_h")  # Keras has one bias here (to_keras would add b_h into it)
    back = interop.from_keras(cell, interop.to_keras(cell, keras_params))
    jax.tree.map(np.testing.assert_array_equal, back, keras_params)


def test_torch_proj_size():
    """The projected LSTM's layout, and the cells it cannot load into."""
    g = load("torch_lstm_proj")
    sd = torch_state_dict(g, "bi2")
    cell = jaxrnn.LSTM(3, proj_size=2)
    params = interop.from_torch(cell, sd, 1, True, input_size=4)  # reads 2 * P features
    np.testing.assert_array_equal(params["w_hr"], sd["weight_hr_l1_reverse"].T)
    np.testing.assert_array_equal(params["w_h"], sd["weight_hh_l1_reverse"].T)
    assert params["w_h"].shape == (2, 12)
    assert sorted(interop.torch_keys(0, proj=True)) == sorted(
        ["weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"]
    )
    with pytest.raises(ValueError, match=r"proj_size=2; load it into LSTM\(3, proj_size=2\)"):
        interop.from_torch(jaxrnn.LSTM(3), sd)
    with pytest.raises(ValueError, match=r"weight_hh_l0 has shape \(12, 2\), expected \(12, 1\)"):
        interop.from_torch(jaxrnn.LSTM(3, proj_size=1), sd)
    with pytest.raises(KeyError, match=r"weight_hr_l0"):
        interop.from_torch(cell, torch_state_dict(load("torch_lstm"), "uni"))
    with pytest.raises(ValueError, match=r"params for .* must have the keys .*w_hr"):
        interop.to_torch(cell, {k: v for k, v in params.items() if k != "w_hr"})


@pytest.mark.parametrize(
    "cell",
    [
        jaxrnn.LSTM(4, peepholes=True),
        jaxrnn.LSTM(4, cell_clip=1.0),
        jaxrnn.LSTM(4, proj_size=2, proj_clip=1.0),
        jaxrnn.LSTM(4, layer_norm=True),
        jaxrnn.GRU(4, layer_norm=True),
    ],
    ids=repr,
)
def test_variants_neither_framework_has_are_refused(cell):
    params = {k: np.asarray(v) for k, v in cell.init(jax.random.key(0), 3).items()}
    for convert in (interop.to_torch, interop.to_keras):
        with pytest.raises(ValueError, match="recurrent layers do not have"):
            convert(cell, params)
    with pytest.raises(ValueError, match="recurrent layers do not have"):
        interop.from_torch(cell, torch_state_dict(load("torch_lstm"), "uni"))
    with pytest.raises(ValueError, match="recurrent layers do not have"):
        interop.from_keras(cell, keras_weights(load("keras_lstm"), "uni", 0, "fw"))


def test_torch_lstm_through_keras_layout():
    """PyTorch LSTM -> jaxrnn -> Keras weights (two biases summed) -> jaxrnn: same outputs."""
    g = load("torch_lstm")
    cell = golden_cell(g)
    params = interop.from_torch(cell, torch_state_dict(g, "uni"))
    params = interop.from_keras(cell, interop.to_keras(cell, params))
    assert "b_h" not in params
    ys, _ = jaxrnn.rnn(cell, params, g["x"])
    np.testing.assert_allclose(ys, g["uni/full/ys"], **TOL)


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_forget_bias_is_folded_on_export_and_refused_on_import(framework):
    fb_cell, plain = jaxrnn.LSTM(4, forget_bias=1.0), jaxrnn.LSTM(4)
    params = random_params(plain, 3)
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    if framework == "torch":
        exported = interop.from_torch(plain, interop.to_torch(fb_cell, params))
    else:
        exported = interop.from_keras(plain, interop.to_keras(fb_cell, params))
    want, _ = jaxrnn.rnn(fb_cell, params, x)
    got, _ = jaxrnn.rnn(plain, exported, x)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"forget_bias=1\.0.*LSTM\(4\)"):
        if framework == "torch":
            interop.from_torch(fb_cell, interop.to_torch(plain, params))
        else:
            interop.from_keras(fb_cell, interop.to_keras(plain, params))


class FakeTensor:
    """Just the ``torch.Tensor`` methods interop uses: no torch needed to test that path."""

    def __init__(self, array):
        self.array = array
        self.dtype = "torch.float32"

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.array


def test_from_torch_reads_tensors_prefix_and_bias_free_modules():
    g = load("torch_gru")
    cell = golden_cell(g)
    sd = torch_state_dict(g, "uni")
    want = interop.from_torch(cell, sd)
    got = interop.from_torch(
        cell, {f"enc.rnn.{k}": FakeTensor(v) for k, v in sd.items()}, prefix="enc.rnn."
    )
    jax.tree.map(np.testing.assert_array_equal, got, want)
    no_bias = {k: v for k, v in sd.items() if k.startswith("weight")}
    params = interop.from_torch(cell, no_bias)
    np.testing.assert_array_equal(params["b"], 0.0)
    np.testing.assert_array_equal(params["b_h"], 0.0)
    assert interop.torch_keys(1, True, prefix="m.")["bias_hh"] == "m.bias_hh_l1_reverse"


def test_torch_errors():
    g = load("torch_lstm")
    sd = torch_state_dict(g, "bi2")
    with pytest.raises(ValueError, match=r"weight_hh_l0.*\(12, 3\).*\(16, 4\)"):
        interop.from_torch(jaxrnn.LSTM(4), sd)
    with pytest.raises(ValueError, match=r"weight_ih_l1 has shape \(12, 6\), expected \(12, 3\)"):
        interop.from_torch(jaxrnn.LSTM(3), sd, layer=1, input_size=3)
    interop.from_torch(jaxrnn.LSTM(3), sd, layer=1, input_size=6)
    bad = {**sd, "weight_ih_l0": np.zeros((11, 4), np.float32)}
    with pytest.raises(ValueError, match=r"weight_ih_l0.*\(11, 4\).*\(12, 'input_size'\)"):
        interop.from_torch(jaxrnn.LSTM(3), bad)
    with pytest.raises(ValueError, match=r"weight_hh_l1.*\(12, 3\).*LSTM with hidden_size=3"):
        interop.from_torch(jaxrnn.GRU(4), sd, layer=1)
    with pytest.raises(KeyError, match=r"weight_ih_l2.*available.*bias_hh_l0"):
        interop.from_torch(jaxrnn.LSTM(3), sd, layer=2)
    with pytest.raises(KeyError, match=r"weight_ih_l0_reverse"):
        interop.from_torch(jaxrnn.LSTM(3), torch_state_dict(g, "uni"), reverse=True)
    partial = {k: v for k, v in sd.items() if k != "bias_hh_l0"}
    with pytest.raises(KeyError, match=r"bias_hh_l0"):
        interop.from_torch(jaxrnn.LSTM(3), partial)
    with pytest.raises(ValueError, match=r"proj_size"):
        interop.from_torch(jaxrnn.LSTM(3), {**sd, "weight_hr_l0": np.zeros((3, 3), np.float32)})
    gru_sd = torch_state_dict(load("torch_gru"), "uni")
    with pytest.raises(ValueError, match=r"reset_after=True"):
        interop.from_torch(jaxrnn.GRU(3, reset_after=False), gru_sd)
    cho = jaxrnn.GRU(3, reset_after=False)
    with pytest.raises(ValueError, match=r"no PyTorch equivalent"):
        interop.to_torch(cho, random_params(cho, 2))
    with pytest.raises(ValueError, match=r"layer must be a non-negative int"):
        interop.from_torch(jaxrnn.LSTM(3), sd, layer=-1)
    with pytest.raises(TypeError, match=r"SimpleRNN, LSTM or GRU"):
        interop.from_torch("lstm", sd)
    with pytest.raises(TypeError, match=r"floating"):
        interop.from_torch(jaxrnn.LSTM(3), {**sd, "weight_ih_l0": np.zeros((12, 4), np.int32)})


def test_keras_errors():
    gru = load("keras_gru")
    cho = load("keras_gru_cho")
    w = keras_weights(gru, "uni", 0, "fw")
    with pytest.raises(ValueError, match=r"reset_after=True.*GRU\(3, reset_after=True\)"):
        interop.from_keras(jaxrnn.GRU(3, reset_after=False), w)
    with pytest.raises(ValueError, match=r"reset_after=False.*GRU\(3, reset_after=False\)"):
        interop.from_keras(jaxrnn.GRU(3), keras_weights(cho, "uni", 0, "fw"))
    with pytest.raises(ValueError, match=r"recurrent_kernel.*\(3, 9\).*\(5, 15\)"):
        interop.from_keras(jaxrnn.GRU(5), w)
    with pytest.raises(ValueError, match=r"kernel has shape \(4, 9\), expected \(5, 9\)"):
        interop.from_keras(jaxrnn.GRU(3), w, input_size=5)
    with pytest.raises(ValueError, match=r"Bidirectional"):
        interop.from_keras(jaxrnn.GRU(3), w + keras_weights(gru, "bi2", 0, "bw"))
    with pytest.raises(ValueError, match=r"get_weights"):
        interop.from_keras(jaxrnn.GRU(3), {"kernel": w[0]})
    lstm = jaxrnn.LSTM(3)
    with pytest.raises(ValueError, match=r"keys \['b', 'w_h', 'w_i'\].*got \['b', 'w_i'\]"):
        interop.to_keras(lstm, {"w_i": w[0], "b": w[2]})
    cho_cell = jaxrnn.GRU(3, reset_after=False)
    with pytest.raises(ValueError, match=r"got \['b', 'b_h', 'w_h', 'w_i'\]"):
        interop.to_keras(cho_cell, {**random_params(cho_cell, 2), "b_h": w[2][0]})
    with pytest.raises(ValueError, match=r"params\['b'\] has shape \(11,\), expected \(12,\)"):
        interop.to_keras(lstm, {**random_params(lstm, 2), "b": np.zeros(11, np.float32)})


def test_keras_use_bias_false():
    g = load("keras_gru")
    cell = golden_cell(g)
    kernel, recurrent, _ = keras_weights(g, "uni", 0, "fw")
    params = interop.from_keras(cell, [kernel, recurrent])
    assert set(params) == {"w_i", "w_h", "b", "b_h"}
    np.testing.assert_array_equal(params["b_h"], 0.0)
