"""Recurrent cells: one time step each, pure, with hyperparameters only.

A cell is a frozen, hashable dataclass (it can be a static argument of ``jax.jit``). Its
parameters are a plain dict of arrays made by ``cell.init``; its carry is an array (or a tuple
of arrays) of shape ``[batch, hidden_size]`` made by ``cell.initial_carry``.

Every cell splits its step in two so that drivers may hoist the input half out of the time
loop:

* ``project_inputs(params, x)``: ``[..., input_size] -> [..., gate_size]``, the affine map of the
  input with every bias that does not interact with the state folded in. It acts on any leading
  shape, so a driver can apply it to all time steps ``[time, batch, input_size]`` at once.
* ``step(params, carry, xp) -> (carry, y)``: the recurrent half, given one projected input.

``cell(params, carry, x)`` is the composition of both. Gates are fused: one ``[in, k*H]`` input
matmul and one ``[H, k*H]`` recurrent matmul per step, whatever the number of gates ``k``.

Parameter layout (``I`` input size, ``H`` hidden size):

| cell | params |
|---|---|
| ``SimpleRNN`` | ``w_i [I, H]``, ``w_h [H, H]``, ``b [H]`` |
| ``LSTM`` | ``w_i [I, 4H]``, ``w_h [H, 4H]``, ``b [4H]``; gates i, f, g, o |
| ``GRU(reset_after=True)`` | ``w_i [I, 3H]``, ``w_h [H, 3H]``, ``b [3H]``, ``b_h [3H]``; r, z, n |
| ``GRU(reset_after=False)`` | ``w_i [I, 3H]``, ``w_h [H, 3H]``, ``b [3H]``; gates r, z, n |

``SimpleRNN`` and ``LSTM`` also accept an optional second bias ``b_h`` (same shape as ``b``),
added to ``b``: PyTorch stores two, and keeping both makes weight round trips exact.

Precision (Flax's convention): ``param_dtype`` is what ``init`` stores (float32 by default) and
``dtype`` the computation dtype (``None``: the promotion of the inputs' and the parameters'
dtypes). The weights enter each matmul in ``dtype`` with the products accumulated in at least
float32 (:func:`accumulation_dtype`); biases, gate nonlinearities and the carry (``h``, and
the LSTM's ``c``) are in that accumulation dtype, so a bfloat16 or float16 computation keeps
a float32 state from step to step; each step's output is returned in ``dtype``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
Carry = Any  # an array, or a tuple of arrays, each [batch, hidden_size]
DType = Any  # anything jnp.dtype accepts: jnp.bfloat16, "float16", np.float32, ...

_glorot = jax.nn.initializers.glorot_uniform()
_orthogonal = jax.nn.initializers.orthogonal()


def _check_hidden_size(cell) -> None:
    if not isinstance(cell.hidden_size, int) or cell.hidden_size <= 0:
        raise ValueError(
            f"{type(cell).__name__}: hidden_size must be a positive int, got {cell.hidden_size!r}"
        )


def accumulation_dtype(dtype: DType) -> jnp.dtype:
    """The dtype that a computation in ``dtype`` accumulates and keeps its state in: float32
    for bfloat16 and float16, else ``dtype`` itself (float32, float64)."""
    return jnp.promote_types(dtype, jnp.float32)


def matmul(a: Array, w: Array, dtype: DType) -> Array:
    """``a @ w`` with both operands in ``dtype`` and the products summed in
    :func:`accumulation_dtype` (``preferred_element_type``); the result has that dtype."""
    return jnp.matmul(
        a.astype(dtype), w.astype(dtype), preferred_element_type=accumulation_dtype(dtype)
    )


def check_floating(dtype: DType, name: str) -> None:
    """``dtype`` must be one that JAX calls floating (bfloat16, float16, float32, float64)."""
    try:
        ok = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(
            f"{name} must be a floating dtype (bfloat16, float16, float32, float64), got {dtype!r}"
        )


def input_bias(params: Params) -> Array:
    """The bias that the SimpleRNN's and LSTM's ``project_inputs`` add: ``b``, plus ``b_h``
    where the parameters have one (PyTorch's second bias, from ``jaxrnn.interop``)."""
    b = params["b"]
    return b + params["b_h"] if "b_h" in params else b


def _init_weights(key, input_size: int, hidden_size: int, gates: int, dtype) -> Params:
    """Keras' defaults: Glorot-uniform input kernel, orthogonal recurrent kernel, zero bias."""
    check_floating(dtype, "dtype")
    if not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    k_i, k_h = jax.random.split(key)
    # Drawn in at least float32 (the QR behind `orthogonal` has no bfloat16 kernel), then cast.
    wide = jnp.promote_types(dtype, jnp.float32)
    return {
        "w_i": _glorot(k_i, (input_size, gates * hidden_size), wide).astype(dtype),
        "w_h": _orthogonal(k_h, (hidden_size, gates * hidden_size), wide).astype(dtype),
        "b": jnp.zeros((gates * hidden_size,), dtype),
    }


class _Cell:
    """Shared behaviour of the cells (not public): carry shapes and the one-step call."""

    hidden_size: int
    gates: int = 1
    dtype: DType
    param_dtype: DType
    step: Callable[..., tuple[Carry, Array]]  # the recurrent half, defined by each cell

    @property
    def output_size(self) -> int:
        return self.hidden_size

    def _check_dtypes(self) -> None:
        if self.dtype is not None:
            check_floating(self.dtype, f"{type(self).__name__}: dtype")
        check_floating(self.param_dtype, f"{type(self).__name__}: param_dtype")

    def compute_dtype(self, params: Params, x_dtype: DType = None) -> jnp.dtype:
        """``dtype``, or where it is ``None`` the promotion of ``x_dtype`` and the parameters'."""
        if self.dtype is not None:
            return jnp.dtype(self.dtype)
        dtypes = [v.dtype for v in jax.tree.leaves(params)]
        return jnp.result_type(*dtypes, *([] if x_dtype is None else [x_dtype]))

    def initial_carry(self, batch_size: int, dtype: DType = None) -> Carry:
        """Zeros of shape ``[batch_size, hidden_size]`` (a ``(c, h)`` pair for the LSTM), of
        ``dtype`` (default: the accumulation dtype of the cell's ``dtype``, float32 when that
        is ``None``, bfloat16 or float16)."""
        if dtype is None:
            dtype = accumulation_dtype(jnp.float32 if self.dtype is None else self.dtype)
        return jnp.zeros((batch_size, self.hidden_size), dtype)

    def hidden(self, carry: Carry) -> Array:
        """The part of the carry that is fed back through ``w_h``: ``h``, ``[batch, H]``."""
        return carry

    def with_hidden(self, carry: Carry, h: Array) -> Carry:
        """The carry with its ``h`` replaced (used by recurrent dropout)."""
        return h

    def masked_step(self, params: Params, carry: Carry, xp: Array, mask: Array):
        """``step`` with ``h * mask`` (``[batch, H]``) where ``h`` enters the recurrent
        weights (recurrent dropout); every other use of the state sees it unmasked."""
        h = self.hidden(carry)
        return self.step(params, self.with_hidden(carry, h * mask.astype(h.dtype)), xp)

    def _dt(self) -> DType:
        """The computation dtype inside ``project_inputs``/``step``: ``dtype``, or float32 where
        it is ``None`` (the drivers and ``__call__`` resolve ``None`` before stepping)."""
        return jnp.float32 if self.dtype is None else self.dtype

    def project_inputs(self, params: Params, x: Array) -> Array:
        """``[..., input_size] -> [..., gates * hidden_size]``: ``x @ w_i + b``, in the
        accumulation dtype."""
        acc = accumulation_dtype(self._dt())
        return matmul(x, params["w_i"], self._dt()) + input_bias(params).astype(acc)

    def resolve(self, params: Params, x_dtype: DType = None):
        """This cell with ``dtype`` set: itself when it has one, else the promotion of
        ``x_dtype`` and the parameters' dtypes (:meth:`compute_dtype`)."""
        if self.dtype is not None:
            return self
        resolved = self.compute_dtype(params, x_dtype)
        return dataclasses.replace(self, dtype=resolved)  # type: ignore[type-var]

    def __call__(self, params: Params, carry: Carry, x: Array) -> tuple[Carry, Array]:
        """One step. ``x``: ``[batch, input_size]``; returns ``(carry, y)``: the carry in the
        accumulation dtype, ``y`` ``[batch, H]`` in the computation dtype."""
        cell = self.resolve(params, x.dtype)
        acc = accumulation_dtype(cell.dtype)
        carry = jax.tree.map(lambda leaf: leaf.astype(acc), carry)
        carry, y = cell.step(params, carry, cell.project_inputs(params, x))
        return carry, y.astype(cell.dtype)


@dataclasses.dataclass(frozen=True)
class SimpleRNN(_Cell):
    """Elman RNN: ``h' = act(x @ w_i + h @ w_h + b)``; the output is ``h'``.

    ``activation`` is ``"tanh"`` (TF1 ``BasicRNNCell``) or ``"relu"`` (the Keras tutorial).
    Carry: ``h`` of shape ``[batch, hidden_size]``. ``dtype``/``param_dtype``: see the module
    docstring.
    """

    hidden_size: int
    activation: Literal["tanh", "relu"] = "tanh"
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)

    def __post_init__(self):
        _check_hidden_size(self)
        self._check_dtypes()
        if self.activation not in ("tanh", "relu"):
            raise ValueError(
                f"SimpleRNN: activation must be 'tanh' or 'relu', got {self.activation!r}"
            )

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        return _init_weights(
            key, input_size, self.hidden_size, 1, self.param_dtype if dtype is None else dtype
        )

    def step(self, params: Params, carry: Array, xp: Array) -> tuple[Array, Array]:
        act = jnp.tanh if self.activation == "tanh" else jax.nn.relu
        h = act(xp + matmul(carry, params["w_h"], self._dt()))
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTM(_Cell):
    """Long short-term memory without peepholes; gate blocks in the order i, f, g, o.

    ``z = x @ w_i + h @ w_h + b``;  ``i, f, o = sigmoid(z_i), sigmoid(z_f + forget_bias),
    sigmoid(z_o)``;  ``g = tanh(z_g)``;  ``c' = f * c + i * g``;  ``h' = o * tanh(c')``.

    Two ways to bias the forget gate towards remembering, as the two traditions do:

    * ``forget_bias``: a constant added inside every step, not trained (TF1 ``BasicLSTMCell``,
      whose default is 1.0).
    * ``forget_bias_init``: the initial value of the forget block of ``b``, trained (Keras'
      ``unit_forget_bias=True`` is 1.0, the default here).

    Carry: ``(c, h)``, each ``[batch, hidden_size]``; the output is ``h'``.
    ``dtype``/``param_dtype``: see the module docstring.
    """

    hidden_size: int
    forget_bias: float = 0.0
    forget_bias_init: float = 1.0
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 4

    def __post_init__(self):
        _check_hidden_size(self)
        self._check_dtypes()

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        params = _init_weights(
            key, input_size, self.hidden_size, 4, self.param_dtype if dtype is None else dtype
        )
        h = self.hidden_size
        params["b"] = params["b"].at[h : 2 * h].set(self.forget_bias_init)
        return params

    def initial_carry(self, batch_size: int, dtype: DType = None) -> tuple[Array, Array]:
        zeros = super().initial_carry(batch_size, dtype)
        return zeros, zeros

    def hidden(self, carry):
        return carry[1]

    def with_hidden(self, carry, h):
        return carry[0], h

    def step(self, params: Params, carry, xp: Array):
        c, h = carry
        z = xp + matmul(h, params["w_h"], self._dt())
        zi, zf, zg, zo = jnp.split(z, 4, axis=-1)
        if self.forget_bias:
            zf = zf + self.forget_bias
        c = jax.nn.sigmoid(zf) * c + jax.nn.sigmoid(zi) * jnp.tanh(zg)
        h = jax.nn.sigmoid(zo) * jnp.tanh(c)
        return (c, h), h


@dataclasses.dataclass(frozen=True)
class GRU(_Cell):
    """Gated recurrent unit; gate blocks in the order r (reset), z (update), n (candidate).

    With ``xi = x @ w_i + b``:

    * ``reset_after=True`` (cuDNN, PyTorch and Keras' default), ``hh = h @ w_h + b_h``:
      ``r = sigmoid(xi_r + hh_r)``, ``z = sigmoid(xi_z + hh_z)``, ``n = tanh(xi_n + r * hh_n)``.
    * ``reset_after=False`` (Cho et al., 2014): ``r, z`` as above without ``b_h``, and
      ``n = tanh(xi_n + (r * h) @ w_h_n)``.

    Then ``h' = (1 - z) * n + z * h``. Carry: ``h``, ``[batch, hidden_size]``; output ``h'``.
    ``dtype``/``param_dtype``: see the module docstring.
    """

    hidden_size: int
    reset_after: bool = True
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 3

    def __post_init__(self):
        _check_hidden_size(self)
        if not isinstance(self.reset_after, bool):
            raise TypeError(f"GRU: reset_after must be a bool, got {self.reset_after!r}")
        self._check_dtypes()

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        params = _init_weights(
            key, input_size, self.hidden_size, 3, self.param_dtype if dtype is None else dtype
        )
        if self.reset_after:
            params["b_h"] = jnp.zeros_like(params["b"])
        return params

    def project_inputs(self, params: Params, x: Array) -> Array:
        acc = accumulation_dtype(self._dt())
        return matmul(x, params["w_i"], self._dt()) + params["b"].astype(acc)

    def masked_step(self, params: Params, carry: Array, xp: Array, mask: Array):
        # The mask reaches the matmuls only: z * h interpolates with the unmasked state.
        return self.step(params, carry, xp, recurrent=carry * mask.astype(carry.dtype))

    def step(self, params: Params, carry: Array, xp: Array, recurrent: Array | None = None):
        """``recurrent``: the ``h`` that enters ``w_h`` (default ``carry``)."""
        h = carry if recurrent is None else recurrent
        w_h, dt = params["w_h"], self._dt()
        xr, xz, xn = jnp.split(xp, 3, axis=-1)
        if self.reset_after:
            b_h = params["b_h"].astype(accumulation_dtype(dt))
            hr, hz, hn = jnp.split(matmul(h, w_h, dt) + b_h, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
        else:
            size = self.hidden_size
            hr, hz = jnp.split(matmul(h, w_h[:, : 2 * size], dt), 2, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + matmul(r * h, w_h[:, 2 * size :], dt))
        h = (1.0 - z) * n + z * carry
        return h, h


Cell = SimpleRNN | LSTM | GRU
