"""GRU: the cell, its fused XLA loop (``reset_after=True``) with its hand-written backward
pass, and the binding of its CPU kernels (``csrc/gru.cc``)."""

from __future__ import annotations

import dataclasses

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
    accumulation_dtype,
    check_hidden_size,
    gate_blocks,
    init_weights,
    layer_norm,
    matmul,
)


@registry.register(
    "gru",
    kernels={
        "jaxrnn_gru_forward": "JaxrnnGruForward",
        "jaxrnn_gru_backward": "JaxrnnGruBackward",
    },
)
@dataclasses.dataclass(frozen=True)
class GRU(CellBase):
    """Gated recurrent unit; gate blocks in the order r (reset), z (update), n (candidate).

    With ``xi = x @ w_i + b``:

    * ``reset_after=True`` (cuDNN, PyTorch and Keras' default), ``hh = h @ w_h + b_h``:
      ``r = sigmoid(xi_r + hh_r)``, ``z = sigmoid(xi_z + hh_z)``, ``n = tanh(xi_n + r * hh_n)``.
    * ``reset_after=False`` (Cho et al., 2014): ``r, z`` as above without ``b_h``, and
      ``n = tanh(xi_n + (r * h) @ w_h_n)``.

    Then ``h' = (1 - z) * n + z * h``. Carry: ``h``, ``[batch, hidden_size]``; output ``h'``.

    ``layer_norm=True`` (keyword-only): layer normalization (Ba, Kiros & Hinton 2016) of the
    input and of the recurrent pre-activations, separately, as the paper's LSTM (eq. 20):
    ``xi = LN(x @ w_i; g_i) + b`` over all ``3H`` and, with ``reset_after=True``, ``hh =
    LN(h @ w_h; g_h) + b_h`` over all ``3H``; with ``reset_after=False``, ``LN(h @ w_h_rz;
    g_h_rz)`` over the ``2H`` of ``r, z`` and ``n = tanh(xi_n + LN((r * h) @ w_h_n; g_h_n))``.
    ``LN(a; g) = g * (a - mean(a)) / sqrt(var(a) + 1e-5)``; ``b`` and ``b_h`` are the
    normalizations' shifts. Extra parameters ``g_i, g_h [3H]`` (initially one). A normalized
    vector that stays exactly constant (all-zero inputs and state) has a derivative of ``1 /
    sqrt(1e-5)`` per step: see :class:`jaxrnn.LSTM`. It runs as
    ``lax.scan`` (``implementation="scan"``): only the plain ``reset_after=True`` cell has a
    fused loop. ``dtype``/``param_dtype``: see :mod:`jaxrnn.cells`.
    """

    hidden_size: int
    reset_after: bool = True
    layer_norm: bool = dataclasses.field(default=False, kw_only=True)
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 3
    accepts_gate_blocks = True

    def __post_init__(self):
        check_hidden_size(self)
        if not isinstance(self.reset_after, bool):
            raise TypeError(f"GRU: reset_after must be a bool, got {self.reset_after!r}")
        if not isinstance(self.layer_norm, bool):
            raise TypeError(f"GRU: layer_norm must be a bool, got {self.layer_norm!r}")
        self._check_dtypes()

    def fused_loop(self):
        return scan if self.reset_after and not self.layer_norm else None

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        shapes = super().param_shapes(input_size)
        if self.layer_norm:
            shapes.update(g_i=(3 * self.hidden_size,), g_h=(3 * self.hidden_size,))
        return shapes

    def init(self, key, input_size: int, dtype: DType = None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``)."""
        params = init_weights(
            key, input_size, self.hidden_size, 3, self.param_dtype if dtype is None else dtype
        )
        if self.reset_after:
            params["b_h"] = jnp.zeros_like(params["b"])
        if self.layer_norm:
            params.update(g_i=jnp.ones_like(params["b"]), g_h=jnp.ones_like(params["b"]))
        return params

    def project_inputs(self, params: Params, x: Array) -> Array:
        acc = accumulation_dtype(self._dt())
        xw = matmul(x, params["w_i"], self._dt())
        if self.layer_norm:
            xw = layer_norm(xw, params["g_i"])
        return xw + params["b"].astype(acc)

    def recurrent(self, params: Params, h: Array) -> Array:
        """``h @ w_h`` (``[batch, 3H]``); with ``reset_after=False`` only the ``r, z`` blocks
        (``[batch, 2H]``): ``n``'s matmul reads ``r * h`` (:meth:`update`)."""
        w_h = params["w_h"] if self.reset_after else params["w_h"][:, : 2 * self.hidden_size]
        return matmul(h, w_h, self._dt())

    def update_params(self, params: Params) -> Params:
        """As the other cells', and ``b_h`` (:meth:`update` adds it to ``hw``)."""
        inner = super().update_params(params)
        return inner | {"b_h": params["b_h"]} if "b_h" in params else inner

    def masked_step(self, params: Params, carry: Array, xp: Array, mask: Array):
        # The mask reaches the matmuls only: z * h interpolates with the unmasked state.
        h = carry * mask.astype(carry.dtype)
        return self.update(params, carry, xp, self.recurrent(params, h), recurrent=h)

    def update(
        self, params: Params, carry: Array, xp: Array, hw: Array, recurrent: Array | None = None
    ):
        """``(h', h')`` from ``xp`` (``[batch, 3H]``, the projected input with ``b``) and ``hw``
        (:meth:`recurrent`); ``recurrent``: the ``h`` that enters ``n``'s matmul with
        ``reset_after=False`` (default ``carry``)."""
        h = carry if recurrent is None else recurrent
        w_h, dt = params["w_h"], self._dt()
        size = self.hidden_size

        def norm(a, cols):
            return layer_norm(a, params["g_h"][cols]) if self.layer_norm else a

        xr, xz, xn = gate_blocks(xp, 3)
        if self.reset_after:
            b_h = params["b_h"].astype(accumulation_dtype(dt))
            hh = norm(hw, slice(None)) + b_h
            hr, hz, hn = jnp.split(hh, 3, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
        else:
            rz = norm(hw, slice(0, 2 * size))
            hr, hz = jnp.split(rz, 2, axis=-1)
            r = jax.nn.sigmoid(xr + hr)
            z = jax.nn.sigmoid(xz + hz)
            hn = norm(matmul(r * h, w_h[:, 2 * size :], dt), slice(2 * size, None))
            n = jnp.tanh(xn + hn)
        h = (1.0 - z) * n + z * carry
        return h, h


# ------------------------------------------------------------------------------------------
# GRU (reset_after=True): r, z, n and the recurrent pre-activation hh_n are kept.


def forward_xla(w_h, xp, b, b_h, valid, h0, resets=None, *, backwards, time_major, unroll):
    xp = _loops.per_gate(xp, 3, time_major)
    b, b_h = _loops.split_gates(b, 3), _loops.split_gates(b_h, 3)

    def body(h, inputs):
        xp_t, valid_t, reset_after_t = inputs
        hh = _loops.split_gates(matmul(h, w_h, w_h.dtype), 3)
        hr, hz, hn = (a + c for a, c in zip(hh, b_h, strict=True))
        r = jax.nn.sigmoid(xp_t[0] + b[0] + hr)
        z = jax.nn.sigmoid(xp_t[1] + b[1] + hz)
        n = jnp.tanh(xp_t[2] + b[2] + r * hn)
        new = (1.0 - z) * n + z * h
        y = new
        if valid_t is not None:
            keep = valid_t[:, None]
            new, y = jnp.where(keep, new, h), jnp.where(keep, y, jnp.zeros_like(y))
        # The next step starts from zeros where it resets.
        return _loops.zero_where(reset_after_t, new)[0], (y, (r, z, n, hn))

    after, (h0,) = _loops.resets_after(backwards, resets, (h0,))
    inputs = (xp, valid, after)
    h, (ys, kept) = jax.lax.scan(body, h0, inputs, reverse=backwards, unroll=unroll)
    return ys, h, kept


def backward_xla(w_h, saved: _loops.BackwardInputs, *, backwards, unroll, time_major):
    kept, valid, d_ys, (d_h,), ys, h0, xs, resets = saved
    w_h_t, dtype = w_h.T, w_h.dtype

    def body(d_h, inputs):
        h_prev, (r, z, n, hn), valid_t, reset_t, d_y = inputs
        g = d_h + d_y
        d_an = g * (1.0 - z) * (1.0 - n * n)
        d_az = g * (h_prev - n) * z * (1.0 - z)
        d_ar = d_an * hn * r * (1.0 - r)
        d_xp = jnp.concatenate([d_ar, d_az, d_an], axis=-1)
        d_hh = jnp.concatenate([d_ar, d_az, d_an * r], axis=-1)
        if valid_t is not None:
            # A padded step copied the carry: its cotangent passes through unchanged.
            keep = valid_t[:, None]
            d_xp = jnp.where(keep, d_xp, jnp.zeros_like(d_xp))
            d_hh = jnp.where(keep, d_hh, jnp.zeros_like(d_hh))
            d_h_prev = jnp.where(keep, g * z + matmul(d_hh, w_h_t, dtype), d_h)
        else:
            d_h_prev = g * z + matmul(d_hh, w_h_t, dtype)
        # No cotangent passes through a reset to the earlier carry.
        return _loops.zero_where(reset_t, d_h_prev)[0], (d_xp, d_hh)

    h_prev = _loops.states_before(backwards, h0, ys, resets)
    d_h0, (d_xp, d_hh) = jax.lax.scan(
        body, d_h, (h_prev, kept, valid, resets, d_ys), reverse=not backwards, unroll=unroll
    )
    d_w_h = _loops.recurrent_weight_gradient(backwards, h0, ys, d_hh, dtype, h_prev=h_prev)
    d_w_i, d_b = _loops.input_weight_gradient(xs, d_xp, time_major, dtype)
    return d_xp, d_h0, d_w_h, d_hh.sum(axis=(0, 1)), d_w_i, d_b


# ------------------------------------------------------------------------------------------
# The CPU kernels (``jaxrnn._native`` loads them).


def forward_kernel(
    w_h, xp, b, b_h, valid, h0, resets=None, *, reverse: bool, time_major: bool, keep=True
):
    """``(ys, h, kept)``: the GRU (``reset_after=True``) over ``xp + b`` (``[T, B, 3H]`` or
    ``[B, T, 3H]``, gates ``r, z, n``) from ``h0``, ``b_h`` the recurrent bias, the state
    zeroed before the steps where ``resets`` (``[T, B]`` bool, or None) is True; ``kept``: ``r, z,
    n`` and ``hh_n`` of every step (:func:`jaxrnn._native.pack_kept`), or empty with
    ``keep=False``."""
    steps, batch = valid.shape
    hidden = w_h.shape[0]
    kept_size = steps * batch * 4 * hidden if keep else 0
    call = jax.ffi.ffi_call(
        "jaxrnn_gru_forward",
        _native.outputs((steps, batch, hidden), (batch, hidden), (kept_size,)),
        vmap_method="sequential",
    )
    options = {"reverse": np.int32(reverse), "time_major": np.int32(time_major)}
    ys, h, kept = call(xp, b, w_h, b_h, h0, valid, _native.reset_mask(resets), **options)
    return ys, h, kept


def backward_kernel(w_h, saved: _loops.BackwardInputs, *, reverse: bool, time_major: bool):
    """``(d_xp, d_h0, d_w_h, d_b_h, d_w_i, d_b)``: the cotangents of the GRU's input
    pre-activations (``[T, B, 3H]``), initial state and weights (as
    :func:`jaxrnn.cells.lstm.backward_kernel`)."""
    kept, valid, d_ys, (d_h,), ys, h0, xs, resets = saved
    steps, batch, hidden = ys.shape
    call = jax.ffi.ffi_call(
        "jaxrnn_gru_backward",
        _native.outputs(
            (steps, batch, 3 * hidden),
            (batch, hidden),
            w_h.shape,
            (3 * hidden,),
            (xs.shape[2], 3 * hidden),
            (3 * hidden,),
        ),
        vmap_method="sequential",
    )
    args = (w_h, kept, valid, _native.reset_mask(resets), d_ys, d_h, ys, h0, xs)
    return tuple(call(*args, reverse=np.int32(reverse), time_major=np.int32(time_major)))


scan = _loops.CellLoops(
    forward_xla,
    backward_xla,
    forward_kernel,
    backward_kernel,
    gates=3,
    kept=4,
    recurrent_bias=True,
).scan()
