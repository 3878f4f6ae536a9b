"""The landing check: which complete increments of a source are new since the last look.

The ``mnist_increments_watch`` DAG calls :func:`announce_new` every few minutes (or on landing
events, restricted to the increments they name); it costs one listing of
``<source>/increments/`` and one small JSON record in the store, reads no increment, and
returns each complete increment once, however many watchers race or events repeat
(compare-and-swap). :func:`announce_batches` does the same for the scoring landing's batches
named by landing events::

    new = announce_new("s3://bucket/mnist", store, announcer=run_id)   # ["2026-11-20"] or []
    new = announce_batches("s3://bucket/store/landing", ["b-07"], store)  # ["b-07"] or []

Why a short-interval DAG and how the record stays exact: ``docs/data.md``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from mnist_tasks.config import ConfigError
from mnist_tasks.increment_files import discover
from mnist_tasks.storage import ObjectNotFound, StorageError, Store, open_store

log = logging.getLogger(__name__)

__all__ = ["ANNOUNCED_FILE", "WATCH_PREFIX", "announce_batches", "announce_new", "announced_key"]

WATCH_PREFIX = "watch"
ANNOUNCED_FILE = "announced.json"
_ANNOUNCED_SCHEMA = "mnist-tasks/announced-increments/1"
_ANNOUNCE_ATTEMPTS = 8  # compare-and-swap rounds against concurrent announcers


def announced_key(source_uri: str) -> str:
    """The store key of the announcement record of a source: ``watch/<key>/announced.json``,
    where ``<key>`` is the first 16 hex digits of the SHA-256 of the source's canonical URI."""
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:16]
    return f"{WATCH_PREFIX}/{digest}/{ANNOUNCED_FILE}"


def _listable_source(source: str) -> None:
    """Refuse the sources that have no ``increments/`` folder to list (the https mirrors)."""
    text = source.strip() if isinstance(source, str) else ""
    if text == "default" or text.lower().startswith(("https://", "http://")):
        raise ConfigError(
            f"parameter 'source' = {source!r} cannot hold increments: the public mirrors and "
            "https:// prefixes serve the four base files only; land increments in a folder, "
            "file:// or s3:// source"
        )


def _read_announced(store: Store, key: str, subject_uri: str, kind: _Record
                    ) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The recorded announcements (id -> record) and the object's ETag (None: no record)."""
    try:
        data, etag = store.read_with_etag(key)
    except ObjectNotFound:
        return {}, None
    uri = store.uri_for(key)
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StorageError(f"{uri}: not JSON ({exc}); delete it to announce every complete "
                           f"{kind.what} again") from None
    recorded = doc.get(kind.field) if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("schema") != kind.schema
            or not isinstance(recorded, dict)
            or not all(isinstance(r, dict) for r in recorded.values())):
        raise StorageError(f"{uri}: not an announcement record (schema {kind.schema}); "
                           f"delete it to announce every complete {kind.what} again")
    if doc.get("source") != subject_uri:
        raise StorageError(f"{uri}: records the source {doc.get('source')!r}, not "
                           f"{subject_uri!r} (a hash collision or a copied file); delete it to "
                           "start over")
    return recorded, etag


@dataclass(frozen=True)
class _Record:
    """One kind of announcement record: its schema, the field of its ids, what it counts."""

    schema: str
    field: str
    what: str  # "increment", "batch": for the messages


_INCREMENTS = _Record(_ANNOUNCED_SCHEMA, "increments", "increment")
_BATCHES = _Record("mnist-tasks/announced-batches/1", "batches", "batch")


def announce_new(
    source: str,
    store: Store | str,
    *,
    client_kwargs: Mapping[str, Any] | None = None,
    announcer: str | None = None,
    only: Collection[str] | None = None,
) -> list[str]:
    """Record the complete increments of ``source`` not announced before, and return them.

    One listing of ``<source>/increments/`` (:func:`discover`; no increment is read) and one
    small JSON object in the store, ``watch/<source key>/announced.json`` (:func:`announced_key`),
    updated by compare-and-swap (``write_if_absent`` / ``write_if_match``), so concurrent
    announcers never announce an id twice: each recorded id carries the token of the call that
    recorded it, and a call returns only the ids that carry its token after a re-read. A write
    whose reply is lost (the write landed, the reply did not: a retried conditional PUT is then
    refused) is settled by that re-read, not by the reply. ``announcer`` (the DAG run's id)
    makes a retry safe: a later call with the same announcer gets back the ids its earlier
    try recorded, so a try that failed after writing never loses an announcement.

    Args:
        source: the source root: a folder, ``file:///path`` or ``s3://bucket/prefix``.
        store: the artifact store, or its URI (opened with ``client_kwargs``).
        client_kwargs: boto3 client arguments for ``s3://`` (e.g. from an Airflow connection);
            None uses the standard AWS configuration.
        announcer: who announces (a run id); recorded with each id.
        only: the ids to consider (those named by landing events); None: every complete one.
            A named id that is not a complete, valid increment is logged, by name, and dropped.

    Returns:
        The ids announced by this call (or by an earlier try of the same announcer), sorted;
        empty when nothing is new.

    Raises:
        ConfigError: naming ``source``, for one that cannot hold increments (``default``,
            https:// mirrors).
        ValueError: for an unsupported or malformed source or store URI.
        StorageError: if the source cannot be listed, the store fails, the record is damaged
            (the message names it), or concurrent announcers kept winning the race.
    """
    _listable_source(source)
    found = discover(source, client_kwargs=client_kwargs)
    complete = [ref.id for ref in found.complete]
    if only is not None:
        invalid = dict(found.invalid)
        for inc_id in sorted(set(only) - set(complete)):
            why = ("incomplete (no marker)" if inc_id in found.incomplete
                   else invalid.get(inc_id, "not found"))
            log.warning("watch: increment %s named by a landing event is dropped: %s",
                        inc_id, why)
        complete = [i for i in complete if i in only]
    st = open_store(store, client_kwargs=client_kwargs) if isinstance(store, str) else store
    return _announce(st, announced_key(found.source_uri), found.source_uri, complete, announcer,
                     _INCREMENTS)


def announce_batches(landing_uri: str, batches: Collection[str], store: Store,
                     *, announcer: str | None = None) -> list[str]:
    """Record the landed batches not announced before, and return them: what
    :func:`announce_new` does for increments, for the scoring landing's batches named by
    landing events (a duplicate or replayed event announces nothing). The record is
    ``watch/<landing key>/announced.json`` in ``store`` (:func:`announced_key` of the
    landing's URI).

    Raises:
        StorageError: as :func:`announce_new`.
    """
    return _announce(store, announced_key(landing_uri), landing_uri, sorted(set(batches)),
                     announcer, _BATCHES)


def _announce(st: Store, key: str, subject_uri: str, candidates: list[str],
              announcer: str | None, kind: _Record) -> list[str]:
    """Record the ``candidates`` not in the record at ``key`` by compare-and-swap; the ids this
    call (or an earlier try of ``announcer``) recorded."""
    token = uuid.uuid4().hex
    write_error: StorageError | None = None
    for attempt in range(_ANNOUNCE_ATTEMPTS + 1):
        recorded, etag = _read_announced(st, key, subject_uri, kind)
        mine = sorted(i for i, rec in recorded.items() if rec.get("token") == token
                      or (announcer is not None and rec.get("announcer") == announcer))
        new = [i for i in candidates if i not in recorded]
        if not new:
            if mine:
                log.info("watch: %d new %s in %s: %s", len(mine), kind.field, subject_uri,
                         ", ".join(mine))
            else:
                log.info("watch: nothing new in %s (%d complete %s, all announced "
                         "before)", subject_uri, len(candidates), kind.field)
            return mine
        if write_error is not None:
            raise write_error  # the re-read shows that our write did not land
        if attempt == _ANNOUNCE_ATTEMPTS:
            break
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for item in new:
            recorded[item] = {"token": token, "announcer": announcer, "at": now}
        body = (json.dumps({"schema": kind.schema, "source": subject_uri,
                            kind.field: dict(sorted(recorded.items())), "updated_at": now},
                           indent=1, sort_keys=True) + "\n").encode()
        try:
            written = (st.write_if_absent(key, body) if etag is None
                       else st.write_if_match(key, body, etag))
        except StorageError as exc:
            # The reply may be lost while the write landed: the re-read decides.
            log.warning("watch: writing %s failed (%s); re-reading to see whether it landed",
                        st.uri_for(key), exc)
            write_error = exc
            continue
        # Won or lost, the next read decides what is ours: a conditional write's reply is not
        # trusted alone (some S3-compatible servers check and write in two steps).
        if not written:  # lost a race: back off with jitter before re-reading
            time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
    raise StorageError(f"{st.uri_for(key)}: could not record new {kind.field} after "
                       f"{_ANNOUNCE_ATTEMPTS} attempts (concurrent announcers kept winning)")
