"""The ``jaxrnn`` command: ``train``, ``eval`` and ``plot`` runs in a work directory.

::

    jaxrnn train --config NAME [--workdir DIR] [--set key=value ...] [--mnist_dir DIR]
                 [--data_dir DIR] [--overwrite]
    jaxrnn eval --workdir DIR
    jaxrnn plot --workdir DIR [--out FILE]
    jaxrnn configs                      # the config names and their fields

Rerunning ``train`` with the same config and work directory resumes from the last checkpoint.
Exit status: 0 on success, 1 on a non-finite loss, 2 on a usage or config error.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxrnn import configs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxrnn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train (or resume) a config in a work directory")
    train.add_argument("--config", required=True, choices=configs.NAMES)
    train.add_argument("--workdir", help="default: workdirs/NAME")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a config field (repeatable), e.g. --set num_steps=500",
    )
    train.add_argument("--overwrite", action="store_true", help="replace another run's workdir")

    evaluate = sub.add_parser("eval", help="evaluate a run's latest checkpoint on the test split")
    evaluate.add_argument("--workdir", required=True)

    for p in (train, evaluate):
        p.add_argument("--mnist_dir", help="the 4 MNIST idx .gz files (or JAXRNN_MNIST_DIR)")
        p.add_argument("--data_dir", help="tensorflow-datasets data directory")
        # Multi-process runs (docs/scaling.md); automatic on Cloud TPU.
        p.add_argument("--coordinator", help="host:port of process 0 (or JAXRNN_COORDINATOR)")
        p.add_argument("--num_processes", type=int, help="or JAXRNN_NUM_PROCESSES")
        p.add_argument("--process_id", type=int, help="or JAXRNN_PROCESS_ID")

    plot = sub.add_parser("plot", help="PNG of a run's loss and accuracy curves")
    plot.add_argument("--workdir", required=True)
    plot.add_argument("--out", help="default: WORKDIR/curves.png")

    sub.add_parser("configs", help="list the configs and their fields")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from jaxrnn.training import loop

    try:
        if args.command in ("train", "eval"):
            from jaxrnn import parallel

            parallel.initialize(args.coordinator, args.num_processes, args.process_id)
        if args.command == "configs":
            for name in configs.NAMES:
                print(f"{name}: {configs.get_config(name)}")
            return 0
        if args.command == "train":
            config = configs.apply_overrides(configs.get_config(args.config), args.overrides)
            workdir = args.workdir or os.path.join("workdirs", args.config)
            loop.train(
                config,
                workdir,
                name=args.config,
                mnist_dir=args.mnist_dir,
                data_dir=args.data_dir,
                overwrite=args.overwrite,
            )
            return 0
        if args.command == "eval":
            loop.evaluate_workdir(args.workdir, mnist_dir=args.mnist_dir, data_dir=args.data_dir)
            return 0
        from jaxrnn.training.plotting import plot_run

        print(plot_run(args.workdir, args.out))
        return 0
    except loop.NonFiniteError as error:
        print(f"jaxrnn: error: {error}", file=sys.stderr)
        return 1
    except (ValueError, loop.WorkdirError, FileNotFoundError) as error:
        print(f"jaxrnn: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
