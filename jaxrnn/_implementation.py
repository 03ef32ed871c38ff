"""How :func:`jaxrnn.rnn` computes: its ``implementation`` argument resolved against the
cell, the dtype, ``unroll``, ``remat`` and the platform (the rules are in
:mod:`jaxrnn.drivers`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells import Cell

Array = jax.Array
IMPLEMENTATIONS = (None, "scan", "fused", "kernel")


def has_fused_path(cell: Cell) -> bool:
    """Whether ``cell`` has a fused loop (``implementation="fused"`` or ``"kernel"``)."""
    return cell.fused_loop() is not None


def is_one(unroll) -> bool:
    return unroll is False or (not isinstance(unroll, bool) and unroll == 1)


def narrow(dtype) -> bool:
    return jnp.dtype(dtype).itemsize < 4


def resolve(implementation, cell, dtype, unroll, remat, hidden_mask) -> str:
    """``"scan"``, ``"fused"`` or ``"kernel"`` for ``rnn(implementation=...)`` (see the module
    docstring); an explicit choice that cannot run raises ``ValueError`` naming the reason."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "scan":
        return "scan"
    blockers = []
    if not has_fused_path(cell):
        blockers.append(f"{cell} has no fused loop")
    if remat is not False:
        blockers.append("remat is set")
    if hidden_mask is not None:
        blockers.append("recurrent dropout is on")
    if implementation is None:
        if blockers:
            return "scan"
        on_cpu = jax.default_backend() == "cpu"
        native_ok = dtype == jnp.float32 or (narrow(dtype) and on_cpu)
        kernels = is_one(unroll) and native_ok and cell.has_kernels() and _native.enabled()
        return "kernel" if kernels else "fused"
    if implementation == "kernel":
        if has_fused_path(cell) and not cell.has_kernels():
            blockers.append(f"{cell} has no CPU kernels (its fused loop runs in XLA)")
        if not is_one(unroll):
            blockers.append(
                f"unroll={unroll!r} (the kernels have no unroll; it applies to lax.scan)"
            )
        if dtype != jnp.float32:
            blockers.append(f"the computation dtype is {jnp.dtype(dtype).name}, not float32")
        if jax.default_backend() != "cpu":
            blockers.append(f"the default backend is {jax.default_backend()}, not cpu")
        reason = _native.unavailable_reason()
        if reason:
            blockers.append(reason)
    if blockers:
        raise ValueError(f"implementation={implementation!r} cannot run: " + "; ".join(blockers))
    return implementation


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def round_to(x: Array, dtype) -> Array:
    """``x`` rounded to ``dtype`` and back; its derivative is the identity (so that the
    gradients of a computation run in float32 on rounded values are not rounded again)."""
    return x.astype(dtype).astype(x.dtype)


@round_to.defjvp
def _round_to_jvp(dtype, primals, tangents):
    (x,), (t,) = primals, tangents
    return round_to(x, dtype), t
