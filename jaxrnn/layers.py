"""Layers built from the drivers: bidirectional runs and stacks of layers with dropout."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxrnn import _checks
from jaxrnn.cells import Carry, Cell, Params
from jaxrnn.drivers import drive
from jaxrnn.options import RunOptions

Array = jax.Array


def _merge(ys_fw: Array, ys_bw: Array, merge):
    if merge == "concat":
        return jnp.concatenate([ys_fw, ys_bw], axis=-1)
    if merge == "sum":
        return ys_fw + ys_bw
    if merge == "mul":
        return ys_fw * ys_bw
    if merge == "ave":
        return (ys_fw + ys_bw) / 2
    return ys_fw, ys_bw


def drive_bidirectional(
    cell_fw: Cell,
    cell_bw: Cell,
    params: tuple[Params, Params],
    xs: Array,
    options: RunOptions,
    *,
    lengths: Array | None = None,
    merge: str | None = "concat",
    resets: Array | None = None,
    initial_carry: tuple[Carry, Carry] | None = None,
    hidden_masks: tuple[Array | None, Array | None] = (None, None),
):
    """:func:`bidirectional` under ``options`` (a :class:`~jaxrnn.options.RunOptions`; its
    ``reverse`` is ignored: the forward cell runs forwards, the backward one in reverse), with
    optional recurrent dropout masks ``[batch, H]`` per direction (see
    :func:`jaxrnn.drivers.drive`). What the layers and the NNX modules call."""
    _checks.check_merge(merge)
    if not isinstance(params, tuple | list) or len(params) != 2:
        raise TypeError(
            f"params must be a pair (params_fw, params_bw), got {type(params).__name__}"
        )
    carry_fw, carry_bw = (None, None) if initial_carry is None else initial_carry
    ys_fw, carry_fw = drive(
        cell_fw,
        params[0],
        xs,
        options.replace(reverse=False),
        lengths=lengths,
        resets=resets,
        initial_carry=carry_fw,
        hidden_mask=hidden_masks[0],
    )
    ys_bw, carry_bw = drive(
        cell_bw,
        params[1],
        xs,
        options.replace(reverse=True),
        lengths=lengths,
        resets=resets,
        initial_carry=carry_bw,
        hidden_mask=hidden_masks[1],
    )
    return _merge(ys_fw, ys_bw, merge), (carry_fw, carry_bw)


def bidirectional(
    cell_fw: Cell,
    cell_bw: Cell,
    params: tuple[Params, Params],
    xs: Array,
    lengths: Array | None = None,
    *,
    merge: str | None = "concat",
    resets: Array | None = None,
    initial_carry: tuple[Carry, Carry] | None = None,
    unroll: int | bool = 1,
    time_major: bool = False,
    static: bool = False,
    implementation: str | None = None,
):
    """Run ``cell_fw`` forward and ``cell_bw`` backward over ``xs`` and merge the outputs.

    The backward direction reverses only each sequence's valid prefix (``lengths``) and its
    outputs are written back at their original time positions, so ``ys[b, t]`` pairs the
    forward and backward outputs of the same input step; padded steps are zero in both.

    Args:
      params: ``(params_fw, params_bw)``.
      xs: ``[batch, time, input_size]`` (``[time, batch, input_size]`` if ``time_major``).
      merge: ``"concat"`` (forward features first, ``[..., H_fw + H_bw]``), ``"sum"``,
        ``"mul"``, ``"ave"`` (``[..., H]``) or ``None`` (the pair ``(ys_fw, ys_bw)``).
      resets: optional bool ``[batch, time]`` (see :func:`jaxrnn.rnn`): both directions
        restart from zeros at each segment, the backward one running each segment from its
        own last step.
      initial_carry: optional ``(carry_fw, carry_bw)``; the backward one enters at the last
        valid step.
      static: loop over time in Python (``static_rnn``) instead of ``lax.scan``.
      implementation: passed to :func:`jaxrnn.rnn` for both directions.

    Returns:
      ``(ys, (carry_fw, carry_bw))``, ``ys`` in the cells' computation dtype; each final
      carry is the state after the last valid step of its own direction (for the backward
      one: after reading step 0).
    """
    options = RunOptions(
        unroll=unroll, time_major=time_major, implementation=implementation, static=static
    )
    return drive_bidirectional(
        cell_fw,
        cell_bw,
        params,
        xs,
        options,
        lengths=lengths,
        merge=merge,
        resets=resets,
        initial_carry=initial_carry,
    )


@dataclasses.dataclass(frozen=True)
class Bidirectional:
    """A bidirectional layer for :class:`Stack`: hyperparameters of both directions."""

    forward: Cell
    backward: Cell
    merge: str = "concat"

    def __post_init__(self):
        if self.merge is None:
            raise ValueError("Bidirectional in a Stack needs a merge mode other than None")
        _checks.check_merge(self.merge)

    @property
    def output_size(self) -> int:
        if self.merge == "concat":
            return self.forward.output_size + self.backward.output_size
        return self.forward.output_size

    def init(self, key, input_size: int, dtype=None) -> tuple[Params, Params]:
        """Both directions' parameters, each in ``dtype`` (default: its cell's
        ``param_dtype``)."""
        k_fw, k_bw = jax.random.split(key)
        return self.forward.init(k_fw, input_size, dtype), self.backward.init(
            k_bw, input_size, dtype
        )


Layer = Cell | Bidirectional


@dataclasses.dataclass(frozen=True)
class Stack:
    """Hyperparameters of a stack of recurrent layers, each a cell or :class:`Bidirectional`.

    Dropout (active only when :func:`stacked` gets a ``key``), with rates in ``[0, 1)``:

    * ``dropout``: on each layer's output sequence before the next layer (a fresh mask for
      every element and step; not after the last layer), as PyTorch's ``nn.LSTM(dropout=)``.
    * ``input_dropout``: variational (Gal and Ghahramani, 2016): one mask per sequence and
      feature, the same at every step, on each layer's input (Keras ``dropout=``).
    * ``recurrent_dropout``: variational, on ``h`` where it enters the recurrent matmul, one
      mask per sequence and direction (Keras ``recurrent_dropout=``).
    """

    layers: tuple[Layer, ...]
    dropout: float = 0.0
    input_dropout: float = 0.0
    recurrent_dropout: float = 0.0

    def __post_init__(self):
        if not isinstance(self.layers, tuple) or not self.layers:
            raise TypeError(f"layers must be a non-empty tuple of cells, got {self.layers!r}")
        for name in ("dropout", "input_dropout", "recurrent_dropout"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {rate!r}")

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def init(self, key, input_size: int, dtype=None) -> list:
        """A list with each layer's params (a pair for a bidirectional layer), in ``dtype``
        (default: each cell's ``param_dtype``)."""
        params, size = [], input_size
        for layer, k in zip(self.layers, jax.random.split(key, len(self.layers)), strict=True):
            params.append(layer.init(k, size, dtype))
            size = layer.output_size
        return params


def _keep_mask(key, rate: float, shape, dtype) -> Array:
    """Inverted-dropout multiplier: 0 with probability ``rate``, else ``1 / (1 - rate)``."""
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return keep.astype(dtype) / (1.0 - rate)


def stacked(
    stack: Stack,
    params: Sequence,
    xs: Array,
    lengths: Array | None = None,
    *,
    key: Array | None = None,
    resets: Array | None = None,
    initial_carry: Sequence | None = None,
    unroll: int | bool = 1,
    time_major: bool = False,
    static: bool = False,
    implementation: str | None = None,
) -> tuple[Array, list]:
    """Run the layers of ``stack`` in turn; each layer's (merged) outputs feed the next, in
    that layer's computation dtype (a bfloat16 stack feeds bfloat16 between its layers).

    Args:
      params: ``stack.init(...)``: one entry per layer.
      xs: ``[batch, time, input_size]`` (``[time, batch, input_size]`` if ``time_major``).
      lengths: optional int ``[batch]``, applied to every layer.
      key: a PRNG key turns dropout on (training); ``None`` turns it off (evaluation).
      resets: optional bool ``[batch, time]`` (see :func:`jaxrnn.rnn`), applied to every
        layer: each layer's carry restarts from zeros where a segment begins.
      initial_carry: optional list with one initial carry per layer (a pair for a
        bidirectional layer), such as the ``carries`` a previous call returned; ``None``
        starts every layer from zeros.
      implementation: passed to :func:`jaxrnn.rnn` for every layer (``None`` chooses per
        layer; recurrent dropout runs ``"scan"``).

    Returns:
      ``(ys, carries)``: the last layer's outputs ``[batch, time, stack.output_size]``, zero
      past each length, and the list of each layer's final carry (a pair when bidirectional).
    """
    options = RunOptions(
        unroll=unroll, time_major=time_major, implementation=implementation, static=static
    )
    return drive_stack(
        stack,
        params,
        xs,
        options,
        lengths=lengths,
        key=key,
        resets=resets,
        initial_carry=initial_carry,
    )


def drive_stack(
    stack: Stack,
    params: Sequence,
    xs: Array,
    options: RunOptions,
    *,
    lengths: Array | None = None,
    key: Array | None = None,
    resets: Array | None = None,
    initial_carry: Sequence | None = None,
) -> tuple[Array, list]:
    """:func:`stacked` under ``options`` (a :class:`~jaxrnn.options.RunOptions`, the same for
    every layer; its ``reverse`` must be False). What the NNX modules and models call."""
    if options.reverse:
        raise ValueError("a Stack runs forwards: options.reverse must be False")
    if len(params) != len(stack.layers):
        raise ValueError(f"params has {len(params)} entries, stack has {len(stack.layers)}")
    if initial_carry is None:
        initial_carry = [None] * len(stack.layers)
    elif not isinstance(initial_carry, Sequence) or len(initial_carry) != len(stack.layers):
        got = len(initial_carry) if isinstance(initial_carry, Sequence) else type(initial_carry)
        raise ValueError(
            f"initial_carry must be a list with one carry per layer ({len(stack.layers)}), "
            f"got {got}"
        )
    time_major = options.time_major
    _checks.check_xs(xs, time_major=time_major)
    batch = xs.shape[1] if time_major else xs.shape[0]
    training = key is not None
    carries = []
    layers = zip(stack.layers, params, initial_carry, strict=True)
    for index, (layer, layer_params, layer_carry) in enumerate(layers):
        masks: tuple = (None, None)
        if key is not None:
            key, k_in, k_fw, k_bw, k_out = jax.random.split(key, 5)
            if stack.input_dropout:
                feature_mask = _keep_mask(
                    k_in, stack.input_dropout, (batch, xs.shape[-1]), xs.dtype
                )
                xs = xs * (feature_mask[None] if time_major else feature_mask[:, None])
            if stack.recurrent_dropout:
                cells = (
                    (layer.forward, layer.backward)
                    if isinstance(layer, Bidirectional)
                    else (layer,)
                )
                masks = tuple(
                    _keep_mask(k, stack.recurrent_dropout, (batch, c.output_size), xs.dtype)
                    for k, c in zip((k_fw, k_bw), cells, strict=False)
                ) + (None,)
        if isinstance(layer, Bidirectional):
            xs, carry = drive_bidirectional(
                layer.forward,
                layer.backward,
                layer_params,
                xs,
                options,
                lengths=lengths,
                merge=layer.merge,
                resets=resets,
                initial_carry=layer_carry,
                hidden_masks=masks[:2],
            )
        else:
            xs, carry = drive(
                layer,
                layer_params,
                xs,
                options,
                lengths=lengths,
                resets=resets,
                initial_carry=layer_carry,
                hidden_mask=masks[0],
            )
        carries.append(carry)
        last = index == len(stack.layers) - 1
        if training and stack.dropout and not last:
            xs = xs * _keep_mask(k_out, stack.dropout, xs.shape, xs.dtype)
    return xs, carries


def with_dtypes(cell: Cell, dtype, param_dtype) -> Cell:
    """``cell`` with ``dtype``/``param_dtype`` replaced where given (not ``None``): what the
    Flax modules' ``dtype`` and ``param_dtype`` arguments do to the cells they hold."""
    changes = {}
    if dtype is not None:
        changes["dtype"] = dtype
    if param_dtype is not None:
        changes["param_dtype"] = param_dtype
    return dataclasses.replace(cell, **changes) if changes else cell


def stack_with_dtypes(stack: Stack, dtype, param_dtype) -> Stack:
    """``stack`` with :func:`with_dtypes` applied to every cell of every layer."""

    def layer(item):
        if isinstance(item, Bidirectional):
            return dataclasses.replace(
                item,
                forward=with_dtypes(item.forward, dtype, param_dtype),
                backward=with_dtypes(item.backward, dtype, param_dtype),
            )
        return with_dtypes(item, dtype, param_dtype)

    return dataclasses.replace(stack, layers=tuple(layer(item) for item in stack.layers))
