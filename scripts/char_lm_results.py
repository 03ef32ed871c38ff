"""Collect a finished ``char_lm`` run into ``benchmarks/results/char_lm.json``.

Train first, then collect (the training time is the run's own, from its report)::

    jaxrnn train --config char_lm --workdir runs/char_lm
    python scripts/char_lm_results.py runs/char_lm

The JSON holds the machine and versions, the commands, the run's report (held-out bits per
character, the unigram model's, times), the held-out curve from ``metrics.jsonl`` and a
sample of 400 characters (seed 0, temperature 0.8, prompt ``MACBETH:``);
``scripts/render_figures.py`` turns it into the table of the language-model guide.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

SAMPLE = {"length": 400, "temperature": 0.8, "seed": 0, "prompt": "MACBETH:"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="the work directory of a finished char_lm run")
    default = os.path.join(ROOT, "benchmarks", "results", "char_lm.json")
    parser.add_argument("--out", default=default)
    parser.add_argument("--note", default="", help="how the machine was loaded meanwhile")
    args = parser.parse_args()

    from _common import environment

    from jaxrnn.training.loop import load_run, read_metrics
    from jaxrnn.training.sampling import sample_workdir
    from jaxrnn.training.workdir import read_report

    name, config = load_run(args.workdir)
    report = read_report(args.workdir)
    if name != "char_lm" or report is None or report["steps"] != config.num_steps:
        raise SystemExit(f"{args.workdir} holds no finished char_lm run")
    curve = [
        {k: row[k] for k in ("step", "loss", "bpc", "accuracy")}
        for row in read_metrics(args.workdir)
        if row["split"] == "test"
    ]
    text = sample_workdir(args.workdir, **SAMPLE)
    result = {
        "_environment": environment(),
        "commands": [
            "jaxrnn train --config char_lm --workdir runs/char_lm",
            "python scripts/char_lm_results.py runs/char_lm",
        ],
        "config": config.to_dict(),
        "report": report,
        "held_out_curve": curve,
        "sample": {**SAMPLE, "text": SAMPLE["prompt"] + text},
    }
    if args.note:
        result["note"] = args.note
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{args.out}: held-out {report['test_bpc']:.3f} bits per character")


if __name__ == "__main__":
    main()
