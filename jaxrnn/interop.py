"""Weights to and from PyTorch, Keras and Flax recurrent layers.

Load a trained PyTorch ``nn.RNN``/``nn.LSTM``/``nn.GRU``, Keras ``SimpleRNN``/``LSTM``/``GRU``
or Flax ``nn.RNN`` over a ``SimpleCell``/``LSTMCell``/``OptimizedLSTMCell``/``GRUCell`` into a
jaxrnn cell, run it with :func:`jaxrnn.rnn`/:func:`jaxrnn.bidirectional` and get the same
numbers (checked against golden outputs of PyTorch and Keras in ``tests/golden/``, and against
Flax itself in ``tests/test_interop_flax.py``), or write jaxrnn parameters back in their layout.
No framework is imported: state dicts may hold ``torch.Tensor`` values (read through their
``.numpy()``) or NumPy arrays, Flax trees JAX or NumPy arrays.

Layouts (``I`` input size, ``H`` hidden size, ``k`` gates: 1 SimpleRNN, 4 LSTM, 3 GRU; ``P``
the projection of an ``LSTM(H, proj_size=P)``, whose ``w_h`` is ``[P, 4H]``):

=========================  ========================================  ===========================
jaxrnn                     PyTorch (``..._l{layer}[_reverse]``)      Keras ``get_weights()``
=========================  ========================================  ===========================
``w_i [I, kH]``            ``weight_ih [kH, I]`` (transposed)        ``kernel [I, kH]``
``w_h [H, kH]``            ``weight_hh [kH, H]`` (transposed)        ``recurrent_kernel [H, kH]``
``b [kH]``                 ``bias_ih [kH]``                          ``bias [kH]``, GRU
                                                                     ``reset_after``: ``bias[0]``
``b_h [kH]``               ``bias_hh [kH]``                          GRU ``reset_after``:
                                                                     ``bias[1]``; else none
``w_hr [H, P]``            ``weight_hr [P, H]`` (transposed)         none
LSTM gates i, f, g, o      i, f, g, o                                i, f, c, o
GRU gates r, z, n          r, z, n                                   z, r, h
=========================  ========================================  ===========================

Which cell to build for which layer:

* PyTorch ``nn.RNN(nonlinearity=...)``: ``SimpleRNN(H, activation=...)``; ``nn.LSTM``:
  ``LSTM(H)``, ``nn.LSTM(proj_size=P)``: ``LSTM(H, proj_size=P)``; ``nn.GRU``: ``GRU(H)``
  (``reset_after=True``, PyTorch's only GRU). Layer ``l`` of a stack and its backward
  direction are read with ``layer=l, reverse=True``; a layer above
  the first takes ``2 * H`` (``2 * P``) inputs when bidirectional, forward features first, as
  :func:`jaxrnn.bidirectional` (``merge="concat"``) produces them.
* Keras ``SimpleRNN``: ``SimpleRNN(H)`` (``"tanh"``, or ``"relu"`` if the layer used it);
  ``LSTM``: ``LSTM(H)``; ``GRU(reset_after=r)``: ``GRU(H, reset_after=r)``. Only the default
  activations (``tanh``, recurrent ``sigmoid``) have a jaxrnn equivalent; the weights cannot
  tell, so that is the caller's to check. A ``Bidirectional`` layer's ``get_weights()`` is the
  forward layer's list followed by the backward one's: split it in half.

Flax: ``nn.RNN(cell)`` holds the cell's tree under ``variables["params"]["cell"]``
(``nn.Bidirectional(fw, bw)`` under ``["forward_rnn"]["cell"]`` and ``["backward_rnn"]["cell"]``):
one ``Dense`` per gate ``x``, ``i{x}`` reading the input (``kernel [I, H]``), ``h{x}`` the state
(``kernel [H, H]``), some with a ``bias [H]``; jaxrnn's blocks are the gates in its order:

===============  ==============================  ==============================  ==================
jaxrnn           LSTMCell, OptimizedLSTMCell     GRUCell                         SimpleCell
===============  ==============================  ==============================  ==================
``w_i [I, kH]``  ``i{x}/kernel``, x: i f g o     ``i{x}/kernel``, x: r z n       ``i/kernel``
``w_h [H, kH]``  ``h{x}/kernel``                 ``h{x}/kernel``                 ``h/kernel``
``b [kH]``       ``h{x}/bias``                   ``i{x}/bias``                   ``i/bias``
``b_h [kH]``     none                            r, z: zeros; n: ``hn/bias``     none
cell             ``LSTM(H)``                     ``GRU(H)``                      ``SimpleRNN(H)``
carry            ``(c, h)``                      ``h``                           ``h``
===============  ==============================  ==============================  ==================

* ``LSTMCell`` and ``OptimizedLSTMCell`` (which fuses the matmuls) have the same tree and the
  same math, so one conversion serves both. Which Flax cell a tree belongs to shows in its
  keys: ``MGUCell`` (``if, in, hf, hn``) and ``ConvLSTMCell`` (``ih, hh``) have no jaxrnn
  twin and are refused with a ``ValueError`` naming them, as is another cell's tree.
* Flax's GRU has ``n = tanh(x @ W_in + b_in + r * (h @ W_hn + b_hn))``: jaxrnn's
  ``GRU(reset_after=True)`` with ``b_h = [0, 0, b_hn]``; ``GRU(reset_after=False)`` is refused.
* Only the default activations (``gate_fn=sigmoid``, ``activation_fn=tanh``; ``SimpleCell``
  with ``relu``: ``SimpleRNN(H, activation="relu")``), ``SimpleCell(residual=False)`` and
  the zero ``carry_init`` are what jaxrnn computes. The tree cannot tell, so that is the
  caller's to check (``residual=True`` is ``SimpleRNN`` with ``w_h + I``, up to one rounding;
  another ``carry_init`` goes to :func:`jaxrnn.rnn` as ``initial_carry``).
* ``nn.RNN(..., seq_lengths=lengths, return_carry=True)`` matches
  ``jaxrnn.rnn(..., lengths)`` on every valid step and in the final carry (the state after the
  last valid step); past its length, Flax's output is the cell's run on over the padding,
  jaxrnn's is zero. A length of 0 differs: Flax's carry is then the one after the whole
  padded row (it picks step ``length - 1``, i.e. the last), jaxrnn's the initial carry.
  ``nn.Bidirectional`` and ``nn.RNN(reverse=True, keep_order=True)`` reverse only each valid
  prefix and keep the padding at the end, as :func:`jaxrnn.bidirectional` and
  ``jaxrnn.rnn(reverse=True)`` do.

Exactness and the choices made:

* ``to_torch(from_torch(sd)) == sd``, ``to_keras(from_keras(w)) == w`` and
  ``to_flax(from_flax(t), cell) == t`` bit for bit: PyTorch's two biases are kept apart (``b``
  and ``b_h``), transposes, gate permutations, splits and concatenations move values without
  arithmetic, and dtypes are kept (bfloat16, float16, float32; float64 only with
  ``jax_enable_x64``).
* Keras has one bias for ``SimpleRNN``/``LSTM``: ``to_keras`` writes ``b + b_h`` (one float
  rounding) when params have a ``b_h`` (e.g. loaded from PyTorch). Flax likewise for
  ``SimpleCell``/``LSTMCell`` and for a GRU's r, z blocks (``GRUCell`` has no recurrent bias
  there): ``to_flax`` adds each non-zero entry of ``b_h`` into the one bias and leaves the
  others untouched, so ``from_flax(to_flax(p, cell), cell) == p`` bit for bit wherever those
  entries are zero, as in any params that ``from_flax`` made.
* PyTorch state dicts of ``bias=False`` modules (no bias entries) load with zero biases;
  Keras ``use_bias=False`` lists (two arrays) likewise.
* ``LSTM(forget_bias=f)`` with ``f != 0`` (TF1's constant added inside every step) has no
  counterpart in any of the three. ``to_*`` folds it into the exported forget-gate bias, so the
  exported layer computes the same function. ``from_*`` refuses such a cell with a
  ``ValueError``, because loading would have to subtract ``f`` from the stored bias and the
  round trip would no longer be exact: load into ``LSTM(H)`` (``forget_bias=0``).
* Shapes that do not fit the cell's ``hidden_size`` (or ``proj_size``), a GRU whose
  ``reset_after`` does not match the weights, a PyTorch LSTM with ``proj_size`` loaded into a
  cell without one (or the reverse), entries a Flax tree should not have raise ``ValueError``;
  missing state-dict entries raise ``KeyError`` naming the expected keys and the ones
  available, missing Flax entries one naming each with its expected shape.
* The variants that none of the frameworks' layers have (peepholes, ``cell_clip``,
  ``proj_clip``, ``layer_norm``; for Keras and Flax also ``proj_size``) raise ``ValueError``
  both ways.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from jaxrnn.cells import GRU, LSTM, Cell, Params, SimpleRNN

# Block permutations taking the framework's gate order to jaxrnn's (each is its own inverse).
_KERAS_GRU_ORDER = (1, 0, 2)  # Keras z, r, h  <->  jaxrnn r, z, n
_GATE_NAMES = {SimpleRNN: "h", LSTM: "i, f, g, o", GRU: "r, z, n"}
_KIND_BY_GATES = {1: "SimpleRNN", 3: "GRU", 4: "LSTM"}
# The cells that the frameworks have, with the options (turned on) that they lack, per
# framework: such a cell's weights cannot be converted.
_MISSING: dict[type, dict[str, tuple[str, ...]]] = {
    SimpleRNN: {"PyTorch": (), "Keras": (), "Flax": ()},
    LSTM: {
        "PyTorch": ("peepholes", "cell_clip", "proj_clip", "layer_norm"),
        "Keras": ("peepholes", "cell_clip", "proj_clip", "layer_norm", "proj_size"),
        "Flax": ("peepholes", "cell_clip", "proj_clip", "layer_norm", "proj_size"),
    },
    GRU: {"PyTorch": ("layer_norm",), "Keras": ("layer_norm",), "Flax": ("layer_norm",)},
}


def _check_cell(cell, framework: str = "PyTorch") -> int:
    """Number of gate blocks of ``cell``; ``TypeError`` for anything but a SimpleRNN, LSTM or
    GRU, ``ValueError`` for a variant that ``framework``'s layers do not have."""
    kind = next((kind for kind in _MISSING if isinstance(cell, kind)), None)
    if kind is None:
        raise TypeError(
            f"cell must be a jaxrnn SimpleRNN, LSTM or GRU (the recurrent layers that PyTorch, "
            f"Keras and Flax have), got {cell!r}"
        )
    options = _MISSING[kind][framework]
    present = [name for name in options if getattr(cell, name) not in (None, False, 0)]
    if present:
        raise ValueError(
            f"{cell} has {', '.join(present)}, which {framework}'s recurrent layers do not "
            f"have: its weights cannot be converted"
        )
    return cell.gates


def _as_numpy(value: Any, name: str) -> np.ndarray:
    """A NumPy array from a NumPy/JAX array or a ``torch.Tensor`` (without importing torch)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch.Tensor, duck-typed
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # .numpy() refuses it: reinterpret the bits
            array = value.contiguous().view(dtype=sys.modules["torch"].int16).numpy()
            value = array.view(ml_dtypes.bfloat16)
        else:
            value = value.numpy()
    array = np.asarray(value)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"{name} must hold floating-point weights, got dtype {array.dtype}")
    return array


def _check_shape(what: str, array: np.ndarray, expected, cell, hidden_axis=None) -> None:
    """``ValueError`` unless ``array`` has shape ``expected`` (``None``: any size there).

    ``hidden_axis`` marks a recurrent matrix (``[H, kH]`` or ``[kH, H]``): its size on that
    axis is the true hidden size, which lets the message say which cell the weights fit.
    """
    got = tuple(array.shape)
    if len(got) == len(expected) and all(
        e is None or g == e for g, e in zip(got, expected, strict=True)
    ):
        return
    hint = ""
    if hidden_axis is not None and len(got) == 2 and got[hidden_axis] > 0:
        size, width = got[hidden_axis], got[1 - hidden_axis]
        kind = _KIND_BY_GATES.get(width // size) if width % size == 0 else None
        if kind is not None:
            hint = f"; its shape is that of a {kind} with hidden_size={size}"
    want = tuple("input_size" if d is None else d for d in expected)
    raise ValueError(
        f"{what} has shape {got}, expected {want} for {cell} ({cell.gates} gate block(s) "
        f"{_GATE_NAMES[type(cell)]} of hidden_size={cell.hidden_size}){hint}"
    )


def _check_input_size(input_size) -> None:
    if input_size is not None and (
        not isinstance(input_size, int) or isinstance(input_size, bool) or input_size <= 0
    ):
        raise ValueError(f"input_size must be a positive int or None, got {input_size!r}")


def _permute(array: np.ndarray, order: Sequence[int], hidden: int) -> np.ndarray:
    """Reorder the gate blocks (each ``hidden`` wide) of the last axis of ``array``."""
    blocks = [array[..., k * hidden : (k + 1) * hidden] for k in order]
    return np.concatenate(blocks, axis=-1)


def _refuse_forget_bias(cell, framework: str) -> None:
    if isinstance(cell, LSTM) and cell.forget_bias != 0:
        raise ValueError(
            f"{cell} adds a constant forget_bias={cell.forget_bias} inside every step, which "
            f"{framework} weights do not have: loading them into it would not compute the "
            f"{framework} layer. Load into LSTM({cell.hidden_size}) (forget_bias=0.0) instead."
        )


def _fold_forget_bias(cell, bias: np.ndarray) -> np.ndarray:
    """The exported input bias with ``LSTM.forget_bias`` added to its forget block (``f``)."""
    if not (isinstance(cell, LSTM) and cell.forget_bias != 0):
        return bias
    h = cell.hidden_size
    bias = bias.copy()
    bias[h : 2 * h] += np.asarray(cell.forget_bias, bias.dtype)
    return bias


def _params_numpy(cell, params: Mapping[str, Any], framework: str) -> dict[str, np.ndarray]:
    """Validated NumPy copies of ``params`` for ``cell`` (keys w_i, w_h, b, maybe b_h, and
    w_hr for a projected LSTM)."""
    gates = _check_cell(cell, framework)
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be the dict made by cell.init, got {type(params).__name__}")
    needs_b_h = isinstance(cell, GRU) and cell.reset_after
    allowed = {"w_i", "w_h", "b"} | ({"b_h"} if not isinstance(cell, GRU) or needs_b_h else set())
    required = {"w_i", "w_h", "b"} | ({"b_h"} if needs_b_h else set())
    if isinstance(cell, LSTM) and cell.proj_size:
        required, allowed = required | {"w_hr"}, allowed | {"w_hr"}
    if not required <= set(params) or not set(params) <= allowed:
        raise ValueError(
            f"params for {cell} must have the keys {sorted(required)}"
            f"{' (and optionally b_h)' if allowed - required else ''}, got {sorted(params)}"
        )
    width, hidden = gates * cell.hidden_size, cell.hidden_size
    out = {name: _as_numpy(value, f"params[{name!r}]") for name, value in params.items()}
    _check_shape("params['w_h']", out["w_h"], (cell.output_size, width), cell, hidden_axis=0)
    if "w_hr" in out:
        _check_shape("params['w_hr']", out["w_hr"], (hidden, cell.output_size), cell)
    _check_shape("params['w_i']", out["w_i"], (None, width), cell)
    for name in ("b", "b_h"):
        if name in out:
            _check_shape(f"params[{name!r}]", out[name], (width,), cell)
    return out


def _to_jax(arrays: dict[str, np.ndarray]) -> Params:
    return {name: jnp.asarray(value) for name, value in arrays.items()}


# --------------------------------------------------------------------------------------------
# PyTorch


def torch_keys(
    layer: int = 0, reverse: bool = False, *, prefix: str = "", proj: bool = False
) -> dict[str, str]:
    """The state-dict keys of one layer and direction: ``{"weight_ih": "weight_ih_l0", ...}``.

    ``prefix`` is prepended to each (e.g. ``"encoder.rnn."`` for a submodule's entries);
    ``proj`` adds ``weight_hr`` (an ``nn.LSTM`` with ``proj_size``).
    """
    if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
        raise ValueError(f"layer must be a non-negative int, got {layer!r}")
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") + (("weight_hr",) if proj else ())
    return {name: f"{prefix}{name}{suffix}" for name in names}


def from_torch(
    cell: Cell,
    state_dict: Mapping[str, Any],
    layer: int = 0,
    reverse: bool = False,
    *,
    prefix: str = "",
    input_size: int | None = None,
) -> Params:
    """Params for ``cell`` from one layer/direction of a PyTorch RNN/LSTM/GRU ``state_dict()``.

    Args:
      cell: ``SimpleRNN(H, activation=<the module's nonlinearity>)``, ``LSTM(H)`` (with
        ``proj_size=P`` for a module with ``proj_size=P``) or ``GRU(H)``
        (``reset_after=True``), ``H`` the module's ``hidden_size``.
      state_dict: ``module.state_dict()``, or any mapping of the same keys to NumPy arrays.
      layer: which layer of a ``num_layers > 1`` module (the ``_l{layer}`` entries).
      reverse: the backward direction of a bidirectional module (``_reverse`` entries).
      prefix: prepended to every key, for the state dict of an enclosing module.
      input_size: if given, the input size ``weight_ih`` must have (``2 * H`` for a layer
        above a bidirectional one); otherwise any.

    Returns:
      ``{"w_i": [I, kH], "w_h": [H, kH], "b": [kH], "b_h": [kH]}`` as JAX arrays of the
      state dict's dtype: ``w_i = weight_ih.T``, ``w_h = weight_hh.T``, ``b = bias_ih``,
      ``b_h = bias_hh``, and ``"w_hr": weight_hr.T`` ``[H, P]`` with ``proj_size``;
      PyTorch's gate orders are jaxrnn's.

    Raises:
      KeyError: a weight entry is missing (the message lists the expected and available keys).
      ValueError: shapes that do not fit ``cell``; a ``GRU(reset_after=False)`` cell (PyTorch's
        GRU resets after the recurrent matmul); an LSTM with ``proj_size`` into a cell without
        one or the reverse; an
        ``LSTM(forget_bias != 0)`` cell (see the module docstring).
    """
    gates = _check_cell(cell, "PyTorch")
    _check_input_size(input_size)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    if isinstance(cell, GRU) and not cell.reset_after:
        raise ValueError(
            f"PyTorch's nn.GRU applies the reset gate after the recurrent matmul: load it into "
            f"GRU({cell.hidden_size}, reset_after=True), not {cell}"
        )
    _refuse_forget_bias(cell, "PyTorch")
    proj = isinstance(cell, LSTM) and cell.proj_size > 0
    keys = torch_keys(layer, reverse, prefix=prefix, proj=True)
    if not proj and keys["weight_hr"] in state_dict:
        size = np.shape(state_dict[keys["weight_hr"]])[0]
        raise ValueError(
            f"{keys['weight_hr']} is present: the module is an nn.LSTM with proj_size={size}; "
            f"load it into LSTM({cell.hidden_size}, proj_size={size}), not {cell}"
        )
    if not proj:
        del keys["weight_hr"]
    weights = ("weight_ih", "weight_hh") + (("weight_hr",) if proj else ())
    missing = [keys[n] for n in weights if keys[n] not in state_dict]
    has_bias = [keys[n] in state_dict for n in ("bias_ih", "bias_hh")]
    if any(has_bias) and not all(has_bias):
        missing += [keys[n] for n in ("bias_ih", "bias_hh") if keys[n] not in state_dict]
    if missing:
        raise KeyError(
            f"state_dict lacks {missing} (layer={layer}, reverse={reverse}, prefix={prefix!r}); "
            f"expected {sorted(keys.values())}, available: {sorted(state_dict)}"
        )
    w = {n: _as_numpy(state_dict[k], k) for n, k in keys.items() if k in state_dict}
    width, hidden = gates * cell.hidden_size, cell.hidden_size
    _check_shape(keys["weight_hh"], w["weight_hh"], (width, cell.output_size), cell, hidden_axis=1)
    _check_shape(keys["weight_ih"], w["weight_ih"], (width, input_size), cell)
    if all(has_bias):
        for n in ("bias_ih", "bias_hh"):
            _check_shape(keys[n], w[n], (width,), cell)
        b, b_h = w["bias_ih"], w["bias_hh"]
    else:  # nn.RNN/LSTM/GRU(bias=False)
        b = b_h = np.zeros((width,), w["weight_ih"].dtype)
    params = {"w_i": w["weight_ih"].T, "w_h": w["weight_hh"].T, "b": b, "b_h": b_h}
    if proj:
        _check_shape(keys["weight_hr"], w["weight_hr"], (cell.output_size, hidden), cell)
        params["w_hr"] = w["weight_hr"].T
    return _to_jax(params)


def to_torch(
    cell: Cell,
    params: Params,
    layer: int = 0,
    reverse: bool = False,
    *,
    prefix: str = "",
) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_torch`: ``{weight_ih_l{layer}[_reverse]: [kH, I], ...}``
    (and ``weight_hr`` ``[P, H]`` for ``LSTM(H, proj_size=P)``).

    Returns NumPy arrays (C-contiguous, of the params' dtype) under the four keys of
    :func:`torch_keys`. Merge the dicts of every layer and direction and load them with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``. Params
    without ``b_h`` get a zero ``bias_hh``; an ``LSTM.forget_bias`` is folded into the forget
    block of ``bias_ih``.

    Raises:
      ValueError: a ``GRU(reset_after=False)`` cell (PyTorch cannot represent it) or params
        whose keys or shapes do not fit ``cell``.
    """
    p = _params_numpy(cell, params, "PyTorch")
    if isinstance(cell, GRU) and not cell.reset_after:
        raise ValueError(
            f"{cell} (reset gate before the recurrent matmul) has no PyTorch equivalent: "
            f"nn.GRU always resets after it (reset_after=True)"
        )
    keys = torch_keys(layer, reverse, prefix=prefix, proj="w_hr" in p)
    b_h = p["b_h"] if "b_h" in p else np.zeros_like(p["b"])
    out = {
        keys["weight_ih"]: p["w_i"].T,
        keys["weight_hh"]: p["w_h"].T,
        keys["bias_ih"]: _fold_forget_bias(cell, p["b"]),
        keys["bias_hh"]: b_h,
    }
    if "w_hr" in p:
        out[keys["weight_hr"]] = p["w_hr"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Keras


def from_keras(cell: Cell, weights: Sequence[Any], *, input_size: int | None = None) -> Params:
    """Params for ``cell`` from a Keras ``SimpleRNN``/``LSTM``/``GRU`` layer's ``get_weights()``.

    Args:
      cell: ``SimpleRNN(H)``, ``LSTM(H)`` or ``GRU(H, reset_after=<the layer's>)``.
      weights: ``[kernel [I, kH], recurrent_kernel [H, kH], bias]`` with ``bias`` ``[kH]``, or
        ``[2, 3H]`` (input bias, recurrent bias) for a GRU with ``reset_after=True``;
        ``[kernel, recurrent_kernel]`` for a layer with ``use_bias=False``.
      input_size: if given, the input size ``kernel`` must have; otherwise any.

    Returns:
      ``{"w_i", "w_h", "b"}`` (plus ``"b_h"`` for ``GRU(reset_after=True)``) as JAX arrays of
      the weights' dtype, GRU blocks reordered from Keras' z, r, h to r, z, n.

    Raises:
      ValueError: a list of the wrong length, shapes that do not fit ``cell``, a GRU whose
        ``reset_after`` does not match the bias (``[2, 3H]`` means ``reset_after=True``), an
        ``LSTM(forget_bias != 0)`` cell (see the module docstring).
    """
    gates = _check_cell(cell, "Keras")
    _check_input_size(input_size)
    count = len(weights) if isinstance(weights, Sequence) else None
    if isinstance(weights, str | Mapping) or count not in (2, 3):
        split = " (a Bidirectional layer's list holds two layers: split it)" if count == 6 else ""
        raise ValueError(
            "weights must be a Keras layer's get_weights(): [kernel, recurrent_kernel, bias] "
            f"or [kernel, recurrent_kernel], got {count or type(weights).__name__} "
            f"array(s){split}"
        )
    _refuse_forget_bias(cell, "Keras")
    names = ("kernel", "recurrent_kernel", "bias")
    w = {n: _as_numpy(v, n) for n, v in zip(names, weights, strict=False)}
    hidden = cell.hidden_size
    width = gates * hidden
    _check_shape("recurrent_kernel", w["recurrent_kernel"], (hidden, width), cell, hidden_axis=0)
    _check_shape("kernel", w["kernel"], (input_size, width), cell)
    reset_after = isinstance(cell, GRU) and cell.reset_after
    if "bias" in w:
        bias = w["bias"]
        if isinstance(cell, GRU) and (bias.ndim == 2) != cell.reset_after:
            raise ValueError(
                f"bias of shape {bias.shape} is that of a Keras GRU with "
                f"reset_after={bias.ndim == 2}, which {cell} cannot represent: use "
                f"GRU({hidden}, reset_after={bias.ndim == 2})"
            )
        _check_shape("bias", bias, (2, width) if reset_after else (width,), cell)
        b, b_h = (bias[0], bias[1]) if reset_after else (bias, None)
    else:  # use_bias=False
        b = np.zeros((width,), w["kernel"].dtype)
        b_h = b if reset_after else None
    params = {"w_i": w["kernel"], "w_h": w["recurrent_kernel"], "b": b}
    if b_h is not None:
        params["b_h"] = b_h
    if isinstance(cell, GRU):
        params = {k: _permute(v, _KERAS_GRU_ORDER, hidden) for k, v in params.items()}
    return _to_jax(params)


def to_keras(cell: Cell, params: Params) -> list[np.ndarray]:
    """The inverse of :func:`from_keras`: ``[kernel, recurrent_kernel, bias]`` NumPy arrays.

    Load them with ``layer.set_weights(...)`` into the Keras layer that matches ``cell`` (for
    a GRU, ``reset_after=cell.reset_after``). A ``SimpleRNN``/``LSTM`` ``b_h`` (PyTorch's
    second bias) is added into the single Keras bias; an ``LSTM.forget_bias`` is folded into
    the forget block.
    """
    p = _params_numpy(cell, params, "Keras")
    hidden = cell.hidden_size
    b = _fold_forget_bias(cell, p["b"])
    if isinstance(cell, GRU):
        order = _KERAS_GRU_ORDER
        kernel = _permute(p["w_i"], order, hidden)
        recurrent = _permute(p["w_h"], order, hidden)
        b = _permute(b, order, hidden)
        bias = np.stack([b, _permute(p["b_h"], order, hidden)]) if cell.reset_after else b
    else:
        kernel, recurrent = p["w_i"], p["w_h"]
        bias = b + p["b_h"] if "b_h" in p else b
    return [np.ascontiguousarray(a) for a in (kernel, recurrent, bias)]


# --------------------------------------------------------------------------------------------
# Flax


class _FlaxLayout(NamedTuple):
    """A Flax cell's tree: a ``Dense`` named ``i{x}`` (reads the input) and one named ``h{x}``
    (reads the state) per gate ``x`` of ``gates`` (jaxrnn's order), a ``bias`` on the input
    ``Dense`` of the gates in ``input_bias`` and on the recurrent one of those in
    ``recurrent_bias``."""

    name: str
    gates: tuple[str, ...]
    input_bias: tuple[str, ...]
    recurrent_bias: tuple[str, ...]

    def submodules(self) -> frozenset[str]:
        return frozenset(f"{side}{x}" for x in self.gates for side in "ih")


_FLAX_LAYOUTS: dict[type, _FlaxLayout] = {
    SimpleRNN: _FlaxLayout("SimpleCell", ("",), ("",), ()),
    LSTM: _FlaxLayout("LSTMCell/OptimizedLSTMCell", tuple("ifgo"), (), tuple("ifgo")),
    GRU: _FlaxLayout("GRUCell", tuple("rzn"), tuple("rzn"), ("n",)),
}
# The Flax cells without a jaxrnn twin, by the submodules of their trees.
_FLAX_UNSUPPORTED = {
    frozenset({"if", "in", "hf", "hn"}): "MGUCell",
    frozenset({"ih", "hh"}): "ConvLSTMCell",
}


def _flax_kind(cell) -> type:
    return next(kind for kind in _FLAX_LAYOUTS if isinstance(cell, kind))


def _short(cell) -> str:
    return f"{type(cell).__name__}({cell.hidden_size})"


def _flax_check_tree_kind(tree: Mapping[str, Any], cell) -> None:
    """``ValueError`` for a tree that is visibly not one Flax cell's, or another cell's."""
    keys = set(tree)
    if keys in ({"params"}, {"cell"}) or {"forward_rnn", "backward_rnn"} <= keys:
        raise ValueError(
            f"cell_params has the keys {sorted(keys)}: pass one cell's tree, "
            f'variables["params"]["cell"] for nn.RNN(cell) (["forward_rnn"]["cell"] and '
            f'["backward_rnn"]["cell"] for nn.Bidirectional), not the whole variables'
        )
    unsupported = _FLAX_UNSUPPORTED.get(frozenset(keys))
    if unsupported is not None:
        raise ValueError(
            f"cell_params are a Flax {unsupported}'s (keys {sorted(keys)}): {unsupported} has no "
            f"jaxrnn twin, so its weights cannot be converted (jaxrnn has the math of "
            f"SimpleCell, LSTMCell/OptimizedLSTMCell and GRUCell)"
        )
    for kind, layout in _FLAX_LAYOUTS.items():
        if keys == layout.submodules() and not isinstance(cell, kind):
            features = np.shape(_get(tree[f"h{layout.gates[0]}"], "kernel"))[:1] or ("H",)
            raise ValueError(
                f"cell_params are a Flax {layout.name}'s (keys {sorted(keys)}): load them into "
                f"jaxrnn {kind.__name__}({features[0]}), not {_short(cell)}"
            )


def _get(mapping, key):
    return mapping.get(key) if isinstance(mapping, Mapping) else None


def _flax_arrays(
    tree: Mapping[str, Any], cell, input_size: int | None
) -> dict[str, dict[str, np.ndarray]]:
    """Validated NumPy copies of a Flax cell tree for ``cell``: ``KeyError`` naming each
    missing entry and its expected shape, ``ValueError`` for an entry too many, a shape that
    does not fit (naming the entry and the shape expected) or mixed dtypes."""
    layout = _FLAX_LAYOUTS[_flax_kind(cell)]
    _flax_check_tree_kind(tree, cell)
    hidden = cell.hidden_size
    expected: dict[str, dict[str, tuple[Any, ...]]] = {}
    for x in layout.gates:
        expected[f"i{x}"] = {"kernel": (input_size, hidden)}
        expected[f"h{x}"] = {"kernel": (hidden, hidden)}
        if x in layout.input_bias:
            expected[f"i{x}"]["bias"] = (hidden,)
        if x in layout.recurrent_bias:
            expected[f"h{x}"]["bias"] = (hidden,)

    def show(shape) -> tuple[Any, ...]:
        return tuple("input_size" if d is None else d for d in shape)

    missing, extra = [], [f"[{name!r}]" for name in tree if name not in expected]
    for name, leaves in expected.items():
        sub = tree.get(name, {})
        if not isinstance(sub, Mapping):
            raise ValueError(
                f"cell_params[{name!r}] must be a dict of {sorted(leaves)} (a Flax Dense's "
                f"parameters), got {type(sub).__name__}"
            )
        missing += [
            f"[{name!r}][{leaf!r}] (shape {show(shape)})"
            for leaf, shape in leaves.items()
            if leaf not in sub
        ]
        extra += [f"[{name!r}][{leaf!r}]" for leaf in sub if leaf not in leaves]
    what = f"the tree of a Flax {layout.name} with features={hidden} (jaxrnn {_short(cell)})"
    if missing:
        also = f"; and has entries it should not: {', '.join(extra)}" if extra else ""
        raise KeyError(f"cell_params lacks {', '.join(missing)} for {what}{also}")
    if extra:
        raise ValueError(f"cell_params has entries that {what} does not have: {', '.join(extra)}")
    # The input kernels first: the first one fixes the input size the others must have.
    order = sorted(expected, key=lambda name: name[0] != "i")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in order:
        out[name] = {}
        for leaf, shape in expected[name].items():
            key = f"cell_params[{name!r}][{leaf!r}]"
            array = _as_numpy(tree[name][leaf], key)
            if name[0] == "i" and leaf == "kernel":
                shape = (input_size, hidden)
            got = tuple(array.shape)
            if len(got) != len(shape) or any(
                d is not None and g != d for g, d in zip(got, shape, strict=False)
            ):
                hint = ""
                if name[0] == "h" and leaf == "kernel" and len(got) == 2 and got[0] == got[1]:
                    hint = f"; its shape is that of features={got[0]}"
                raise ValueError(f"{key} has shape {got}, expected {show(shape)} for {what}{hint}")
            if name[0] == "i" and leaf == "kernel":
                input_size = got[0]
            out[name][leaf] = array
    dtypes = {a.dtype for leaves in out.values() for a in leaves.values()}
    if len(dtypes) > 1:
        raise ValueError(
            f"cell_params mix the dtypes {sorted(map(str, dtypes))}: cast them to one first"
        )
    return out


def _check_flax_cell(cell, loading: bool) -> None:
    _check_cell(cell, "Flax")
    if isinstance(cell, GRU) and not cell.reset_after:
        fix = (
            f"load it into GRU({cell.hidden_size}, reset_after=True)"
            if loading
            else f"{_short(cell)} (reset_after=False) has no Flax equivalent"
        )
        raise ValueError(
            f"Flax's GRUCell applies the reset gate after the recurrent matmul "
            f"(n = tanh(x @ W_in + b_in + r * (h @ W_hn + b_hn))): {fix}"
        )


def _swapped(first, second, name: str) -> None:
    if isinstance(first, Cell) and isinstance(second, Mapping):
        raise TypeError(
            f"{name} takes the tree first and the jaxrnn cell second ({name}(tree, cell)), "
            f"unlike from_torch/from_keras: got the cell first"
        )


def from_flax(
    cell_params: Mapping[str, Any], cell: Cell, *, input_size: int | None = None
) -> Params:
    """Params for ``cell`` from the parameters of a Flax ``SimpleCell``, ``LSTMCell``,
    ``OptimizedLSTMCell`` or ``GRUCell``.

    Args:
      cell_params: the cell's tree, ``variables["params"]["cell"]`` of an ``nn.RNN(cell)``
        (``["forward_rnn"]["cell"]`` or ``["backward_rnn"]["cell"]`` of an
        ``nn.Bidirectional``), of JAX or NumPy arrays: ``{"ii": {"kernel": [I, H]}, "hi":
        {"kernel": [H, H], "bias": [H]}, ...}`` (the module docstring has every layout).
      cell: the jaxrnn cell of the Flax cell's math, ``H`` its ``features``: ``SimpleRNN(H)``
        for ``SimpleCell`` (``activation="relu"`` for one with ``activation_fn=nn.relu``),
        ``LSTM(H)`` for ``LSTMCell`` and ``OptimizedLSTMCell`` (the same tree), ``GRU(H)``
        (``reset_after=True``) for ``GRUCell``. The tree says which Flax cell it is, the
        activations and ``SimpleCell``'s ``residual`` it cannot: the defaults
        (``sigmoid``/``tanh``, ``residual=False``) are the caller's to check.
      input_size: if given, the input size the input kernels must have; otherwise any.

    Returns:
      ``{"w_i": [I, kH], "w_h": [H, kH], "b": [kH]}`` as JAX arrays of the tree's dtype: the
      gates' kernels side by side in jaxrnn's order, ``b`` Flax's one bias per gate (``h{x}``'s
      for an LSTM, ``i{x}``'s otherwise); a GRU's also ``"b_h": [0, 0, hn/bias]``.

    Raises:
      KeyError: an entry of the Flax cell's tree is missing (named, with its expected shape).
      ValueError: the tree of ``MGUCell``, ``ConvLSTMCell`` (no jaxrnn twin) or of another
        Flax cell than ``cell``'s (each named); an entry too many, or a shape that does not fit
        ``cell`` (the entry and the expected shape named); a ``GRU(reset_after=False)`` or
        ``LSTM(forget_bias != 0)`` cell, a variant Flax has no cell for (``proj_size``,
        peepholes, clipping, ``layer_norm``).
      TypeError: ``cell`` is not a jaxrnn ``SimpleRNN``/``LSTM``/``GRU``, or the tree is not
        a mapping of floating-point arrays.
    """
    _swapped(cell_params, cell, "from_flax")
    _check_flax_cell(cell, loading=True)
    _check_input_size(input_size)
    if not isinstance(cell_params, Mapping):
        raise TypeError(
            f'cell_params must be a Flax cell\'s tree (variables["params"]["cell"]), got '
            f"{type(cell_params).__name__}"
        )
    _refuse_forget_bias(cell, "Flax")
    layout = _FLAX_LAYOUTS[_flax_kind(cell)]
    tree = _flax_arrays(cell_params, cell, input_size)
    w_i = np.concatenate([tree[f"i{x}"]["kernel"] for x in layout.gates], axis=-1)
    w_h = np.concatenate([tree[f"h{x}"]["kernel"] for x in layout.gates], axis=-1)
    zeros = np.zeros((cell.hidden_size,), w_i.dtype)
    b, b_h = [], []
    for x in layout.gates:
        # A gate's one bias goes to b; where it has two (GRU's n), the recurrent one to b_h.
        if x in layout.input_bias:
            b.append(tree[f"i{x}"]["bias"])
            b_h.append(tree[f"h{x}"]["bias"] if x in layout.recurrent_bias else zeros)
        else:
            b.append(tree[f"h{x}"]["bias"])
    params = {"w_i": w_i, "w_h": w_h, "b": np.concatenate(b)}
    if isinstance(cell, GRU):
        params["b_h"] = np.concatenate(b_h)
    return _to_jax(params)


def _add_nonzero(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a + b`` where ``b`` is non-zero, ``a`` unchanged (bit for bit, ``-0.0`` included)
    where it is zero."""
    return np.where(b == 0, a, a + b)


def to_flax(params: Params, cell: Cell) -> dict[str, dict[str, Any]]:
    """The inverse of :func:`from_flax`: the tree of the Flax cell that matches ``cell``.

    ``nn.RNN(nn.LSTMCell(H)).apply({"params": {"cell": to_flax(params, LSTM(H))}}, xs)`` (or
    ``nn.OptimizedLSTMCell(H)``, the same tree) then computes what ``jaxrnn.rnn`` does;
    ``SimpleRNN(H)`` gives a ``SimpleCell``'s tree, ``GRU(H)`` a ``GRUCell``'s. JAX arrays of
    the params' dtype, ``{"i{x}": {"kernel": [I, H], ...}, "h{x}": {...}}`` for each gate
    ``x``. Flax has one bias where jaxrnn may have two (an LSTM's or SimpleRNN's ``b_h``, a
    GRU's ``b_h`` in its r, z blocks): the non-zero entries of ``b_h`` are added into it (one
    rounding), the zero ones leave it bit for bit. An ``LSTM.forget_bias`` is folded into the
    forget gate's bias (``hf``).

    Raises:
      ValueError: a ``GRU(reset_after=False)`` cell (Flax's GRUCell resets after the
        recurrent matmul), a variant Flax has no cell for, or params whose keys or shapes do
        not fit ``cell``.
    """
    _swapped(params, cell, "to_flax")
    _check_flax_cell(cell, loading=False)
    p = _params_numpy(cell, params, "Flax")
    layout = _FLAX_LAYOUTS[_flax_kind(cell)]
    h = cell.hidden_size
    b = _fold_forget_bias(cell, p["b"])
    b_h = p["b_h"] if "b_h" in p else np.zeros_like(b)
    tree: dict[str, dict[str, Any]] = {}
    for k, x in enumerate(layout.gates):
        block = slice(k * h, (k + 1) * h)
        tree[f"i{x}"] = {"kernel": p["w_i"][:, block]}
        tree[f"h{x}"] = {"kernel": p["w_h"][:, block]}
        if x in layout.input_bias and x in layout.recurrent_bias:  # GRU's n: b and b_h
            tree[f"i{x}"]["bias"], tree[f"h{x}"]["bias"] = b[block], b_h[block]
        else:  # one bias in Flax: b_h (if any) added into it
            side = "i" if x in layout.input_bias else "h"
            tree[f"{side}{x}"]["bias"] = _add_nonzero(b[block], b_h[block])
    return {name: _to_jax(leaves) for name, leaves in tree.items()}
