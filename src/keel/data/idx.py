"""Read and write IDX files (the MNIST format), plain or gzip-compressed, with numpy only.

Layout: two zero bytes, a type code byte, a byte with the number of dimensions, one
big-endian uint32 per dimension, then the values in big-endian C order. Compression is
detected from the gzip magic bytes (1f 8b), never from the file name.
"""

from __future__ import annotations

import gzip as _gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from keel.errors import KeelError

# type code -> big-endian dtype of the stored values
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_KNOWN = ", ".join(f"0x{c:02X} {dt.newbyteorder('=').name}" for c, dt in IDX_DTYPES.items())
_GZIP_MAGIC = b"\x1f\x8b"
_FIX = "is this an MNIST-format IDX file?"


class IDXFormatError(KeelError):
    """A file is not a well-formed IDX file, or an array cannot be stored as one.

    Attributes:
        path: the file concerned.
        problem: what is wrong, without the path and the fix.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


def _hex(b: bytes) -> str:
    return " ".join(f"{x:02x}" for x in b)


def _bad(path: Path, gz: bool, problem: str, fix: str) -> IDXFormatError:
    where = " (after gunzip)" if gz else ""
    return IDXFormatError(path, f"not a valid IDX file{where}: {problem}", f"{_FIX} {fix}")


def _read_bytes(path: Path) -> tuple[bytes | bytearray, bool]:
    """The file's (decompressed) content and whether it was gzipped."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)  # readinto a bytearray: the uint8 result can share it, writable
            got = f.readinto(buf)
    except FileNotFoundError:
        raise IDXFormatError(path, "no such file", "check the path (and data.root for MNIST data)") from None
    except IsADirectoryError:
        raise IDXFormatError(path, "is a directory, not an IDX file", "give the path of a file inside it") from None
    del buf[got:]  # a file that shrank between stat and read
    if buf[:2] != _GZIP_MAGIC:
        return buf, False
    try:
        return _gzip.decompress(buf), True
    except (EOFError, OSError, zlib.error) as e:
        raise IDXFormatError(
            path, f"gzip data is truncated or corrupt ({e})",
            "re-download the file, or check it with `gzip -t FILE`",
        ) from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, plain or gzipped, into a native-endian, writable numpy array.

    Args:
        path: the file; gzip compression is detected from its first bytes, not its name.

    Returns:
        The array with the stored shape and dtype (uint8, int8, int16, int32, float32 or
        float64), in native byte order, owning (or solely referencing) its memory.

    Raises:
        IDXFormatError: missing file, empty file, bad magic number, unknown type code,
            zero dimensions, truncated header or data, trailing bytes, corrupt gzip.
    """
    p = Path(path)
    buf, gz = _read_bytes(p)
    n = len(buf)
    if n == 0:
        raise _bad(p, gz, "the file is empty (0 bytes)", "re-download or re-extract it")
    if n < 4:
        raise _bad(p, gz, f"{n} bytes, shorter than the 4-byte magic number", "re-download or re-extract it")
    magic = bytes(buf[:4])
    if magic[:2] != b"\x00\x00":
        text = f" ({magic.decode('ascii')!r} as text)" if all(32 <= c < 127 for c in magic) else ""
        raise _bad(
            p, gz, f"bad magic number: expected 00 00 <type> <ndim>, found {_hex(magic)}{text}",
            "its first two bytes must be zero (IDX files start 00 00 08 03 for images, 00 00 08 01 for labels)",
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_DTYPES:
        raise _bad(
            p, gz, f"unknown data type code 0x{code:02X} in byte 3 (known: {_KNOWN})",
            "the file may be corrupt; re-download or re-extract it",
        )
    if ndim == 0:
        raise _bad(p, gz, "zero dimensions (byte 4 is 0)", "an IDX array has at least one dimension")
    header = 4 + 4 * ndim
    if n < header:
        raise _bad(
            p, gz, f"truncated header: {ndim} dimensions need {header} header bytes, got {n}",
            "the file is cut short; re-download or re-extract it",
        )
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    got = n - header
    if got < expected:
        raise _bad(
            p, gz, f"truncated data: shape {list(shape)} of {dtype.newbyteorder('=').name} needs {expected} bytes"
            f" after the {header}-byte header, got {got}",
            "the file is cut short; re-download or re-extract it",
        )
    if got > expected:
        raise _bad(
            p, gz, f"{got - expected} trailing bytes after the data: shape {list(shape)} of"
            f" {dtype.newbyteorder('=').name} needs {expected} bytes after the {header}-byte header, got {got}",
            "the header does not match the data; re-download or re-extract it",
        )
    arr = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=header).reshape(shape)
    native = dtype.newbyteorder("=")
    if arr.dtype != native or not arr.flags.writeable:
        arr = arr.astype(native)  # byte-swaps into a fresh array (gzip gives read-only bytes)
    return arr


def write_idx(path: str | os.PathLike[str], array: np.ndarray, gzip: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``gzip``); return the path.

    The dtype must be one IDX stores (uint8, int8, int16, int32, float32, float64); it is
    never converted silently. Compressed output is reproducible (no timestamp).

    Raises:
        IDXFormatError: an unsupported dtype, zero dimensions, more than 255 dimensions or a
            dimension of 2**32 or more.
    """
    p = Path(path)
    a = np.asarray(array)
    native = a.dtype.newbyteorder("=")
    if native not in _CODES:
        raise IDXFormatError(
            p, f"cannot store dtype {a.dtype} in an IDX file (supported: {_KNOWN})",
            "convert first, e.g. array.astype(np.uint8) for MNIST images and labels",
        )
    if not 1 <= a.ndim <= 255 or any(d >= 2**32 for d in a.shape):
        raise IDXFormatError(
            p, f"cannot store shape {list(a.shape)}: IDX needs 1 to 255 dimensions, each < 2**32",
            "reshape the array (a scalar becomes np.reshape(x, 1))",
        )
    header = bytes([0, 0, _CODES[native], a.ndim]) + np.asarray(a.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(a, dtype=native.newbyteorder(">")).tobytes()
    p.write_bytes(_gzip.compress(data, compresslevel=6, mtime=0) if gzip else data)
    return p


__all__ = ["IDXFormatError", "read_idx", "write_idx"]
