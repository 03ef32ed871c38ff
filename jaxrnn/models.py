"""Sequence models: a recurrent stack with a dense head, as pure ``init``/``apply`` functions.

A :class:`Model` holds hyperparameters only (frozen, hashable: a static argument of ``jit``);
its parameters are a plain dict ``{"rnn": [...], "head": {"w", "b"}}``. ``apply`` maps a padded
batch ``inputs [batch, time, features]`` with ``lengths [batch]`` to

* ``logits [batch, num_outputs]`` for classification, or
* ``predictions [batch]`` for regression (``num_outputs`` must be 1),

reading the recurrent stack out in one of three ways:

* ``readout="last"``: the last layer's output at each sequence's last valid step
  (``ys[b, lengths[b] - 1]``; Keras ``return_sequences=False`` over a masked input);
* ``readout="state"``: the final hidden state of the last layer (for a bidirectional layer the
  forward state after the last valid step concatenated with the backward state after step 0,
  as Keras ``Bidirectional(..., return_sequences=False)`` and TF1 ``bidirectional_dynamic_rnn``);
* ``readout="sequence"``: the head on every step, ``logits [batch, time, num_outputs]``
  (``predictions [batch, time]``; past each length the head reads zeros): a language model.

For a unidirectional stack "last" and "state" give the same numbers. With ``masked=False`` the
``lengths`` are ignored and every step is treated as valid (fixed-length data such as MNIST
rows, where masking would only cost time). With ``vocab_size`` the inputs are int token ids
``[batch, time]``, one-hot encoded to ``vocab_size`` features.

A stateful caller (a language model trained over streams) passes the carry of one batch into
the next: ``apply(..., initial_carry=carries, return_carry=True)`` returns ``(outputs,
carries)``, ``carries`` being one carry per layer (:meth:`Model.initial_carry`'s layout), and
``resets`` restarts chosen rows from zeros before chosen steps (:func:`jaxrnn.rnn`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn.cells import Cell, accumulation_dtype, check_floating, matmul, registry
from jaxrnn.layers import Bidirectional, Stack, stacked

Array = jax.Array

# The options of a Model (and of a training Config) that go to its cell: each to the cells
# whose class has a field of that name (jaxrnn.cells.registry.build).
CELL_OPTIONS = (
    "activation",
    "forget_bias",
    "forget_bias_init",
    "proj_size",
    "peepholes",
    "cell_clip",
    "proj_clip",
    "layer_norm",
)
# The ones that turn a variant on: an error where set for a cell that has no such field. The
# others are left out for such a cell (an experiment's config sets them for its own cell, and
# ``--set cell=...`` may choose another).
_VARIANTS = ("proj_size", "peepholes", "cell_clip", "proj_clip", "layer_norm")


@dataclasses.dataclass(frozen=True)
class Model:
    """A stack of ``num_layers`` recurrent layers and a dense head.

    Attributes:
      cell: the name of a registered cell (:mod:`jaxrnn.cells.registry`): ``"rnn"``
        (``SimpleRNN``), ``"lstm"``, ``"gru"``, or one's own. The cell options below
        (``activation`` to ``layer_norm``) go to the cells whose class has a field of that
        name; for another cell, turning on ``proj_size``, ``peepholes``, a clip or
        ``layer_norm`` is an error, and ``activation`` and the forget biases are left out.
      hidden_size: units per direction and layer.
      num_outputs: classes (classification) or 1 (regression).
      num_layers: depth of the stack.
      bidirectional: each layer runs both ways, outputs concatenated.
      readout: ``"last"`` (output at the last valid step), ``"state"`` (final state) or
        ``"sequence"`` (every step).
      task: ``"classification"`` or ``"regression"``.
      activation: ``SimpleRNN`` activation, ``"tanh"`` or ``"relu"``.
      forget_bias, forget_bias_init: see :class:`jaxrnn.LSTM`.
      proj_size, peepholes, cell_clip, proj_clip: the LSTM's variants (:class:`jaxrnn.LSTM`;
        ``0`` turns a size or a clip off), ``cell="lstm"`` only.
      layer_norm: the layer-normalized LSTM or GRU (:class:`jaxrnn.LSTM`,
        :class:`jaxrnn.GRU`).
      masked: use ``lengths``; ``False`` treats every step as valid.
      vocab_size: ``0``: the inputs are float features; ``V > 0``: int ids in ``[0, V)``,
        one-hot encoded (``init``'s ``input_size`` must be ``V``).
      dropout, input_dropout, recurrent_dropout: see :class:`jaxrnn.Stack` (training only).
      head_init: ``"glorot"`` (Keras ``Dense``: Glorot-uniform kernel, zero bias) or
        ``"normal"`` (TF1 tutorials: standard normal kernel and bias).
      unroll: time steps per ``lax.scan`` iteration.
      dtype: the computation dtype (``None``: the inputs' and parameters' promotion); the
        recurrent state, the head's accumulation and the logits are at least float32.
      param_dtype: the dtype of the parameters that :meth:`init` makes.
      implementation: passed to :func:`jaxrnn.rnn` (``None``: chosen per layer).
    """

    cell: str
    hidden_size: int
    num_outputs: int
    num_layers: int = 1
    bidirectional: bool = False
    readout: str = "last"
    task: str = "classification"
    activation: str = "tanh"
    forget_bias: float = 0.0
    forget_bias_init: float = 1.0
    proj_size: int = 0
    peepholes: bool = False
    cell_clip: float = 0.0
    proj_clip: float = 0.0
    layer_norm: bool = False
    masked: bool = True
    vocab_size: int = 0
    dropout: float = 0.0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0
    head_init: str = "glorot"
    unroll: int = 1
    dtype: Any = None
    param_dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        registry.get(self.cell)  # a registered name
        if self.readout not in ("last", "state", "sequence"):
            raise ValueError(f"readout must be 'last', 'state' or 'sequence', got {self.readout!r}")
        if self.vocab_size < 0:
            raise ValueError(f"vocab_size must be >= 0, got {self.vocab_size}")
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.task == "regression" and self.num_outputs != 1:
            raise ValueError(f"regression needs num_outputs=1, got {self.num_outputs}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.head_init not in ("glorot", "normal"):
            raise ValueError(f"head_init must be 'glorot' or 'normal', got {self.head_init!r}")
        for name in _VARIANTS:
            if getattr(self, name) and not registry.takes(self.cell, name):
                allowed = [cell for cell in registry.names() if registry.takes(cell, name)]
                raise ValueError(
                    f"{name} applies to cell={' or '.join(map(repr, allowed))}, "
                    f"got cell={self.cell!r}"
                )
        if self.dtype is not None:
            check_floating(self.dtype, "Model: dtype")
        check_floating(self.param_dtype, "Model: param_dtype")
        self._cell()  # the cell's own checks of its options

    def _cell(self) -> Cell:
        options = {name: getattr(self, name) for name in CELL_OPTIONS}
        return registry.build(
            self.cell,
            self.hidden_size,
            options,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    @property
    def stack(self) -> Stack:
        cell = self._cell()
        layer = Bidirectional(cell, cell) if self.bidirectional else cell
        return Stack(
            (layer,) * self.num_layers,
            dropout=self.dropout,
            input_dropout=self.input_dropout,
            recurrent_dropout=self.recurrent_dropout,
        )

    def init(self, key: Array, input_size: int) -> dict:
        """Parameters for inputs of ``input_size`` features, in ``param_dtype``."""
        if self.vocab_size and input_size != self.vocab_size:
            raise ValueError(
                f"input_size {input_size} must equal vocab_size {self.vocab_size} (one-hot inputs)"
            )
        k_rnn, k_w, k_b = jax.random.split(key, 3)
        stack = self.stack
        shape = (stack.output_size, self.num_outputs)
        # Drawn in float32 (as for every param_dtype), then cast.
        if self.head_init == "glorot":
            head = {
                "w": jax.nn.initializers.glorot_uniform()(k_w, shape, jnp.float32),
                "b": jnp.zeros((self.num_outputs,), jnp.float32),
            }
        else:
            head = {
                "w": jax.random.normal(k_w, shape, jnp.float32),
                "b": jax.random.normal(k_b, (self.num_outputs,), jnp.float32),
            }
        head = {k: v.astype(self.param_dtype) for k, v in head.items()}
        return {"rnn": stack.init(k_rnn, input_size), "head": head}

    def initial_carry(self, batch_size: int) -> list:
        """Zero carries for ``batch_size`` rows, one per layer (a ``(forward, backward)`` pair
        for a bidirectional layer), in the recurrent state's dtype: the layout ``apply``'s
        ``initial_carry`` takes and ``return_carry`` gives."""
        cell = self._cell()
        one = cell.initial_carry(batch_size)
        return [(one, one) if self.bidirectional else one for _ in range(self.num_layers)]

    def _run(self, params, inputs, lengths, key, resets, initial_carry):
        """``(ys, carries)`` of the recurrent stack (``lengths`` already resolved)."""
        if self.vocab_size:
            if not jnp.issubdtype(inputs.dtype, jnp.integer) or inputs.ndim != 2:
                raise ValueError(
                    f"with vocab_size the inputs are int ids [batch, time], got "
                    f"{inputs.dtype} {inputs.shape}"
                )
            inputs = jax.nn.one_hot(inputs, self.vocab_size, dtype=self.dtype or jnp.float32)
        elif self.dtype is not None:
            inputs = inputs.astype(self.dtype)
        extra = {}
        if resets is not None:
            extra["resets"] = resets
        if initial_carry is not None:
            extra["initial_carry"] = initial_carry
        return stacked(
            self.stack,
            params["rnn"],
            inputs,
            lengths,
            key=key,
            unroll=self.unroll,
            implementation=self.implementation,
            **extra,
        )

    def _read(self, ys, carries, lengths) -> Array:
        """The recurrent read-out fed to the head (see :meth:`features`)."""
        if self.readout == "sequence":
            return ys
        if self.readout == "state":
            carry = carries[-1]
            cell = self._cell()
            if self.bidirectional:
                return jnp.concatenate([cell.hidden(carry[0]), cell.hidden(carry[1])], axis=-1)
            return cell.hidden(carry)
        if lengths is None:
            return ys[:, -1]
        last = jnp.clip(lengths - 1, 0, ys.shape[1] - 1)
        return jnp.take_along_axis(ys, last[:, None, None], axis=1)[:, 0]

    def features(self, params: dict, inputs: Array, lengths: Array | None, key=None) -> Array:
        """The recurrent read-out fed to the head: ``[batch, stack.output_size]``
        (``[batch, time, stack.output_size]`` for ``readout="sequence"``)."""
        lengths = lengths if self.masked else None
        ys, carries = self._run(params, inputs, lengths, key, None, None)
        return self._read(ys, carries, lengths)

    def apply(
        self,
        params: dict,
        inputs: Array,
        lengths: Array | None = None,
        key: Array | None = None,
        *,
        resets: Array | None = None,
        initial_carry: list | None = None,
        return_carry: bool = False,
    ):
        """Logits ``[batch, num_outputs]`` (regression: predictions ``[batch]``; with
        ``readout="sequence"`` one per step, ``[batch, time, ...]``), in at least float32
        whatever the computation dtype.

        Args:
          params: from :meth:`init`.
          inputs: float ``[batch, time, features]`` (int ids ``[batch, time]`` with
            ``vocab_size``); steps past ``lengths`` are ignored.
          lengths: int ``[batch]`` (``None``: all steps valid).
          key: a PRNG key turns dropout on (training).
          resets: optional bool ``[batch, time]``: where True, that row's carry restarts from
            zeros before that step (:func:`jaxrnn.rnn`); applied to every layer.
          initial_carry: one carry per layer (:meth:`initial_carry`'s layout; ``None``:
            zeros).
          return_carry: also return the final carries.

        Returns:
          The outputs, or ``(outputs, carries)`` with ``return_carry``: ``carries`` one per
          layer, each row's state after its last valid step.
        """
        lengths = lengths if self.masked else None
        ys, carries = self._run(params, inputs, lengths, key, resets, initial_carry)
        h = self._read(ys, carries, lengths)
        w, b = params["head"]["w"], params["head"]["b"]
        dtype = jnp.result_type(h.dtype, w.dtype) if self.dtype is None else self.dtype
        out = matmul(h, w, dtype) + b.astype(accumulation_dtype(dtype))
        out = out[..., 0] if self.task == "regression" else out
        return (out, carries) if return_carry else out
