"""What batch scoring checks on each batch it commits, for operators: the predicted classes
against the training prior and the low-confidence count (the manifest's ``report``, logged as
``SCORED`` lines), and drift against the model version's monitoring reference
(:mod:`mnist_tasks.monitor`, docs/monitoring.md: the manifest's ``monitor``, logged as one
``MONITOR`` line); then the drift alarms of a run, read back for the DAG's health task::

    report = class_report(predicted, probability, cfg)           # ClassReport
    health = batch_health(store, cfg, batch, version, predicted, probability, embeddings,
                          images)                                 # None: not monitored
    alarms = drift_alarms(store, cfg, committed)                  # the batches that said ALARM
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mnist_tasks.artifacts import NUM_CLASSES
from mnist_tasks.config import MonitorPolicy, ScoringConfig
from mnist_tasks.monitor import (
    ALARM,
    OK,
    REFERENCE_FILE,
    WARN,
    BatchHealth,
    Reference,
    check_scored,
)
from mnist_tasks.registries import open_registry
from mnist_tasks.registry_api import RegistryError
from mnist_tasks.results import ScoreCommit
from mnist_tasks.scoring_outputs import read_manifest
from mnist_tasks.storage import Store

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# The class frequencies of the MNIST training set (60,000 labels): the prior the predicted
# distribution of a batch is compared with.
TRAINING_PRIOR_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)


@dataclass(frozen=True)
class ClassReport:
    """The operators' view of one batch's predictions (the manifest's ``report``)."""

    class_counts: tuple[int, ...]
    class_distribution: tuple[float, ...]
    training_prior: tuple[float, ...]
    divergence_tvd: float  # total variation distance from the training prior
    divergence_threshold: float
    divergence_flagged: bool
    low_confidence: int  # predictions below the confidence threshold
    confidence_threshold: float


def class_report(predicted: np.ndarray, probability: np.ndarray, cfg: ScoringConfig
                 ) -> ClassReport:
    """The operators' view of one batch's predictions: class counts and distribution against
    the training prior (total variation distance, flagged above the threshold), and how many
    predictions are below the confidence threshold."""
    import numpy as np

    counts = np.bincount(predicted.astype(np.int64), minlength=NUM_CLASSES)
    dist = counts / max(1, counts.sum())
    prior = np.asarray(TRAINING_PRIOR_COUNTS, dtype=np.float64)
    prior /= prior.sum()
    tvd = float(0.5 * np.abs(dist - prior).sum())
    low = int((probability < cfg.confidence_threshold).sum())
    return ClassReport(
        class_counts=tuple(int(c) for c in counts),
        class_distribution=tuple(round(float(d), 4) for d in dist),
        training_prior=tuple(round(float(p), 4) for p in prior),
        divergence_tvd=round(tvd, 4),
        divergence_threshold=cfg.divergence_threshold,
        divergence_flagged=tvd > cfg.divergence_threshold,
        low_confidence=low,
        confidence_threshold=cfg.confidence_threshold,
    )


def log_view(cfg: ScoringConfig, manifest: Mapping[str, Any]) -> None:
    """Log a committed batch's operators' view: images/s, its class report (a class drift is a
    WARNING), the low-confidence count."""
    report, timing = manifest["report"], manifest["timing"]
    counts = manifest["counts"]
    log.info("SCORED batch %s with %s v%d: %d image(s), %d file(s) skipped, %s images/s; "
             "predicted classes %s", manifest["batch"], cfg.model_name,
             manifest["model_version"], counts["images"], counts["skipped_files"],
             timing.get("images_per_s") or "-", report["class_counts"])
    level = logging.WARNING if report["divergence_flagged"] else logging.INFO
    log.log(level, "%sbatch %s: predicted-class distribution vs the training prior: total "
            "variation %.3f (threshold %.3f)", "CLASS DRIFT " if report["divergence_flagged"]
            else "", manifest["batch"], report["divergence_tvd"], report["divergence_threshold"])
    log.info("batch %s: %d prediction(s) below confidence %.2f", manifest["batch"],
             report["low_confidence"], report["confidence_threshold"])


def batch_health(store: Store, cfg: ScoringConfig, batch: str, version: int,
                 predicted: np.ndarray, probability: np.ndarray,
                 embeddings: np.ndarray | None, images: np.ndarray) -> BatchHealth | None:
    """The batch's drift against the version's monitoring reference, logged; None when the
    version has no reference (registered before monitoring) or the shards kept no embeddings
    (a model the monitor cannot split)."""
    if embeddings is None:
        return None
    try:
        blob = open_registry(store, cfg.model_name, cfg.registry).read_file(version, REFERENCE_FILE)
    except RegistryError as exc:
        log.info("score: batch %s: v%d has no monitoring reference (%s); drift not checked",
                 batch, version, exc)
        return None
    health = check_scored(Reference.from_bytes(blob), probability, predicted, embeddings,
                          images, MonitorPolicy())
    level = {OK: logging.INFO, WARN: logging.WARNING}.get(health.status, logging.ERROR)
    log.log(level, "MONITOR %s batch %s with %s v%d: %s", health.status, batch,
            cfg.model_name, version, health.summary_line())
    return health


@dataclass(frozen=True)
class DriftAlarm:
    """A batch whose drift check said ALARM, and the tests that fired."""

    batch: str
    fired: tuple[str, ...]


def drift_alarms(store: Store, cfg: ScoringConfig, committed: ScoreCommit
                 ) -> tuple[DriftAlarm, ...]:
    """The ALARMs among the batches a scoring run committed (from their manifests)."""
    alarms = []
    for batch in committed.committed:
        monitor = read_manifest(store, cfg, batch, committed.model_version).get("monitor") or {}
        if monitor.get("status") == ALARM:
            alarms.append(DriftAlarm(batch, tuple(monitor.get("fired") or ())))
    return tuple(alarms)
