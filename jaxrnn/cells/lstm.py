"""LSTM and its variants (projection, peepholes, clipping, layer normalization): the cell, the
derivative of its step written out, and the binding of its CPU kernels (``csrc/lstm.cc``)."""

from __future__ import annotations

import dataclasses

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
    layer_norm,
    matmul,
)


@registry.register(
    "lstm",
    kernels={
        "jaxrnn_lstm_forward": "JaxrnnLstmForward",
        "jaxrnn_lstm_backward": "JaxrnnLstmBackward",
    },
)
@dataclasses.dataclass(frozen=True)
class LSTM(CellBase):
    """Long short-term memory; gate blocks in the order i, f, g, o.

    ``z = x @ w_i + h @ w_h + b``;  ``i, f, o = sigmoid(z_i), sigmoid(z_f + forget_bias),
    sigmoid(z_o)``;  ``g = tanh(z_g)``;  ``c' = f * c + i * g``;  ``h' = o * tanh(c')``.

    Two ways to bias the forget gate towards remembering, as the two traditions do:

    * ``forget_bias``: a constant added inside every step, not trained (TF1 ``BasicLSTMCell``,
      whose default is 1.0).
    * ``forget_bias_init``: the initial value of the forget block of ``b``, trained (Keras'
      ``unit_forget_bias=True`` is 1.0, the default here).

    Variants (keyword-only; any combination, applied in this order within a step):

    * ``layer_norm=True``, the layer-normalized LSTM of Ba, Kiros & Hinton (2016, eqs. 20-22):
      ``z = LN(x @ w_i; g_i) + LN(h @ w_h; g_h) + b``, each ``LN`` over all ``4H``
      pre-activations of its matmul, and ``h' = o * tanh(LN(c'; g_c, b_c))`` over the ``H``
      cell units; the carried ``c'`` is the unnormalized one. ``LN(a; g, s) = g * (a -
      mean(a)) / sqrt(var(a) + 1e-5) + s``. The paper's two gate shifts and ``b`` only enter
      as their sum: they are the one ``b``. As in any layer-normalized RNN, a normalized vector
      that is exactly constant (a state that stays zero because a sequence's inputs are all
      zero, at initialization) has a derivative of ``1 / sqrt(1e-5)``: over tens of such
      steps the gradient overflows (input dropout on very few features can make such
      sequences).
    * ``peepholes=True`` (Gers & Schmidhuber 2000, as TF1 ``LSTMCell(use_peepholes=True)``):
      ``i = sigmoid(z_i + w_ci * c)``, ``f = sigmoid(z_f + forget_bias + w_cf * c)`` from the
      previous cell state, ``o = sigmoid(z_o + w_co * c')`` from the new one; ``w_c*``
      diagonal (``[H]``).
    * ``cell_clip=v`` (TF1 ``cell_clip``): ``c' = clip(c', -v, v)`` before the output gate's
      peephole and the output (and carried clipped).
    * ``proj_size=P > 0``, LSTMP (Sak et al. 2014, PyTorch ``nn.LSTM(proj_size=P)``, TF1
      ``num_proj``): ``h' = (o * tanh(c')) @ w_hr``, so ``h`` and the outputs have ``P``
      units and ``c`` keeps ``H``; ``w_h`` is ``[P, 4H]``.
    * ``proj_clip=v`` (TF1 ``proj_clip``, needs ``proj_size``): ``h' = clip(h', -v, v)``.

    Parameters: ``w_i [I, 4H]``, ``w_h [R, 4H]`` (``R = P`` with a projection, else ``H``),
    ``b [4H]`` (and optionally ``b_h [4H]``, added to ``b``); ``w_hr [H, P]`` with
    ``proj_size``; ``w_ci, w_cf, w_co [H]`` with peepholes (initially zero); ``g_i, g_h [4H]``,
    ``g_c, b_c [H]`` with ``layer_norm`` (gains initially one, shift zero). Every combination
    of ``proj_size``, peepholes and the clips runs the fused loop
    (:mod:`jaxrnn.cells.fused`) with the derivative of the step written out
    (:meth:`update_backward`); no CPU kernels: ``implementation=None`` runs it as ``"fused"``
    on every platform, ``"kernel"`` is an error; ``layer_norm`` runs as ``lax.scan``
    (``implementation="scan"``). Only the plain cell has CPU kernels.

    Carry: ``(c, h)``, ``c`` ``[batch, hidden_size]`` and ``h`` ``[batch, output_size]``
    (``proj_size`` or ``hidden_size``); the output is ``h'``. ``dtype``/``param_dtype``: see
    :mod:`jaxrnn.cells`.
    """

    hidden_size: int
    forget_bias: float = 0.0
    forget_bias_init: float = 1.0
    proj_size: int = dataclasses.field(default=0, kw_only=True)
    peepholes: bool = dataclasses.field(default=False, kw_only=True)
    cell_clip: float | None = dataclasses.field(default=None, kw_only=True)
    proj_clip: float | None = dataclasses.field(default=None, kw_only=True)
    layer_norm: bool = dataclasses.field(default=False, kw_only=True)
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 4
    accepts_gate_blocks = True

    def __post_init__(self):
        check_hidden_size(self)
        self._check_dtypes()
        if not isinstance(self.proj_size, int) or isinstance(self.proj_size, bool):
            raise TypeError(f"LSTM: proj_size must be an int, got {self.proj_size!r}")
        if self.proj_size < 0:
            raise ValueError(f"LSTM: proj_size must be >= 0 (0: none), got {self.proj_size}")
        for name in ("peepholes", "layer_norm"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"LSTM: {name} must be a bool, got {getattr(self, name)!r}")
        for name in ("cell_clip", "proj_clip"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value > 0):
                raise ValueError(f"LSTM: {name} must be None or a positive number, got {value!r}")
        if self.proj_clip is not None and not self.proj_size:
            raise ValueError("LSTM: proj_clip clips the projection: it needs proj_size > 0")

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def plain(self) -> bool:
        """Whether no variant is on (the cell that has CPU kernels)."""
        return not (
            self.proj_size
            or self.peepholes
            or self.layer_norm
            or self.cell_clip is not None
            or self.proj_clip is not None
        )

    def fused_loop(self):
        return None if self.layer_norm else fused.scan

    def kernels(self):
        return KERNELS if self.plain else None

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        shapes = super().param_shapes(input_size)
        h = self.hidden_size
        if self.proj_size:
            shapes["w_hr"] = (h, self.proj_size)
        if self.peepholes:
            shapes.update(w_ci=(h,), w_cf=(h,), w_co=(h,))
        if self.layer_norm:
            shapes.update(g_i=(4 * h,), g_h=(4 * h,), g_c=(h,), b_c=(h,))
        return shapes

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        dtype = self.param_dtype if dtype is None else dtype
        k_w, k_r = jax.random.split(key)
        h = self.hidden_size
        params = init_weights(k_w, input_size, h, 4, dtype, recurrent_size=self.output_size)
        params["b"] = params["b"].at[h : 2 * h].set(self.forget_bias_init)
        if self.proj_size:
            wide = jnp.promote_types(dtype, jnp.float32)
            glorot = jax.nn.initializers.glorot_uniform()
            params["w_hr"] = glorot(k_r, (h, self.proj_size), wide).astype(dtype)
        if self.peepholes:
            params.update({k: jnp.zeros((h,), dtype) for k in ("w_ci", "w_cf", "w_co")})
        if self.layer_norm:
            params.update(g_i=jnp.ones((4 * h,), dtype), g_h=jnp.ones((4 * h,), dtype))
            params.update(g_c=jnp.ones((h,), dtype), b_c=jnp.zeros((h,), dtype))
        return params

    def initial_carry(self, batch_size: int, dtype: DType = None) -> tuple[Array, Array]:
        h = super().initial_carry(batch_size, dtype)
        return jnp.zeros((batch_size, self.hidden_size), h.dtype), h

    def hidden(self, carry):
        return carry[1]

    def with_hidden(self, carry, h):
        return carry[0], h

    @property
    def plain_projection(self) -> bool:
        return not self.layer_norm

    def projection(self, params: Params, x: Array) -> Array:
        xw = matmul(x, params["w_i"], self._dt())
        return layer_norm(xw, params["g_i"]) if self.layer_norm else xw

    def update(self, params: Params, carry, xp: Array, hw: Array):
        """The gates and the new state from ``xp`` (``[batch, 4H]``, the projected input with
        the bias) and ``hw = h @ w_h`` (``[batch, 4H]``); returns ``((c', h'), h')``."""
        carry, y, _ = self.update_kept(params, carry, xp, hw)
        return carry, y

    @property
    def hand_written_derivative(self) -> bool:
        """Whether the fused loop differentiates :meth:`update` through
        :meth:`update_backward` (every variant but ``layer_norm``) rather than JAX's
        derivative of it."""
        return not self.layer_norm

    def update_kept(self, params: Params, carry, xp: Array, hw: Array):
        """``(carry, y, kept)``: :meth:`update`'s results and what :meth:`update_backward`
        reads, the previous cell state and the gate activations ``(c, (i, f, g, o))``
        (``[batch, H]`` each; ``o`` after the output gate's peephole)."""
        c_prev = carry[0]
        c = c_prev
        dt = self._dt()
        if self.layer_norm:
            hw = layer_norm(hw, params["g_h"])
        zi, zf, zg, zo = (
            x + r for x, r in zip(gate_blocks(xp, 4), gate_blocks(hw, 4), strict=True)
        )
        if self.forget_bias:
            zf = zf + self.forget_bias
        if self.peepholes:
            zi = zi + params["w_ci"].astype(c.dtype) * c
            zf = zf + params["w_cf"].astype(c.dtype) * c
        i, f, g = jax.nn.sigmoid(zi), jax.nn.sigmoid(zf), jnp.tanh(zg)
        c, _ = self._cell_state(c_prev, i, f, g)
        if self.peepholes:
            zo = zo + params["w_co"].astype(c.dtype) * c
        shown = layer_norm(c, params["g_c"], params["b_c"]) if self.layer_norm else c
        o = jax.nn.sigmoid(zo)
        h = o * jnp.tanh(shown)
        if self.proj_size:
            h = matmul(h, params["w_hr"], dt)
            if self.proj_clip is not None:
                h = jnp.clip(h, -self.proj_clip, self.proj_clip)
        return (c, h), h, (c_prev, i, f, g, o)

    def _cell_state(self, c_prev, i, f, g):
        """``(c, inside)``: the new cell state and where the clip left it unchanged (``None``
        without a clip)."""
        c = f * c_prev + i * g
        if self.cell_clip is None:
            return c, None
        return jnp.clip(c, -self.cell_clip, self.cell_clip), jnp.abs(c) < self.cell_clip

    def update_backward(self, params: Params, kept, h_prev, y: Array, d_carry, d_y: Array):
        """The derivative of :meth:`update` (not ``layer_norm``) written out, from what
        :meth:`update_kept` kept and the output ``y`` (``h_prev`` is not read): ``(d_carry,
        d_xp, d_hw, d_params)``, the cotangents of the carry (its ``h`` enters only ``hw``),
        of ``xp`` and ``hw`` (``[batch, 4H]``, the same array) and of the parameters
        :meth:`~jaxrnn.cells._base.CellBase.update_params` names, summed over the batch. One
        ``tanh`` recomputed, no sigmoid."""
        del h_prev
        c_prev, i, f, g, o = kept
        d_c, d_h = d_carry
        dt = self._dt()
        c, inside = self._cell_state(c_prev, i, f, g)
        tanh_c = jnp.tanh(c)
        d_r = d_h + d_y  # h is both the output and the next step's state
        d_params = {}
        if self.proj_size:
            if self.proj_clip is not None:
                d_r = jnp.where(jnp.abs(y) < self.proj_clip, d_r, jnp.zeros_like(d_r))
            w_hr = params["w_hr"].astype(dt)
            d_m = matmul(d_r, w_hr.T, dt)
            d_params["w_hr"] = matmul((o * tanh_c).T, d_r, dt)
        else:
            d_m = d_r
        d_o = d_m * tanh_c * o * (1.0 - o)
        d_c_all = d_c + d_m * o * (1.0 - tanh_c * tanh_c)
        if self.peepholes:
            w_ci, w_cf, w_co = (params[k].astype(c.dtype) for k in ("w_ci", "w_cf", "w_co"))
            d_c_all = d_c_all + d_o * w_co
        if inside is not None:
            d_c_all = jnp.where(inside, d_c_all, jnp.zeros_like(d_c_all))
        d_i = d_c_all * g * i * (1.0 - i)
        d_f = d_c_all * c_prev * f * (1.0 - f)
        d_g = d_c_all * i * (1.0 - g * g)
        d_c_prev = d_c_all * f
        if self.peepholes:
            d_c_prev = d_c_prev + d_i * w_ci + d_f * w_cf
            d_params["w_ci"] = (d_i * c_prev).sum(0)
            d_params["w_cf"] = (d_f * c_prev).sum(0)
            d_params["w_co"] = (d_o * c).sum(0)
        d_z = (d_i, d_f, d_g, d_o)
        return (d_c_prev, jnp.zeros_like(d_h)), d_z, d_z, d_params


# ------------------------------------------------------------------------------------------
# The CPU kernels (``jaxrnn._native`` loads them).


def forward_kernel(cell, inputs: _loops.LoopInputs, *, reverse: bool, time_major: bool, keep):
    """``(ys, (c, h), kept)``: the LSTM over ``xw + bias`` (``xw``: the input projection,
    ``[T, B, 4H]`` or ``[B, T, 4H]``, gates ``i, f, g, o``; ``bias``: ``[4H]``) from
    ``carry0``, the state zeroed before the steps where ``resets`` (``[T, B]`` bool, or None)
    is True; ``ys`` ``[T, B, H]``; ``kept``: the cell states before each step and the gate
    activations (:func:`jaxrnn._native.pack_kept`), or, with ``keep=False`` (nothing will
    differentiate the call), an empty array, unwritten."""
    w_h, xw, bias, _, valid, resets, (c0, h0) = inputs
    assert not isinstance(xw, tuple)  # the kernels read the projection as laid out
    steps, batch = xw.shape[:2] if time_major else xw.shape[1::-1]
    valid = _native.mask(valid, steps, batch)
    hidden = c0.shape[1]
    state = (batch, hidden)
    kept_size = steps * batch * 5 * hidden if keep else 0
    call = jax.ffi.ffi_call(
        "jaxrnn_lstm_forward",
        _native.outputs((steps, batch, hidden), state, state, (kept_size,)),
        vmap_method="sequential",
    )
    ys, c, h, kept = call(
        xw,
        bias,
        w_h,
        c0,
        h0,
        valid,
        _native.reset_mask(resets),
        forget_bias=np.float32(cell.forget_bias),
        reverse=np.int32(reverse),
        time_major=np.int32(time_major),
    )
    return ys, (c, h), kept


def backward_kernel(cell, w_h, inner, inputs: _loops.BackwardInputs, *, reverse, time_major):
    """``(d_z, (d_c0, d_h0), d_w_h, {}, d_w_i, d_b)``: the cotangents of the LSTM's
    pre-activations (``[T, B, 4H]``), of its initial state and of its weights, given those of
    its outputs and final state, what the forward pass kept, its outputs ``ys``, initial
    ``h0`` and inputs ``xs`` (``[T, B, F]`` or ``[B, T, F]``: ``d_w_i = sum xs^T d_z``, ``d_b
    = sum d_z``); no cotangent passes through the steps where ``resets`` (``[T, B]`` bool, or
    None) is True."""
    del cell, inner
    kept, valid, d_ys, (d_c, d_h), ys, h0, xs, resets = inputs
    steps, batch, hidden = ys.shape
    state = (batch, hidden)
    call = jax.ffi.ffi_call(
        "jaxrnn_lstm_backward",
        _native.outputs(
            (steps, batch, 4 * hidden),
            state,
            state,
            w_h.shape,
            (xs.shape[2], 4 * hidden),
            (4 * hidden,),
        ),
        vmap_method="sequential",
    )
    valid = _native.mask(valid, *ys.shape[:2])
    args = (w_h, kept, valid, _native.reset_mask(resets), d_ys, d_c, d_h, ys, h0, xs)
    options = {"reverse": np.int32(reverse), "time_major": np.int32(time_major)}
    d_z, d_c0, d_h0, d_w_h, d_w_i, d_b = call(*args, **options)
    return d_z, (d_c0, d_h0), d_w_h, {}, d_w_i, d_b


KERNELS = _loops.Kernels(forward_kernel, backward_kernel, kept=5)
