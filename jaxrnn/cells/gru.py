"""GRU: the cell, the derivative of its step written out (``reset_after=True``), and the
binding of its CPU kernels (``csrc/gru.cc``)."""

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
        return fused.scan if self.hand_written_derivative else None

    def kernels(self):
        return KERNELS if self.hand_written_derivative else None

    @property
    def hand_written_derivative(self) -> bool:
        """Whether :meth:`update_backward` is its derivative (``reset_after=True``, no
        ``layer_norm``: the cell that has a fused loop and CPU kernels)."""
        return self.reset_after and not self.layer_norm

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

    @property
    def plain_projection(self) -> bool:
        return not self.layer_norm

    def projection(self, params: Params, x: Array) -> Array:
        xw = matmul(x, params["w_i"], self._dt())
        return layer_norm(xw, params["g_i"]) if self.layer_norm else xw

    def bias(self, params: Params) -> Array:
        """``b`` (``b_h`` enters the recurrent pre-activations, :meth:`update`)."""
        return params["b"]

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
        if self.reset_after:
            new, y, _ = self.update_kept(params, carry, xp, hw)
            return new, y
        h = carry if recurrent is None else recurrent
        dt, size = self._dt(), self.hidden_size
        xr, xz, xn = gate_blocks(xp, 3)
        rz = self._norm(params, hw, slice(0, 2 * size))
        hr, hz = jnp.split(rz, 2, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        hn = matmul(r * h, params["w_h"][:, 2 * size :], dt)
        n = jnp.tanh(xn + self._norm(params, hn, slice(2 * size, None)))
        h = (1.0 - z) * n + z * carry
        return h, h

    def _norm(self, params: Params, a: Array, cols: slice) -> Array:
        return layer_norm(a, params["g_h"][cols]) if self.layer_norm else a

    def update_kept(self, params: Params, carry: Array, xp, hw: Array):
        """``(h', h', (r, z, n, hh_n))`` (``reset_after=True``): the gates and the recurrent
        pre-activation of ``n`` with ``b_h`` (``[batch, H]`` each)."""
        xr, xz, xn = gate_blocks(xp, 3)
        if self.layer_norm:
            hw = self._norm(params, hw, slice(None))
        hr, hz, hn = (
            a + b.astype(a.dtype)
            for a, b in zip(gate_blocks(hw, 3), gate_blocks(params["b_h"], 3), strict=True)
        )
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        h = (1.0 - z) * n + z * carry
        return h, h, (r, z, n, hn)

    def update_backward(self, params: Params, kept, h_prev, y, d_carry, d_y):
        """The derivative of :meth:`update` (``reset_after=True``, no ``layer_norm``) written
        out from what :meth:`update_kept` kept and the previous state ``h_prev``: ``(d_h,
        d_xp, d_hw, {"b_h": d_b_h})``, ``d_h`` the cotangent of the state where it enters
        the interpolation (its matmul's is added by the loop), ``d_xp``, ``d_hw`` and
        ``d_b_h`` as the tuples of their gate blocks (``update_kept`` takes ``xp``, ``hw``
        and ``b_h`` as tuples too, which is how the Pallas kernels step unit tiles)."""
        del y
        r, z, n, hn = kept
        g = d_carry + d_y  # h is both the output and the next step's state
        d_an = g * (1.0 - z) * (1.0 - n * n)
        d_az = g * (h_prev - n) * z * (1.0 - z)
        d_ar = d_an * hn * r * (1.0 - r)
        d_hw = (d_ar, d_az, d_an * r)
        return g * z, (d_ar, d_az, d_an), d_hw, {"b_h": tuple(d.sum(axis=0) for d in d_hw)}


# ------------------------------------------------------------------------------------------
# The CPU kernels (``jaxrnn._native`` loads them).


def forward_kernel(cell, inputs: _loops.LoopInputs, *, reverse: bool, time_major: bool, keep):
    """``(ys, h, kept)``: the GRU (``reset_after=True``) over ``xw + bias`` (``[T, B, 3H]`` or
    ``[B, T, 3H]``, gates ``r, z, n``) from ``carry0``, ``inner["b_h"]`` the recurrent bias,
    the state zeroed before the steps where ``resets`` (``[T, B]`` bool, or None) is True;
    ``kept``: ``r, z, n`` and ``hh_n`` of every step (:func:`jaxrnn._native.pack_kept`), or
    empty with ``keep=False``."""
    del cell
    w_h, xw, bias, inner, valid, resets, h0 = inputs
    assert not isinstance(xw, tuple)  # the kernels read the projection as laid out
    steps, batch = xw.shape[:2] if time_major else xw.shape[1::-1]
    valid = _native.mask(valid, steps, batch)
    hidden = h0.shape[1]
    kept_size = steps * batch * 4 * hidden if keep else 0
    call = jax.ffi.ffi_call(
        "jaxrnn_gru_forward",
        _native.outputs((steps, batch, hidden), (batch, hidden), (kept_size,)),
        vmap_method="sequential",
    )
    options = {"reverse": np.int32(reverse), "time_major": np.int32(time_major)}
    args = (xw, bias, w_h, inner["b_h"], h0, valid, _native.reset_mask(resets))
    return tuple(call(*args, **options))


def backward_kernel(cell, w_h, inner, inputs: _loops.BackwardInputs, *, reverse, time_major):
    """``(d_xp, d_h0, d_w_h, {"b_h": d_b_h}, d_w_i, d_b)``: the cotangents of the GRU's input
    pre-activations (``[T, B, 3H]``), initial state and weights (as
    :func:`jaxrnn.cells.lstm.backward_kernel`)."""
    del cell, inner
    kept, valid, d_ys, d_h, ys, h0, xs, resets = inputs
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
    valid = _native.mask(valid, *ys.shape[:2])
    args = (w_h, kept, valid, _native.reset_mask(resets), d_ys, d_h, ys, h0, xs)
    options = {"reverse": np.int32(reverse), "time_major": np.int32(time_major)}
    d_xp, d_h0, d_w_h, d_b_h, d_w_i, d_b = call(*args, **options)
    return d_xp, d_h0, d_w_h, {"b_h": d_b_h}, d_w_i, d_b


KERNELS = _loops.Kernels(forward_kernel, backward_kernel, kept=4)
