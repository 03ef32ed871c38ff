"""What per-step resets cost: a train step's gradient with and without ``resets``.

    python benchmarks/resets.py                      # JSON + markdown in benchmarks/results/
    python benchmarks/resets.py --cells lstm --rate 0.1 --out r.json

For each cell (``SimpleRNN``, ``LSTM``, ``GRU``, 128 units) and implementation (``scan``,
``fused``, ``kernel``) at one shape (batch 32, T 128, input 32), the same
``jax.value_and_grad`` of ``jaxrnn.rnn`` (a weighted sum of the outputs and the final carry)
is compiled twice, without ``resets`` and with ``resets`` true at a random ``--rate`` of the
steps (2% by default: a new episode every 50 steps on average), and the two are timed
alternating in one process with the implementation's other variants (protocol in
``_common``). The ratio is the cost of the resets.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn import _native  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, STEPS, INPUT, HIDDEN = 32, 128, 32, 128
CELLS = {"simple": jaxrnn.SimpleRNN, "lstm": jaxrnn.LSTM, "gru": jaxrnn.GRU}
IMPLEMENTATIONS = ("scan", "fused", "kernel")
TARGETS = {"simple": "jaxrnn_simple", "lstm": "jaxrnn_lstm", "gru": "jaxrnn_gru"}


def train_step(cell, implementation, resets):
    """``(params, xs) -> (loss, grads)``: the gradient of ``rnn``'s outputs and final carry."""
    weights = jax.random.normal(jax.random.key(2), (BATCH, STEPS, HIDDEN)) / HIDDEN

    def loss(params, xs):
        ys, carry = jaxrnn.rnn(cell, params, xs, resets=resets, implementation=implementation)
        return jnp.sum(ys * weights) + sum(jnp.sum(c * c) for c in jax.tree.leaves(carry))

    return jax.value_and_grad(loss)


def time_alternating(runners, *, repeats, inner, warmup=2):
    """``_common.time_alternating``, and the process's CPU time per call beside the wall time
    (``{name: (wall seconds, cpu seconds)}`` per repeat): on a shared machine the wall time of
    a step mostly measures the other processes, the CPU time it used much less so."""
    for r in runners.values():
        for _ in range(warmup):
            r.call()
        r.block()
    wall = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                r.call()
            r.block()
            wall[name].append((time.perf_counter() - start) / inner)
            cpu[name].append((time.process_time() - start_cpu) / inner)
    return wall, cpu


def run_cell(name, *, rate, repeats, target_s):
    cell = CELLS[name](HIDDEN)
    params = cell.init(jax.random.key(0), INPUT)
    xs = jax.random.normal(jax.random.key(1), (BATCH, STEPS, INPUT))
    resets = jnp.asarray(np.random.default_rng(0).random((BATCH, STEPS)) < rate)
    runners, info = {}, {}
    for implementation in IMPLEMENTATIONS:
        for label, r in (("none", None), ("resets", resets)):
            step = train_step(cell, implementation, r)
            compiled, seconds = _common.compile_fn(step, params, xs)
            key = f"{implementation}/{label}"
            runners[key] = _common.Runner(compiled, (params, xs))
            # The kernel variants must run the kernels (a fallback to XLA would hide them).
            text = compiled.as_text()
            info[key] = {"compile_s": seconds, "kernels": f"{TARGETS[name]}_backward" in text}
            print(f"  {name} {key}: compiled in {seconds:.2f} s", flush=True)
    inner = _common.inner_for(max(_common.rough_time(r, 2) for r in runners.values()), target_s)
    wall, cpu = time_alternating(runners, repeats=repeats, inner=inner)
    for key in runners:
        info[key].update(_common.summarize(wall[key]))
        info[key]["cpu"] = _common.summarize(cpu[key])

    def ratios(of):
        return {i: of(f"{i}/resets") / of(f"{i}/none") for i in IMPLEMENTATIONS}

    return {
        "cell": repr(cell),
        "resets_true": int(resets.sum()),
        "inner": inner,
        "resets_over_none": ratios(lambda k: info[k]["median_ms"]),
        "resets_over_none_min": ratios(lambda k: info[k]["min_ms"]),
        "resets_over_none_cpu": ratios(lambda k: info[k]["cpu"]["median_ms"]),
        "timings": info,
    }


def markdown(payload: dict) -> str:
    env, c = payload["env"], payload["config"]
    lines = [
        f"Gradient of `jaxrnn.rnn` (batch {c['batch']}, T {c['steps']}, input {c['input']}, "
        f"{c['hidden']} units), with `resets` true at {c['rate']:.0%} of the steps (random) "
        f"and without, timed alternating; {env['cpu']} ({env['cpu_count']} cores), "
        f"jax {env['jax']}, load average {env['load_average'][0]:.1f} at the start (a shared "
        "machine); wall ms per step, median (min-max), and the process's CPU ms per step "
        "(median), with the ratios resets / none of the wall medians, wall minima and CPU "
        "medians. `python benchmarks/resets.py`.",
        "",
        "| cell | implementation | no resets | resets | CPU ms: none, resets "
        "| ratio (wall median) | (wall min) | (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in payload["results"].items():
        t = r["timings"]
        for i in IMPLEMENTATIONS:

            def cell(label, i=i, t=t):
                v = t[f"{i}/{label}"]
                return f"{v['median_ms']:.2f} ({v['min_ms']:.2f}-{v['max_ms']:.2f})"

            cpu = [t[f"{i}/{label}"]["cpu"]["median_ms"] for label in ("none", "resets")]
            ratios = [r[k][i] for k in ("resets_over_none", "resets_over_none_min")]
            ratios.append(r["resets_over_none_cpu"][i])
            lines.append(
                f"| {name} | {i} | {cell('none')} | {cell('resets')} | {cpu[0]:.2f}, "
                f"{cpu[1]:.2f} | " + " | ".join(f"{x:.2f}" for x in ratios) + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--rate", type=float, default=0.02, help="fraction of steps that reset")
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--target-s", type=float, default=0.05, help="seconds per repeat")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "resets.json"))
    args = parser.parse_args(argv)
    if _native.unavailable_reason() is not None:
        raise SystemExit(f"this benchmark times the kernels: {_native.unavailable_reason()}")
    env = _common.environment()
    print(f"device {env['device']}, {env['cpu']}", flush=True)
    results = {
        name: run_cell(name, rate=args.rate, repeats=args.repeats, target_s=args.target_s)
        for name in args.cells.split(",")
    }
    payload = {
        "benchmark": "resets",
        "env": env,
        "protocol": _common.__doc__,
        "config": {
            "batch": BATCH,
            "steps": STEPS,
            "input": INPUT,
            "hidden": HIDDEN,
            "rate": args.rate,
            "command": "python benchmarks/resets.py " + " ".join(argv or sys.argv[1:]),
        },
        "results": results,
    }
    _common.write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
