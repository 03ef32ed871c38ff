"""RG-LRU: the real-gated linear recurrent unit of Griffin (De et al. 2024), the recurrence
of RecurrentGemma, as a :class:`jaxrnn.cells.linear.LinearCell`."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxrnn.cells import registry
from jaxrnn.cells._base import (
    Array,
    DType,
    Params,
    accumulation_dtype,
    check_floating,
    check_hidden_size,
    matmul,
)
from jaxrnn.cells.linear import LinearCell

_glorot = jax.nn.initializers.glorot_uniform()


@registry.register("rglru")
@dataclasses.dataclass(frozen=True)
class RGLRU(LinearCell):
    """The RG-LRU: with ``x~`` the input (``x @ w_x`` where the input size differs from
    ``hidden_size``),

    * recurrence gate ``r = sigmoid(x @ w_i[:, :H] + b[:H])``, input gate ``i =
      sigmoid(x @ w_i[:, H:] + b[H:])``;
    * ``a = sigmoid(a_param)`` per unit, and per step ``a_t = a ** (c * r)`` (``c`` = 8),
      computed as ``log a_t = -c * r * softplus(-a_param)``;
    * ``h' = a_t * h + sqrt(1 - a_t ** 2) * (i * x~)``; the output is ``h'``.

    Parameters (``I`` input size, ``H`` hidden size): ``w_i [I, 2H]`` and ``b [2H]``, columns
    ``[r | i]``; ``a_param [H]``; and ``w_x [I, H]`` where ``I != H``. ``init`` draws
    ``w_i`` and ``w_x`` Glorot-uniform, ``b`` zeros, and ``a_param`` so that ``a ** c`` is
    uniform in ``[a_min, a_max]`` (the paper's 0.9 and 0.999: the state's decay per step
    with the gate fully open). Carry: ``h`` ``[batch, H]``, zeros unless an initial carry is
    given. ``dtype``/``param_dtype``: see :mod:`jaxrnn.cells`.
    """

    hidden_size: int
    c: float = 8.0
    a_min: float = 0.9
    a_max: float = 0.999
    dtype: DType = dataclasses.field(default=None, kw_only=True)
    param_dtype: DType = dataclasses.field(default=jnp.float32, kw_only=True)
    gates = 3  # the projected input: [r | i | x~]

    def __post_init__(self):
        check_hidden_size(self)
        self._check_dtypes()
        if not (isinstance(self.c, int | float) and self.c > 0):
            raise ValueError(f"RGLRU: c must be a positive number, got {self.c!r}")
        if not (0.0 < self.a_min <= self.a_max < 1.0):
            raise ValueError(
                f"RGLRU: need 0 < a_min <= a_max < 1, got a_min={self.a_min!r}, "
                f"a_max={self.a_max!r}"
            )

    def param_shapes(self, input_size: int) -> dict[str, tuple[int, ...]]:
        """``w_i [I, 2H]``, ``a_param [H]``, and ``w_x [I, H]`` where ``I != H``."""
        shapes = {"w_i": (input_size, 2 * self.hidden_size), "a_param": (self.hidden_size,)}
        if input_size != self.hidden_size:
            shapes["w_x"] = (input_size, self.hidden_size)
        return shapes

    def init(self, key, input_size: int, dtype=None) -> Params:
        """Parameters in ``dtype`` (default ``param_dtype``); see the class docstring."""
        dtype = self.param_dtype if dtype is None else dtype
        check_floating(dtype, "dtype")
        if not isinstance(input_size, int) or input_size <= 0:
            raise ValueError(f"input_size must be a positive int, got {input_size!r}")
        hidden = self.hidden_size
        k_i, k_a, k_x = jax.random.split(key, 3)
        wide = jnp.promote_types(dtype, jnp.float32)
        a_c = jax.random.uniform(k_a, (hidden,), wide, self.a_min, self.a_max)
        log_a = jnp.log(a_c) / self.c  # a = (a ** c) ** (1 / c)
        params = {
            "w_i": _glorot(k_i, (input_size, 2 * hidden), wide).astype(dtype),
            "b": jnp.zeros((2 * hidden,), dtype),
            "a_param": (log_a - jnp.log(-jnp.expm1(log_a))).astype(dtype),  # logit(a)
        }
        if input_size != hidden:
            params["w_x"] = _glorot(k_x, (input_size, hidden), wide).astype(dtype)
        return params

    kernel = "rglru"

    def update_params(self, params: Params) -> Params:
        return {"a_param": params["a_param"]}

    def kernel_unit(self, update_params: Params) -> Array:
        """``c * softplus(-a_param)`` (float32 ``[H]``): ``log a_t = -r * kernel_unit``."""
        a_param = update_params["a_param"].astype(jnp.float32)
        return self.c * jax.nn.softplus(-a_param)

    def kernel_projection(self, params: Params) -> tuple[Array, Array] | None:
        """``[w_i | w_x]`` (``[w_i | identity]`` without ``w_x``) and ``[b | 0]``: the
        projection as one matmul."""
        if set(params) - {"w_x"} != {"w_i", "b", "a_param"}:
            return None
        w_i, b = params["w_i"], params["b"]
        w_x = params.get("w_x")
        if w_x is None:
            w_x = jnp.eye(w_i.shape[0], dtype=w_i.dtype)
        zeros = jnp.zeros((self.hidden_size,), b.dtype)
        return jnp.concatenate([w_i, w_x], axis=1), jnp.concatenate([b, zeros])

    def project_inputs(self, params: Params, x: Array) -> Array:
        """``[r-logits | i-logits | x~]``, ``[..., 3 * hidden_size]`` in the accumulation
        dtype."""
        dtype = self._dt()
        gates = matmul(x, params["w_i"], dtype) + params["b"].astype(accumulation_dtype(dtype))
        if "w_x" in params:
            x_in = matmul(x, params["w_x"], dtype)
        else:
            x_in = x.astype(dtype).astype(gates.dtype)
        return jnp.concatenate([gates, x_in], axis=-1)

    def coefficients(self, params: Params, xp: Array) -> tuple[Array, Array]:
        """``(a_t, sqrt(1 - a_t ** 2) * i * x~)``."""
        hidden = self.hidden_size
        r = jax.nn.sigmoid(xp[..., :hidden])
        i = jax.nn.sigmoid(xp[..., hidden : 2 * hidden])
        x_in = xp[..., 2 * hidden :]
        log_a = -self.c * r * jax.nn.softplus(-params["a_param"].astype(xp.dtype))
        a_t = jnp.exp(log_a)
        # 1 - a_t ** 2 = -expm1(2 log a_t), kept off zero where a_t rounds to 1.
        scale = jnp.sqrt(jnp.maximum(-jnp.expm1(2.0 * log_a), jnp.finfo(xp.dtype).tiny))
        return a_t, scale * (i * x_in)
