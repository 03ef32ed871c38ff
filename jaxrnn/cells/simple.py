"""SimpleRNN: the Elman cell, the derivative of its step written out, and the binding of its
CPU kernels (``csrc/simple.cc``)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import _native
from jaxrnn.cells import _loops, fused, registry
from jaxrnn.cells._base import (
    Array,
    CellBase,
    DType,
    Params,
    check_hidden_size,
    gate_blocks,
    init_weights,
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

    @property
    def hand_written_derivative(self) -> bool:
        return True

    def fused_loop(self):
        return fused.scan

    def kernels(self):
        return KERNELS

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        return init_weights(
            key, input_size, self.hidden_size, 1, self.param_dtype if dtype is None else dtype
        )

    def update(self, params: Params, carry: Array, xp: Array, hw: Array) -> tuple[Array, Array]:
        """``h' = act(xp + hw)``, the output ``h'``."""
        act = jnp.tanh if self.activation == "tanh" else jax.nn.relu
        (xp,), (hw,) = gate_blocks(xp, 1), gate_blocks(hw, 1)
        h = act(xp + hw)
        return h, h

    def update_kept(self, params: Params, carry: Array, xp: Array, hw: Array):
        """``(h', h', ())``: the derivative reads only the output."""
        h, y = self.update(params, carry, xp, hw)
        return h, y, ()

    def update_backward(self, params: Params, kept, h_prev, y, d_carry, d_y):
        """The derivative of :meth:`update` from its output ``y``: ``(0, d_z, d_z, {})``,
        ``d_z`` the cotangent of ``xp + hw`` (``[batch, H]``); the state enters only ``hw``."""
        g = d_carry + d_y  # h is both the output and the next step's state
        if self.activation == "relu":
            d_z = jnp.where(y > 0, g, 0.0)
        else:
            d_z = g * (1.0 - y * y)
        return jnp.zeros_like(g), d_z, d_z, {}


# ------------------------------------------------------------------------------------------
# The CPU kernels (``jaxrnn._native`` loads them).


def forward_kernel(cell, inputs: _loops.LoopInputs, *, reverse: bool, time_major: bool, keep):
    """``(ys, h, kept)``: the SimpleRNN over ``xw + bias`` (``[T, B, H]`` or ``[B, T, H]``)
    from ``carry0``, the state zeroed before the steps where ``resets`` is True; ``kept`` is
    empty (the backward pass reads the outputs)."""
    del keep
    w_h, xw, bias, _, valid, resets, h0 = inputs
    assert not isinstance(xw, tuple)  # the kernels read the projection as laid out
    steps, batch = xw.shape[:2] if time_major else xw.shape[1::-1]
    valid = _native.mask(valid, steps, batch)
    hidden = h0.shape[1]
    call = jax.ffi.ffi_call(
        "jaxrnn_simple_forward",
        _native.outputs((steps, batch, hidden), (batch, hidden)),
        vmap_method="sequential",
    )
    ys, h = call(
        xw,
        bias,
        w_h,
        h0,
        valid,
        _native.reset_mask(resets),
        relu=np.int32(cell.activation == "relu"),
        reverse=np.int32(reverse),
        time_major=np.int32(time_major),
    )
    return ys, h, jnp.zeros((0,), jnp.float32)


def backward_kernel(cell, w_h, inner, inputs: _loops.BackwardInputs, *, reverse, time_major):
    """``(d_z, d_h0, d_w_h, {}, d_w_i, d_b)``: the cotangents of the SimpleRNN's
    pre-activations, initial state and weights (as :func:`jaxrnn.cells.lstm.backward_kernel`)."""
    del inner
    _, valid, d_ys, d_h, ys, h0, xs, resets = inputs
    hidden = w_h.shape[0]
    call = jax.ffi.ffi_call(
        "jaxrnn_simple_backward",
        _native.outputs(ys.shape, d_h.shape, w_h.shape, (xs.shape[2], hidden), (hidden,)),
        vmap_method="sequential",
    )
    valid = _native.mask(valid, *ys.shape[:2])
    args = (w_h, ys, valid, _native.reset_mask(resets), d_ys, d_h, h0, xs)
    options = {"relu": np.int32(cell.activation == "relu"), "reverse": np.int32(reverse)}
    d_z, d_h0, d_w_h, d_w_i, d_b = call(*args, **options, time_major=np.int32(time_major))
    return d_z, d_h0, d_w_h, {}, d_w_i, d_b


KERNELS = _loops.Kernels(forward_kernel, backward_kernel)
