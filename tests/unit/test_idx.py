"""IDX reading/writing: exact round trips for every type code, and errors that name the file."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from keel.data.idx import IDXFormatError, read_idx, write_idx
from keel.errors import KeelError

DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]
CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D, "float64": 0x0E}


def _sample(dtype: str, shape=(3, 4, 5)) -> np.ndarray:
    n = int(np.prod(shape))
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        flat = np.linspace(info.min, info.max, num=n).round()
    else:
        flat = np.linspace(-1.0, 1.0, num=n) * np.finfo(dtype).max
    return flat.astype(dtype).reshape(shape)  # spans the full range: byte order mistakes show


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_every_dtype(tmp_path, dtype, compressed):
    a = _sample(dtype)
    path = write_idx(tmp_path / "a.idx", a, gzip=compressed)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") is compressed
    body = gzip.decompress(raw) if compressed else raw
    assert body[:4] == bytes([0, 0, CODES[dtype], 3]) and body[4:16] == bytes([0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5])
    assert body[16:] == a.astype(np.dtype(dtype).newbyteorder(">")).tobytes()  # big-endian on disk
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and b.shape == (3, 4, 5)
    np.testing.assert_array_equal(a, b)
    b[0, 0, 0] = 1  # writable, and does not touch the file
    assert read_idx(path)[0, 0, 0] == a[0, 0, 0]


def test_compression_is_detected_from_content_not_name(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels.gz", a)), a)  # plain, named .gz
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels", a, gzip=True)), a)  # gzipped, no .gz


def test_one_dim_and_empty_dims_and_big_endian_input(tmp_path):
    labels = np.array([7, 2, 1], dtype=np.uint8)
    assert read_idx(write_idx(tmp_path / "l", labels)).tolist() == [7, 2, 1]
    empty = read_idx(write_idx(tmp_path / "e", np.zeros((0, 28, 28), np.uint8)))
    assert empty.shape == (0, 28, 28)
    big = np.array([1.5, -2.25], dtype=">f8")
    out = read_idx(write_idx(tmp_path / "b", big))
    assert out.dtype == np.float64 and out.dtype.isnative and out.tolist() == [1.5, -2.25]


def _raw(tmp_path, name: str, content: bytes, compressed: bool = False):
    path = tmp_path / name
    path.write_bytes(gzip.compress(content) if compressed else content)
    return path


def _header(code: int, *dims: int) -> bytes:
    return bytes([0, 0, code, len(dims)]) + np.array(dims, dtype=">u4").tobytes()


MALFORMED = [
    (
        "empty-idx3-ubyte", b"",
        r"empty-idx3-ubyte: not a valid IDX file: the file is empty \(0 bytes\)\. Fix: is this an MNIST-format IDX file\?",
    ),
    (
        "short", b"\x00\x00",
        r"short: not a valid IDX file: 2 bytes, shorter than the 4-byte magic number",
    ),
    (
        "magic", b"\x01\x02\x08\x01" + bytes(4),
        r"magic: not a valid IDX file: bad magic number: expected 00 00 <type> <ndim>, found 01 02 08 01\. "
        r"Fix: is this an MNIST-format IDX file\? its first two bytes must be zero",
    ),
    (
        "labels.txt", b"label,pixel0\n5,0\n",
        r"labels\.txt: not a valid IDX file: bad magic number: expected 00 00 <type> <ndim>, "
        r"found 6c 61 62 65 \('labe' as text\)",
    ),
    (
        "code", _header(0x0A, 2) + bytes(2),
        r"code: not a valid IDX file: unknown data type code 0x0A in byte 3 \(known: 0x08 uint8, 0x09 int8, "
        r"0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64\)",
    ),
    (
        "zero-dims", bytes([0, 0, 8, 0]),
        r"zero-dims: not a valid IDX file: zero dimensions \(byte 4 is 0\)",
    ),
    (
        "header", _header(0x08, 60000, 28, 28)[:10],
        r"header: not a valid IDX file: truncated header: 3 dimensions need 16 header bytes, got 10",
    ),
    (
        "truncated", _header(0x0C, 4, 3) + bytes(40),
        r"truncated: not a valid IDX file: truncated data: shape \[4, 3\] of int32 needs 48 bytes after the "
        r"12-byte header, got 40\. Fix: is this an MNIST-format IDX file\? the file is cut short",
    ),
    (
        "trailing", _header(0x08, 5) + bytes(8),
        r"trailing: not a valid IDX file: 3 trailing bytes after the data: shape \[5\] of uint8 needs 5 bytes "
        r"after the 8-byte header, got 8",
    ),
]


@pytest.mark.parametrize("name,content,match", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_files_name_the_file_the_problem_and_the_fix(tmp_path, name, content, match):
    path = _raw(tmp_path, name, content)
    with pytest.raises(IDXFormatError, match=re.escape(str(tmp_path)) + "/" + match) as info:
        read_idx(path)
    assert isinstance(info.value, KeelError) and info.value.path == str(path)


def test_errors_inside_gzip_say_so(tmp_path):
    path = _raw(tmp_path, "t10k-labels-idx1-ubyte.gz", _header(0x08, 10) + bytes(7), compressed=True)
    with pytest.raises(
        IDXFormatError,
        match=r"t10k-labels-idx1-ubyte\.gz: not a valid IDX file \(after gunzip\): truncated data: shape \[10\] "
        r"of uint8 needs 10 bytes after the 8-byte header, got 7",
    ):
        read_idx(path)


def test_cut_gzip_stream_and_missing_file(tmp_path):
    whole = gzip.compress(_header(0x08, 1000) + bytes(range(256)) * 4)[:-12]
    with pytest.raises(IDXFormatError, match=r"cut\.gz: gzip data is truncated or corrupt .* Fix: re-download"):
        read_idx(_raw(tmp_path, "cut.gz", whole))
    with pytest.raises(IDXFormatError, match=r"nope-idx1-ubyte: no such file\. Fix: check the path"):
        read_idx(tmp_path / "nope-idx1-ubyte")


@pytest.mark.parametrize(
    "array,match",
    [
        (np.arange(3, dtype=np.int64), r"cannot store dtype int64 in an IDX file .* Fix: convert first, e\.g\. array\.astype\(np\.uint8\)"),
        (np.array([True, False]), r"cannot store dtype bool in an IDX file"),
        (np.array(5, dtype=np.uint8), r"cannot store shape \[\]: IDX needs 1 to 255 dimensions"),
    ],
)
def test_write_refuses_what_idx_cannot_hold(tmp_path, array, match):
    with pytest.raises(IDXFormatError, match=match):
        write_idx(tmp_path / "x", array)
    assert not (tmp_path / "x").exists()


def test_reading_a_large_file_is_fast(tmp_path):
    import time

    a = np.random.default_rng(0).integers(0, 256, size=(60000, 28, 28), dtype=np.uint8)  # 47 MB, like MNIST
    path = write_idx(tmp_path / "train-images-idx3-ubyte", a)
    start = time.perf_counter()
    b = read_idx(path)
    elapsed = time.perf_counter() - start
    assert b.shape == a.shape and b[-1, -1, -1] == a[-1, -1, -1]
    assert elapsed < 0.5, f"reading 47 MB took {elapsed:.2f}s"
