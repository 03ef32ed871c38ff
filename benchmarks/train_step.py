"""Train-step benchmark: jaxrnn against Flax ``nn.RNN`` on six workloads (W1-W6).

    python benchmarks/train_step.py                       # all workloads, JSON + markdown
    python benchmarks/train_step.py --workloads W1,W6 --out ts.json

Both implementations run in the same process, alternating repeat by repeat (see
``_common``); each workload reports the median step time of each, the ratio jaxrnn / Flax,
the achieved GFLOP/s (model FLOPs, ``Workload.train_gflop``) and the fraction of the peak
float32 matmul throughput measured in the same run (best of a measurement before and after).

W4 and other tiny models are dominated by per-call dispatch: for them the ``jaxrnn_block``
variant runs ``--block`` steps inside one compiled call (``lax.scan`` over a block of batches
on the device: ``jaxrnn.training.steps.make_train_block``, the loop that ``jaxrnn train``
runs with ``steps_per_call``) and reports the time per step; ``flax_block`` wraps Flax in the
same kind of loop.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import workloads as wl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _variants(w: wl.Workload, block: int, flax_lstm_cells: bool):
    """name -> (step function, state, batch args, steps per call)."""
    optimizer = wl.make_optimizer(w)
    key = jax.random.key(0)
    batch = wl.make_batch(w)
    out = {}
    models = {"flax": wl.flax_model(w)}
    if w.cell == "lstm" and flax_lstm_cells:
        models["flax_lstmcell"] = wl.flax_model(w, "plain")
    models["jaxrnn"] = wl.jaxrnn_model(w)
    for name, (init, apply) in models.items():
        params = init(key)
        state = (params, optimizer.init(params))
        out[name] = (wl.make_train_step(apply, optimizer), state, batch, 1)
    if block > 1:
        fn, state, batches = wl.training_block(w, block)
        out["jaxrnn_block"] = (lambda s, b: fn(s, b), state, (batches,), block)
        # The same multi-step loop around Flax, to show what the loop alone is worth.
        blocked = wl.make_batch(w, blocks=block)
        init, apply = models["flax"]
        params = init(key)
        state = (params, optimizer.init(params))
        out["flax_block"] = (wl.make_block_step(apply, optimizer), state, blocked, block)
    return out


def run_workload(w: wl.Workload, *, repeats: int, target_s: float, block: int, flax_cells: bool):
    variants = _variants(w, block, flax_cells)
    runners, info = {}, {}
    for name, (step, state, batch, per_call) in variants.items():
        compiled, seconds = _common.compile_fn(step, state, *batch, donate_argnums=(0,))
        runners[name] = _common.Runner(compiled, (state, *batch), stateful=True)
        info[name] = {
            "compile_s": seconds,
            "memory": _common.memory(compiled),
            "steps_per_call": per_call,
        }
        print(f"  {w.name} {name}: compiled in {seconds:.2f} s", flush=True)
    rough = max(_common.rough_time(r, calls=2) for r in runners.values())
    inner = _common.inner_for(rough, target_s)
    times = _common.time_alternating(runners, repeats=repeats, inner=inner)
    gflop = w.train_gflop()
    for name, seconds in times.items():
        per_step = [s / info[name]["steps_per_call"] for s in seconds]
        stats = _common.summarize(per_step)
        info[name].update(stats)
        info[name]["gflops"] = gflop / (stats["median_ms"] / 1e3)
    return {
        "config": w.__dict__ | {"title": w.title},
        "gflop_per_step": gflop,
        "inner": inner,
        "variants": info,
    }


def _ratios(result: dict, peak_gflops: float) -> None:
    variants = result["variants"]
    flax_ms = variants["flax"]["median_ms"]
    for v in variants.values():
        v["ratio_to_flax"] = v["median_ms"] / flax_ms
        v["peak_fraction"] = v["gflops"] / peak_gflops


def markdown(payload: dict) -> str:
    peak = payload["peak_matmul"]["gflops"]
    lines = [
        f"Train step, {payload['env']['cpu']} ({payload['env']['cpu_count']} cores), "
        f"jax {payload['env']['jax']}, flax {payload['env']['flax']}; "
        f"measured peak float32 matmul {peak:.0f} GFLOP/s.",
        "",
        "| workload | Flax nn.RNN ms | jaxrnn ms | jaxrnn / Flax | jaxrnn GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in payload["workloads"].items():
        v = r["variants"]
        j = v.get("jaxrnn_block", v["jaxrnn"])
        label = f"{name} {r['config']['title']}"
        if "jaxrnn_block" in v:
            label += f" ({v['jaxrnn_block']['steps_per_call']} steps per call)"
        lines.append(
            f"| {label} | {v['flax']['median_ms']:.2f} | {j['median_ms']:.2f} | "
            f"{j['ratio_to_flax']:.2f} | {j['gflops']:.0f} | {j['peak_fraction']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default=",".join(wl.WORKLOADS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--repeats-big", type=int, default=3, help="repeats for W6")
    parser.add_argument("--target-s", type=float, default=0.25, help="seconds per repeat")
    parser.add_argument("--block", type=int, default=50, help="steps per call for W4")
    parser.add_argument("--flax-lstmcell", action="store_true", help="also Flax LSTMCell")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "train_step.json"))
    args = parser.parse_args(argv)

    env = _common.environment()
    print(f"device {env['device']}, {env['cpu']}", flush=True)
    peak_before = _common.peak_matmul()
    workloads = {}
    for name in args.workloads.split(","):
        w = wl.WORKLOADS[name]
        big = w.train_gflop() > 10
        print(f"{name}: {w.title}", flush=True)
        workloads[name] = run_workload(
            w,
            repeats=args.repeats_big if big else args.repeats,
            target_s=0.0 if big else args.target_s,
            block=args.block if name == "W4" else 1,
            flax_cells=args.flax_lstmcell,
        )
    peak_after = _common.peak_matmul()
    peak = max(peak_before["best_gflops"], peak_after["best_gflops"])
    for result in workloads.values():
        _ratios(result, peak)
    payload = {
        "benchmark": "train_step",
        "env": env,
        "peak_matmul": {"gflops": peak, "before": peak_before, "after": peak_after},
        "protocol": _common.__doc__,
        "workloads": workloads,
    }
    _common.write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
