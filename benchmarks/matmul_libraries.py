"""The recurrent loops' per-step products by the kernels' packed small matmul and by the BLAS
libraries that install from PyPI, one thread each, side by side.

    python -m venv blas-env && blas-env/bin/pip install mkl==2026.2.1 \\
        onednn-cpu-gomp==2023.2.0 blis==1.3.4
    python benchmarks/matmul_libraries.py --mkl blas-env/lib/libmkl_rt.so.3 \\
        --onednn blas-env/lib/libdnnl.so.3 --blis blas-env/lib/python3.11/site-packages

(the libraries in an environment of their own, made with the Python that runs the benchmark:
BLIS's extension module is loaded with that Python's ``libpython``).

Compiles ``benchmarks/matmul_libraries.cc`` as ``kernel_parts.py`` compiles its harness
(x86-64) and times, for the per-thread shapes of W1, W3, W5 and W6 and for W1's recurrent
weight gradient: jaxrnn's small matmul (``csrc/small_matmul.h``, its operand packed once),
OpenBLAS's ``sgemm`` (``scipy-openblas32``, jaxrnn's dependency) and, where given, MKL's
``cblas_sgemm``, its ``cblas_sgemm_compute`` on an operand packed once and its JIT
``sgemm`` (where MKL generates one for the CPU), oneDNN's ``dnnl_sgemm`` and BLIS's
``bli_sgemm`` (cython-blis's build, which holds BLIS in its extension module ``blis.cy``).
Medians of seven repeats, GFLOP/s; run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402
import kernel_parts  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _openblas() -> str:
    import scipy_openblas32

    return os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))


def _blis_module(site: str) -> str:
    """BLIS's extension module in the site-packages directory ``site``."""
    found = glob.glob(os.path.join(site, "blis", "cy.*.so"))
    if not found:
        raise SystemExit(f"--blis: no blis/cy.*.so in {site}")
    return found[0]


def _version(package: str, site: str | None = None) -> str | None:
    try:
        if site:
            found = importlib.metadata.distributions(name=package, path=[site])
            return next(iter(found)).version
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        return None


def markdown(payload: dict) -> str:
    env = payload["env"]
    lines = [
        "# Per-step products by library, one thread",
        "",
        f"{env['cpu']} ({', '.join(env['cpu_vector_extensions'])}); "
        f"`python benchmarks/matmul_libraries.py`; "
        + ", ".join(f"{k} {v}" for k, v in payload["libraries"].items())
        + ". GFLOP/s, "
        "median (range of 7 repeats).",
        "",
        "| product (m x k x n) | how | GFLOP/s |",
        "|---|---|---|",
    ]
    for r in payload["results"]:
        lines.append(
            f"| {r['shape']} | {r['how']} | {r['median']:.3g} ({r['min']:.3g}-{r['max']:.3g}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mkl", default="", help="MKL's libmkl_rt.so.N")
    parser.add_argument("--onednn", default="", help="oneDNN's libdnnl.so.N")
    parser.add_argument("--blis", default="", help="the site-packages holding cython-blis")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "matmul_libraries.json"))
    args = parser.parse_args(argv)
    libpython = ""
    blis = ""
    if args.blis:
        blis = _blis_module(args.blis)
        libpython = os.path.join(
            sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
        )
    libraries = {"scipy-openblas32": _version("scipy-openblas32")}
    if args.mkl:
        libraries["mkl"] = _version("mkl", _site_of(args.mkl))
    if args.onednn:
        libraries["onednn-cpu-gomp"] = _version("onednn-cpu-gomp", _site_of(args.onednn))
    if args.blis:
        libraries["blis"] = _version("blis", args.blis)
    with tempfile.TemporaryDirectory() as directory:
        exe = kernel_parts.build(directory, "matmul_libraries")
        command = [exe, _openblas(), args.mkl, args.onednn, libpython, blis]
        one_thread = {f"{v}_NUM_THREADS": "1" for v in ("OMP", "MKL", "BLIS", "OPENBLAS")}
        run = subprocess.run(
            command, check=True, capture_output=True, text=True, env={**os.environ, **one_thread}
        )
    result = json.loads(run.stdout)
    payload = {
        "benchmark": "matmul_libraries",
        "env": _common.environment(),
        "libraries": libraries,
        **result,
    }
    _common.write_results(args.out, payload, markdown(payload))


def _site_of(library: str) -> str | None:
    """The site-packages of the environment whose ``lib`` directory holds ``library``."""
    prefix = os.path.dirname(os.path.dirname(os.path.abspath(library)))
    found = glob.glob(os.path.join(prefix, "lib", "python3*", "site-packages"))
    return found[0] if found else None


if __name__ == "__main__":
    main()
