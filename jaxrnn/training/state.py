"""The train state: everything that changes from one step to the next, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class TrainState(NamedTuple):
    """``step`` (int32 scalar: steps done), ``params``, ``opt_state``, ``key`` and ``carry``.

    ``key`` is raw ``uint32[2]`` key data (``jax.random.key_data``) so that checkpoints store it
    as a plain array; step ``s`` uses ``fold_in(key, s)``, so a resumed run draws the same
    numbers as an uninterrupted one.

    ``carry`` is ``None`` unless the run is stateful (``Config.stateful``): then it is the
    recurrent state after the last batch, one carry per layer (``Model.initial_carry``'s
    layout, rows = the streams), which the next batch starts from.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    key: jax.Array
    carry: Any = None


def create(params, tx, seed_key: jax.Array, carry=None) -> TrainState:
    """A fresh state at step 0 for ``params`` and the optax transformation ``tx``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        key=jax.random.key_data(seed_key),
        carry=carry,
    )


def step_key(state: TrainState) -> jax.Array:
    """The typed PRNG key of the step ``state.step`` is about to take."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
