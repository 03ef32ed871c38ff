"""Same start, same batches: does jaxrnn's ``lstm_sequences`` training follow Keras' exactly?

The 3-seed accuracy of the toy-sequence task spreads widely from run to run. To tell a
semantic difference from that spread, this script trains the tutorial's model (Masking(-1),
LSTM(32), Dense(2), Adam 1e-3, batch 64, 2000 steps) twice from the *same* initial weights on
the *same* batches in the same order: once in Keras 3, once in jaxrnn (``jaxrnn.rnn`` with the
weights converted by ``jaxrnn.interop.from_keras`` and the TF/Keras Adam of
``jaxrnn.training.optimizers``), and compares the loss of every step.

Run in two environments (Keras needs TensorFlow, which jaxrnn never installs)::

    python -m venv ../keras-venv && ../keras-venv/bin/pip install tensorflow-cpu keras
    ../keras-venv/bin/python benchmarks/keras_parity.py keras    # writes the Keras side
    .venv/bin/python benchmarks/keras_parity.py jaxrnn              # trains jaxrnn, compares

Both sides write into ``benchmarks/results/keras_parity/`` (npz of the Keras side, JSON of
the comparison).
"""

import json
import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "keras_parity")
STEPS, BATCH = 2000, 64


def linear_vs_random(n, rng, t=20, max_value=10000):
    """The toy task, as ``jaxrnn.data.sequences.linear_vs_random`` (inlined: no jax here)."""
    lengths = rng.integers(5, t + 1, size=n)
    labels = rng.integers(0, 2, size=n)
    starts = rng.integers(0, max_value - lengths + 1)
    linear = starts[:, None] + np.arange(t)[None, :]
    random = rng.integers(0, max_value, size=(n, t))
    values = np.where(labels[:, None] == 0, linear, random) / max_value
    values = np.where(np.arange(t)[None, :] < lengths[:, None], values, -1.0)
    return values.astype(np.float32)[:, :, None], labels.astype(np.int32)


def data():
    train = linear_vs_random(STEPS * BATCH, np.random.default_rng(1234))
    test = linear_vs_random(10000, np.random.default_rng(99))
    return train, test


def keras_side():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    (x, y), (xt, yt) = data()
    model = keras.Sequential(
        [
            keras.Input((20, 1)),
            keras.layers.Masking(-1.0),
            keras.layers.LSTM(32),
            keras.layers.Dense(2),
        ]
    )
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    init = model.get_weights()
    losses = [
        float(model.train_on_batch(x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH]))
        for s in range(STEPS)
    ]
    accuracy = float((model.predict(xt, verbose=0).argmax(-1) == yt).mean())
    os.makedirs(OUT, exist_ok=True)
    np.savez(
        os.path.join(OUT, "keras.npz"),
        *init,
        losses=np.asarray(losses),
        accuracy=accuracy,
        keras_version=keras.__version__,
    )
    print(f"keras: final loss {losses[-1]:.4f}, test accuracy {accuracy:.4f}")


def jaxrnn_side():
    import jax
    import optax

    import jaxrnn
    from jaxrnn.training.optimizers import tf_adam

    saved = np.load(os.path.join(OUT, "keras.npz"))
    weights = [saved[f"arr_{i}"] for i in range(5)]
    (x, y), (xt, yt) = data()
    n_train = np.asarray(jaxrnn.lengths_from_padding(x, -1.0))
    n_test = np.asarray(jaxrnn.lengths_from_padding(xt, -1.0))
    cell = jaxrnn.LSTM(32)
    params = {
        "lstm": jaxrnn.interop.from_keras(cell, weights[:3]),
        "w": weights[3],
        "b": weights[4],
    }

    def logits(p, xs, lengths):
        _, (_, h) = jaxrnn.rnn(cell, p["lstm"], xs, lengths)
        return h @ p["w"] + p["b"]

    def loss(p, xs, lengths, labels):
        out = logits(p, xs, lengths)
        return optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()

    tx = tf_adam(1e-3)

    @jax.jit
    def step(p, state, xs, lengths, labels):
        value, grads = jax.value_and_grad(loss)(p, xs, lengths, labels)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state, losses = tx.init(params), []
    for s in range(STEPS):
        sl = slice(s * BATCH, (s + 1) * BATCH)
        params, state, value = step(params, state, x[sl], n_train[sl], y[sl])
        losses.append(float(value))
    accuracy = float((np.asarray(logits(params, xt, n_test)).argmax(-1) == yt).mean())
    keras_losses = saved["losses"]
    diff = np.abs(np.asarray(losses) - keras_losses)
    report = {
        "steps": STEPS,
        "keras_version": str(saved["keras_version"]),
        "jax_version": jax.__version__,
        "keras_final_loss": float(keras_losses[-1]),
        "jaxrnn_final_loss": losses[-1],
        "keras_test_accuracy": float(saved["accuracy"]),
        "jaxrnn_test_accuracy": accuracy,
        "max_abs_loss_difference_first_100_steps": float(diff[:100].max()),
        "max_abs_loss_difference_all_steps": float(diff.max()),
        "median_abs_loss_difference": float(np.median(diff)),
        "loss_at": {
            str(s): [float(keras_losses[s]), losses[s]] for s in (0, 10, 100, 500, 1000, 1999)
        },
    }
    with open(os.path.join(OUT, "comparison.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    side = sys.argv[1] if len(sys.argv) > 1 else ""
    if side not in ("keras", "jaxrnn"):
        sys.exit("usage: keras_parity.py keras|jaxrnn")
    keras_side() if side == "keras" else jaxrnn_side()
