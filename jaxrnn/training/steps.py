"""Jitted train and eval steps: a block of train steps in one compiled call, data parallel.

* :func:`make_train_block` compiles ``K`` optimizer steps into one call (``lax.scan`` over a
  block of batches ``[K, batch, ...]`` stacked on the host and sent to the devices once,
  ``jaxrnn.training.feed``). The state is donated.
* Batches are laid out on a one-axis :class:`jax.sharding.Mesh` named ``"data"`` over
  ``jax.devices()``: the batch dimension is split across devices, parameters are replicated,
  and one code path serves one device and many (XLA inserts the gradient all-reduce).
* Loss and accuracy are weighted by ``batch["weights"]`` (1 for real examples, 0 for padding
  of a partial eval batch), so sums over batches give exact means over the split. A model
  with ``readout="sequence"`` has a loss per step (``labels [batch, time]``), averaged over
  every step.
* Stateful training (``state.carry`` not ``None``): each step starts from the carry the
  previous one ended with (the rows where ``batch["starts"]`` is True from zeros: a pass over
  the streams begins there) and stores its final carry in the state; no gradient flows into
  an earlier batch (truncated backpropagation through time).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from jaxrnn import parallel
from jaxrnn.drivers import reset_carry
from jaxrnn.models import Model
from jaxrnn.training.state import TrainState, step_key

# Regression "accuracy": the share of predictions within this distance of the target (the
# adding problem's customary success criterion).
REGRESSION_TOLERANCE = 0.04


def make_mesh() -> Mesh:
    """The ``(data, model=1)`` mesh of :mod:`jaxrnn.parallel` over every device."""
    return parallel.make_mesh()


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """A global batch that does not split evenly over the ``data`` axis is an error."""
    parallel.check_global_batch(batch_size, mesh)


def replicated(mesh: Mesh) -> NamedSharding:
    return parallel.replicated(mesh)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Split axis ``leading`` (the batch axis) across ``"data"``; 1 for stacked blocks."""
    return parallel.batch_sharding(mesh, leading)


def per_example(model: Model, outputs: jax.Array, batch: dict):
    """``(loss, correct)`` per example ``[batch]`` (per step ``[batch, time]`` for a sequence
    readout): cross-entropy or squared error."""
    if model.task == "classification":
        labels = batch["labels"]
        logp = jax.nn.log_softmax(outputs.astype(jnp.float32))
        loss = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        correct = (jnp.argmax(outputs, axis=-1) == labels).astype(jnp.float32)
    else:
        err = outputs - batch["targets"]
        loss = err * err
        correct = (jnp.abs(err) < REGRESSION_TOLERANCE).astype(jnp.float32)
    return loss, correct


def _uses_rng(model: Model) -> bool:
    return bool(model.dropout or model.input_dropout or model.recurrent_dropout)


def _loss(model: Model, params, batch: dict, key, carry):
    """``(mean loss, ((loss_sum, correct_sum, weight_sum), final carry))``; the carry is
    ``None`` when ``carry`` is (a batch of independent examples)."""
    inputs, lengths = batch["inputs"], batch.get("lengths")
    if carry is None:
        outputs = model.apply(params, inputs, lengths, key)
    else:
        if "starts" in batch:
            carry = reset_carry(carry, batch["starts"])
        outputs, carry = model.apply(
            params, inputs, lengths, key, initial_carry=carry, return_carry=True
        )
        carry = jax.lax.stop_gradient(carry)
    loss, correct = per_example(model, outputs, batch)
    weights = batch.get("weights")
    if weights is None:
        weights = jnp.ones_like(loss)
    total = jnp.sum(weights)
    loss_sum = jnp.sum(loss * weights)
    sums = (loss_sum, jnp.sum(correct * weights), total)
    return loss_sum / jnp.maximum(total, 1.0), (sums, carry)


def loss_fn(model: Model, params, batch: dict, key=None):
    """Weighted mean loss and ``(loss_sum, correct_sum, weight_sum)`` over ``batch``."""
    loss, (sums, _) = _loss(model, params, batch, key, None)
    return loss, sums


def train_step(model: Model, tx: optax.GradientTransformation, state: TrainState, batch: dict):
    """One optimizer step on ``batch``; returns the new state and the step's metrics.

    A stateful ``state`` (``carry`` not ``None``) starts the batch from its carry and keeps
    the batch's final carry.
    """
    key = step_key(state) if _uses_rng(model) else None
    grad_fn = jax.value_and_grad(_loss, argnums=1, has_aux=True)
    (loss, ((_, correct, total), carry)), grads = grad_fn(
        model, state.params, batch, key, state.carry
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": correct / jnp.maximum(total, 1.0),
        "grad_norm": optax.tree.norm(grads),
    }
    return TrainState(state.step + 1, params, opt_state, state.key, carry), metrics


def make_train_block(model: Model, tx: optax.GradientTransformation) -> Callable:
    """``block(state, batches) -> (state, metrics)``, jitted, donating ``state``.

    ``batches``: a dict of arrays ``[K, batch, ...]``; runs ``K`` steps in order with
    ``lax.scan``. ``metrics``: ``loss``, ``accuracy``, ``grad_norm``, each ``[K]``.
    """

    def block(state: TrainState, batches: dict):
        return jax.lax.scan(lambda s, b: train_step(model, tx, s, b), state, batches)

    return jax.jit(block, donate_argnums=(0,))


def make_eval_step(model: Model) -> Callable:
    """``eval_step(params, batch) -> (loss_sum, correct_sum, weight_sum)``, jitted."""

    def eval_step(params, batch):
        return loss_fn(model, params, batch)[1]

    return jax.jit(eval_step)


def make_stream_eval(model: Model, stateful: bool = True) -> Callable:
    """``stream_eval(params, windows) -> (loss_sum, correct_sum, weight_sum)``, jitted.

    ``windows``: ``inputs``, ``labels`` and ``weights`` ``[num_windows, streams, time]``
    (``jaxrnn.data.text.held_out_windows``), run in order in one ``lax.scan``; ``stateful``
    carries each stream's state from one window into the next (else every window starts from
    zeros, as a model trained without a carry).
    """

    def stream_eval(params, windows):
        def body(carry, window):
            outputs, after = model.apply(
                params, window["inputs"], initial_carry=carry, return_carry=True
            )
            loss, correct = per_example(model, outputs, window)
            w = window["weights"]
            return (after if stateful else carry), jnp.stack(
                [jnp.sum(loss * w), jnp.sum(correct * w), jnp.sum(w)]
            )

        carry0 = model.initial_carry(windows["inputs"].shape[1])
        _, sums = jax.lax.scan(body, carry0, windows)
        return tuple(jnp.sum(sums, axis=0))

    return jax.jit(stream_eval)
