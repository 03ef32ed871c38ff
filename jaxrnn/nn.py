"""Flax NNX modules over the same pure core, to drop jaxrnn layers into a Flax model.

Why NNX rather than linen: NNX is Flax's recommended API since 0.11; its modules are plain
Python objects that hold their parameters, which maps one-to-one onto jaxrnn's "cell
hyperparameters + params pytree" split (a module is a cell plus its params held as
``nnx.Param``), and ``flax.nnx.bridge`` exposes NNX modules to linen code when needed.

Each module stores exactly the pytree that the functional API takes (``cell.init``'s dict, a
pair for bidirectional, a list for stacks), so ``module.params()`` can be passed to
``jaxrnn.rnn`` & co. and weights converted with ``jaxrnn.interop`` apply unchanged.

Precision is the cells' (``dtype``, ``param_dtype``: :mod:`jaxrnn.cells`); a module's ``dtype``
and ``param_dtype`` arguments, where given, replace those of every cell it holds, as in
``flax.nnx.Linear``. A module's ``reverse``, ``unroll``, ``time_major`` and
``implementation`` are held as one :class:`jaxrnn.options.RunOptions` (``module.options``),
handed to the functional core as :func:`jaxrnn.rnn` takes them.

Needs the ``nn`` extra: ``pip install "jaxrnn[nn]"``.
"""

from __future__ import annotations

import jax

from jaxrnn import _extras

with _extras.requires("nn", __name__):
    from flax import nnx

from jaxrnn.cells import Cell
from jaxrnn.drivers import drive
from jaxrnn.layers import Stack, drive_bidirectional, drive_stack, stack_with_dtypes, with_dtypes
from jaxrnn.options import RunOptions


def _hold(tree):
    """A params pytree as NNX containers: dicts -> ``nnx.Dict``, sequences -> ``nnx.List``."""
    if isinstance(tree, dict):
        return nnx.Dict({k: _hold(v) for k, v in tree.items()})
    if isinstance(tree, tuple | list):
        return nnx.List([_hold(v) for v in tree])
    return nnx.Param(tree)


def _read(held):
    """Inverse of :func:`_hold`: plain dicts and lists of arrays."""
    if isinstance(held, nnx.Dict):
        return {k: _read(v) for k, v in held.items()}
    if isinstance(held, nnx.List):
        return [_read(v) for v in held]
    return held[...]


class RNN(nnx.Module):
    """One recurrent layer: ``cell`` driven by :func:`jaxrnn.rnn` over ``[batch, time, in]``.

    ``__call__(x, lengths=None, initial_carry=None, *, resets=None)`` returns ``ys``
    ``[batch, time, H]`` (zero past each length), or ``(ys, final_carry)`` with
    ``return_carry=True``; ``resets`` as in :func:`jaxrnn.rnn`.
    """

    def __init__(
        self,
        cell: Cell,
        in_features: int,
        *,
        rngs: nnx.Rngs,
        reverse=False,
        unroll: int | bool = 1,
        time_major=False,
        return_carry=False,
        dtype=None,
        param_dtype=None,
        implementation: str | None = None,
    ):
        cell = with_dtypes(cell, dtype, param_dtype)
        self.cell, self.return_carry = cell, return_carry
        self.options = RunOptions(
            reverse=reverse, unroll=unroll, time_major=time_major, implementation=implementation
        )
        self.weights = _hold(cell.init(rngs.params(), in_features))

    def params(self) -> dict:
        return _read(self.weights)

    def __call__(self, x, lengths=None, initial_carry=None, *, resets=None):
        ys, carry = drive(
            self.cell,
            self.params(),
            x,
            self.options,
            lengths=lengths,
            resets=resets,
            initial_carry=initial_carry,
        )
        return (ys, carry) if self.return_carry else ys


class Bidirectional(nnx.Module):
    """Forward and backward layers merged (:func:`jaxrnn.bidirectional`); ``merge`` as there."""

    def __init__(
        self,
        cell_fw: Cell,
        cell_bw: Cell,
        in_features: int,
        *,
        rngs: nnx.Rngs,
        merge: str | None = "concat",
        unroll: int | bool = 1,
        time_major=False,
        return_carry=False,
        dtype=None,
        param_dtype=None,
        implementation: str | None = None,
    ):
        cell_fw = with_dtypes(cell_fw, dtype, param_dtype)
        cell_bw = with_dtypes(cell_bw, dtype, param_dtype)
        self.cell_fw, self.cell_bw, self.merge = cell_fw, cell_bw, merge
        self.return_carry = return_carry
        self.options = RunOptions(
            unroll=unroll, time_major=time_major, implementation=implementation
        )
        k_fw, k_bw = jax.random.split(rngs.params())
        self.weights = _hold((cell_fw.init(k_fw, in_features), cell_bw.init(k_bw, in_features)))

    def params(self) -> tuple[dict, dict]:
        return tuple(_read(self.weights))

    def __call__(self, x, lengths=None, initial_carry=None, *, resets=None):
        """``ys`` (or ``(ys, (carry_fw, carry_bw))`` with ``return_carry``); ``initial_carry``
        and ``resets`` as in :func:`jaxrnn.bidirectional`."""
        ys, carries = drive_bidirectional(
            self.cell_fw,
            self.cell_bw,
            self.params(),
            x,
            self.options,
            lengths=lengths,
            merge=self.merge,
            resets=resets,
            initial_carry=initial_carry,
        )
        return (ys, carries) if self.return_carry else ys


class Stacked(nnx.Module):
    """A :class:`jaxrnn.Stack` of layers with its dropouts (:func:`jaxrnn.stacked`).

    Dropout is on only when ``__call__`` gets ``rngs`` (it draws from ``rngs.dropout()``).
    """

    def __init__(
        self,
        stack: Stack,
        in_features: int,
        *,
        rngs: nnx.Rngs,
        unroll: int | bool = 1,
        time_major=False,
        return_carry=False,
        dtype=None,
        param_dtype=None,
        implementation: str | None = None,
    ):
        stack = stack_with_dtypes(stack, dtype, param_dtype)
        self.stack, self.return_carry = stack, return_carry
        self.options = RunOptions(
            unroll=unroll, time_major=time_major, implementation=implementation
        )
        self.weights = _hold(stack.init(rngs.params(), in_features))

    def params(self) -> list:
        return _read(self.weights)

    def __call__(
        self,
        x,
        lengths=None,
        initial_carry=None,
        *,
        resets=None,
        rngs: nnx.Rngs | None = None,
    ):
        """``ys``, or ``(ys, carries)`` with ``return_carry`` (one final carry per layer);
        ``initial_carry`` (one per layer) and ``resets`` as in :func:`jaxrnn.stacked`."""
        key = None if rngs is None else rngs.dropout()
        ys, carries = drive_stack(
            self.stack,
            self.params(),
            x,
            self.options,
            lengths=lengths,
            key=key,
            resets=resets,
            initial_carry=initial_carry,
        )
        return (ys, carries) if self.return_carry else ys
