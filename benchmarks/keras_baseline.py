"""Keras 3 baseline for the five tutorial configs: fit time and test accuracy on *this* machine.

jaxrnn's training times are compared with Keras' ``model.fit`` time; this script measures that
figure on the machine at hand so that the comparison is side by side. It builds, for each
config, the same model, optimizer, batch size and budget as ``jaxrnn/configs/<name>.py``:

* ``lstm_sequences``: Masking(-1) -> LSTM(32) -> Dense(2); Adam 1e-3; batch 64; 2000 steps.
* ``birnn_mnist``: Bidirectional(LSTM(32)) on 28 rows of 28 pixels -> Dense(10); Adam 1e-3;
  batch 32; 1000 steps.
* ``lstm_mnist``: LSTM(128) -> Dense(10); Adam 1e-3 (eps 1e-8); batch 100; 1000 steps.
* ``rnn_mnist``: SimpleRNN(150, tanh) -> Dense(10); Adam 1e-3 (eps 1e-8); batch 150; 10 epochs.
* ``simplernn_mnist``: SimpleRNN(16, relu) -> Dense(10); RMSprop 0.01 (rho 0.9, eps 1e-7);
  batch 100; 20 epochs.

Loss: sparse categorical cross-entropy on logits; no training metrics (``verbose=0``).

Timing: a short warm-up ``fit`` (a few batches) traces/compiles the train function, then the
initial weights are restored, the optimizer's slots and step counter are zeroed, and the full
budget is fitted: ``fit_time_s`` is that second ``fit``'s wall time (the compiled function is
reused, so it excludes compilation, like jaxrnn's ``train_time_s``); ``warmup_fit_time_s`` is
the first ``fit``'s wall time. Test accuracy comes from ``model.predict`` on the whole test set.

It does not import jaxrnn: MNIST is read from the idx ``.gz`` files (pixels / 255) and the toy
sequences come from an inline copy of ``jaxrnn.data.sequences.linear_vs_random`` (train
``default_rng([0, 0])`` 50 000 examples, test ``default_rng([0, 1])`` 10 000).

Setup (a separate virtual environment, not jaxrnn's)::

    python -m venv keras-venv
    keras-venv/bin/pip install tensorflow-cpu keras        # TensorFlow backend
    keras-venv/bin/pip install jax jaxlib                  # optional: JAX backend

Run from the repository root::

    keras-venv/bin/python benchmarks/keras_baseline.py --backend tensorflow
    keras-venv/bin/python benchmarks/keras_baseline.py --backend jax --configs lstm_sequences

Writes (merging with configs already there) ``benchmarks/results/keras_baseline_<backend>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("lstm_sequences", "birnn_mnist", "lstm_mnist", "rnn_mnist", "simplernn_mnist")

# name: (dataset, batch size, steps (0: use epochs), epochs)
BUDGETS = {
    "lstm_sequences": ("sequences", 64, 2000, 0),
    "birnn_mnist": ("mnist", 32, 1000, 0),
    "lstm_mnist": ("mnist", 100, 1000, 0),
    "rnn_mnist": ("mnist", 150, 0, 10),
    "simplernn_mnist": ("mnist", 100, 0, 20),
}


def linear_vs_random(num_examples, rng, min_length=5, max_length=20, max_value=10000, pad=-1.0):
    """Copy of ``jaxrnn.data.sequences.linear_vs_random`` (same draws in the same order)."""
    n, t = num_examples, max_length
    lengths = rng.integers(min_length, max_length + 1, size=n)
    labels = rng.integers(0, 2, size=n)
    starts = rng.integers(0, max_value - lengths + 1)
    linear = starts[:, None] + np.arange(t)[None, :]
    random = rng.integers(0, max_value, size=(n, t))
    values = np.where(labels[:, None] == 0, linear, random) / max_value
    values = np.where(np.arange(t)[None, :] < lengths[:, None], values, pad)
    return values.astype(np.float32)[:, :, None], labels.astype(np.int32)


def _idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(dataset, mnist_dir):
    if dataset == "sequences":
        return (
            linear_vs_random(50_000, np.random.default_rng([0, 0])),
            linear_vs_random(10_000, np.random.default_rng([0, 1])),
        )
    splits = []
    for prefix in ("train", "t10k"):
        x = _idx(os.path.join(mnist_dir, f"{prefix}-images-idx3-ubyte.gz"))
        y = _idx(os.path.join(mnist_dir, f"{prefix}-labels-idx1-ubyte.gz"))
        splits.append((x.astype(np.float32) / 255.0, y.astype(np.int32)))
    return tuple(splits)


def build(name, keras):
    layers = keras.layers
    if name == "lstm_sequences":
        body = [keras.Input((20, 1)), layers.Masking(-1.0), layers.LSTM(32), layers.Dense(2)]
        opt = keras.optimizers.Adam(1e-3, epsilon=1e-7)
    elif name == "birnn_mnist":
        body = [keras.Input((28, 28)), layers.Bidirectional(layers.LSTM(32)), layers.Dense(10)]
        opt = keras.optimizers.Adam(1e-3, epsilon=1e-7)
    elif name == "lstm_mnist":
        body = [keras.Input((28, 28)), layers.LSTM(128), layers.Dense(10)]
        opt = keras.optimizers.Adam(1e-3, epsilon=1e-8)
    elif name == "rnn_mnist":
        body = [keras.Input((28, 28)), layers.SimpleRNN(150), layers.Dense(10)]
        opt = keras.optimizers.Adam(1e-3, epsilon=1e-8)
    elif name == "simplernn_mnist":
        body = [keras.Input((28, 28)), layers.SimpleRNN(16, activation="relu"), layers.Dense(10)]
        opt = keras.optimizers.RMSprop(0.01, rho=0.9, epsilon=1e-7)
    else:
        raise ValueError(name)
    model = keras.Sequential(body)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=opt, loss=loss)
    return model


def reset_optimizer(opt):
    for v in opt.variables:
        if "learning_rate" in v.path:
            continue
        v.assign(np.zeros(v.shape, dtype=v.dtype))


def run_config(name, seed, mnist_dir, keras):
    dataset, batch, steps, epochs = BUDGETS[name]
    (x_train, y_train), (x_test, y_test) = load(dataset, mnist_dir)
    keras.utils.set_random_seed(seed)
    model = build(name, keras)
    initial = model.get_weights()
    rng = np.random.default_rng(seed)
    if steps:  # exactly `steps` batches: concatenated shuffles of the training set
        need = steps * batch
        order = np.concatenate(
            [rng.permutation(len(x_train)) for _ in range(-(-need // len(x_train)))]
        )[:need]
        x_fit, y_fit, fit_epochs, shuffle = x_train[order], y_train[order], 1, False
    else:
        x_fit, y_fit, fit_epochs, shuffle = x_train, y_train, epochs, True
        steps = epochs * (len(x_train) // batch)
    t = time.perf_counter()
    model.fit(x_fit[: 4 * batch], y_fit[: 4 * batch], batch_size=batch, epochs=1, verbose=0)
    warmup = time.perf_counter() - t
    model.set_weights(initial)
    reset_optimizer(model.optimizer)
    load_before = os.getloadavg()
    t = time.perf_counter()
    model.fit(x_fit, y_fit, batch_size=batch, epochs=fit_epochs, shuffle=shuffle, verbose=0)
    fit_time = time.perf_counter() - t
    load_after = os.getloadavg()
    logits = model.predict(x_test, batch_size=1000, verbose=0)
    acc = float(np.mean(np.argmax(logits, -1) == y_test))
    return {
        "fit_time_s": fit_time,
        "warmup_fit_time_s": warmup,
        "test_accuracy": acc,
        "steps": int(steps),
        "batch_size": batch,
        "optimizer_iterations": int(np.asarray(model.optimizer.iterations)),
        "seed": seed,
        "jit_compile": bool(getattr(model, "jit_compile", False)),
        "load_average_before_fit": list(load_before),
        "load_average_after_fit": list(load_after),
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist_dir", default=os.path.join(ROOT, "..", "shared", "data", "mnist"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    os.environ["KERAS_BACKEND"] = args.backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    backend = __import__("tensorflow" if args.backend == "tensorflow" else "jax")
    path = os.path.join(args.out, f"keras_baseline_{args.backend}.json")
    try:
        with open(path) as f:
            out = json.load(f)
    except (OSError, ValueError):
        out = {"configs": {}}
    out.update(
        machine={
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "avx512": "avx512f" in open("/proc/cpuinfo").read()
            if os.path.exists("/proc/cpuinfo")
            else None,
            "load_average_start": list(os.getloadavg()),
        },
        versions={
            "python": platform.python_version(),
            "keras": keras.__version__,
            args.backend: backend.__version__,
            "numpy": np.__version__,
        },
        backend=args.backend,
    )
    for name in args.configs:
        print(f"{name}: load {os.getloadavg()[0]:.2f} ...", flush=True)
        result = run_config(name, args.seed, args.mnist_dir, keras)
        print(
            f"{name}: fit {result['fit_time_s']:.1f} s, acc {result['test_accuracy']:.4f}",
            flush=True,
        )
        out["configs"][name] = result
        out["machine"]["load_average_end"] = list(os.getloadavg())
        os.makedirs(args.out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=2, sort_keys=True)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
