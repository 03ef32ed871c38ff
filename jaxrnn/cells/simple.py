"""SimpleRNN: the Elman cell, its fused XLA loops with their hand-written backward pass,
and the binding of its CPU kernels (``csrc/simple.cc``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _native
from jaxrnn.cells import _loops, registry
from jaxrnn.cells._base import (
    Array,
    CellBase,
    DType,
    Params,
    check_hidden_size,
    gate_blocks,
    init_weights,
    matmul,
)


@registry.register(
    "rnn",
    kernels={
        "jaxrnn_simple_forward": "JaxrnnSimpleForward",
        "jaxrnn_simple_backward": "JaxrnnSimpleBackward",
    },
)
@dataclasses.dataclass(frozen=True)
class SimpleRNN(CellBase):
    """Elman RNN: ``h' = act(x @ w_i + h @ w_h + b)``; the output is ``h'``.

    ``activation`` is ``"tanh"`` (TF1 ``BasicRNNCell``) or ``"relu"`` (the Keras tutorial).
    Carry: ``h`` of shape ``[batch, hidden_size]``. ``dtype``/``param_dtype``: see the module
    docstring.
    """

    hidden_size: int
    activation: Literal["tanh", "relu"] = "tanh"
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    accepts_gate_blocks = True

    def __post_init__(self):
        check_hidden_size(self)
        self._check_dtypes()
        if self.activation not in ("tanh", "relu"):
            raise ValueError(
                f"SimpleRNN: activation must be 'tanh' or 'relu', got {self.activation!r}"
            )

    def fused_loop(self):
        return scan

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        return init_weights(
            key, input_size, self.hidden_size, 1, self.param_dtype if dtype is None else dtype
        )

    def update(self, params: Params, carry: Array, xp: Array, hw: Array) -> tuple[Array, Array]:
        """``h' = act(xp + hw)``, the output ``h'``."""
        act = jnp.tanh if self.activation == "tanh" else jax.nn.relu
        (xp,) = gate_blocks(xp, 1)
        h = act(xp + hw)
        return h, h


# ------------------------------------------------------------------------------------------
# SimpleRNN: only the outputs are kept. The loops take the projected inputs ``xp`` as laid out
# (``[time, batch, hidden]`` or ``[batch, time, hidden]``) and run on jaxrnn's CPU kernel where
# one is available (``jaxrnn._native``), else in XLA.


def forward_xla(w_h, xp, b, valid, h0, resets=None, *, relu, backwards, time_major, unroll):
    act = jax.nn.relu if relu else jnp.tanh
    (xp,) = _loops.per_gate(xp, 1, time_major)

    def body(h, inputs):
        xp_t, valid_t, reset_after_t = inputs
        new = act(xp_t + b + matmul(h, w_h, w_h.dtype))
        y = new
        if valid_t is not None:
            keep = valid_t[:, None]
            new, y = jnp.where(keep, new, h), jnp.where(keep, new, jnp.zeros_like(new))
        return _loops.zero_where(reset_after_t, new)[0], y  # the next step starts from zeros

    after, (h0,) = _loops.resets_after(backwards, resets, (h0,))
    h, ys = jax.lax.scan(body, h0, (xp, valid, after), reverse=backwards, unroll=unroll)
    return ys, h


def backward_xla(w_h, saved: _loops.BackwardInputs, *, relu, backwards, unroll, time_major):
    _, valid, d_ys, (d_h,), ys, h0, xs, resets = saved
    w_h_t, dtype = w_h.T, w_h.dtype

    def body(d_h, inputs):
        y_t, d_y, valid_t, reset_t = inputs
        # Past a sequence's length y is zero and its state is copied: the state's cotangent
        # passes through and the step gets none. Through a reset none passes.
        g = d_h + d_y
        d_z = jnp.where(y_t > 0, g, 0.0) if relu else g * (1.0 - y_t * y_t)
        if valid_t is not None:
            keep = valid_t[:, None]
            d_z = jnp.where(keep, d_z, jnp.zeros_like(d_z))
            d_h_prev = jnp.where(keep, matmul(d_z, w_h_t, dtype), d_h)
        else:
            d_h_prev = matmul(d_z, w_h_t, dtype)
        return _loops.zero_where(reset_t, d_h_prev)[0], d_z

    inputs = (ys, d_ys, valid, resets)
    d_h0, d_z = jax.lax.scan(body, d_h, inputs, reverse=not backwards, unroll=unroll)
    d_w_h = _loops.recurrent_weight_gradient(backwards, h0, ys, d_z, dtype, resets)
    return d_z, d_h0, d_w_h, *_loops.input_weight_gradient(xs, d_z, time_major, dtype)


# ------------------------------------------------------------------------------------------
# The CPU kernels (``jaxrnn._native`` loads them).


def forward_kernel(
    w_h, xp, b, valid, h0, resets=None, *, relu: bool, reverse: bool, time_major: bool
):
    """``(ys, h)``: the SimpleRNN over ``xp + b`` (``xp``: the input projection, ``[T, B, H]``
    or ``[B, T, H]``; ``b``: the bias, ``[H]``) from ``h0``, the state zeroed before the steps
    where ``resets`` (``[T, B]`` bool, or None) is True."""
    steps, batch = valid.shape
    hidden = w_h.shape[0]
    call = jax.ffi.ffi_call(
        "jaxrnn_simple_forward",
        _native.outputs((steps, batch, hidden), (batch, hidden)),
        vmap_method="sequential",
    )
    ys, h = call(
        xp,
        b,
        w_h,
        h0,
        valid,
        _native.reset_mask(resets),
        relu=np.int32(relu),
        reverse=np.int32(reverse),
        time_major=np.int32(time_major),
    )
    return ys, h


def backward_kernel(
    w_h, saved: _loops.BackwardInputs, *, relu: bool, reverse: bool, time_major: bool
):
    """``(d_z, d_h0, d_w_h, d_w_i, d_b)``: the cotangents of the SimpleRNN's pre-activations,
    initial state and weights (as :func:`jaxrnn.cells.lstm.backward_kernel`)."""
    _, valid, d_ys, (d_h,), ys, h0, xs, resets = saved
    hidden = w_h.shape[0]
    call = jax.ffi.ffi_call(
        "jaxrnn_simple_backward",
        _native.outputs(ys.shape, d_h.shape, w_h.shape, (xs.shape[2], hidden), (hidden,)),
        vmap_method="sequential",
    )
    args = (w_h, ys, valid, _native.reset_mask(resets), d_ys, d_h, h0, xs)
    options = {"relu": np.int32(relu), "reverse": np.int32(reverse)}
    return tuple(call(*args, **options, time_major=np.int32(time_major)))


def _activation(cell):
    return {"relu": cell.activation == "relu"}


scan = _loops.CellLoops(
    forward_xla,
    backward_xla,
    forward_kernel,
    backward_kernel,
    gates=1,
    options=_activation,
    backward_options=_activation,
).scan()
