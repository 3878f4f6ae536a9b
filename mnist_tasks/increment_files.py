"""Increment files: where increments land in a source, how they are found, and how they are read.

Layout of a source (a local folder, ``file://`` or ``s3://bucket/prefix``)::

    increments/<increment-id>/_SUCCESS                         the marker, written last
    increments/<increment-id>/images-idx3-ubyte.gz             either an IDX pair ...
    increments/<increment-id>/labels-idx1-ubyte.gz
    increments/<increment-id>/0/*.png ... 9/*.png              ... or one folder per digit

Usage::

    found = discover("s3://bucket/mnist")           # one listing: complete + incomplete ids
    raw = read_increment(found.complete[0])          # bounded reads through mnist_tasks.userfiles

Validation (leakage, duplicates, drift, quarantine) is :mod:`mnist_tasks.increments`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mnist_tasks import idx, userfiles
from mnist_tasks.storage import Store, open_store
from mnist_tasks.userfiles import COLS, MARKER, ROWS, UserFile, UserFileError, list_files

log = logging.getLogger(__name__)

INCREMENTS_PREFIX = "increments"
IMAGES_FILE = "images-idx3-ubyte.gz"
LABELS_FILE = "labels-idx1-ubyte.gz"
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DIGITS = tuple(str(d) for d in range(10))

_PAYLOAD_TAG = b"mnist-tasks/increment-payload/1\n"

Format = Literal["idx", "png"]


class IncrementError(UserFileError):
    """An increment's layout is wrong; the message names the file (its URI) and the problem."""



# --------------------------------------------------------------------------- discovery


def increment_uri(source_uri: str, inc_id: str) -> str:
    """The folder of increment ``inc_id`` in the source at ``source_uri``."""
    return f"{source_uri.rstrip('/')}/{INCREMENTS_PREFIX}/{inc_id}"


@dataclass(frozen=True)
class IncrementRef:
    """A complete increment found by :func:`discover` (not read yet).

    ``files``: its data files (keys relative to the source root, names as the user wrote
    them, with sizes and stamps), sorted. ``refused``: (key, problem) for entries the reader
    will not follow (a folder link leaving the source); they quarantine the increment.
    """

    id: str
    source_uri: str
    files: tuple[UserFile, ...]
    store: Store = field(compare=False, repr=False)
    refused: tuple[tuple[str, str], ...] = ()

    @property
    def uri(self) -> str:
        """The increment folder's URI."""
        return increment_uri(self.source_uri, self.id)

    def listing(self) -> dict[str, list[Any]]:
        """Name -> [size, stamp] of each file (relative to the increment folder): what is
        recorded with a decided increment, so a later change to its files can be named."""
        base = len(f"{INCREMENTS_PREFIX}/{self.id}/")
        return {f.key[base:]: [f.size, f.stamp] for f in self.files}


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found under ``<source>/increments/``.

    ``complete``: increments with their marker, sorted by id. ``incomplete``: ids of folders
    without a marker (ignored until it appears). ``invalid``: (name, problem) for entries that
    are not increment folders (a bad id, a stray file); they are ignored too.
    """

    source_uri: str
    complete: tuple[IncrementRef, ...]
    incomplete: tuple[str, ...]
    invalid: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary (ids only)."""
        return {
            "source": self.source_uri,
            "complete": [r.id for r in self.complete],
            "incomplete": list(self.incomplete),
            "invalid": [{"name": n, "problem": p} for n, p in self.invalid],
        }


def _id_problem(name: str) -> str | None:
    if not ID_PATTERN.fullmatch(name):
        return ("not a valid increment id (letters, digits and ._-, starting with a letter or "
                "digit, at most 64 characters)")
    return None


def discover(source: str, *, client_kwargs: Mapping[str, Any] | None = None) -> Discovery:
    """List the increments under ``<source>/increments/`` with one listing
    (:func:`mnist_tasks.userfiles.list_files`: any file name, hidden files skipped, links
    confined to the source).

    Args:
        source: the source root: a folder, ``file:///path`` or ``s3://bucket/prefix``.
        client_kwargs: boto3 client arguments for an ``s3://`` source (e.g. from an Airflow
            connection); None uses the standard AWS configuration.

    Returns:
        A :class:`Discovery`; a source without an ``increments/`` folder gives an empty one.
        Incomplete and invalid entries are logged as warnings, by name.

    Raises:
        ValueError: for an unsupported source URI.
        StorageError: if the source cannot be listed (e.g. a missing bucket, no permission).
    """
    store = open_store(source, client_kwargs=client_kwargs)
    listing = list_files(store, INCREMENTS_PREFIX)
    base = INCREMENTS_PREFIX + "/"
    by_id: dict[str, list[UserFile]] = {}
    refused: dict[str, list[tuple[str, str]]] = {}
    invalid: dict[str, str] = {}
    for key, problem in listing.refused:
        name = key[len(base):].partition("/")[0]
        refused.setdefault(name, []).append((key, problem))
    for f in listing.files:
        name, sep, _ = f.key[len(base):].partition("/")
        if not sep:
            invalid[name] = "a file directly under increments/ (expected one folder per increment)"
        elif (bad_id := _id_problem(name)) is not None:
            invalid[name] = bad_id
        else:
            by_id.setdefault(name, []).append(f)
    marked = {m[len(base):] for m in listing.markers if m.startswith(base)}
    complete: list[IncrementRef] = []
    incomplete: list[str] = []
    for inc_id in sorted(set(by_id) | {m for m in marked if "/" not in m} | set(refused)):
        if (bad_id := _id_problem(inc_id)) is not None:
            invalid[inc_id] = bad_id
        elif inc_id in marked:
            complete.append(IncrementRef(inc_id, store.uri, tuple(by_id.get(inc_id, ())), store,
                                         tuple(refused.get(inc_id, ()))))
        else:
            incomplete.append(inc_id)
            log.warning("increment %s/%s%s has no %s marker yet (upload in progress?); "
                        "ignored until it appears", store.uri, base, inc_id, MARKER)
    for name, problem in sorted(invalid.items()):
        log.warning("ignored %s/%s%s: %s", store.uri, base, name, problem)
    return Discovery(store.uri, tuple(complete), tuple(incomplete), tuple(sorted(invalid.items())))


# --------------------------------------------------------------------------- reading


def _uri(store: Store, key: str) -> str:
    return f"{store.uri.rstrip('/')}/{key}"


@dataclass(frozen=True, eq=False)
class RawIncrement:
    """An increment's decoded contents, before validation.

    ``images``: uint8 (n, 28, 28); ``labels``: uint8 (n,) in 0..9; ``files``: the keys read.
    ``payload_sha256``: see :func:`payload_sha256`.
    """

    id: str
    uri: str
    format: Format
    images: np.ndarray
    labels: np.ndarray
    payload_sha256: str
    files: tuple[str, ...]


def payload_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 over a canonical encoding of decoded digits: a tag, then the uncompressed IDX
    bytes of the images (uint8 n x 28 x 28), then those of the labels (uint8 n).

    The same digits in the same order hash the same whether they came as an IDX pair (in file
    order) or as PNG folders (ordered by digit, then file name), however they were compressed.
    """
    h = hashlib.sha256(_PAYLOAD_TAG)
    h.update(idx.encode_idx(np.ascontiguousarray(images, dtype=np.uint8)))
    h.update(idx.encode_idx(np.ascontiguousarray(labels, dtype=np.uint8)))
    return h.hexdigest()


def _layout(ref: IncrementRef) -> tuple[Format, list[UserFile]]:
    """Decide the increment's format from its file names; errors name the odd file."""
    for key, problem in ref.refused:
        raise IncrementError(f"{_uri(ref.store, key)}: {problem}")
    base = f"{INCREMENTS_PREFIX}/{ref.id}/"
    idx_files: dict[str, UserFile] = {}
    png_files: list[UserFile] = []
    for f in ref.files:
        rel = f.key[len(base):]
        parts = rel.split("/")
        if len(parts) == 1 and rel in (IMAGES_FILE, LABELS_FILE):
            idx_files[rel] = f
        elif len(parts) == 2 and parts[0] in DIGITS and parts[1].lower().endswith(".png"):
            png_files.append(f)
        else:
            raise IncrementError(
                f"{_uri(ref.store, f.key)}: unexpected file in increment {ref.id!r}: an "
                f"increment holds either {IMAGES_FILE} and {LABELS_FILE}, or PNG files in "
                "folders 0 to 9"
            )
    if idx_files and png_files:
        raise IncrementError(f"{ref.uri}: holds both IDX files and PNG folders; use one format "
                             "per increment")
    if png_files:
        return "png", png_files
    missing = sorted({IMAGES_FILE, LABELS_FILE} - set(idx_files))
    if missing:
        raise IncrementError(f"{ref.uri}/{missing[0]}: missing (an IDX increment needs both "
                             f"{IMAGES_FILE} and {LABELS_FILE}; nothing else was found)"
                             if idx_files else
                             f"{ref.uri}: empty increment (the marker but no data files)")
    return "idx", [idx_files[IMAGES_FILE], idx_files[LABELS_FILE]]


def _read_idx(ref: IncrementRef, files: list[UserFile]) -> tuple[np.ndarray, np.ndarray]:
    img_uri, lab_uri = _uri(ref.store, files[0].key), _uri(ref.store, files[1].key)
    limit = userfiles.MAX_IDX_FILE_BYTES
    images = userfiles.decode_idx_images(userfiles.read_file(ref.store, files[0], limit), img_uri)
    labels = userfiles.decode_idx_labels(userfiles.read_file(ref.store, files[1], limit), lab_uri)
    if len(images) != len(labels):
        raise IncrementError(f"{lab_uri}: {len(labels):,} labels for {len(images):,} images in "
                             f"{img_uri}")
    return np.array(images), np.array(labels)


def _read_png(ref: IncrementRef, files: list[UserFile]) -> tuple[np.ndarray, np.ndarray]:
    if len(files) > userfiles.MAX_IMAGES:
        raise IncrementError(f"{ref.uri}: {len(files):,} PNG files, over the "
                             f"{userfiles.MAX_IMAGES:,} limit for one increment")
    base = len(f"{INCREMENTS_PREFIX}/{ref.id}/")
    # Canonical order: by digit, then file name (so the payload hash is stable).
    ordered = sorted(files, key=lambda f: (int(f.key[base]), f.key[base + 2:]))
    images = np.empty((len(ordered), ROWS, COLS), dtype=np.uint8)
    labels = np.empty(len(ordered), dtype=np.uint8)
    pairs = userfiles.read_many(ref.store, ordered, userfiles.MAX_PNG_BYTES)
    for i, (f, data) in enumerate(pairs):
        if isinstance(data, UserFileError):
            raise data
        images[i] = userfiles.decode_png(data, _uri(ref.store, f.key))
        labels[i] = int(f.key[base])
    return images, labels


def read_increment(ref: IncrementRef) -> RawIncrement:
    """Read and decode one complete increment with the one reader (:mod:`mnist_tasks.userfiles`).

    Returns:
        A :class:`RawIncrement` with uint8 images (n, 28, 28), uint8 labels (n,) in 0..9.

    Raises:
        UserFileError: naming the file and the problem (:class:`IncrementError` for the
            increment's layout): an unexpected file or a mix of formats, a missing half of the
            IDX pair, a file over the size limit, not a regular file or a link out of the
            source, a bad gzip or IDX header, images not 28x28, label and image counts that
            differ, a label above 9, an unreadable PNG, a PNG not 28x28 or over 8 bits.
        StorageError: if the store fails for another reason (network, permission): a
            transient failure that should fail (and retry) the task rather than quarantine.
    """
    fmt, files = _layout(ref)
    images, labels = _read_idx(ref, files) if fmt == "idx" else _read_png(ref, files)
    return RawIncrement(
        id=ref.id, uri=ref.uri, format=fmt, images=images, labels=labels,
        payload_sha256=payload_sha256(images, labels), files=tuple(f.key for f in files),
    )
