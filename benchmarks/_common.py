"""Shared measurement code for the benchmarks: honest timing, memory, peak matmul, metadata.

Timing protocol (every benchmark uses it):

* compile time is measured apart: ``jax.jit(f).lower(*args).compile()`` is timed once, and the
  compiled executable is what gets timed afterwards (no tracing or cache look-up in the loop);
* each variant is warmed up (two calls) before any clock starts;
* a *repeat* runs ``inner`` calls back to back and ends with ``block_until_ready`` on the
  result; the per-call time of a repeat is its wall time divided by ``inner``;
* variants compared with each other are measured *alternating* (repeat 1 of A, of B, ...,
  repeat 2 of A, ...) so that drift of a shared machine hits all of them alike, and the
  reported figure is the median over repeats with the min/max spread beside it;
* memory comes from the compiled executable's ``memory_analysis()`` (XLA's own accounting of
  arguments, outputs and temporaries), not from the process.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

# /proc/cpuinfo's flags (x86) and Features (Arm) that set the kernels' and XLA's speed.
VECTOR_EXTENSIONS = {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}
VECTOR_EXTENSIONS |= {"asimd", "sve", "sve2", "bf16"}


def environment() -> dict[str, Any]:
    """Device, versions and machine facts for the JSON header."""
    import flax
    import optax

    import jaxrnn

    dev = jax.devices()[0]
    cpu = platform.processor() or ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                if cpu and flags:
                    break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(),
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "device_count": jax.device_count(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_vector_extensions": sorted(flags & VECTOR_EXTENSIONS),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "jaxrnn": jaxrnn.__version__,
        "git_commit": commit,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        # The machine is shared: the 1/5/15-minute load averages when the run started.
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def compile_fn(fn: Callable, *args, donate_argnums=()) -> tuple[Any, float]:
    """``(compiled, seconds)``: lower and compile ``jax.jit(fn)`` for ``args``, timed."""
    start = time.perf_counter()
    compiled = jax.jit(fn, donate_argnums=donate_argnums).lower(*args).compile()
    return compiled, time.perf_counter() - start


def memory(compiled) -> dict[str, int] | None:
    """Bytes from XLA's memory analysis of a compiled executable (None where unsupported)."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - some backends do not implement it
        return None
    if m is None:
        return None
    out = {}
    for name in (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "temp_size_in_bytes",
        "alias_size_in_bytes",
        "generated_code_size_in_bytes",
    ):
        value = getattr(m, name, None)
        if value is not None:
            out[name.removesuffix("_size_in_bytes")] = int(value)
    return out


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, min, max (and the spread (max-min)/median) of per-call times, in ms."""
    ms = [s * 1e3 for s in seconds]
    med = statistics.median(ms)
    return {
        "median_ms": med,
        "min_ms": min(ms),
        "max_ms": max(ms),
        "spread": (max(ms) - min(ms)) / med if med else 0.0,
        "repeats": len(ms),
    }


class Runner:
    """One timed variant: ``call()`` advances its state by one call; ``block()`` syncs.

    ``stateful`` variants (train steps) feed their output state back into the next call so
    that optimizer updates really happen; others call ``fn(*args)`` with the same args.
    """

    def __init__(self, compiled, args: tuple, *, stateful: bool = False):
        self.compiled, self.args, self.stateful = compiled, args, stateful
        self.out = None

    def call(self):
        if self.stateful:
            state, rest = self.args[0], self.args[1:]
            self.out = self.compiled(state, *rest)
            self.args = (self.out[0], *rest)
        else:
            self.out = self.compiled(*self.args)

    def block(self):
        jax.block_until_ready(self.out)


def time_alternating(
    runners: dict[str, Runner], *, repeats: int, inner: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Per-call seconds of each runner for each repeat, the runners taking turns."""
    for r in runners.values():
        for _ in range(warmup):
            r.call()
        r.block()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            start = time.perf_counter()
            for _ in range(inner):
                r.call()
            r.block()
            times[name].append((time.perf_counter() - start) / inner)
    return times


def inner_for(seconds_per_call: float, target_s: float = 0.05, cap: int = 200) -> int:
    """Calls per repeat so that one repeat lasts about ``target_s`` (at least 1)."""
    return int(max(1, min(cap, round(target_s / max(seconds_per_call, 1e-7)))))


def rough_time(runner: Runner, calls: int = 3) -> float:
    """A quick per-call estimate (after one warm call) used to size ``inner``."""
    runner.call()
    runner.block()
    start = time.perf_counter()
    for _ in range(calls):
        runner.call()
    runner.block()
    return (time.perf_counter() - start) / calls


def peak_matmul(n: int = 2048, repeats: int = 7, inner: int = 5) -> dict[str, float]:
    """Measured float32 matmul throughput of this device: ``[n, n] @ [n, n]`` in JAX.

    Returns the median and best GFLOP/s over ``repeats`` (each of ``inner`` products, chained
    so none can be skipped). The best is the figure called "peak": the machine is shared.
    """
    key = jax.random.key(0)
    a = jax.random.normal(key, (n, n), jnp.float32) / np.sqrt(n)

    def chain(x):
        for _ in range(inner):
            x = x @ a
        return x

    compiled, _ = compile_fn(chain, a)
    jax.block_until_ready(compiled(a))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(a))
        rates.append(2 * n**3 * inner / (time.perf_counter() - start) / 1e9)
    return {
        "n": n,
        "median_gflops": statistics.median(rates),
        "best_gflops": max(rates),
        "repeats": repeats,
    }


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=False)
        f.write("\n")


def write_results(path: str, payload: dict, markdown: str) -> None:
    """``payload`` as JSON at ``path`` and ``markdown`` beside it (``.md``), then printed."""
    write_json(path, payload)
    with open(os.path.splitext(path)[0] + ".md", "w") as f:
        f.write(markdown)
    print(markdown)
