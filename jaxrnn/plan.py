"""How a call of :func:`jaxrnn.rnn` (or ``static_rnn``, a layer, ``tbptt``, an NNX module)
runs: :func:`plan` decides it once, in Python before anything is traced, from the cell, the
:class:`~jaxrnn.options.RunOptions` and which optional inputs are given; the drivers execute
the :class:`Plan` it returns."""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from jaxrnn import _native
from jaxrnn.cells import Cell, _loops
from jaxrnn.cells.linear import is_linear
from jaxrnn.options import IMPLEMENTATIONS, RunOptions

__all__ = ["IMPLEMENTATIONS", "Plan", "has_fused_path", "plan"]

Path = Literal["scan", "static", "fused", "kernel", "pallas", "parallel"]


def has_fused_path(cell: Cell) -> bool:
    """Whether ``cell`` has a fused loop (``implementation="fused"`` or ``"kernel"``)."""
    return cell.fused_loop() is not None


def _is_one(unroll) -> bool:
    return unroll is False or (not isinstance(unroll, bool) and unroll == 1)


def _narrow(dtype) -> bool:
    return jnp.dtype(dtype).itemsize < 4


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one layer's loop runs (what :func:`plan` returns).

    Attributes:
      path: ``"scan"`` (``lax.scan`` of the cell's step, differentiated by JAX), ``"static"``
        (a Python loop over the steps), ``"fused"`` (the cell's fused XLA loop with its
        hand-written backward pass), ``"kernel"`` (that loop as jaxrnn's CPU kernels),
        ``"pallas"`` (its two time loops as Pallas kernels) or ``"parallel"`` (a linear
        recurrence solved over all steps at once, :func:`jaxrnn.cells.linear.parallel`).
      dtype: the computation dtype (the cell's; ``ys`` come out in it).
      loop_dtype: the dtype the loop computes in: ``dtype``, or float32 where the kernels
        run a bfloat16 or float16 computation.
      round_to: where not ``None``, the inputs and the weights (``w_*``) are rounded to this
        dtype before the float32 loop, and the outputs after it (the derivative of the
        rounding is the identity).
      time_major: the layout of ``xs`` and ``ys``.
      backwards: the loop visits the steps from the last to the first (``reverse`` without
        lengths).
      reverse_data: each sequence's valid prefix is reversed before the loop and the outputs
        after it (``reverse`` with lengths), so that the loop runs forwards.
      unroll: ``lax.scan``'s unroll factor (``"scan"``, ``"fused"``).
      remat: the backward pass's memory mode (``"scan"``; ``False`` elsewhere).
      resets: ``None`` (no resets), ``"loop"`` (the fused loop, the kernels or the parallel
        path take the per-step flags in the order they visit the steps) or ``"step"`` (the
        driver zeroes the carry that each step before a reset hands on).
      loop: the fused loop's :class:`jaxrnn.cells._loops.Loop` (``native`` True for
        ``"kernel"``), ``None`` for the other paths.
      method: how ``"parallel"`` solves the recurrence (``"kernel"``, ``"chunked"`` or
        ``"associative"``: :mod:`jaxrnn.cells.linear_scan`), ``None`` for the other paths.
    """

    path: Path
    dtype: jnp.dtype
    loop_dtype: jnp.dtype
    round_to: jnp.dtype | None
    time_major: bool
    backwards: bool
    reverse_data: bool
    unroll: int | bool
    remat: bool | int
    resets: Literal["loop", "step"] | None
    loop: _loops.Loop | None
    method: str | None = None


def plan(
    cell: Cell,
    options: RunOptions | None = None,
    *,
    lengths: bool = False,
    resets: bool = False,
    recurrent_dropout: bool = False,
) -> Plan:
    """Decide how ``cell`` runs over a sequence under ``options``.

    Args:
      cell: the cell, with its computation dtype set (``cell.resolve(params, xs.dtype)``; a
        ``dtype`` of ``None`` is planned as float32).
      options: the call's :class:`~jaxrnn.options.RunOptions` (default: the defaults).
      lengths: whether the call has ``lengths``.
      resets: whether the call has ``resets``.
      recurrent_dropout: whether a recurrent dropout mask multiplies ``h`` at every step.

    Returns:
      The :class:`Plan`.

    Raises:
      ValueError: an explicit ``implementation`` that cannot run, naming every reason.

    ``implementation`` chooses the path (the numbers agree to rounding whichever runs):

    * ``"scan"``: a plain ``lax.scan`` of the cell's step, differentiated by JAX. Every JAX
      transformation applies, forward-mode (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``)
      included.
    * ``"fused"`` (``SimpleRNN``, ``LSTM`` with any options but ``layer_norm``,
      ``GRU(reset_after=True)``): the input half of every step is one matmul over all steps
      before the loop, and the backward pass is written by hand (``jax.custom_vjp``): its
      loop holds only the recurrent matmul and the cell's elementwise derivative, and the
      weight gradients are one matmul each after it. Reverse mode only. Not with ``remat``
      or recurrent dropout.
    * ``"kernel"``: the fused path with both loops run as jaxrnn's CPU kernels (the plain
      ``SimpleRNN``, ``LSTM`` and ``GRU(reset_after=True)``; the LSTM's variants have none):
      the whole loop in one call on every core (a large batch's rows, or else each step's
      hidden units, split among them). It needs the kernels built and loaded, ``unroll=1``,
      the default backend a CPU, and a computation dtype of float32, bfloat16 or float16
      (see below). Where the computation is placed on a GPU or TPU the same call runs the
      fused XLA loop. Reverse mode only.
    * ``"pallas"``: the fused path with its two time loops run as Pallas kernels, each pass
      one launch (:mod:`jaxrnn.cells.pallas`; the plain ``SimpleRNN``, ``LSTM`` and
      ``GRU(reset_after=True)``): through Triton on a GPU, Mosaic on a TPU, and Pallas's
      interpreter on a CPU (slow: for tests). Any computation dtype; ``unroll`` does not
      apply. Reverse mode only.
    * ``"parallel"`` (the linear recurrences, :class:`jaxrnn.cells.LinearCell`: ``MinGRU``,
      ``MinLSTM``, ``RGLRU``): every step's coefficients at once, then the recurrence
      ``h = a * h + b`` solved over all steps (:mod:`jaxrnn.cells.linear_scan`): on a CPU by
      jaxrnn's CPU kernel where it is loaded, else by the chunked loop; on a GPU or TPU by
      ``lax.associative_scan``. Lengths, resets, recurrent dropout and the initial carry
      become coefficients, so nothing falls back to a loop over steps. Any computation dtype
      (the recurrence runs in its accumulation dtype). Reverse mode only. Not with
      ``remat``.
    * ``None`` (the default): ``"parallel"`` for a linear recurrence (``"scan"`` with
      ``remat``). For the other cells ``"scan"`` where the fused path does not apply
      (``layer_norm``, ``GRU(reset_after=False)``, ``remat``, recurrent dropout); else
      ``"kernel"`` where it can run with ``unroll=1``, a CPU as the default backend and a
      computation in float32, bfloat16 or float16; else ``"fused"`` (a GPU or TPU, an
      ``unroll`` other than 1, float64, the LSTM's variants, kernels not built).
      ``JAXRNN_NATIVE=0`` in the environment keeps it from choosing the kernels. It does not
      choose ``"pallas"``: no GPU or TPU measurement has shown it faster than ``"fused"`` yet
      (``docs/design/pallas.md``).

    ``static`` (``static_rnn``) plans ``"static"``: its own implementation.

    **bfloat16 and float16 with the kernels**: the kernels compute in float32. A bfloat16 or
    float16 computation, whether ``None`` chose the kernels or ``"kernel"`` asked for them,
    runs them in float32 on its inputs and weights rounded to its dtype (the biases and the
    carry stay in their own dtypes, the carry float32 as always), and its outputs are
    rounded to its dtype; the gradients pass through the rounding unchanged and are summed
    in float32. The two ways of asking give the same values bit for bit. The XLA loops
    (``"fused"``, ``"scan"``) compute in the narrow dtype with float32 accumulation.
    """
    if options is None:
        options = RunOptions()
    dtype = jnp.dtype(jnp.float32 if cell.dtype is None else cell.dtype)
    if options.static:
        path: Path = "static"
    elif is_linear(cell):
        path = _choose_linear(cell, options)
    else:
        path = _choose(cell, options, dtype, recurrent_dropout)
    rounded = path == "kernel" and _narrow(dtype)
    backwards = options.reverse and not lengths
    loop = None
    if path in ("fused", "kernel", "pallas"):
        loop = _loops.Loop(backwards, options.unroll, options.time_major, path == "kernel")
    return Plan(
        path=path,
        dtype=dtype,
        loop_dtype=jnp.dtype(jnp.float32) if rounded else dtype,
        round_to=dtype if rounded else None,
        time_major=options.time_major,
        backwards=backwards,
        reverse_data=options.reverse and lengths,
        unroll=options.unroll,
        remat=options.remat if path == "scan" else False,
        resets=None if not resets else ("step" if path in ("scan", "static") else "loop"),
        loop=loop,
        method=_linear_method(dtype) if path == "parallel" else None,
    )


def _choose_linear(cell: Cell, options: RunOptions) -> Path:
    """The path of a linear recurrence (see :func:`plan`)."""
    implementation = options.implementation
    if implementation == "scan" or (implementation is None and options.remat is not False):
        return "scan"
    blockers = []
    if implementation != "parallel" and implementation is not None:
        blockers.append(f"{cell} has no fused loop (a linear recurrence runs 'parallel')")
    if options.remat is not False:
        blockers.append("remat is set (it applies to 'scan')")
    if blockers:
        raise ValueError(f"implementation={implementation!r} cannot run: " + "; ".join(blockers))
    return "parallel"


def _linear_method(dtype) -> str:
    """How ``"parallel"`` solves ``h = a * h + b`` on the default backend (see :func:`plan`)."""
    if jax.default_backend() != "cpu":
        return "associative"
    wide = jnp.promote_types(dtype, jnp.float32)
    return "kernel" if wide == jnp.float32 and _native.enabled() else "chunked"


def _choose(cell: Cell, options: RunOptions, dtype, recurrent_dropout: bool) -> Path:
    """The path of a ``lax.scan`` call (see :func:`plan`)."""
    implementation = options.implementation
    if implementation == "scan":
        return "scan"
    blockers = []
    if implementation == "parallel":
        blockers.append(f"{cell} is not a linear recurrence (jaxrnn.cells.LinearCell)")
    if not has_fused_path(cell):
        blockers.append(f"{cell} has no fused loop")
    if options.remat is not False:
        blockers.append("remat is set")
    if recurrent_dropout:
        blockers.append("recurrent dropout is on")
    on_cpu = jax.default_backend() == "cpu"
    if implementation is None:
        if blockers:
            return "scan"
        native_ok = on_cpu and (dtype == jnp.float32 or _narrow(dtype))
        kernels = _is_one(options.unroll) and native_ok and cell.has_kernels() and _native.enabled()
        return "kernel" if kernels else "fused"
    if implementation == "kernel":
        if has_fused_path(cell) and not cell.has_kernels():
            blockers.append(f"{cell} has no CPU kernels (its fused loop runs in XLA)")
        if not _is_one(options.unroll):
            blockers.append(
                f"unroll={options.unroll!r} (the kernels have no unroll; it applies to lax.scan)"
            )
        if not (dtype == jnp.float32 or _narrow(dtype)):
            blockers.append(
                f"the computation dtype is {dtype.name}; the kernels compute in float32 "
                "(bfloat16 and float16 run them on rounded values)"
            )
        if not on_cpu:
            blockers.append(f"the default backend is {jax.default_backend()}, not cpu")
        reason = _native.unavailable_reason()
        if reason:
            blockers.append(reason)
    if implementation == "pallas" and has_fused_path(cell):
        from jaxrnn.cells import pallas  # imports Pallas only where asked for

        blockers.extend(pallas.unsupported(cell))
    if blockers:
        raise ValueError(f"implementation={implementation!r} cannot run: " + "; ".join(blockers))
    if implementation == "kernel":
        return "kernel"
    return "pallas" if implementation == "pallas" else "fused"
