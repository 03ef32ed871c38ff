import io
import os
import struct

import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.implementations.memory import MemoryFileSystem

_SHARED_MNIST = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, os.pardir, "shared", "data", "mnist"
)


@pytest.fixture(autouse=True)
def _offline_mnist(monkeypatch):
    """The offline copy next to the repository (../shared/data/mnist), else tfds downloads.

    Set per test (and so inherited by the runs' subprocesses), never for the whole session:
    the data tests check how the MNIST source is chosen and must not see it.
    """
    if "JAXRNN_MNIST_DIR" not in os.environ and os.path.isdir(_SHARED_MNIST):
        monkeypatch.setenv("JAXRNN_MNIST_DIR", os.path.abspath(_SHARED_MNIST))


@pytest.fixture
def tiny():
    """Overrides that make any config a seconds-long run."""
    return [
        "hidden_size=8",
        "batch_size=16",
        "num_steps=60",
        "num_epochs=0",
        "steps_per_call=20",
        "log_every=20",
        "eval_every=0",
        "checkpoint_every=40",
        "train_examples=400",
        "test_examples=100",
        "eval_batch_size=64",
    ]


class Bucket(MemoryFileSystem):
    """An in-memory object store: whole-object writes only, as GCS (no append, no update).

    ``opened`` records every ``(path, mode)`` opened; ``uploads`` every ``(path, object)``
    written, the object's final bytes being ``object.getvalue()``.
    """

    cachable = False

    def __init__(self):
        super().__init__()
        self.store = {}
        self.pseudo_dirs = [""]
        self.opened: list[tuple[str, str]] = []
        self.uploads: list[tuple[str, io.BytesIO]] = []

    def _open(self, path, mode="rb", **kwargs):
        if "a" in mode or "+" in mode:
            raise OSError(f"an object store cannot open {path} with mode {mode!r}")
        self.opened.append((path, mode))
        f = super()._open(path, mode, **kwargs)
        if "w" in mode:
            self.uploads.append((path, f))
        return f

    def uploaded_bytes(self, under: str = "") -> int:
        """Bytes written to the objects whose path contains ``under``, over every write."""
        return sum(len(f.getvalue()) for path, f in self.uploads if under in path)


class _BucketBackend(epath_backend._FileSystemSpecBackend):
    def __init__(self, fs):
        self._bucket = fs

    def fs(self, path):
        return self._bucket


@pytest.fixture
def bucket(monkeypatch):
    """``gs://`` paths in epath go to a fresh in-memory ``Bucket``."""
    fs = Bucket()
    monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, "gs", _BucketBackend(fs))
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    return fs


def _parse_records(data: bytes) -> list:
    """The ``Event`` protos of a TFRecord stream, checking each length and data CRC."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    events, pos = [], 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (size,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12 : pos + 12 + size]
        crc = struct.unpack("<I", data[pos + 12 + size : pos + 16 + size])[0]
        assert crc == masked_crc32c(body)
        events.append(Event.FromString(body))
        pos += 16 + size
    assert pos == len(data)
    return events


@pytest.fixture
def event_files():
    """``run -> [[Event, ...], ...]``: the event files of ``run/tb`` in name order, parsed.

    A file in numbered parts (``NAME.part000000``, ``NAME.part000001``, ... on an object
    store) is read as the concatenation of its parts, as TensorBoard reads them.
    """

    def read(run) -> list[list]:
        files: dict[str, list[tuple[int, bytes]]] = {}
        for path in epath.Path(run, "tb").iterdir():
            stem, _, number = path.name.rpartition(".part")
            if not (stem and number.isdigit()):
                stem, number = path.name, "0"
            files.setdefault(stem, []).append((int(number), path.read_bytes()))
        return [
            _parse_records(b"".join(data for _, data in sorted(files[name])))
            for name in sorted(files)
        ]

    return read
