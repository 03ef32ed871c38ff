"""Builds jaxrnn's CPU kernels (``csrc/``); the rest of the package is declared in
``pyproject.toml``. The kernels are an XLA FFI library loaded with ``ctypes`` by
``jaxrnn/_native.py`` (no Python module init): jaxlib supplies the FFI headers at build time
and scipy-openblas32 the ``sgemm`` at run time. A machine that cannot compile them still
installs jaxrnn, which then runs its XLA loops (``optional=True``)."""

import os

import jaxlib
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "jaxrnn._recurrence",
            sources=[f"csrc/{name}.cc" for name in ("recurrence", "simple", "lstm", "gru")],
            depends=["csrc/recurrence.h"],
            include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],
            language="c++",
            # -fno-trapping-math lets the pointwise loops vectorise; NaN still propagates.
            extra_compile_args=["-std=c++20", "-O3", "-fno-trapping-math", "-fno-math-errno"],
            optional=True,
        )
    ]
)
