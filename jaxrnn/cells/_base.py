"""What the cells share: the precision policy's helpers, weight initialization, and the base
class that gives every cell its carry handling, input projection and one-step call."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array
Params = dict[str, Array]
Carry = Any  # an array, or a tuple of arrays, each [batch, hidden_size]
DType = Any  # anything jnp.dtype accepts: jnp.bfloat16, "float16", np.float32, ...

_glorot = jax.nn.initializers.glorot_uniform()
_orthogonal = jax.nn.initializers.orthogonal()


def check_hidden_size(cell) -> None:
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


def gate_blocks(a: Array | tuple[Array, ...], gates: int) -> tuple[Array, ...]:
    """The ``gates`` blocks of a projected input or recurrent matmul: ``a`` (``[batch, gates *
    H]``) split along its last axis, or ``a`` itself where it is already the tuple of blocks
    (``[batch, H]`` each, as the fused loop passes ``xp``)."""
    if isinstance(a, tuple | list):
        return tuple(a)
    return tuple(jnp.split(a, gates, axis=-1))


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


def layer_norm(z: Array, gain: Array, shift: Array | None = None, eps: float = 1e-5) -> Array:
    """``gain * (z - mean) / sqrt(var + eps) (+ shift)``, the mean and (biased) variance over
    the last axis of ``z`` (Ba, Kiros & Hinton 2016), in ``z``'s dtype (the accumulation
    dtype: the cells normalize matmul results and cell states)."""
    gain = gain.astype(z.dtype)
    shift = jnp.zeros_like(gain) if shift is None else shift.astype(z.dtype)
    return _normalize(z, gain, shift, eps)


def _statistics(z: Array, eps: float) -> tuple[Array, Array]:
    """``(z - mean) / sqrt(var + eps)`` and ``1 / sqrt(var + eps)`` over the last axis."""
    centred = z - jnp.mean(z, axis=-1, keepdims=True)
    inv = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
    return centred * inv, inv


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _normalize(z: Array, gain: Array, shift: Array, eps: float) -> Array:
    return _statistics(z, eps)[0] * gain + shift


@_normalize.defjvp
def _normalize_jvp(eps, primals, tangents):
    # The derivative written out, d_xhat = inv * (dz - mean(dz) - xhat * mean(dz * xhat)):
    # fewer operations per time step (forward and, transposed, backward) than the one JAX
    # derives through the mean, the variance and rsqrt (train step of a layer-normalized
    # LSTM at 128 units on a 2-core CPU: about 1.6x faster).
    z, gain, shift = primals
    dz, d_gain, d_shift = tangents
    xhat, inv = _statistics(z, eps)
    mean_dz = jnp.mean(dz, axis=-1, keepdims=True)
    d_xhat = inv * (dz - mean_dz - xhat * jnp.mean(dz * xhat, axis=-1, keepdims=True))
    return xhat * gain + shift, d_xhat * gain + xhat * d_gain + d_shift


def init_weights(
    key, input_size: int, hidden_size: int, gates: int, dtype, recurrent_size: int | None = None
) -> Params:
    """Keras' defaults: Glorot-uniform input kernel, orthogonal recurrent kernel, zero bias.
    ``recurrent_size``: the rows of ``w_h`` (the size of the state fed back; default
    ``hidden_size``)."""
    check_floating(dtype, "dtype")
    if not isinstance(input_size, int) or input_size <= 0:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    k_i, k_h = jax.random.split(key)
    # Drawn in at least float32 (the QR behind `orthogonal` has no bfloat16 kernel), then cast.
    wide = jnp.promote_types(dtype, jnp.float32)
    return {
        "w_i": _glorot(k_i, (input_size, gates * hidden_size), wide).astype(dtype),
        "w_h": _orthogonal(k_h, (recurrent_size or hidden_size, gates * hidden_size), wide).astype(
            dtype
        ),
        "b": jnp.zeros((gates * hidden_size,), dtype),
    }


class CellBase:
    """The base class of every cell (public as ``jaxrnn.Cell``): carry handling, the input
    projection and the one-step call.

    A cell of one's own is a frozen dataclass that subclasses it, with the fields
    ``hidden_size``, ``dtype`` and ``param_dtype``, and defines ``init(key, input_size,
    dtype=None) -> params`` and ``update(params, carry, xp, hw) -> (carry, y)`` (see
    :meth:`step`). What it inherits assumes ``gates`` blocks of ``hidden_size`` in the input
    projection ``x @ w_i + b`` (override :meth:`projection` and :meth:`bias` otherwise), a
    carry ``h`` ``[batch, hidden_size]`` (override :meth:`initial_carry`, :meth:`hidden` and
    :meth:`with_hidden` otherwise) and a recurrent matrix ``w_h`` (for a cell without one,
    override :meth:`param_shapes` and :meth:`recurrent`, which then returns ``None``).
    :func:`jaxrnn.cells.register` gives it a name for ``Model(cell=...)``.

    The same definition runs the fused loop (:mod:`jaxrnn.cells.fused`) where
    :meth:`fused_loop` returns it; ``update`` then reads only :meth:`update_params`. A cell
    may write out the derivative of its step there (:attr:`hand_written_derivative`,
    ``update_kept`` and ``update_backward``; see the fused loop's docstring).
    """

    hidden_size: int
    gates: int = 1
    # Whether ``update`` takes ``xp`` as its tuple of gate blocks (:func:`gate_blocks`), as
    # the fused loop reads it; else the loop concatenates them.
    accepts_gate_blocks: bool = False
    dtype: DType
    param_dtype: DType
    init: Callable[..., Params]  # (key, input_size, dtype=None) -> params, defined by each cell
    __dataclass_fields__: ClassVar[dict[str, Any]]  # every cell is a dataclass
    # The cell's own arithmetic, given the projected input and the recurrent matmul.
    update: Callable[..., tuple[Carry, Array]]

    @property
    def output_size(self) -> int:
        """The size of ``h`` and of each step's output (the rows of ``w_h``)."""
        return self.hidden_size

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """The shape of every parameter the cell's step needs, but the biases (``b``, and
        ``b_h`` where optional), for inputs of ``input_size`` features. ``rnn`` checks the
        parameters against these and :meth:`bias_shapes`, and refuses any other."""
        width = self.gates * self.hidden_size
        return {"w_i": (input_size, width), "w_h": (self.output_size, width)}

    def bias_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """The shape of each bias the parameters may hold (``b``, and ``b_h`` where the cell
        takes one): a value per column of ``w_i``, ``[gates * hidden_size]``."""
        w_i = self.param_shapes(input_size).get("w_i")
        return {} if w_i is None else {"b": w_i[-1:], "b_h": w_i[-1:]}

    def fused_loop(self) -> Callable | None:
        """The fused path's loop for this cell (:func:`jaxrnn.cells.fused.scan`), or ``None``
        where it has none (then ``rnn`` runs ``lax.scan``)."""
        return None

    @property
    def hand_written_derivative(self) -> bool:
        """Whether the cell writes out the derivative of its step (``update_kept`` and
        ``update_backward``, :mod:`jaxrnn.cells.fused`) rather than the fused loop deriving
        it from ``update``."""
        return False

    def kernels(self) -> Any:
        """The CPU kernels that run :meth:`fused_loop` (a
        :class:`jaxrnn.cells._loops.Kernels`), or ``None``."""
        return None

    def has_kernels(self) -> bool:
        """Whether :meth:`fused_loop` can run as jaxrnn's CPU kernels
        (``implementation="kernel"``)."""
        return self.kernels() is not None

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
        """Zeros of shape ``[batch_size, output_size]`` (a ``(c, h)`` pair for the LSTM), of
        ``dtype`` (default: the accumulation dtype of the cell's ``dtype``, float32 when that
        is ``None``, bfloat16 or float16)."""
        if dtype is None:
            dtype = accumulation_dtype(jnp.float32 if self.dtype is None else self.dtype)
        return jnp.zeros((batch_size, self.output_size), dtype)

    def hidden(self, carry: Carry) -> Array:
        """The part of the carry that is fed back through ``w_h``: ``h``, ``[batch, H]``."""
        return carry

    def with_hidden(self, carry: Carry, h: Array) -> Carry:
        """The carry with its ``h`` replaced (used by recurrent dropout)."""
        return h

    def recurrent(self, params: Params, h: Array) -> Array | None:
        """The recurrent matmul ``h @ w_h`` (``[batch, gates * hidden_size]``, in the
        accumulation dtype) that :meth:`update` is given; ``None`` for a cell without ``w_h``."""
        return matmul(h, params["w_h"], self._dt())

    def update_params(self, params: Params) -> Params:
        """The parameters that :meth:`update` reads (the fused loop sums their gradients over
        the steps): all but the matmuls' weights ``w_i``, ``w_h`` and the biases that
        :meth:`project_inputs` folds in (``b``, ``b_h``)."""
        return {k: v for k, v in params.items() if k not in ("w_i", "w_h", "b", "b_h")}

    def step(self, params: Params, carry: Carry, xp: Array) -> tuple[Carry, Array]:
        """The recurrent half of a step, given one projected input ``xp`` (``[batch, gates *
        hidden_size]``, :meth:`project_inputs`): ``update(params, carry, xp, hw)`` with ``hw``
        the recurrent matmul of the carry's ``h`` (:meth:`recurrent`). Returns ``(carry, y)``.

        A cell defines ``update(params, carry, xp, hw) -> (carry, y)``: its gates and state
        arithmetic given the two matmuls' results, in the accumulation dtype; ``xp`` may also
        come as its tuple of ``gates`` blocks (:func:`gate_blocks`). The same
        definition runs here (``lax.scan``) and in the fused loop
        (:mod:`jaxrnn.cells.fused`), which derives its backward pass from it."""
        return self.update(params, carry, xp, self.recurrent(params, self.hidden(carry)))

    def masked_step(self, params: Params, carry: Carry, xp: Array, mask: Array):
        """``step`` with ``h * mask`` (``[batch, H]``) where ``h`` enters the recurrent
        weights (recurrent dropout); every other use of the state sees it unmasked."""
        h = self.hidden(carry)
        return self.update(params, carry, xp, self.recurrent(params, h * mask.astype(h.dtype)))

    def _dt(self) -> DType:
        """The computation dtype inside ``project_inputs``/``step``: ``dtype``, or float32 where
        it is ``None`` (the drivers and ``__call__`` resolve ``None`` before stepping)."""
        return jnp.float32 if self.dtype is None else self.dtype

    def project_inputs(self, params: Params, x: Array) -> Array:
        """``[..., input_size] -> [..., gates * hidden_size]``: :meth:`projection` plus
        :meth:`bias`, in the accumulation dtype."""
        xw, bias = self.projection(params, x), self.bias(params)
        return xw if bias is None else xw + bias.astype(xw.dtype)

    def projection(self, params: Params, x: Array) -> Array:
        """The input projection but its bias: ``x @ w_i`` (``[..., gates * hidden_size]``, in
        the accumulation dtype). The fused loop applies it to all steps at once and adds
        :meth:`bias` inside the loop."""
        return matmul(x, params["w_i"], self._dt())

    @property
    def plain_projection(self) -> bool:
        """Whether :meth:`projection` is the plain ``x @ w_i`` (the fused loop then writes out
        its derivative); a cell that defines its own projection says so where it is."""
        return type(self).projection is CellBase.projection

    def bias(self, params: Params) -> Array | None:
        """The bias of the input projection (``[gates * hidden_size]``): ``b``, plus ``b_h``
        where the parameters have one (:func:`input_bias`); ``None`` without ``b``."""
        return input_bias(params) if "b" in params else None

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
