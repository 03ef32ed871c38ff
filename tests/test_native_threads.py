"""The CPU kernels leave the user's BLAS alone: NumPy's and SciPy's thread counts, as
threadpoolctl reads them, are their defaults (one per core) after ``import jaxrnn`` and a kernel
call, whether SciPy's BLAS was loaded before the kernels or after (the kernels' own copy runs
one thread; ``OPENBLAS_NUM_THREADS``, which it is loaded under, stays unset)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CODE = """
import json, os, sys
import numpy, threadpoolctl
if {scipy_first}:
    import scipy.linalg

def counts():
    # Each BLAS loaded in the process, by file, except the kernels' own copy.
    return {{i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas" and "scipy_openblas32" not in i["filepath"]}}

before = counts()
import jax, jax.numpy as jnp
import jaxrnn
from jaxrnn import _native
cell = jaxrnn.LSTM(64)
params = cell.init(jax.random.key(0), 8)
xs = jnp.ones((16, 10, 8))
loss = lambda p: jnp.sum(jaxrnn.rnn(cell, p, xs)[0] ** 2)
hlo = jax.jit(jax.grad(loss)).lower(params).as_text()
jax.block_until_ready(jax.jit(jax.grad(loss))(params))
import scipy.linalg
kernels = [i for i in threadpoolctl.threadpool_info() if "scipy_openblas32" in i["filepath"]]
print(json.dumps({{
    "before": before,
    "after": counts(),
    "env": os.environ.get("OPENBLAS_NUM_THREADS"),
    "loaded": _native.kernel_status()[0],
    "calls_kernels": "jaxrnn_lstm_backward" in hlo,
    "kernel_blas_threads": [i["num_threads"] for i in kernels],
    "numpy_blas": [i["filepath"] for i in threadpoolctl.threadpool_info()
                   if "numpy" in i["filepath"]],
    "scipy_blas": [i["filepath"] for i in threadpoolctl.threadpool_info()
                   if "scipy.libs" in i["filepath"] or "scipy/" in i["filepath"]],
}}))
"""


@pytest.mark.parametrize("scipy_first", [True, False], ids=["scipy_before", "scipy_after"])
def test_kernels_leave_numpy_and_scipy_threads_alone(scipy_first):
    env = dict(os.environ)
    for name in ("JAXRNN_NATIVE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        env.pop(name, None)
    code = textwrap.dedent(CODE.format(scipy_first=scipy_first))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["loaded"] and result["calls_kernels"]
    assert result["kernel_blas_threads"] == [1]  # the kernels' private copy: one thread
    assert result["env"] is None
    after = result["after"]
    assert result["numpy_blas"] and result["scipy_blas"], after  # both were found
    default = result["before"][result["numpy_blas"][0]]
    if len(os.sched_getaffinity(0)) > 1:
        assert default > 1  # so that a count forced to the kernels' 1 would show
    assert all(count == default for count in after.values()), after
    for path, count in result["before"].items():
        assert after[path] == count
