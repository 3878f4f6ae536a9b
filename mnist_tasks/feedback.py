"""Labels that come back: feedback on a scored batch, merged with every version's predictions.

Feedback lands under its own prefix (``MNIST_FEEDBACK_LANDING``, by default
``<store>/feedback``), one folder per scored batch, the marker last::

    <feedback>/<batch-id>/*.csv      rows of image_id,label (a header line first)
    <feedback>/<batch-id>/_SUCCESS

    report = process_batch(cfg, store, feedback, landing, "2026-11-22T0300-shop")

Each version that scored the batch gets its live accuracy (with a Wilson interval and
per-digit recall); a version significantly below its benchmark accuracy by more than the
margin is an ALARM. The labelled images, the batch's own pixels, become a training increment
in the source, where the training DAG's data trigger finds them. See ``docs/monitoring.md``.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from mnist_tasks import idx
from mnist_tasks.artifacts import utc_now
from mnist_tasks.config import FeedbackConfig
from mnist_tasks.storage import MARKER, ObjectNotFound, Store
from mnist_tasks.userfiles import UserFileError, list_files, read_file

log = logging.getLogger(__name__)

MAX_CSV_BYTES = 16 << 20  # one feedback file (about 600,000 rows)
INCREMENT_PREFIX = "feedback-"
Status = Literal["OK", "ALARM", "TOO_FEW"]


class FeedbackError(ValueError):
    """Feedback cannot be used at all; the message names the batch or file and the problem."""


@dataclass(frozen=True)
class RowProblem:
    file: str
    line: int
    problem: str


@dataclass(frozen=True)
class LiveAccuracy:
    """One version's accuracy on the labelled images of a batch."""

    version: int
    labelled: int
    correct: int
    accuracy: float
    interval: tuple[float, float]  # Wilson 95 %
    benchmark_accuracy: float | None
    p_value: float | None  # one-sided: live accuracy below benchmark - margin
    status: Status
    recall: dict[str, float | None]  # per true digit


@dataclass(frozen=True)
class FeedbackReport:
    batch: str
    feedback_id: str  # fb-<12 hex>: the accepted labels' content hash
    files: tuple[str, ...]
    labels: int
    refused: tuple[RowProblem, ...]
    duplicates: int
    versions: tuple[LiveAccuracy, ...]
    increment: str | None  # the increment id written into the source
    created_at: str
    status: Status = "OK"
    refused_total: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # What it read and wrote: the landed labels, each version's scored output, this report,
    # the increment in the source ("" / None where unknown: a report recorded before these).
    feedback_uri: str = ""
    scored_uris: tuple[str, ...] = ()
    report_uri: str = ""
    increment_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary_line(self) -> str:
        parts = [f"v{v.version} {v.accuracy:.2%} [{v.interval[0]:.2%}, {v.interval[1]:.2%}]"
                 f" {v.status}" for v in self.versions]
        return (f"FEEDBACK {self.status} batch {self.batch}: {self.labels} label(s), "
                f"{self.refused_total} refused, {self.duplicates} duplicate(s); "
                + ("; ".join(parts) or "no scored version"))


# --------------------------------------------------------------------------- statistics


def wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def below_p_value(correct: int, n: int, expected: float) -> float:
    """P(X <= correct) for X ~ Binomial(n, expected): small when accuracy is below it."""
    from scipy import stats

    return float(stats.binom.cdf(correct, n, min(max(expected, 0.0), 1.0)))


# --------------------------------------------------------------------------- reading


def _parse_csv(name: str, data: bytes) -> tuple[list[tuple[str, int, int]], list[RowProblem]]:
    """(image_id, label, line) rows and the rows refused, each named by file and line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedbackError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                            ) from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in ("image_id", "label") if c not in header]
    if missing:
        raise FeedbackError(f"{name}: the header {','.join(header) or '(empty)'} has no "
                            f"{' or '.join(missing)} column (expected image_id,label)")
    at_id, at_label = header.index("image_id"), header.index("label")
    rows: list[tuple[str, int, int]] = []
    problems: list[RowProblem] = []
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(at_id, at_label):
            problems.append(RowProblem(name, line, f"{len(row)} column(s), expected "
                                                   f"{len(header)}"))
            continue
        image_id, label = row[at_id].strip(), row[at_label].strip()
        if not image_id:
            problems.append(RowProblem(name, line, "empty image_id"))
        elif not re.fullmatch(r"[0-9]", label):
            problems.append(RowProblem(name, line, f"label {label[:20]!r} is not a digit 0..9"))
        else:
            rows.append((image_id, int(label), line))
    return rows, problems


def read_feedback(feedback: Store, batch: str
                  ) -> tuple[tuple[str, ...], dict[str, tuple[int, str, int]], list[RowProblem],
                             int]:
    """The files, labels by image id (label, file, line), row problems and duplicate count.

    Raises:
        FeedbackError: no marker, no CSV, or a file that is not a feedback CSV.
    """
    listing = list_files(feedback, batch)
    if batch not in listing.markers:
        raise FeedbackError(f"{listing.uri_of(batch)}: no {MARKER} marker yet (still landing)")
    files = [f for f in listing.files if f.name.lower().endswith(".csv")]
    if not files:
        raise FeedbackError(f"{listing.uri_of(batch)}: no .csv file")
    labels: dict[str, tuple[int, str, int]] = {}
    problems: list[RowProblem] = []
    duplicates = 0
    for f in files:
        name = f.key[len(batch) + 1:]
        try:
            data = read_file(feedback, f, MAX_CSV_BYTES)
        except UserFileError as exc:
            raise FeedbackError(str(exc)) from None
        rows, bad = _parse_csv(name, data)
        problems += bad
        for image_id, label, line in rows:
            if image_id in labels:
                duplicates += 1
                first = labels[image_id]
                problems.append(RowProblem(name, line, f"duplicate image_id {image_id!r} "
                                                       f"(first at {first[1]}:{first[2]})"))
                continue
            labels[image_id] = (label, name, line)
    return tuple(f.key[len(batch) + 1:] for f in files), labels, problems, duplicates


# --------------------------------------------------------------------------- merging


def live_accuracy(version: int, predicted: Mapping[str, int], labels: Mapping[str, int],
                  benchmark: float | None, cfg: FeedbackConfig) -> LiveAccuracy:
    """Merge labels with one version's predictions by image id and judge the accuracy."""
    ids = [i for i in labels if i in predicted]
    truth = np.array([labels[i] for i in ids], dtype=np.int64)
    pred = np.array([predicted[i] for i in ids], dtype=np.int64)
    n, correct = len(ids), int((truth == pred).sum())
    recall: dict[str, float | None] = {}
    for d in range(10):
        mask = truth == d
        recall[str(d)] = round(float((pred[mask] == d).mean()), 4) if mask.any() else None
    p_value = (below_p_value(correct, n, benchmark - cfg.alarm_margin)
               if benchmark is not None and n else None)
    status: Status
    if n < cfg.min_labels:
        status = "TOO_FEW"
    elif p_value is not None and p_value < cfg.alpha:
        status = "ALARM"
    else:
        status = "OK"
    low, high = wilson(correct, n)
    return LiveAccuracy(version, n, correct, round(correct / n, 6) if n else 0.0,
                        (round(low, 6), round(high, 6)), benchmark,
                        None if p_value is None else round(p_value, 8), status, recall)


def _predictions(data: bytes) -> dict[str, int]:
    return {row["image_id"]: int(row["predicted"])
            for row in csv.DictReader(io.StringIO(data.decode()))}


def increment_id(batch: str, feedback_id: str) -> str:
    """The id of the increment made from a batch's feedback (a valid increment id)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", batch)[:40].strip("-.") or "batch"
    return f"{INCREMENT_PREFIX}{safe}-{feedback_id[3:11]}"


def _increment_folder(inc_id: str) -> str:
    return f"increments/{inc_id}"


def write_increment(source: Store, inc_id: str, images: np.ndarray, labels: np.ndarray) -> bool:
    """Land the labelled images as an IDX increment (marker last); False if it exists."""
    folder = _increment_folder(inc_id)
    if source.exists(f"{folder}/images-idx3-ubyte.gz"):
        return False
    for name, arr in (("images-idx3-ubyte.gz", images), ("labels-idx1-ubyte.gz", labels)):
        source.write_bytes(f"{folder}/{name}",
                           gzip.compress(idx.encode_idx(np.ascontiguousarray(arr)), mtime=0))
    source.write_marker(folder)
    return True


# --------------------------------------------------------------------------- the stage


def report_key(model_name: str, batch: str, feedback_id: str) -> str:
    return f"scoring/{model_name}/feedback/{batch}/{feedback_id}.json"


def process_batch(cfg: FeedbackConfig, store: Store, feedback: Store, landing: Store,
                  batch: str, *, source: Store | None = None,
                  benchmarks: Mapping[int, float | None] | None = None) -> FeedbackReport:
    """Merge one batch's feedback with every version that scored it; land its increment.

    Idempotent: the report is keyed by the accepted labels' hash and written once, and the
    increment id carries the same hash, so feedback landed twice changes nothing.

    Args:
        benchmarks: each version's benchmark accuracy (from the registry).

    Raises:
        FeedbackError: naming the batch or file: no marker, no CSV, a bad header, a batch
            never scored, no label that matches an image of the batch.
    """
    from mnist_tasks.config import ScoringConfig
    from mnist_tasks.scoring_batches import read_batch
    from mnist_tasks.scoring_outputs import PREDICTIONS, is_committed, output_prefix, read_output

    files, labelled, problems, duplicates = read_feedback(feedback, batch)
    scfg = ScoringConfig(landing=landing.uri, model_name=cfg.model_name, registry=cfg.registry)
    versions = sorted(int(v[1:]) for v in store.list_children(
        f"scoring/{cfg.model_name}/batches/{batch}") if re.fullmatch(r"v\d{6}", v)
        and is_committed(store, scfg, batch, int(v[1:])))
    if not versions:
        raise FeedbackError(f"feedback for batch {batch!r}: the batch was never scored with "
                            f"{cfg.model_name} (no output in {store.uri})")
    preds = {v: _predictions(read_output(store, scfg, batch, v, PREDICTIONS))
             for v in versions}
    known = set().union(*(p.keys() for p in preds.values()))
    for image_id, (_, name, line) in sorted(labelled.items(), key=lambda kv: kv[1][1:]):
        if image_id not in known:
            problems.append(RowProblem(name, line, f"image_id {image_id!r} is not an image "
                                                   f"of batch {batch}"))
    labels = {i: lab for i, (lab, _, _) in labelled.items() if i in known}
    if not labels:
        raise FeedbackError(f"feedback for batch {batch!r} ({', '.join(files)}): no row names "
                            f"an image of the batch ({len(problems)} refused)")
    digest = hashlib.sha256("".join(f"{i}\0{lab}\n" for i, lab in sorted(labels.items()))
                            .encode()).hexdigest()
    feedback_id = f"fb-{digest[:12]}"
    key = report_key(cfg.model_name, batch, feedback_id)
    try:
        recorded = json.loads(store.read_bytes(key))
        log.info("feedback: batch %s: %s already processed (%s); nothing to do", batch,
                 feedback_id, store.uri_for(key))
        return _report_from_dict(recorded)
    except ObjectNotFound:
        pass
    lives = tuple(live_accuracy(v, preds[v], labels, (benchmarks or {}).get(v), cfg)
                  for v in versions)
    inc = None
    if source is not None:
        read = read_batch(landing, batch)
        index = {image_id: i for i, image_id in enumerate(read.ids)}
        chosen = sorted((i for i in labels if i in index), key=index.__getitem__)  # batch order
        inc = increment_id(batch, feedback_id)
        images = read.images[[index[i] for i in chosen]]
        written = write_increment(source, inc, images,
                                  np.array([labels[i] for i in chosen], dtype=np.uint8))
        log.info("feedback: batch %s: %d labelled image(s) %s increment %s in %s", batch,
                 len(chosen), "landed as" if written else "already landed as", inc, source.uri)
    status: Status = ("ALARM" if any(v.status == "ALARM" for v in lives) else "OK")
    report = FeedbackReport(
        batch=batch, feedback_id=feedback_id, files=files, labels=len(labels),
        refused=tuple(problems[:200]), duplicates=duplicates, versions=lives, increment=inc,
        created_at=utc_now(), status=status, refused_total=len(problems),
        notes=(f"{len(problems) - 200} more refused rows not listed",)
        if len(problems) > 200 else (),
        feedback_uri=feedback.uri_for(batch),
        scored_uris=tuple(store.uri_for(output_prefix(scfg, batch, v)) for v in versions),
        report_uri=store.uri_for(key),
        increment_uri=(source.uri_for(_increment_folder(inc))
                       if source is not None and inc else None),
    )
    for p in problems[:20]:
        log.warning("feedback: batch %s: refused %s line %d: %s", batch, p.file, p.line,
                    p.problem)
    store.write_if_absent(key, json.dumps(report.to_dict(), indent=2).encode())
    log.log(logging.WARNING if status == "ALARM" else logging.INFO, "%s",
            report.summary_line())
    return report


def _report_from_dict(doc: Mapping[str, Any]) -> FeedbackReport:
    return FeedbackReport(
        batch=doc["batch"], feedback_id=doc["feedback_id"], files=tuple(doc["files"]),
        labels=int(doc["labels"]), refused=tuple(RowProblem(**p) for p in doc["refused"]),
        duplicates=int(doc["duplicates"]),
        versions=tuple(LiveAccuracy(**{**v, "interval": tuple(v["interval"])})
                       for v in doc["versions"]),
        increment=doc.get("increment"), created_at=doc["created_at"],
        status=doc.get("status", "OK"), refused_total=int(doc.get("refused_total", 0)),
        notes=tuple(doc.get("notes", ())), feedback_uri=str(doc.get("feedback_uri", "")),
        scored_uris=tuple(doc.get("scored_uris", ())), report_uri=str(doc.get("report_uri", "")),
        increment_uri=doc.get("increment_uri"),
    )


def pending_batches(feedback: Store) -> list[str]:
    """The batch folders under the feedback prefix that carry their marker."""
    listing = list_files(feedback, "")
    return sorted(m for m in listing.markers if m and "/" not in m)


def _listing_key(model_name: str, feedback: Store, batch: str) -> str:
    """Where a processed listing of a batch's feedback is recorded: a later landing (new or
    changed files) has another listing, so it is processed; the same one is not read again."""
    files = list_files(feedback, batch).files
    fingerprint = hashlib.sha256("".join(f"{f.key}\0{f.size}\0{f.stamp}\n" for f in files)
                                 .encode()).hexdigest()[:16]
    return f"scoring/{model_name}/feedback/{batch}/listing-{fingerprint}.json"


def process_pending(cfg: FeedbackConfig, store: Store, feedback: Store, landing: Store, *,
                    source: Store | None = None) -> list[FeedbackReport]:
    """Process every landed feedback folder not processed before in its current form.

    A folder whose feedback cannot be used is logged by name, recorded (so it is not retried
    until it changes) and skipped; the others go on.

    Returns:
        The reports of this call (those whose status is ALARM need attention).
    """
    from mnist_tasks.registries import open_registry
    from mnist_tasks.registry_api import RegistryError

    registry = open_registry(store, cfg.model_name, cfg.registry)
    out = []
    for batch in pending_batches(feedback):
        key = _listing_key(cfg.model_name, feedback, batch)
        if store.exists(key):
            continue
        try:
            benchmarks: dict[int, float | None] = {}
            for v in registry.list_versions():
                benchmarks[v.version] = v.test_accuracy
            report = process_batch(cfg, store, feedback, landing, batch, source=source,
                                   benchmarks=benchmarks)
            outcome: dict[str, Any] = {"feedback_id": report.feedback_id}
            out.append(report)
        except (FeedbackError, RegistryError) as exc:
            log.error("feedback: batch %s: %s", batch, exc)
            outcome = {"error": str(exc)}
        store.write_if_absent(key, json.dumps({**outcome, "at": utc_now()}).encode())
    return out


def reports(store: Store, model_name: str, batches: Sequence[str] | None = None
            ) -> list[FeedbackReport]:
    """The recorded feedback reports (for the Models page and the CLI)."""
    out = []
    for key in store.list(f"scoring/{model_name}/feedback"):
        if key.endswith(".json") and (batches is None or key.split("/")[3] in batches):
            try:
                out.append(_report_from_dict(json.loads(store.read_bytes(key))))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("feedback: unreadable report %s: %s", store.uri_for(key), exc)
    return out
