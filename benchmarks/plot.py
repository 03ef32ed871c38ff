"""PNG plots of the benchmark JSON files in ``benchmarks/results/``.

python benchmarks/plot.py                  # every results/*.json that it knows
python benchmarks/plot.py --results DIR
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def plot_train_step(payload: dict, path: str) -> None:
    names, ratios, colors = [], [], []
    for name, r in payload["workloads"].items():
        variants = r["variants"]
        block = "jaxrnn_block" in variants
        v = variants["jaxrnn_block" if block else "jaxrnn"]
        ratio = v.get("ratio_to_flax", v["median_ms"] / variants["flax"]["median_ms"])
        names.append(name + (" (loop)" if block else ""))
        ratios.append(ratio)
        colors.append("tab:green" if ratio < 1.0 else "tab:red")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, ratios, color=colors)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("jaxrnn / Flax step time")
    peak = payload["peak_matmul"]["gflops"]
    ax.set_title(f"train step vs Flax nn.RNN (peak matmul {peak:.0f} GFLOP/s)")
    if "W6" in payload["workloads"]:
        frac = payload["workloads"]["W6"]["variants"]["jaxrnn"]["peak_fraction"]
        ax.annotate(
            f"W6: {frac:.0%} of peak",
            (names.index("W6"), ratios[names.index("W6")]),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scan_vs_unroll(payload: dict, path: str) -> None:
    entries = [e for e in payload["entries"] if "median_ms" in e]
    cells = list(dict.fromkeys(e["cell"] for e in entries))
    modes = [m for m in ("fwd", "train") if any(e["mode"] == m for e in entries)]
    order = [
        "static",
        "kernel",
        "unroll_1",
        "unroll_2",
        "unroll_4",
        "unroll_8",
        "unroll_16",
        "unroll_T",
    ]
    fig, axes = plt.subplots(
        len(modes), len(cells), figsize=(4 * len(cells), 3.2 * len(modes)), squeeze=False
    )
    for i, mode in enumerate(modes):
        for j, cell in enumerate(cells):
            ax = axes[i][j]
            shapes = dict.fromkeys((e["T"], e["H"]) for e in entries if e["cell"] == cell)
            for steps, hidden in shapes:
                row = {
                    e["variant"]: e
                    for e in entries
                    if (e["cell"], e["mode"], e["T"], e["H"]) == (cell, mode, steps, hidden)
                }
                if "unroll_1" not in row:
                    continue
                base = row["unroll_1"]["median_ms"]
                xs = [k for k, v in enumerate(order) if v in row]
                ys = [base / row[order[k]]["median_ms"] for k in xs]
                ax.plot(xs, ys, "o-", label=f"T={steps} H={hidden}", ms=3)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels([o.replace("unroll_", "u") for o in order], fontsize=8)
            ax.set_title(f"{cell} {mode}", fontsize=9)
            ax.set_yscale("log")
            if j == 0:
                ax.set_ylabel("speed-up vs unroll=1")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_long_sequences(payload: dict, path: str) -> None:
    choices = payload["timed"]["choices"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for e in choices.values():
        ax.scatter(e["memory"]["temp"] / 2**20, e["median_ms"], s=25)
        ax.annotate(
            f"remat={e['remat']}",
            (e["memory"]["temp"] / 2**20, e["median_ms"]),
            fontsize=8,
            xytext=(4, 2),
            textcoords="offset points",
        )
    c = payload["timed"]["config"]
    ax.set_xscale("log")
    ax.set_xlabel("XLA temp memory (MiB)")
    ax.set_ylabel("train step (ms)")
    ax.set_title(f"LSTM {c['H']}, B {c['batch']}, T {c['T']}: memory vs time", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


PLOTS = {
    "train_step.json": plot_train_step,
    "train_step_small.json": plot_train_step,
    "train_step_w6.json": plot_train_step,
    "scan_vs_unroll_default.json": plot_scan_vs_unroll,
    "scan_vs_unroll_gru.json": plot_scan_vs_unroll,
    "scan_vs_unroll_lstm.json": plot_scan_vs_unroll,
    "scan_vs_unroll_full.json": plot_scan_vs_unroll,
    "long_sequences.json": plot_long_sequences,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    for name, fn in PLOTS.items():
        path = os.path.join(args.results, name)
        if os.path.exists(path):
            with open(path) as f:
                fn(json.load(f), os.path.splitext(path)[0] + ".png")
            print(f"wrote {os.path.splitext(path)[0]}.png")


if __name__ == "__main__":
    main()
