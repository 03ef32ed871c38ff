"""Two builds of jaxrnn's CPU kernels side by side in one process: bit for bit and in time.

    python benchmarks/kernel_builds.py --base-lib OTHER.so --check   # every option, bitwise
    python benchmarks/kernel_builds.py --base-lib OTHER.so           # timing, JSON out

``--base-lib`` is another build of ``csrc/`` (say, of an earlier commit: ``git archive`` its
``csrc/`` and compile it with ``setup.py``'s flags); ``--lib`` is this checkout's build (by
default the installed ``jaxrnn._recurrence``), or any other (the wheel's, taken out of it).
Both are loaded with ``ctypes``, handed the
same OpenBLAS ``sgemm`` and thread count, and their handlers registered with XLA under
prefixed target names (``base_jaxrnn_lstm_forward``, ``new_jaxrnn_lstm_forward``, ...). Each
kernel is called through ``jax.ffi.ffi_call`` with the arguments its binding in
``jaxrnn.cells`` passes.

``--check`` runs the forward and backward kernels of the five cells over every combination
of layout, direction, lengths and resets (and the LSTM's and GRU's forward without kept
values, one step, the SimpleRNN's relu) and fails unless every output of the two builds is
the same bit for bit; the backward kernels of both get the base build's forward outputs.

Without ``--check`` the kernels are timed at W1 (LSTM 128, T 28, B 100, in 28), W2 (one
direction: LSTM 32, T 28, B 32, in 28), W4 (relu SimpleRNN 16, T 28, B 100, in 28), W5 (masked
LSTM 32, T 20, B 64, in 1, lengths 5-20), W6 (LSTM 512, T 256, B 64, in 512), W3 (tanh
SimpleRNN 150, T 28, B 150, in 28), a GRU (128, T 28, B 100, in 28), and MinGRU, MinLSTM and
RGLRU (128, T 2048, B 16, in 32: their whole-layer kernels), batch-first inputs:
the forward kernel and the backward kernel of each, the two builds alternating (protocol in
``_common``, in the order base, new, new, base, ...), in wall time and in the process's CPU
time; the JSON gives each build's median (min, max) per call, and the ratios new / base of
the medians, of the minima, and per repeat (median and range).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import importlib.util
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SYMBOLS = {
    "jaxrnn_lstm_forward": "JaxrnnLstmForward",
    "jaxrnn_lstm_backward": "JaxrnnLstmBackward",
    "jaxrnn_simple_forward": "JaxrnnSimpleForward",
    "jaxrnn_simple_backward": "JaxrnnSimpleBackward",
    "jaxrnn_gru_forward": "JaxrnnGruForward",
    "jaxrnn_gru_backward": "JaxrnnGruBackward",
    "jaxrnn_linear_cell_sequence_forward": "JaxrnnLinearCellSequenceForward",
    "jaxrnn_linear_cell_sequence_backward": "JaxrnnLinearCellSequenceBackward",
}
BUILDS = ("base", "new")
GATES = {"simple": 1, "lstm": 4, "gru": 3, "mingru": 2, "minlstm": 3, "rglru": 3}
# Values per unit and step kept for the backward pass (the linear cells' recompute theirs).
KEPT = {"simple": 0, "lstm": 5, "gru": 4, "mingru": 0, "minlstm": 0, "rglru": 0}
LINEAR = {"mingru": 0, "minlstm": 1, "rglru": 2}  # the sequence kernels: their `cell` code
UNIT = {"rglru"}  # linear cells with a per-unit parameter (the RG-LRU's a_param)
FORGET_BIAS = 1.0


@dataclasses.dataclass(frozen=True)
class Case:
    """One kernel configuration: ``cell`` is ``"simple"``, ``"lstm"``, ``"gru"``, ``"mingru"``,
    ``"minlstm"`` or ``"rglru"`` (the whole-layer kernels, input projection inside, as they are
    called since they take a per-unit parameter: a build from before times none of them); sequence
    lengths are drawn from ``[min_length, steps]`` (``None``: every step valid); ``reset_rate``
    of the valid steps reset."""

    cell: str
    hidden: int
    steps: int
    batch: int
    features: int
    min_length: int | None = None
    reset_rate: float = 0.0
    reverse: bool = False
    time_major: bool = False
    relu: bool = False
    keep: bool = True

    def name(self) -> str:
        parts = [f"{self.cell} H{self.hidden} T{self.steps} B{self.batch} I{self.features}"]
        if self.min_length is not None:
            parts.append(f"lengths {self.min_length}-{self.steps}")
        if self.reset_rate:
            parts.append(f"resets {self.reset_rate:g}")
        for flag in ("reverse", "time_major", "relu"):
            if getattr(self, flag):
                parts.append(flag)
        if not self.keep:
            parts.append("nothing kept")
        return ", ".join(parts)


WORKLOADS = {
    "W1": Case("lstm", 128, 28, 100, 28),
    "W2": Case("lstm", 32, 28, 32, 28),
    "W4": Case("simple", 16, 28, 100, 28, relu=True),
    "W5": Case("lstm", 32, 20, 64, 1, min_length=5),
    "W6": Case("lstm", 512, 256, 64, 512),
    "W3 SimpleRNN": Case("simple", 150, 28, 150, 28),
    "GRU": Case("gru", 128, 28, 100, 28),
    "MinGRU": Case("mingru", 128, 2048, 16, 32),
    "MinLSTM": Case("minlstm", 128, 2048, 16, 32),
    "RGLRU": Case("rglru", 128, 2048, 16, 32),
}


def load(path: str, prefix: str, sgemm: int, threads: int) -> ctypes.CDLL:
    """Loads the kernel library at ``path`` and registers its handlers as ``prefix`` + target
    (those it has: an older build lacks the linear cells')."""
    lib = ctypes.CDLL(os.path.abspath(path))
    lib.jaxrnn_set_sgemm(ctypes.c_void_p(sgemm))
    lib.jaxrnn_set_max_threads(threads)
    for target, symbol in SYMBOLS.items():
        if not hasattr(lib, symbol):
            continue
        capsule = jax.ffi.pycapsule(getattr(lib, symbol))
        jax.ffi.register_ffi_target(prefix + target, capsule, platform="cpu")
    return lib


def openblas_sgemm() -> tuple[ctypes.CDLL, int]:
    """The OpenBLAS that jaxrnn's kernels use (single-threaded) and its ``cblas_sgemm``."""
    import scipy_openblas32

    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        name = scipy_openblas32.get_library(fullname=True)
        blas = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), name))
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    blas.scipy_openblas_set_num_threads(1)
    return blas, ctypes.cast(blas.scipy_cblas_sgemm, ctypes.c_void_p).value or 0


def inputs(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 inputs of both kernels (``xp`` and ``xs`` in the case's layout)."""
    rng = np.random.default_rng(seed)
    t, b, h, f = case.steps, case.batch, case.hidden, case.features
    width = GATES[case.cell] * h

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def layout(shape):
        return normal(*shape) if case.time_major else normal(shape[1], shape[0], *shape[2:])

    if case.min_length is None:
        valid = np.ones((t, b), bool)
    else:
        lengths = rng.integers(case.min_length, t + 1, size=b)
        valid = np.arange(t)[:, None] < lengths[None, :]
    resets = (rng.random((t, b)) < case.reset_rate) & valid
    if case.cell in LINEAR:  # valid and resets in the inputs' layout, empty where unused
        valid = np.zeros((0,), bool) if case.min_length is None else valid
        valid, resets = (x if case.time_major or x.ndim == 1 else x.T for x in (valid, resets))
    return {
        "xp": layout((t, b, width)),
        "b": normal(width, scale=0.1),
        "b_h": normal(width, scale=0.1),
        "w_h": normal(h, width, scale=1.0 / np.sqrt(h)),
        "h0": normal(b, h, scale=0.5),
        "c0": normal(b, h, scale=0.5),
        "valid": valid,
        "resets": resets if case.reset_rate else np.zeros((0,), bool),
        "xs": layout((t, b, f)),
        "d_ys": normal(t, b, h),
        "d_h": normal(b, h),
        "d_c": normal(b, h),
        "w_i": normal(f, width, scale=1.0 / np.sqrt(f)),
        "d_hs": layout((t, b, h)),
        "no_keep": np.zeros((0,), np.float32),
        "no_unit": np.zeros((0,), np.float32),
        "unit": normal(h),
    }


def _f32(*shapes) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]


def forward_fn(prefix: str, case: Case) -> Callable[[dict], tuple]:
    """The forward kernel of ``prefix``'s build, called as ``jaxrnn.cells`` calls it."""
    t, b, h = case.steps, case.batch, case.hidden
    kept = t * b * KEPT[case.cell] * h if case.keep else 0
    options = {"reverse": np.int32(case.reverse), "time_major": np.int32(case.time_major)}
    if case.cell in LINEAR:
        shape = (t, b, h) if case.time_major else (b, t, h)
        call = jax.ffi.ffi_call(f"{prefix}jaxrnn_linear_cell_sequence_forward", _f32(shape))
        options["cell"] = np.int32(LINEAR[case.cell])
        unit = "unit" if case.cell in UNIT else "no_unit"
        names = ("xs", "w_i", "b", unit, "h0", "valid", "resets", "no_keep")
        return lambda a: tuple(call(*(a[k] for k in names), **options))
    target = f"{prefix}jaxrnn_{case.cell}_forward"
    if case.cell == "simple":
        call = jax.ffi.ffi_call(target, _f32((t, b, h), (b, h)))
        relu = np.int32(case.relu)
        return lambda a: tuple(
            call(a["xp"], a["b"], a["w_h"], a["h0"], a["valid"], a["resets"], relu=relu, **options)
        )
    if case.cell == "lstm":
        call = jax.ffi.ffi_call(target, _f32((t, b, h), (b, h), (b, h), (kept,)))
        forget = np.float32(FORGET_BIAS)
        return lambda a: tuple(
            call(
                *(a[k] for k in ("xp", "b", "w_h", "c0", "h0", "valid", "resets")),
                forget_bias=forget,
                **options,
            )
        )
    call = jax.ffi.ffi_call(target, _f32((t, b, h), (b, h), (kept,)))
    return lambda a: tuple(
        call(a["xp"], a["b"], a["w_h"], a["b_h"], a["h0"], a["valid"], a["resets"], **options)
    )


def backward_fn(prefix: str, case: Case) -> Callable[[dict, tuple], tuple]:
    """The backward kernel of ``prefix``'s build, given the inputs and the forward outputs."""
    t, b, h, f = case.steps, case.batch, case.hidden, case.features
    g = GATES[case.cell] * h
    options = {"reverse": np.int32(case.reverse), "time_major": np.int32(case.time_major)}
    if case.cell in LINEAR:
        x_shape = (t, b, f) if case.time_major else (b, t, f)
        call = jax.ffi.ffi_call(
            f"{prefix}jaxrnn_linear_cell_sequence_backward",
            _f32(x_shape, (f, g), (g,), (b, h), (b, h) if case.cell in UNIT else (0,)),
        )
        options["cell"] = np.int32(LINEAR[case.cell])
        unit = "unit" if case.cell in UNIT else "no_unit"

        def linear(a, out):
            args = (a["xs"], a["w_i"], a["b"], a[unit], out[0], a["h0"], a["valid"])
            args += (a["resets"],)
            return tuple(call(*args, a["no_keep"], a["d_hs"], **options))

        return linear
    target = f"{prefix}jaxrnn_{case.cell}_backward"
    if case.cell == "simple":
        call = jax.ffi.ffi_call(target, _f32((t, b, h), (b, h), (h, h), (f, h), (h,)))

        def simple(a, out):
            ys = out[0]
            args = (a["w_h"], ys, a["valid"], a["resets"], a["d_ys"], a["d_h"], a["h0"], a["xs"])
            return tuple(call(*args, relu=np.int32(case.relu), **options))

        return simple
    if case.cell == "lstm":
        call = jax.ffi.ffi_call(target, _f32((t, b, g), (b, h), (b, h), (h, g), (f, g), (g,)))

        def lstm(a, out):
            ys, kept = out[0], out[3]
            args = (a["w_h"], kept, a["valid"], a["resets"], a["d_ys"], a["d_c"], a["d_h"])
            return tuple(call(*args, ys, a["h0"], a["xs"], **options))

        return lstm
    call = jax.ffi.ffi_call(target, _f32((t, b, g), (b, h), (h, g), (g,), (f, g), (g,)))

    def gru(a, out):
        ys, kept = out[0], out[2]
        args = (a["w_h"], kept, a["valid"], a["resets"], a["d_ys"], a["d_h"], ys, a["h0"])
        return tuple(call(*args, a["xs"], **options))

    return gru


def check_cases() -> list[Case]:
    """Every option of every cell at a small shape whose hidden units split into uneven chunks."""
    cases = []
    for cell in GATES:
        for time_major, reverse, lengths, resets in itertools.product((False, True), repeat=4):
            options = {"reverse": reverse, "time_major": time_major}
            if lengths:
                options["min_length"] = 2
            if resets:
                options["reset_rate"] = 0.2
            cases.append(Case(cell, 80, 9, 32, 7, **options))
        cases.append(Case(cell, 80, 1, 32, 7, min_length=0, reset_rate=0.3))
    cases.append(Case("simple", 80, 9, 32, 7, min_length=2, reset_rate=0.2, relu=True))
    cases.append(Case("lstm", 80, 9, 32, 7, min_length=2, reset_rate=0.2, keep=False))
    cases.append(Case("gru", 80, 9, 32, 7, min_length=2, reset_rate=0.2, keep=False))
    return cases


def same_bits(x, y) -> bool:
    x, y = np.asarray(x), np.asarray(y)
    return x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32))


def check() -> int:
    """Compares every output of the two builds over :func:`check_cases`; the number differing."""
    failures = 0
    for case in check_cases():
        a = {k: jnp.asarray(v) for k, v in inputs(case).items()}
        fwd = {p: jax.jit(forward_fn(f"{p}_", case)) for p in BUILDS}
        out = {p: fwd[p](a) for p in BUILDS}
        # With nothing kept the backward kernels get the kept values of a keeping call.
        keeping = dataclasses.replace(case, keep=True)
        base_out = out["base"] if case.keep else jax.jit(forward_fn("base_", keeping))(a)
        grads = {p: jax.jit(backward_fn(f"{p}_", case))(a, base_out) for p in BUILDS}
        bad = [
            f"forward output {i}"
            for i, pair in enumerate(zip(*out.values(), strict=True))
            if not same_bits(*pair)
        ]
        bad += [
            f"backward output {i}"
            for i, pair in enumerate(zip(*grads.values(), strict=True))
            if not same_bits(*pair)
        ]
        finite = all(bool(jnp.isfinite(x).all()) for x in (*out["new"], *grads["new"]))
        print(f"{'DIFFERENT' if bad else 'same'}: {case.name()}", *bad, sep="; " if bad else "")
        if not finite:
            print("  (non-finite outputs: the inputs are too large)")
        failures += bool(bad) or not finite
    return failures


def timed(runner: _common.Runner, inner: int) -> tuple[float, float]:
    """``(wall, cpu)`` seconds per call over ``inner`` calls; ``cpu``: the process's CPU time
    (every thread's), which a busy machine inflates less than the wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        runner.call()
    runner.block()
    return (time.perf_counter() - wall) / inner, (time.process_time() - cpu) / inner


def compare(times: dict[str, list[float]]) -> dict:
    """Each build's per-call ms (:func:`_common.summarize`) and the ratios new / base: of the
    medians, of the minima, and the median and range of the per-repeat ratios."""
    ratios = [n / b for n, b in zip(times["new"], times["base"], strict=True)]
    return {
        **{p: _common.summarize(times[p]) for p in BUILDS},
        "ratio_of_medians": statistics.median(times["new"]) / statistics.median(times["base"]),
        "ratio_of_minima": min(times["new"]) / min(times["base"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def time_case(case: Case, seconds: float) -> dict:
    """Forward and backward kernels of both builds at ``case``, timed alternating (base, new,
    new, base, ...), in wall time and in the process's CPU time: repeats of about 20 ms (or
    one call), as many as fit in about ``seconds`` per kernel (11 to 401)."""
    a = {k: jnp.asarray(v) for k, v in inputs(case).items()}
    fwd_out = jax.jit(forward_fn("base_", case))(a)
    result: dict = {"case": dataclasses.asdict(case)}
    for kernel in ("forward", "backward"):
        runners = {}
        for p in BUILDS:
            if kernel == "forward":
                compiled, _ = _common.compile_fn(forward_fn(f"{p}_", case), a)
                runners[p] = _common.Runner(compiled, (a,))
            else:
                compiled, _ = _common.compile_fn(backward_fn(f"{p}_", case), a, fwd_out)
                runners[p] = _common.Runner(compiled, (a, fwd_out))
        per_call = _common.rough_time(runners["base"])
        inner = _common.inner_for(per_call, target_s=0.02)
        repeats = int(min(401, max(11, seconds / (2 * inner * per_call))))
        for runner in runners.values():  # warm-up
            runner.call()
            runner.block()
        wall: dict[str, list[float]] = {p: [] for p in BUILDS}
        cpu: dict[str, list[float]] = {p: [] for p in BUILDS}
        for r in range(repeats):
            for p in BUILDS if r % 2 == 0 else BUILDS[::-1]:
                w, c = timed(runners[p], inner)
                wall[p].append(w)
                cpu[p].append(c)
        result[kernel] = {
            "inner": inner,
            "repeats": repeats,
            "wall": compare(wall),
            "cpu": compare(cpu),
        }
    return result


def vector_level(lib: ctypes.CDLL) -> int | None:
    """The x86-64 level of the row loops that ``lib`` runs on this machine (4, 3, 1; 0 off
    x86-64), or None where the build does not say."""
    try:
        return lib.jaxrnn_vector_level()
    except AttributeError:
        return None


def installed_library() -> str:
    spec = importlib.util.find_spec("jaxrnn._recurrence")
    if spec is None or spec.origin is None:
        raise SystemExit("jaxrnn's kernels are not built here: pass --lib")
    return spec.origin


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-lib", required=True, help="the other build (a .so file)")
    parser.add_argument("--lib", default=None, help="this build (default: the installed one)")
    parser.add_argument("--base-label", default=None, help="what --base-lib is, for the JSON")
    parser.add_argument("--label", default=None, help="what --lib is, for the JSON")
    parser.add_argument("--check", action="store_true", help="compare outputs bit for bit")
    parser.add_argument("--threads", type=int, default=None, help="threads per kernel call")
    parser.add_argument("--seconds", type=float, default=30.0, help="time per kernel and case")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "kernel_builds.json"))
    args = parser.parse_args(argv)

    # The check splits 80 units into 3 uneven chunks; timing uses the machine's cores.
    threads = args.threads or (3 if args.check else len(os.sched_getaffinity(0)))
    blas, sgemm = openblas_sgemm()
    libraries = [
        blas,
        load(args.base_lib, "base_", sgemm, threads),
        load(args.lib or installed_library(), "new_", sgemm, threads),
    ]
    if args.check:
        failures = check()
        print(f"{failures} case(s) differ" if failures else "every output is the same, bit for bit")
        return 1 if failures else 0

    environment = _common.environment()  # the load average as the run starts
    results = {}
    for name in args.workloads:
        results[name] = time_case(WORKLOADS[name], args.seconds)
        for kernel in ("forward", "backward"):
            for clock in ("wall", "cpu"):
                r = results[name][kernel][clock]
                print(
                    f"{name:13s} {kernel:8s} {clock:4s} base {r['base']['median_ms']:9.3f} ms  "
                    f"new {r['new']['median_ms']:9.3f} ms  new/base: medians "
                    f"{r['ratio_of_medians']:.3f}, minima {r['ratio_of_minima']:.3f}, "
                    f"repeats {r['ratio_median']:.3f} ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})",
                    flush=True,
                )
    command = "python benchmarks/kernel_builds.py --base-lib BASE.so"
    if args.lib is not None:
        command += " --lib NEW.so"
    if args.workloads != list(WORKLOADS):
        command += " --workloads " + " ".join(args.workloads)
    payload = {
        "environment": environment,
        "command": f"{command} --seconds {args.seconds:g}",
        "base": args.base_label or os.path.basename(args.base_lib),
        "new": args.label
        or ("this checkout's build" if args.lib is None else os.path.basename(args.lib)),
        # The version of the row loops each build runs here (csrc/recurrence.h; None: a build
        # from before jaxrnn_vector_level).
        "vector_level": {
            p: vector_level(lib) for p, lib in zip(BUILDS, libraries[1:], strict=True)
        },
        "threads": threads,
        "seconds": args.seconds,
        "results": results,
    }
    _common.write_json(args.out, payload)
    del libraries
    return 0


if __name__ == "__main__":
    sys.exit(main())
