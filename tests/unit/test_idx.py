"""pipeline.data.idx: IDX bytes <-> ndarray, and clear errors for malformed files."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from pipeline.data import idx

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (3, 4), (2, 28, 28), (0, 5)]


def _array(dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    values = np.arange(int(np.prod(shape))) - 3
    return values.reshape(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_encode_decode_round_trip(dtype: type, shape: tuple[int, ...]) -> None:
    array = _array(dtype, shape)
    decoded = idx.decode(idx.encode(array))
    assert decoded.dtype == np.dtype(dtype)
    assert decoded.dtype.isnative
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["data-idx", "data-idx.gz"])
def test_write_read_round_trip_plain_and_gzip(tmp_path, dtype: type, name: str) -> None:
    array = _array(dtype, (4, 6))
    path = tmp_path / name
    idx.write(path, array)
    assert (path.read_bytes()[:2] == idx.GZIP_MAGIC) == name.endswith(".gz")
    read = idx.read(path)
    assert read.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("compress", [True, False])
def test_compression_is_detected_by_content_not_name(tmp_path, compress: bool) -> None:
    array = _array(np.uint8, (3, 3))
    path = tmp_path / ("misnamed" if compress else "misnamed.gz")
    idx.write(path, array, compress=compress)
    np.testing.assert_array_equal(idx.read(path), array)


def test_header_matches_the_mnist_layout() -> None:
    data = idx.encode(np.zeros((2, 28, 28), dtype=np.uint8))
    assert data[:4] == b"\x00\x00\x08\x03"
    assert struct.unpack(">3I", data[4:16]) == (2, 28, 28)
    assert len(data) == 16 + 2 * 28 * 28


def test_big_endian_on_disk() -> None:
    data = idx.encode(np.array([1], dtype=np.int32))
    assert data == b"\x00\x00\x0c\x01" + struct.pack(">I", 1) + struct.pack(">i", 1)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([1 + 2j]), "cannot store dtype"),
        (np.array(5, dtype=np.uint8), "0-dimensional"),
    ],
)
def test_encode_rejects_what_idx_cannot_hold(array: np.ndarray, message: str) -> None:
    with pytest.raises(idx.IdxError, match=message):
        idx.encode(array)


GOOD = idx.encode(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "too short for an IDX header", id="empty"),
        pytest.param(GOOD[:3], "too short for an IDX header", id="short-magic"),
        pytest.param(b"\x08\x03" + GOOD[2:], "bad magic number 0x0803", id="bad-zero-bytes"),
        pytest.param(b"\x00\x00\x42\x02" + GOOD[4:], "bad magic number 0x00004202", id="bad-type"),
        pytest.param(b"\x00\x00\x08\x00", "0 dimensions", id="no-dimensions"),
        pytest.param(GOOD[:9], "truncated header", id="truncated-header"),
        pytest.param(
            GOOD[:-1], r"shape \(3, 4\) \(12 data bytes\).* 11 data bytes", id="truncated"
        ),
        pytest.param(
            GOOD + b"\x00", "13 data bytes; the file is truncated or corrupt", id="too-long"
        ),
        pytest.param(
            b"\x00\x00\x08\x02" + struct.pack(">2I", 4, 4) + GOOD[12:],
            r"shape \(4, 4\) \(16 data bytes\)",
            id="wrong-counts",
        ),
    ],
)
def test_decode_rejects_malformed_data(data: bytes, message: str) -> None:
    with pytest.raises(idx.IdxError, match=message) as caught:
        idx.decode(data, name="some-file")
    assert str(caught.value).startswith("some-file: ")


def test_read_names_the_file_of_a_malformed_file(tmp_path) -> None:
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(GOOD[:-2])
    with pytest.raises(idx.IdxError, match=f"^{re.escape(str(path))}: .*truncated or corrupt"):
        idx.read(path)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:-4] + bytes(4), id="wrong-size-trailer"),
        pytest.param(lambda data: data[:-8] + bytes(8), id="wrong-crc"),
        pytest.param(lambda data: data[:3] + b"\xff" + data[4:], id="bad-flags"),
    ],
)
def test_read_rejects_corrupt_gzip(tmp_path, corrupt) -> None:
    path = tmp_path / "labels.gz"
    path.write_bytes(corrupt(gzip.compress(GOOD, mtime=0)))
    with pytest.raises(idx.IdxError, match=f"^{re.escape(str(path))}: corrupt gzip data"):
        idx.read(path)


def test_read_rejects_gzip_with_a_corrupt_deflate_stream(tmp_path) -> None:
    data = bytearray(gzip.compress(idx.encode(np.arange(1000, dtype=np.uint8)), mtime=0))
    data[10] ^= 0xFF
    path = tmp_path / "images.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(idx.IdxError, match="corrupt gzip data"):
        idx.read(path)
