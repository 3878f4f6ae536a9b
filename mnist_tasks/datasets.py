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

The command line (``list``, ``show``, ``make-demo``, ``add-increment``) is
:mod:`mnist_tasks.datasets_cli`; the demo data generator :mod:`mnist_tasks.demo_data`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import logging
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mnist_tasks.artifacts import data_sha256
from mnist_tasks.config import MNIST_FILES
from mnist_tasks.increments import CheckedIncrement
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

__all__ = [
    "BaseInfo",
    "DatasetError",
    "DatasetVersion",
    "IncrementEntry",
    "QuarantineEntry",
    "accepted_images",
    "list_versions",
    "load_arrays",
    "load_version",
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


def manifest_key(version: str) -> str:
    """The key of dataset version ``version``'s manifest in the store."""
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
    key = manifest_key(version.id)
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
    key = manifest_key(version)
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
    versions = [load_version(store, v) for v in ids if store.exists(manifest_key(v))]
    return sorted(versions, key=lambda v: (v.created_at or "", v.id))


def _one_line(v: DatasetVersion) -> str:
    return (f"base {v.base.train_count:,} train + {len(v.increments)} increment(s) "
            f"({', '.join(v.increment_ids) or 'none'}) = {v.train_images:,} train, "
            f"{v.fresh_images:,} fresh; {len(v.quarantined)} quarantined")


if __name__ == "__main__":
    # Run as a script this file is ``__main__``, not ``mnist_tasks.datasets``, so the CLI (which
    # imports this module) is looked up by name rather than imported here.
    import importlib

    sys.exit(importlib.import_module("mnist_tasks.datasets_cli").main())
