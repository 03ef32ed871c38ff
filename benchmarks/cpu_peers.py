"""jaxrnn beside its peers on a CPU, W1-W6 in one run: Flax ``nn.RNN``, Equinox cells under
``lax.scan``, a plain JAX ``lax.scan`` step and PyTorch ``nn.LSTM``/``nn.RNN`` (eager, oneDNN).

    python benchmarks/cpu_peers.py                       # all workloads, JSON + markdown
    python benchmarks/cpu_peers.py --workloads W1,W3 --out peers.json

The JAX models run in this process, alternating repeat by repeat (``_common``); PyTorch runs
in processes of its own (its thread pool and JAX's would compete), one just before and one just
after each workload's JAX measurement, so that drift of a shared machine shows as a difference
between its two medians; the ratio takes the faster. Every model trains the same workload of
``workloads.py`` (same shapes, last step's output or the final state for the masked W5, dense
head, softmax cross-entropy, Adam or RMSprop) from its own initialization. Equinox (``pip
install equinox``) and PyTorch (``pip install torch``; its CPU build: ``--index-url
https://download.pytorch.org/whl/cpu``) are optional: a missing one is left out of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HERE = os.path.dirname(os.path.abspath(__file__))
TITLES = {
    "jaxrnn": "jaxrnn",
    "torch": "PyTorch eager",
    "flax": "Flax nn.RNN",
    "equinox": "Equinox + scan",
    "jax_scan": "plain JAX scan",
}


# ----------------------------------------------------------------------------- JAX models


def _gate_math(cell, z, c):
    """A step's new ``(h, c)`` from the pre-activations ``z`` ``[B, gates * H]`` (LSTM: i, f,
    g, o as PyTorch's and Flax's order) and the cell state (None but for the LSTM)."""
    import jax
    import jax.numpy as jnp

    if cell == "lstm":
        i, f, g, o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c
    return (jnp.tanh(z) if cell == "tanh" else jax.nn.relu(z)), None


def jax_scan_model(w):
    """``(init, apply)``: the step written out in JAX under a time-major ``lax.scan``, each
    step's input and recurrent products in its body; every step's output only where it is
    used (the backward direction of W2). Of the forms tried at W1 on a CPU, the fastest
    (the input projection hoisted out of the loop took 1.15x its time, every step's output
    kept besides 1.34x)."""
    import jax
    import jax.numpy as jnp

    gates, hidden = w.gates, w.hidden
    dirs = 2 if w.bidirectional else 1

    def init(key):
        keys = jax.random.split(key, 2 * dirs + 1)
        glorot = jax.nn.initializers.glorot_uniform()
        layers = [
            {
                "w_i": glorot(keys[2 * d], (w.input, gates * hidden)),
                "w_h": jax.nn.initializers.orthogonal()(keys[2 * d + 1], (hidden, gates * hidden)),
                "b": jnp.zeros((gates * hidden,)),
            }
            for d in range(dirs)
        ]
        head = {"w": glorot(keys[-1], (dirs * hidden, w.classes)), "b": jnp.zeros((w.classes,))}
        return {"layers": layers, "head": head}

    def run(p, xs, lengths, reverse=False, outputs=False):
        """The final h, and every step's h ``[T, B, H]`` where ``outputs``."""
        h0 = jnp.zeros((w.batch, hidden))

        def step(carry, x):
            h, c, t = carry
            z = x @ p["w_i"] + p["b"] + h @ p["w_h"]
            new_h, new_c = _gate_math(w.cell, z, c)
            if lengths is not None:
                valid = (t < lengths)[:, None]
                new_h = jnp.where(valid, new_h, h)
                new_c = jnp.where(valid, new_c, c) if c is not None else None
            return (new_h, new_c, t + 1), (new_h if outputs else None)

        c0 = h0 if w.cell == "lstm" else None
        xs = jnp.swapaxes(xs, 0, 1)
        (h, _, _), ys = jax.lax.scan(step, (h0, c0, 0), xs, reverse=reverse)
        return h, ys

    def apply(params, xs, lengths):
        if w.bidirectional:
            forward, _ = run(params["layers"][0], xs, None)
            _, backward = run(params["layers"][1], xs, None, reverse=True, outputs=True)
            features = jnp.concatenate([forward, backward[-1]], axis=-1)
        else:
            features, _ = run(params["layers"][0], xs, lengths if w.masked else None)
        return features @ params["head"]["w"] + params["head"]["b"]

    return init, apply


def equinox_model(w):
    """``(init, apply)`` with Equinox's cells (``eqx.nn.LSTMCell``; a tanh/relu cell of two
    ``eqx.nn.Linear`` where Equinox has none), one sequence under ``lax.scan``, ``jax.vmap``
    over the batch: Equinox's way."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class SimpleCell(eqx.Module):
        input_linear: eqx.nn.Linear
        hidden_linear: eqx.nn.Linear

        def __init__(self, input_size, hidden_size, *, key):
            k1, k2 = jax.random.split(key)
            self.input_linear = eqx.nn.Linear(input_size, hidden_size, key=k1)
            self.hidden_linear = eqx.nn.Linear(hidden_size, hidden_size, use_bias=False, key=k2)

        def __call__(self, x, h):
            z = self.input_linear(x) + self.hidden_linear(h)
            return jnp.tanh(z) if w.cell == "tanh" else jax.nn.relu(z)

    def make_cell(key):
        if w.cell == "lstm":
            return eqx.nn.LSTMCell(w.input, w.hidden, key=key)
        return SimpleCell(w.input, w.hidden, key=key)

    class Classifier(eqx.Module):
        cells: list
        head: eqx.nn.Linear

        def __init__(self, key):
            keys = jax.random.split(key, 3)
            self.cells = [make_cell(keys[d]) for d in range(2 if w.bidirectional else 1)]
            features = w.hidden * len(self.cells)
            self.head = eqx.nn.Linear(features, w.classes, key=keys[2])

        def _run(self, cell, xs, length, reverse=False):
            """The final state's h and every step's h ``[T, H]``."""
            zeros = jnp.zeros((w.hidden,))
            state = (zeros, zeros) if w.cell == "lstm" else zeros

            def hidden(state):
                return state[0] if w.cell == "lstm" else state

            def step(carry, inputs):
                state, t = carry
                new = cell(inputs, state)
                if length is not None:
                    new = jax.tree.map(lambda n, o: jnp.where(t < length, n, o), new, state)
                return (new, t + 1), hidden(new)

            (state, _), ys = jax.lax.scan(step, (state, 0), xs, reverse=reverse)
            return hidden(state), ys

        def __call__(self, xs, length):
            h, _ = self._run(self.cells[0], xs, length if w.masked else None)
            features = [h]
            if w.bidirectional:
                _, backward = self._run(self.cells[1], xs, None, reverse=True)
                features.append(backward[-1])
            return self.head(jnp.concatenate(features))

    def init(key):
        params, _ = eqx.partition(Classifier(key), eqx.is_array)
        return params

    static = eqx.partition(Classifier(jax.random.key(0)), eqx.is_array)[1]

    def apply(params, xs, lengths):
        model = eqx.combine(params, static)
        lengths = jnp.zeros((xs.shape[0],), jnp.int32) if lengths is None else lengths
        return jax.vmap(model)(xs, lengths)

    return init, apply


def _jax_models():
    """name -> model builder (``workloads.py``'s ``(init, apply)`` form); Equinox where it is
    installed."""
    import workloads as wl

    models = {"jaxrnn": wl.jaxrnn_model, "flax": wl.flax_model, "jax_scan": jax_scan_model}
    try:
        import equinox  # noqa: F401
    except ImportError:
        print("equinox is not installed: left out", flush=True)
    else:
        models["equinox"] = equinox_model
    return models


def _time_jax(w, models, repeats, target_s):
    """``_common.summarize`` of each JAX model's train step on ``w``, alternating."""
    import _common
    import jax
    import workloads as wl

    optimizer = wl.make_optimizer(w)
    batch = wl.make_batch(w)
    runners = {}
    for variant, model in models.items():
        init, apply = model(w)
        params = init(jax.random.key(0))
        state = (params, optimizer.init(params))
        step = wl.make_train_step(apply, optimizer)
        compiled, seconds = _common.compile_fn(step, state, *batch, donate_argnums=(0,))
        runners[variant] = _common.Runner(compiled, (state, *batch), stateful=True)
        print(f"  {w.name} {variant}: compiled in {seconds:.1f} s", flush=True)
    rough = max(_common.rough_time(r, calls=2) for r in runners.values())
    inner = _common.inner_for(rough, target_s)
    big = w.train_gflop() > 10
    times = _common.time_alternating(runners, repeats=3 if big else repeats, inner=inner)
    results = {v: _common.summarize(s) for v, s in times.items()}
    print(
        f"{w.name}: " + ", ".join(f"{v} {s['median_ms']:.2f} ms" for v, s in results.items()),
        flush=True,
    )
    return results


# ---------------------------------------------------------------------------------- PyTorch


def _torch_step(w):
    """PyTorch's eager train step for ``w``: a function of no arguments."""
    import numpy as np
    import torch

    rnn_class = torch.nn.LSTM if w.cell == "lstm" else torch.nn.RNN
    extra = {} if w.cell == "lstm" else {"nonlinearity": w.cell}
    rnn = rnn_class(w.input, w.hidden, batch_first=True, bidirectional=w.bidirectional, **extra)
    head = torch.nn.Linear(w.hidden * (2 if w.bidirectional else 1), w.classes)
    params = [*rnn.parameters(), *head.parameters()]
    opt_class = torch.optim.RMSprop if w.optimizer == "rmsprop" else torch.optim.Adam
    optimizer = opt_class(params, lr=1e-3)
    rng = np.random.default_rng(0)
    xs = torch.from_numpy(rng.normal(size=(w.batch, w.steps, w.input)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, w.classes, size=w.batch)).long()
    lengths = torch.from_numpy(rng.integers(w.min_length, w.steps + 1, size=w.batch))

    def step():
        optimizer.zero_grad(set_to_none=True)
        if w.masked:
            packed = torch.nn.utils.rnn.pack_padded_sequence(
                xs, lengths, batch_first=True, enforce_sorted=False
            )
            _, (h, _) = rnn(packed)
            features = h[-1]
        else:
            features = rnn(xs)[0][:, -1]
        loss = torch.nn.functional.cross_entropy(head(features), labels)
        loss.backward()
        optimizer.step()

    return step


def _torch_half(names, repeats, target_s):
    """Median ms per train step of PyTorch's eager step for each workload (run in a process of
    its own: ``--torch``)."""
    import torch
    import workloads as wl

    torch.set_num_threads(os.cpu_count() or 1)
    results = {}
    for name in names:
        w = wl.WORKLOADS[name]
        step = _torch_step(w)
        for _ in range(2):
            step()
        start = time.perf_counter()
        step()
        inner = max(1, min(200, round(target_s / (time.perf_counter() - start))))
        times = []
        for _ in range(3 if w.train_gflop() > 10 else repeats):
            start = time.perf_counter()
            for _ in range(inner):
                step()
            times.append((time.perf_counter() - start) / inner * 1e3)
        results[name] = {
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "repeats": len(times),
        }
        print(f"{name}: torch {results[name]['median_ms']:.2f} ms", flush=True)
    return {"torch_version": torch.__version__, "results": results}


def _run_torch(names, repeats, target_s):
    """The PyTorch half in a child process; None where PyTorch is not installed."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--torch",
        "--workloads",
        ",".join(names),
        "--repeats",
        str(repeats),
        "--target-s",
        str(target_s),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(f"PyTorch left out: {done.stderr.strip().splitlines()[-1:]}", flush=True)
        return None
    print(done.stdout, end="", flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- report


def markdown(payload):
    env = payload["env"]
    peak = payload["peak_matmul"]
    columns = [
        v
        for v in ("jaxrnn", "torch", "flax", "equinox", "jax_scan")
        if any(v in r for r in payload["workloads"].values())
    ]
    lines = [
        f"One train step, ms (median), {env['cpu']} ({env['cpu_count']} cores, "
        f"{payload['vector_isa']}), jax {env['jax']}, flax {env['flax']}"
        + (f", equinox {payload['equinox']}" if payload.get("equinox") else "")
        + (f", torch {payload['torch']}" if payload.get("torch") else "")
        + f"; peak float32 matmul (JAX, 2048^2) {peak:.0f} GFLOP/s. PyTorch: a process "
        "before and one after each workload's JAX models (both medians shown; the ratio takes "
        "the faster).",
        "",
        "| workload | "
        + " | ".join(TITLES[c] for c in columns)
        + " | best peer | best peer / jaxrnn | jaxrnn % of peak |",
        "|---|" + "---|" * (len(columns) + 3),
    ]
    for name, row in payload["workloads"].items():
        cells, peers = [], {}
        for c in columns:
            if c not in row:
                cells.append("-")
                continue
            if c == "torch":
                ms = sorted(row["torch"])
                cells.append(" / ".join(f"{m:.3g}" for m in row["torch"]))
                peers[c] = ms[0]
            else:
                cells.append(f"{row[c]['median_ms']:.3g}")
                if c != "jaxrnn":
                    peers[c] = row[c]["median_ms"]
        best = min(peers, key=peers.get)
        ours = row["jaxrnn"]["median_ms"]
        gflop = payload["gflop"][name]
        lines.append(
            f"| {name} {payload['titles'][name]} | "
            + " | ".join(cells)
            + f" | {TITLES[best]} | {peers[best] / ours:.2f} | {gflop / ours * 1e3 / peak:.0%} |"
        )
    return "\n".join(lines) + "\n"


def _vector_isa():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    for flag, name in (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")):
        if flag in flags:
            return name if name != "AMX" else "AVX-512 and AMX"
    return "no AVX2"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="W1,W2,W3,W4,W5,W6")
    parser.add_argument("--repeats", type=int, default=7, help="repeats (W6: 3)")
    parser.add_argument("--target-s", type=float, default=0.25, help="seconds per repeat")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cpu_peers_w1_w6.json"))
    parser.add_argument("--torch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    if args.torch:
        print(json.dumps(_torch_half(names, args.repeats, args.target_s)))
        return

    import _common
    import workloads as wl

    env = _common.environment()
    peak = _common.peak_matmul()["best_gflops"]
    models = _jax_models()
    workloads, torch_runs = {}, []
    for name in names:
        before = _run_torch([name], args.repeats, args.target_s)
        row = _time_jax(wl.WORKLOADS[name], models, args.repeats, args.target_s)
        after = _run_torch([name], args.repeats, args.target_s)
        if before and after:
            row["torch"] = [t["results"][name]["median_ms"] for t in (before, after)]
            torch_runs += [before, after]
        workloads[name] = row
    peak = max(peak, _common.peak_matmul()["best_gflops"])
    try:
        import equinox

        eqx_version = equinox.__version__
    except ImportError:
        eqx_version = None
    payload = {
        "env": env,
        "vector_isa": _vector_isa(),
        "command": "python benchmarks/cpu_peers.py " + " ".join(argv or sys.argv[1:]),
        "peak_matmul": peak,
        "equinox": eqx_version,
        "torch": torch_runs[0]["torch_version"] if torch_runs else None,
        "titles": {n: wl.WORKLOADS[n].title for n in names},
        "gflop": {n: wl.WORKLOADS[n].train_gflop() for n in names},
        "torch_runs": torch_runs,
        "workloads": workloads,
    }
    _common.write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
