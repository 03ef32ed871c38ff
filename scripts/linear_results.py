"""The linear recurrences (MinGRU, MinLSTM, RG-LRU) on two tasks, beside the LSTM, written to
``benchmarks/results/linear_tasks.json`` and ``.md``.

* ``char_lm``: the character-level language model (``jaxrnn train --config char_lm``), each
  model trained for the same time (``--budget`` seconds of training): the LSTM as the config
  has it (one layer of 256), MinGRU and MinLSTM as two layers of 256 (a linear recurrence
  has no recurrent matrix, so a layer does less: depth makes up for it). A short run of each
  measures its step time first; the real run's ``num_steps`` fills the budget (its cosine
  schedule spans it). Scored by the held-out play's bits per character.
* ``adding``: the adding problem at T=1000 (``--config adding --set dataset=adding_1000``),
  3000 steps of each cell (one layer of 64): the mean squared error on the test split (a
  model that ignores the inputs scores about 0.167).

Run (about 25 minutes on a 2-core machine; the work directories go under ``--workdir``)::

    python scripts/linear_results.py
    python scripts/linear_results.py --budget 60 --tasks adding --out /tmp/linear
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

CHAR_LM = {
    "lstm": [],
    "mingru": ["cell=mingru", "num_layers=2"],
    "minlstm": ["cell=minlstm", "num_layers=2"],
}
ADDING = {
    cell: [f"cell={cell}", "dataset=adding_1000"] for cell in ("lstm", "mingru", "minlstm", "rglru")
}


def train(config: str, workdir: str, overrides: list[str]) -> dict:
    """``jaxrnn train`` in a fresh ``workdir``; returns its report."""
    from jaxrnn.training.workdir import read_report

    shutil.rmtree(workdir, ignore_errors=True)
    command = [sys.executable, "-m", "jaxrnn", "train", "--config", config, "--workdir", workdir]
    for override in overrides:
        command += ["--set", override]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = read_report(workdir)
    assert report is not None, f"{workdir}: no report"
    return {"command": " ".join(["jaxrnn", *command[3:]]), **report}


def char_lm(budget: float, root: str) -> dict:
    runs = {}
    for name, overrides in CHAR_LM.items():
        probe = ["num_steps=200", "eval_every=200", "checkpoint_every=200"]
        timing = train("char_lm", os.path.join(root, f"char_lm_{name}_probe"), overrides + probe)
        per_step = timing["train_time_s"] / timing["steps"]
        steps = max(100, int(budget / per_step) // 100 * 100)
        every = [f"eval_every={steps}", f"checkpoint_every={steps}"]
        run = train(
            "char_lm",
            os.path.join(root, f"char_lm_{name}"),
            [*overrides, f"num_steps={steps}", *every],
        )
        runs[name] = {"probe_seconds_per_step": per_step, **run}
        print(name, {k: run.get(k) for k in ("steps", "train_time_s", "test_bpc")}, flush=True)
    return runs


def adding(root: str) -> dict:
    runs = {}
    for name, overrides in ADDING.items():
        runs[name] = train("adding", os.path.join(root, f"adding_{name}"), overrides)
        print(
            name, {k: runs[name].get(k) for k in ("steps", "train_time_s", "test_loss")}, flush=True
        )
    return runs


def markdown(payload: dict) -> str:
    lines = [
        "# Linear recurrences on two tasks",
        "",
        f"Machine: {payload['environment']['cpu']} ({payload['environment']['cpu_count']} "
        "cores); `python scripts/linear_results.py`.",
        "",
    ]
    if "char_lm" in payload:
        lines += [
            f"## char_lm: {payload['budget_s']:.0f} s of training each",
            "",
            "| model | steps | training s | held-out bits per char | accuracy |",
            "|---|---|---|---|---|",
        ]
        for name, run in payload["char_lm"].items():
            layers = "1 x 256" if name == "lstm" else "2 x 256"
            lines.append(
                f"| {name} {layers} | {run['steps']} | {run['train_time_s']:.0f} | "
                f"{run['test_bpc']:.3f} | {run['test_accuracy']:.3f} |"
            )
        lines.append("")
    if "adding" in payload:
        lines += [
            "## The adding problem at T=1000: 3000 steps each",
            "",
            "| cell | training s | test MSE |",
            "|---|---|---|",
        ]
        for name, run in payload["adding"].items():
            lines.append(f"| {name} 64 | {run['train_time_s']:.0f} | {run['test_loss']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=240.0, help="char_lm training seconds")
    parser.add_argument("--tasks", nargs="+", default=["char_lm", "adding"])
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()

    from _common import environment, write_results

    root = args.workdir or tempfile.mkdtemp(prefix="linear_results_")
    payload: dict = {"environment": environment(), "budget_s": args.budget}
    if "char_lm" in args.tasks:
        payload["char_lm"] = char_lm(args.budget, root)
    if "adding" in args.tasks:
        payload["adding"] = adding(root)
    os.makedirs(args.out, exist_ok=True)
    write_results(os.path.join(args.out, "linear_tasks.json"), payload, markdown(payload))
    print(json.dumps({k: v for k, v in payload.items() if k != "environment"}, indent=1)[:2000])


if __name__ == "__main__":
    main()
