"""The CPU kernels' parts timed one at a time on one thread, against the core's own peak.

    python benchmarks/kernel_parts.py --out benchmarks/results/kernel_parts.json

Compiles ``benchmarks/kernel_parts.cc`` with the flags ``setup.py`` builds the kernels with
(``$CXX``, default ``g++``; x86-64 only) and runs it: a loop of independent multiply-adds in
registers (the core's peak in the vectors the kernels use), the recurrent loops' small matmul
(``csrc/small_matmul.h``, its operand packed once) for one tile in L1 and at the per-thread
shapes of W1 and W3 (two threads splitting the batch by rows), and the LSTM's pointwise
forward row (``csrc/lstm.cc``) over 128 units with every operand in L1. Medians of seven
repeats with the range; a train step's profile (``step_profile.py``) shows what the same
parts reach in place.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile

import jaxlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join(os.path.dirname(HERE), "csrc")
FLAGS = ["-std=c++20", "-O3", "-fno-trapping-math", "-fno-math-errno", "-ffp-contract=fast"]


def build(directory: str, name: str = "kernel_parts") -> str:
    """Compiles the harness ``benchmarks/{name}.cc`` into ``directory``; returns the
    executable's path."""
    exe = os.path.join(directory, name)
    include = os.path.join(os.path.dirname(jaxlib.__file__), "include")
    compiler = shlex.split(os.environ.get("CXX", "g++"))
    source = os.path.join(HERE, f"{name}.cc")
    command = [*compiler, *FLAGS, f"-I{CSRC}", f"-I{include}", source, "-o", exe, "-w", "-ldl"]
    subprocess.run(command, check=True)
    return exe


def markdown(payload: dict) -> str:
    env = payload["env"]
    lines = [
        "# The kernels' parts, one thread",
        "",
        f"{env['cpu']} ({', '.join(env['cpu_vector_extensions'])}), "
        f"vector level {payload['vector_level']}; `python benchmarks/kernel_parts.py`.",
        "",
        "| part | median | range |",
        "|---|---|---|",
    ]
    for part in payload["parts"]:
        unit = part["unit"]
        lines.append(
            f"| {part['name']} | {part['median']:.3g} {unit} "
            f"| {part['min']:.3g}-{part['max']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "kernel_parts.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        exe = build(directory)
        run = subprocess.run([exe], check=True, capture_output=True, text=True)
    result = json.loads(run.stdout)
    payload = {"benchmark": "kernel_parts", "env": _common.environment(), **result}
    _common.write_results(args.out, payload, markdown(payload))


if __name__ == "__main__":
    main()
