"""The one reader for files that users hand us: increments and scoring batches.

Listing, bounded reads and decoding follow one set of rules on a folder and on S3 (the rules
are in ``docs/data.md``, "The reader's rules")::

    listing = list_files(store, "increments/2026-11-20")    # names as the user wrote them
    for f in listing.files:                                  # UserFile(key, size, stamp)
        data = read_file(store, f, MAX_PNG_BYTES)            # UserFileError names the file
        digit = decode_png(data, listing.uri_of(f))          # (28, 28) uint8

Every problem with one file is a :class:`UserFileError` naming the file; the caller skips or
quarantines it and goes on. A :class:`~mnist_tasks.storage.StorageError` is the store's fault
(network, permissions) and fails the task, so Airflow retries it.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnist_tasks import idx
from mnist_tasks.config import MAX_IMAGES
from mnist_tasks.storage import MARKER, LocalStore, S3Store, StorageError, Store

__all__ = [
    "MARKER",
    "MAX_IDX_FILE_BYTES",
    "MAX_IMAGES",
    "MAX_PNG_BYTES",
    "Listing",
    "UserFile",
    "UserFileError",
    "decode_idx_images",
    "decode_idx_labels",
    "decode_png",
    "is_skipped_name",
    "list_files",
    "read_file",
    "read_many",
]

ROWS = COLS = 28
MAX_PNG_BYTES = 1 << 20  # one PNG; a 28x28 digit is under 1 KB
MAX_IDX_FILE_BYTES = 64 << 20  # one (compressed) IDX file
_MAX_IMAGES_PAYLOAD = 16 + MAX_IMAGES * ROWS * COLS
_MAX_LABELS_PAYLOAD = 8 + MAX_IMAGES
# Operating systems' own files, never data: Windows' thumbnail cache and folder settings.
_OS_FILES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})
_PARALLEL = 16  # GETs at once on S3 (latency, not CPU, bounds reading many small files)
_CHUNK = 512  # files fetched per round by read_many: bounds the bytes held to 512 x the limit

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> (name, allowed bit depths): 8 bits per channel at most, which Pillow's
# convert("L") maps to grayscale without clipping.
_PNG_TYPES = {0: ("grayscale", (1, 2, 4, 8)), 2: ("RGB", (8,)), 3: ("palette", (1, 2, 4, 8)),
              4: ("grayscale+alpha", (8,)), 6: ("RGBA", (8,))}
_PIL_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX"})
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


class UserFileError(ValueError):
    """One user file cannot be used; the message names the file (its URI) and the problem."""


@dataclass(frozen=True)
class UserFile:
    """A listed file: its key relative to the store root, exactly as named (any characters),
    its size in bytes, and a stamp that changes when its bytes do (S3 ETag, local mtime)."""

    key: str
    size: int
    stamp: str

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Listing:
    """What :func:`list_files` found under a prefix.

    ``files``: data files, by key. ``markers``: the folders (keys) holding a ``_SUCCESS``.
    ``refused``: (key, problem) for entries that are never read: a folder link that leaves
    the root, a link loop.
    """

    root_uri: str
    files: tuple[UserFile, ...]
    markers: frozenset[str]
    refused: tuple[tuple[str, str], ...] = ()

    def uri_of(self, f: UserFile | str) -> str:
        return f"{self.root_uri.rstrip('/')}/{f.key if isinstance(f, UserFile) else f}"


def is_skipped_name(name: str) -> bool:
    """Whether a file or folder name is never data: hidden (``.DS_Store``, ``._x.png``, an
    uploader's ``.part``), the marker and its companions (``_SUCCESS.crc``), OS files."""
    return (name.startswith(".") or name == MARKER or name.startswith(MARKER + ".")
            or name == "_temporary" or name.lower() in _OS_FILES)


def _describe(exc: BaseException) -> str:
    """An exception as text for users: no memory addresses, so the same file always gives
    the same message."""
    text = _ADDRESS.sub("the file", str(exc)).strip()
    return text or type(exc).__name__


# --------------------------------------------------------------------------- listing


def list_files(store: Store, prefix: str) -> Listing:
    """Every file under ``prefix`` (a folder of the store), with the same rules on both stores.

    Names are kept as listed: spaces, ``#``, accents, a leading ``_`` or ``-`` are all fine.
    Hidden files and folders, markers and OS files are left out (:func:`is_skipped_name`);
    a ``_SUCCESS`` marks its folder complete. In a folder, links are followed when they stay
    inside the store's root; a file link that leaves it is listed and refused when read, a
    folder link that leaves it (or loops) is in ``refused``.

    Raises:
        StorageError: if the store cannot be listed.
    """
    prefix = prefix.strip("/")
    if isinstance(store, LocalStore):
        return _list_local(store, prefix)
    if isinstance(store, S3Store):
        return _list_s3(store, prefix)
    raise TypeError(f"cannot list user files in {store!r}")  # pragma: no cover


def _keep(rel: str) -> bool:
    return not any(is_skipped_name(part) for part in rel.split("/"))


def _list_s3(store: S3Store, prefix: str) -> Listing:
    base = "/".join(p for p in (store.prefix, prefix) if p)
    full = base + "/" if base else ""
    strip = len(store.prefix) + 1 if store.prefix else 0
    files: list[UserFile] = []
    markers: set[str] = set()
    try:
        pages = store.client.get_paginator("list_objects_v2").paginate(
            Bucket=store.bucket, Prefix=full)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"][strip:]
                rel = obj["Key"][len(full):]
                if not rel or rel.endswith("/") or "" in rel.split("/"):
                    continue  # a console "folder" placeholder, or an empty segment
                folder, _, name = key.rpartition("/")
                if name == MARKER and _keep(folder[len(prefix):]):
                    markers.add(folder)
                elif _keep(rel):
                    files.append(UserFile(key, int(obj.get("Size", 0)),
                                          str(obj.get("ETag", "")).strip('"')))
    except Exception as exc:
        raise StorageError(f"s3://{store.bucket}/{full}: cannot list ({_describe(exc)})"
                           ) from exc
    return Listing(store.uri, tuple(sorted(files, key=lambda f: f.key)), frozenset(markers))


def _list_local(store: LocalStore, prefix: str) -> Listing:
    root = store.root.resolve()
    start = store.root.joinpath(*prefix.split("/")) if prefix else store.root
    files: list[UserFile] = []
    markers: set[str] = set()
    refused: list[tuple[str, str]] = []

    def walk(folder: Path, rel: str, seen: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"{store.uri}/{rel}: cannot list ({exc.strerror or exc})"
                               ) from None
        for entry in entries:
            key = f"{rel}/{entry.name}" if rel else entry.name
            if entry.name == MARKER and not entry.is_dir():
                markers.add(rel)
                continue
            if is_skipped_name(entry.name):
                continue
            if entry.is_dir(follow_symlinks=True):
                real = Path(entry.path).resolve()
                if not real.is_relative_to(root):
                    refused.append((key, f"a link to the folder {real}, outside "
                                         f"{store.uri}; not followed"))
                elif real in seen:
                    refused.append((key, "a link loop (a folder link to a folder above it); "
                                         "not followed"))
                else:
                    walk(Path(entry.path), key, seen | {real})
                continue
            try:
                st = entry.stat(follow_symlinks=True)
                files.append(UserFile(key, st.st_size, str(st.st_mtime_ns)))
            except OSError:  # a dangling link: read_file names the problem
                files.append(UserFile(key, 0, ""))

    if start.is_dir() and start.resolve().is_relative_to(root):
        walk(start, prefix, frozenset({start.resolve()}))
    return Listing(store.uri, tuple(sorted(files, key=lambda f: f.key)), frozenset(markers),
                   tuple(refused))


# --------------------------------------------------------------------------- bounded reads


def _uri(store: Store, key: str) -> str:
    return f"{store.uri.rstrip('/')}/{key}"


def _check_relative(store: Store, key: str) -> None:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise UserFileError(f"{_uri(store, key)}: not a file name inside the folder")


def read_file(store: Store, f: UserFile | str, limit: int) -> bytes:
    """At most ``limit`` bytes of one listed file; the size is checked before reading.

    In a folder, only a regular file is read (a FIFO, device or socket is refused, and
    opening never blocks), and a link must resolve inside the store's root.

    Raises:
        UserFileError: naming the file: missing, too large, not a regular file, a link
            leaving the root.
        StorageError: for a failure of the store itself (network, permissions on S3).
    """
    key = f.key if isinstance(f, UserFile) else f
    _check_relative(store, key)
    if isinstance(store, LocalStore):
        return _read_local(store, key, limit)
    if isinstance(store, S3Store):
        return _read_s3(store, key, limit)
    raise TypeError(f"cannot read user files from {store!r}")  # pragma: no cover


def _too_large(uri: str, size: int, limit: int) -> UserFileError:
    return UserFileError(f"{uri}: {size:,} bytes is over the {limit:,}-byte limit for one "
                         "file; refusing to read it")


def _read_local(store: LocalStore, key: str, limit: int) -> bytes:
    uri = _uri(store, key)
    path = store.root.joinpath(*key.split("/"))
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise UserFileError(f"{uri}: no such file (removed after the listing, or a link to "
                            "nothing)") from None
    except (OSError, RuntimeError) as exc:  # a link loop
        raise UserFileError(f"{uri}: cannot resolve the path ({_describe(exc)})") from None
    if not real.is_relative_to(store.root.resolve()):
        raise UserFileError(f"{uri}: a symbolic link to {real}, outside the source folder "
                            f"{store.uri}; refusing to read it")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise UserFileError(f"{uri}: cannot open ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserFileError(f"{uri}: not a regular file (a FIFO, device, socket or "
                                "folder); refusing to read it")
        if st.st_size > limit:
            raise _too_large(uri, st.st_size, limit)
        data = fh.read(limit + 1)  # bounded even if the file grows meanwhile
    if len(data) > limit:
        raise _too_large(uri, len(data), limit)
    return data


def _read_s3(store: S3Store, key: str, limit: int) -> bytes:
    uri = _uri(store, key)
    full = f"{store.prefix}/{key}" if store.prefix else key
    try:
        resp = store.client.get_object(Bucket=store.bucket, Key=full)
    except Exception as exc:
        code = str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise UserFileError(f"{uri}: no such object (removed after the listing?)") from None
        raise StorageError(f"{uri}: cannot read ({_describe(exc)})") from exc
    body = resp["Body"]
    try:
        size = int(resp.get("ContentLength", 0))
        if size > limit:  # from the reply's headers: nothing of the body is read
            raise _too_large(uri, size, limit)
        data = bytes(body.read(limit + 1))
    except UserFileError:
        raise
    except Exception as exc:
        raise StorageError(f"{uri}: reading failed ({_describe(exc)})") from exc
    finally:
        body.close()
    if len(data) > limit:
        raise _too_large(uri, len(data), limit)
    return data


def read_many(store: Store, files: Sequence[UserFile], limit: int
              ) -> Iterator[tuple[UserFile, bytes | UserFileError]]:
    """(file, bytes or its :class:`UserFileError`) for each file, in order; on S3 fetched in
    parallel, a bounded number at a time.

    Raises:
        StorageError: for a failure of the store itself.
    """
    def one(f: UserFile) -> bytes | UserFileError:
        try:
            return read_file(store, f, limit)
        except UserFileError as exc:
            return exc

    if not isinstance(store, S3Store) or len(files) < 2:
        for f in files:
            yield f, one(f)
        return
    _ = store.client  # built once, before the threads share it
    with ThreadPoolExecutor(max_workers=_PARALLEL) as pool:
        for start in range(0, len(files), _CHUNK):
            chunk = files[start:start + _CHUNK]
            yield from zip(chunk, pool.map(one, chunk), strict=True)


# --------------------------------------------------------------------------- decoding


def _png_header(data: bytes, uri: str) -> None:
    """Check the PNG signature and IHDR before any pixel is decoded: size, depth, colour."""
    if not data.startswith(_PNG_SIGNATURE):
        raise UserFileError(f"{uri}: unreadable PNG (no PNG signature: not a PNG file)")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise UserFileError(f"{uri}: unreadable PNG (no IHDR header chunk)")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise UserFileError(f"{uri}: unreadable PNG (the header's checksum is wrong)")
    if (width, height) != (COLS, ROWS):
        raise UserFileError(f"{uri}: PNG is {width}x{height}, expected {COLS}x{ROWS} (resize "
                            "it before uploading)")
    kind = _PNG_TYPES.get(colour)
    if kind is None:
        raise UserFileError(f"{uri}: unreadable PNG (unknown colour type {colour})")
    if depth not in kind[1]:
        raise UserFileError(f"{uri}: {depth}-bit {kind[0]} PNG is not supported (use 8 bits "
                            "per channel, grayscale or colour)")


def decode_png(data: bytes, uri: str) -> np.ndarray:
    """One 28x28 digit as uint8 grayscale.

    The header is checked first, so a file that claims a huge size is refused before any
    pixel is decoded. Colour and palette images are converted with Pillow's ``convert("L")``
    (ITU-R 601-2 luma; alpha dropped). Every chunk's checksum is verified.

    Raises:
        UserFileError: naming the file: not a PNG, wrong size, more than 8 bits per channel,
            truncated or corrupt; any decoder error.
    """
    from PIL import Image

    _png_header(data, uri)
    try:
        # verify() walks every chunk to IEND checking CRCs, so a file cut short after its
        # pixel data (which decoding alone tolerates) is refused too; it consumes the image.
        with Image.open(io.BytesIO(data), formats=["PNG"]) as probe:
            probe.verify()
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.size != (COLS, ROWS):
                raise UserFileError(f"{uri}: PNG is {img.size[0]}x{img.size[1]}, expected "
                                    f"{COLS}x{ROWS}")
            if img.mode not in _PIL_MODES:
                raise UserFileError(f"{uri}: PNG mode {img.mode!r} is not supported (use 8 "
                                    "bits per channel, grayscale or colour)")
            arr = np.asarray(img.convert("L"), dtype=np.uint8)
    except UserFileError:
        raise
    except Exception as exc:  # Pillow raises many types, DecompressionBombError among them
        raise UserFileError(f"{uri}: unreadable PNG ({_describe(exc)})") from None
    if arr.shape != (ROWS, COLS):
        raise UserFileError(f"{uri}: decoded to {arr.shape}, expected ({ROWS}, {COLS})")
    return arr


def decode_idx_images(data: bytes, uri: str) -> np.ndarray:
    """The uint8 (n, 28, 28) images of a (gzip-compressed) IDX file, n <= :data:`MAX_IMAGES`.

    Raises:
        UserFileError: naming the file: a bomb, a bad header, other dimensions, no images.
    """
    try:
        payload = idx.decompress(data, source=uri, max_bytes=_MAX_IMAGES_PAYLOAD)
        images = idx.parse_idx(payload, source=uri, ndim=3, dtype=np.dtype("u1"))
    except idx.IdxFormatError as exc:
        raise UserFileError(str(exc)) from None
    if images.shape[1:] != (ROWS, COLS):
        raise UserFileError(f"{uri}: images are {images.shape[1]}x{images.shape[2]}, "
                            f"expected {ROWS}x{COLS}")
    if len(images) == 0:
        raise UserFileError(f"{uri}: holds no images")
    return images


def decode_idx_labels(data: bytes, uri: str) -> np.ndarray:
    """The uint8 labels (n,) in 0..9 of a (gzip-compressed) IDX file.

    Raises:
        UserFileError: naming the file: a bomb, a bad header, a label out of range.
    """
    try:
        payload = idx.decompress(data, source=uri, max_bytes=_MAX_LABELS_PAYLOAD)
        labels = idx.parse_idx(payload, source=uri, ndim=1, dtype=np.dtype("u1"))
    except idx.IdxFormatError as exc:
        raise UserFileError(str(exc)) from None
    bad = np.flatnonzero(labels > 9)
    if len(bad):
        raise UserFileError(f"{uri}: {len(bad):,} labels out of range 0..9 (first: label "
                            f"{int(labels[bad[0]])} at index {int(bad[0])})")
    return labels
