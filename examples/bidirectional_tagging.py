"""Sequence tagging with a bidirectional LSTM: label every valid step of a padded sequence
with whether its value is above the mean of the *whole* sequence.

The label of step ``t`` depends on steps after ``t``, so a forward-only LSTM can only guess
early in a sequence; the backward half of ``jaxrnn.bidirectional`` reads each valid prefix
from its end, so every step sees the whole sequence. Padded steps are zero in both halves
and are left out of the loss and the accuracy.

    python examples/bidirectional_tagging.py           # about 30 s on a 2-core CPU
    python examples/bidirectional_tagging.py --small   # a few seconds
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn

MAX_LEN = 20


def make_data(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lengths = rng.integers(4, MAX_LEN + 1, n)
    valid = np.arange(MAX_LEN)[None, :] < lengths[:, None]
    values = np.where(valid, rng.normal(size=(n, MAX_LEN)), 0.0)
    mean = values.sum(axis=1) / lengths
    return {
        "inputs": values[..., None].astype(np.float32),
        "lengths": lengths.astype(np.int32),
        "tags": ((values > mean[:, None]) & valid).astype(np.int32),  # [N, T]
    }


def train_tagger(bidirectional: bool, train, test, steps: int, hidden: int, seed: int = 0):
    fw, bw = jaxrnn.LSTM(hidden), jaxrnn.LSTM(hidden)
    keys = jax.random.split(jax.random.key(seed), 3)
    width = 2 * hidden if bidirectional else hidden
    params = {
        "rnn": (fw.init(keys[0], 1), bw.init(keys[1], 1)) if bidirectional else fw.init(keys[0], 1),
        "head": {"w": 0.1 * jax.random.normal(keys[2], (width, 2)), "b": jnp.zeros(2)},
    }

    def logits_fn(params, inputs, lengths):
        if bidirectional:
            ys, _ = jaxrnn.bidirectional(fw, bw, params["rnn"], inputs, lengths)
        else:
            ys, _ = jaxrnn.rnn(fw, params["rnn"], inputs, lengths)
        return ys @ params["head"]["w"] + params["head"]["b"]  # [batch, time, 2]

    def masked_mean(per_step, lengths):
        valid = jaxrnn.mask_from_lengths(lengths, per_step.shape[1])
        return jnp.sum(per_step * valid) / jnp.sum(valid)

    def loss_fn(params, batch):
        logits = logits_fn(params, batch["inputs"], batch["lengths"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tags"])
        return masked_mean(losses, batch["lengths"])

    optimizer = optax.adam(5e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def step_accuracy(params, data):
        predicted = jnp.argmax(logits_fn(params, data["inputs"], data["lengths"]), axis=-1)
        return masked_mean((predicted == data["tags"]).astype(jnp.float32), data["lengths"])

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.integers(0, len(train["lengths"]), 64)
        params, opt_state, loss = train_step(
            params, opt_state, {k: v[idx] for k, v in train.items()}
        )
        losses.append(float(loss))
    return {
        "first_loss": float(np.mean(losses[:10])),
        "last_loss": float(np.mean(losses[-10:])),
        "test_accuracy": float(step_accuracy(params, test)),
    }


def main(small: bool = False) -> dict:
    steps, hidden = (150, 16) if small else (1500, 32)
    rng = np.random.default_rng(0)
    train, test = make_data(20_000, rng), make_data(2_000, rng)
    result = {"bidirectional": train_tagger(True, train, test, steps, hidden)}
    if not small:  # the comparison that shows why: a forward-only tagger of the same size
        result["forward_only"] = train_tagger(False, train, test, steps, hidden)
    for name, r in result.items():
        print(
            f"{name:>13}: loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}, "
            f"per-step test accuracy {r['test_accuracy']:.3f}"
        )
    return result


if __name__ == "__main__":
    from _common import small_from_args

    main(small_from_args(__doc__.split("\n\n")[0]))
