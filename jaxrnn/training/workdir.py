"""A run's work directory on any file system ``etils.epath`` reaches: local disk, ``gs://``, ...

A work directory holds::

    config.json      the experiment's name and resolved config (a rerun must match it)
    metrics.jsonl    one JSON object per line: {"step", "split": "train"|"test", "loss", ...}
    metrics/         on an object store, the same rows in numbered parts (``runlog``)
    tb/              TensorBoard events of the same metrics, one file per invocation
    checkpoints/     orbax step directories (written by ``checkpointing``, not here)
    report.json      final test metrics, times, device count
    curves.png       ``jaxrnn plot``'s figure
    jaxrnn.lock      on a local disk, locked by the command using the directory (``lock``)

Every operation on these files (exists, mkdir, read, write, list, remove) goes through
``epath``, so a ``gs://bucket/run`` work directory receives them on the bucket (with ``gcsfs``
installed), next to orbax's checkpoints, whichever worker writes them. Object stores cannot
append to a file or rename one atomically: the files here are written whole, and the growing
logs are written in parts (:mod:`jaxrnn.training.runlog`). On a local disk a whole-file write
goes to ``NAME.tmp`` and is renamed over ``NAME`` (a run killed mid-write leaves the previous
version); on an object store the object is replaced when the upload completes, which is atomic
already.
"""

from __future__ import annotations

import json
import os

from etils import epath

from jaxrnn.configs.base import Config

LOCK = "jaxrnn.lock"


class WorkdirError(RuntimeError):
    """The work directory holds a different run."""


def as_path(workdir: str | os.PathLike) -> epath.Path:
    """``workdir`` as an ``epath.Path`` (``gs://`` and other URIs kept as such)."""
    return epath.Path(workdir)


def is_local(path: str | os.PathLike) -> bool:
    """Whether ``path`` is on a local file system (no ``scheme://`` prefix)."""
    return "://" not in os.fspath(path)


def write_bytes(path: epath.Path, data: bytes) -> None:
    """Replace the file ``path`` by ``data`` as one whole write (see the module docstring)."""
    if is_local(path):
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    else:
        path.write_bytes(data)


def write_json(path: epath.Path, value) -> None:
    write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode())


def read_json(path: epath.Path):
    return json.loads(path.read_text())


def prepare(workdir: str, name: str, config: Config, overwrite: bool, main: bool) -> None:
    """Create ``workdir`` for this run, or accept it if it holds the same run.

    Every process checks; only the ``main`` one removes (with ``overwrite``) and writes. The
    lock file is kept: the command removing the other run's files holds it.
    A ``config.json`` written before a config field existed matches a config that has the
    field at its default.
    """
    root = as_path(workdir)
    path = root / "config.json"
    record = {"name": name, "config": config.to_dict()}
    if path.exists():
        existing = read_json(path)
        try:
            same_config = Config.from_dict(existing.get("config", {})) == config
        except (TypeError, ValueError):  # unknown or malformed fields: another run
            same_config = False
        if not (same_config and existing.get("name") == name):
            if not overwrite:
                raise WorkdirError(
                    f"{workdir} holds another run (config {existing.get('name')!r} with "
                    "different settings); pass --overwrite to replace it, or use another --workdir"
                )
            if main:
                for child in root.iterdir():
                    if child.is_dir():
                        child.rmtree()
                    elif child.name != LOCK:
                        child.unlink()
    if not main:
        return
    root.mkdir(parents=True, exist_ok=True)
    write_json(path, record)


def load_run(workdir: str) -> tuple[str, Config]:
    """The experiment name and config recorded in ``workdir/config.json``."""
    path = as_path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{workdir} holds no run (no config.json)")
    record = read_json(path)
    return record["name"], Config.from_dict(record["config"])


def read_report(workdir: str) -> dict | None:
    path = as_path(workdir) / "report.json"
    return read_json(path) if path.exists() else None


def write_report(workdir: str, report: dict) -> None:
    write_json(as_path(workdir) / "report.json", report)
