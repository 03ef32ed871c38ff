"""jaxrnn.interop.from_flax/to_flax against Flax's own ``nn.RNN`` and ``nn.Bidirectional``.

Each Flax cell is run by Flax itself on random parameters (every bias non-zero) and by
``jaxrnn.rnn`` on the converted ones: the outputs of every valid step and the final carries
must agree. Past each length Flax's outputs are the cell's run on over the padding (jaxrnn's
are zero), so only valid steps are compared.
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import jaxrnn
from jaxrnn import interop

nn = pytest.importorskip("flax.linen")

B, T, D, H = 3, 5, 4, 6  # batch, time, input size, hidden size
LENGTHS = np.array([5, 2, 3])
TOL = {"rtol": 1e-5, "atol": 1e-5}

# id: (Flax cell, the jaxrnn cell of its math)
CASES = {
    "LSTMCell": (lambda: nn.LSTMCell(H), jaxrnn.LSTM(H)),
    "OptimizedLSTMCell": (lambda: nn.OptimizedLSTMCell(H), jaxrnn.LSTM(H)),
    "GRUCell": (lambda: nn.GRUCell(H), jaxrnn.GRU(H)),
    "SimpleCell": (lambda: nn.SimpleCell(H), jaxrnn.SimpleRNN(H)),
    "SimpleCell_relu": (
        lambda: nn.SimpleCell(H, activation_fn=nn.relu),
        jaxrnn.SimpleRNN(H, activation="relu"),
    ),
}


def inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, D)).astype(np.float32)


def flax_tree(module, seed=0, dtype=np.float32):
    """The ``params`` of ``module`` (its structure from Flax's init), every leaf random."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((B, T, D)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape), dtype), shapes)


def cell_tree(flax_cell, seed=0, dtype=np.float32):
    return flax_tree(nn.RNN(flax_cell), seed, dtype)["cell"]


def valid_steps(ys, lengths):
    return np.asarray(ys)[np.arange(T)[None, :] < np.asarray(lengths)[:, None]]


def assert_bits_equal(got, want):
    """The same dtype, shape and bits (``-0.0`` is not ``0.0`` here)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    unsigned = f"u{want.dtype.itemsize}"
    np.testing.assert_array_equal(got.view(unsigned), want.view(unsigned))


def assert_trees_bits_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(assert_bits_equal, got, want)


@pytest.mark.parametrize("name", list(CASES))
def test_rnn_matches_flax(name):
    make, cell = CASES[name]
    tree = cell_tree(make())
    xs = inputs()
    carry, ys = nn.RNN(make(), return_carry=True).apply(
        {"params": {"cell": tree}}, xs, seq_lengths=LENGTHS
    )
    params = interop.from_flax(tree, cell)
    ys_j, carry_j = jaxrnn.rnn(cell, params, xs, LENGTHS)
    np.testing.assert_allclose(valid_steps(ys_j, LENGTHS), valid_steps(ys, LENGTHS), **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry_j, carry)
    # The tree goes back as it came, bit for bit.
    assert_trees_bits_equal(interop.to_flax(params, cell), tree)


def test_layouts():
    """Where each Flax entry lands: the gates side by side in jaxrnn's order, Flax's one bias
    per gate in ``b``, GRUCell's recurrent ``hn`` bias in the n block of ``b_h``."""
    lstm = cell_tree(nn.LSTMCell(H))
    p = interop.from_flax(lstm, jaxrnn.LSTM(H))
    assert set(p) == {"w_i", "w_h", "b"}
    for k, x in enumerate("ifgo"):
        block = slice(k * H, (k + 1) * H)
        np.testing.assert_array_equal(p["w_i"][:, block], lstm[f"i{x}"]["kernel"])
        np.testing.assert_array_equal(p["w_h"][:, block], lstm[f"h{x}"]["kernel"])
        np.testing.assert_array_equal(p["b"][block], lstm[f"h{x}"]["bias"])
    gru = cell_tree(nn.GRUCell(H))
    p = interop.from_flax(gru, jaxrnn.GRU(H))
    for k, x in enumerate("rzn"):
        block = slice(k * H, (k + 1) * H)
        np.testing.assert_array_equal(p["w_i"][:, block], gru[f"i{x}"]["kernel"])
        np.testing.assert_array_equal(p["w_h"][:, block], gru[f"h{x}"]["kernel"])
        np.testing.assert_array_equal(p["b"][block], gru[f"i{x}"]["bias"])
    np.testing.assert_array_equal(p["b_h"][: 2 * H], 0.0)
    np.testing.assert_array_equal(p["b_h"][2 * H :], gru["hn"]["bias"])
    simple = cell_tree(nn.SimpleCell(H))
    p = interop.from_flax(simple, jaxrnn.SimpleRNN(H))
    np.testing.assert_array_equal(p["w_i"], simple["i"]["kernel"])
    np.testing.assert_array_equal(p["w_h"], simple["h"]["kernel"])
    np.testing.assert_array_equal(p["b"], simple["i"]["bias"])


def test_bidirectional_matches_flax():
    """``nn.Bidirectional`` reverses each valid prefix and keeps the padding at the end, as
    ``jaxrnn.bidirectional`` does: the same outputs on valid steps, the same final carries
    (the backward one after reading step 0). An LSTM forward, a GRU backward."""
    model = nn.Bidirectional(nn.RNN(nn.LSTMCell(H)), nn.RNN(nn.GRUCell(H)), return_carry=True)
    tree = flax_tree(model, seed=1)
    xs = inputs(1)
    (carry_fw, carry_bw), ys = model.apply({"params": tree}, xs, seq_lengths=LENGTHS)
    cells = (jaxrnn.LSTM(H), jaxrnn.GRU(H))
    params = tuple(
        interop.from_flax(tree[side]["cell"], cell)
        for side, cell in zip(("forward_rnn", "backward_rnn"), cells, strict=True)
    )
    ys_j, (carry_fw_j, carry_bw_j) = jaxrnn.bidirectional(*cells, params, xs, LENGTHS)
    np.testing.assert_allclose(valid_steps(ys_j, LENGTHS), valid_steps(ys, LENGTHS), **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), carry_fw_j, carry_fw)
    np.testing.assert_allclose(carry_bw_j, carry_bw, **TOL)


def test_length_zero_differs_only_in_flax_carry():
    """With a length of 0 Flax's ``return_carry`` picks step ``-1``: the carry after the whole
    padded row, where jaxrnn gives the initial (zero) carry. Every other row agrees."""
    cell, lengths = jaxrnn.GRU(H), np.array([5, 0, 3])
    tree = cell_tree(nn.GRUCell(H), seed=2)
    xs = inputs(2)
    carry, ys = nn.RNN(nn.GRUCell(H), return_carry=True).apply(
        {"params": {"cell": tree}}, xs, seq_lengths=lengths
    )
    params = interop.from_flax(tree, cell)
    ys_j, carry_j = jaxrnn.rnn(cell, params, xs, lengths)
    np.testing.assert_allclose(valid_steps(ys_j, lengths), valid_steps(ys, lengths), **TOL)
    np.testing.assert_allclose(np.asarray(carry_j)[[0, 2]], np.asarray(carry)[[0, 2]], **TOL)
    np.testing.assert_array_equal(carry_j[1], 0.0)
    _, full = jaxrnn.rnn(cell, params, xs)
    np.testing.assert_allclose(carry[1], full[1], **TOL)


def test_to_flax_runs_in_flax_with_biases_folded():
    """Params Flax has no room for: an LSTM's second bias and constant ``forget_bias``, a
    GRU's ``b_h`` in the r, z blocks. ``to_flax`` adds them into Flax's one bias, and the Flax
    model computes what jaxrnn does."""
    xs = inputs(3)
    rng = np.random.default_rng(3)
    for cell, flax_cell in (
        (jaxrnn.LSTM(H, forget_bias=1.0), nn.LSTMCell(H)),
        (jaxrnn.GRU(H), nn.GRUCell(H)),
    ):
        params = cell.init(jax.random.key(3), D)
        width = cell.gates * H
        params["b"] = jnp.asarray(rng.normal(0, 0.5, width), jnp.float32)
        params["b_h"] = jnp.asarray(rng.normal(0, 0.5, width), jnp.float32)
        tree = interop.to_flax(params, cell)
        ys = nn.RNN(flax_cell).apply({"params": {"cell": tree}}, xs)
        ys_j, _ = jaxrnn.rnn(cell, params, xs)
        np.testing.assert_allclose(ys_j, ys, **TOL)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "SimpleCell"])
def test_round_trips_are_exact(name):
    """``from_flax(to_flax(p)) == p`` and ``to_flax(from_flax(t)) == t`` bit for bit: negative
    zeros and bfloat16 included."""
    make, cell = CASES[name]
    for dtype in (np.float32, ml_dtypes.bfloat16):
        tree = cell_tree(make(), seed=4, dtype=dtype)
        tree = jax.tree.map(lambda a: a.at[..., 0].set(-0.0), tree)
        params = interop.from_flax(tree, cell)
        assert all(v.dtype == dtype for v in params.values())
        assert_trees_bits_equal(interop.to_flax(params, cell), tree)
        assert_trees_bits_equal(interop.from_flax(interop.to_flax(params, cell), cell), params)
    params = {k: jnp.asarray(v) for k, v in cell.init(jax.random.key(4), D).items()}
    params["b"] = params["b"].at[0].set(-0.0).at[1].set(0.25)
    assert_trees_bits_equal(interop.from_flax(interop.to_flax(params, cell), cell), params)
    if not isinstance(cell, jaxrnn.GRU):  # an all-zero b_h changes nothing either
        with_b_h = {**params, "b_h": jnp.zeros_like(params["b"])}
        assert_trees_bits_equal(interop.to_flax(with_b_h, cell), interop.to_flax(params, cell))


def test_cells_without_a_jaxrnn_twin_are_named():
    for flax_cell in (nn.MGUCell(H), nn.MGUCell(H, reset_gate=False)):
        with pytest.raises(ValueError, match=r"Flax MGUCell's .*no jaxrnn twin"):
            interop.from_flax(cell_tree(flax_cell), jaxrnn.GRU(H))
    conv = nn.RNN(nn.ConvLSTMCell(H, kernel_size=(3,)))
    shapes = jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((B, T, 7, D)))
    tree = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes["params"]["cell"])
    with pytest.raises(ValueError, match=r"Flax ConvLSTMCell's .*no jaxrnn twin"):
        interop.from_flax(tree, jaxrnn.LSTM(H))


def test_another_cells_tree_or_whole_variables_are_refused():
    gru = cell_tree(nn.GRUCell(H))
    with pytest.raises(
        ValueError, match=r"Flax GRUCell's.*load them into jaxrnn GRU\(6\), not LSTM\(6\)"
    ):
        interop.from_flax(gru, jaxrnn.LSTM(H))
    lstm = cell_tree(nn.LSTMCell(H))
    with pytest.raises(
        ValueError, match=r"LSTMCell/OptimizedLSTMCell's.*LSTM\(6\), not SimpleRNN\(6\)"
    ):
        interop.from_flax(lstm, jaxrnn.SimpleRNN(H))
    with pytest.raises(ValueError, match=r'variables\["params"\]\["cell"\]'):
        interop.from_flax({"params": {"cell": gru}}, jaxrnn.GRU(H))
    with pytest.raises(ValueError, match=r'variables\["params"\]\["cell"\]'):
        interop.from_flax({"forward_rnn": {"cell": gru}, "backward_rnn": {}}, jaxrnn.GRU(H))
    with pytest.raises(TypeError, match=r"tree first and the jaxrnn cell second"):
        interop.from_flax(jaxrnn.GRU(H), gru)
    with pytest.raises(TypeError, match=r"tree first"):
        interop.to_flax(jaxrnn.GRU(H), interop.from_flax(gru, jaxrnn.GRU(H)))


def test_bad_trees_name_the_key_and_the_expected_shape():
    lstm, cell = cell_tree(nn.LSTMCell(H)), jaxrnn.LSTM(H)
    missing = {**lstm, "hi": {"kernel": lstm["hi"]["kernel"]}}
    with pytest.raises(KeyError, match=r"lacks \['hi'\]\['bias'\] \(shape \(6,\)\)"):
        interop.from_flax(missing, cell)
    gru = cell_tree(nn.GRUCell(H))
    no_hz = {k: v for k, v in gru.items() if k != "hz"}
    with pytest.raises(KeyError, match=r"\['hz'\]\['kernel'\] \(shape \(6, 6\)\)"):
        interop.from_flax(no_hz, jaxrnn.GRU(H))
    no_ii = {k: v for k, v in lstm.items() if k != "ii"}
    with pytest.raises(KeyError, match=r"\['ii'\]\['kernel'\] \(shape \('input_size', 6\)\)"):
        interop.from_flax(no_ii, cell)
    extra_bias = {**gru, "hr": {**gru["hr"], "bias": np.zeros(H, np.float32)}}
    with pytest.raises(
        ValueError,
        match=r"entries that the tree of a Flax GRUCell with features=6 \(jaxrnn GRU\(6\)\) "
        r"does not have: \['hr'\]\['bias'\]",
    ):
        interop.from_flax(extra_bias, jaxrnn.GRU(H))
    with pytest.raises(ValueError, match=r"does not have: \['extra'\]"):
        interop.from_flax({**lstm, "extra": {"kernel": np.zeros((H, H), np.float32)}}, cell)
    small = {**lstm, "hf": {**lstm["hf"], "kernel": np.zeros((5, 5), np.float32)}}
    with pytest.raises(
        ValueError,
        match=r"cell_params\['hf'\]\['kernel'\] has shape \(5, 5\), expected \(6, 6\).*"
        r"features=5",
    ):
        interop.from_flax(small, cell)
    with pytest.raises(ValueError, match=r"\['hg'\]\['bias'\] has shape \(5,\), expected \(6,\)"):
        interop.from_flax({**lstm, "hg": {**lstm["hg"], "bias": np.zeros(5, np.float32)}}, cell)
    narrow = {**lstm, "ig": {"kernel": np.zeros((3, H), np.float32)}}
    with pytest.raises(
        ValueError, match=r"\['ig'\]\['kernel'\] has shape \(3, 6\), expected \(4, 6"
    ):
        interop.from_flax(narrow, cell)
    with pytest.raises(
        ValueError, match=r"\['ii'\]\['kernel'\] has shape \(4, 6\), expected \(5, 6"
    ):
        interop.from_flax(lstm, cell, input_size=5)
    interop.from_flax(lstm, cell, input_size=4)
    mixed = {**lstm, "hg": {**lstm["hg"], "bias": np.zeros(H, np.float16)}}
    with pytest.raises(ValueError, match=r"mix the dtypes"):
        interop.from_flax(mixed, cell)
    with pytest.raises(TypeError, match=r"floating"):
        interop.from_flax({**lstm, "hg": {**lstm["hg"], "bias": np.zeros(H, np.int32)}}, cell)
    with pytest.raises(ValueError, match=r"cell_params\['hi'\] must be a dict"):
        interop.from_flax({**lstm, "hi": np.zeros((H, H), np.float32)}, cell)


def test_cells_flax_cannot_represent_are_refused():
    gru, lstm = cell_tree(nn.GRUCell(H)), cell_tree(nn.LSTMCell(H))
    cho = jaxrnn.GRU(H, reset_after=False)
    with pytest.raises(ValueError, match=r"load it into GRU\(6, reset_after=True\)"):
        interop.from_flax(gru, cho)
    with pytest.raises(ValueError, match=r"has no Flax equivalent"):
        interop.to_flax(cho.init(jax.random.key(0), D), cho)
    with pytest.raises(ValueError, match=r"forget_bias=1\.0.*LSTM\(6\)"):
        interop.from_flax(lstm, jaxrnn.LSTM(H, forget_bias=1.0))
    proj = jaxrnn.LSTM(H, proj_size=2)
    with pytest.raises(ValueError, match=r"proj_size, which Flax's recurrent layers do not"):
        interop.from_flax(lstm, proj)
    with pytest.raises(ValueError, match=r"proj_size, which Flax's recurrent layers do not"):
        interop.to_flax(proj.init(jax.random.key(0), D), proj)
    with pytest.raises(ValueError, match=r"params for .* must have the keys"):
        interop.to_flax({"w_i": np.zeros((D, 4 * H), np.float32)}, jaxrnn.LSTM(H))
