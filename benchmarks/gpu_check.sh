#!/usr/bin/env bash
# The GPU check: jaxrnn's precision and semantics tests and the train-step benchmarks on an
# NVIDIA GPU, in under 8 minutes, ending with the tables.
#
#   pip install -U "jax[cuda12]" && pip install -e ".[all,test]"   # once, in a checkout
#   bash benchmarks/gpu_check.sh [OUTDIR]                            # default: gpu_check/
#
# 1. tests/test_precision.py, test_implementation.py, test_drivers.py and test_layers.py on
#    the GPU (float32 matmuls at "highest" precision, since the tests compare against float64
#    NumPy to float32 tolerances; TF32 would fail them by design);
# 2. benchmarks/train_step.py (jaxrnn against Flax nn.RNN, W1-W6) and
#    benchmarks/precision.py (bfloat16 against float32, W1-W6), JSON and markdown in OUTDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-gpu_check}"
PY="${PYTHON:-python3}"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1

"$PY" - <<'PY'
import jax
backend = jax.default_backend()
if backend != "gpu":
    raise SystemExit(f"gpu_check: jax's default backend is {backend!r}, not a GPU "
                     "(install jax for CUDA first: pip install -U 'jax[cuda12]')")
print("devices:", jax.devices())
PY

start=$SECONDS
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
  -n 0 tests/test_precision.py tests/test_implementation.py tests/test_drivers.py \
  tests/test_layers.py 2>&1 | tee "$OUTDIR/tests.log" | tail -5
tests_status=${PIPESTATUS[0]}
echo "tests: exit $tests_status in $((SECONDS - start)) s"

start=$SECONDS
timeout 150 "$PY" benchmarks/train_step.py --repeats 5 --repeats-big 5 \
  --out "$OUTDIR/train_step_gpu.json" > "$OUTDIR/train_step.log" 2>&1 || echo "train_step failed"
timeout 90 "$PY" benchmarks/precision.py --repeats 5 --repeats-big 5 \
  --out "$OUTDIR/precision_gpu.json" > "$OUTDIR/precision.log" 2>&1 || echo "precision failed"
echo "benchmarks: $((SECONDS - start)) s"

for table in "$OUTDIR/train_step_gpu.md" "$OUTDIR/precision_gpu.md"; do
  [ -f "$table" ] && { echo; cat "$table"; }
done
exit "$tests_status"
