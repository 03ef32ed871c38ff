"""A run's work directory on any file system ``etils.epath`` reaches: local disk, ``gs://``, ...

A work directory holds::

    config.json      the experiment's name and resolved config (a rerun must match it)
    metrics.jsonl    one JSON object per line: {"step", "split": "train"|"test", "loss", ...}
    tb/              TensorBoard events of the same metrics, one file per invocation
    checkpoints/     orbax step directories (written by ``checkpointing``, not here)
    report.json      final test metrics, times, device count
    curves.png       ``jaxrnn plot``'s figure

Every operation on these files (exists, mkdir, read, write, list, remove) goes through
``epath``, so a ``gs://bucket/run`` work directory receives them on the bucket (with ``gcsfs``
installed), next to orbax's checkpoints, whichever worker writes them. Object stores cannot
append to a file or rename one atomically, so every file is written whole: the log keeps its
rows and events in memory and rewrites ``metrics.jsonl`` and its event file at each flush.
On a local disk a whole-file write goes to ``NAME.tmp`` and is renamed over ``NAME`` (a run
killed mid-write leaves the previous version); on an object store the object is replaced
when the upload completes, which is atomic already.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import time

from etils import epath

from jaxrnn.configs.base import Config

REMOTE_FLUSH_SECS = 30.0  # at most one log upload per this many seconds, besides checkpoints


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

    Every process checks; only the ``main`` one removes (with ``overwrite``) and writes.
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
                root.rmtree()
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


def read_metrics(workdir: str) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl`` (empty if there is none yet)."""
    path = as_path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_report(workdir: str) -> dict | None:
    path = as_path(workdir) / "report.json"
    return read_json(path) if path.exists() else None


def write_report(workdir: str, report: dict) -> None:
    write_json(as_path(workdir) / "report.json", report)


class NoLog:
    """What processes other than 0 log: nothing (their metrics are the same global values)."""

    def write(self, step: int, split: str, values: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog:
    """Metrics to ``metrics.jsonl`` and TensorBoard, rewritten whole at each flush.

    A run resumed from the checkpoint at ``start_step`` first drops the rows written after
    that checkpoint (and the final test row of a finished run, which is evaluated again), so
    the file never holds a step twice. ``write`` flushes when ``flush_secs`` have passed since
    the last flush (default: at once on a local disk, every ``REMOTE_FLUSH_SECS`` on an object
    store); ``flush`` and ``close`` always do.
    """

    def __init__(
        self, workdir: str, start_step: int, last_step: int, flush_secs: float | None = None
    ):
        root = as_path(workdir)
        self._path = root / "metrics.jsonl"
        self._lines = [
            json.dumps(r) + "\n"
            for r in read_metrics(workdir)
            if r["step"] < start_step
            or (r["step"] == start_step and (r["split"] == "train" or start_step < last_step))
        ]
        self._events = EventFile(root / "tb", start_step)
        if flush_secs is None:
            flush_secs = 0.0 if is_local(root) else REMOTE_FLUSH_SECS
        self._flush_secs = flush_secs
        self._last_flush = -float("inf")
        if start_step:
            self.flush()  # the truncated rows, before anything else can happen

    def write(self, step: int, split: str, values: dict) -> None:
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        self._lines.append(json.dumps(row) + "\n")
        for name, value in values.items():
            self._events.scalar(f"{split}/{name}", float(value), int(step))
        if time.monotonic() - self._last_flush >= self._flush_secs:
            self.flush()

    def flush(self) -> None:
        write_bytes(self._path, "".join(self._lines).encode())
        self._events.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()


class EventFile:
    """A TensorBoard event file of scalars, built in memory and written whole at ``flush``.

    The same records as ``tensorboardX.SummaryWriter`` (TFRecord framing of ``Event``
    protos): a file-version event, then with ``purge_step`` a file-version event and a
    ``SessionLog.START`` at that step, which tells TensorBoard to hide the events at or after
    it from earlier files (the steps a resumed run repeats). One file per instance, named
    like tensorboardX's.
    """

    def __init__(self, directory: epath.Path, purge_step: int = 0):
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self._dir = directory
        now = time.time()
        self._path = directory / f"events.out.tfevents.{now:.6f}.{socket.gethostname()}"
        self._buffer = io.BytesIO()
        self._add(Event(wall_time=now, file_version="brain.Event:2"))
        if purge_step:
            start = SessionLog(status=SessionLog.START)
            self._add(Event(wall_time=now, step=purge_step, file_version="brain.Event:2"))
            self._add(Event(wall_time=now, step=purge_step, session_log=start))
        self._made_dir = False

    def _add(self, event) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._buffer.write(header + struct.pack("<I", masked_crc32c(header)))
        self._buffer.write(data + struct.pack("<I", masked_crc32c(data)))

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._add(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        if not self._made_dir:
            self._dir.mkdir(parents=True, exist_ok=True)
            self._made_dir = True
        # Rewritten in place, not renamed: a TensorBoard reading the file keeps its handle
        # and finds the new records after the ones it has read (the prefix never changes).
        self._path.write_bytes(self._buffer.getvalue())
