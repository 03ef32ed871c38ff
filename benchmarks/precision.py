"""bfloat16 against float32 train steps of jaxrnn on the six workloads (W1-W6).

    python benchmarks/precision.py                         # all workloads, JSON + markdown
    python benchmarks/precision.py --workloads W1,W2 --out p.json

Variants, compiled and timed alternating in one process (see ``_common``):

* ``float32``: the default (on a CPU, jaxrnn's kernels);
* ``bfloat16``: the cells' ``dtype=jnp.bfloat16`` with the default ``implementation`` (on a
  CPU: the float32 kernels on inputs and weights rounded to bfloat16, state in float32);
* ``bfloat16_fused`` and ``bfloat16_scan``: the same computation as XLA loops
  (``implementation="fused"``, ``"scan"``), which is what runs on GPU and TPU.

Parameters are float32 in every variant (``param_dtype``), the optimizer is the workload's.
The result says which bfloat16 variant is fastest on this machine: on a CPU without native
bfloat16 matmuls the kernels' variant is, which is why ``implementation=None`` chooses it.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import workloads as wl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {
    "float32": (None, None),
    "bfloat16": (jnp.bfloat16, None),
    "bfloat16_fused": (jnp.bfloat16, "fused"),
    "bfloat16_scan": (jnp.bfloat16, "scan"),
}


def run_workload(w: wl.Workload, *, repeats: int, target_s: float, variants) -> dict:
    optimizer = wl.make_optimizer(w)
    batch = wl.make_batch(w)
    runners, info = {}, {}
    for name in variants:
        dtype, implementation = VARIANTS[name]
        init, apply = wl.jaxrnn_model(w, dtype, implementation)
        params = init(jax.random.key(0))
        state = (params, optimizer.init(params))
        step = wl.make_train_step(apply, optimizer)
        compiled, seconds = _common.compile_fn(step, state, *batch, donate_argnums=(0,))
        runners[name] = _common.Runner(compiled, (state, *batch), stateful=True)
        info[name] = {"compile_s": seconds, "memory": _common.memory(compiled)}
        print(f"  {w.name} {name}: compiled in {seconds:.2f} s", flush=True)
    rough = max(_common.rough_time(r, calls=2) for r in runners.values())
    inner = _common.inner_for(rough, target_s)
    times = _common.time_alternating(runners, repeats=repeats, inner=inner)
    for name, seconds in times.items():
        info[name].update(_common.summarize(seconds))
    base = info["float32"]["median_ms"]
    for v in info.values():
        v["ratio_to_float32"] = v["median_ms"] / base
    narrow = {k: v["median_ms"] for k, v in info.items() if k != "float32"}
    return {
        "config": w.__dict__ | {"title": w.title},
        "inner": inner,
        "variants": info,
        "fastest_bfloat16": min(narrow, key=narrow.get),
    }


def markdown(payload: dict) -> str:
    env = payload["env"]
    names = payload["variants"]
    lines = [
        f"Train step in bfloat16 and float32, {env['cpu']} ({env['cpu_count']} cores), "
        f"jax {env['jax']}; median ms per step (ratio to float32).",
        "",
        "| workload | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, r in payload["workloads"].items():
        v = r["variants"]
        cells = [f"{v[n]['median_ms']:.2f} ({v[n]['ratio_to_float32']:.2f})" for n in names]
        lines.append(f"| {name} {r['config']['title']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(wl.WORKLOADS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--repeats-big", type=int, default=3, help="repeats for W6")
    parser.add_argument("--target-s", type=float, default=0.25, help="seconds per repeat")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "precision.json"))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if "float32" not in variants:
        variants.insert(0, "float32")

    env = _common.environment()
    print(f"device {env['device']}, {env['cpu']}", flush=True)
    workloads = {}
    for name in args.workloads.split(","):
        w = wl.WORKLOADS[name]
        big = w.train_gflop() > 10
        print(f"{name}: {w.title}", flush=True)
        workloads[name] = run_workload(
            w,
            repeats=args.repeats_big if big else args.repeats,
            target_s=0.0 if big else args.target_s,
            variants=variants,
        )
    payload = {
        "benchmark": "precision",
        "env": env,
        "protocol": _common.__doc__,
        "variants": variants,
        "workloads": workloads,
    }
    _common.write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
