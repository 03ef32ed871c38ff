"""``scripts/wheel_platform.py``, the check of a wheel's tags and of what its libraries need of
the system: its ELF reader against ``readelf``, and wheels made here that pass and fail."""

import importlib.util
import pathlib
import platform
import re
import shutil
import subprocess
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MACHINE = platform.machine()


def _module():
    spec = importlib.util.spec_from_file_location(
        "wheel_platform", ROOT / "scripts" / "wheel_platform.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wheel_platform = _module()
needs_linux = pytest.mark.skipif(
    platform.system() != "Linux" or MACHINE not in wheel_platform.MACHINES,
    reason="ELF libraries of x86-64 or aarch64 Linux",
)


def _library(tmp_path, code: str, *flags: str) -> bytes:
    """A shared library compiled here from C ``code``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    source = tmp_path / "lib.c"
    source.write_text(code)
    out = tmp_path / "lib.so"
    subprocess.run([compiler, "-shared", "-fPIC", "-O1", *flags, source, "-o", out], check=True)
    return out.read_bytes()


def _wheel(tmp_path, library: bytes, tags: str = "", requires: str = ">=3.11") -> str:
    """A jaxrnn wheel holding ``library`` as ``jaxrnn/_recurrence.so``, tagged ``tags``."""
    tags = tags or f"py3-none-manylinux_2_28_{MACHINE}"
    python, abi, platforms = tags.split("-")
    path = tmp_path / f"jaxrnn-0.1.0-{tags}.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("jaxrnn/_recurrence.so", library)
        lines = [f"Tag: {python}-{abi}-{p}" for p in platforms.split(".")]
        wheel.writestr(
            "jaxrnn-0.1.0.dist-info/WHEEL", "Root-Is-Purelib: false\n" + "\n".join(lines)
        )
        wheel.writestr(
            "jaxrnn-0.1.0.dist-info/METADATA", f"Name: jaxrnn\nRequires-Python: {requires}\n"
        )
    return str(path)


@needs_linux
def test_elf_needs_agrees_with_readelf(tmp_path):
    data = _library(tmp_path, "#include <stdlib.h>\nvoid *f(unsigned long n) { return malloc(n); }")
    machine, needed, versions = wheel_platform.elf_needs(data)
    assert machine == wheel_platform.MACHINES[MACHINE]
    assert "libc.so.6" in needed
    if shutil.which("readelf") is None:
        pytest.skip("no readelf to compare with")
    path = tmp_path / "lib.so"
    dynamic = subprocess.run(["readelf", "-d", path], capture_output=True, text=True).stdout
    assert needed == re.findall(r"\(NEEDED\)\s+Shared library: \[(.+)\]", dynamic)
    listing = subprocess.run(["readelf", "-V", path], capture_output=True, text=True).stdout
    need = listing[listing.index(".gnu.version_r") :]
    names = set(re.findall(r"Name: (GLIBC\S+)", need))
    assert names and names == {v for vs in versions.values() for v in vs}


def test_glibc_version():
    assert wheel_platform.glibc_version("GLIBC_2.28") == (2, 28)
    assert wheel_platform.glibc_version("GLIBC_2.2.5") == (2, 2, 5)
    assert wheel_platform.glibc_version("GLIBCXX_3.4.29") is None
    assert wheel_platform.glibc_version("GLIBC_PRIVATE") is None


@needs_linux
def test_a_wheel_for_any_cpython_and_glibc_2_28_passes(tmp_path, capsys):
    library = _library(tmp_path, "int f(void) { return 1; }", "-nostdlib")
    wheel_platform.check_wheel(_wheel(tmp_path, library))
    assert "FAIL" not in capsys.readouterr().out


@needs_linux
@pytest.mark.parametrize(
    "tags, requires, code, failure",
    [
        ("cp311-cp311-manylinux_2_28_{m}", ">=3.11", "", "any CPython 3"),
        ("py3-none-manylinux_2_34_{m}", ">=3.11", "", "glibc 2.28 or older"),
        ("py3-none-manylinux_2_28_{m}", ">=3.12", "", "every Python from 3.11"),
        # close_range is GLIBC_2.34: this machine's glibc is newer than 2.28
        ("py3-none-manylinux_2_28_{m}", ">=3.11", "close_range", "newest symbol version"),
    ],
)
def test_what_fails(tmp_path, capsys, tags, requires, code, failure):
    if code:
        if int(platform.libc_ver()[1].split(".")[1]) < 34:
            pytest.skip("glibc older than 2.34 here")
        source = "#include <unistd.h>\nint g(void) { return close_range(3, 9, 0); }"
        library = _library(tmp_path, "#define _GNU_SOURCE\n" + source)
    else:
        library = _library(tmp_path, "int f(void) { return 1; }", "-nostdlib")
    wheel = _wheel(tmp_path, library, tags.format(m=MACHINE), requires)
    with pytest.raises(SystemExit):
        wheel_platform.check_wheel(wheel)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("FAIL") and failure in last, last


@needs_linux
def test_a_cpp_runtime_fails(tmp_path, capsys):
    """The system compiler's C++ build links libstdc++: a wheel must not need it."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "lib.cc"
    source.write_text("#include <string>\nstd::string f() { return std::string(40, 'x'); }")
    out = tmp_path / "lib.so"
    subprocess.run([compiler, "-shared", "-fPIC", source, "-o", out], check=True)
    with pytest.raises(SystemExit):
        wheel_platform.check_wheel(_wheel(tmp_path, out.read_bytes()))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("FAIL") and "the C library's parts alone" in last, last
