"""Checks an installed jaxrnn (the wheel, in a fresh venv with the core alone).

    ./dev.sh smoke                      # builds nothing: installs dist/'s wheel, runs this
    python scripts/wheel_smoke.py       # in any environment where jaxrnn is installed

Checks, and exits non-zero at the first that fails:

* with ``--wheel PATH``, the wheel's tags and what its library needs of the system
  (``scripts/wheel_platform.py``, beside this file: any CPython from 3.11, glibc from 2.28);
* ``import jaxrnn`` (after ``import jax``) imports none of the extras' packages; with
  ``--fresh-wheel`` (a venv with the wheel alone), jaxrnn comes from site-packages and none of
  them is even installed;
* ``python -m jaxrnn info`` runs and reports ``cpu kernels: loaded``;
* on x86-64 Linux, the kernels run the widest version of their loops that the CPU has (AVX-512,
  AVX2 or the baseline, as ``/proc/cpuinfo`` lists its features);
* ``jaxrnn.nn`` without Flax raises an ImportError that names ``pip install "jaxrnn[nn]"``
  (where Flax is absent);
* each cell's ``jaxrnn.rnn`` (masked, both directions) and its gradient run the CPU kernels and
  equal the XLA loops, computed in a second process with ``JAXRNN_NATIVE=0``.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile

import numpy as np

# Packages of the extras: the core must not import them.
EXTRA_MODULES = (
    "flax",
    "optax",
    "orbax",
    "tensorflow_datasets",
    "matplotlib",
    "tensorboardX",
    "tqdm",
    "etils",
)
B, T, F = 9, 12, 5  # B * H * H * gates >= 2**17 at H = 64: the kernels split over threads


def outputs() -> dict[str, np.ndarray]:
    """Each cell's outputs, final state and parameter gradients, masked, forward and reverse,
    with the names of the kernels that its compiled computation calls."""
    import jax
    import jax.numpy as jnp

    import jaxrnn

    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.normal(size=(B, T, F)), jnp.float32)
    lengths = jnp.asarray(rng.integers(0, T + 1, B), jnp.int32)
    out: dict[str, np.ndarray] = {}
    for name, cell in (
        ("lstm", jaxrnn.LSTM(64)),
        ("gru", jaxrnn.GRU(64)),
        ("rnn", jaxrnn.SimpleRNN(64)),
    ):
        params = cell.init(jax.random.key(1), F)
        for reverse in (False, True):

            def loss(p, xs, cell=cell, reverse=reverse):
                ys, carry = jaxrnn.rnn(cell, p, xs, lengths, reverse=reverse)
                return jnp.sum(ys**2) + sum(jnp.sum(c) for c in jax.tree.leaves(carry)), ys

            fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
            (value, ys), grads = fn(params, xs)
            key = f"{name}_{'bw' if reverse else 'fw'}"
            out[f"{key}/ys"] = np.asarray(ys)
            out[f"{key}/loss"] = np.asarray(value)
            for path, g in jax.tree_util.tree_leaves_with_path(grads):
                out[f"{key}/grad{jax.tree_util.keystr(path)}"] = np.asarray(g)
            hlo = fn.lower(params, xs).as_text()
            out[f"{key}/kernels"] = np.asarray(sorted(set(_kernel_calls(hlo))))
    return out


def _kernel_calls(hlo: str) -> list[str]:
    return re.findall(r"@(jaxrnn_[a-z]+_(?:forward|backward))\b", hlo)


def check(condition: bool, what: str) -> None:
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        raise SystemExit(1)


# x86-64-v3's features as /proc/cpuinfo names them (abm: LZCNT), and those x86-64-v4 adds:
# the kernels run their loops for the highest level whose features the CPU has
# (csrc/dispatch.h, jaxrnn_vector_level).
X86_V3 = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "abm", "movbe", "popcnt", "xsave"}
X86_V4 = X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}


def expected_vector_level() -> int | None:
    """The loops' version for this CPU, from ``/proc/cpuinfo``; None off x86-64 Linux."""
    if platform.machine() != "x86_64" or not os.path.exists("/proc/cpuinfo"):
        return None
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    return 4 if X86_V4 <= set(flags) else 3 if X86_V3 <= set(flags) else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fresh-wheel", action="store_true", help="a venv with jaxrnn's wheel and its core alone"
    )
    parser.add_argument("--wheel", help="the wheel installed: check its tags and symbols")
    parser.add_argument("--xla-out", help=argparse.SUPPRESS)  # the JAXRNN_NATIVE=0 process
    args = parser.parse_args(argv)
    if args.xla_out:
        np.savez(args.xla_out, **outputs())
        return
    if args.wheel:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import wheel_platform

        wheel_platform.check_wheel(args.wheel)

    import jax  # noqa: F401  # (jax itself imports etils.epath where installed)

    before = set(sys.modules)
    import jaxrnn
    from jaxrnn import _native

    here = os.path.dirname(os.path.abspath(jaxrnn.__file__))
    if args.fresh_wheel:
        check(os.path.basename(os.path.dirname(here)) == "site-packages", f"jaxrnn from {here}")
    new = {name.partition(".")[0] for name in set(sys.modules) - before}
    imported = sorted(new.intersection(EXTRA_MODULES))
    check(not imported, f"import jaxrnn imports no extra's package (imported: {imported})")
    installed = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is not None]
    if args.fresh_wheel:
        check(not installed, f"the core installs no extra's package (installed: {installed})")

    info = subprocess.run(
        [sys.executable, "-m", "jaxrnn", "info"], capture_output=True, text=True, check=True
    ).stdout
    print(info, end="")
    check("cpu kernels: loaded" in info.splitlines(), "jaxrnn info: cpu kernels: loaded")
    loaded, reason = _native.kernel_status()
    check(loaded, f"the kernels load in this process ({reason})")
    expected = expected_vector_level()
    if expected is not None:
        spec = importlib.util.find_spec("jaxrnn._recurrence")
        assert spec is not None and spec.origin is not None
        level = ctypes.CDLL(spec.origin).jaxrnn_vector_level()
        check(level == expected, f"the kernels' loops for x86-64-v{level} ({expected}: this CPU)")

    if "flax" not in installed:
        try:
            import jaxrnn.nn  # noqa: F401
        except ImportError as error:
            check('pip install "jaxrnn[nn]"' in str(error), f"jaxrnn.nn without Flax: {error}")
        else:
            check(False, "jaxrnn.nn without Flax raises ImportError")

    native = outputs()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "xla.npz")
        env = {**os.environ, _native.ENV_NATIVE: "0"}
        subprocess.run([sys.executable, __file__, "--xla-out", path], env=env, check=True)
        with np.load(path) as f:
            xla = dict(f)
    check(native.keys() == xla.keys(), "the same outputs from both processes")
    for key in sorted(native):
        if key.endswith("/kernels"):
            check(native[key].size == 2, f"{key}: {native[key].tolist()} (forward and backward)")
            check(xla[key].size == 0, f"{key} with JAXRNN_NATIVE=0: none")
        else:
            # float32 sums in another order: within 1e-5 of the array's largest magnitude
            scale = float(np.max(np.abs(xla[key])))
            diff = float(np.max(np.abs(native[key] - xla[key])))
            check(
                diff <= 1e-5 * scale + 1e-6,
                f"{key} equals the XLA loop's (max difference {diff:.1e}, largest {scale:.2g})",
            )
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
