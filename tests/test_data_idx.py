"""idx files: parsing against bytes written here, gzip in any encoding, every corruption named."""

import gzip
import hashlib
import struct
import zlib

import numpy as np
import pytest

from jaxrnn.data.idx import IdxError, IdxSpec, decompressed_bytes, find_idx, parse_idx, read_idx


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The idx encoding of a uint8 array (magic 0x0000 08 <ndim> unless given)."""
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, np.uint8).tobytes()


IMAGES = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
RAW = idx_bytes(IMAGES)
SPEC = IdxSpec("tiny-images-idx3-ubyte", 2051, (3, 4, 5), hashlib.sha256(RAW).hexdigest())


def test_parse_matches_the_written_array():
    magic, array = parse_idx(RAW)
    assert magic == 2051
    np.testing.assert_array_equal(array, IMAGES)
    assert array.dtype == np.uint8


def test_parse_other_dtypes_big_endian():
    values = np.array([1.5, -2.0], np.float32)
    data = struct.pack(">I", 0x0D01) + struct.pack(">I", 2) + values.astype(">f4").tobytes()
    magic, array = parse_idx(data)
    np.testing.assert_array_equal(array, values)
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    "encode",
    [
        lambda b: b,
        lambda b: gzip.compress(b, compresslevel=1),
        lambda b: gzip.compress(b, compresslevel=9, mtime=123),
        # Two gzip members: still one valid gzip file.
        lambda b: gzip.compress(b[:7]) + gzip.compress(b[7:]),
    ],
    ids=["raw", "gzip1", "gzip9", "multimember"],
)
def test_any_gzip_encoding_verifies_by_decompressed_digest(tmp_path, encode):
    path = tmp_path / "tiny-images-idx3-ubyte.gz"
    path.write_bytes(encode(RAW))
    np.testing.assert_array_equal(read_idx(path, SPEC), IMAGES)
    assert decompressed_bytes(path) == RAW


def test_raw_deflate_stream_is_not_gzip(tmp_path):
    # A zlib stream is neither raw idx nor gzip: the header check names the file.
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(zlib.compress(RAW))
    with pytest.raises(IdxError, match="x-idx3-ubyte"):
        read_idx(path, SPEC)


def _write(tmp_path, data, name="tiny-images-idx3-ubyte.gz"):
    path = tmp_path / name
    path.write_bytes(gzip.compress(data))
    return path


@pytest.mark.parametrize(
    "data, spec, match",
    [
        (RAW[:-1], IdxSpec("t", 2051, (3, 4, 5)), "truncated"),
        (RAW[:6], IdxSpec("t", 2051, (3, 4, 5)), "truncated idx header"),
        (RAW + b"\0", IdxSpec("t", 2051, (3, 4, 5)), "trailing bytes"),
        (idx_bytes(IMAGES.reshape(3, 20)), IdxSpec("t", 2051, (3, 4, 5)), "magic number 2050"),
        (b"\x01\x02" + RAW[2:], IdxSpec("t", 2051, (3, 4, 5)), "not an idx file"),
        (RAW, IdxSpec("t", 2051, (4, 4, 5)), r"count 3\), expected \(4, 4, 5\)"),
        (RAW, IdxSpec("t", 2051, (3, 5, 4)), "shape"),
        (RAW, IdxSpec("t", 2051, (3, 4, 5), max_value=9), r"\[0, 9\], found 59"),
        (RAW, IdxSpec("t", 2051, (3, 4, 5), "0" * 64), "SHA-256 of the decompressed"),
    ],
    ids=["truncated", "short-header", "trailing", "magic", "garbage", "count", "size", "range",
         "digest"],
)  # fmt: skip
def test_corruption_is_named(tmp_path, data, spec, match):
    path = _write(tmp_path, data)
    with pytest.raises(IdxError, match=match) as info:
        read_idx(path, spec)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_named(tmp_path):
    path = tmp_path / "tiny-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(RAW)[:-12])
    with pytest.raises(IdxError, match="corrupt or truncated gzip") as info:
        read_idx(path, SPEC)
    assert str(path) in str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        read_idx(tmp_path / "nothere", SPEC)
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\[\.gz\] not found"):
        find_idx(tmp_path, "train-images-idx3-ubyte")


@pytest.mark.parametrize(
    "name",
    ["train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte"],
)
def test_find_accepts_the_usual_spellings(tmp_path, name):
    (tmp_path / name).write_bytes(RAW)
    assert find_idx(tmp_path, "train-images-idx3-ubyte") == str(tmp_path / name)
