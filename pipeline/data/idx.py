"""Pure IDX (the MNIST file format) reading and writing: bytes <-> ndarray.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
big-endian uint32 per dimension, then the data in C order. MNIST uses unsigned bytes (type 0x08).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

# Type codes of the IDX format and the big-endian numpy dtypes they stand for.
_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {
    dtype.newbyteorder(">") if dtype.itemsize > 1 else dtype: code
    for code, dtype in _DTYPES.items()
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """The bytes are not a well-formed IDX file."""


def decode(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the data length."""
    if len(data) < 4:
        raise IdxError(f"{name}: {len(data)} bytes is too short for an IDX header (4 bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _DTYPES:
        raise IdxError(
            f"{name}: bad magic number 0x{data[:4].hex()}; an IDX file starts with 0x0000, a type"
            f" code in {sorted(hex(code) for code in _DTYPES)} and the number of dimensions"
        )
    if ndim == 0:
        raise IdxError(f"{name}: the header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise IdxError(f"{name}: truncated header ({len(data)} bytes, {ndim} dimensions declared)")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_size
    if actual != expected:
        raise IdxError(
            f"{name}: the header declares shape {shape} ({expected} data bytes) but the file has"
            f" {actual} data bytes; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def encode(array: np.ndarray) -> bytes:
    """Serialize an array as IDX bytes."""
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    if big_endian not in _CODES:
        raise IdxError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim == 0:
        raise IdxError("IDX cannot store a 0-dimensional array")
    header = struct.pack(">HBB", 0, _CODES[big_endian], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=big_endian).tobytes()


def read_bytes(path: Path) -> bytes:
    """Return a file's IDX content, decompressing it when it is gzip (by content, not by name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise IdxError(f"{path}: corrupt gzip data ({error})") from error
    return raw


def read(path: Path) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed."""
    return decode(read_bytes(path), name=str(path))


def write(path: Path, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write an IDX file; gzip-compressed when `compress` is true or the name ends with `.gz`."""
    path = Path(path)
    data = encode(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
