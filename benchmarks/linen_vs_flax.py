"""Flax's ``nn.RNN(nn.OptimizedLSTMCell(H))`` against ``jaxrnn.linen.RNN(jaxrnn.LSTM(H))`` in
the same linen model (recurrent layer -> last output -> dense -> softmax cross-entropy ->
Adam), one jitted train step each, timed alternately in one process: W1 and W6
(``benchmarks/workloads.py``). The jaxrnn layer starts from the Flax layer's weights
(``jaxrnn.interop.from_flax``), so both train the same model.

    python benchmarks/linen_vs_flax.py                  # W1 and W6
    python benchmarks/linen_vs_flax.py --workloads W1 --repeats 21
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import workloads  # noqa: E402

import jaxrnn  # noqa: E402
import jaxrnn.linen  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "linen_vs_flax.json")


class Classifier(nn.Module):
    """A recurrent layer, its output at the last step, a dense head."""

    layer: nn.Module
    classes: int

    @nn.compact
    def __call__(self, xs):
        return nn.Dense(self.classes)(self.layer(xs)[:, -1])


def train_step(model, tx):
    def loss(params, xs, labels):
        logits = model.apply({"params": params}, xs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def step(state, xs, labels):
        params, opt = state
        value, grads = jax.value_and_grad(loss)(params, xs, labels)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    return step


def compare(name: str, repeats: int) -> dict:
    w = workloads.WORKLOADS[name]
    xs, labels, _ = workloads.make_batch(w)
    tx = optax.adam(1e-3)
    flax_model = Classifier(nn.RNN(nn.OptimizedLSTMCell(w.hidden)), w.classes)
    ours_model = Classifier(jaxrnn.linen.RNN(jaxrnn.LSTM(w.hidden)), w.classes)
    flax_params = flax_model.init(jax.random.key(0), xs)["params"]
    ours_params = dict(flax_params)
    ours_params["layer"] = jaxrnn.interop.from_flax(
        flax_params["layer"]["cell"], jaxrnn.LSTM(w.hidden)
    )
    runners, first = {}, {}
    for label, model, params in (
        ("flax nn.RNN", flax_model, flax_params),
        ("jaxrnn.linen.RNN", ours_model, ours_params),
    ):
        state = (params, tx.init(params))
        compiled, _ = _common.compile_fn(train_step(model, tx), state, xs, labels)
        runners[label] = _common.Runner(compiled, (state, xs, labels), stateful=True)
        first[label] = float(compiled(state, xs, labels)[1])
    inner = _common.inner_for(_common.rough_time(runners["flax nn.RNN"]), target_s=0.2, cap=20)
    times = _common.time_alternating(runners, repeats=repeats, inner=inner)
    rows = {label: _common.summarize(t) for label, t in times.items()}
    ratio = rows["jaxrnn.linen.RNN"]["median_ms"] / rows["flax nn.RNN"]["median_ms"]
    return {"workload": name, "title": w.title, "first_loss": first, "times": rows, "ratio": ratio}


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "| workload | Flax `nn.RNN` (ms) | `jaxrnn.linen.RNN` (ms) | ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        f, o = r["times"]["flax nn.RNN"], r["times"]["jaxrnn.linen.RNN"]
        lines.append(
            f"| {r['workload']} {r['title']} | {f['median_ms']:.2f} | {o['median_ms']:.2f} "
            f"| {r['ratio']:.2f} |"
        )
    lines += [
        "",
        f"Train step (LSTM, last output, dense, cross-entropy, Adam), medians of alternating "
        f"repeats in one process; {env.get('cpu', '?')}, jax {env.get('jax', '?')}, "
        "`python benchmarks/linen_vs_flax.py`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["W1", "W6"])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    rows = []
    for name in args.workloads:
        rows.append(compare(name, args.repeats))
        print(rows[-1]["workload"], rows[-1]["ratio"], flush=True)
    env = _common.environment()
    _common.write_results(args.out, {"environment": env, "rows": rows}, markdown(rows, env))


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before timing
    main()
