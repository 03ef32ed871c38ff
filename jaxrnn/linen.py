"""Flax linen modules over the same pure core, for models written with ``flax.linen``.

``RNN``, ``Bidirectional`` and ``Stacked`` take the options and the call signature of their
NNX counterparts in :mod:`jaxrnn.nn`, the linen way: a module is a dataclass of
hyperparameters (a cell or :class:`jaxrnn.Stack` and the run options, no input size: it is
read from the last axis of the first input), its parameters live in
``variables["params"]``, made by ``module.init(rngs, x, ...)`` and passed to
``module.apply(variables, x, ...)``.

``variables["params"]`` is the pytree that the functional API takes, but that linen's
collections must be dicts:

* ``RNN(cell)``: the dict ``cell.init`` returns (``w_i``, ``w_h``, ``b``, ...), so
  ``jaxrnn.rnn(cell, variables["params"], x, lengths)`` gives what the module gives;
* ``Bidirectional``: ``{"forward": params_fw, "backward": params_bw}``;
  :func:`jaxrnn.bidirectional` takes ``(p["forward"], p["backward"])``;
* ``Stacked``: ``{"layer_0": ..., "layer_1": ...}``, a bidirectional layer's entry as
  ``{"forward": ..., "backward": ...}``; :func:`stack_params` makes the list that
  :func:`jaxrnn.stacked` takes, and :func:`stack_param_dict` the way back (to load weights
  that :mod:`jaxrnn.interop` converted).

``module.init`` draws one key, ``k = self.make_rng("params")``, the module's first draw
from its ``params`` stream, and sets the parameters to ``cell.init(k, input_size)`` (for
``Bidirectional``, ``cell_fw.init`` and ``cell_bw.init`` on ``jax.random.split(k)``; for
``Stacked``, ``stack.init(k, input_size)``), as the NNX modules do with ``rngs.params()``.

Dropout (``Stacked`` only, as in NNX) follows linen's convention: it is off unless
``__call__`` gets ``deterministic=False``, and then draws its key with
``self.make_rng("dropout")`` (``module.apply(..., rngs={"dropout": key})``).

Precision is the cells' (``dtype``, ``param_dtype``: :mod:`jaxrnn.cells`); a module's
``dtype`` and ``param_dtype``, where given, replace those of every cell it holds.
``module.options`` is the :class:`jaxrnn.options.RunOptions` handed to the core.

Needs the ``nn`` extra: ``pip install "jaxrnn[nn]"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxrnn import _checks, _extras

with _extras.requires("nn", __name__):
    from flax import linen as nn

from jaxrnn.cells import Cell
from jaxrnn.drivers import drive
from jaxrnn.layers import Stack, drive_bidirectional, drive_stack, stack_with_dtypes, with_dtypes
from jaxrnn.options import RunOptions

__all__ = ["RNN", "Bidirectional", "Stacked", "stack_param_dict", "stack_params"]

_DIRECTIONS = ("forward", "backward")


def stack_params(params: Mapping[str, Any]) -> list:
    """The list that :func:`jaxrnn.stacked` takes, from a ``Stacked`` module's
    ``variables["params"]`` (``{"layer_0": ..., ...}``; an entry with exactly the keys
    ``"forward"`` and ``"backward"`` is a bidirectional layer, made a pair)."""
    layers = []
    for index in range(len(params)):
        layer = params[f"layer_{index}"]
        if set(layer) == set(_DIRECTIONS):
            layer = (layer["forward"], layer["backward"])
        layers.append(layer)
    return layers


def stack_param_dict(params: Sequence) -> dict:
    """Inverse of :func:`stack_params`: ``stack.init``'s list (a pair for a bidirectional
    layer) as a ``Stacked`` module's ``variables["params"]``."""
    return {
        f"layer_{index}": dict(zip(_DIRECTIONS, layer, strict=True))
        if isinstance(layer, tuple | list)
        else layer
        for index, layer in enumerate(params)
    }


def _declare(module: nn.Module, make: Callable[[jax.Array], dict]) -> dict:
    """Declares each entry of the dict ``make(key)`` as a param of ``module``, under its
    name, so that the module's ``params`` collection is that dict; returns it.

    Where some entry is missing and ``params`` is mutable (under ``init``), every entry comes
    from one ``make(module.make_rng("params"))`` (linen would derive a key per name). Elsewhere
    linen reads the params, and checks their shapes against ``make``'s.
    """
    shapes = jax.eval_shape(lambda: make(jax.random.key(0)))
    values = None
    if module.is_mutable_collection("params") and not all(
        module.has_variable("params", name) for name in shapes
    ):
        values = make(module.make_rng("params"))

    def init(name):
        if values is not None:
            return lambda _key: values[name]
        # Only linen's shape check calls this (under eval_shape): nothing is computed.
        return lambda _key: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes[name])

    return {name: module.param(name, init(name)) for name in shapes}


class RNN(nn.Module):
    """One recurrent layer: ``cell`` driven by :func:`jaxrnn.rnn` over ``[batch, time, in]``.

    ``__call__(x, lengths=None, initial_carry=None, *, resets=None)``: ``x`` ``[batch, time,
    in]`` (``[time, batch, in]`` with ``time_major``), floating; ``lengths`` int ``[batch]``,
    ``resets`` bool ``[batch, time]`` and ``initial_carry`` (leaves ``[batch, H]``) as in
    :func:`jaxrnn.rnn`. Returns ``ys`` ``[batch, time, H]`` (or time-major) in the
    computation dtype, zero past each length, or ``(ys, final_carry)`` with
    ``return_carry=True`` (the carry in the accumulation dtype).

    ``variables["params"]`` is ``cell.init``'s dict for ``in = x.shape[-1]``.
    """

    cell: Cell
    reverse: bool = False
    unroll: int | bool = 1
    time_major: bool = False
    return_carry: bool = False
    dtype: Any = None
    param_dtype: Any = None
    implementation: str | None = None

    def __post_init__(self) -> None:
        _ = self.options  # bad options raise when the module is made, not at its first call
        super().__post_init__()

    @property
    def options(self) -> RunOptions:
        return RunOptions(
            reverse=self.reverse,
            unroll=self.unroll,
            time_major=self.time_major,
            implementation=self.implementation,
        )

    @nn.compact
    def __call__(self, x, lengths=None, initial_carry=None, *, resets=None):
        _checks.check_xs(x, "x", time_major=self.time_major)
        cell = with_dtypes(self.cell, self.dtype, self.param_dtype)
        params = _declare(self, lambda key: cell.init(key, x.shape[-1]))
        ys, carry = drive(
            cell,
            params,
            x,
            self.options,
            lengths=lengths,
            resets=resets,
            initial_carry=initial_carry,
        )
        return (ys, carry) if self.return_carry else ys


class Bidirectional(nn.Module):
    """Forward and backward layers merged (:func:`jaxrnn.bidirectional`); ``merge`` as there.

    ``__call__(x, lengths=None, initial_carry=None, *, resets=None)`` as :class:`RNN`'s, with
    ``initial_carry`` ``(carry_fw, carry_bw)``. Returns ``ys`` (``[batch, time, H_fw +
    H_bw]`` for ``"concat"``, ``[batch, time, H]`` for ``"sum"``, ``"mul"``, ``"ave"``, the
    pair ``(ys_fw, ys_bw)`` for ``None``), or ``(ys, (carry_fw, carry_bw))`` with
    ``return_carry``.

    ``variables["params"]`` is ``{"forward": params_fw, "backward": params_bw}``:
    :func:`jaxrnn.bidirectional` takes ``(p["forward"], p["backward"])``.
    """

    cell_fw: Cell
    cell_bw: Cell
    merge: str | None = "concat"
    unroll: int | bool = 1
    time_major: bool = False
    return_carry: bool = False
    dtype: Any = None
    param_dtype: Any = None
    implementation: str | None = None

    def __post_init__(self) -> None:
        _checks.check_merge(self.merge)
        _ = self.options  # bad options raise when the module is made, not at its first call
        super().__post_init__()

    @property
    def options(self) -> RunOptions:
        return RunOptions(
            unroll=self.unroll, time_major=self.time_major, implementation=self.implementation
        )

    @nn.compact
    def __call__(self, x, lengths=None, initial_carry=None, *, resets=None):
        _checks.check_xs(x, "x", time_major=self.time_major)
        cell_fw = with_dtypes(self.cell_fw, self.dtype, self.param_dtype)
        cell_bw = with_dtypes(self.cell_bw, self.dtype, self.param_dtype)

        def make(key):
            k_fw, k_bw = jax.random.split(key)
            return {
                "forward": cell_fw.init(k_fw, x.shape[-1]),
                "backward": cell_bw.init(k_bw, x.shape[-1]),
            }

        params = _declare(self, make)
        ys, carries = drive_bidirectional(
            cell_fw,
            cell_bw,
            (params["forward"], params["backward"]),
            x,
            self.options,
            lengths=lengths,
            merge=self.merge,
            resets=resets,
            initial_carry=initial_carry,
        )
        return (ys, carries) if self.return_carry else ys


class Stacked(nn.Module):
    """A :class:`jaxrnn.Stack` of layers with its dropouts (:func:`jaxrnn.stacked`).

    ``__call__(x, lengths=None, initial_carry=None, *, resets=None, deterministic=True)``:
    ``x``, ``lengths`` and ``resets`` as :class:`RNN`'s, ``initial_carry`` a list with one
    carry per layer (a pair for a bidirectional layer). Returns ``ys`` ``[batch, time,
    stack.output_size]`` (or time-major), zero past each length, or ``(ys, carries)`` with
    ``return_carry`` (each layer's final carry, in a list).

    The stack's dropouts are on only with ``deterministic=False``; they then take one key,
    ``self.make_rng("dropout")``, as :func:`jaxrnn.stacked` takes ``key`` (a stack whose
    rates are all zero draws none).

    ``variables["params"]`` is ``{"layer_0": ..., ...}`` (:func:`stack_params`).
    """

    stack: Stack
    unroll: int | bool = 1
    time_major: bool = False
    return_carry: bool = False
    dtype: Any = None
    param_dtype: Any = None
    implementation: str | None = None

    def __post_init__(self) -> None:
        _ = self.options  # bad options raise when the module is made, not at its first call
        super().__post_init__()

    @property
    def options(self) -> RunOptions:
        return RunOptions(
            unroll=self.unroll, time_major=self.time_major, implementation=self.implementation
        )

    @nn.compact
    def __call__(
        self,
        x,
        lengths=None,
        initial_carry=None,
        *,
        resets=None,
        deterministic: bool = True,
    ):
        _checks.check_xs(x, "x", time_major=self.time_major)
        stack = stack_with_dtypes(self.stack, self.dtype, self.param_dtype)
        params = _declare(self, lambda key: stack_param_dict(stack.init(key, x.shape[-1])))
        rates = (stack.dropout, stack.input_dropout, stack.recurrent_dropout)
        key = None if deterministic or not any(rates) else self.make_rng("dropout")
        ys, carries = drive_stack(
            stack,
            stack_params(params),
            x,
            self.options,
            lengths=lengths,
            key=key,
            resets=resets,
            initial_carry=initial_carry,
        )
        return (ys, carries) if self.return_carry else ys
