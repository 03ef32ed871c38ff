"""Length masks for padded batches: lengths from masks or padding, valid-prefix reversal.

Convention: a padded batch holds each sequence's valid steps at ``t < lengths[b]`` and padding
after them (post-padding), as TF1 ``dynamic_rnn``, Keras ``Masking`` and PyTorch
``pack_padded_sequence`` expect.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _time_axis(time_major: bool) -> int:
    return 0 if time_major else 1


def lengths_from_mask(mask: Array, *, time_major: bool = False) -> Array:
    """Lengths ``[batch]`` (int32) from a boolean mask ``[batch, time]`` (``[time, batch]``).

    The length is the number of leading ``True`` steps: a mask is expected to be a valid
    prefix, and anything after the first ``False`` is treated as padding.
    """
    mask = jnp.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape [batch, time], got shape {mask.shape}")
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask must be boolean, got dtype {mask.dtype}")
    prefix = jnp.cumprod(mask.astype(jnp.int32), axis=_time_axis(time_major))
    return prefix.sum(axis=_time_axis(time_major)).astype(jnp.int32)


def lengths_from_padding(xs: Array, padding_value: float = 0.0, *, time_major=False) -> Array:
    """Lengths ``[batch]`` of a batch ``[batch, time, features]`` padded with ``padding_value``.

    Keras' ``Masking(mask_value=v)`` idiom: a step is padding when *every* feature equals
    ``padding_value``; the length counts the steps before the first padding step.
    """
    xs = jnp.asarray(xs)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape [batch, time, features], got shape {xs.shape}")
    valid = jnp.any(xs != padding_value, axis=-1)
    return lengths_from_mask(valid, time_major=time_major)


def mask_from_lengths(lengths: Array, max_length: int, *, time_major: bool = False) -> Array:
    """Boolean mask ``[batch, max_length]`` (or ``[max_length, batch]``): ``t < lengths[b]``."""
    steps = jnp.arange(max_length)
    mask = steps[None, :] < jnp.asarray(lengths)[:, None]
    return mask.T if time_major else mask


def reverse_sequence(xs: Array, lengths: Array, *, time_major: bool = False) -> Array:
    """Reverse each sequence's valid prefix, leaving its padding in place.

    ``out[b, t] = xs[b, lengths[b] - 1 - t]`` for ``t < lengths[b]`` and ``xs[b, t]`` otherwise
    (TensorFlow's ``reverse_sequence``). ``xs`` is ``[batch, time, ...]`` (``[time, batch,
    ...]`` when ``time_major``); applying it twice gives ``xs`` back.
    """
    xs = jnp.asarray(xs)
    lengths = jnp.asarray(lengths)
    t_axis = _time_axis(time_major)
    steps = xs.shape[t_axis]
    t = jnp.arange(steps)[:, None]  # [time, batch]
    index = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
    if not time_major:
        index = index.T
    index = index.reshape(index.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, index, axis=t_axis)
