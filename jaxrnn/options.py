"""How a recurrent layer is asked to run: one frozen value that the drivers, the layers,
``tbptt`` and the NNX modules hand down instead of separate arguments."""

from __future__ import annotations

import dataclasses

from jaxrnn import _checks

IMPLEMENTATIONS = (None, "scan", "fused", "kernel", "pallas", "parallel")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """The options of :func:`jaxrnn.rnn` and its relatives, checked when made (hashable, so
    that it can be a static argument or a module's attribute).

    Attributes:
      reverse: run each sequence (its valid prefix, where lengths are given) from its last
        step to its first; outputs are written back at their original time positions.
      unroll: ``lax.scan``'s steps per loop iteration, a positive int or a bool (``True``:
        every step). The CPU kernels have none (see :func:`jaxrnn.plan.plan`).
      time_major: ``xs`` and ``ys`` are ``[time, batch, features]`` rather than ``[batch,
        time, features]``; resets ``[time, batch]`` rather than ``[batch, time]``.
      remat: memory of the backward pass: ``False``, ``True`` (each step recomputed) or a
        positive int ``k`` (blocks of ``k`` steps recomputed); see :func:`jaxrnn.rnn`.
      implementation: ``None`` (choose), ``"scan"``, ``"fused"``, ``"kernel"``, ``"pallas"``
        or ``"parallel"``; the rules are :func:`jaxrnn.plan.plan`'s.
      static: loop over time in Python (:func:`jaxrnn.static_rnn`) rather than with
        ``lax.scan``; it is its own implementation, so ``implementation`` must be ``None``.

    Raises:
      ValueError: an ``unroll``, ``remat`` or ``implementation`` outside the values above, or
        an ``implementation`` with ``static``.
    """

    reverse: bool = False
    unroll: int | bool = 1
    time_major: bool = False
    remat: bool | int = False
    implementation: str | None = None
    static: bool = False

    def __post_init__(self):
        _checks.check_unroll(self.unroll)
        remat = self.remat
        if remat is not True and remat is not False:
            if not isinstance(remat, int) or isinstance(remat, bool) or remat < 1:
                raise ValueError(f"remat must be False, True or a positive int, got {remat!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"implementation must be one of {IMPLEMENTATIONS}, got {self.implementation!r}"
            )
        if self.static and self.implementation is not None:
            raise ValueError(
                f"static_rnn is its own implementation; got implementation={self.implementation!r}"
            )

    def replace(self, **changes) -> RunOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)
