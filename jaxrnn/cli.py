"""The ``jaxrnn`` command: ``train``, ``eval``, ``sample`` and ``plot`` runs in a work directory.

::

    jaxrnn train --config NAME [--workdir DIR] [--set key=value ...] [--mnist_dir DIR]
                 [--data_dir DIR] [--overwrite] [--import MODULE ...]
    jaxrnn eval --workdir DIR [--import MODULE ...]
    jaxrnn sample --workdir DIR [--length N] [--temperature T] [--seed S] [--prompt TEXT]
                  [--import MODULE ...]
    jaxrnn plot --workdir DIR [--out FILE]
    jaxrnn configs                      # the config names and their fields
    jaxrnn info                         # versions, devices, whether the CPU kernels loaded

Rerunning ``train`` with the same config and work directory resumes from the last checkpoint.
``--import MODULE`` (repeatable) imports a module first, from the current directory or the
Python path, so that the cells it registers (:func:`jaxrnn.cells.register`) can be named with
``--set cell=NAME``; ``eval`` and ``sample`` of such a run need it too.
``train``, ``eval``, ``sample`` and ``plot`` need the ``train`` extra (``pip install
"jaxrnn[train]"``); ``configs`` and ``info`` run with the core alone. Exit status: 0 on
success, 1 on a non-finite loss, 2 on a usage or config error or a missing extra.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import re
import sys

from jaxrnn import _extras, configs

# Reported by `jaxrnn info` where installed: the core's packages, then the extras'.
_CORE_PACKAGES = ("jax", "jaxlib", "numpy", "scipy-openblas32")
_OPTIONAL_PACKAGES = (
    "flax",
    "tensorflow-datasets",
    "array-record",
    "etils",
    "optax",
    "orbax-checkpoint",
    "tqdm",
    "matplotlib",
    "tensorboardX",
    "gcsfs",
)


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
        # Multi-process runs (docs/guides/scaling.md); automatic on Cloud TPU.
        p.add_argument("--coordinator", help="host:port of process 0 (or JAXRNN_COORDINATOR)")
        p.add_argument("--num_processes", type=int, help="or JAXRNN_NUM_PROCESSES")
        p.add_argument("--process_id", type=int, help="or JAXRNN_PROCESS_ID")

    sample = sub.add_parser("sample", help="text from a character-level run's latest checkpoint")
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--length", type=int, default=500, help="characters to generate")
    sample.add_argument(
        "--temperature", type=float, default=1.0, help="softmax temperature (0: most likely)"
    )
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--prompt", default="", help="text the model reads first")

    plot = sub.add_parser("plot", help="PNG of a run's loss and accuracy curves")
    plot.add_argument("--workdir", required=True)
    plot.add_argument("--out", help="default: WORKDIR/curves.png")

    for p in (train, evaluate, sample):
        p.add_argument(
            "--import",
            dest="imports",
            action="append",
            default=[],
            metavar="MODULE",
            help="import a module first (repeatable): the cells it registers become names for "
            "--set cell=NAME",
        )

    sub.add_parser("configs", help="list the configs and their fields")
    sub.add_parser("info", help="versions, devices and whether the CPU kernels loaded")
    return parser


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def huge_pages() -> str:
    """Whether the process's large blocks may be transparent huge pages: Linux's mode
    (``/sys/kernel/mm/transparent_hugepage/enabled``) and glibc's ``glibc.malloc.hugetlb``
    tunable (docs/guides/performance.md, long sequences on a CPU)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            mode = re.search(r"\[(\w+)\]", f.read())
    except OSError:
        mode = None
    tunable = re.search(r"glibc\.malloc\.hugetlb=(\w+)", os.environ.get("GLIBC_TUNABLES", ""))
    return (
        f"transparent {mode.group(1) if mode else 'not available'}, "
        f"glibc.malloc.hugetlb={tunable.group(1) if tunable else 'unset'}"
    )


def info() -> str:
    """What ``jaxrnn info`` prints: versions, extras, devices and the CPU kernels' state, one
    ``name: value`` per line, the last ``cpu kernels: loaded`` or ``cpu kernels: not available
    (reason)``. Imports only jax and jaxrnn's core."""
    import jax

    import jaxrnn
    from jaxrnn import _native

    lines = [f"jaxrnn: {jaxrnn.__version__}", f"python: {platform.python_version()}"]
    lines += [f"{name}: {_version(name) or 'not installed'}" for name in _CORE_PACKAGES]
    lines += [f"{name}: {v}" for name in _OPTIONAL_PACKAGES if (v := _version(name))]
    for extra in _extras.EXTRAS:
        absent = _extras.missing(extra)
        state = f"missing {', '.join(absent)}" if absent else "installed"
        lines.append(f"extra {extra}: {state}")
    platforms: dict[str, list] = {}
    for device in jax.devices():
        platforms.setdefault(device.platform, []).append(device)
    for name, devices in platforms.items():
        kinds = sorted({d.device_kind for d in devices})
        lines.append(f"devices: {len(devices)} {name} ({', '.join(kinds)})")
    lines.append(f"default backend: {jax.default_backend()}")
    lines.append(f"huge pages: {huge_pages()}")
    loaded, reason = _native.kernel_status()
    if loaded:
        lines.append(f"cpu kernel threads: {_native.max_threads()}")
    lines.append("cpu kernels: loaded" if loaded else f"cpu kernels: not available ({reason})")
    return "\n".join(lines)


def _import_modules(modules: list[str]) -> None:
    """Import ``modules``, the current directory first on the path (as ``python -m`` has it);
    ``ValueError`` naming the one that could not be imported."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"--import {module}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        print(info())
        return 0
    if args.command == "configs":
        for name in configs.NAMES:
            print(f"{name}: {configs.get_config(name)}")
        return 0
    try:
        from jaxrnn.training import loop
    except _extras.MissingExtraError as error:
        print(f"jaxrnn {args.command}: error: {error}", file=sys.stderr)
        return 2

    try:
        if args.command in ("train", "eval"):
            from jaxrnn import parallel

            parallel.initialize(args.coordinator, args.num_processes, args.process_id)
        # after jax.distributed's start: a module may compute with JAX as it is imported
        _import_modules(getattr(args, "imports", []))
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
        if args.command == "sample":
            from jaxrnn.training.sampling import sample_workdir

            generated = sample_workdir(
                args.workdir,
                length=args.length,
                temperature=args.temperature,
                seed=args.seed,
                prompt=args.prompt,
            )
            print(args.prompt + generated)
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
