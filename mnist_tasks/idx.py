"""A strict reader for the IDX format (MNIST's file format), with guarded gzip decompression.

Everything is checked before an array is built: the magic, the type code, the dimensions, the
declared size against the bytes present (a header that claims a billion images fails at once
instead of allocating) and trailing bytes. Decompression is incremental and bounded: a gzip
bomb or an oversize file is refused after at most the limit plus one byte. Every error names
the file and the problem, and never quotes its bytes. The format: docs/data.md.

Usage::

    with open(path, "rb") as fh:
        payload, _ = read_payload(fh, source=path.as_uri(), max_bytes=47_040_016)
    payload = decompress(raw_bytes, source="https://mirror/train-images-idx3-ubyte.gz")
    images = parse_idx(payload, source="...", ndim=3, dtype=np.dtype("u1"))
"""

from __future__ import annotations

import io
import math
import struct
import zlib

import numpy as np

from mnist_tasks.storage import Readable  # what read_payload reads from

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

# Upper bound on one decompressed file when its size is not known in advance. MNIST's largest
# payload is 47 MB (callers that know the exact sizes pass them as ``max_bytes``); this leaves
# room for other same-format digit sets while keeping a refused file's memory under ~70 MB.
MAX_PAYLOAD_BYTES = 64 << 20

CHUNK_BYTES = 1 << 20  # read and inflate in pieces of this size, so no step can balloon

_GZIP_MAGIC = b"\x1f\x8b"
_HEAD_BYTES = 256  # what is read before deciding gzip / raw IDX / something else


class IdxFormatError(ValueError):
    """A file is not a well-formed (gzip-compressed) IDX file; names the file and the problem."""


def archive_limit(max_bytes: int) -> int:
    """The largest gzip file accepted for a payload of at most ``max_bytes`` bytes.

    Deflate's worst case (incompressible data in stored blocks) adds about 0.03 %; the rest
    leaves room for gzip headers, several members and zero padding.
    """
    return max_bytes + (max_bytes >> 10) + (64 << 10)


def _describe_start(head: bytes) -> str:
    """What a non-IDX, non-gzip file looks like, without quoting any of its bytes.

    The file may be something that should never reach a log (a symlink to a secrets file, a
    page with tokens in it), so the description is a category, never the content.
    """
    lowered = head.lstrip().lower()
    if lowered[:1] == b"<" and (b"html" in lowered or b"<?xml" in lowered):
        return "it looks like an HTML/XML page (e.g. an error page)"
    if all(32 <= b < 127 or b in b"\t\n\r" for b in head):
        return "it looks like a text file"
    return "it starts with neither the gzip magic (1f 8b) nor the IDX magic (00 00)"


class _BoundedReader:
    """Reads ``stream`` in pieces, counting the bytes, and refuses more than ``limit`` of them."""

    def __init__(self, stream: Readable, source: str, limit: int) -> None:
        self.stream = stream
        self.source = source
        self.limit = limit
        self.total = 0

    def read(self, size: int = CHUNK_BYTES) -> bytes:
        data = self.stream.read(min(size, self.limit - self.total + 1))
        self.total += len(data)
        if self.total > self.limit:
            raise IdxFormatError(
                f"{self.source}: the file is larger than {self.limit:,} bytes; refusing it "
                "(not an MNIST-sized IDX file)"
            )
        return data

    def read_upto(self, size: int) -> bytes:
        """At least ``size`` bytes unless the stream ends first (a read may return fewer)."""
        data = b""
        while len(data) < size and (more := self.read(size - len(data))):
            data += more
        return data


def read_payload(
    stream: Readable,
    *,
    source: str,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    max_archive_bytes: int | None = None,
) -> tuple[bytes, int]:
    """Read one file from ``stream`` and return its IDX payload, in bounded memory.

    A gzip file is inflated piece by piece (multi-member files are supported; the CRC and
    length in each gzip trailer are checked); a raw IDX file is read as is. At most
    ``max_bytes + 1`` payload bytes and ``max_archive_bytes + 1`` file bytes are ever held, so a
    gzip bomb, an endless stream or an oversize file is refused after a bounded read.

    Args:
        stream: the file, opened for binary reading; it is read, not closed.
        source: the file's URI or path, used in error messages.
        max_bytes: refuse payloads larger than this (guards against gzip bombs).
        max_archive_bytes: refuse files larger than this; by default
            :func:`archive_limit` of ``max_bytes``.

    Returns:
        The payload bytes and the number of bytes read from ``stream``.

    Raises:
        IdxFormatError: for an empty file, a file that is neither gzip nor IDX (e.g. an HTML
            page saved under a ``.gz`` name), a truncated or corrupt gzip stream, trailing
            garbage, a payload over ``max_bytes`` or a file over ``max_archive_bytes``. No
            message quotes the file's bytes.
    """
    limit = archive_limit(max_bytes) if max_archive_bytes is None else max_archive_bytes
    reader = _BoundedReader(stream, source, limit)
    head = reader.read_upto(_HEAD_BYTES)
    if not head:
        raise IdxFormatError(f"{source}: empty file (0 bytes)")
    if head[:2] == _GZIP_MAGIC:
        return _gunzip(reader, head, source, max_bytes), reader.total
    if head[:2] != b"\x00\x00":
        raise IdxFormatError(
            f"{source}: not a gzip file and not an IDX file: {_describe_start(head)}"
        )
    # An uncompressed IDX file; parse_idx checks the rest.
    parts = [head]
    total = len(head)
    while total <= max_bytes and (chunk := reader.read(min(CHUNK_BYTES, max_bytes + 1 - total))):
        parts.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise IdxFormatError(
            f"{source}: the uncompressed IDX file is larger than {max_bytes:,} bytes; refusing "
            "it (not an MNIST-sized IDX file)"
        )
    return b"".join(parts), reader.total


def _gunzip(reader: _BoundedReader, pending: bytes, source: str, max_bytes: int) -> bytes:
    """Inflate the gzip file whose first bytes are ``pending`` and the rest in ``reader``."""
    parts: list[bytes] = []
    total = 0
    while True:  # one gzip member per pass
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        while not inflater.eof:
            at_end = False
            if not pending:
                pending = reader.read()
                at_end = not pending
            try:
                # Never more than max_bytes + 1 in all: a bomb stops right past the limit.
                out = inflater.decompress(pending, min(CHUNK_BYTES, max_bytes - total + 1))
            except zlib.error as exc:
                raise IdxFormatError(f"{source}: corrupt gzip data ({exc})") from None
            pending = inflater.unconsumed_tail
            total += len(out)
            if total > max_bytes:
                raise IdxFormatError(
                    f"{source}: decompresses to more than {max_bytes:,} bytes; refusing it "
                    "(not an MNIST-sized IDX file, or a gzip bomb)"
                )
            if out:
                parts.append(out)
            elif at_end and not inflater.eof:
                raise IdxFormatError(
                    f"{source}: truncated gzip file: the {reader.total:,}-byte archive ends "
                    "before the end of its compressed data (incomplete download?)"
                )
        pending = inflater.unused_data
        if len(pending) < 2:
            pending += reader.read_upto(2 - len(pending))
        if not pending:
            break
        if pending[:2] == _GZIP_MAGIC:
            continue  # another member
        # gzip allows zero padding after the last member; anything else is garbage.
        extra, garbage = len(pending), bool(pending.strip(b"\x00"))
        while more := reader.read():
            extra += len(more)
            garbage = garbage or bool(more.strip(b"\x00"))
        if garbage:
            raise IdxFormatError(
                f"{source}: {extra:,} bytes of garbage after the end of the gzip data"
            )
        break
    return parts[0] if len(parts) == 1 else b"".join(parts)


def decompress(data: bytes, *, source: str, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Return the IDX payload of ``data``: gunzipped if it is gzip, as is if it is raw IDX.

    The in-memory form of :func:`read_payload` (same checks, same errors).

    Args:
        data: the file's bytes as fetched.
        source: the file's URI or path, used in error messages.
        max_bytes: refuse payloads larger than this (guards against gzip bombs).

    Returns:
        The decompressed bytes.

    Raises:
        IdxFormatError: as :func:`read_payload`.
    """
    return read_payload(io.BytesIO(data), source=source, max_bytes=max_bytes,
                        max_archive_bytes=max(len(data), archive_limit(max_bytes)))[0]


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
        raise IdxFormatError(  # the bytes themselves are not quoted: they are not an IDX header
            f"{source}: wrong magic number: an IDX file starts with two zero bytes, a type code "
            "and the number of dimensions (0x00000803 for images, 0x00000801 for labels)"
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
