"""Ingest: the base data set (:mod:`mnist_tasks.base_data`), then the increments beside it,
recorded together as a dataset version.

The complete increments under ``<source>/increments/`` that the source's latest dataset version
has not decided are read and validated (:mod:`mnist_tasks.increments`) and recorded as a new
version (:mod:`mnist_tasks.datasets`); ``datasets/latest/<source-key>.json`` points at each
source's latest version. Design: docs/architecture.md and docs/data.md.

Run it alone: ``python -m mnist_tasks ingest --source ../shared/datasets/mnist --store URI``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mnist_tasks import base_data, datasets, increment_files, increments
from mnist_tasks.config import IngestConfig
from mnist_tasks.results import IgnoredIncrement, IncrementRecord, IngestResult
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

__all__ = ["LATEST_PREFIX", "ingest", "source_key"]

LATEST_PREFIX = "datasets/latest"  # <source-key>.json: the latest dataset version of a source


def _increments_source(cfg: IngestConfig) -> str | None:
    """The URI whose ``increments/`` folder holds this source's increments; None for the
    https mirrors (they hold only the base)."""
    source = cfg.source.strip()
    if source == "default" or source.startswith(("https://", "http://")):
        return None
    parsed = urlparse(source)
    if parsed.scheme in ("s3", "file"):
        return source
    return Path(source).expanduser().absolute().as_uri()


def source_key(source_uri: str | None, base_key: str, fresh_fraction: float) -> str:
    """The key of the latest-version pointer: the increments' source, the base data set and
    the fresh fraction (a version is only ever extended from one with all three equal)."""
    doc = {"source": (source_uri or "").rstrip("/"), "base": base_key,
           "fresh_fraction": float(fresh_fraction)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _read_pointer(store: Store, key: str) -> tuple[str | None, str | None]:
    """(the dataset version id the pointer names, its ETag); (None, None) when absent."""
    try:
        data, etag = store.read_with_etag(key)
    except ObjectNotFound:
        return None, None
    try:
        doc = json.loads(data)
        version = doc["dataset_version"]
        if not isinstance(version, str):
            raise TypeError("dataset_version is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ingest: ignoring the unreadable pointer %s (%s); checking every "
                    "increment again", store.uri_for(key), exc)
        return None, etag
    return version, etag


def _write_pointer(store: Store, key: str, version: datasets.DatasetVersion,
                   source_uri: str | None, etag: str | None) -> None:
    """Point ``key`` at ``version`` unless a concurrent run pointed it at a version that
    already knows at least as many increments (compare-and-swap; last complete writer wins)."""
    doc = json.dumps({"dataset_version": version.id, "source": source_uri,
                      "known_ids": sorted(version.known_ids),
                      "updated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
                     indent=2).encode()
    for _ in range(8):
        written = (store.write_if_absent(key, doc) if etag is None
                   else store.write_if_match(key, doc, etag))
        if written:
            return
        current, etag = _read_pointer(store, key)
        if current == version.id:
            return
        if current is not None:
            try:
                other = datasets.load_version(store, current)
            except datasets.DatasetError:
                continue
            if other.known_ids >= version.known_ids:
                return
    log.warning("ingest: could not update %s (concurrent writers); the next run checks the "
                "newest increments again", store.uri_for(key))


def _latest_version(store: Store, version_id: str | None, base: datasets.BaseInfo,
                    fresh_fraction: float) -> datasets.DatasetVersion | None:
    if version_id is None:
        return None
    try:
        latest = datasets.load_version(store, version_id)
    except datasets.DatasetError as exc:
        log.warning("ingest: the latest dataset version cannot be read (%s); checking every "
                    "increment again", exc)
        return None
    if latest.base != base or latest.fresh_fraction != fresh_fraction:
        log.warning("ingest: dataset version %s has another base or fresh fraction; checking "
                    "every increment again", latest.id)
        return None
    return latest


def _increment_records(version: datasets.DatasetVersion, new_ids: set[str],
                       source_uri: str | None) -> tuple[IncrementRecord, ...]:
    """The result's record of each increment (no arrays), accepted then quarantined."""

    def uri(inc_id: str) -> str | None:
        return increment_files.increment_uri(source_uri, inc_id) if source_uri else None

    records = [IncrementRecord(id=e.id, status="ACCEPTED", reasons=tuple(e.reasons),
                               counts=dict(e.counts), drift=e.drift,
                               payload_sha256=e.payload_sha256, train=e.train, fresh=e.fresh,
                               new=e.id in new_ids, uri=uri(e.id))
               for e in version.increments]
    records += [IncrementRecord(id=q.id, status="QUARANTINED", reasons=tuple(q.reasons),
                                counts=dict(q.counts), drift=q.drift,
                                payload_sha256=q.payload_sha256, train=0, fresh=0,
                                new=q.id in new_ids, uri=uri(q.id))
                for q in version.quarantined]
    return tuple(records)


def _changed_increments(version: datasets.DatasetVersion,
                        decided: Sequence[increment_files.IncrementRef]) -> list[dict[str, Any]]:
    """The decided increments whose files changed since they were read, each warned about by
    name: they are never read again, so the change would otherwise go unnoticed."""
    out = []
    for ref in decided:
        diff = version.changes(ref.id, ref.listing())
        if not diff:
            continue
        what = "; ".join(f"{kind} {', '.join(names[:10])}"
                         + (f" (and {len(names) - 10} more)" if len(names) > 10 else "")
                         for kind, names in diff.items())
        log.warning("ingest: increment %s changed after it was decided in dataset version %s "
                    "(%s): %s. Increments are immutable: what was read then is what is used; "
                    "land the corrected or complete data under a new increment id",
                    ref.id, version.id, ref.uri, what)
        out.append({"id": ref.id, **diff})
    return out


def _dataset_version(
    base_result: Mapping[str, Any], cfg: IngestConfig, store: Store, *,
    policy: increments.IncrementPolicy, s3_client_kwargs: Mapping[str, Any] | None,
    run_id: str | None,
) -> dict[str, Any]:
    """Discover, check and record the increments; the result fields ingest adds."""
    base = datasets.BaseInfo(dict(base_result["checksums"]), int(base_result["counts"]["train"]),
                             int(base_result["counts"]["test"]))
    source_uri = _increments_source(cfg)
    skey = source_key(source_uri, str(base_result["dataset_key"]), policy.fresh_fraction)
    pointer = f"{LATEST_PREFIX}/{skey}.json"
    latest_id, etag = _read_pointer(store, pointer)
    latest = _latest_version(store, latest_id, base, policy.fresh_fraction)

    ignored: list[IgnoredIncrement] = []
    changed: list[dict[str, Any]] = []
    complete: tuple[increment_files.IncrementRef, ...] = ()
    if source_uri is not None:
        found = increment_files.discover(source_uri, client_kwargs=s3_client_kwargs)
        complete = found.complete
        for inc_id in found.incomplete:
            log.info("ingest: increment %s: ignored: no %s marker (an upload in progress?)",
                     inc_id, increment_files.MARKER)
            ignored.append(IgnoredIncrement(inc_id, f"no {increment_files.MARKER} marker"))
        ignored += [IgnoredIncrement(name, problem) for name, problem in found.invalid]
    known = latest.known_ids if latest else frozenset()
    new = [r for r in complete if r.id not in known]
    present = {r.id for r in complete}
    if latest is not None:
        if known & present:
            log.info("ingest: %d increment(s) already decided in dataset version %s, not read "
                     "again: %s", len(known & present), latest.id,
                     ", ".join(sorted(known & present)))
        changed = _changed_increments(latest, [r for r in complete if r.id in known])
        gone = sorted(set(latest.increment_ids) - present)
        if gone and source_uri is not None:
            log.warning("ingest: increment(s) %s of dataset version %s are no longer in %s; "
                        "their arrays cached in the store are used", ", ".join(gone), latest.id,
                        source_uri)

    results: list[increments.CheckedIncrement] = []
    if latest is not None and not new:
        version = latest
        log.info("ingest: no new increment; dataset version %s is unchanged", version.id)
    else:
        if new:
            log.info("ingest: %d new increment(s) to check: %s", len(new),
                     ", ".join(r.id for r in new))
            raw = base_data.load_dataset(str(base_result["dataset_uri"]), store)
            reference = increments.Reference.build(
                raw["x_train"], raw["y_train"], raw["x_test"],
                accepted_images=datasets.accepted_images(store, latest) if latest else ())
            del raw
            results = increments.check_all(new, reference, policy)
        version = datasets.save_version(store, base, results,
                                        fresh_fraction=policy.fresh_fraction, previous=latest,
                                        created_by=run_id)
        if version.id != latest_id:
            _write_pointer(store, pointer, version, source_uri, etag)
    accepted = sum(r.accepted for r in results)
    log.info("ingest: dataset version %s: base %s train + %d accepted increment(s) (%s) = %s "
             "training images, %s fresh; %d quarantined%s; this run checked %d new (%d "
             "accepted, %d quarantined)", version.id, f"{version.base.train_count:,}",
             len(version.increments), ", ".join(version.increment_ids) or "none",
             f"{version.train_images:,}", f"{version.fresh_images:,}", len(version.quarantined),
             f" ({', '.join(q.id for q in version.quarantined)})" if version.quarantined else "",
             len(results), accepted, len(results) - accepted)

    if policy.fail_on_quarantine:
        increments.raise_on_quarantine(results, policy)  # this run's, with their reasons
        earlier = [q for q in version.quarantined
                   if q.id in present and q.id not in {r.id for r in results}]
        if earlier:
            raise increments.IncrementQuarantined(
                f"{len(earlier)} increment(s) in the source are quarantined (decided by an "
                "earlier run) and fail_on_quarantine is set: "
                + "; ".join(f"{q.id} ({'; '.join(q.reasons)})" for q in earlier))
    return {
        "dataset_version": version.id,
        "dataset_manifest_uri": store.uri_for(datasets.manifest_key(version.id)),
        "increments": _increment_records(version, {r.id for r in results}, source_uri),
        "quarantined": tuple(q.id for q in version.quarantined),
        "increments_new": tuple(r.id for r in results),
        "increments_ignored": tuple(ignored),
        "increments_changed": tuple(changed),
        "increments_source": source_uri,
    }


def ingest(
    cfg: IngestConfig,
    store: Store,
    *,
    s3_client_kwargs: Mapping[str, Any] | None = None,
    policy: increments.IncrementPolicy | None = None,
    run_id: str | None = None,
) -> IngestResult:
    """Ingest the base data set (:func:`mnist_tasks.base_data.ingest_base`), then its increments,
    and record the dataset version (the base plus the accepted increments) in the store.

    When the source is a folder, ``file://`` or ``s3://`` (not the https mirrors), the complete
    increments under ``<source>/increments/`` that the source's latest dataset version does not
    know yet are read, validated (against the base, the test set and the increments accepted
    before them) and recorded with :func:`mnist_tasks.datasets.save_version`; the latest
    version of each source is kept at ``datasets/latest/<source-key>.json``. A run that finds no
    new increment id reads nothing but that pointer, the version's manifest and one listing.
    Without increments the version holds the base alone, so every model has one.

    Args:
        cfg: the source, checksum policy, network settings and validation thresholds.
        store: where the cache and the dataset versions live.
        s3_client_kwargs: extra ``boto3.client("s3", ...)`` arguments for an ``s3://`` source.
        policy: how increments are checked; ``fail_on_quarantine`` makes a quarantined
            increment fail the run. Default: :class:`~mnist_tasks.increments.IncrementPolicy`.
        run_id: recorded as the new dataset version's ``created_by``.

    Returns:
        The cached base data set (``dataset_uri``, its checksums, counts and validation
        report) and the dataset version (``dataset_version``, one record per increment,
        the quarantined ids, the ids this run checked, the folders ignored and why).

    Raises:
        everything :func:`~mnist_tasks.base_data.ingest_base` raises, plus
        IncrementQuarantined (with ``policy.fail_on_quarantine``, naming each quarantined
        increment in the source and its reasons; the version is recorded first), DatasetError
        (a dataset version or cached increment arrays are inconsistent) and StorageError.
    """
    start = time.perf_counter()
    base = base_data.ingest_base(cfg, store, s3_client_kwargs=s3_client_kwargs)
    version = _dataset_version(base, cfg, store, policy=policy or increments.IncrementPolicy(),
                               s3_client_kwargs=s3_client_kwargs, run_id=run_id)
    return IngestResult(**{**base, **version, "seconds": round(time.perf_counter() - start, 3)})
