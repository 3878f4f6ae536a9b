"""What the scoring stage keeps beside its outputs so that reading them costs the same however
many batches were scored: per-version summaries of the scored batches, and the landing record
that lets a landing check list only the batches it has not decided yet. A batch is
**decided** once it has a manifest (of any version) or a ``REJECTED.json``. The layout under
``scoring/<model>/``, the design and the guarantees: docs/scoring.md.

Use::

    record_scored(store, manifest)                     # after a manifest is written
    scored_batches(store, "mnist-classifier")          # {version: [row, ...]}: a few requests
    state = look_at_landing(store, landing, "mnist-classifier", window=5, sweep=False)
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mnist_tasks.artifacts import read_json, utc_now
from mnist_tasks.config import DEFAULT_MODEL_NAME
from mnist_tasks.storage import ObjectNotFound, StorageError, Store

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
REJECTED = "REJECTED.json"
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+@-]{0,127}")
_VERSION_DIR = re.compile(r"v(\d{6})")
_SUMMARY_FILE = re.compile(r"v(\d{6})\.json")
SUMMARY_SCHEMA = 1
# One row per batch in a summary: what the Models page shows, no more (a list, not an object,
# so 20,000 batches stay about 2 MB).
SUMMARY_COLUMNS = ("images", "skipped_files", "low_confidence", "divergence_tvd",
                   "divergence_flagged", "created_at", "run_id", "monitor", "fired",
                   "confidence_ks", "embedding_mmd")
_CAS_ATTEMPTS = 12  # compare-and-swap rounds against concurrent commits
LANDING_SCHEMA = 1
SWEEP_EVERY = timedelta(days=1)  # a landing check lists every folder at least this often


def root(model_name: str) -> str:
    """Where the scoring stage keeps everything of ``model_name``."""
    return f"scoring/{model_name}"


def version_prefix(model_name: str, batch: str, version: int) -> str:
    """The output folder of ``batch`` scored with ``version`` (its manifest is inside)."""
    return f"{root(model_name)}/batches/{batch}/v{version:06d}"


def summary_key(model_name: str, version: int) -> str:
    return f"{root(model_name)}/summaries/v{version:06d}.json"


def landing_key(model_name: str) -> str:
    return f"{root(model_name)}/landing.json"


# --- summaries ----------------------------------------------------------------------------------


def summary_row(manifest: Mapping[str, Any]) -> list[Any]:
    """A manifest's row in its version's summary (:data:`SUMMARY_COLUMNS`)."""
    counts, report = manifest.get("counts") or {}, manifest.get("report") or {}
    return [counts.get("images"), counts.get("skipped_files"), report.get("low_confidence"),
            report.get("divergence_tvd"), bool(report.get("divergence_flagged")),
            manifest.get("created_at"), manifest.get("run_id"),
            (manifest.get("monitor") or {}).get("status"),
            list((manifest.get("monitor") or {}).get("fired") or []),
            _effect(manifest, "confidence"), _effect(manifest, "embeddings")]


def _effect(manifest: Mapping[str, Any], test: str) -> float | None:
    """One monitor test's effect size from a manifest (None: not monitored)."""
    for check in (manifest.get("monitor") or {}).get("checks") or []:
        if check.get("name") == test:
            value = check.get("effect_size")
            return round(float(value), 5) if value is not None else None
    return None


def _read_summary(store: Store, key: str) -> tuple[dict[str, list[Any]], str | None]:
    """The rows of a summary (batch -> row) and its ETag (None: no summary yet).

    Raises:
        StorageError: naming the summary, if it is damaged.
    """
    try:
        data, etag = store.read_with_etag(key)
    except ObjectNotFound:
        return {}, None
    try:
        doc = json.loads(data)
        rows = doc["batches"]
        if doc.get("schema") != SUMMARY_SCHEMA or not isinstance(rows, dict):
            raise ValueError(f"schema {doc.get('schema')!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise StorageError(f"{store.uri_for(key)}: not a summary of scored batches ({exc}); "
                           "delete it and run `python -m mnist_tasks score --rebuild-summaries`"
                           ) from None
    return rows, etag


def _summary_body(model_name: str, version: int, rows: Mapping[str, list[Any]]) -> bytes:
    doc = {"schema": SUMMARY_SCHEMA, "model_name": model_name, "model_version": version,
           "columns": ["batch", *SUMMARY_COLUMNS], "updated_at": utc_now(),
           "batches": dict(sorted(rows.items()))}
    return json.dumps(doc, separators=(",", ":")).encode()


def record_scored(store: Store, manifests: Sequence[Mapping[str, Any]]) -> int:
    """Add the batches of ``manifests`` (all of one model and version) to that version's
    summary; a batch already there is left as it is. Returns how many rows were added.

    Compare-and-swap (``write_if_absent`` / ``write_if_match``), retried with jitter on a lost
    race; a write whose reply is lost is settled by the re-read, as ``announce_new`` does.

    Raises:
        StorageError: if the store fails, the summary is damaged, or concurrent writers kept
            winning.
    """
    if not manifests:
        return 0
    model_name = str(manifests[0]["model_name"])
    version = int(manifests[0]["model_version"])
    if any((m["model_name"], int(m["model_version"])) != (model_name, version) for m in manifests):
        raise ValueError("record_scored: manifests of one model version at a time")
    key = summary_key(model_name, version)
    wanted = {str(m["batch"]): summary_row(m) for m in manifests}
    added: set[str] = set()
    write_error: StorageError | None = None
    for attempt in range(_CAS_ATTEMPTS + 1):
        rows, etag = _read_summary(store, key)
        missing = {b: row for b, row in wanted.items() if b not in rows}
        if not missing:
            return len(added)
        if write_error is not None:
            raise write_error  # the re-read shows that the write did not land
        if attempt == _CAS_ATTEMPTS:
            break
        body = _summary_body(model_name, version, {**rows, **missing})
        try:
            written = (store.write_if_absent(key, body) if etag is None
                       else store.write_if_match(key, body, etag))
        except StorageError as exc:
            log.warning("score: writing %s failed (%s); re-reading to see whether it landed",
                        store.uri_for(key), exc)
            write_error = exc
            continue
        if written:
            added.update(missing)
        else:  # lost a race: back off with jitter, then re-read
            time.sleep(random.uniform(0, min(1.0, 0.02 * 2**attempt)))
    raise StorageError(f"{store.uri_for(key)}: could not add {len(wanted)} batch(es) after "
                       f"{_CAS_ATTEMPTS} attempts (concurrent commits kept winning)")


def scored_batches(store: Store, model_name: str = DEFAULT_MODEL_NAME
                   ) -> dict[int, list[dict[str, Any]]]:
    """The batches scored with each version (from the summaries: one listing and one read per
    version, however many batches), by version; each version's rows by batch id (newest last).

    Each row: ``batch`` and :data:`SUMMARY_COLUMNS`. An unreadable summary is logged and left out.
    """
    base = f"{root(model_name)}/summaries"
    out: dict[int, list[dict[str, Any]]] = {}
    for name in store.list_children(base):
        match = _SUMMARY_FILE.fullmatch(name)
        if not match:
            continue
        try:
            rows, _ = _read_summary(store, f"{base}/{name}")
        except StorageError as exc:
            log.warning("score: %s", exc)
            continue
        out[int(match.group(1))] = [
            {"batch": batch, **dict(zip(SUMMARY_COLUMNS, row, strict=False))}
            for batch, row in sorted(rows.items())]
    return dict(sorted(out.items()))


def rebuild_summaries(store: Store, model_name: str) -> dict[int, int]:
    """Add every committed output to its version's summary (for outputs committed before
    summaries existed, or a summary deleted because it was damaged). Lists and reads every
    manifest: an operator's command, not the page's. Returns rows added, by version."""
    base = f"{root(model_name)}/batches/"
    by_version: dict[int, list[dict[str, Any]]] = {}
    for key in store.list(base.rstrip("/")):
        parts = key[len(base):].split("/")
        if len(parts) != 3 or parts[2] != MANIFEST or not _VERSION_DIR.fullmatch(parts[1]):
            continue
        try:
            manifest = dict(read_json(store, key))
        except (ValueError, StorageError) as exc:
            log.warning("score: unreadable manifest %s: %s", store.uri_for(key), exc)
            continue
        manifest.setdefault("model_name", model_name)
        by_version.setdefault(int(parts[1][1:]), []).append(manifest)
    return {v: record_scored(store, ms) for v, ms in sorted(by_version.items())}


# --- what is decided ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outputs:
    """The outputs of some batches: the versions each was scored with, and those rejected."""

    scored: dict[str, frozenset[int]]
    rejected: frozenset[str]

    def decided(self, batch: str) -> bool:
        return batch in self.scored or batch in self.rejected


def batch_outputs(store: Store, model_name: str, batches: Iterable[str] | None) -> Outputs:
    """What the store holds for ``batches`` (one listing each), or for every batch (None: one
    listing of every output, its cost growing with them)."""
    base = f"{root(model_name)}/batches"
    if batches is None:
        keys = store.list(base)
    else:
        keys = [k for b in batches for k in store.list(f"{base}/{b}")]
    scored: dict[str, set[int]] = {}
    rejected: set[str] = set()
    for key in keys:
        parts = key[len(base) + 1:].split("/")
        if len(parts) == 3 and parts[2] == MANIFEST and (m := _VERSION_DIR.fullmatch(parts[1])):
            scored.setdefault(parts[0], set()).add(int(m.group(1)))
        elif len(parts) == 2 and parts[1] == REJECTED:
            rejected.add(parts[0])
    return Outputs({b: frozenset(v) for b, v in scored.items()}, frozenset(rejected))


# --- the landing record -------------------------------------------------------------------------


@dataclass(frozen=True)
class LandingState:
    """What a plan needs to know about the landing prefix.

    Attributes:
        complete: the batches looked at that have their marker, by id (the recent ones among
            them: the last ones; every complete batch not decided is among them).
        waiting: folders looked at without their marker yet (being uploaded).
        outputs: the outputs of the batches looked at.
        swept: whether every folder of the landing was listed (else: only those after the
            record's watermark, and the ones it keeps track of).
    """

    complete: list[str]
    waiting: list[str]
    outputs: Outputs
    swept: bool


def _read_landing(store: Store, key: str) -> tuple[dict[str, Any], str | None]:
    """The landing record and its ETag; an unreadable record is logged and treated as none
    (the next plan lists every folder and writes a new one)."""
    try:
        data, etag = store.read_with_etag(key)
    except ObjectNotFound:
        return {}, None
    try:
        doc = json.loads(data)
        if doc.get("schema") != LANDING_SCHEMA or not isinstance(doc.get("tracked"), list):
            raise ValueError(f"schema {doc.get('schema')!r}")
        return doc, etag
    except (ValueError, AttributeError) as exc:
        log.warning("score: %s is not a landing record (%s); listing every folder",
                    store.uri_for(key), exc)
        return {}, etag


def _sweep_due(record: Mapping[str, Any], landing_uri: str, now: str) -> str | None:
    """Why this plan lists every folder, or None."""
    if not record:
        return "no landing record yet"
    if record.get("landing") != landing_uri:
        return f"the landing prefix changed (was {record.get('landing')})"
    try:
        last = datetime.fromisoformat(str(record.get("swept_at")))
        if datetime.fromisoformat(now) - last < SWEEP_EVERY:
            return None
    except ValueError:
        pass
    return "the daily sweep"


def look_at_landing(store: Store, landing: Store, model_name: str, *, window: int,
                    sweep: bool, now: str | None = None) -> LandingState:
    """The batches a plan must consider, listing only what the landing record does not cover.

    The record (``landing.json``) holds a **watermark**, a batch id: every batch folder whose id
    sorts at or before it was decided when the watermark passed it, except the ids in
    ``tracked``, which also holds every id after the watermark seen so far. A plan looks at the
    tracked ids and the folders listed after the watermark (S3: ``Delimiter='/'`` from
    ``StartAfter``; a local folder: its names, and not even that while its mtime token is
    unchanged), so its cost does not grow with old batches. The watermark then moves up to just
    before the ``window`` most recent complete batches (the re-score window stays after it),
    never past an undecided folder without tracking it.

    A **sweep** lists every folder and every output instead (its cost grows with them): when
    ``sweep`` is asked (the DAG asks on a registry event), when there is no record or the
    landing changed, and once every :data:`SWEEP_EVERY`. It is what finds a batch landed with
    an id that sorts before the watermark, and a ``REJECTED.json`` deleted by an operator.

    The record is written by compare-and-swap; a lost race is logged and left to the next plan
    (whose listing is as fresh), since the record only saves work.
    """
    now = now or utc_now()
    key = landing_key(model_name)
    record, etag = _read_landing(store, key)
    why = "asked (a registry event)" if sweep else _sweep_due(record, landing.uri, now)
    # The token first: a folder added after it is read makes the next plan list again.
    token = landing.children_token()
    watermark: str | None = None
    if why:
        log.info("score: listing every batch folder of %s (%s)", landing.uri, why)
        folders = sorted(f for f in landing.list_children() if BATCH_ID.fullmatch(f))
        outputs = batch_outputs(store, model_name, None)
    else:
        watermark = record.get("watermark")
        if token is not None and token == record.get("token"):
            listed: list[str] = []  # the folder's entries have not changed since the record
        else:
            listed = landing.list_children(start_after=watermark)
        tracked = [str(t) for t in record["tracked"]]
        folders = sorted({f for f in [*listed, *tracked] if BATCH_ID.fullmatch(f)})
        outputs = batch_outputs(store, model_name, folders)
    undecided = [f for f in folders if not outputs.decided(f)]
    ready = {f for f in undecided if landing.has_marker(f)}
    waiting = [f for f in undecided if f not in ready]
    complete = sorted(ready | {f for f in folders if outputs.decided(f)})
    if waiting:
        log.info("score: %d batch(es) without their marker yet, not read: %s", len(waiting),
                 ", ".join(waiting))

    # Move the watermark up to just before the re-score window; track what it passes undecided.
    limit = complete[-window] if window and len(complete) >= window else (
        complete[0] if window and complete else None)
    below = [f for f in folders if limit is None or f < limit]
    marks = [m for m in (watermark, *below) if m is not None]
    mark = max(marks) if marks else None
    tracked_now = sorted(f for f in folders
                         if mark is None or f > mark or not outputs.decided(f))
    new = {"schema": LANDING_SCHEMA, "landing": landing.uri, "watermark": mark,
           "tracked": tracked_now, "token": token,
           "swept_at": now if why else record.get("swept_at")}
    if {k: record.get(k) for k in new} != new:
        body = json.dumps({**new, "updated_at": now}, indent=1).encode()
        try:
            written = (store.write_if_absent(key, body) if etag is None
                       else store.write_if_match(key, body, etag))
        except StorageError as exc:
            written = False
            log.warning("score: could not write %s (%s)", store.uri_for(key), exc)
        if not written:
            log.info("score: %s changed meanwhile; the next plan updates it",
                     store.uri_for(key))
    return LandingState(complete=complete, waiting=waiting, outputs=outputs, swept=bool(why))


def look_at_named(store: Store, landing: Store, model_name: str, batches: Sequence[str]
                  ) -> LandingState:
    """:class:`LandingState` for exactly ``batches`` (one marker check and one listing each)."""
    complete = sorted(b for b in set(batches) if landing.has_marker(b))
    waiting = sorted(set(batches) - set(complete))
    return LandingState(complete=complete, waiting=waiting,
                        outputs=batch_outputs(store, model_name, batches), swept=False)
