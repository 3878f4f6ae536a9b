"""A strict reader for the IDX format (MNIST's file format), with guarded gzip decompression.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the values in
C order, big-endian::

    00 00 <type code> <number of dims>   e.g. 00 00 08 03 for uint8 images (count, rows, cols)
    <dim 0> ... <dim n-1>                uint32, big-endian
    <data>                               prod(dims) values of the type

Everything is checked before a single array is built: the magic, the type code, the number of
dimensions, and the declared size against the bytes actually present (so a header that
declares a billion images fails at once instead of allocating), and trailing bytes. Every
error names the file (its source URI) and the problem.

Usage::

    payload = decompress(raw_bytes, source="https://mirror/train-images-idx3-ubyte.gz")
    images = parse_idx(payload, source="...", ndim=3, dtype=np.dtype("u1"))
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

# IDX type codes (the third magic byte) and the numpy dtype of each; multi-byte types are
# big-endian in the file.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Upper bound on one decompressed file. MNIST's largest payload is 47 MB; this guards memory
# against a gzip bomb (a small archive that inflates without end) from a bad mirror.
MAX_PAYLOAD_BYTES = 1 << 30

_GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """A file is not a well-formed (gzip-compressed) IDX file; names the file and the problem."""


def _describe_start(data: bytes) -> str:
    """A short, readable description of what a non-IDX, non-gzip file starts with."""
    head = data[:256].lstrip()
    if head[:1] == b"<" and (b"html" in head.lower() or b"<?xml" in head.lower()):
        text = head[:40].decode("utf-8", "replace").split("\n")[0]
        return f"it looks like an HTML/XML page (starts with {text!r}), e.g. an error page"
    return f"it starts with bytes {data[:8].hex(' ')}"


def decompress(data: bytes, *, source: str, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Return the IDX payload of ``data``: gunzipped if it is gzip, as is if it is raw IDX.

    Multi-member gzip files are supported; the CRC and length in each gzip trailer are checked.

    Args:
        data: the file's bytes as fetched.
        source: the file's URI or path, used in error messages.
        max_bytes: refuse payloads larger than this (guards against gzip bombs).

    Returns:
        The decompressed bytes.

    Raises:
        IdxFormatError: for an empty file, a file that is neither gzip nor IDX (e.g. an HTML
            page saved under a ``.gz`` name), a truncated or corrupt gzip stream, trailing
            garbage, or a payload over ``max_bytes``.
    """
    if not data:
        raise IdxFormatError(f"{source}: empty file (0 bytes)")
    if data[:2] != _GZIP_MAGIC:
        if data[:2] == b"\x00\x00":
            return data  # an uncompressed IDX file; parse_idx checks the rest
        raise IdxFormatError(
            f"{source}: not a gzip file and not an IDX file: {_describe_start(data)}"
        )
    parts: list[bytes] = []
    total = 0
    rest = data
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        try:
            chunk = inflater.decompress(rest, max_bytes - total + 1)
        except zlib.error as exc:
            raise IdxFormatError(f"{source}: corrupt gzip data ({exc})") from None
        total += len(chunk)
        if total > max_bytes or inflater.unconsumed_tail:
            raise IdxFormatError(
                f"{source}: decompresses to more than {max_bytes:,} bytes; refusing it "
                "(not an MNIST-sized IDX file, or a gzip bomb)"
            )
        parts.append(chunk)
        if not inflater.eof:
            raise IdxFormatError(
                f"{source}: truncated gzip file: the {len(data):,}-byte archive ends before "
                "the end of its compressed data (incomplete download?)"
            )
        rest = inflater.unused_data
        if not rest.strip(b"\x00"):  # gzip allows zero padding after the last member
            break
        if rest[:2] != _GZIP_MAGIC:
            raise IdxFormatError(
                f"{source}: {len(rest):,} bytes of garbage after the end of the gzip data"
            )
    return parts[0] if len(parts) == 1 else b"".join(parts)


def parse_idx(
    payload: bytes,
    *,
    source: str,
    ndim: int | None = None,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """Parse a decompressed IDX payload into an array, checking everything first.

    Args:
        payload: the decompressed IDX bytes.
        source: the file's URI or path, used in error messages.
        ndim: the required number of dimensions (3 for images, 1 for labels), or None.
        dtype: the required element type (e.g. ``np.dtype("u1")``), or None for any standard
            IDX type.

    Returns:
        An array of shape ``dims`` in native byte order. For uint8 data it is a read-only,
        zero-copy view of ``payload``.

    Raises:
        IdxFormatError: for an empty or short file, a wrong magic number, an unknown type
            code, the wrong number of dimensions or type, a declared size larger than the data
            present (truncated, or an absurd header), or trailing bytes.
    """
    size = len(payload)
    if size == 0:
        raise IdxFormatError(f"{source}: empty IDX payload (0 bytes)")
    if size < 4:
        raise IdxFormatError(f"{source}: {size} bytes is too short for an IDX header")
    if payload[0] != 0 or payload[1] != 0:
        raise IdxFormatError(
            f"{source}: wrong magic number 0x{payload[:4].hex()}: an IDX file starts with two "
            "zero bytes, a type code and the number of dimensions (0x00000803 for images, "
            "0x00000801 for labels)"
        )
    code, nd = payload[2], payload[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X} ({d.name})" for c, d in IDX_DTYPES.items())
        raise IdxFormatError(f"{source}: unknown IDX type code 0x{code:02X} (known: {known})")
    file_dtype = IDX_DTYPES[code]
    if dtype is not None and file_dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise IdxFormatError(
            f"{source}: values are {file_dtype.name} (type code 0x{code:02X}), expected "
            f"{np.dtype(dtype).name}"
        )
    if nd == 0:
        raise IdxFormatError(f"{source}: the header declares 0 dimensions")
    if ndim is not None and nd != ndim:
        what = {3: " (images: count, rows, columns)", 1: " (labels: count)"}.get(ndim, "")
        raise IdxFormatError(f"{source}: has {nd} dimensions, expected {ndim}{what}")
    header = 4 + 4 * nd
    if size < header:
        raise IdxFormatError(
            f"{source}: truncated header: {nd} dimensions need {header} header bytes, "
            f"the file has {size}"
        )
    dims = struct.unpack(f">{nd}I", payload[4:header])
    count = math.prod(dims)  # Python ints: no overflow, nothing allocated yet
    declared = count * file_dtype.itemsize
    present = size - header
    shape = "x".join(str(d) for d in dims)
    if declared > present:
        raise IdxFormatError(
            f"{source}: the header declares {shape} {file_dtype.name} values = {declared:,} "
            f"bytes, but only {present:,} bytes of data follow (truncated file or corrupt header)"
        )
    if declared < present:
        raise IdxFormatError(
            f"{source}: {present - declared:,} trailing bytes after the {declared:,} bytes of "
            f"data the header declares ({shape} {file_dtype.name})"
        )
    arr = np.frombuffer(payload, dtype=file_dtype, count=count, offset=header).reshape(dims)
    if file_dtype.itemsize > 1:
        arr = arr.astype(file_dtype.newbyteorder("="))
    return arr


def encode_idx(arr: np.ndarray) -> bytes:
    """The IDX bytes (uncompressed) of ``arr``; the inverse of :func:`parse_idx`.

    Raises:
        ValueError: if the array's dtype has no IDX type code or it has more than 255 dims.
    """
    codes = [c for c, d in IDX_DTYPES.items() if d.newbyteorder("=") == arr.dtype.newbyteorder("=")]
    if not codes:
        raise ValueError(f"dtype {arr.dtype} has no IDX type code")
    code = codes[0]
    dt = IDX_DTYPES[code]
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, the array has {arr.ndim}")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=dt).tobytes()
