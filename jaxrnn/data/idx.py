"""Reading and verifying the idx files MNIST ships in (LeCun's format), with NumPy only.

An idx file is a big-endian header, ``0x00 0x00 <dtype code> <ndim>`` then ``ndim`` uint32
sizes, then the data in C order. MNIST images are idx3 (magic ``2051``: uint8, 3 dims
``[count, 28, 28]``), labels idx1 (magic ``2049``: uint8, ``[count]``).

Files may be gzipped (any encoder, any compression level, several gzip members) or raw: the
content is recognised by the gzip magic bytes, not by the file name, and the digest that is
checked is the SHA-256 of the *decompressed* bytes, so a recompressed copy still verifies.
Every error is a :class:`IdxError` (a ``ValueError``) or ``FileNotFoundError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib

import numpy as np

_GZIP_MAGIC = b"\x1f\x8b"
# idx dtype codes (third byte of the magic number) -> big-endian NumPy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IdxError(ValueError):
    """A missing piece, a wrong header, count, value or digest in an idx file (names it)."""


@dataclasses.dataclass(frozen=True)
class IdxSpec:
    """What one idx file must hold.

    Attributes:
      stem: the canonical file name without ``.gz`` (e.g. ``"train-images-idx3-ubyte"``).
      magic: the expected magic number (``2051`` images, ``2049`` labels).
      shape: the expected array shape, count first (``(60000, 28, 28)``, ``(60000,)``).
      sha256: hex SHA-256 of the decompressed file, or ``None`` to skip the digest check.
      max_value: if set, every value must lie in ``[0, max_value]`` (labels: 9).
    """

    stem: str
    magic: int
    shape: tuple[int, ...]
    sha256: str | None = None
    max_value: int | None = None


def decompressed_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, gunzipped if they start with the gzip magic bytes.

    Raises ``FileNotFoundError`` if absent and :class:`IdxError` if the gzip stream is
    truncated or corrupt.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"idx file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            # gzip.decompress reads every member: concatenated gzip streams are valid gzip.
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise IdxError(f"{path}: corrupt or truncated gzip data ({e})") from None
    return data


def parse_idx(data: bytes, name: str = "<bytes>") -> tuple[int, np.ndarray]:
    """``(magic, array)`` from the raw bytes of an idx file; ``name`` is used in errors.

    The array has the file's shape and its native-endian dtype (uint8 for MNIST).
    """
    if len(data) < 4:
        raise IdxError(f"{name}: truncated idx header ({len(data)} bytes)")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise IdxError(f"{name}: not an idx file (magic number {magic:#010x})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(f"{name}: truncated idx header (ndim {ndim}, {len(data)} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"{name}: {what}: header says shape {shape} ({expected} bytes), file has {len(data)}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return magic, array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike, spec: IdxSpec | None = None) -> np.ndarray:
    """Reads (and, given ``spec``, verifies) one idx file, gzipped or raw.

    Returns the array with the file's shape, e.g. uint8 ``[60000, 28, 28]`` for the MNIST
    training images. With ``spec``: the magic number, the shape (count included), the value
    range and the SHA-256 of the decompressed bytes must match, else :class:`IdxError`.
    """
    name = os.fspath(path)
    data = decompressed_bytes(path)
    if spec is not None and spec.sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != spec.sha256:
            raise IdxError(
                f"{name}: SHA-256 of the decompressed content is {digest}, expected "
                f"{spec.sha256} (corrupt or not the file {spec.stem})"
            )
    magic, array = parse_idx(data, name)
    if spec is None:
        return array
    if magic != spec.magic:
        raise IdxError(f"{name}: magic number {magic}, expected {spec.magic} ({spec.stem})")
    if array.shape != spec.shape:
        raise IdxError(
            f"{name}: shape {array.shape} (count {array.shape[0]}), expected {spec.shape}"
        )
    if spec.max_value is not None and array.size and int(array.max()) > spec.max_value:
        raise IdxError(
            f"{name}: values must lie in [0, {spec.max_value}], found {int(array.max())}"
        )
    return array


def find_idx(directory: str | os.PathLike, stem: str) -> str:
    """The path of ``stem`` in ``directory``: ``stem.gz``, ``stem``, or the ``.``-separated
    spelling some mirrors use (``train-images.idx3-ubyte``), gzipped or not.

    Raises ``FileNotFoundError`` naming the file and the directory.
    """
    directory = os.fspath(directory)
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {directory}")
