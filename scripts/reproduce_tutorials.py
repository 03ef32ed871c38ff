"""Reproduce the tutorial table: each config for 3 seeds, one run at a time, through the CLI.

Writes ``benchmarks/results/tutorials.json`` (every run's report and the summary per config,
merged with the configs already there) and ``benchmarks/results/tutorials.md`` (the README
table). Each run is a fresh process in an emptied work directory (``--overwrite`` alone would
resume a finished run of the same config, not repeat it), so compile
time is the cold figure; training time excludes data preparation, compilation and evaluation.

    python scripts/reproduce_tutorials.py                      # all five, seeds 0 1 2
    python scripts/reproduce_tutorials.py --configs simplernn_mnist --seeds 0 1 2

Each summary also records the Keras 3 references of the same config: its mean test accuracy
and range, and its training times on the TensorFlow and JAX backends.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# config: (tutorial figure, Keras 3 mean acc, Keras range, Keras TF time range s, Keras JAX s)
REFERENCES = {
    "birnn_mnist": (0.9375, 0.906, "0.898-0.916", (5, 7), 3.2),
    "lstm_mnist": (0.92, 0.962, "0.960-0.964", (13, 23), 12.6),
    "rnn_mnist": (0.9749, 0.972, "0.969-0.975", (25, 32), 26.3),
    "simplernn_mnist": (0.8495, 0.799, "0.759-0.828", (26, 44), 8.3),
    "lstm_sequences": (0.95, 0.978, "0.976-0.981", (6, 9), 2.9),
}


def run_one(name: str, seed: int, root: str, extra: list[str]) -> dict:
    workdir = os.path.join(root, f"{name}-seed{seed}")
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [sys.executable, "-m", "jaxrnn", "train", "--config", name, "--workdir", workdir]
    cmd += ["--set", f"seed={seed}", "--overwrite", *extra]
    print("$", " ".join(cmd), flush=True)
    load_before = os.getloadavg()[0]
    subprocess.run(cmd, check=True, cwd=ROOT)
    with open(os.path.join(workdir, "report.json")) as f:
        report = json.load(f)
    # The machine may be shared: the 1-minute load average before and after each run.
    report["load_average"] = [load_before, os.getloadavg()[0]]
    return report


def summarize(name: str, runs: list[dict]) -> dict:
    accs = [r["test_accuracy"] for r in runs]
    times = [r["train_time_s"] for r in runs]
    figure, keras_mean, keras_range, tf_time, jax_time = REFERENCES[name]
    mean = statistics.mean(accs)
    return {
        "seeds": [r["seed"] for r in runs],
        "test_accuracy": accs,
        "accuracy_mean": mean,
        "accuracy_min": min(accs),
        "accuracy_max": max(accs),
        "train_time_s": times,
        "train_time_median_s": statistics.median(times),
        "compile_time_median_s": statistics.median(r["compile_time_s"] for r in runs),
        "tutorial_figure": figure,
        "keras_mean": keras_mean,
        "keras_range": keras_range,
        "keras_tf_time_s": list(tf_time),
        "keras_jax_time_s": jax_time,
    }


def markdown(results: dict) -> str:
    lines = [
        "| config | tutorial figure | Keras 3 (mean, range) | jaxrnn test accuracy "
        "(mean, min-max, 3 seeds) | training time (median) | compile time |",
        "|---|---|---|---|---|---|",
    ]
    for name in REFERENCES:
        if name not in results:
            continue
        s = results[name]["summary"]
        ok_acc = "" if s["accuracy_mean"] >= s["keras_mean"] else " (below the Keras mean)"
        lines.append(
            f"| `{name}` | {s['tutorial_figure']} | {s['keras_mean']:.3f} ({s['keras_range']}) "
            f"| **{s['accuracy_mean']:.4f}** ({s['accuracy_min']:.4f}-{s['accuracy_max']:.4f})"
            f"{ok_acc} | {s['train_time_median_s']:.1f} s (Keras 3 on JAX: "
            f"{s['keras_jax_time_s']:.1f} s) "
            f"| {s['compile_time_median_s']:.1f} s |"
        )
    env = results.get("_environment", {})
    lines += [
        "",
        f"Measured with `python scripts/reproduce_tutorials.py` on {env.get('machine', '?')} "
        f"({env.get('cpu_count', '?')} CPU cores), jax {env.get('jax', '?')}. Training "
        "time: the train loop after data preparation and compilation (evaluation excluded), "
        "beside Keras 3's on its JAX backend for the same tutorial "
        "(`benchmarks/keras_baseline.py`).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(REFERENCES), choices=list(REFERENCES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--root", default=os.path.join(ROOT, "workdirs", "reproduce"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--mnist_dir", help="passed to jaxrnn train")
    parser.add_argument(
        "--markdown-only", action="store_true", help="write tutorials.md from tutorials.json"
    )
    args = parser.parse_args()
    if args.markdown_only:
        with open(os.path.join(args.out, "tutorials.json")) as f:
            results = json.load(f)
        with open(os.path.join(args.out, "tutorials.md"), "w") as f:
            f.write(markdown(results))
        return
    import jax

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "tutorials.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    results["_environment"] = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "date": datetime.date.today().isoformat(),
    }
    extra = ["--mnist_dir", args.mnist_dir] if args.mnist_dir else []
    for name in args.configs:
        runs = []
        for seed in args.seeds:
            report = run_one(name, seed, args.root, extra)
            report["seed"] = seed
            runs.append(report)
        results[name] = {"runs": runs, "summary": summarize(name, runs)}
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        with open(os.path.join(args.out, "tutorials.md"), "w") as f:
            f.write(markdown(results))
        s = results[name]["summary"]
        print(
            f"{name}: accuracy {s['accuracy_mean']:.4f} (Keras {s['keras_mean']}), "
            f"train {s['train_time_median_s']:.2f} s "
            f"(Keras 3 on JAX {s['keras_jax_time_s']:.1f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
