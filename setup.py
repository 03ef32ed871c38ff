"""Builds jaxrnn's CPU kernels (``csrc/``); the rest of the package is declared in
``pyproject.toml``. The kernels are an XLA FFI library loaded with ``ctypes`` by
``jaxrnn/_native.py`` (no Python module init): jaxlib supplies the FFI headers at build time
and scipy-openblas32 the ``sgemm`` at run time.

A machine that cannot compile them (a C++20 compiler, GCC or Clang) still installs jaxrnn,
which then runs its XLA loops: the build prints a warning saying so, and ``jaxrnn info`` and
a logged warning at the first CPU computation say why. With ``JAXRNN_REQUIRE_KERNELS=1`` a
failed build is an error instead (``./dev.sh wheel`` and CI set it).

The library uses nothing of Python's C API, so one wheel serves every CPython: it is named
``_recurrence.so`` (no interpreter in the name) and the wheel is tagged ``py3-none-<platform>``.
``JAXRNN_CXX`` replaces the C++ compiler (a command line, GCC-style flags; Python's flags are
kept): ``./dev.sh wheel`` sets it to ``zig c++`` for glibc 2.28, whose libc++ goes into the
library, so that the wheel needs nothing newer than glibc 2.28 and no C++ runtime.
"""

import concurrent.futures
import glob
import importlib.machinery
import os
import shlex
import sys

import jaxlib
from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

REQUIRE = "JAXRNN_REQUIRE_KERNELS"
CXX = "JAXRNN_CXX"
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
    ``JAXRNN_REQUIRE_KERNELS=1``; names the library ``_recurrence.so`` and compiles it with
    ``JAXRNN_CXX`` where that is set."""

    def get_ext_filename(self, fullname):
        # A library for ctypes, not a Python module: no interpreter tag, and ".so" is a suffix
        # that importlib.util.find_spec accepts on every CPython (jaxrnn/_native.py finds it so).
        if ".so" not in importlib.machinery.EXTENSION_SUFFIXES:
            return super().get_ext_filename(fullname)
        return os.path.join(*fullname.split(".")) + ".so"

    def build_extensions(self):
        command = os.environ.get(CXX)
        if command:
            use_compiler(self.compiler, shlex.split(command))
            for ext in self.extensions:
                # A C++ runtime linked in (zig's libc++) brings megabytes of debug information.
                ext.extra_link_args = [*ext.extra_link_args, "-Wl,--strip-debug"]
        compile_in_parallel(self.compiler)
        super().build_extensions()

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
        else:
            # The library under its earlier name (_recurrence.cpython-311-x86_64-linux-gnu.so),
            # left in a checkout by an older build, would be the one that find_spec picks.
            built = self.get_ext_fullpath(ext.name)
            stem = os.path.basename(built).partition(".")[0]
            source = os.path.join(HERE, *ext.name.split(".")[:-1])
            for folder in {os.path.dirname(built), source}:
                for stale in glob.glob(os.path.join(folder, f"{stem}.*.so")):
                    os.remove(stale)


# The command lines that compile and link the library (compiler_so: C++ sources too, in older
# setuptools); the C-only linker_so is left alone.
COMPILER_LINES = (
    "compiler_so",
    "compiler_so_cxx",
    "compiler_cxx",
    "linker_so_cxx",
    "linker_exe_cxx",
)


def use_compiler(compiler, command: list[str]) -> None:
    """Puts ``command`` in place of the compiler (the first word) in each of ``compiler``'s
    command lines that build the library; Python's flags after it stay."""
    for name in COMPILER_LINES:
        line = getattr(compiler, name, None)
        if line:
            compiler.set_executable(name, command + line[1:])


def compile_in_parallel(compiler) -> None:
    """Makes ``compiler`` compile its sources one process per core (the library's files take
    about equally long, and setuptools compiles them one after another)."""
    serial = compiler.compile

    def compile(sources, *args, **kwargs):
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            objects = pool.map(lambda source: serial([source], *args, **kwargs), sources)
            return [path for one in objects for path in one]

    compiler.compile = compile


class OneWheel(bdist_wheel):
    """A wheel for every CPython on its platform (``py3-none-<platform>``): the library is
    loaded with ctypes, not imported."""

    def get_tag(self):
        return ("py3", "none", super().get_tag()[2])


setup(
    cmdclass={"build_ext": BuildKernels, "bdist_wheel": OneWheel},
    ext_modules=[
        Extension(
            "jaxrnn._recurrence",
            sources=sources("*.cc"),
            depends=sources("*.h"),
            include_dirs=[os.path.join(os.path.dirname(jaxlib.__file__), "include")],
            language="c++",
            # -fno-trapping-math lets the pointwise loops vectorise; NaN still propagates.
            # -ffp-contract=fast: a * b + c as one fused multiply-add (ISO mode's default is
            # off in GCC), the small matmuls' inner step. -g0: no debug information (Python's
            # flags ask for it; 5.6 MB of the library's 5.9).
            extra_compile_args=[
                "-std=c++20",
                "-O3",
                "-fno-trapping-math",
                "-fno-math-errno",
                "-ffp-contract=fast",
                "-g0",
            ],
            optional=os.environ.get(REQUIRE) != "1",
        )
    ],
)
