"""The linear recurrences (MinGRU, MinLSTM, RGLRU) against the LSTM and GRU on long sequences:
the gradient's time, compile time and memory as T grows.

    python benchmarks/linear_recurrences.py             # JSON + markdown in benchmarks/results/
    python benchmarks/linear_recurrences.py --quick     # T 256, 1024, 2 repeats, to a temp dir
    python benchmarks/linear_recurrences.py --steps 1024,8192 --out /tmp/lr
    JAXRNN_NATIVE=0 python benchmarks/linear_recurrences.py --quick   # without the CPU kernels

What is measured: ``jax.jit(jax.value_and_grad(loss))(params, xs)`` with ``loss = mean(ys**2)``
of ``jaxrnn.rnn(cell, params, xs, implementation=...)``, batch-first float32 inputs ``[B=16, T,
I=32]``, ``H=128``, for T in 256, 1024, 4096, 8192, 16384, 65536 (``--steps``), and the cases

* ``MinGRU``, ``MinLSTM``, ``RGLRU`` with ``implementation=None`` (the default: ``"parallel"``,
  the recurrence solved over all steps at once by the method :func:`jaxrnn.plan.plan` picks,
  recorded in the JSON) and ``"scan"`` (a ``lax.scan`` of the step);
* ``LSTM`` and ``GRU`` with ``implementation=None`` (on a CPU: jaxrnn's CPU kernels where they
  are loaded).

Per case and T: the compile time, the median step time over alternating repeats (protocol in
``_common``; every case at one T takes turns, each with as many repeats as fit in about
``--case-seconds``, at least 3 (2 with ``--quick``)) and XLA's memory analysis (temporaries +
arguments + outputs). A case whose median at the previous T was over ``--max-seconds`` per call
is skipped at the larger T's (recorded as ``"skipped: slower than ..."``), and so is one whose
XLA memory would pass half of this machine's memory (compiled, not run). The minor page
faults per timed call are recorded too: XLA:CPU allocates an executable's temporaries on each
call, and glibc serves a block over 32 MiB with a fresh ``mmap``, so every call faults in all
of its temporary memory (4 KiB at a time) and the time grows with XLA's memory figure;
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (recorded in the JSON) makes those pages huge.

The ``methods`` part: MinGRU's gradient at T=8192 (the largest T with ``--quick``) through each
method of :func:`jaxrnn.cells.linear_scan.linear_scan` (``"sequential"``, ``"chunked"``,
``"associative"``, and ``"kernel"`` where jaxrnn's kernels are loaded), by calling
:func:`jaxrnn.cells.linear.parallel` with the method forced inside the loss, beside
``rnn``'s default path, timed alternating.

The tables give each case's time over the LSTM default's at the same T, and the markdown
ends with MinGRU's default at T=8192 against the LSTM's (``mingru_vs_lstm`` in the JSON).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

import jaxrnn  # noqa: E402
from jaxrnn import _native  # noqa: E402
from jaxrnn.cells import linear  # noqa: E402
from jaxrnn.cells.linear_scan import METHODS  # noqa: E402
from jaxrnn.options import RunOptions  # noqa: E402
from jaxrnn.plan import plan  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH, INPUT, HIDDEN = 16, 32, 128
STEPS = (256, 1024, 4096, 8192, 16384, 65536)
QUICK_STEPS = (256, 1024)
HEADLINE_T = 8192
REFERENCE = "LSTM/default"
# name -> (cell class, implementation)
CASES = {
    "MinGRU/default": (jaxrnn.MinGRU, None),
    "MinGRU/scan": (jaxrnn.MinGRU, "scan"),
    "MinLSTM/default": (jaxrnn.MinLSTM, None),
    "MinLSTM/scan": (jaxrnn.MinLSTM, "scan"),
    "RGLRU/default": (jaxrnn.RGLRU, None),
    "RGLRU/scan": (jaxrnn.RGLRU, "scan"),
    "LSTM/default": (jaxrnn.LSTM, None),
    "GRU/default": (jaxrnn.GRU, None),
}


def _rnn_grad(cell, implementation):
    def loss(params, xs):
        ys, _ = jaxrnn.rnn(cell, params, xs, implementation=implementation)
        return jnp.mean(ys**2)

    return jax.value_and_grad(loss)


def _method_grad(cell, method):
    """The gradient through :func:`jaxrnn.cells.linear.parallel` with ``method`` forced."""

    def loss(params, xs):
        resolved = cell.resolve(params, xs.dtype)
        xs_tm = jnp.swapaxes(xs, 0, 1)  # time-major: the transposes are part of the time
        ys, _ = linear.parallel(
            resolved,
            params,
            xs_tm,
            cell.initial_carry(xs.shape[0]),
            backwards=False,
            method=method,
        )
        return jnp.mean(ys**2)

    return jax.value_and_grad(loss)


def _plan(cell, params, implementation) -> dict:
    how = plan(cell.resolve(params, jnp.float32), RunOptions(implementation=implementation))
    return {"path": how.path, "method": how.method}


def _total(mem: dict | None) -> int | None:
    if mem is None:
        return None
    return sum(mem.get(k, 0) for k in ("temp", "argument", "output"))


def _time_rounds(runners: dict[str, _common.Runner], plans: dict[str, tuple[int, int]]):
    """Per-call seconds of each runner's repeats, the runners taking turns (as
    ``_common.time_alternating``, already warm) while each has repeats left;
    ``plans[name] = (repeats, inner)``. Also each runner's minor page faults per call."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    faults = dict.fromkeys(runners, 0)
    for k in range(max((r for r, _ in plans.values()), default=0)):
        for name, runner in runners.items():
            repeats, inner = plans[name]
            if k >= repeats:
                continue
            before = _minor_faults()
            start = time.perf_counter()
            for _ in range(inner):
                runner.call()
            runner.block()
            times[name].append((time.perf_counter() - start) / inner)
            faults[name] += _minor_faults() - before
    calls = {name: plans[name][0] * plans[name][1] for name in runners}
    return times, {name: faults[name] / max(calls[name], 1) for name in runners}


def _minor_faults() -> int:
    """The process's minor page faults so far (0 where ``resource`` is missing)."""
    if resource is None:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure_group(
    grads: dict, params: dict, xs, *, quick: bool, case_seconds: float, max_repeats: int
) -> dict[str, dict]:
    """Compile, size and time alternating each of ``grads`` (``{name: fn(params, xs)}``) at
    one T; ``{name: entry}``. A case whose XLA memory passes half the machine is not run."""
    out, runners, plans = {}, {}, {}
    limit = _machine_memory_gib() / 2
    steps = xs.shape[1]
    for name, fn in grads.items():
        compiled, seconds = _common.compile_fn(fn, params[name], xs)
        mem = _common.memory(compiled)
        total = _total(mem)
        entry = {"compile_s": seconds, "memory": mem, "memory_total_bytes": total}
        out[name] = entry
        if total is not None and total / 2**30 > limit:
            entry["skipped"] = (
                f"skipped: XLA memory {total / 2**30:.1f} GiB over half of this machine's "
                f"{2 * limit:.0f} GiB (compiled only)"
            )
            print(f"  T={steps} {name}: {entry['skipped']}", flush=True)
            continue
        runner = _common.Runner(compiled, (params[name], xs))
        estimate = _common.rough_time(runner, calls=1)  # one warm call, one timed
        inner = _common.inner_for(estimate)
        if quick:
            repeats = 2
        else:
            repeats = int(case_seconds / max(estimate * inner, 1e-9))
            repeats = max(3, min(max_repeats, repeats))
        runners[name], plans[name] = runner, (repeats, inner)
        entry["inner"] = inner
        mib = "?" if total is None else f"{total / 2**20:.0f}"
        print(
            f"  T={steps} {name}: compile {seconds:.1f} s, ~{estimate * 1e3:.1f} ms/call, "
            f"memory {mib} MiB, {repeats} x {inner} calls",
            flush=True,
        )
    times, faults = _time_rounds(runners, plans)
    for name, seconds in times.items():
        out[name].update(_common.summarize(seconds))
        out[name]["page_faults_per_call"] = faults[name]
    return out


def run_grid(steps_list, *, quick, max_seconds, case_seconds, max_repeats) -> list[dict]:
    entries: list[dict] = []
    too_slow: dict[str, str] = {}  # case -> why it is skipped from here on
    cells = {name: cls(HIDDEN) for name, (cls, _) in CASES.items()}
    params = {name: cell.init(jax.random.key(0), INPUT) for name, cell in cells.items()}
    for steps in steps_list:
        xs = jax.random.normal(jax.random.key(1), (BATCH, steps, INPUT), jnp.float32)
        grads = {
            name: _rnn_grad(cells[name], impl)
            for name, (_, impl) in CASES.items()
            if name not in too_slow
        }
        print(f"T={steps}: {len(grads)} cases", flush=True)
        results = measure_group(
            grads, params, xs, quick=quick, case_seconds=case_seconds, max_repeats=max_repeats
        )
        reference = results.get(REFERENCE, {}).get("median_ms")
        for name, (cls, impl) in CASES.items():
            entry = {"case": name, "cell": cls.__name__, "implementation": impl, "T": steps}
            entry.update(_plan(cells[name], params[name], impl))
            if name in too_slow:
                entry["skipped"] = too_slow[name]
            else:
                entry.update(results[name])
                median = entry.get("median_ms")
                if median is not None and reference:
                    entry["vs_lstm"] = median / reference
                if median is not None and median / 1e3 > max_seconds:
                    too_slow[name] = (
                        f"skipped: slower than {max_seconds:g} s per call at T={steps} "
                        f"({median:.0f} ms)"
                    )
            entries.append(entry)
    return entries


def run_methods(steps_list, *, quick, case_seconds, max_repeats, grid) -> dict:
    methods = [m for m in METHODS if m != "kernel" or _native.enabled()]
    cell = jaxrnn.MinGRU(HIDDEN)
    p = cell.init(jax.random.key(0), INPUT)
    entries = []
    for steps in steps_list:
        xs = jax.random.normal(jax.random.key(1), (BATCH, steps, INPUT), jnp.float32)
        grads = {"default": _rnn_grad(cell, None)}
        grads.update({m: _method_grad(cell, m) for m in methods})
        print(f"methods, MinGRU T={steps}: {', '.join(grads)}", flush=True)
        results = measure_group(
            grads,
            dict.fromkeys(grads, p),
            xs,
            quick=quick,
            case_seconds=case_seconds,
            max_repeats=max_repeats,
        )
        lstm = next(
            (
                e.get("median_ms")
                for e in grid
                if e["case"] == REFERENCE and e["T"] == steps and "median_ms" in e
            ),
            None,
        )
        for name, result in results.items():
            entry = {"method": name, "T": steps, **result}
            if name == "default":
                how = _plan(cell, p, None)
                entry.update(path=how["path"], method_planned=how["method"])
            if lstm and "median_ms" in entry:
                entry["vs_lstm"] = entry["median_ms"] / lstm
            entries.append(entry)
    return {"cell": "MinGRU", "methods": methods, "steps": list(steps_list), "entries": entries}


def _mingru_vs_lstm(grid: list[dict]) -> dict | None:
    found = {e["case"]: e for e in grid if e["T"] == HEADLINE_T and "median_ms" in e}
    if "MinGRU/default" not in found or REFERENCE not in found:
        return None
    mingru, lstm = found["MinGRU/default"]["median_ms"], found[REFERENCE]["median_ms"]
    return {
        "T": HEADLINE_T,
        "mingru_default_ms": mingru,
        "lstm_default_ms": lstm,
        "speedup": lstm / mingru,
    }


def _mib(entry: dict) -> str:
    total = entry.get("memory_total_bytes")
    return "?" if total is None else f"{total / 2**20:.0f}"


def _faults(entry: dict) -> str:
    faults = entry.get("page_faults_per_call")
    return "" if faults is None else f"{faults:.0f}"


def markdown(payload: dict) -> str:
    cfg, env = payload["config"], payload["env"]
    grid = payload["entries"]
    steps = cfg["steps"]
    by = {(e["case"], e["T"]): e for e in grid}
    head = "| case | path | " + " | ".join(f"T={t}" for t in steps) + " |"
    rule = "|---|---|" + "---|" * len(steps)
    native = payload["native"]
    lines = [
        f"Gradient of mean(ys**2) w.r.t. the parameters, B={cfg['B']} I={cfg['I']} "
        f"H={cfg['H']} float32, batch-first; {env['device']} ({env['cpu']}, "
        f"{env['cpu_count']} cores; {' '.join(env.get('cpu_vector_extensions', [])) or '-'}), "
        f"jax {env['jax']}; CPU kernels: {native['status']}"
        + (f"; GLIBC_TUNABLES={env['glibc_tunables']}." if env.get("glibc_tunables") else "."),
        "",
        "Median step time, ms (time / LSTM default's at the same T):",
        "",
        head,
        rule,
    ]

    def path(name):
        e = next(e for e in grid if e["case"] == name)
        return e["path"] + (f" ({e['method']})" if e.get("method") else "")

    for name in CASES:
        cells = []
        for t in steps:
            e = by.get((name, t), {})
            if "median_ms" in e:
                ratio = f" ({e['vs_lstm']:.2f}x)" if "vs_lstm" in e else ""
                cells.append(f"{e['median_ms']:.1f}{ratio}")
            else:
                cells.append("skipped" if "skipped" in e else "")
        lines.append(f"| {name} | {path(name)} | " + " | ".join(cells) + " |")
    for title, cell_text in (
        ("XLA memory (temporaries + arguments + outputs), MiB:", _mib),
        ("Compile time, s:", lambda e: f"{e['compile_s']:.1f}"),
        ("Minor page faults per timed call:", _faults),
    ):
        lines += ["", title, "", head, rule]
        for name in CASES:
            row = [
                cell_text(by[(name, t)]) if "compile_s" in by.get((name, t), {}) else "skipped"
                for t in steps
            ]
            lines.append(f"| {name} | {path(name)} | " + " | ".join(row) + " |")
    skipped = [e for e in grid if "skipped" in e]
    if skipped:
        lines += [""] + [f"- {e['case']} at T={e['T']}: {e['skipped']}" for e in skipped]
    methods = payload.get("methods")
    if methods and methods["entries"]:
        lines += [
            "",
            "MinGRU's gradient through each method of `linear_scan` "
            "(`jaxrnn.cells.linear.parallel` with the method forced; `default` is `rnn`'s):",
            "",
            "| T | method | step ms | vs LSTM default | XLA memory MiB | page faults/call "
            "| compile s |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in methods["entries"]:
            name = e["method"]
            if name == "default":
                name = f"default (`rnn`: {e['path']}, {e['method_planned']})"
            ms = f"{e['median_ms']:.1f}" if "median_ms" in e else "skipped"
            ratio = f"{e['vs_lstm']:.2f}x" if "vs_lstm" in e else ""
            lines.append(
                f"| {e['T']} | {name} | {ms} | {ratio} | {_mib(e)} | {_faults(e)} "
                f"| {e['compile_s']:.1f} |"
            )
    headline = payload.get("mingru_vs_lstm")
    lines.append("")
    if headline:
        lines.append(
            f"MinGRU's default gradient at T={headline['T']}: {headline['speedup']:.1f}x faster "
            f"than the LSTM's ({headline['mingru_default_ms']:.1f} ms against "
            f"{headline['lstm_default_ms']:.1f} ms)."
        )
    return "\n".join(lines) + "\n"


def _machine_memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        return float("inf")


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T 256,1024, 2 repeats, temp dir")
    parser.add_argument("--steps", type=_ints, default=None, help="T1,T2,... (ascending)")
    parser.add_argument(
        "--methods-steps",
        type=_ints,
        default=None,
        help=f"T's of the methods part (default {HEADLINE_T}; the largest T with --quick; '' none)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=4.0,
        help="skip a case at the larger T's once its median passes this many s per call",
    )
    parser.add_argument("--case-seconds", type=float, default=10.0, help="timing budget a case")
    parser.add_argument("--max-repeats", type=int, default=15)
    parser.add_argument("--out", default=None, help="output directory (default results/)")
    args = parser.parse_args(argv)
    steps = args.steps or list(QUICK_STEPS if args.quick else STEPS)
    steps = sorted(steps)
    methods_steps = args.methods_steps
    if methods_steps is None:
        methods_steps = [max(steps)] if args.quick else [HEADLINE_T]
    out_dir = args.out
    if out_dir is None:
        out_dir = (
            tempfile.mkdtemp(prefix="linear_recurrences_")
            if args.quick
            else os.path.join(HERE, "results")
        )
    env = _common.environment()
    loaded, status = _native.kernel_status()
    grid = run_grid(
        steps,
        quick=args.quick,
        max_seconds=args.max_seconds,
        case_seconds=args.case_seconds,
        max_repeats=args.max_repeats,
    )
    methods = run_methods(
        methods_steps,
        quick=args.quick,
        case_seconds=args.case_seconds,
        max_repeats=args.max_repeats,
        grid=grid,
    )
    payload = {
        "benchmark": "linear_recurrences",
        "env": env,
        "machine_memory_gib": _machine_memory_gib(),
        "protocol": _common.__doc__,
        "config": {
            "B": BATCH,
            "I": INPUT,
            "H": HIDDEN,
            "dtype": "float32",
            "layout": "batch-first",
            "measured": "jax.jit(jax.value_and_grad(mean(ys**2))) w.r.t. params",
            "steps": steps,
            "quick": args.quick,
            "max_seconds": args.max_seconds,
            "case_seconds": args.case_seconds,
            "max_repeats": args.max_repeats,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        },
        "native": {"enabled": loaded, "status": status},
        "entries": grid,
        "methods": methods,
        "mingru_vs_lstm": _mingru_vs_lstm(grid),
    }
    _common.write_results(
        os.path.join(out_dir, "linear_recurrences.json"), payload, markdown(payload)
    )
    print(f"written to {out_dir}/linear_recurrences.json and .md")


if __name__ == "__main__":
    main()
