"""S3 event notifications about landed ``_SUCCESS`` markers: which increments and batches they name.

With ``MNIST_LANDING_EVENTS=sqs:<queue>`` the buckets notify an SQS queue of each created
marker, and the watch reads the messages' bodies instead of listing. This module is the pure
half: the bodies in, the increment ids under the source and the batch ids under the scoring
landing out; whatever else a body holds (a test event, another key, a bucket we do not watch)
is ignored, and said why::

    landed = route(parse_markers(bodies), source="s3://bucket/mnist",
                   landing="s3://bucket/store/landing")
    landed.increments   # ("2026-11-20",)     landed.batches   # ("batch-07",)

Delivery is at least once: the same marker may come twice, so what this returns is only a
hint; the announcement record (:mod:`mnist_tasks.watch`) decides what is new.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from mnist_tasks.increment_files import ID_PATTERN
from mnist_tasks.scoring_index import BATCH_ID
from mnist_tasks.storage import MARKER

__all__ = ["Landed", "Marker", "parse_markers", "route"]


@dataclass(frozen=True)
class Marker:
    """A created marker object, as an S3 notification record names it."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class Landed:
    """What a set of notifications names: new-looking increments and batches, sorted and
    without repeats, and the records that name neither (each with why)."""

    increments: tuple[str, ...] = ()
    batches: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()


def parse_markers(bodies: Iterable[str]) -> tuple[list[Marker], list[str]]:
    """The created objects named by S3 notification message bodies, and what was left out.

    A body is the JSON that S3 sends to SQS: ``{"Records": [{"eventName": "ObjectCreated:Put",
    "s3": {"bucket": {"name": ...}, "object": {"key": ...}}}]}``, its keys URL-encoded. The
    ``s3:TestEvent`` S3 sends when the notification is set up, records of other events, and
    keys that are not a ``_SUCCESS`` marker are left out, as is a body that is not such JSON.

    Returns:
        The markers, in the order given, and one line per body or record left out (why).
    """
    markers: list[Marker] = []
    left_out: list[str] = []
    for n, body in enumerate(bodies, 1):
        try:
            doc = json.loads(body)
        except (TypeError, ValueError) as exc:
            left_out.append(f"message {n}: not JSON ({exc})")
            continue
        if isinstance(doc, dict) and doc.get("Event") == "s3:TestEvent":
            left_out.append(f"message {n}: the s3:TestEvent of a new notification set-up")
            continue
        records = doc.get("Records") if isinstance(doc, dict) else None
        if not isinstance(records, list):
            left_out.append(f"message {n}: not an S3 event notification (no Records)")
            continue
        for record in records:
            marker = _marker(record)
            if isinstance(marker, str):
                left_out.append(f"message {n}: {marker}")
            else:
                markers.append(marker)
    return markers, left_out


def _marker(record: object) -> Marker | str:
    """The marker a notification record names, or why it names none."""
    if not isinstance(record, dict):
        return "a record that is not an object"
    event = record.get("eventName")
    s3 = record.get("s3")
    if not isinstance(event, str) or not event.startswith("ObjectCreated:"):
        return f"event {event!r}, not ObjectCreated"
    try:
        bucket = s3["bucket"]["name"]  # type: ignore[index]
        key = unquote_plus(s3["object"]["key"])  # type: ignore[index]
    except (KeyError, TypeError):
        return "a record without s3.bucket.name and s3.object.key"
    if not isinstance(bucket, str) or not bucket:
        return "a record without a bucket name"
    if key.rsplit("/", 1)[-1] != MARKER:
        return f"s3://{bucket}/{key} is not a {MARKER} marker"
    return Marker(bucket, key)


def _bucket_prefix(uri: str) -> tuple[str, str] | None:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b/"); None for a URI that is not S3."""
    if not uri.startswith("s3://"):
        return None
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    return bucket, prefix + "/" if prefix else ""


def route(markers: Iterable[Marker], *, source: str | None, landing: str | None) -> Landed:
    """Sort markers into the increments of ``source`` and the batches of ``landing``.

    ``<source>/increments/<id>/_SUCCESS`` names the increment ``<id>``;
    ``<landing>/<batch>/_SUCCESS`` names the batch ``<batch>``. Another marker (another bucket
    or prefix, a deeper or malformed id) is ignored, and said why. A source or landing that is
    not ``s3://`` (None too) receives nothing: S3 notifies only about S3 objects.

    Args:
        markers: from :func:`parse_markers`.
        source: the watched source's URI (``MNIST_SOURCE``).
        landing: the scoring landing prefix's URI (``MNIST_SCORING_LANDING``).
    """
    where_source = _bucket_prefix(source) if source else None
    where_landing = _bucket_prefix(landing) if landing else None
    increments: set[str] = set()
    batches: set[str] = set()
    ignored: list[str] = []
    for marker in markers:
        rest = _under(marker, where_source, "increments/")
        if rest is not None:
            if ID_PATTERN.fullmatch(rest):
                increments.add(rest)
            else:
                ignored.append(f"{marker.uri}: {rest!r} is not an increment id")
            continue
        rest = _under(marker, where_landing, "")
        if rest is not None:
            if BATCH_ID.fullmatch(rest):
                batches.add(rest)
            else:
                ignored.append(f"{marker.uri}: {rest!r} is not a batch id")
            continue
        ignored.append(f"{marker.uri}: neither under {source}/increments/ nor under {landing}")
    return Landed(tuple(sorted(increments)), tuple(sorted(batches)), tuple(ignored))


def _under(marker: Marker, where: tuple[str, str] | None, folder: str) -> str | None:
    """The folder name between ``<prefix><folder>`` and ``/_SUCCESS``, when the marker is
    there; None when it is not under that prefix at all."""
    if where is None or marker.bucket != where[0]:
        return None
    head = where[1] + folder
    if not marker.key.startswith(head):
        return None
    return marker.key[len(head):-len("/" + MARKER)]
