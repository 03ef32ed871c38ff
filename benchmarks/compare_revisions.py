"""This checkout against a base revision, alternately in one process: the gradient of a
train-step loss (``rnn`` -> last valid output -> dense -> softmax cross-entropy, forward and
backward, jitted) at W1, W5 and W6 (``benchmarks/workloads.py``), through
``implementation="fused"`` (the XLA loops) and ``implementation=None`` (on a CPU: the kernels).

The base revision's ``jaxrnn/`` is exported (``git archive``) into a temporary directory as a
package named ``jaxrnn_base`` (its imports rewritten), with this checkout's compiled kernels;
it reuses this checkout's registration of the kernels (same FFI target names) instead of
registering its own. Both versions' steps take turns, repeat after repeat, so that a load on
the machine shifts both alike; the ratio is this checkout's median over the base's, and the
spread the range of the per-repeat ratios.

    python benchmarks/compare_revisions.py --base 826d634
    python benchmarks/compare_revisions.py --base 826d634 --workloads W1 --repeats 41
"""

from __future__ import annotations

import argparse
import glob
import importlib
import io
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import workloads  # noqa: E402

import jaxrnn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "results", "compare_revisions.json")
IMPLEMENTATIONS = {"fused": "fused", "kernel": None}
# Variants timed on request (--variants): an LSTM variant, or another cell, at W1's shapes.
VARIANTS = {
    "W1-gru": {"cell": "gru"},
    "W1-peepholes": {"peepholes": True},
    "W1-proj64": {"proj_size": 64},
    "W1-tf1": {"proj_size": 64, "peepholes": True, "cell_clip": 3.0, "proj_clip": 2.0},
}


def export_base(rev: str, into: str):
    """Import ``rev``'s ``jaxrnn`` as the package ``jaxrnn_base`` (exported under ``into``)."""
    archive = subprocess.run(
        ["git", "archive", rev, "jaxrnn"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    package = os.path.join(into, "jaxrnn_base")
    os.rename(os.path.join(into, "jaxrnn"), package)
    pattern = re.compile(r"\bjaxrnn(?=[.\s])")
    for path in glob.glob(os.path.join(package, "**", "*.py"), recursive=True):
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(pattern.sub("jaxrnn_base", text))
    for library in glob.glob(os.path.join(os.path.dirname(jaxrnn.__file__), "_recurrence*.so")):
        shutil.copy(library, package)
    sys.path.insert(0, into)
    base = importlib.import_module("jaxrnn_base")
    native = importlib.import_module("jaxrnn_base._native")
    # One registration of the kernels (this checkout's), and the base's layout of what they
    # keep computed from the same thread count.
    loaded = jaxrnn._native.enabled()
    native.kernel_status = lambda: jaxrnn._native.kernel_status()
    threads = getattr(jaxrnn._native, "max_threads", None)
    native._max_threads = threads() if threads else jaxrnn._native._max_threads
    return base, loaded


def cell_for(package, name: str, w: workloads.Workload):
    options = dict(VARIANTS.get(name, {}))
    kind = options.pop("cell", w.cell)
    if kind == "lstm":
        return package.LSTM(w.hidden, **options)
    if kind == "gru":
        return package.GRU(w.hidden)
    return package.SimpleRNN(w.hidden, activation=kind)


def gradient_fn(package, name: str, w: workloads.Workload, implementation):
    """``(grad(params, xs, labels, lengths), params)`` of one train step's loss."""
    cell = cell_for(package, name, w)
    k_rnn, k_head = jax.random.split(jax.random.key(0))
    params = {
        "rnn": cell.init(k_rnn, w.input),
        "head": {
            "w": jax.nn.initializers.lecun_normal()(k_head, (cell.output_size, w.classes)),
            "b": jnp.zeros((w.classes,)),
        },
    }

    def loss(params, xs, labels, lengths):
        ys, carry = package.rnn(cell, params["rnn"], xs, lengths, implementation=implementation)
        features = cell.hidden(carry) if w.masked else ys[:, -1]
        logits = features @ params["head"]["w"] + params["head"]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.grad(loss), params


def compare(base, name: str, implementation: str, repeats: int) -> dict:
    w = workloads.WORKLOADS[name.split("-")[0]]
    xs, labels, lengths = workloads.make_batch(w)
    runners, grads = {}, {}
    for label, package in (("head", jaxrnn), ("base", base)):
        fn, params = gradient_fn(package, name, w, IMPLEMENTATIONS[implementation])
        compiled, _ = _common.compile_fn(fn, params, xs, labels, lengths)
        runners[label] = _common.Runner(compiled, (params, xs, labels, lengths))
        grads[label] = compiled(params, xs, labels, lengths)
    difference = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(grads["head"]), jax.tree.leaves(grads["base"]), strict=True)
    )
    inner = _common.inner_for(_common.rough_time(runners["base"]), target_s=0.1, cap=50)
    wall, cpu = time_alternating(runners, repeats, inner)
    row = {"workload": name, "implementation": implementation, "inner": inner}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        ratios = [h / b for h, b in zip(times["head"], times["base"], strict=True)]
        head, base_ = _common.summarize(times["head"]), _common.summarize(times["base"])
        row[clock] = {
            "head": head,
            "base": base_,
            "ratio": head["median_ms"] / base_["median_ms"],
            "ratio_per_repeat": {
                "median": statistics.median(ratios),
                "min": min(ratios),
                "max": max(ratios),
            },
        }
        print(
            f"{name:13s} {implementation:6s} {clock:4s} head {head['median_ms']:9.3f} ms  base "
            f"{base_['median_ms']:9.3f} ms  ratio {row[clock]['ratio']:.3f} (per repeat "
            f"{min(ratios):.3f}-{max(ratios):.3f})",
            flush=True,
        )
    row["max_gradient_difference"] = difference
    return row


def time_alternating(runners: dict, repeats: int, inner: int):
    """Per-call wall and process CPU seconds of each runner per repeat, taking turns (the
    CPU time, all threads, moves less than the wall time when other processes load the
    machine)."""
    for r in runners.values():
        r.call()
        r.block()
    wall: dict[str, list[float]] = {name: [] for name in runners}
    cpu: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner):
                r.call()
            r.block()
            wall[name].append((time.perf_counter() - w0) / inner)
            cpu[name].append((time.process_time() - c0) / inner)
    return wall, cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="826d634", help="the revision to compare against")
    parser.add_argument("--workloads", nargs="+", default=["W1", "W5", "W6"])
    parser.add_argument("--variants", action="store_true", help="also " + ", ".join(VARIANTS))
    parser.add_argument(
        "--implementations", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS
    )
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    names = list(args.workloads) + (list(VARIANTS) if args.variants else [])
    with tempfile.TemporaryDirectory() as into:
        base, loaded = export_base(args.base, into)
        rows = [
            compare(base, name, implementation, args.repeats)
            for name in names
            for implementation in args.implementations
            if not (name in VARIANTS and implementation == "kernel" and name != "W1-gru")
        ]
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "jaxrnn"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    payload = {
        "environment": _common.environment(),
        "base": args.base,
        "head": head + ("+uncommitted" if dirty else ""),
        "kernels_loaded": loaded,
        "command": "python benchmarks/compare_revisions.py " + " ".join(argv or sys.argv[1:]),
        "what": "median ms of a jitted train-step gradient; head and base alternating",
        "rows": rows,
    }
    _common.write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
