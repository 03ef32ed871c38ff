"""A run's metrics: ``metrics.jsonl`` rows and TensorBoard events, in O(rows) bytes.

Each row is written once on a local disk, and a bounded number of times on an object store; the
log keeps at most one part of it in memory, whatever the length of the run.

Rows (one JSON object per line, ``{"step", "split": "train"|"test", "loss", ...}``, in step
order) are the lines of ``metrics.jsonl`` followed by those of the parts ``metrics/NNNNNN.jsonl``
in number order; :func:`read_metrics` reads them all.

* A local disk appends each row to the last of these files as it is written, so a reader (``jaxrnn
  plot``, ``tail -f``) sees it at once. A run killed in the middle of a row leaves a line without
  its newline, which readers skip and the next run cuts off.
* An object store cannot append to an object, so rows go to numbered parts: at each flush (every
  ``REMOTE_FLUSH_SECS``, after each checkpoint, at the end, and whenever it reaches
  ``PART_BYTES``) the open part is uploaded whole; after ``PART_WRITES`` uploads or once it
  holds ``PART_BYTES``, it is left as it is and the next part opens. Each row is thus uploaded
  at most ``PART_WRITES`` times, and the log holds at most one part in memory.

TensorBoard events go through ``tensorboardX.SummaryWriter``: one event file ``tb/events.out.
tfevents.*`` per invocation, appended by tensorboardX on a local disk. On an object store its own
``gs://`` writer needs ``google-cloud-storage`` and uploads the whole file, held in memory, at
each flush; instead the writer is handed an epath-backed record stream (registered through
``tensorboardX.record_writer.register_writer_factory``) that splits the file into parts as above,
``tb/events.out.tfevents.*.partNNNNNN``, which TensorBoard reads in name order as one stream.

A run resumed from the checkpoint at step ``s`` first cuts off the rows after ``s`` (and the final
test row of a finished run, which it evaluates again), so no step appears twice; its event file
starts with tensorboardX's ``purge_step=s`` marker, which tells TensorBoard to hide the events at
or after ``s`` of the earlier files.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from etils import epath

from jaxrnn.training.workdir import as_path, is_local, write_bytes

ROWS = "metrics.jsonl"
PARTS = "metrics"  # object stores: metrics/000000.jsonl, metrics/000001.jsonl, ...
REMOTE_FLUSH_SECS = 30.0  # at most one log upload per this many seconds, besides checkpoints
LOCAL_EVENTS_FLUSH_SECS = 5.0  # tensorboardX flushes (and fsyncs) a local event file this often
PART_WRITES = 8  # uploads of one part before the next opens
PART_BYTES = 1 << 20  # a part this large is left as it is at its next upload

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- reading


def _segments(root: epath.Path) -> list[epath.Path]:
    """The files holding the rows, in order: ``metrics.jsonl``, then the parts by number."""
    files = [root / ROWS] if (root / ROWS).exists() else []
    parts = root / PARTS
    if parts.exists():
        numbered = [p for p in parts.iterdir() if p.name.endswith(".jsonl") and p.stem.isdigit()]
        files += sorted(numbered, key=lambda p: int(p.stem))
    return files


def _lines(path: epath.Path) -> Iterator[bytes]:
    """The complete lines of ``path`` (a last line without its newline is being written)."""
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield line


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
    """The rows of ``workdir``'s log, each step once and in step order (empty if none yet)."""
    root = as_path(workdir)
    return [json.loads(line) for seg in _segments(root) for line in _lines(seg) if line.strip()]


def _cut(root: epath.Path, keep: Callable[[dict], bool]) -> None:
    """Drop the rows from the first that ``keep`` rejects on (rows are in step order).

    The file holding that row is cut there (truncated on a local disk, rewritten whole on an
    object store) and the files after it are removed; the files before it are not touched.
    """
    segments = _segments(root)
    for i, seg in enumerate(segments):
        offset, cut = 0, False
        with seg.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n") or (line.strip() and not keep(json.loads(line))):
                    cut = True
                    break
                offset += len(line)
        if not cut:
            continue
        if is_local(seg):
            os.truncate(os.fspath(seg), offset)
        elif offset:
            with seg.open("rb") as f:
                write_bytes(seg, f.read(offset))
        else:
            seg.unlink()
        for later in segments[i + 1 :]:
            later.unlink()
        return


# --------------------------------------------------------------------------- writing


class Parts:
    """An append-only byte stream on an object store, stored as numbered objects.

    ``write`` adds bytes to the open part, held in memory, and flushes once it holds
    ``PART_BYTES``; ``flush`` uploads the open part whole to ``path_of(index)`` and, after
    ``PART_WRITES`` uploads or once it holds ``PART_BYTES``, leaves it as it is and opens the
    next. Every byte is uploaded at most ``PART_WRITES`` times; the memory held is at most
    ``PART_BYTES`` and one write.
    """

    def __init__(self, path_of: Callable[[int], epath.Path], first: int = 0):
        self._path_of = path_of
        self._index = first
        self._part = bytearray()
        self._uploaded = 0  # bytes of the open part already uploaded
        self._writes = 0  # uploads of the open part

    def write(self, data: bytes) -> None:
        self._part += data
        if len(self._part) >= PART_BYTES:
            self.flush()

    def flush(self) -> None:
        if len(self._part) == self._uploaded:
            return
        write_bytes(self._path_of(self._index), bytes(self._part))
        self._uploaded = len(self._part)
        self._writes += 1
        if self._writes >= PART_WRITES or len(self._part) >= PART_BYTES:
            self._index += 1
            self._part, self._uploaded, self._writes = bytearray(), 0, 0

    def close(self) -> None:
        self.flush()


def _row_stream(root: epath.Path) -> BinaryIO | Parts:
    """Where new rows go: the end of the last row file on a local disk, new parts elsewhere."""
    segments = _segments(root)
    if is_local(root):
        path = segments[-1] if segments else root / ROWS
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("ab")  # type: ignore[return-value]
    directory = root / PARTS
    first = max((int(p.stem) for p in segments if p.parent.name == PARTS), default=-1) + 1
    return Parts(lambda i: directory / f"{i:06d}.jsonl", first)


_FACTORY_PREFIX = "jaxrnn-epath"  # "jaxrnn-epath:gs://bucket/run/tb/events...": Parts on epath


class _EventParts:
    """tensorboardX's record stream interface (``write``, ``flush``, ``close``) over ``Parts``.

    tensorboardX flushes from its writer thread, which must not die: a failed upload is logged
    and retried at the next flush, with nothing lost.
    """

    def __init__(self, path: str):
        self._parts = Parts(lambda i: epath.Path(f"{path}.part{i:06d}"))

    def write(self, data: bytes) -> None:
        self._try(self._parts.write, data)  # the data is kept even if its upload fails

    def flush(self) -> None:
        self._try(self._parts.flush)

    @staticmethod
    def _try(method, *args) -> None:
        try:
            method(*args)
        except Exception as error:  # noqa: BLE001  # kept for the next flush
            _log.warning("TensorBoard events not uploaded yet (%s); retrying later", error)

    def close(self) -> None:
        self.flush()


class _EventPartsFactory:
    def open(self, path: str) -> _EventParts:
        return _EventParts(path[len(_FACTORY_PREFIX) + 1 :])

    def directory_check(self, path: str) -> None:
        pass  # object stores have no directories to make


def _import_tensorboardx() -> None:
    """Imports tensorboardX without importing torch where torch is installed but not yet
    imported: tensorboardX's writer imports it (to accept torch tensors, which jaxrnn never
    logs), and torch's import takes seconds. A ``None`` in ``sys.modules`` makes ``import
    torch`` raise ``ImportError`` for that moment; it is taken out again after."""
    if "tensorboardX.writer" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tensorboardX.writer  # noqa: F401
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def _event_writer(root: epath.Path, purge_step: int):
    """A ``SummaryWriter`` for one new event file in ``root/tb``."""
    _import_tensorboardx()
    from tensorboardX import SummaryWriter
    from tensorboardX.record_writer import register_writer_factory

    tb = root / "tb"
    # tensorboardX names the file by the second; the microseconds tell two invocations apart.
    suffix = f".{time.time_ns() // 1000 % 1_000_000:06d}"
    if is_local(root):
        logdir, flush_secs = str(tb), LOCAL_EVENTS_FLUSH_SECS
    else:
        register_writer_factory(_FACTORY_PREFIX, _EventPartsFactory())
        logdir, flush_secs = f"{_FACTORY_PREFIX}:{tb}", REMOTE_FLUSH_SECS
    return SummaryWriter(
        logdir, purge_step=purge_step, flush_secs=flush_secs, filename_suffix=suffix
    )


class NoLog:
    """What processes other than 0 log: nothing (their metrics are the same global values)."""

    def write(self, step: int, split: str, values: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog:
    """Metrics of the run in ``workdir`` from ``start_step`` on, to its rows and TensorBoard.

    First cuts the rows after ``start_step`` (a run that starts over, at 0, drops them all; a
    finished run, ``start_step == last_step``, drops its final test row). ``write`` sends the
    rows on when ``flush_secs`` have passed since the last flush (default: at once on a local
    disk, every ``REMOTE_FLUSH_SECS`` on an object store); ``flush`` and ``close`` always do,
    for the event file too (which tensorboardX also flushes on its own every
    ``LOCAL_EVENTS_FLUSH_SECS`` or ``REMOTE_FLUSH_SECS``).
    """

    def __init__(
        self, workdir: str, start_step: int, last_step: int, flush_secs: float | None = None
    ):
        root = as_path(workdir)

        def keep(row: dict) -> bool:
            step, split = row["step"], row["split"]
            return step < start_step or (
                step == start_step and (split == "train" or start_step < last_step)
            )

        _cut(root, keep)
        self._rows = _row_stream(root)
        self._events = _event_writer(root, start_step)
        if flush_secs is None:
            flush_secs = 0.0 if is_local(root) else REMOTE_FLUSH_SECS
        self._flush_secs = flush_secs
        self._last_flush = -float("inf")
        self._closed = False

    def write(self, step: int, split: str, values: dict) -> None:
        row = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        self._rows.write(json.dumps(row).encode() + b"\n")
        for name, value in values.items():
            self._events.add_scalar(f"{split}/{name}", float(value), int(step))
        if time.monotonic() - self._last_flush >= self._flush_secs:
            self._rows.flush()
            self._last_flush = time.monotonic()

    def flush(self) -> None:
        self._rows.flush()
        self._events.flush()
        self._last_flush = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Write every row and event and close the files; closing again does nothing."""
        if self._closed:
            return
        self._rows.close()
        self._events.close()
        self._closed = True
