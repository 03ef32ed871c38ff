"""Backprop through long sequences: memory and time of ``rnn(..., remat=...)``.

    python benchmarks/long_sequences.py            # T=4096, JSON + markdown
    python benchmarks/long_sequences.py --quick

Two parts:

* ``timed``: an LSTM train step (gradient of the mean squared output, Adam) at T=4096 on a size
  that runs on this machine, for ``remat`` in ``False`` (keep every step), ``True``
  (recompute each step), and ``k`` (checkpoint every ``k`` steps, nested scan) for a few
  ``k``: compile time, step time (alternating medians) and XLA's memory analysis.
* ``compiled_only``: the same choices on a size whose plain backward pass does not fit in this
  machine's memory (``--big``); only compiled, to read XLA's memory analysis, which shows the
  checkpointed versions fitting.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import jaxrnn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _train(cell, remat):
    optimizer = optax.adam(1e-3)

    def step(state, xs):
        params, opt_state = state

        def loss(p):
            ys, _ = jaxrnn.rnn(cell, p, xs, remat=remat)
            return jnp.mean(ys**2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, optimizer


def _label(remat) -> str:
    return {False: "plain", True: "remat_each_step"}.get(remat, f"checkpoint_every_{remat}")


def measure(steps, hidden, batch, features, remats, *, run: bool, repeats: int):
    cell = jaxrnn.LSTM(hidden)
    params = cell.init(jax.random.key(0), features)
    xs = jax.ShapeDtypeStruct((batch, steps, features), jnp.float32)
    if run:
        xs = jax.random.normal(jax.random.key(1), (batch, steps, features))
    out, runners = {}, {}
    for remat in remats:
        step, optimizer = _train(cell, remat)
        state = jax.tree.map(jnp.copy, (params, optimizer.init(params)))
        if not run:
            state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
        compiled, seconds = _common.compile_fn(step, state, xs, donate_argnums=(0,))
        mem = _common.memory(compiled)
        out[_label(remat)] = {"remat": remat, "compile_s": seconds, "memory": mem}
        print(
            f"  T={steps} H={hidden} B={batch} {_label(remat)}: compile {seconds:.1f} s, "
            f"temp {mem['temp'] / 2**20:.0f} MiB",
            flush=True,
        )
        if run:
            runners[_label(remat)] = _common.Runner(compiled, (state, xs), stateful=True)
    if run:
        times = _common.time_alternating(runners, repeats=repeats, inner=1, warmup=1)
        for name, seconds in times.items():
            out[name].update(_common.summarize(seconds))
        base = out["plain"]
        for entry in out.values():
            entry["time_vs_plain"] = entry["median_ms"] / base["median_ms"]
            entry["temp_vs_plain"] = entry["memory"]["temp"] / base["memory"]["temp"]
    config = {"cell": "LSTM", "T": steps, "H": hidden, "batch": batch, "input": features}
    return {"config": config, "choices": out}


def markdown(payload: dict) -> str:
    lines = []
    t = payload["timed"]
    c = t["config"]
    lines += [
        f"LSTM {c['H']}, input {c['input']}, batch {c['batch']}, T={c['T']}, train step:",
        "",
        "| remat | step ms | vs plain | XLA temp memory | vs plain | compile s |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in t["choices"].items():
        lines.append(
            f"| `{e['remat']}` ({name}) | {e['median_ms']:.0f} | {e['time_vs_plain']:.2f}x | "
            f"{e['memory']['temp'] / 2**20:.0f} MiB | {e['temp_vs_plain']:.2f}x | "
            f"{e['compile_s']:.1f} |"
        )
    big = payload.get("compiled_only")
    if big:
        c = big["config"]
        ram = payload["machine_memory_gib"]
        lines += [
            "",
            f"LSTM {c['H']}, input {c['input']}, batch {c['batch']}, T={c['T']} (compiled only; "
            f"this machine has {ram:.0f} GiB):",
            "",
            "| remat | XLA temp memory | fits |",
            "|---|---|---|",
        ]
        for name, e in big["choices"].items():
            gib = e["memory"]["temp"] / 2**30
            lines.append(
                f"| `{e['remat']}` ({name}) | {gib:.1f} GiB | {'yes' if gib < ram else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def _machine_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--big", default="1024,128", help="H,batch of the compile-only size")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "long_sequences.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.hidden, args.repeats, args.big = 512, 32, 2, ""
    remats = [False, True, 16, 64, 256]
    env = _common.environment()
    timed = measure(
        args.steps, args.hidden, args.batch, args.hidden, remats, run=True, repeats=args.repeats
    )
    payload = {
        "benchmark": "long_sequences",
        "env": env,
        "machine_memory_gib": _machine_memory_gib(),
        "protocol": _common.__doc__,
        "timed": timed,
    }
    if args.big:
        hidden, batch = (int(v) for v in args.big.split(","))
        payload["compiled_only"] = measure(
            args.steps, hidden, batch, hidden, remats, run=False, repeats=0
        )
    _common.write_json(args.out, payload)
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(markdown(payload))
    print(markdown(payload))


if __name__ == "__main__":
    main()
