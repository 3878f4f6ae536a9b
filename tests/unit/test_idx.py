"""The strict IDX reader and the guarded gzip decompression, on tiny synthetic files."""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from mnist_tasks.idx import (
    IdxFormatError,
    archive_limit,
    decompress,
    encode_idx,
    parse_idx,
    read_payload,
)

SRC = "file:///data/train-images-idx3-ubyte.gz"


@pytest.mark.parametrize(
    "dtype", ["u1", "i1", "i2", "i4", "f4", "f8"], ids=lambda d: f"dtype-{d}"
)
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 2)], ids=str)
def test_roundtrip_every_standard_type(dtype: str, shape: tuple[int, ...]) -> None:
    arr = (np.arange(np.prod(shape)) - 3).astype(dtype).reshape(shape)
    out = parse_idx(encode_idx(arr), source=SRC)
    assert out.shape == shape
    assert out.dtype.newbyteorder("=") == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_big_endian_on_disk() -> None:
    data = encode_idx(np.array([1, 258], dtype=np.int32))
    assert data == bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 2])


def test_uint8_is_a_zero_copy_view() -> None:
    payload = encode_idx(np.zeros((2, 3, 3), dtype=np.uint8))
    out = parse_idx(payload, source=SRC, ndim=3, dtype=np.dtype("u1"))
    assert not out.flags.writeable  # a view of the payload bytes, nothing copied


def test_zero_images_is_a_valid_empty_array() -> None:
    out = parse_idx(encode_idx(np.zeros((0, 28, 28), dtype=np.uint8)), source=SRC, ndim=3)
    assert out.shape == (0, 28, 28)


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    ("payload", "kwargs", "problem"),
    [
        (b"", {}, r"empty IDX payload \(0 bytes\)"),
        (b"\x00\x00\x08", {}, r"3 bytes is too short for an IDX header"),
        (b"\x1f\x00\x08\x03" + b"\x00" * 20, {}, r"wrong magic number: an IDX file starts"),
        (_header(0x0A, (2,)) + b"\x00\x00", {}, r"unknown IDX type code 0x0A"),
        (_header(0x08, ()), {}, r"declares 0 dimensions"),
        (_header(0x08, (4,)) + b"\x00" * 4, {"ndim": 3}, r"has 1 dimensions, expected 3 \(images"),
        (_header(0x08, (2, 2, 2)) + b"\x00" * 8, {"ndim": 1}, r"expected 1 \(labels"),
        (_header(0x0C, (2,)) + b"\x00" * 8, {"dtype": np.dtype("u1")},
         r"values are int32 \(type code 0x0C\), expected uint8"),
        (bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x02", {}, r"truncated header: 3 dimensions need 16"),
        (_header(0x08, (3, 2, 2)) + b"\x00" * 11, {},
         r"declares 3x2x2 uint8 values = 12 bytes, but only 11 bytes of data follow"),
        (_header(0x08, (3, 2, 2)) + b"\x00" * 15, {}, r"3 trailing bytes after the 12 bytes"),
        (_header(0x0B, (3,)) + b"\x00" * 5, {}, r"= 6 bytes, but only 5 bytes"),
    ],
    ids=[
        "empty", "short", "wrong-magic", "unknown-type", "zero-dims", "ndim-images",
        "ndim-labels", "wrong-dtype", "truncated-header", "declared-more", "trailing-bytes",
        "declared-more-int16",
    ],
)
def test_malformed_payload_names_file_and_problem(
    payload: bytes, kwargs: dict[str, object], problem: str
) -> None:
    with pytest.raises(IdxFormatError, match=problem) as info:
        parse_idx(payload, source=SRC, **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(SRC + ": ")


def test_billion_image_header_fails_fast_without_allocating() -> None:
    payload = _header(0x08, (1_000_000_000, 28, 28)) + b"\x07" * 784
    tracemalloc.start()
    try:
        with pytest.raises(IdxFormatError, match=r"1000000000x28x28 uint8 values = "
                                                  r"784,000,000,000 bytes, but only 784 bytes"):
            parse_idx(payload, source=SRC, ndim=3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # nothing near the declared 784 GB (or even 1 MB) was allocated


# --- decompress -------------------------------------------------------------------------------

PAYLOAD = encode_idx(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))


def test_decompress_gzip_and_raw_idx() -> None:
    assert decompress(gzip.compress(PAYLOAD), source=SRC) == PAYLOAD
    assert decompress(PAYLOAD, source=SRC) == PAYLOAD  # served uncompressed: accepted as is


def test_decompress_multi_member_and_zero_padding() -> None:
    data = gzip.compress(PAYLOAD[:10]) + gzip.compress(PAYLOAD[10:]) + b"\x00" * 16
    assert decompress(data, source=SRC) == PAYLOAD


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", r"empty file \(0 bytes\)"),
        (b"<!DOCTYPE html>\n<html><body>Not Found</body></html>",
         r"not a gzip file and not an IDX file: it looks like an HTML/XML page \(e\.g\. an "
         r"error page\)$"),
        (b"PK\x03\x04zipzipzip", r"not a gzip file and not an IDX file: it starts with neither "
         r"the gzip magic \(1f 8b\) nor the IDX magic \(00 00\)$"),
        (b"root:x:0:0:root:/root:/bin/bash\n", r"not a gzip file and not an IDX file: it looks "
         r"like a text file$"),
        (gzip.compress(PAYLOAD)[:-12], r"truncated gzip file: the \d+-byte archive ends before"),
        (gzip.compress(PAYLOAD)[:15], r"truncated gzip file"),
        (gzip.compress(PAYLOAD) + b"trailing junk", r"13 bytes of garbage after the end"),
    ],
    ids=["empty", "html-page", "zip", "text", "truncated-trailer", "truncated-body",
         "garbage-after"],
)
def test_bad_gzip_names_file_and_problem(data: bytes, problem: str) -> None:
    with pytest.raises(IdxFormatError, match=problem) as info:
        decompress(data, source=SRC)
    assert str(info.value).startswith(SRC + ": ")


def test_corrupt_crc_is_refused() -> None:
    data = bytearray(gzip.compress(PAYLOAD))
    data[-8] ^= 0xFF  # the CRC32 in the gzip trailer
    with pytest.raises(IdxFormatError, match=r"corrupt gzip data .*incorrect data check"):
        decompress(bytes(data), source=SRC)


def test_gzip_bomb_is_refused_at_the_limit() -> None:
    bomb = gzip.compress(b"\x00" * 5_000_000)  # ~5 KB that inflates to 5 MB
    assert len(bomb) < 10_000
    with pytest.raises(IdxFormatError, match=r"decompresses to more than 1,000,000 bytes"):
        decompress(bomb, source=SRC, max_bytes=1_000_000)
    assert len(decompress(bomb, source=SRC, max_bytes=5_000_000)) == 5_000_000


def test_raw_idx_over_the_limit_is_refused() -> None:
    raw = _header(0x08, (2_000,)) + bytes(2_000)  # uncompressed: no gzip bomb guard applies
    with pytest.raises(IdxFormatError, match=r"the uncompressed IDX file is larger than 1,000 "
                                             r"bytes; refusing it") as info:
        decompress(raw, source=SRC, max_bytes=1_000)
    assert str(info.value).startswith(SRC + ": ")
    assert decompress(raw, source=SRC, max_bytes=len(raw)) == raw  # exactly at the limit: fine


class CountingStream:
    """A stream of ``data`` followed by ``tail`` repeated forever (or nothing); counts reads.

    Like a socket, a read returns at most ``piece`` bytes.
    """

    def __init__(self, data: bytes, tail: bytes = b"", piece: int = 1 << 20) -> None:
        self.buf = io.BytesIO(data)
        self.tail = tail
        self.piece = piece
        self.read_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        assert 0 < size <= 1 << 20, size  # always a bounded read
        size = min(size, self.piece)
        out = self.buf.read(size)
        if not out and self.tail:
            out = (self.tail * (size // len(self.tail) + 1))[:size]
        self.read_bytes += len(out)
        return out


def _zero_bomb(n_bytes: int) -> bytes:
    """A one-member gzip file of ``n_bytes`` zeros (about 1,000:1), built in pieces."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    piece = bytes(1 << 20)
    parts = [deflate.compress(piece) for _ in range(n_bytes >> 20)]
    return b"".join([*parts, deflate.flush()])


def test_gzip_bomb_stream_is_refused_after_a_bounded_read() -> None:
    bomb = _zero_bomb(64 << 20)  # ~64 KB that inflates to 64 MB
    stream = CountingStream(bomb, piece=4096)
    tracemalloc.start()
    try:
        with pytest.raises(IdxFormatError, match=r"decompresses to more than 1,000,000 bytes; "
                                                  r"refusing it .*gzip bomb"):
            read_payload(stream, source=SRC, max_bytes=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # the limit plus a piece or two, never the 64 MB
    assert stream.read_bytes < 16_000  # ~1 KB of input per MB of zeros: it stopped early


def test_raw_stream_without_end_is_refused_after_limit_plus_one_byte() -> None:
    stream = CountingStream(b"", tail=b"\x00")  # what a symlink to /dev/zero reads like
    with pytest.raises(IdxFormatError, match=r"the uncompressed IDX file is larger than "
                                             r"100,000 bytes"):
        read_payload(stream, source=SRC, max_bytes=100_000)
    assert stream.read_bytes == 100_001


def test_endless_zero_padding_after_gzip_is_refused_at_the_archive_limit() -> None:
    stream = CountingStream(gzip.compress(PAYLOAD), tail=b"\x00")
    with pytest.raises(IdxFormatError, match=r"the file is larger than 5,000 bytes; refusing it"):
        read_payload(stream, source=SRC, max_bytes=1_000, max_archive_bytes=5_000)
    assert stream.read_bytes == 5_001


def test_read_payload_counts_the_archive_bytes() -> None:
    data = gzip.compress(PAYLOAD) + b"\x00" * 10
    payload, size = read_payload(CountingStream(data), source=SRC, max_bytes=len(PAYLOAD))
    assert (payload, size) == (PAYLOAD, len(data))
    assert archive_limit(47_040_016) > 47_040_016 * 1.0003  # deflate's worst case fits


@pytest.mark.parametrize(
    "data",
    [
        b"root:x:0:0:SECRET-TOKEN-1234:/root:/bin/bash\n",
        b"<html><body>SECRET-TOKEN-1234</body></html>",
        b"\x01\x02SECRET-TOKEN-1234\xff",
        gzip.compress(b"SECRET-TOKEN-1234 is not an IDX header"),
        gzip.compress(b"\x00\x00SECRET-TOKEN-1234"),
    ],
    ids=["text", "html", "binary", "gzip-text", "gzip-zeros-then-text"],
)
def test_errors_never_quote_the_file_bytes(data: bytes) -> None:
    with pytest.raises(IdxFormatError) as info:
        parse_idx(decompress(data, source=SRC), source=SRC)
    message = str(info.value)
    assert "SECRET" not in message and "TOKEN" not in message
    content = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    assert content[:4].hex() not in message.replace(" ", "").lower()  # nor in hex
    assert content[:4].decode("latin-1") not in message


def test_encode_refuses_types_without_an_idx_code() -> None:
    with pytest.raises(ValueError, match="no IDX type code"):
        encode_idx(np.zeros(3, dtype=np.uint16))
    with pytest.raises(ValueError, match="1 to 255 dimensions"):
        encode_idx(np.zeros((), dtype=np.uint8))
