"""A train step run for a fixed time, for a sampling profiler: where a workload's step goes.

The jitted jaxrnn train step of one workload (``benchmarks/workloads.py``) is compiled, run
once, then called back to back for ``--seconds``; the JSON out holds the median step time, so a
profile can be read as milliseconds per step. Under Linux ``perf``::

    perf record -F 4000 -o w1.data -- python benchmarks/step_profile.py --workload W1
    perf report -i w1.data --sort dso,sym --no-children

XLA:CPU's compiled code shows as ``[unknown]`` or ``[JIT]`` (the projections, the head, the
optimizer and the other fused XLA ops); the kernels' loops are named by their functions in
``_recurrence.so`` (the row loops inlined into ``RunV4``/``RunV3`` and the small matmuls into
``MultiplyAll``), OpenBLAS's by its own (the weights' gradients after the loop).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import workloads as wl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="W1", choices=sorted(wl.WORKLOADS))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--implementation", default=None, help="rnn's implementation (None)")
    parser.add_argument("--dtype", default=None, help="the cells' computation dtype (bfloat16)")
    parser.add_argument("--out", default=None, help="JSON with the step times (optional)")
    args = parser.parse_args(argv)

    w = wl.WORKLOADS[args.workload]
    dtype = jnp.dtype(args.dtype) if args.dtype else None
    init, apply = wl.jaxrnn_model(w, dtype=dtype, implementation=args.implementation)
    optimizer = wl.make_optimizer(w)
    params = init(jax.random.key(0))
    state = (params, optimizer.init(params))
    batch = wl.make_batch(w)
    step = wl.make_train_step(apply, optimizer)
    compiled, _ = _common.compile_fn(step, state, *batch, donate_argnums=(0,))
    state, loss = compiled(state, *batch)
    jax.block_until_ready(loss)
    times = []
    end = time.perf_counter() + args.seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        state, loss = compiled(state, *batch)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    stats = _common.summarize(times)
    print(
        f"{w.name} {w.title} ({args.dtype or 'float32'}): {len(times)} steps, "
        f"median {stats['median_ms']:.3f} ms"
    )
    if args.out:
        _common.write_json(
            args.out,
            {
                "benchmark": "step_profile",
                "env": _common.environment(),
                "workload": w.name,
                "implementation": args.implementation,
                "dtype": args.dtype,
                "steps": len(times),
                **stats,
            },
        )


if __name__ == "__main__":
    main()
