"""Builds jaxrnn's CPU kernels (``csrc/``); the rest of the package is declared in
``pyproject.toml``. The kernels are an XLA FFI library loaded with ``ctypes`` by
``jaxrnn/_native.py`` (no Python module init): jaxlib supplies the FFI headers at build time
and scipy-openblas32 the ``sgemm`` at run time.

A machine that cannot compile them (a C++20 compiler, GCC or Clang) still installs jaxrnn,
which then runs its XLA loops: the build prints a warning saying so, and ``jaxrnn info`` and
a logged warning at the first CPU computation say why. With ``JAXRNN_REQUIRE_KERNELS=1`` a
failed build is an error instead (``./dev.sh wheel`` and CI set it).
"""

import glob
import os
import sys

import jaxlib
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

REQUIRE = "JAXRNN_REQUIRE_KERNELS"
HERE = os.path.dirname(os.path.abspath(__file__))


def sources(pattern: str) -> list[str]:
    """The files of ``csrc/`` that match ``pattern``, relative to this directory, sorted:
    the shared recurrence and each cell's kernels (a cell with kernels adds its file here)."""
    found = glob.glob(os.path.join(HERE, "csrc", pattern))
    if not found:
        raise FileNotFoundError(f"no csrc/{pattern} next to setup.py ({HERE})")
    return sorted(os.path.relpath(path, HERE) for path in found)


class BuildKernels(build_ext):
    """``build_ext`` that reports a failed kernel build in a few plain lines, or fails with
    ``JAXRNN_REQUIRE_KERNELS=1``."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as error:
            if os.environ.get(REQUIRE) == "1":
                raise
            rule = "=" * 78
            print(
                f"\n{rule}\nWARNING: jaxrnn's CPU kernels ({ext.name}) did not build:\n"
                f"  {error}\n"
                "jaxrnn installs without them and runs its XLA loops instead (slower on CPU).\n"
                "They need a C++20 compiler (GCC or Clang); the compiler's messages are\n"
                f"above. Set {REQUIRE}=1 to make this an error.\n{rule}\n",
                file=sys.stderr,
            )


setup(
    cmdclass={"build_ext": BuildKernels},
    ext_modules=[
        Extension(
            "jaxrnn._recurrence",
            sources=sources("*.cc"),
            depends=sources("*.h"),
            include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],
            language="c++",
            # -fno-trapping-math lets the pointwise loops vectorise; NaN still propagates. -g0:
            # no debug information (Python's flags ask for it; 5.6 MB of the library's 5.9).
            extra_compile_args=[
                "-std=c++20",
                "-O3",
                "-fno-trapping-math",
                "-fno-math-errno",
                "-g0",
            ],
            optional=os.environ.get(REQUIRE) != "1",
        )
    ],
)
