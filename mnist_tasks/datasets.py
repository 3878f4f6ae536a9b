"""Dataset versions: the base data set plus the accepted increments, with a stable id.

A dataset version is identified by the first 16 hex digits of a SHA-256 over a canonical JSON
of exactly: the base (its four payload SHA-256s and its train/test counts), each accepted
increment (id, payload SHA-256, counts, train and fresh sizes), and the fresh fraction.
Quarantined increments are listed in the manifest but do not change the id, and neither do
the provenance fields (``created_at``, ``created_by``). Layout in the store::

    datasets/<version-id>/manifest.json              written once (write_if_absent)
    datasets/arrays/<increment-id>-<sha16>.npz       x_train, y_train, x_fresh, y_fresh (uint8)

The arrays of each accepted increment are content-keyed (``sha16`` is over the arrays), so a
later run trains from the store without re-reading the source.

Command line::

    python -m mnist_tasks.datasets --store file:///tmp/store list [--json]
    python -m mnist_tasks.datasets --store s3://bucket/mnist show 3f9c0a51d2e4b6a8 [--json]
    python -m mnist_tasks.datasets make-demo --mnist ../shared/datasets/mnist --out /tmp/src \\
        --increments 1 --drifted 1000
    python -m mnist_tasks.datasets add-increment --mnist ../shared/datasets/mnist \\
        --out /tmp/src --id 2026-11-27 --kind drifted

``make-demo`` lays out a source from the real MNIST: a base of the first 50,000 training images
(the test files unchanged) with ``payload-sha256.json`` (the mapping ``--checksums @file``
takes), increments ``demo-01`` ... of 5,000 held-back training images each, and with
``--drifted N`` a ``demo-drifted`` increment of N transformed (thicker, inverted or shifted)
held-back digits.
``add-increment`` lands one more (IDX, PNG folders, or drifted digits); its ``_SUCCESS``
marker is written last. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks import idx
from mnist_tasks.artifacts import data_sha256
from mnist_tasks.cli_common import Parser, table
from mnist_tasks.config import MNIST_FILES, ConfigError, cli_location
from mnist_tasks.increments import (
    ID_PATTERN,
    IMAGES_FILE,
    INCREMENTS_PREFIX,
    LABELS_FILE,
    MARKER,
    CheckedIncrement,
)
from mnist_tasks.storage import ObjectNotFound, Store, open_store

log = logging.getLogger(__name__)

__all__ = [
    "BaseInfo",
    "DatasetError",
    "DatasetVersion",
    "IncrementEntry",
    "QuarantineEntry",
    "accepted_images",
    "add_increment",
    "list_versions",
    "load_arrays",
    "load_version",
    "main",
    "make_demo",
    "save_version",
    "version_id",
]

SCHEMA = "mnist-tasks/dataset-version/1"
DATASETS_PREFIX = "datasets"
ARRAYS_PREFIX = "datasets/arrays"
ARRAY_NAMES = ("x_train", "y_train", "x_fresh", "y_fresh")
_VERSION_ID = re.compile(r"[0-9a-f]{16}")
_SAVE_ATTEMPTS = 8  # compare-and-swap retries when merging quarantine lists


class DatasetError(ValueError):
    """A dataset version is unknown, malformed or inconsistent; names the id or object."""


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class BaseInfo:
    """The base data set: payload SHA-256 by file name (the four MNIST file names) and counts."""

    payload_sha256: Mapping[str, str]
    train_count: int
    test_count: int

    def __post_init__(self) -> None:
        names = sorted(self.payload_sha256)
        if names != sorted(MNIST_FILES.values()):
            raise DatasetError(f"base payload_sha256 must name the four files "
                               f"{sorted(MNIST_FILES.values())}, got {names}")
        for name, digest in self.payload_sha256.items():
            if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                raise DatasetError(f"base payload_sha256[{name!r}] = {digest!r} is not a "
                                   "64-digit lowercase hex SHA-256")

    def identity(self) -> dict[str, Any]:
        return {"payload_sha256": dict(sorted(self.payload_sha256.items())),
                "train": int(self.train_count), "test": int(self.test_count)}


@dataclass(frozen=True)
class IncrementEntry:
    """An accepted increment as recorded in a version (what it contributed, where its arrays
    are). ``counts`` are those of :class:`~mnist_tasks.increments.CheckedIncrement`."""

    id: str
    payload_sha256: str
    counts: Mapping[str, int]
    train: int
    fresh: int
    arrays_key: str
    arrays_sha256: str
    format: str
    class_counts: tuple[int, ...] = ()
    drift: bool = False
    drift_statistics: Mapping[str, Any] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    listing: Mapping[str, Any] = field(default_factory=dict)  # name -> [size, stamp] as read

    def identity(self) -> dict[str, Any]:
        return {"id": self.id, "payload_sha256": self.payload_sha256,
                "counts": {k: int(v) for k, v in sorted(self.counts.items())},
                "train": int(self.train), "fresh": int(self.fresh)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["counts"], d["drift_statistics"] = dict(self.counts), dict(self.drift_statistics)
        d["class_counts"], d["reasons"] = list(self.class_counts), list(self.reasons)
        d["listing"] = {k: list(v) for k, v in self.listing.items()}
        return d


@dataclass(frozen=True)
class QuarantineEntry:
    """A quarantined increment: listed for the record, never trained on."""

    id: str
    payload_sha256: str | None
    reasons: tuple[str, ...]
    counts: Mapping[str, int] = field(default_factory=dict)
    drift: bool = False
    listing: Mapping[str, Any] = field(default_factory=dict)  # name -> [size, stamp] as read

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "payload_sha256": self.payload_sha256,
                "reasons": list(self.reasons), "counts": dict(self.counts), "drift": self.drift,
                "listing": {k: list(v) for k, v in self.listing.items()}}


def version_id(base: BaseInfo, increments: Sequence[IncrementEntry], fresh_fraction: float) -> str:
    """The stable id: 16 hex digits of SHA-256 over the canonical JSON of the base, the
    accepted increments (sorted by id) and the fresh fraction."""
    doc = {
        "schema": SCHEMA,
        "base": base.identity(),
        "increments": [e.identity() for e in sorted(increments, key=lambda e: e.id)],
        "fresh_fraction": float(fresh_fraction),
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetVersion:
    """A dataset version: what a model trained on and was checked against."""

    id: str
    base: BaseInfo
    increments: tuple[IncrementEntry, ...]
    quarantined: tuple[QuarantineEntry, ...]
    fresh_fraction: float
    created_at: str | None = None
    created_by: str | None = None

    @property
    def train_images(self) -> int:
        """Training images: the base's plus each accepted increment's train part."""
        return self.base.train_count + sum(e.train for e in self.increments)

    @property
    def fresh_images(self) -> int:
        """Held-out fresh test images over all accepted increments."""
        return sum(e.fresh for e in self.increments)

    @property
    def increment_ids(self) -> tuple[str, ...]:
        """Ids of the accepted increments, sorted."""
        return tuple(e.id for e in self.increments)

    @property
    def known_ids(self) -> frozenset[str]:
        """Ids already decided (accepted or quarantined): a later run need not read them again
        (increments are immutable once complete)."""
        return frozenset(self.increment_ids) | {q.id for q in self.quarantined}

    def changes(self, inc_id: str, listing: Mapping[str, Sequence[Any]]) -> dict[str, list[str]]:
        """How a decided increment's files differ now from when it was read: ``added``,
        ``removed`` and ``changed`` (size or stamp) names; empty when nothing changed or
        nothing was recorded."""
        listings = {e.id: e.listing for e in self.increments}
        listings.update({q.id: q.listing for q in self.quarantined})
        recorded = dict(listings.get(inc_id, {}))
        if not recorded:
            return {}
        now = {k: list(v) for k, v in listing.items()}
        diff = {"added": sorted(set(now) - set(recorded)),
                "removed": sorted(set(recorded) - set(now)),
                "changed": sorted(k for k in set(now) & set(recorded)
                                  if list(recorded[k]) != now[k])}
        return {k: v for k, v in diff.items() if v}

    def to_dict(self) -> dict[str, Any]:
        """The manifest (JSON-able)."""
        return {
            "schema": SCHEMA,
            "id": self.id,
            "base": self.base.identity(),
            "fresh_fraction": self.fresh_fraction,
            "increments": [e.to_dict() for e in self.increments],
            "quarantined": [q.to_dict() for q in self.quarantined],
            "totals": {"train_images": self.train_images, "fresh_images": self.fresh_images,
                       "test_images": self.base.test_count,
                       "drift_flagged": sum(e.drift for e in self.increments)},
            "created_at": self.created_at,
            "created_by": self.created_by,
        }

    def summary(self) -> dict[str, Any]:
        """A small dict for XCom, lineage and the model card."""
        return {"dataset_version": self.id, "increments": list(self.increment_ids),
                "quarantined": [q.id for q in self.quarantined],
                "train_images": self.train_images, "fresh_images": self.fresh_images}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, where: str) -> DatasetVersion:
        """Parse a manifest and check its id.

        Raises:
            DatasetError: naming ``where`` for a wrong schema, missing fields, or an id that
                does not match the content.
        """
        try:
            if doc.get("schema") != SCHEMA:
                raise DatasetError(f"{where}: schema {doc.get('schema')!r}, expected {SCHEMA!r}")
            b = doc["base"]
            base = BaseInfo(dict(b["payload_sha256"]), int(b["train"]), int(b["test"]))
            incs = tuple(
                IncrementEntry(
                    id=e["id"], payload_sha256=e["payload_sha256"], counts=dict(e["counts"]),
                    train=int(e["train"]), fresh=int(e["fresh"]), arrays_key=e["arrays_key"],
                    arrays_sha256=e["arrays_sha256"], format=e["format"],
                    class_counts=tuple(e.get("class_counts", ())), drift=bool(e.get("drift")),
                    drift_statistics=dict(e.get("drift_statistics", {})),
                    reasons=tuple(e.get("reasons", ())), listing=dict(e.get("listing", {})),
                )
                for e in doc["increments"]
            )
            quarantined = tuple(
                QuarantineEntry(q["id"], q.get("payload_sha256"), tuple(q.get("reasons", ())),
                                dict(q.get("counts", {})), bool(q.get("drift")),
                                dict(q.get("listing", {})))
                for q in doc.get("quarantined", [])
            )
            version = cls(str(doc["id"]), base, incs, quarantined, float(doc["fresh_fraction"]),
                          doc.get("created_at"), doc.get("created_by"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{where}: malformed manifest ({type(exc).__name__}: {exc})") \
                from None
        expected = version_id(version.base, version.increments, version.fresh_fraction)
        if expected != version.id:
            raise DatasetError(f"{where}: manifest content hashes to {expected}, not its id "
                               f"{version.id} (edited or corrupt)")
        return version


# --------------------------------------------------------------------------- store I/O


def _manifest_key(version: str) -> str:
    return f"{DATASETS_PREFIX}/{version}/manifest.json"


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def _cache_arrays(store: Store, checked: CheckedIncrement) -> IncrementEntry:
    arrays = {"x_train": checked.train_images, "y_train": checked.train_labels,
              "x_fresh": checked.fresh_images, "y_fresh": checked.fresh_labels}
    digest = data_sha256(arrays)
    key = f"{ARRAYS_PREFIX}/{checked.id}-{digest[:16]}.npz"
    if not store.exists(key):  # content-keyed: an existing object already holds these arrays
        store.write_if_absent(key, _npz_bytes(arrays))
    assert checked.payload_sha256 is not None and checked.format is not None
    return IncrementEntry(
        id=checked.id, payload_sha256=checked.payload_sha256, counts=dict(checked.counts),
        train=len(checked.train_labels), fresh=len(checked.fresh_labels), arrays_key=key,
        arrays_sha256=digest, format=checked.format, class_counts=tuple(checked.class_counts),
        drift=checked.drift_flagged,
        drift_statistics={k: dict(v) for k, v in checked.drift.items()},
        reasons=tuple(checked.reasons),
        listing={k: list(v) for k, v in checked.listing.items()},
    )


def load_arrays(store: Store, entry: IncrementEntry) -> dict[str, np.ndarray]:
    """The cached train and fresh arrays of an accepted increment, checked against the hash
    recorded in the version.

    Returns:
        ``x_train`` (n, 28, 28) uint8, ``y_train``, ``x_fresh``, ``y_fresh``.

    Raises:
        DatasetError: if the object is missing, lacks an array, or its content differs from
            the recorded hash; the message names the object.
    """
    uri = store.uri_for(entry.arrays_key)
    try:
        data = store.read_bytes(entry.arrays_key)
    except ObjectNotFound:
        raise DatasetError(f"{uri}: the arrays of increment {entry.id!r} are missing from the "
                           "store") from None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [n for n in ARRAY_NAMES if n not in npz.files]
            if missing:
                raise DatasetError(f"{uri}: missing arrays {missing}")
            arrays = {n: npz[n] for n in ARRAY_NAMES}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{uri}: not a readable npz file of the increment's arrays "
                           f"({type(exc).__name__})") from None
    if data_sha256(arrays) != entry.arrays_sha256:
        raise DatasetError(f"{uri}: content does not match the recorded SHA-256 "
                           f"{entry.arrays_sha256[:16]}... (corrupt or replaced)")
    return arrays


def accepted_images(store: Store, version: DatasetVersion) -> list[np.ndarray]:
    """The images (train and fresh parts) of each accepted increment of ``version``, for
    :meth:`mnist_tasks.increments.Reference.build`'s ``accepted_images`` (so later increments
    are checked for duplicates against them).

    Raises:
        DatasetError: as :func:`load_arrays`.
    """
    out = []
    for entry in version.increments:
        arrays = load_arrays(store, entry)
        out.append(np.concatenate([arrays["x_train"], arrays["x_fresh"]]))
    return out


def _merge_quarantined(old: Sequence[QuarantineEntry],
                       new: Sequence[QuarantineEntry]) -> tuple[QuarantineEntry, ...]:
    merged = {q.id: q for q in old}
    merged.update({q.id: q for q in new})
    return tuple(merged[k] for k in sorted(merged))


def _quarantine_entry(c: CheckedIncrement) -> QuarantineEntry:
    return QuarantineEntry(c.id, c.payload_sha256, tuple(c.reasons), dict(c.counts),
                           c.drift_flagged, {k: list(v) for k, v in c.listing.items()})


def save_version(
    store: Store,
    base: BaseInfo,
    checked: Sequence[CheckedIncrement],
    *,
    fresh_fraction: float,
    previous: DatasetVersion | None = None,
    created_by: str | None = None,
    created_at: str | None = None,
) -> DatasetVersion:
    """Cache the accepted increments' arrays and write the version's manifest (idempotent).

    Args:
        store: the artifact store.
        base: the base data set's payload hashes and counts.
        checked: this run's results (accepted and quarantined), from
            :func:`mnist_tasks.increments.check_all`.
        fresh_fraction: the policy's fresh fraction (every result must have used it).
        previous: a version whose accepted increments are carried over without re-reading
            (the latest one, so increments checked before need not be read again). An id
            both in ``previous`` and ``checked`` must have the same payload SHA-256.
        created_by, created_at: provenance (e.g. the run id and its logical date); not part
            of the id. ``created_at`` defaults to the current UTC time.

    Returns:
        The version as stored. If a manifest with this id exists it is kept (its provenance
        wins); quarantined increments not yet listed in it are added with compare-and-swap.

    Raises:
        DatasetError: for mismatched fresh fractions, an increment whose payload changed
            under the same id, or an existing manifest with different identity content.
        StorageError: if the store fails.
    """
    if previous is not None and previous.fresh_fraction != fresh_fraction:
        raise DatasetError(f"fresh_fraction {fresh_fraction} differs from the previous version "
                           f"{previous.id}'s {previous.fresh_fraction}: its increments would "
                           "split differently; check them again instead of carrying them over")
    entries: dict[str, IncrementEntry] = {e.id: e for e in (previous.increments if previous
                                                            else ())}
    quarantined = list(previous.quarantined) if previous else []
    new_quarantined: list[QuarantineEntry] = []
    for c in checked:
        if c.fresh_fraction != fresh_fraction:
            raise DatasetError(f"increment {c.id!r} was split with fresh_fraction "
                               f"{c.fresh_fraction}, not {fresh_fraction}")
        old = entries.get(c.id)
        if old is not None and c.payload_sha256 not in (None, old.payload_sha256):
            raise DatasetError(f"increment {c.id!r} changed: payload SHA-256 "
                               f"{c.payload_sha256} vs {old.payload_sha256} in version "
                               f"{previous.id if previous else '?'}; increments are immutable, "
                               "land corrected data under a new id")
        if c.accepted:
            if old is None:
                entries[c.id] = _cache_arrays(store, c)
        elif old is None:
            new_quarantined.append(_quarantine_entry(c))
    accepted_ids = set(entries)
    quarantined_all = tuple(q for q in _merge_quarantined(quarantined, new_quarantined)
                            if q.id not in accepted_ids)
    incs = tuple(entries[k] for k in sorted(entries))
    version = DatasetVersion(
        id=version_id(base, incs, fresh_fraction), base=base, increments=incs,
        quarantined=quarantined_all, fresh_fraction=float(fresh_fraction),
        created_at=created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        created_by=created_by,
    )
    return _write_manifest(store, version)


def _encode(version: DatasetVersion) -> bytes:
    return (json.dumps(version.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def _write_manifest(store: Store, version: DatasetVersion) -> DatasetVersion:
    key = _manifest_key(version.id)
    if store.write_if_absent(key, _encode(version)):
        log.info("dataset version %s: %s", version.id, _one_line(version))
        return version
    for _ in range(_SAVE_ATTEMPTS):
        data, etag = store.read_with_etag(key)
        existing = DatasetVersion.from_dict(json.loads(data), where=store.uri_for(key))
        if existing.base != version.base or existing.increments != version.increments:
            # Same id, so the identity fields agree; the records (drift, reasons) may differ
            # when thresholds changed. The first writer's record stands.
            log.info("dataset version %s exists; keeping its recorded increment details",
                     version.id)
        merged = _merge_quarantined(existing.quarantined, version.quarantined)
        if merged == existing.quarantined:
            return existing
        updated = dataclasses.replace(existing, quarantined=merged)
        if store.write_if_match(key, _encode(updated), etag):
            return updated
    raise DatasetError(f"{store.uri_for(key)}: could not update the quarantine list after "
                       f"{_SAVE_ATTEMPTS} attempts (concurrent writers)")


def load_version(store: Store, version: str) -> DatasetVersion:
    """Load a version's manifest.

    Raises:
        DatasetError: for a malformed id, an unknown id (naming it and the store), or a
            corrupt manifest.
    """
    if not isinstance(version, str) or not _VERSION_ID.fullmatch(version):
        raise DatasetError(f"unknown dataset version {version!r}: ids are 16 lowercase hex "
                           "digits (see 'list')")
    key = _manifest_key(version)
    try:
        data = store.read_bytes(key)
    except ObjectNotFound:
        raise DatasetError(f"unknown dataset version {version!r}: no {store.uri_for(key)}") \
            from None
    try:
        doc = json.loads(data)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{store.uri_for(key)}: not valid JSON ({exc})") from None
    return DatasetVersion.from_dict(doc, where=store.uri_for(key))


def list_versions(store: Store) -> list[DatasetVersion]:
    """All versions in the store, oldest first (by ``created_at``, then id).

    Raises:
        DatasetError: if a manifest is corrupt (naming it).
    """
    ids = [n for n in store.list_children(DATASETS_PREFIX) if _VERSION_ID.fullmatch(n)]
    versions = [load_version(store, v) for v in ids if store.exists(_manifest_key(v))]
    return sorted(versions, key=lambda v: (v.created_at or "", v.id))


# --------------------------------------------------------------------------- tables


def _one_line(v: DatasetVersion) -> str:
    return (f"base {v.base.train_count:,} train + {len(v.increments)} increment(s) "
            f"({', '.join(v.increment_ids) or 'none'}) = {v.train_images:,} train, "
            f"{v.fresh_images:,} fresh; {len(v.quarantined)} quarantined")


def format_list(versions: Sequence[DatasetVersion]) -> str:
    """The ``list`` table."""
    if not versions:
        return "no dataset versions in this store"
    rows = [(v.id, v.created_at or "-", v.created_by or "-", f"{v.base.train_count:,}",
             len(v.increments), f"{v.train_images:,}", f"{v.fresh_images:,}",
             len(v.quarantined), sum(e.drift for e in v.increments) or "none")
            for v in versions]
    return table(("VERSION", "CREATED", "BY", "BASE", "INCREMENTS", "TRAIN", "FRESH",
                   "QUARANTINED", "DRIFT"), rows)


def _drift_cell(flagged: bool, stats: Mapping[str, Any]) -> str:
    names = [k for k, s in stats.items() if isinstance(s, Mapping) and s.get("flagged")]
    return ",".join(names) if flagged and names else ("yes" if flagged else "none")


def format_show(v: DatasetVersion) -> str:
    """The ``show`` text: header lines, the increments table, quarantine reasons."""
    lines = [
        f"dataset version {v.id}",
        f"created: {v.created_at or '-'} by {v.created_by or '-'}",
        f"base: {v.base.train_count:,} train, {v.base.test_count:,} test images",
        f"fresh fraction: {v.fresh_fraction:g}",
        f"totals: {v.train_images:,} training images, {v.fresh_images:,} fresh test images, "
        f"{v.base.test_count:,} benchmark test images",
        "",
    ]
    rows: list[tuple[Any, ...]] = []
    for e in v.increments:
        c = e.counts
        rows.append((e.id, "ACCEPTED", e.format, c.get("received", 0), c.get("kept", 0), e.train,
                     e.fresh, c.get("duplicates_within", 0) + c.get("duplicates_accepted", 0),
                     c.get("leaked", 0), _drift_cell(e.drift, e.drift_statistics),
                     e.payload_sha256[:12]))
    for q in v.quarantined:
        c = q.counts
        rows.append((q.id, "QUARANTINED", "-", c.get("received", 0), "-", "-", "-",
                     c.get("duplicates_within", 0) + c.get("duplicates_accepted", 0),
                     c.get("leaked", 0), "yes" if q.drift else "-",
                     (q.payload_sha256 or "-")[:12]))
    if rows:
        lines.append(table(("INCREMENT", "STATUS", "FORMAT", "RECEIVED", "KEPT", "TRAIN",
                             "FRESH", "DUPLICATES", "LEAKED", "DRIFT", "PAYLOAD"), rows))
    else:
        lines.append("no increments (the base only)")
    notes = [f"  {e.id}: {r}" for e in v.increments for r in e.reasons]
    notes += [f"  {q.id}: {r}" for q in v.quarantined for r in q.reasons]
    if notes:
        lines += ["", "reasons and warnings:", *notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- demo data


MNIST_TRAIN_COUNT = 60_000


def _is_inside_repo(path: Path) -> Path | None:
    """The checkout of this project containing ``path``, if any (never write data there)."""
    for folder in (path, *path.parents):
        pyproject = folder / "pyproject.toml"
        try:
            if pyproject.is_file() and 'name = "mnist-tasks"' in pyproject.read_text():
                return folder
        except OSError:
            continue
    return None


def _check_out(out: Path) -> Path:
    out = out.expanduser().absolute()
    repo = _is_inside_repo(out.resolve() if out.exists() else out)
    if repo is not None:
        raise ConfigError(f"parameter 'out' = {str(out)!r} is inside the project checkout "
                          f"{repo}; data files never go into the repository, use e.g. /tmp/src")
    return out


def _load_mnist(mnist: Path, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, bytes]]:
    prefix = "train" if split == "train" else "t10k"
    payloads: dict[str, bytes] = {}
    arrays: list[np.ndarray] = []
    for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
        name = f"{prefix}-{kind}-ubyte.gz"
        path = mnist / name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"parameter 'mnist': cannot read {path} ({exc.strerror or exc})") \
                from None
        payloads[name] = idx.decompress(data, source=str(path))
        arrays.append(idx.parse_idx(payloads[name], source=str(path), ndim=ndim,
                                    dtype=np.dtype("u1")))
    return arrays[0], arrays[1], payloads


def _gz(payload: bytes) -> bytes:
    return gzip.compress(payload, compresslevel=6, mtime=0)  # mtime 0: reproducible bytes


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def thicken(images: np.ndarray) -> np.ndarray:
    """Thicker strokes: a 2x2 grey-level dilation (each pixel the max of itself and its upper,
    left and upper-left neighbours)."""
    out = images.copy()
    out[:, 1:, :] = np.maximum(out[:, 1:, :], images[:, :-1, :])
    out[:, :, 1:] = np.maximum(out[:, :, 1:], images[:, :, :-1])
    out[:, 1:, 1:] = np.maximum(out[:, 1:, 1:], images[:, :-1, :-1])
    return out


def invert(images: np.ndarray) -> np.ndarray:
    """White digits become black on white (255 - pixel)."""
    return (255 - images).astype(np.uint8)


def shift(images: np.ndarray, *, seed: int = 0, max_shift: int = 4) -> np.ndarray:
    """Each digit moved by a seeded random offset of up to ``max_shift`` pixels per axis,
    filling with background (0). Ink statistics barely change: see docs/data.md."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(images)
    offsets = rng.integers(-max_shift, max_shift + 1, size=(len(images), 2))
    for i, (dy, dx) in enumerate(offsets):
        src = images[i, max(0, -dy):images.shape[1] - max(0, dy),
                     max(0, -dx):images.shape[2] - max(0, dx)]
        out[i, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out


DRIFTS = {"thick": thicken, "invert": invert}


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _check_increment_id(inc_id: object) -> None:
    """Refuse an id that is not one folder name (before anything touches the file system)."""
    if not isinstance(inc_id, str) or not ID_PATTERN.fullmatch(inc_id):
        raise ConfigError(f"invalid increment id {inc_id!r}: use letters, digits and ._- "
                          "(starting with a letter or digit, at most 64 characters)")


def write_increment(out: Path, inc_id: str, images: np.ndarray, labels: np.ndarray, *,
                    fmt: str = "idx") -> Path:
    """Land one increment under ``out/increments/<inc_id>/``, the ``_SUCCESS`` marker last.

    Raises:
        ConfigError: for a bad id, an unknown format, or an increment that already exists
            (never overwritten).
    """
    _check_increment_id(inc_id)
    if fmt not in ("idx", "png"):
        raise ConfigError(f"parameter 'format' = {fmt!r} is invalid: 'idx' or 'png'")
    folder = out / INCREMENTS_PREFIX / inc_id
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()  # claims the id: fails if it exists, so nothing is overwritten
    except FileExistsError:
        raise ConfigError(f"increment {inc_id!r} already exists at {folder}; increments are "
                          "never overwritten, choose another --id") from None
    if fmt == "idx":
        _atomic_write(folder / IMAGES_FILE, _gz(idx.encode_idx(images)))
        _atomic_write(folder / LABELS_FILE, _gz(idx.encode_idx(labels)))
    else:
        for digit in range(10):
            (folder / str(digit)).mkdir()
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            _atomic_write(folder / str(int(label)) / f"{i:05d}.png", _png(image))
    marker = {"images": len(images), "format": fmt,
              "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    _atomic_write(folder / MARKER, (json.dumps(marker) + "\n").encode())
    return folder


def _drifted(images: np.ndarray, drift: str, seed: int) -> np.ndarray:
    if drift not in ("thick", "invert", "shift"):
        raise ConfigError(f"parameter 'drift' = {drift!r} is invalid: thick, invert or shift")
    return shift(images, seed=seed) if drift == "shift" else DRIFTS[drift](images)


def make_demo(mnist: Path, out: Path, *, base: int = 50_000, increments: int = 1,
              size: int = 5_000, drifted: int = 0, drift: str = "thick",
              seed: int = 0) -> dict[str, Any]:
    """Lay out a demo source: the base (first ``base`` training images, the test files
    unchanged, ``payload-sha256.json``) and ``increments`` IDX increments ``demo-01``... of
    ``size`` consecutive held-back training images each; with ``drifted`` > 0, also
    ``demo-drifted``: the next ``drifted`` held-back images transformed by ``drift``
    (``thick``, ``invert`` or ``shift``, the latter seeded by ``seed``).

    Returns:
        ``{"source": str, "base": int, "increments": [ids], "payload_sha256": {...}}``.

    Raises:
        ConfigError: for counts that do not fit in the training set, an ``out`` folder inside
            the project checkout or that is not empty, or unreadable MNIST files.
        IdxFormatError: if an MNIST file is malformed.
    """
    out = _check_out(Path(out))
    for name, value, lo in (("base", base, 1), ("increments", increments, 0), ("size", size, 1),
                            ("drifted", drifted, 0)):
        if not isinstance(value, int) or value < lo:
            raise ConfigError(f"parameter {name!r} = {value!r} is invalid: must be an integer "
                              f">= {lo}")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"parameter 'out' = {str(out)!r} is not empty; make-demo writes a new "
                          "source (use add-increment to add to one)")
    _drifted(np.zeros((0, 28, 28), np.uint8), drift, seed)  # validates drift first
    x, y, _ = _load_mnist(Path(mnist), "train")
    if base + increments * size + drifted > len(x):
        raise ConfigError(f"base {base:,} + {increments} x {size:,} + {drifted:,} drifted images "
                          f"is more than the {len(x):,} training images in {mnist}")
    out.mkdir(parents=True, exist_ok=True)
    train_payloads = {MNIST_FILES["train_images"]: idx.encode_idx(np.ascontiguousarray(x[:base])),
                      MNIST_FILES["train_labels"]: idx.encode_idx(np.ascontiguousarray(y[:base]))}
    sha = {name: hashlib.sha256(p).hexdigest() for name, p in train_payloads.items()}
    for name, payload in train_payloads.items():
        _atomic_write(out / name, _gz(payload))
    for role in ("test_images", "test_labels"):
        name = MNIST_FILES[role]
        src = Path(mnist) / name
        shutil.copyfile(src, out / name)  # unchanged bytes
        sha[name] = hashlib.sha256(idx.decompress(src.read_bytes(), source=str(src))).hexdigest()
    ids = []
    for i in range(increments):
        inc_id = f"demo-{i + 1:02d}"
        lo = base + i * size
        write_increment(out, inc_id, x[lo:lo + size], y[lo:lo + size])
        ids.append(inc_id)
    if drifted:
        lo = base + increments * size
        write_increment(out, "demo-drifted", _drifted(np.array(x[lo:lo + drifted]), drift, seed),
                        y[lo:lo + drifted])
        ids.append("demo-drifted")
    # Written last: a source is usable once its checksum file is there.
    _atomic_write(out / "payload-sha256.json", (json.dumps(sha, indent=2, sort_keys=True)
                                                + "\n").encode())
    return {"source": str(out), "base": base, "increments": ids, "payload_sha256": sha}


def add_increment(mnist: Path, out: Path, inc_id: str, *, kind: str = "idx",
                  offset: int | None = None, size: int = 5_000, split: str = "train",
                  drift: str = "thick", seed: int = 0) -> dict[str, Any]:
    """Land one increment of MNIST digits ``[offset, offset + size)`` of ``split``.

    ``kind``: ``idx`` (an IDX pair), ``png`` (one folder per digit) or ``drifted`` (an IDX pair
    of transformed digits: ``drift`` is ``thick`` (2x2 dilation), ``invert`` or ``shift``).
    ``offset`` defaults to the last ``size`` images of the split (held back by make-demo's
    default of one increment). ``split="test"`` lands test images (to watch leakage being
    quarantined).

    Returns:
        ``{"id", "path", "images", "kind", "offset"}``.

    Raises:
        ConfigError: for a bad parameter, an ``out`` inside the project checkout, a range
            outside the split, or an id that exists.
    """
    _check_increment_id(inc_id)  # first: an empty id would name the increments folder itself
    out = _check_out(Path(out))
    if kind not in ("idx", "png", "drifted"):
        raise ConfigError(f"parameter 'kind' = {kind!r} is invalid: idx, png or drifted")
    _drifted(np.zeros((0, 28, 28), np.uint8), drift, seed)  # validates drift
    if split not in ("train", "test"):
        raise ConfigError(f"parameter 'split' = {split!r} is invalid: train or test")
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"parameter 'size' = {size!r} is invalid: must be an integer >= 1")
    if (out / INCREMENTS_PREFIX / inc_id).exists():
        raise ConfigError(f"increment {inc_id!r} already exists at "
                          f"{out / INCREMENTS_PREFIX / inc_id}; increments are never "
                          "overwritten, choose another --id")
    x, y, _ = _load_mnist(Path(mnist), split)
    start = len(x) - size if offset is None else offset
    if not isinstance(start, int) or start < 0 or start + size > len(x):
        raise ConfigError(f"parameter 'offset' = {start!r} is invalid: [offset, offset + "
                          f"{size:,}) must lie within the {len(x):,} {split} images")
    images, labels = np.array(x[start:start + size]), np.array(y[start:start + size])
    if kind == "drifted":
        images = _drifted(images, drift, seed)
    folder = write_increment(out, inc_id, images, labels, fmt="png" if kind == "png" else "idx")
    return {"id": inc_id, "path": str(folder), "images": size, "kind": kind, "offset": start,
            "split": split, **({"drift": drift} if kind == "drifted" else {})}


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="python -m mnist_tasks.datasets",
        description="Dataset versions (base + accepted increments) and demo data.",
    )
    parser.add_argument("--store", default=os.environ.get("MNIST_STORE"),
                        help="artifact store: s3://bucket/prefix, file:///path or a folder "
                             "(default: $MNIST_STORE)")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="dataset versions in the store, oldest first")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = sub.add_parser("show", help="one version: base, increments, counts, drift")
    p.add_argument("version", metavar="ID", help="a dataset version id (16 hex digits)")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")

    p = sub.add_parser("make-demo", help="lay out a base plus increments from the real MNIST")
    p.add_argument("--mnist", required=True, type=Path, help="folder with the four MNIST files")
    p.add_argument("--out", required=True, type=Path, help="new source folder (outside the repo)")
    p.add_argument("--base", type=int, default=50_000, help="base training images (50000)")
    p.add_argument("--increments", type=int, default=1, help="increments to land (1)")
    p.add_argument("--size", type=int, default=5_000, help="images per increment (5000)")
    p.add_argument("--drifted", type=int, default=0,
                   help="also land demo-drifted with this many transformed images (0)")
    p.add_argument("--drift", choices=("thick", "invert", "shift"), default="thick",
                   help="the transform of demo-drifted (thick)")
    p.add_argument("--seed", type=int, default=0, help="seed of --drift shift (0)")

    p = sub.add_parser("add-increment", help="land one more increment in a source folder")
    p.add_argument("--mnist", required=True, type=Path, help="folder with the four MNIST files")
    p.add_argument("--out", required=True, type=Path, help="the source folder")
    p.add_argument("--id", required=True, dest="inc_id", help="the new increment's id")
    p.add_argument("--kind", choices=("idx", "png", "drifted"), default="idx")
    p.add_argument("--drift", choices=("thick", "invert", "shift"), default="thick",
                   help="the transform of --kind drifted (thick)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="take digits from the training (default) or test set")
    p.add_argument("--offset", type=int, default=None,
                   help="first image index (default: the last --size images of the split)")
    p.add_argument("--size", type=int, default=5_000, help="images (5000)")
    p.add_argument("--seed", type=int, default=0, help="seed of --drift shift (0)")
    return parser


def _store(args: argparse.Namespace) -> Store:
    if not args.store:
        raise ConfigError("parameter 'store' is missing: pass --store or set MNIST_STORE")
    return open_store(cli_location(args.store, "store"))


def run(args: argparse.Namespace) -> str:
    """Run a parsed command and return what it prints."""
    # A '..' is refused in every place a command takes, as in a store (config.check_store_uri).
    for name in ("mnist", "out"):
        if getattr(args, name, None) is not None:
            setattr(args, name, Path(cli_location(str(getattr(args, name)), name)))
    if args.command == "list":
        versions = list_versions(_store(args))
        if args.json:
            return json.dumps([v.to_dict() for v in versions], indent=2)
        return format_list(versions)
    if args.command == "show":
        version = load_version(_store(args), args.version)
        return json.dumps(version.to_dict(), indent=2) if args.json else format_show(version)
    if args.command == "make-demo":
        result = make_demo(args.mnist, args.out, base=args.base, increments=args.increments,
                           size=args.size, drifted=args.drifted, drift=args.drift,
                           seed=args.seed)
        return (f"wrote {result['source']}: base of {result['base']:,} training images, "
                f"increments {', '.join(result['increments']) or 'none'}; checksums in "
                f"{Path(result['source']) / 'payload-sha256.json'}")
    result = add_increment(args.mnist, args.out, args.inc_id, kind=args.kind,
                           offset=args.offset, size=args.size, split=args.split,
                           drift=args.drift, seed=args.seed)
    return (f"landed increment {result['id']} ({result['kind']}, {result['images']:,} "
            f"{result['split']} images from index {result['offset']:,}) at {result['path']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: prints the result on stdout; an error is one line on stderr, exit 2."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        text = run(args)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        log.debug("failed", exc_info=True)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
