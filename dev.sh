#!/usr/bin/env bash
# jaxrnn's front door. Each command sets up what it needs (a venv in .venv, the install).
#   ./dev.sh train [jaxrnn train flags]   train (default: the lstm_sequences config, no download)
#   ./dev.sh test  [pytest flags]         ruff (lint, format), mypy, and the whole test suite
#   ./dev.sh bench [benchmark flags]      the scan-vs-unroll benchmark (see benchmarks/)
#   ./dev.sh docs  [mkdocs build flags]   the documentation site, into site/ (warnings are errors)
#   ./dev.sh shell                        a shell with the venv active
set -euo pipefail
cd "$(dirname "$0")"
VENV="${JAXRNN_VENV:-.venv}"

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  # Reinstall only when the dependency files changed since the last install.
  local stamp="$VENV/.jaxrnn-installed"
  # (and the CPU kernels are rebuilt when their source changed).
  local changed=""
  for f in pyproject.toml constraints.txt setup.py csrc/*; do
    [ "$f" -nt "$stamp" ] && changed=1
  done
  if [ ! -f "$stamp" ] || [ -n "$changed" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    # PIP_CONSTRAINT also pins the build environment's jaxlib (the FFI headers) to ours.
    PIP_CONSTRAINT=constraints.txt "$VENV/bin/python" -m pip install --quiet -e ".[test]"
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
    exec "$VENV/bin/python" -m pytest -n 2 --durations=15 "$@"
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
        | PIP_CONSTRAINT=constraints.txt "$VENV/bin/python" -m pip install --quiet -r /dev/stdin
      touch "$docs_stamp"
    fi
    NO_MKDOCS_2_WARNING=1 exec "$VENV/bin/mkdocs" build --strict "$@"
    ;;
  shell)
    setup
    exec bash --rcfile <(echo "source '$VENV/bin/activate'")
    ;;
  *)
    echo "usage: ./dev.sh {train|test|bench|docs|shell} [args]" >&2
    exit 2
    ;;
esac
