"""``lax.scan`` (with ``unroll``) against a Python-unrolled loop, per cell, length and size.

    python benchmarks/scan_vs_unroll.py --quick        # under a minute (the CI smoke test)
    python benchmarks/scan_vs_unroll.py                # the committed subset (see GRIDS)
    python benchmarks/scan_vs_unroll.py --grid full    # every cell x T x H (about 35 min)

For each cell (tanh RNN, LSTM, GRU), length ``T`` and hidden size ``H`` (input size ``H``,
batch ``--batch``), the variants ``static`` (``jaxrnn.static_rnn``, a Python loop),
``kernel`` (``rnn(implementation="kernel")``: jaxrnn's CPU kernels, where they are built and the
device is a CPU) and ``unroll_u``, ``rnn(implementation="fused", unroll=u)`` (``lax.scan`` with
the hoisted projection and hand-written backward pass) for ``u`` in 1, 2, 4, 8, 16, T, are
compiled and timed alternating with each other, in two modes: ``fwd`` (outputs of the whole
sequence) and ``train`` (loss = mean of squared outputs, gradient, Adam update of the cell's
parameters, state donated).

Compile time is reported apart from the step time, with XLA's memory analysis. A compile-time
budget keeps the run from hanging: a variant whose compile time at the previous (4x shorter)
length, scaled linearly, would exceed ``--compile-budget`` seconds is skipped, and the skip is
recorded with its reason.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import jaxrnn  # noqa: E402
import jaxrnn._native  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CELLS = {
    "rnn": lambda h: jaxrnn.SimpleRNN(h),
    "lstm": lambda h: jaxrnn.LSTM(h),
    "gru": lambda h: jaxrnn.GRU(h),
}
UNROLLS = (1, 2, 4, 8, 16, "T")

GRIDS = {
    # The whole grid: 3 cells x 4 lengths x 3 sizes x 7 variants x 2 modes.
    "full": {"cells": list(CELLS), "T": [16, 64, 256, 1024], "H": [32, 128, 512]},
    # What the committed results hold: the full grid is hours of a shared 2-core machine. This
    # subset keeps every cell, variant and mode; T in 16..256 at H=128, and H in 32..512 at T=64.
    "default": {
        "cells": list(CELLS),
        "T": [16, 64, 256],
        "H": [128],
        "extra": [(64, 32), (64, 512)],
    },
    "quick": {"cells": list(CELLS), "T": [8], "H": [16], "unrolls": (1, "T")},
}


def _variants(steps: int, unrolls) -> list[tuple[str, object]]:
    out, seen = [("static", None)], set()
    if _kernels():
        out.append(("kernel", 1))
    for u in unrolls:
        value = steps if u == "T" else u
        if value > steps or value in seen:
            continue
        seen.add(value)
        out.append((f"unroll_{'T' if value == steps else value}", value))
    return out


def _kernels() -> bool:
    return jax.default_backend() == "cpu" and jaxrnn._native.unavailable_reason() is None


def _functions(cell, variant: str, unroll):
    def run(params, xs):
        if variant == "static":
            return jaxrnn.static_rnn(cell, params, xs)[0]
        implementation = "kernel" if variant == "kernel" else "fused"
        return jaxrnn.rnn(cell, params, xs, unroll=unroll, implementation=implementation)[0]

    optimizer = optax.adam(1e-3)

    def train(state, xs):
        params, opt_state = state
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(run(p, xs) ** 2))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return run, train, optimizer


def run_group(cell_name, steps, hidden, batch, mode, unrolls, args, compile_history):
    cell = CELLS[cell_name](hidden)
    key = jax.random.key(0)
    params = cell.init(key, hidden)
    xs = jax.device_put(
        np.random.default_rng(0).normal(size=(batch, steps, hidden)).astype(np.float32)
    )
    runners, entries = {}, {}
    for variant, unroll in _variants(steps, unrolls):
        entry = {
            "cell": cell_name,
            "T": steps,
            "H": hidden,
            "batch": batch,
            "mode": mode,
            "variant": variant,
            "unroll": unroll,
        }
        entries[variant] = entry
        history_key = (cell_name, hidden, mode, variant.replace(f"_{steps}", "_T"))
        previous = compile_history.get(history_key)
        if previous is not None and previous[0] * steps / previous[1] > args.compile_budget:
            entry["skipped"] = (
                f"compile budget: took {previous[0]:.1f} s at T={previous[1]}, projected "
                f"{previous[0] * steps / previous[1]:.0f} s > {args.compile_budget:.0f} s"
            )
            print(f"  skip {cell_name} T={steps} H={hidden} {mode} {variant}", flush=True)
            continue
        run, train, optimizer = _functions(cell, variant, unroll)
        if mode == "fwd":
            compiled, seconds = _common.compile_fn(run, params, xs)
            runners[variant] = _common.Runner(compiled, (params, xs))
        else:
            # Each variant owns its state: the train step donates (deletes) its input state.
            state = jax.tree.map(jnp.copy, (params, optimizer.init(params)))
            compiled, seconds = _common.compile_fn(train, state, xs, donate_argnums=(0,))
            runners[variant] = _common.Runner(compiled, (state, xs), stateful=True)
        compile_history[history_key] = (seconds, steps)
        entry["compile_s"] = seconds
        entry["memory"] = _common.memory(compiled)
    if runners:
        rough = max(_common.rough_time(r, calls=2) for r in runners.values())
        inner = _common.inner_for(rough, args.target_s)
        times = _common.time_alternating(runners, repeats=args.repeats, inner=inner)
        for variant, seconds in times.items():
            entries[variant].update(_common.summarize(seconds), inner=inner)
        base = entries.get("unroll_1", {}).get("median_ms")
        for entry in entries.values():
            if base and "median_ms" in entry:
                entry["speedup_vs_unroll_1"] = base / entry["median_ms"]
    line = " ".join(
        f"{v}={e['median_ms']:.2f}" if "median_ms" in e else f"{v}=skip" for v, e in entries.items()
    )
    print(f"  {cell_name} T={steps} H={hidden} {mode} (ms): {line}", flush=True)
    return list(entries.values())


def markdown(payload: dict) -> str:
    """One table per mode: rows (cell, T, H), columns the variants, cells ms (best bold)."""
    entries = payload["entries"]
    variants = []
    for e in entries:
        name = e["variant"] if not e["variant"].startswith("unroll_") else e["variant"]
        if name not in variants:
            variants.append(name)
    order = ["static", "kernel"] + [f"unroll_{u}" for u in ("1", "2", "4", "8", "16", "T")]
    variants = [v for v in order if v in variants]
    out = []
    for mode in ("fwd", "train"):
        rows = {}
        for e in entries:
            if e["mode"] == mode:
                rows.setdefault((e["cell"], e["T"], e["H"]), {})[e["variant"]] = e
        if not rows:
            continue
        out += [
            f"**{mode}** (median ms per call; bold: fastest; `-`: skipped or not applicable)",
            "",
            "| cell | T | H | " + " | ".join(variants) + " |",
            "|---|---|---|" + "---|" * len(variants),
        ]
        for (cell, steps, hidden), row in rows.items():
            timed = {v: e["median_ms"] for v, e in row.items() if "median_ms" in e}
            best = min(timed, key=timed.get) if timed else None
            cells = []
            for v in variants:
                if v not in timed:
                    cells.append("-")
                else:
                    text = f"{timed[v]:.2f}"
                    cells.append(f"**{text}**" if v == best else text)
            out.append(f"| {cell} | {steps} | {hidden} | " + " | ".join(cells) + " |")
        out.append("")
    out.append(
        "`kernel`: jaxrnn's CPU kernels; `unroll_u`: `lax.scan` (the fused XLA loop) with "
        "`unroll=u`; `static`: a Python loop."
    )
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smoke-test grid (~1 min)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="default")
    parser.add_argument("--cells", help="comma-separated subset of rnn,lstm,gru")
    parser.add_argument("--modes", default="fwd,train")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target-s", type=float, default=0.05, help="seconds per repeat")
    parser.add_argument("--compile-budget", type=float, default=60.0, help="seconds")
    parser.add_argument("--out", default=None, help="JSON path (markdown beside it)")
    args = parser.parse_args(argv)
    grid_name = "quick" if args.quick else args.grid
    grid = GRIDS[grid_name]
    if args.quick:
        args.repeats, args.target_s = min(args.repeats, 3), min(args.target_s, 0.02)
    out = args.out or os.path.join(HERE, "results", f"scan_vs_unroll_{grid_name}.json")
    cells = args.cells.split(",") if args.cells else grid["cells"]
    shapes = [(t, h) for t in grid["T"] for h in grid["H"]] + list(grid.get("extra", []))
    shapes.sort()
    unrolls = grid.get("unrolls", UNROLLS)

    env = _common.environment()
    print(f"device {env['device']}, grid {grid_name}", flush=True)
    entries, history = [], {}
    payload = {
        "benchmark": "scan_vs_unroll",
        "env": env,
        "grid": {
            "name": grid_name,
            "cells": cells,
            "shapes_T_H": shapes,
            "unrolls": [str(u) for u in unrolls],
            "modes": args.modes.split(","),
            "batch": args.batch,
            "input_size": "H",
            "full_grid": grid_name == "full",
            "note": "run with --grid full for the whole grid" if grid_name != "full" else "",
        },
        "protocol": _common.__doc__,
        "settings": {
            "repeats": args.repeats,
            "target_s": args.target_s,
            "compile_budget_s": args.compile_budget,
            # The "kernel" variant runs where jaxrnn's CPU kernels are built (on a CPU);
            # every other variant is XLA's loop.
            "cpu_kernels": _kernels(),
        },
        "complete": False,
        "entries": entries,
    }
    for cell_name in cells:
        for steps, hidden in shapes:
            for mode in args.modes.split(","):
                entries += run_group(
                    cell_name, steps, hidden, args.batch, mode, unrolls, args, history
                )
                _common.write_json(out, payload)  # after every group: a partial run is usable
    payload["complete"] = True
    _common.write_json(out, payload)
    with open(os.path.splitext(out)[0] + ".md", "w") as f:
        f.write(markdown(payload))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
