"""Test accuracy of one config over many seeds: jaxrnn against Keras 3 on the same data.

Collects ``keras_baseline.py`` outputs (one JSON per backend and seed, made with
``--seed N --out DIR``) and jaxrnn runs (``reproduce_tutorials.py --seeds ... --out DIR``)
into ``benchmarks/results/<config>_seeds.{json,md}``::

    for s in 0 1 2 3 4 5; do
      keras-venv/bin/python benchmarks/keras_baseline.py --backend jax \\
          --configs lstm_sequences --seed $s --out /tmp/keras/jax$s
      keras-venv/bin/python benchmarks/keras_baseline.py --backend tensorflow \\
          --configs lstm_sequences --seed $s --out /tmp/keras/tf$s
    done
    python scripts/reproduce_tutorials.py --configs lstm_sequences --seeds 0 1 2 3 4 5 \\
        --out /tmp/jaxrnn
    python scripts/seed_spread.py lstm_sequences /tmp/keras/*/keras_baseline_*.json \\
        --jaxrnn /tmp/jaxrnn/tutorials.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(name: str, by_seed: dict[int, float]) -> str:
    seeds = sorted(by_seed)
    accs = [by_seed[s] for s in seeds]
    first3 = [by_seed[s] for s in seeds[:3]]
    cells = " | ".join(f"{a:.4f}" for a in accs)
    return (
        f"| {name} | {cells} | {statistics.mean(first3):.4f} | {statistics.mean(accs):.4f} "
        f"| {min(accs):.4f}-{max(accs):.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("keras_json", nargs="+")
    parser.add_argument("--jaxrnn", required=True, help="tutorials.json of reproduce_tutorials")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    results: dict[str, dict[int, float]] = {}
    for path in args.keras_json:
        with open(path) as f:
            data = json.load(f)
        run = data["configs"].get(args.config)
        if run is None:
            continue
        results.setdefault(f"Keras 3 ({data['backend']} backend)", {})[run["seed"]] = run[
            "test_accuracy"
        ]
    with open(args.jaxrnn) as f:
        ours = json.load(f)[args.config]["runs"]
    results["jaxrnn"] = {r["seed"]: r["test_accuracy"] for r in ours}

    seeds = sorted({s for by_seed in results.values() for s in by_seed})
    for name, by_seed in results.items():
        if sorted(by_seed) != seeds:
            raise SystemExit(f"{name} has seeds {sorted(by_seed)}, expected {seeds}")
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [
        f"| {args.config} | {head} | mean of seeds {seeds[0]}-{seeds[2]} | mean | range |",
        "|---" * (len(seeds) + 4) + "|",
    ]
    lines += [_row(name, by_seed) for name, by_seed in results.items()]
    lines += [
        "",
        "Test accuracy at the end of training, every run on the same data (jaxrnn's train and "
        "test splits, read by Keras from an inline copy of the generator), model, optimizer and "
        "budget; only the seed (initialisation and batch order) changes. Made with "
        "`scripts/seed_spread.py` (its docstring has the commands).",
    ]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.config}_seeds.json"), "w") as f:
        json.dump({"config": args.config, "test_accuracy": results}, f, indent=2)
    with open(os.path.join(args.out, f"{args.config}_seeds.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
