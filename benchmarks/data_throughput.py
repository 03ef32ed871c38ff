"""Input-pipeline throughput against the training step it feeds: MNIST rows, batch 128.

    python benchmarks/data_throughput.py                   # real MNIST (prepared on first use)
    python benchmarks/data_throughput.py --synthetic       # random uint8 images, same shapes

The grain loaders need ``pip install grain`` (a comparison only: jaxrnn does not use grain).

Loaders, measured alternating repeat by repeat (see ``_common``), each delivering batches of
``inputs`` float32 [128, 28, 28] and ``labels`` int32 [128]:

* ``numpy``: ``jaxrnn.data.BatchIterator`` over the in-memory arrays (what training uses);
* ``numpy_device_put``: the same, plus ``jax.device_put`` of the batch and a block on it;
* ``grain_in_memory``: ``grain.MapDataset`` over the same arrays (shuffle, batch);
* ``grain_data_source``: ``grain.MapDataset`` over ``tfds``' array_record data source, decoding
  each example as it goes (the out-of-memory path), then the same float conversion.

grain runs with ``ReadOptions(num_threads=0, prefetch_buffer_size=0)``: with its default 16
prefetch threads the consumer mostly times the prefetch buffer, and on a 2-core machine those
threads compete with the training step for the same cores.

The consumer is a jitted train step of an LSTM-128 (input 28, 10 classes, softmax cross
entropy, Adam) written here in plain JAX, at batch 128 and at batch 100 (workload W1).
``ratio`` = step time / batch time: how many times faster batches come than the step eats
them: above 1, the loader keeps the step fed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

from jaxrnn import data  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def lstm_train_step(batch_size: int, hidden: int = 128, steps: int = 28, features: int = 28):
    """``(compiled step, state, batch)`` of a plain-JAX LSTM classifier with Adam."""
    k = jax.random.split(jax.random.key(0), 3)
    params = {
        "wx": jax.random.normal(k[0], (features, 4 * hidden)) / np.sqrt(features),
        "wh": jax.random.normal(k[1], (hidden, 4 * hidden)) / np.sqrt(hidden),
        "b": jnp.zeros((4 * hidden,)),
        "wo": jax.random.normal(k[2], (hidden, 10)) / np.sqrt(hidden),
        "bo": jnp.zeros((10,)),
    }
    opt = optax.adam(1e-3)

    def loss_fn(p, x, y):
        xw = jnp.einsum("btf,fg->tbg", x, p["wx"]) + p["b"]  # inputs projected once

        def cell(carry, xw_t):
            c, h = carry
            i, f, g, o = jnp.split(xw_t + h @ p["wh"], 4, axis=-1)
            c = jax.nn.sigmoid(f + 1.0) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (c, h), None

        zeros = jnp.zeros((x.shape[0], hidden))
        (_, h), _ = jax.lax.scan(cell, (zeros, zeros), xw)
        logits = h @ p["wo"] + p["bo"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(state, x, y):
        p, o = state
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, o = opt.update(grads, o, p)
        return (optax.apply_updates(p, updates), o), loss

    state = (params, opt.init(params))
    x = jnp.asarray(np.random.default_rng(0).random((batch_size, steps, features), np.float32))
    y = jnp.asarray(np.arange(batch_size) % 10, jnp.int32)
    compiled, compile_s = _common.compile_fn(step, state, x, y, donate_argnums=(0,))
    return compiled, state, (x, y), compile_s


def time_step(batch_size: int, repeats: int) -> dict:
    compiled, state, (x, y), compile_s = lstm_train_step(batch_size)
    runner = _common.Runner(compiled, (state, x, y), stateful=True)
    inner = _common.inner_for(_common.rough_time(runner))
    times = _common.time_alternating({"step": runner}, repeats=repeats, inner=inner)["step"]
    return {"batch_size": batch_size, "compile_s": compile_s, **_common.summarize(times)}


class _Rows:
    """A random-access source of single examples over the in-memory arrays (for grain)."""

    def __init__(self, arrays):
        self.arrays = arrays

    def __len__(self):
        return len(self.arrays["labels"])

    def __getitem__(self, i):
        return {"inputs": self.arrays["inputs"][i], "labels": self.arrays["labels"][i]}


def _decode(example):
    return {
        "inputs": example["image"].astype(np.float32) * np.float32(1 / 255),
        "labels": np.int32(example["label"]),
    }


def loaders(arrays, batch_size: int, source=None) -> dict:
    """Name -> a zero-argument function returning the next batch."""
    import grain

    # Synchronous reads (no prefetch threads): the timed call does all the work, and no
    # background thread steals the 2 cores from the other loaders or from the train step.
    sync = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    it = data.BatchIterator(arrays, batch_size, seed=0)

    def numpy_device_put():
        return jax.block_until_ready(jax.device_put(next(it)))

    out = {"numpy": lambda: next(it), "numpy_device_put": numpy_device_put}
    g = grain.MapDataset.source(_Rows(arrays)).seed(0).shuffle().repeat()
    g_it = iter(g.batch(batch_size, drop_remainder=True).to_iter_dataset(sync))
    out["grain_in_memory"] = lambda: next(g_it)
    if source is not None:
        d = grain.MapDataset.source(source).seed(0).shuffle().map(_decode).repeat()
        d_it = iter(d.batch(batch_size, drop_remainder=True).to_iter_dataset(sync))
        out["grain_data_source"] = lambda: next(d_it)
    return out


def time_loaders(fns: dict, repeats: int, batches: dict) -> dict:
    """Seconds per batch of each loader, alternating; ``batches[name]`` per repeat."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            n = batches.get(name, batches["default"])
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - start) / n)
    return times


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", action="store_true", help="random images, no MNIST")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: jaxrnn's)")
    parser.add_argument(
        "--mnist_dir",
        default=os.environ.get("JAXRNN_MNIST_DIR")
        or os.path.join(REPO, "..", "shared", "data", "mnist"),
    )
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "data_throughput.json"))
    args = parser.parse_args(argv)

    source, load_s = None, {}
    if args.synthetic:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
        arrays = {
            "inputs": images.astype(np.float32) / 255,
            "lengths": np.full((60000,), 28, np.int32),
            "labels": rng.integers(0, 10, 60000).astype(np.int32),
        }
    else:
        mnist_dir = args.mnist_dir if os.path.isdir(args.mnist_dir) else None
        start = time.perf_counter()
        builder = data.prepare("mnist_rows", data_dir=args.data_dir, mnist_dir=mnist_dir)
        load_s["prepare_or_find"] = time.perf_counter() - start
        start = time.perf_counter()
        arrays = data.load("mnist_rows", "train", data_dir=args.data_dir)
        load_s["load_train"] = time.perf_counter() - start
        source = builder.as_data_source("train")

    fns = loaders(arrays, args.batch_size, source)
    batches = {"default": 200, "grain_in_memory": 20, "grain_data_source": 2}
    times = time_loaders(fns, args.repeats, batches)
    steps = {bs: time_step(bs, args.repeats) for bs in (args.batch_size, 100)}
    step_ms = steps[args.batch_size]["median_ms"]

    results = {}
    for name, seconds in times.items():
        summary = _common.summarize(seconds)
        results[name] = {
            **summary,
            "batches_per_s": 1e3 / summary["median_ms"],
            "examples_per_s": 1e3 * args.batch_size / summary["median_ms"],
            "ratio": step_ms / summary["median_ms"],
        }
    payload = {
        "benchmark": "data_throughput",
        "environment": _common.environment(),
        "dataset": "synthetic" if args.synthetic else "mnist_rows",
        "batch_size": args.batch_size,
        "load_s": load_s,
        "loaders": results,
        "lstm128_train_step": {str(bs): s for bs, s in steps.items()},
        "ratio_definition": "LSTM-128 train step time at the same batch size / time per batch",
        "chosen": "numpy",
    }
    _common.write_json(args.out, payload)
    print(f"LSTM-128 train step, batch {args.batch_size}: {step_ms:.2f} ms (median)")
    for name, r in results.items():
        print(
            f"{name:>18}: {r['batches_per_s']:10.0f} batches/s "
            f"({r['median_ms']:.3f} ms/batch), ratio {r['ratio']:.1f}"
        )
    print(f"wrote {args.out}")
    print(f"median step time at batch 100 (W1): {steps[100]['median_ms']:.2f} ms")
    return payload


if __name__ == "__main__":
    main()
