"""Golden outputs of PyTorch and Keras recurrent layers, read by ``tests/test_interop.py``.

Run by hand (the test suite needs neither framework: it only reads the ``.npz`` files made
here), from the repository root, in a throwaway virtual environment outside the repository::

    python3 -m venv ../golden-venv
    ../golden-venv/bin/pip install torch==2.13.0 numpy tensorflow-cpu keras
    KERAS_BACKEND=tensorflow ../golden-venv/bin/python tests/golden/make_golden.py

Committed files were made with torch 2.13.0 (CPU), keras 3.15.1 on tensorflow-cpu 2.21.0 and
numpy 2.4.6; each file stores the versions that made it (``framework_version``,
``numpy_version``). Everything is float32 and seeded, so a rerun gives the same inputs and
weights and outputs equal up to float rounding.

One file per framework and cell, ``{torch,keras}_{cell}.npz``, a few KB each. Each holds

* ``x`` ``[B, T, I]`` float32, with garbage (not zeros) past each length, and ``lengths``
  ``[B]`` int32 (``1 <= length <= T``: PyTorch cannot pack empty sequences);
* two models: ``uni`` (one forward layer of hidden size ``H``) and ``bi2`` (two
  bidirectional layers; the second reads the first's concatenated ``[B, T, 2H]`` outputs);
* each model's weights: ``{model}/sd/{state_dict key}`` for PyTorch,
  ``{model}/l{layer}_{fw|bw}/{i}`` (the ``i``-th array of ``get_weights()``) for Keras;
* each model run twice: ``{model}/full/*`` on all ``T`` steps, ``{model}/masked/*`` on the
  padded batch (PyTorch: ``pack_padded_sequence`` then ``pad_packed_sequence``; Keras: a
  boolean ``mask`` from ``lengths``), with ``ys`` ``[B, T, D*H]`` the last layer's outputs and
  ``h`` (and ``c`` for LSTMs) ``[L*D, B, H]`` the final states, row ``layer * D + direction``
  as PyTorch's ``h_n`` orders them (``D`` directions, ``L`` layers);
* ``kind``, ``hidden_size``, ``activation``, ``reset_after``, ``proj_size``: the jaxrnn cell to
  load into.

``torch_lstm_proj`` is an ``nn.LSTM(proj_size=P)``: its outputs and ``h`` have ``P`` units
(``[B, T, D*P]``, ``[L*D, B, P]``), ``c`` has ``H``, the second layer reads ``2P`` features.

What each framework puts at padded steps (what the tests check): PyTorch's
``pad_packed_sequence`` gives zeros, as jaxrnn does. A single Keras layer with a mask repeats
its last valid output at every later step; inside ``Bidirectional`` it gives zeros. The final
states ignore padding in all three.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
B, T, IN, H = 4, 5, 4, 3
P = 2  # torch_lstm_proj's proj_size
LENGTHS = np.array([5, 2, 1, 4], np.int32)
SEED = 20240603


def make_inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, IN)).astype(np.float32)
    # Padding holds large values, so an implementation that reads it gets visibly wrong numbers.
    pad = np.arange(T)[None, :] >= LENGTHS[:, None]
    x[pad] = 10.0
    return x


def meta(kind: str, *, activation="tanh", reset_after=True, proj_size=0) -> dict[str, np.ndarray]:
    return {
        "proj_size": np.array(proj_size),
        "kind": np.array(kind),
        "hidden_size": np.array(H),
        "activation": np.array(activation),
        "reset_after": np.array(reset_after),
        "numpy_version": np.array(np.__version__),
    }


def save(name: str, arrays: dict[str, np.ndarray]) -> None:
    path = HERE / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    print(f"{path.name}: {path.stat().st_size} bytes, {len(arrays)} arrays")


# ---------------------------------------------------------------------------------------------
# PyTorch


def torch_case(name: str, kind: str, seed: int, **cell) -> None:
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(seed)
    modules = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
    extra = {"nonlinearity": cell["activation"]} if kind == "rnn" else {}
    if cell.get("proj_size"):
        extra["proj_size"] = cell["proj_size"]
    x = make_inputs(seed)
    arrays = {"x": x, "lengths": LENGTHS, **meta(kind, **cell)}
    arrays["framework_version"] = np.array(f"torch {torch.__version__}")
    for model_name, layers, bidir in (("uni", 1, False), ("bi2", 2, True)):
        model = modules[kind](
            IN, H, num_layers=layers, bidirectional=bidir, batch_first=True, **extra
        )
        model.eval()
        for key, value in model.state_dict().items():
            arrays[f"{model_name}/sd/{key}"] = value.detach().numpy().astype(np.float32)
        with torch.no_grad():
            xt = torch.from_numpy(x)
            runs = {"full": model(xt)}
            packed = pack_padded_sequence(
                xt, torch.from_numpy(LENGTHS).long(), batch_first=True, enforce_sorted=False
            )
            out, state = model(packed)
            ys, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
            runs["masked"] = (ys, state)
        for mode, (ys, state) in runs.items():
            arrays[f"{model_name}/{mode}/ys"] = ys.numpy()
            h, c = state if kind == "lstm" else (state, None)
            arrays[f"{model_name}/{mode}/h"] = h.numpy()
            if c is not None:
                arrays[f"{model_name}/{mode}/c"] = c.numpy()
    save(name, arrays)


# ---------------------------------------------------------------------------------------------
# Keras


def keras_case(name: str, kind: str, seed: int, **cell) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = make_inputs(seed)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    arrays = {"x": x, "lengths": LENGTHS, **meta(kind, **cell)}
    arrays["framework_version"] = np.array(
        f"keras {keras.__version__} ({keras.backend.backend()} backend)"
    )

    def layer():
        kw = {"return_sequences": True, "return_state": True}
        if kind == "rnn":
            return keras.layers.SimpleRNN(H, activation=cell["activation"], **kw)
        if kind == "lstm":
            return keras.layers.LSTM(H, **kw)
        return keras.layers.GRU(H, reset_after=cell["reset_after"], **kw)

    def randomize(lay, inputs) -> None:
        """Build ``lay``, then replace every weight (biases included: Keras starts them at 0)."""
        lay(inputs)
        lay.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in lay.get_weights()])

    n_states = 2 if kind == "lstm" else 1
    for model_name, layers, bidir in (("uni", 1, False), ("bi2", 2, True)):
        stack = []
        inputs = x
        for index in range(layers):
            lay = keras.layers.Bidirectional(layer()) if bidir else layer()
            randomize(lay, inputs)
            stack.append(lay)
            weights = lay.get_weights()
            per_dir = len(weights) // (2 if bidir else 1)
            for d, direction in enumerate(("fw", "bw")[: 2 if bidir else 1]):
                for i, w in enumerate(weights[d * per_dir : (d + 1) * per_dir]):
                    arrays[f"{model_name}/l{index}_{direction}/{i}"] = w
            inputs = keras.ops.convert_to_numpy(lay(inputs)[0])
        for mode, m in (("full", None), ("masked", mask)):
            inputs, hs, cs = x, [], []
            for lay in stack:
                out = [keras.ops.convert_to_numpy(o) for o in lay(inputs, mask=m)]
                inputs, states = out[0], out[1:]
                # Per direction: [h] or [h, c] (Keras' LSTM state order), fw before bw.
                for d in range(len(states) // n_states):
                    hs.append(states[d * n_states])
                    if kind == "lstm":
                        cs.append(states[d * n_states + 1])
            arrays[f"{model_name}/{mode}/ys"] = inputs
            arrays[f"{model_name}/{mode}/h"] = np.stack(hs)
            if kind == "lstm":
                arrays[f"{model_name}/{mode}/c"] = np.stack(cs)
    save(name, arrays)


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    torch_case("torch_rnn_tanh", "rnn", SEED + 1, activation="tanh")
    torch_case("torch_rnn_relu", "rnn", SEED + 2, activation="relu")
    torch_case("torch_lstm", "lstm", SEED + 3)
    torch_case("torch_gru", "gru", SEED + 4, reset_after=True)
    torch_case("torch_lstm_proj", "lstm", SEED + 9, proj_size=P)
    keras_case("keras_simple_rnn", "rnn", SEED + 5, activation="tanh")
    keras_case("keras_lstm", "lstm", SEED + 6)
    keras_case("keras_gru", "gru", SEED + 7, reset_after=True)
    keras_case("keras_gru_cho", "gru", SEED + 8, reset_after=False)


if __name__ == "__main__":
    main()
