"""An optax training loop on variable-length sequences: an LSTM reads padded sequences of
lengths 5..30 and tells runs of consecutive numbers from random ones.

Only ``jaxrnn`` and ``optax`` are needed. The padded batch goes to ``jaxrnn.rnn`` with its
``lengths``; the classifier reads the final hidden state, which is the state after each
sequence's last valid step (padding never reaches it).

    python examples/train_variable_length.py           # about 10 s on a 2-core CPU
    python examples/train_variable_length.py --small   # a few seconds
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxrnn

MAX_LEN = 30


def make_data(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Class 0: a run ``start, start+1, ...``; class 1: random integers; both scaled to [0, 1)
    and padded with -1 past each length."""
    lengths = rng.integers(5, MAX_LEN + 1, n)
    labels = rng.integers(0, 2, n)
    starts = rng.integers(0, 1000 - MAX_LEN, n)
    runs = starts[:, None] + np.arange(MAX_LEN)[None, :]
    noise = rng.integers(0, 1000, (n, MAX_LEN))
    values = np.where(labels[:, None] == 0, runs, noise) / 1000.0
    values[np.arange(MAX_LEN)[None, :] >= lengths[:, None]] = -1.0
    return {
        "inputs": values[..., None].astype(np.float32),  # [N, T, 1]
        "lengths": lengths.astype(np.int32),
        "labels": labels.astype(np.int32),
    }


def main(small: bool = False) -> dict:
    steps, batch, hidden = (150, 32, 16) if small else (1500, 64, 32)
    rng = np.random.default_rng(0)
    train, test = make_data(20_000, rng), make_data(2_000, rng)
    assert np.array_equal(  # the padding is where the lengths say
        np.asarray(jaxrnn.lengths_from_padding(test["inputs"], -1.0)), test["lengths"]
    )

    cell = jaxrnn.LSTM(hidden)
    k_cell, k_head = jax.random.split(jax.random.key(0))
    params = {
        "lstm": cell.init(k_cell, input_size=1),
        "head": {"w": jax.random.normal(k_head, (hidden, 2)) * 0.1, "b": jnp.zeros(2)},
    }

    def logits_fn(params, inputs, lengths):
        _, (c, h) = jaxrnn.rnn(cell, params["lstm"], inputs, lengths)
        return h @ params["head"]["w"] + params["head"]["b"]

    def loss_fn(params, batch):
        logits = logits_fn(params, batch["inputs"], batch["lengths"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()

    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    @jax.jit
    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, data):
        predictions = jnp.argmax(logits_fn(params, data["inputs"], data["lengths"]), axis=-1)
        return jnp.mean(predictions == data["labels"])

    losses = []
    for step in range(steps):
        idx = rng.integers(0, len(train["labels"]), batch)
        params, opt_state, loss = train_step(
            params, opt_state, {k: v[idx] for k, v in train.items()}
        )
        losses.append(float(loss))
        if step % (steps // 5) == 0:
            print(f"step {step:5d}  loss {loss:.4f}")
    result = {
        "first_loss": float(np.mean(losses[:10])),
        "last_loss": float(np.mean(losses[-10:])),
        "test_accuracy": float(accuracy(params, test)),
    }
    print(
        f"loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}, "
        f"test accuracy {result['test_accuracy']:.3f}"
    )
    return result


if __name__ == "__main__":
    from _common import small_from_args

    main(small_from_args(__doc__.split("\n\n")[0]))
