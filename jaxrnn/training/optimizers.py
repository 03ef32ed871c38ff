"""Optimizers from optax with the tutorials' exact semantics, optional clipping and schedules.

Keras and optax differ in RMSprop: Keras uses ``rho=0.9`` and adds ``epsilon`` (1e-7) *outside*
the square root, ``g / (sqrt(v) + eps)``; optax' default is ``eps`` inside, ``g / sqrt(v + eps)``.
With ``eps_in_sqrt=False`` :func:`make_optimizer` gives Keras' update.

Adam: TF1's ``AdamOptimizer`` and Keras add epsilon to the square root of the *uncorrected*
second moment ("epsilon hat": ``lr_t * m / (sqrt(v) + eps)`` with
``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``), optax to the corrected one
(``lr * m_hat / (sqrt(v_hat) + eps)``). They differ while gradients are tiny; ``eps_hat=True``
(:func:`tf_adam`) gives TF's. Keras' epsilon is 1e-7, TF1's 1e-8; the configs state which.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "rmsprop", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


class TfAdamState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as optax does
    mu: optax.Updates
    nu: optax.Updates


def scale_by_tf_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """Adam's direction with TF/Keras' epsilon: ``-m_hat / (sqrt(v_hat) + eps / sqrt(1-b2^t))``.

    Equal to TF's ``m / (sqrt(v) + eps)`` scaled by ``sqrt(1 - b2^t) / (1 - b1^t)``.
    """

    def init(params):
        # Two distinct trees: one buffer in both would be donated twice by a train step.
        mu = jax.tree.map(jnp.zeros_like, params)
        nu = jax.tree.map(jnp.zeros_like, params)
        return TfAdamState(jnp.zeros((), jnp.int32), mu, nu)

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, updates)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, updates)
        count = state.count + 1
        t = count.astype(jnp.float32)
        scale = jnp.sqrt(1 - b2**t) / (1 - b1**t)
        out = jax.tree.map(lambda m, v: scale * m / (jnp.sqrt(v) + eps), mu, nu)
        return out, TfAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def tf_adam(learning_rate, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-7):
    """TF1 ``AdamOptimizer`` / Keras ``Adam``: :func:`scale_by_tf_adam` then the learning rate."""
    return optax.chain(scale_by_tf_adam(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))


def make_schedule(name: str, learning_rate: float, total_steps: int, warmup_steps: int = 0):
    """A learning-rate schedule: constant, cosine decay to 0, or linear warm-up then cosine."""
    if name == "constant":
        return learning_rate
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
    if name == "warmup_cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, learning_rate, warmup_steps, max(total_steps, warmup_steps + 1)
        )
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {name!r}")


def make_optimizer(
    name: str,
    learning_rate: float,
    *,
    total_steps: int = 0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-7,
    rho: float = 0.9,
    eps_in_sqrt: bool = False,
    eps_hat: bool = True,
    clip_norm: float = 0.0,
    schedule: str = "constant",
    warmup_steps: int = 0,
) -> optax.GradientTransformation:
    """An optax transformation; ``clip_norm > 0`` clips the global gradient norm first."""
    lr = make_schedule(schedule, learning_rate, total_steps, warmup_steps)
    if name == "adam":
        tx = tf_adam(lr, b1, b2, eps) if eps_hat else optax.adam(lr, b1=b1, b2=b2, eps=eps)
    elif name == "rmsprop":
        tx = optax.rmsprop(lr, decay=rho, eps=eps, eps_in_sqrt=eps_in_sqrt)
    elif name == "sgd":
        tx = optax.sgd(lr)
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
    return tx


def from_config(config, total_steps: int) -> optax.GradientTransformation:
    """:func:`make_optimizer` with the optimizer fields of a :class:`jaxrnn.configs.Config`."""
    return make_optimizer(
        config.optimizer,
        config.learning_rate,
        total_steps=total_steps,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        rho=config.rho,
        eps_in_sqrt=config.eps_in_sqrt,
        eps_hat=config.eps_hat,
        clip_norm=config.clip_norm,
        schedule=config.schedule,
        warmup_steps=config.warmup_steps,
    )
