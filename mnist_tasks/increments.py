"""Labeled increments: new digits that land beside the base data set, read and validated.

Finding and reading them is :mod:`mnist_tasks.increment_files` (through the one reader for
user files); the drift tests come from :mod:`mnist_tasks.drift`. What the ingest stage calls::

    found = discover("s3://bucket/mnist")                        # complete + incomplete ids
    ref = Reference.build(x_train, y_train, x_test)              # the base and the test set
    results = check_all(found, ref, IncrementPolicy())           # one CheckedIncrement each

Each is ACCEPTED (split into train and a held-out "fresh" part) or QUARANTINED with its
reasons; nothing here deletes or changes the user's files. The rules: ``docs/data.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mnist_tasks.artifacts import NUM_CLASSES
from mnist_tasks.config import IncrementPolicy
from mnist_tasks.drift import chi2_goodness_of_fit, ink_features, ks_test
from mnist_tasks.increment_files import (
    Discovery,
    Format,
    IncrementRef,
    RawIncrement,
    read_increment,
)
from mnist_tasks.userfiles import COLS, ROWS, UserFileError
from mnist_tasks.validation import row_hashes

log = logging.getLogger(__name__)

__all__ = [
    "CheckedIncrement",
    "IncrementPolicy",
    "IncrementQuarantined",
    "Reference",
    "check_all",
    "raise_on_quarantine",
    "validate_increment",
]

Status = Literal["ACCEPTED", "QUARANTINED"]
ACCEPTED: Status = "ACCEPTED"
QUARANTINED: Status = "QUARANTINED"


class IncrementQuarantined(RuntimeError):
    """Raised by :func:`raise_on_quarantine` when the policy makes a quarantine fail the run."""


# --------------------------------------------------------------------------- validation


def _unique_sorted(hashes: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(hashes, dtype=np.uint64))


@dataclass(frozen=True, eq=False)
class Reference:
    """What increments are compared with: the base training set's class counts and ink
    features (drift), the row hashes of the test images (leakage), and the row hashes of all
    data already accepted, the base included (duplicates).

    Hashes are :func:`mnist_tasks.validation.row_hashes` (64-bit); two different images share
    one with probability about 2**-64 per pair, so hash equality is taken as image equality
    against these sets (within an increment, bytes are compared).
    """

    class_counts: np.ndarray  # int64 (10,), base training labels
    mean_intensity: np.ndarray  # float64 (N,), base training images
    stroke_area: np.ndarray  # float64 (N,)
    test_hashes: np.ndarray  # sorted unique uint64
    accepted_hashes: np.ndarray  # sorted unique uint64

    @classmethod
    def build(
        cls,
        base_images: np.ndarray,
        base_labels: np.ndarray,
        test_images: np.ndarray,
        accepted_images: Sequence[np.ndarray] = (),
    ) -> Reference:
        """Compute the reference from the base training set, the test set and the images of
        increments accepted before (each an (n, 28, 28) array).

        Raises:
            ValueError: if the base is empty, or images and labels differ in count.
        """
        if len(base_images) == 0 or len(base_images) != len(base_labels):
            raise ValueError(f"the base needs images and as many labels; got "
                             f"{len(base_images):,} images and {len(base_labels):,} labels")
        mean, area = ink_features(base_images)
        accepted = [row_hashes(base_images)] + [row_hashes(a) for a in accepted_images if len(a)]
        return cls(
            class_counts=np.bincount(np.asarray(base_labels, dtype=np.int64),
                                     minlength=NUM_CLASSES)[:NUM_CLASSES],
            mean_intensity=mean,
            stroke_area=area,
            test_hashes=_unique_sorted(row_hashes(test_images)),
            accepted_hashes=_unique_sorted(np.concatenate(accepted)),
        )

    def with_accepted(self, images: np.ndarray) -> Reference:
        """A copy in which ``images`` count as already accepted (for the next increment)."""
        if not len(images):
            return self
        merged = _unique_sorted(np.concatenate([self.accepted_hashes, row_hashes(images)]))
        return dataclasses.replace(self, accepted_hashes=merged)


def _no_images() -> np.ndarray:
    return np.zeros((0, ROWS, COLS), dtype=np.uint8)


def _no_labels() -> np.ndarray:
    return np.zeros(0, dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class CheckedIncrement:
    """The outcome for one increment.

    ``counts``: ``received``, ``leaked`` (identical to a test image), ``duplicates_within``
    (extra copies inside the increment), ``duplicates_accepted`` (already in the accepted
    data), ``kept``, ``train``, ``fresh``. ``class_counts``: per digit, of the kept images.
    ``drift``: per statistic (``class_distribution``, ``mean_intensity``, ``stroke_area``) a
    dict with ``test``, ``statistic``, ``p_value``, ``effect_size`` (and ``effect``, its name),
    ``limit`` and ``flagged``; empty when not computed. ``reasons``: why it was quarantined,
    and warnings (drift) for an accepted one. ``listing``: what was read, name -> [size,
    stamp] (:meth:`IncrementRef.listing`). The arrays are empty unless ACCEPTED.
    """

    id: str
    status: Status
    reasons: tuple[str, ...]
    uri: str
    format: Format | None
    payload_sha256: str | None
    counts: Mapping[str, int]
    class_counts: tuple[int, ...]
    drift: Mapping[str, Mapping[str, Any]]
    fresh_fraction: float
    train_images: np.ndarray = field(default_factory=_no_images, repr=False)
    train_labels: np.ndarray = field(default_factory=_no_labels, repr=False)
    fresh_images: np.ndarray = field(default_factory=_no_images, repr=False)
    fresh_labels: np.ndarray = field(default_factory=_no_labels, repr=False)
    listing: Mapping[str, Sequence[Any]] = field(default_factory=dict, repr=False)

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED

    @property
    def drift_flagged(self) -> bool:
        """Whether any drift statistic is beyond its threshold."""
        return any(s.get("flagged") for s in self.drift.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able report (no arrays) for logs, the run report and the model card.

        Keys: id, status, reasons, uri, format, payload_sha256, counts, class_counts,
        fresh_fraction, drift (bool), drift_statistics (the per-statistic dicts).
        """
        return {
            "id": self.id,
            "status": self.status,
            "reasons": list(self.reasons),
            "uri": self.uri,
            "format": self.format,
            "payload_sha256": self.payload_sha256,
            "counts": dict(self.counts),
            "class_counts": list(self.class_counts),
            "fresh_fraction": self.fresh_fraction,
            "drift": self.drift_flagged,
            "drift_statistics": {k: dict(v) for k, v in self.drift.items()},
        }

    def summary_line(self) -> str:
        """One log line, e.g. ``increment 2026-11-20: ACCEPTED, 5000 images (4000 train, 1000
        fresh), 0 duplicates, 0 leaked; drift: none``."""
        c = self.counts
        dups = c.get("duplicates_within", 0) + c.get("duplicates_accepted", 0)
        head = f"increment {self.id}: {self.status}"
        if self.format is None:  # unreadable
            return f"{head}: {'; '.join(self.reasons)}"
        line = (f"{head}, {c.get('received', 0)} images ({c.get('train', 0)} train, "
                f"{c.get('fresh', 0)} fresh), {dups} duplicates, {c.get('leaked', 0)} leaked")
        flagged = [f"{name} ({_describe_stat(s)})" for name, s in self.drift.items()
                   if s.get("flagged")]
        line += f"; drift: {', '.join(flagged) if flagged else 'none'}"
        quarantine = [r for r in self.reasons if not r.startswith("drift")]
        if self.status == QUARANTINED and quarantine:
            line += f"; quarantined: {'; '.join(quarantine)}"
        return line


def _fmt_p(p: Any) -> str:
    return "n/a" if p is None else f"{p:.2g}"


def _fmt(x: Any) -> str:
    return "inf" if x is None else f"{x:.3g}"  # None: a non-finite value in the JSON report


def _describe_stat(s: Mapping[str, Any]) -> str:
    text = f"{s['statistic_name']}={_fmt(s['statistic'])}, p={_fmt_p(s['p_value'])}"
    if s["effect"] != s["statistic_name"]:
        text += f", {s['effect']}={_fmt(s['effect_size'])}"
    if s.get("cohens_d") is not None:
        text += f", Cohen's d={s['cohens_d']:.2f}"
    return text


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _class_drift(counts: np.ndarray, ref: Reference, policy: IncrementPolicy) -> dict[str, Any]:
    res = chi2_goodness_of_fit(counts, ref.class_counts)
    return {
        "test": "chi-square goodness of fit vs base class proportions",
        "statistic_name": "chi2",
        "statistic": _finite(res.statistic),
        "dof": int(res.details["dof"]),
        "p_value": res.p_value,
        "effect": "cramers_v",
        "effect_size": _finite(res.effect_size),
        "threshold": "max_cramers_v",
        "limit": policy.max_cramers_v,
        "flagged": bool(res.p_value < policy.drift_alpha
                        and res.effect_size > policy.max_cramers_v),
    }


def _ks_drift(sample: np.ndarray, base: np.ndarray, policy: IncrementPolicy,
              what: str) -> dict[str, Any]:
    res = ks_test(sample, base)
    return {
        "test": f"two-sample Kolmogorov-Smirnov of per-image {what} vs a seeded base sample "
                f"of {len(base)}",
        "statistic_name": "ks_d",
        "statistic": res.statistic,
        "p_value": res.p_value,
        "effect": "ks_d",
        "effect_size": res.effect_size,
        "cohens_d": res.details.get("cohens_d"),  # absent: both constant and different
        "increment_mean": res.details["batch_mean"],
        "base_mean": res.details["reference_mean"],
        "threshold": "max_ks_d",
        "limit": policy.max_ks_d,
        "flagged": bool(res.p_value < policy.drift_alpha and res.statistic > policy.max_ks_d),
    }


def _drift(images: np.ndarray, labels: np.ndarray, ref: Reference,
           policy: IncrementPolicy) -> dict[str, dict[str, Any]]:
    if len(images) < 2:
        return {}
    counts = np.bincount(labels.astype(np.int64), minlength=NUM_CLASSES)[:NUM_CLASSES]
    n_base = len(ref.mean_intensity)
    pick = np.sort(np.random.default_rng(policy.seed).choice(
        n_base, size=min(n_base, policy.drift_sample_size), replace=False))
    mean, area = ink_features(images)
    return {
        "class_distribution": _class_drift(counts, ref, policy),
        "mean_intensity": _ks_drift(mean, ref.mean_intensity[pick], policy, "mean intensity"),
        "stroke_area": _ks_drift(area, ref.stroke_area[pick], policy,
                                 "stroke area (fraction of pixels >= 128)"),
    }


def _within_duplicates(images: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Mask of images that repeat an earlier image of the same array (bytes compared)."""
    mask = np.zeros(len(images), dtype=bool)
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    seen: set[bytes] = set()
    flat = images.reshape(len(images), -1)
    for i in np.flatnonzero(counts[inverse] > 1):
        b = flat[i].tobytes()
        if b in seen:
            mask[i] = True
        else:
            seen.add(b)
    return mask


def _split_seed(inc_id: str, payload: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{inc_id}|{payload}".encode()).digest()[:8], "big")


def fresh_split(labels: np.ndarray, fraction: float, inc_id: str,
                payload: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, fresh) indices: per digit, a seeded ``round(count * fraction)`` held out.

    Seeded from the increment id and payload hash, so the same increment splits the same way
    on every run and every machine; stratified so every digit present has fresh examples.
    """
    rng = np.random.default_rng(_split_seed(inc_id, payload))
    fresh: list[np.ndarray] = []
    for digit in range(NUM_CLASSES):
        members = np.flatnonzero(labels == digit)
        n_fresh = round(len(members) * fraction)
        fresh.append(rng.permutation(members)[:n_fresh])
    fresh_idx = np.sort(np.concatenate(fresh)).astype(np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), fresh_idx)
    return train_idx, fresh_idx


def validate_increment(
    raw: RawIncrement, *, reference: Reference, policy: IncrementPolicy
) -> CheckedIncrement:
    """Check one increment against the reference and decide ACCEPTED or QUARANTINED.

    Images identical to a test image (leaked) and duplicates (within the increment, or of
    data already accepted) are dropped and counted. The increment is QUARANTINED when a label
    is out of range, the leaked fraction is over ``policy.max_leakage_fraction``, fewer than
    ``policy.min_images`` images are left, or (only with ``policy.quarantine_on_drift``) drift
    is flagged. Drift otherwise is a warning in ``reasons``. An accepted increment's kept
    images are split into train and fresh parts (:func:`fresh_split`).

    Returns:
        A :class:`CheckedIncrement`; never raises for bad data.

    Raises:
        ValueError: if ``raw``'s arrays are not (n, 28, 28) uint8 images and n labels.
    """
    images, labels = raw.images, raw.labels
    if images.ndim != 3 or images.shape[1:] != (ROWS, COLS) or len(images) != len(labels):
        raise ValueError(f"{raw.uri}: expected (n, {ROWS}, {COLS}) images and n labels, got "
                         f"{images.shape} and {labels.shape}")
    n = len(images)
    reasons: list[str] = []
    bad_labels = np.flatnonzero(labels > 9)
    if len(bad_labels):
        reasons.append(f"{len(bad_labels):,} labels out of range 0..9 (first: "
                       f"{int(labels[bad_labels[0]])} at index {int(bad_labels[0])})")
    hashes = row_hashes(images)
    leaked = np.isin(hashes, reference.test_hashes)
    within = _within_duplicates(images, hashes) & ~leaked
    known = np.isin(hashes, reference.accepted_hashes) & ~leaked & ~within
    keep = ~(leaked | within | known)
    kept_images, kept_labels = images[keep], labels[keep]
    counts = {
        "received": n,
        "leaked": int(leaked.sum()),
        "duplicates_within": int(within.sum()),
        "duplicates_accepted": int(known.sum()),
        "kept": int(keep.sum()),
        "train": 0,
        "fresh": 0,
    }
    leak_fraction = counts["leaked"] / n if n else 0.0
    if leak_fraction > policy.max_leakage_fraction:
        reasons.append(f"leakage: {counts['leaked']:,} of {n:,} images ({leak_fraction:.1%}) "
                       f"are identical to test images, over max_leakage_fraction "
                       f"{policy.max_leakage_fraction:.1%}")
    if counts["kept"] < policy.min_images:
        reasons.append(f"too few images: {counts['kept']:,} left of {n:,} after dropping "
                       f"{n - counts['kept']:,} (leaked or duplicate), min_images "
                       f"{policy.min_images:,}")
    ok_labels = kept_labels[kept_labels <= 9].astype(np.int64)
    class_counts = tuple(int(c) for c in np.bincount(ok_labels, minlength=NUM_CLASSES))
    drift = _drift(kept_images, kept_labels, reference, policy) if not len(bad_labels) else {}
    drift_reasons = [f"drift: {name}: {s['effect']} = {_fmt(s['effect_size'])} > {s['threshold']} "
                     f"{s['limit']:g} with p = {_fmt_p(s['p_value'])} < drift_alpha "
                     f"{policy.drift_alpha:g} ({_describe_stat(s)})"
                     for name, s in drift.items() if s["flagged"]]
    quarantine = bool(reasons) or (policy.quarantine_on_drift and bool(drift_reasons))
    reasons.extend(drift_reasons)
    common: dict[str, Any] = dict(
        id=raw.id, uri=raw.uri, format=raw.format, payload_sha256=raw.payload_sha256,
        class_counts=class_counts, drift=drift, fresh_fraction=policy.fresh_fraction,
    )
    if quarantine:
        return CheckedIncrement(status=QUARANTINED, reasons=tuple(reasons), counts=counts,
                                **common)
    train_idx, fresh_idx = fresh_split(kept_labels, policy.fresh_fraction, raw.id,
                                       raw.payload_sha256)
    counts["train"], counts["fresh"] = len(train_idx), len(fresh_idx)
    return CheckedIncrement(
        status=ACCEPTED, reasons=tuple(reasons), counts=counts,
        train_images=kept_images[train_idx], train_labels=kept_labels[train_idx],
        fresh_images=kept_images[fresh_idx], fresh_labels=kept_labels[fresh_idx],
        **common,
    )


def unreadable(
    ref: IncrementRef, error: UserFileError, policy: IncrementPolicy
) -> CheckedIncrement:
    """The QUARANTINED result for an increment that :func:`read_increment` refused."""
    return CheckedIncrement(
        id=ref.id, status=QUARANTINED, reasons=(str(error),), uri=ref.uri, format=None,
        payload_sha256=None, counts={"received": 0, "leaked": 0, "duplicates_within": 0,
                                     "duplicates_accepted": 0, "kept": 0, "train": 0,
                                     "fresh": 0},
        class_counts=(0,) * NUM_CLASSES, drift={}, fresh_fraction=policy.fresh_fraction,
    )


def check_all(
    discovery: Discovery | Sequence[IncrementRef],
    reference: Reference,
    policy: IncrementPolicy,
) -> list[CheckedIncrement]:
    """Read and validate increments in id order; each accepted one counts as accepted data
    for the next (duplicates across increments are dropped from the later one).

    An increment that cannot be read is QUARANTINED with the reader's message (which names
    the file); the others go on. Each outcome is logged with its summary line (a warning for
    a quarantine or drift).

    Returns:
        One :class:`CheckedIncrement` per increment, in id order.

    Raises:
        StorageError: on a storage failure that is not the increment's fault (network,
            permissions), so the task fails and is retried.
    """
    refs = discovery.complete if isinstance(discovery, Discovery) else tuple(discovery)
    results: list[CheckedIncrement] = []
    for ref in sorted(refs, key=lambda r: r.id):
        try:
            raw = read_increment(ref)
        except UserFileError as exc:
            result = unreadable(ref, exc, policy)
        else:
            result = validate_increment(raw, reference=reference, policy=policy)
        result = dataclasses.replace(result, listing=ref.listing())
        if result.accepted:
            reference = reference.with_accepted(
                np.concatenate([result.train_images, result.fresh_images]))
        level = logging.INFO if result.accepted and not result.drift_flagged else logging.WARNING
        log.log(level, "%s", result.summary_line())
        results.append(result)
    return results


def raise_on_quarantine(results: Sequence[CheckedIncrement], policy: IncrementPolicy) -> None:
    """Fail the run on a quarantine when ``policy.fail_on_quarantine`` is set.

    Raises:
        IncrementQuarantined: naming each quarantined increment and its reasons.
    """
    bad = [r for r in results if not r.accepted]
    if bad and policy.fail_on_quarantine:
        raise IncrementQuarantined(
            f"{len(bad)} increment(s) quarantined and fail_on_quarantine is set: "
            + "; ".join(f"{r.id} ({'; '.join(r.reasons)})" for r in bad)
        )
