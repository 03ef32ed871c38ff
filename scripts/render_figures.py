"""Write the figures quoted in README.md and docs/ from the committed results files.

Every table of measured numbers in the README and the docs lives between two markers::

    <!-- figures: NAME -->
    ...generated...
    <!-- /figures -->

and is generated here from ``benchmarks/results/*.json``, with the machine (read from the
JSON) and the command that produced it, so that no page can disagree with the results.

    python scripts/render_figures.py           # rewrite the tables in place
    python scripts/render_figures.py --check   # exit 1 if any page is out of date

``tests/test_figures.py`` runs ``--check``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = (
    "README.md",
    "docs/benchmarks.md",
    "docs/guides/performance.md",
    "docs/guides/language-model.md",
)
MARKER = re.compile(
    r"(<!-- figures: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /figures -->)", re.DOTALL
)


def _load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _machine(env: dict) -> str:
    """``AMD EPYC CPU, 2 cores; jax 0.10.2, flax 0.12.8; 2026-11-23`` from a results' env."""
    cpu = env.get("cpu") or env.get("machine", "unknown")
    versions = ", ".join(f"{k} {env[k]}" for k in ("jax", "flax") if k in env)
    return f"{cpu} CPU, {env['cpu_count']} cores; {versions}; {env['date'][:10]}"


def _source(command: str, env: dict, files: str) -> str:
    return f"Machine: {_machine(env)}. Command: `{command}`. Results: `{files}`."


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def tutorials() -> str:
    data = _load("tutorials.json")
    rows = []
    for name, entry in data.items():
        if name.startswith("_"):
            continue
        s = entry["summary"]
        rows.append(
            [
                f"`{name}`",
                f"{s['tutorial_figure']}",
                f"{s['keras_mean']} ({s['keras_range']})",
                f"**{s['accuracy_mean']:.3f}** ({s['accuracy_min']:.3f}-{s['accuracy_max']:.3f})",
                f"{s['train_time_median_s']:.1f} s",
                f"{s['compile_time_median_s']:.1f} s",
            ]
        )
    header = [
        "config",
        "tutorial's figure",
        "Keras 3 (mean, range)",
        f"jaxrnn test accuracy (mean, range, {len(s['seeds'])} seeds)",
        "training time (median)",
        "compile time",
    ]
    note = (
        "Training time is the train loop after data preparation and compilation, evaluation "
        "excluded. "
        + _source(
            "python scripts/reproduce_tutorials.py",
            data["_environment"],
            "benchmarks/results/tutorials.json",
        )
    )
    return _table(header, rows) + "\n\n" + note


def seeds() -> str:
    data = _load("lstm_sequences_seeds.json")
    runs = data["test_accuracy"]
    seed_names = sorted(next(iter(runs.values())), key=int)
    rows = []
    for name, by_seed in runs.items():
        accs = [by_seed[k] for k in seed_names]
        mean = sum(accs) / len(accs)
        cells = [f"{a:.3f}" for a in accs]
        rows.append([name, *cells, f"**{mean:.3f}**", f"{min(accs):.3f}-{max(accs):.3f}"])
    header = [f"`{data['config']}`", *(f"seed {k}" for k in seed_names), "mean", "range"]
    note = (
        "Test accuracy at the end of training, every run on the same data, model, optimizer "
        "and budget, only the seed (initialisation and batch order) changing. Command: "
        "`python scripts/seed_spread.py` (its docstring lists the runs it collects). Results: "
        "`benchmarks/results/lstm_sequences_seeds.json` (the file does not record the "
        "machine)."
    )
    return _table(header, rows) + "\n\n" + note


def keras_parity() -> str:
    d = _load("keras_parity/comparison.json")
    return (
        f"Over the first 100 of {d['steps']} steps the two training losses differ by at most "
        f"{d['max_abs_loss_difference_first_100_steps']:.1e}, over all steps by "
        f"{d['median_abs_loss_difference']:.1e} in the median (the runs drift apart as float "
        f"rounding accumulates); final test accuracy: Keras {d['keras_test_accuracy']}, jaxrnn "
        f"{d['jaxrnn_test_accuracy']} (Keras {d['keras_version']}, jax {d['jax_version']}). "
        "Commands: `python benchmarks/keras_parity.py keras` in an environment with Keras, then "
        "`python benchmarks/keras_parity.py jaxrnn`. Results: "
        "`benchmarks/results/keras_parity/comparison.json` (the file does not record the "
        "machine)."
    )


def _train_step_rows(data: dict, names: list[str]) -> list[list[str]]:
    rows = []
    for name in names:
        w = data["workloads"][name]
        v = w["variants"]
        ours = v.get("jaxrnn_block", v["jaxrnn"])
        flax = v["flax"]
        title = w["config"]["title"]
        if "jaxrnn_block" in v:
            title += f", {ours['steps_per_call']} steps per call"
        rows.append(
            [
                f"{name} {title}",
                f"{flax['median_ms']:.2f}",
                f"{ours['median_ms']:.2f}",
                f"**{ours['median_ms'] / flax['median_ms']:.2f}**",
                f"{100 * ours['peak_fraction']:.0f}%",
            ]
        )
    return rows


def train_step() -> str:
    run = _load("train_step.json")
    rows = _train_step_rows(run, ["W1", "W2", "W3", "W4", "W5", "W6"])
    header = ["workload", "Flax ms", "jaxrnn ms", "jaxrnn / Flax", "jaxrnn % of peak"]
    note = (
        "One train step (forward, backward, Adam or RMSprop update), median over repeats, "
        "the two libraries alternating repeat by repeat in one process. Flax runs `nn.RNN` "
        "(`OptimizedLSTMCell` for the LSTMs); W4's rows run a block of steps inside one "
        "compiled call for both. Peak: the float32 matmul throughput measured in the same "
        f"run ({run['peak_matmul']['gflops']:.0f} GFLOP/s). "
        + _source(
            "python benchmarks/train_step.py", run["env"], "benchmarks/results/train_step.json"
        )
    )
    return _table(header, rows) + "\n\n" + note


def keras_fit() -> str:
    tf_run = _load("keras_baseline_tensorflow.json")
    jax_run = _load("keras_baseline_jax.json")
    ours = _load("tutorials.json")
    rows = []
    for name, entry in ours.items():
        if name.startswith("_"):
            continue
        t = tf_run["configs"][name]["fit_time_s"]
        j = jax_run["configs"][name]["fit_time_s"]
        mine = entry["summary"]["train_time_median_s"]
        speedup = f"{min(t, j) / mine:.1f}x"
        rows.append([f"`{name}`", f"{t:.1f}", f"{j:.1f}", f"{mine:.1f}", speedup])
    header = [
        "config",
        "Keras 3, TensorFlow backend: fit s",
        "Keras 3, JAX backend: fit s",
        "jaxrnn train s",
        "jaxrnn speed-up over the faster Keras",
    ]
    versions = tf_run["versions"]
    note = (
        "Keras: `model.fit` of the same model, optimizer, batch size and number of steps, "
        "after a warm-up fit, seed 0 "
        f"(Keras {versions.get('keras', '?')}, TensorFlow {versions.get('tensorflow', '?')}; "
        "`python benchmarks/keras_baseline.py` in an environment with Keras and TensorFlow, "
        "`benchmarks/results/keras_baseline_{tensorflow,jax}.json`, on "
        f"{tf_run['machine'].get('cpu_count', '?')} CPU cores). jaxrnn: the median of the "
        "tutorial runs above. "
        + _source(
            "python scripts/reproduce_tutorials.py",
            ours["_environment"],
            "benchmarks/results/tutorials.json",
        )
    )
    return _table(header, rows) + "\n\n" + note


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _unroll(mode: str) -> str:
    data = _load("scan_vs_unroll_full.json")
    timed: dict = {}
    for e in data["entries"]:
        if e["mode"] == mode and "median_ms" in e:
            timed.setdefault((e["cell"], e["T"], e["H"]), {})[e["variant"]] = e["median_ms"]
    sizes = sorted({h for (_, _, h) in timed})
    rows = []
    for cell in data["grid"]["cells"]:
        for steps in sorted({t for (c, t, _) in timed if c == cell}):
            row = [{"rnn": "SimpleRNN", "lstm": "LSTM", "gru": "GRU"}[cell], str(steps)]
            for size in sizes:
                variants = timed.get((cell, steps, size), {})
                others = {k: v for k, v in variants.items() if k != "unroll_1"}
                if "unroll_1" not in variants or not others:
                    row.append("-")
                    continue
                best = min(others, key=others.get)
                ratio = variants["unroll_1"] / others[best]
                label = "static_rnn" if best == "static" else best.replace("_", "=")
                row.append(f"{_ms(variants['unroll_1'])} ms: {ratio:.2f} ({label})")
            rows.append(row)
    header = ["cell", "T"] + [f"H={h}" for h in sizes]
    what = "forward pass" if mode == "fwd" else "train step (gradient and Adam update)"
    settings = data["settings"]
    note = (
        f"Each cell: the {what} with the default `unroll=1` (the CPU kernels), and its time "
        "over the fastest other variant (`static_rnn`, `unroll` 2, 4, 8, 16 or T; named in "
        "brackets): below 1 the default is faster. Batch "
        f"{data['grid']['batch']}, input size H, {settings['repeats']} repeats; a variant whose "
        f"compile time would pass {settings['compile_budget_s']:.0f} s is skipped. "
        + _source(
            "python benchmarks/scan_vs_unroll.py --grid full --compile-budget 30 --repeats 3",
            data["env"],
            "benchmarks/results/scan_vs_unroll_full.json",
        )
    )
    return _table(header, rows) + "\n\n" + note


def long_sequences() -> str:
    data = _load("long_sequences.json")
    rows = []
    timed = data["timed"][0] if isinstance(data["timed"], list) else data["timed"]
    for choice in timed["choices"].values():
        remat = choice["remat"]
        rows.append(
            [
                f"`remat={remat}`",
                f"{choice['median_ms']:.0f} ms",
                f"{choice['time_vs_plain']:.2f}x",
                f"{choice['memory']['temp'] / 2**20:.0f} MiB",
            ]
        )
    c = timed["config"]
    shape = f"{c['cell']} {c['H']}, batch {c['batch']}, T={c['T']}"
    header = [shape, "step", "vs plain", "temp memory"]
    note = (
        "A train step (gradient and update); memory is XLA's analysis of the compiled step's "
        "temporary buffers. "
        + _source(
            "python benchmarks/long_sequences.py",
            data["env"],
            "benchmarks/results/long_sequences.json",
        )
    )
    return _table(header, rows) + "\n\n" + note


def long_sequences_big() -> str:
    data = _load("long_sequences.json")
    big = data["compiled_only"][0] if isinstance(data["compiled_only"], list) else None
    big = big or data["compiled_only"]
    c = big["config"]
    parts = [
        f"`remat={choice['remat']}` {choice['memory']['temp'] / 2**30:.1f} GiB"
        for choice in big["choices"].values()
    ]
    return (
        f"{c['cell']} {c['H']}, batch {c['batch']}, T={c['T']} (compiled only, not run; "
        f"temporary memory): " + ", ".join(parts) + "."
    )


def char_lm() -> str:
    data = _load("char_lm.json")
    r, c = data["report"], data["config"]
    model = f"{c['cell'].upper()} {c['hidden_size']}, {c['num_layers']} layer"
    header = ["model", "held-out bits per character", "unigram model", "held-out accuracy"]
    header += ["steps", "training time", "compile time"]
    row = [
        model,
        f"**{r['test_bpc']:.3f}**",
        f"{r['unigram_bpc']:.3f}",
        f"{r['test_accuracy']:.3f}",
        str(r["steps"]),
        f"{r['train_time_s'] / 60:.1f} min",
        f"{r['compile_time_s']:.1f} s",
    ]
    curve = ", ".join(f"{p['bpc']:.2f} at {p['step']}" for p in data["held_out_curve"])
    sample = data["sample"]
    note = _source(
        "; ".join(data["commands"]), data["_environment"], "benchmarks/results/char_lm.json"
    )
    return (
        _table(header, [row])
        + f"\n\nHeld-out bits per character during training: {curve}. Training time is the "
        "train loop after compilation, evaluation excluded"
        + (f" ({data['note']})" if data.get("note") else "")
        + ". "
        + note
        + f"\n\nA sample (`--temperature {sample['temperature']} --seed {sample['seed']}`):"
        + "\n\n```text\n"
        + sample["text"].rstrip("\n")
        + "\n```"
    )


TABLES: dict[str, Callable[[], str]] = {
    "tutorials": tutorials,
    "train_step": train_step,
    "keras_fit": keras_fit,
    "seeds": seeds,
    "keras_parity": keras_parity,
    "unroll_train": lambda: _unroll("train"),
    "unroll_fwd": lambda: _unroll("fwd"),
    "long_sequences": long_sequences,
    "long_sequences_big": long_sequences_big,
    "char_lm": char_lm,
}


def render(text: str) -> str:
    """``text`` with every marked table regenerated."""

    def replace(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"unknown figures block {name!r}; known: {', '.join(TABLES)}")
        return f"{match[1]}{TABLES[name]()}\n{match[4]}"

    return MARKER.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report stale pages, write none")
    args = parser.parse_args(argv)
    stale = []
    for page in PAGES:
        path = ROOT / page
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(page)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python scripts/render_figures.py)")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "all figures up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
