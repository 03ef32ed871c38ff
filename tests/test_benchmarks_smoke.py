"""CI smoke tests of the benchmark suite: ``scan_vs_unroll --quick`` runs and writes its JSON;
the kernels' two harnesses (parts, libraries) compile against the kernels' sources.

No timing assertions (CI machines are shared): the first checks that every cell, variant and
mode of the quick grid is there with a compile time, a step time and the environment.
"""

import json
import os
import platform
import shutil
import subprocess
import sys

import jaxlib
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_scan_vs_unroll_quick(tmp_path):
    out = tmp_path / "svu.json"
    subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "scan_vs_unroll.py"),
            "--quick",
            "--cells",
            "lstm",
            "--out",
            str(out),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "scan_vs_unroll"
    for key in ("device", "jax", "jaxlib", "flax", "cpu"):
        assert payload["env"][key]
    assert payload["grid"]["name"] == "quick"
    seen = {(e["cell"], e["mode"], e["variant"]) for e in payload["entries"]}
    expected = {
        (cell, mode, variant)
        for cell in ("lstm",)  # one cell: the others' loops are the same benchmark code
        for mode in ("fwd", "train")
        for variant in ("static", "kernel", "unroll_1", "unroll_T")
    }
    if not payload["settings"]["cpu_kernels"]:
        expected = {e for e in expected if e[2] != "kernel"}
    assert seen == expected
    for e in payload["entries"]:
        assert e["compile_s"] > 0
        assert 0 < e["min_ms"] <= e["median_ms"] <= e["max_ms"]
        assert e["repeats"] >= 1
        assert e["memory"] is None or e["memory"]["temp"] >= 0
    assert (tmp_path / "svu.md").read_text().count("| lstm | 8 | 16 |") == 2


@pytest.mark.skipif(
    platform.machine() != "x86_64" or shutil.which("g++") is None, reason="an x86-64 g++"
)
@pytest.mark.parametrize("harness", ["kernel_parts", "matmul_libraries"])
def test_the_kernel_harnesses_compile_against_the_kernels(harness):
    """``benchmarks/kernel_parts.cc`` and ``matmul_libraries.cc`` include the kernels'
    sources: a change to them that a harness no longer compiles against shows here (syntax
    only; the benchmarks themselves take 20-30 s)."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import kernel_parts
    finally:
        sys.path.pop(0)
    include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
    source = os.path.join(ROOT, "benchmarks", f"{harness}.cc")
    command = ["g++", *kernel_parts.FLAGS, "-fsyntax-only", "-w"]
    command += [f"-I{kernel_parts.CSRC}", f"-I{include}", source]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
