#!/usr/bin/env bash
# The GPU check, in at most 5 minutes on an NVIDIA GPU, ending with the train-step table.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]          # default: gpu_check/
#
# jaxrnn runs from this checkout (PYTHONPATH); jax (for CUDA), flax, optax, equinox and, for
# the PyTorch columns, torch must be installed. PEERS (default: gpu-peers/ in the checkout, an
# ignored folder) is the peer harness behind the GPU table of PEER-BENCHMARKS.md; without it
# the benchmarks are skipped.
#
# 1. tests/test_pallas.py (the Pallas kernels, through Triton here), test_drivers.py,
#    test_resets_loops.py and test_precision.py on the GPU (float32 matmuls at "highest"
#    precision: the tests compare against float64 NumPy to float32 tolerances);
# 2. the train-step table: jaxrnn (default, fused and pallas; float32 and bfloat16), Flax
#    nn.RNN and JAX's cuDNN LSTM (benchmarks/gpu_peers.py), then PyTorch cuDNN eager and as a
#    CUDA graph (PEERS/torch_gpu.py); OUTDIR/gpu.jsonl and OUTDIR/gpu.md;
# 3. the linear recurrences against the LSTM and GRU at T 1024 and 8192, and MinGRU's
#    gradient through each method of linear_scan at T 8192 (benchmarks/linear_recurrences.py);
#    OUTDIR/linear_recurrences.{json,md}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-gpu_check}"
PEERS="${PEERS:-gpu-peers}"
PY="${PYTHON:-python3}"
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false

"$PY" - <<'PY' || exit 2
import jax
backend = jax.default_backend()
if backend != "gpu":
    raise SystemExit(f"gpu_check: jax's default backend is {backend!r}, not a GPU")
print("devices:", jax.devices(), "jax", jax.__version__)
PY

start=$SECONDS
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 120 "$PY" -m pytest -q -p no:cacheprovider \
  -n 0 tests/test_pallas.py tests/test_drivers.py tests/test_resets_loops.py \
  tests/test_precision.py 2>&1 | tee "$OUTDIR/tests.log" | tail -5
tests_status=${PIPESTATUS[0]}
echo "tests: exit $tests_status in $((SECONDS - start)) s"

if [ -d "$PEERS" ]; then
  start=$SECONDS
  rm -f "$OUTDIR/gpu.jsonl"
  timeout 120 "$PY" benchmarks/gpu_peers.py "$PEERS" "$OUTDIR/gpu.jsonl" \
    > "$OUTDIR/jax.log" 2>&1 || echo "gpu_peers.py failed or ran out of time (see jax.log)"
  timeout 60 "$PY" "$PEERS/torch_gpu.py" "$OUTDIR/gpu.jsonl" \
    > "$OUTDIR/torch.log" 2>&1 || echo "torch_gpu.py failed or ran out of time (see torch.log)"
  "$PY" "$PEERS/table.py" "$OUTDIR/gpu.jsonl" > "$OUTDIR/gpu.md"
  echo "benchmarks: $((SECONDS - start)) s"
  echo
  cat "$OUTDIR/gpu.md"
else
  echo "no peer harness at $PEERS: benchmarks skipped"
fi

start=$SECONDS
timeout 90 "$PY" benchmarks/linear_recurrences.py --steps 1024,8192 --methods-steps 8192 \
  --case-seconds 2 --max-repeats 5 --out "$OUTDIR" > "$OUTDIR/linear.log" 2>&1 \
  || echo "linear_recurrences.py failed or ran out of time (see linear.log)"
echo "linear recurrences: $((SECONDS - start)) s"
tail -3 "$OUTDIR/linear.log"
exit "$tests_status"
