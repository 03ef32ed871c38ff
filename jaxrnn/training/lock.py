"""One command at a time per work directory: ``train``, ``eval``, ``sample`` and ``plot`` lock it.

On a local disk (or NFS) the lock is ``fcntl.flock`` on ``WORKDIR/jaxrnn.lock``, taken before
the command reads or writes anything else there and held until it ends. The kernel releases it
when its holder exits in any way (SIGKILL included) and a reboot forgets it, so a killed run
never leaves a stale lock: the file stays, but only as a note of the last holder (host, process
id, command, start time), which the refusal quotes. A second command on a held directory stops
at once with :class:`WorkdirBusyError`, having changed nothing. Over NFS, Linux turns ``flock``
into a lock the server holds for every client; if the holder's machine dies, the server frees it
when the client's lease expires (about 90 s).

The processes of a multi-process run (``jax.distributed``) share one work directory: process 0
takes the lock for all of them, and every process learns whether it got it, so they all stop
together.

Object stores (``gs://``) offer no lock, and jaxrnn takes none there: nothing stops two runs from
writing into one bucket directory at once. Give each run its own work directory.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
from collections.abc import Iterator

from jaxrnn.training.workdir import LOCK, WorkdirError, as_path, is_local

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock
    fcntl = None  # type: ignore[assignment]


class WorkdirBusyError(WorkdirError):
    """Another command holds the work directory."""


class Lock:
    """A held lock on a work directory; :meth:`release` (or the process's end) frees it."""

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = -1


def _holder(fd: int) -> str:
    """Who holds the lock, as its note says (the note may be empty while it is written)."""
    try:
        note = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        note = {}
    if not note.get("pid"):
        return "another jaxrnn command (host and process id unknown)"
    return (
        f"`jaxrnn {note.get('command', '?')}` (process {note['pid']} on host "
        f"{note.get('host', '?')}, since {note.get('since', '?')})"
    )


def acquire(workdir: str, command: str, *, create: bool = True) -> Lock | None:
    """Lock ``workdir`` for ``command`` ("train", "eval", "sample", "plot"), or raise
    WorkdirBusyError.

    Returns ``None`` where there is nothing to lock: an object store, a platform without
    ``flock``, or (``create=False``) a directory that does not exist or whose lock file cannot
    be created (a read-only copy no run can be writing into).
    """
    root = as_path(workdir)
    if not is_local(root) or fcntl is None:
        return None
    if create:
        os.makedirs(root, exist_ok=True)
    elif not root.is_dir():
        return None
    path = os.path.join(root, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        if create:
            raise
        if not os.path.exists(path):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # flock needs no write access
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        hint = (
            " (`jaxrnn plot --out FILE` draws a run in progress without taking its directory)"
            if command == "plot"
            else ""
        )
        raise WorkdirBusyError(
            f"{workdir} is in use: {holder} holds it. Wait for that command to end or stop it "
            f"(a killed run frees the directory at once), or use another --workdir{hint}"
        ) from None
    note = {
        "command": command,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):  # a read-only lock file keeps its old note
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(note).encode() + b"\n", 0)
    return Lock(fd, path)


@contextlib.contextmanager
def hold(workdir: str, command: str, *, create: bool = True) -> Iterator[None]:
    """Hold ``workdir``'s lock for the ``with`` block, process 0 for every process of the run.

    Every process must enter it (in a multi-process run they agree on whether process 0 got
    the lock, so that all raise, or none).
    """
    from jaxrnn import parallel

    error: Exception | None = None
    lock = None
    if parallel.is_main_process():
        try:
            lock = acquire(workdir, command, create=create)
        except Exception as e:  # noqa: BLE001  # re-raised below, once every process knows
            error = e
    if parallel.process_count() > 1:
        import numpy as np

        refused = bool(parallel.process_max(np.int32(error is not None)))
        if refused and error is None:
            error = WorkdirBusyError(f"{workdir}: process 0 could not lock it (see its error)")
    if error is not None:
        raise error
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
