"""MinGRU and MinLSTM (Feng et al. 2024, "Were RNNs All We Needed?"): the GRU and the LSTM
with their gates computed from the input alone, so that the state update is linear in the
state (:class:`jaxrnn.cells.linear.LinearCell`) and a sequence trains in parallel over time."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn.cells import registry
from jaxrnn.cells._base import Array, DType, Params, check_hidden_size, gate_blocks
from jaxrnn.cells.linear import LinearCell


def g(v: Array) -> Array:
    """The papers' positive activation for the candidate state: ``v + 0.5`` where ``v >= 0``,
    ``sigmoid(v)`` elsewhere (continuous at 0, and positive)."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


@registry.register("mingru")
@dataclasses.dataclass(frozen=True)
class MinGRU(LinearCell):
    """minGRU: ``k = x @ w_i + b``, ``z = sigmoid(k_z)``, ``h~ = g(k_h)``
    (:func:`g`), ``h' = (1 - z) * h + z * h~``; the output is ``h'``.

    Parameters: ``w_i [input_size, 2 * hidden_size]`` and ``b [2 * hidden_size]``, columns
    ``[z | h~]``. Carry: ``h`` ``[batch, hidden_size]``, zeros unless an initial carry is
    given. ``dtype``/``param_dtype``: see :mod:`jaxrnn.cells`.
    """

    hidden_size: int
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 2
    kernel = "mingru"

    def __post_init__(self):
        check_hidden_size(self)
        self._check_dtypes()

    def coefficients(self, params: Params, xp: Array) -> tuple[Array, Array]:
        """``(1 - z, z * h~)``."""
        k_z, k_h = gate_blocks(xp, 2)
        z = jax.nn.sigmoid(k_z)
        return 1.0 - z, z * g(k_h)


@registry.register("minlstm")
@dataclasses.dataclass(frozen=True)
class MinLSTM(LinearCell):
    """minLSTM: ``k = x @ w_i + b``, ``f = sigmoid(k_f)``, ``i = sigmoid(k_i)``, ``h~ =
    g(k_h)`` (:func:`g`), ``h' = f / (f + i) * h + i / (f + i) * h~`` (the gates normalized
    to sum to one, which keeps the state's scale independent of the sequence length); the
    output is ``h'``.

    Parameters: ``w_i [input_size, 3 * hidden_size]`` and ``b [3 * hidden_size]``, columns
    ``[f | i | h~]``. Carry: ``h`` ``[batch, hidden_size]``, zeros unless an initial carry
    is given. ``dtype``/``param_dtype``: see :mod:`jaxrnn.cells`.
    """

    hidden_size: int
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 3
    kernel = "minlstm"

    def __post_init__(self):
        check_hidden_size(self)
        self._check_dtypes()

    def coefficients(self, params: Params, xp: Array) -> tuple[Array, Array]:
        """``(f / (f + i), i / (f + i) * h~)``."""
        k_f, k_i, k_h = gate_blocks(xp, 3)
        f, i = jax.nn.sigmoid(k_f), jax.nn.sigmoid(k_i)
        total = f + i
        return f / total, i / total * g(k_h)
