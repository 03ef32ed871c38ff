"""Checks who can install a built wheel: its tags, and what its libraries need of the system.

    python scripts/wheel_platform.py dist/jaxrnn-*.whl      # ./dev.sh wheel and smoke run it

Reads the wheel itself (the standard library alone: no auditwheel, no readelf) and exits
non-zero at the first check that fails:

* the tags, in the file name and in its ``WHEEL`` file, are ``py3-none-manylinux_2_Y_<arch>``
  with Y at most 28 (any CPython, any glibc from 2.28), and ``Requires-Python`` asks for no
  more than 3.11;
* each ELF library inside is built for ``<arch>``, is named without an interpreter tag (one
  file for every CPython), links only the C library's own parts (libc, libm, libpthread, libdl,
  librt, the dynamic loader: no C++ runtime, nothing vendored in by auditwheel) and needs no
  symbol version newer than GLIBC_2.28.
"""

from __future__ import annotations

import argparse
import os
import re
import struct
import sys
import zipfile

GLIBC = (2, 28)  # the oldest glibc the wheel installs on (manylinux_2_28, as PyTorch's)
PYTHON = (3, 11)  # the oldest CPython that jaxrnn supports
MACHINES = {"x86_64": 62, "aarch64": 183}  # ELF e_machine of each platform tag's arch
SYSTEM_LIBRARIES = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}
SHT_DYNAMIC, SHT_GNU_VERNEED, DT_NEEDED = 6, 0x6FFFFFFE, 1


def check(condition: bool, what: str) -> None:
    print(("ok    " if condition else "FAIL  ") + what, flush=True)
    if not condition:
        raise SystemExit(1)


def elf_needs(data: bytes) -> tuple[int, list[str], dict[str, set[str]]]:
    """``(e_machine, needed, versions)`` of a 64-bit little-endian ELF file: the libraries it
    links (``DT_NEEDED``) and, per library, the symbol versions it needs (``.gnu.version_r``)."""
    if data[:4] != b"\x7fELF" or data[4:6] != b"\x02\x01":
        raise ValueError("not a 64-bit little-endian ELF file")
    (machine,) = struct.unpack_from("<H", data, 18)
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize) of each section
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]

    def string(table: int, offset: int) -> str:
        start = sections[table][4] + offset
        return data[start : data.index(b"\0", start)].decode()

    needed: list[str] = []
    versions: dict[str, set[str]] = {}
    for _, kind, _, _, offset, size, link, info, _, _ in sections:
        if kind == SHT_DYNAMIC:
            for at in range(offset, offset + size, 16):
                tag, value = struct.unpack_from("<qQ", data, at)
                if tag == DT_NEEDED:
                    needed.append(string(link, value))
        elif kind == SHT_GNU_VERNEED:
            entry = offset
            for _ in range(info):  # Elf64_Verneed entries, each with its Elf64_Vernaux list
                _, count, file, aux, following = struct.unpack_from("<HHIII", data, entry)
                names = versions.setdefault(string(link, file), set())
                at = entry + aux
                for _ in range(count):
                    _, _, _, name, step = struct.unpack_from("<IHHII", data, at)
                    names.add(string(link, name))
                    at += step
                entry += following
    return machine, needed, versions


def glibc_version(name: str) -> tuple[int, ...] | None:
    """``(2, 28)`` for ``GLIBC_2.28``; None for any other version name."""
    match = re.fullmatch(r"GLIBC_(\d+(?:\.\d+)+)", name)
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def check_wheel(path: str) -> None:
    """Every check of the module's docstring on the wheel at ``path``."""
    name = os.path.basename(path)
    match = re.fullmatch(r"([^-]+)-([^-]+)-([^-]+)-([^-]+)-([^-]+)\.whl", name)
    check(match is not None, f"a wheel file name: {name}")
    assert match is not None
    python, abi, platforms = match.group(3), match.group(4), match.group(5).split(".")
    check(python == "py3" and abi == "none", f"any CPython 3: {python}-{abi}")
    arches = set()
    for platform in platforms:
        tag = re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", platform)
        check(
            tag is not None and (int(tag.group(1)), int(tag.group(2))) <= GLIBC,
            f"platform {platform}: glibc {GLIBC[0]}.{GLIBC[1]} or older",
        )
        assert tag is not None
        arches.add(tag.group(3))
    check(len(arches) == 1 and arches <= MACHINES.keys(), f"one architecture: {sorted(arches)}")
    arch = arches.pop()

    with zipfile.ZipFile(path) as wheel:
        files = wheel.namelist()
        info = next(f for f in files if f.endswith(".dist-info/WHEEL"))
        wheel_tags = re.findall(r"^Tag: (\S+)$", wheel.read(info).decode(), re.MULTILINE)
        expected = [f"{python}-{abi}-{platform}" for platform in platforms]
        check(sorted(wheel_tags) == sorted(expected), f"{info} tags {wheel_tags}")
        metadata = wheel.read(info.replace("/WHEEL", "/METADATA")).decode()
        requires = re.search(r"^Requires-Python: *(\S+)$", metadata, re.MULTILINE)
        spec = requires.group(1) if requires else ""
        lowest = re.fullmatch(r">=(\d+)\.(\d+)", spec)
        check(
            lowest is not None and (int(lowest[1]), int(lowest[2])) <= PYTHON,
            f"Requires-Python {spec!r}: every Python from {PYTHON[0]}.{PYTHON[1]}",
        )
        contents = {f: wheel.read(f) for f in files}
    libraries = {f: data for f, data in contents.items() if data[:4] == b"\x7fELF"}
    check(bool(libraries), f"ELF libraries in the wheel: {sorted(libraries)}")
    for library, data in sorted(libraries.items()):
        machine, needed, versions = elf_needs(data)
        check(machine == MACHINES[arch], f"{library}: built for {arch} (e_machine {machine})")
        check(
            re.fullmatch(r"[\w/]+\.so", library) is not None,
            f"{library}: no interpreter tag in the name",
        )
        others = sorted(set(needed) - SYSTEM_LIBRARIES)
        check(not others, f"{library} links {needed}: the C library's parts alone")
        names = sorted({v for vs in versions.values() for v in vs})
        not_glibc = [v for v in names if glibc_version(v) is None]
        check(not not_glibc, f"{library}: glibc symbol versions alone (others: {not_glibc})")
        newest = max((glibc_version(v) for v in names), default=(0,))
        assert newest is not None
        check(
            newest <= GLIBC,
            f"{library}: newest symbol version GLIBC_{'.'.join(map(str, newest))} "
            f"(at most GLIBC_{GLIBC[0]}.{GLIBC[1]})",
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheels", nargs="+", help="wheel files")
    args = parser.parse_args(argv)
    for path in args.wheels:
        check_wheel(path)
    print(
        f"{len(args.wheels)} wheel(s): any CPython from {PYTHON[0]}.{PYTHON[1]}, "
        f"glibc from {GLIBC[0]}.{GLIBC[1]}"
    )


if __name__ == "__main__":
    sys.exit(main())
