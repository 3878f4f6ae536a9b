"""Batches of unlabeled images under the scoring landing prefix (a local folder or ``s3://``):
what a batch is, landing one, listing them, and reading one with the one reader for user files
(:mod:`mnist_tasks.userfiles`)::

    <landing>/<batch-id>/*.png                  28x28 PNG files (any names), and/or
    <landing>/<batch-id>/*-idx3-ubyte[.gz]      IDX image files (also ``*.idx``, ``*.idx3``)
    <landing>/<batch-id>/_SUCCESS               the completion marker, written last

    write_batch(landing, "2026-11-22-a", {"a.png": data})    # files first, the marker last
    read = read_batch(landing, "2026-11-22-a")               # LandedBatch: images, ids, errors

A batch is read only once its marker exists. Scoring them: :mod:`mnist_tasks.score`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mnist_tasks.scoring_index import BATCH_ID
from mnist_tasks.storage import MARKER, Store, validate_key
from mnist_tasks.userfiles import (
    MAX_IDX_FILE_BYTES,
    MAX_IMAGES,
    MAX_PNG_BYTES,
    UserFileError,
    decode_idx_images,
    decode_png,
    list_files,
    read_many,
)

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_IDX_SUFFIXES = ("-ubyte", ".idx", ".idx3")
MAX_BATCH_IMAGES = 10 * MAX_IMAGES  # images scored from one batch (784 MB decoded)


class BatchRejected(RuntimeError):
    """Every file of a batch is bad: nothing of it can be scored (nothing is written)."""


@dataclass(frozen=True)
class LandedBatch:
    """One landed batch, read and decoded (:func:`read_batch`)."""

    images: np.ndarray  # uint8 (N, 28, 28)
    ids: list[str]  # the PNG's path in the batch, or ``<idx file>#<index>``
    errors: list[dict[str, str]]  # {"file", "error"}: the files skipped, and why
    input_sha256: str
    files: int
    decode_s: float


def validate_batch_id(batch: object) -> str:
    """Return ``batch`` if it is a valid batch id (one path segment), else raise ValueError."""
    if not isinstance(batch, str) or not BATCH_ID.fullmatch(batch):
        raise ValueError(f"invalid batch id {batch!r}: must be one folder name of letters, "
                         "digits, '.', '_', '=', '+', '@' or '-' (at most 128)")
    return batch


def list_batches(landing: Store) -> list[str]:
    """The complete batches under the landing prefix (those with a ``_SUCCESS`` marker), by id.

    One listing of the folders and one marker check per folder: for operators and tests (a
    plan looks only at the folders it has not decided:
    :func:`mnist_tasks.scoring_index.look_at_landing`).
    A folder without its marker is still being written: logged and left alone.
    """
    folders = [f for f in landing.list_children() if BATCH_ID.fullmatch(f)]
    complete = [f for f in folders if landing.has_marker(f)]
    waiting = sorted(set(folders) - set(complete))
    if waiting:
        log.info("score: %d batch(es) without their %s marker yet, not read: %s", len(waiting),
                 MARKER, ", ".join(waiting))
    return sorted(complete)


def _is_idx(name: str) -> bool:
    return name.removesuffix(".gz").endswith(_IDX_SUFFIXES)


def read_batch(landing: Store, batch: str) -> LandedBatch:
    """Read and decode one complete batch with the one reader for user files
    (:mod:`mnist_tasks.userfiles`); bad files are skipped and named.

    The input SHA-256 is over the sorted (name, SHA-256) of every file of the batch but the
    marker (a file that cannot be read: its name and problem).

    Raises:
        BatchRejected: if no image of the batch can be read (the message names every file
            and its problem).
        StorageError: if the landing itself fails (the task is retried).
    """
    import numpy as np

    start = time.perf_counter()
    batch = validate_batch_id(batch)
    listing = list_files(landing, batch)
    folder = f"{listing.root_uri.rstrip('/')}/{batch}/"
    names = {f.key: f.key[len(batch) + 1:] for f in listing.files}
    decoded: dict[str, np.ndarray | str] = {}  # name -> images, or the problem

    def problem(exc: UserFileError) -> str:
        return str(exc).replace(folder, "")  # "x.png: ...": the batch is named elsewhere

    for key, why in listing.refused:
        decoded[key[len(batch) + 1:]] = f"{key[len(batch) + 1:]}: {why}"
    pngs = [f for f in listing.files if f.name.lower().endswith(".png")]
    idxs = [f for f in listing.files if _is_idx(f.name) and not f.name.lower().endswith(".png")]
    sorted_out = {f.key for f in pngs} | {f.key for f in idxs}  # one set: n files, not n²
    others = [f for f in listing.files if f.key not in sorted_out]
    digest_parts: dict[str, str] = {}
    for files, limit, is_png in ((pngs, MAX_PNG_BYTES, True), (idxs, MAX_IDX_FILE_BYTES, False)):
        for f, data in read_many(landing, files, limit):
            name = names[f.key]
            if isinstance(data, UserFileError):
                decoded[name] = digest_parts[name] = problem(data)
                continue
            digest_parts[name] = hashlib.sha256(data).hexdigest()
            try:
                arr = (decode_png(data, folder + name)[None] if is_png
                       else decode_idx_images(data, folder + name))
            except UserFileError as exc:
                decoded[name] = problem(exc)
                continue
            decoded[name] = arr
    for f in others:
        name = names[f.key]
        decoded[name] = digest_parts[name] = (f"{name}: neither a .png nor an IDX images "
                                               "file; ignored")
    digest = hashlib.sha256(b"mnist-tasks/scoring-batch/1\n")
    for name in sorted(digest_parts):
        digest.update(f"{name}\0{digest_parts[name]}\n".encode())
    images: list[np.ndarray] = []
    ids: list[str] = []
    errors: list[dict[str, str]] = []
    total = 0
    for name in sorted(decoded):
        item = decoded[name]
        if isinstance(item, str):
            errors.append({"file": name, "error": item})
        elif total + len(item) > MAX_BATCH_IMAGES:
            errors.append({"file": name, "error": f"{name}: over the batch's limit of "
                           f"{MAX_BATCH_IMAGES:,} images; land it in another batch"})
        else:
            total += len(item)
            images.append(item)
            ids.extend([name] if name.lower().endswith(".png")
                       else [f"{name}#{i}" for i in range(len(item))])
    uri = landing.uri_for(batch)
    if not ids:
        detail = "; ".join(e["error"] for e in errors[:20]) or "the folder holds no files"
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise BatchRejected(f"batch {batch} ({uri}): no readable image, nothing scored: "
                            f"{detail}{more}")
    for e in errors:
        log.warning("score: batch %s: skipped %s", batch, e["error"])
    return LandedBatch(images=np.concatenate(images) if len(images) > 1 else images[0],
                       ids=ids, errors=errors, input_sha256=digest.hexdigest(),
                       files=len(listing.files) + len(listing.refused),
                       decode_s=time.perf_counter() - start)


def write_batch(landing: Store, batch: str, files: Mapping[str, bytes]) -> str:
    """Land a batch: write its files, then its ``_SUCCESS`` marker (last). Returns its URI.

    For producers and tests; a producer writing with other tools must write the marker last too.
    """
    batch = validate_batch_id(batch)
    for name, data in files.items():
        landing.write_bytes(validate_key(f"{batch}/{name}"), data)
    landing.write_marker(batch)
    return landing.uri_for(batch)
