"""jaxrnn's fused and Pallas loops beside the peers of the GPU table, in one JAX process: runs
the JAX half of the peer harness (``jax_gpu.py`` in ``PEERS``, the folder of
``PEER-BENCHMARKS.md``'s GPU table, not part of jaxrnn) with jaxrnn's own variants in place
of its jaxrnn rows: ``implementation=None``, ``"fused"`` and ``"pallas"``, float32 and
bfloat16.

    python benchmarks/gpu_peers.py PEERS OUT.jsonl      (GPU_BENCH_SMALL=1: a CPU dry run)

Then ``python PEERS/torch_gpu.py OUT.jsonl && python PEERS/table.py OUT.jsonl`` adds PyTorch
and prints the table (``benchmarks/gpu_check.sh`` runs all three).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    peers, out = os.path.abspath(argv[0]), argv[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [peers, root]
    sys.argv = [os.path.join(peers, "jax_gpu.py"), out]  # the harness reads OUT from argv
    import jax_gpu

    bf16 = jax_gpu.BF16
    ours = [
        ("jaxrnn", "default f32", lambda w: jax_gpu.m_jaxrnn(w)),
        ("jaxrnn", "fused f32", lambda w: jax_gpu.m_jaxrnn(w, "fused")),
        ("jaxrnn", "pallas f32", lambda w: jax_gpu.m_jaxrnn(w, "pallas")),
        ("jaxrnn", "fused bf16", lambda w: jax_gpu.m_jaxrnn(w, "fused", bf16)),
        ("jaxrnn", "pallas bf16", lambda w: jax_gpu.m_jaxrnn(w, "pallas", bf16)),
    ]
    peers_rows = [v for v in jax_gpu.VARIANTS if v[0] in ("flax", "jax.experimental.rnn")]
    jax_gpu.VARIANTS[:] = ours + peers_rows
    jax_gpu.main()


if __name__ == "__main__":
    main(sys.argv[1:])
