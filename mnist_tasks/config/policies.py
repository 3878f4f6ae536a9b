"""The configs of the increment checks, scoring, monitoring and feedback.

Like the stage configs in :mod:`mnist_tasks.config`, each is a frozen dataclass validated on
construction by the checks of :mod:`mnist_tasks.config.checks` (a bad value raises a
``ConfigError`` naming the field). Their stage modules re-export them (``score.ScoringConfig``,
``increments.IncrementPolicy``, ...), so callers may import either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from mnist_tasks.config.checks import ConfigError, check, check_bool, check_number

DEFAULT_MODEL_NAME = "mnist-classifier"
MODEL_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"  # a registered model's name
MAX_IMAGES = 100_000  # images in one IDX file (78 MB decoded), and PNGs in one folder


@dataclass(frozen=True)
class IncrementPolicy:
    """How increments are checked, split and (optionally) quarantined.

    Drift is flagged for a statistic when its p-value is below ``drift_alpha`` *and* its effect
    size is beyond the limit: with thousands of images a p-value alone flags differences too
    small to matter, and with a few dozen an effect size alone is noise.

    Raises:
        ConfigError: naming the parameter, for a value out of range or of the wrong type.
    """

    fresh_fraction: float = 0.2  # share of each accepted increment held out as fresh test data
    max_leakage_fraction: float = 0.05  # images identical to test images; above: quarantine
    min_images: int = 10  # fewer images left after dropping: quarantine
    drift_alpha: float = 0.001  # p-value below which a drift statistic can flag
    max_cramers_v: float = 0.1  # class distribution: Cramér's V above this flags ("small")
    max_ks_d: float = 0.2  # ink statistics: Kolmogorov-Smirnov D above this flags
    quarantine_on_drift: bool = False  # drift quarantines instead of only warning
    fail_on_quarantine: bool = False  # raise_on_quarantine() raises instead of warning
    drift_sample_size: int = 10_000  # base images sampled (seeded) for the two-sample tests
    seed: int = 0  # seed of the base sample

    def __post_init__(self) -> None:
        check_number("fresh_fraction", self.fresh_fraction, 0.0, 1.0, hi_open=True)
        check_number("max_leakage_fraction", self.max_leakage_fraction, 0.0, 1.0)
        check_number("min_images", self.min_images, 1, MAX_IMAGES, integer=True)
        check_number("drift_alpha", self.drift_alpha, 0.0, 1.0, lo_open=True)
        check_number("max_cramers_v", self.max_cramers_v, 0.0, 10.0)
        check_number("max_ks_d", self.max_ks_d, 0.0, 1.0)
        check_bool("quarantine_on_drift", self.quarantine_on_drift)
        check_bool("fail_on_quarantine", self.fail_on_quarantine)
        check_number("drift_sample_size", self.drift_sample_size, 100, 10**7, integer=True)
        check_number("seed", self.seed, 0, 2**32 - 1, integer=True)


# The monitor's tests (monitor.TESTS, whose keys these must be) -> their (warn, alarm) limit
# fields in MonitorPolicy; the input statistics have no alarm limit.
MONITOR_LIMIT_FIELDS: dict[str, tuple[str, str | None]] = {
    "mean_intensity": ("ink_warn_ks", None),
    "stroke_area": ("ink_warn_ks", None),
    "confidence": ("confidence_warn_ks", "confidence_alarm_ks"),
    "embeddings": ("embedding_warn_mmd", "embedding_alarm_mmd"),
    "prediction_rates": ("rates_warn_tvd", "rates_alarm_tvd"),
}


@dataclass(frozen=True)
class MonitorPolicy:
    """The thresholds of :func:`mnist_tasks.monitor.check_batch`; the defaults were tuned by
    ``bench/monitor_detection.py --tune`` on its tuning shifts (``docs/monitoring.md``).

    A test fires when its Holm-corrected p-value is below ``alpha`` *and* its effect size
    reaches a limit: the ``*_warn_*`` limit makes it WARN, the ``*_alarm_*`` limit ALARM. The
    p-value keeps small batches from firing on noise; the effect size keeps large batches from
    firing on differences too small to matter. The input statistics have no alarm limit: a
    change in the images that the model's outputs do not show is worth a look, not an alarm.

    Raises:
        ConfigError: naming the parameter, for a value out of range or of the wrong type, a
            warn limit above its alarm limit, or too few permutations to reach ``alpha``.
    """

    alpha: float = 0.01  # family-wise false-alarm rate of the five tests together (Holm)
    ink_warn_ks: float = 0.063  # mean intensity and stroke area: Kolmogorov-Smirnov D
    confidence_warn_ks: float = 0.076  # top probability: Kolmogorov-Smirnov D
    confidence_alarm_ks: float = 0.15
    embedding_warn_mmd: float = 0.0015  # embeddings: unbiased MMD² (RBF, reference bandwidth)
    embedding_alarm_mmd: float = 0.003
    rates_warn_tvd: float = 0.072  # predicted-class rates: total variation distance
    rates_alarm_tvd: float = 0.14
    embedding_sample: int = 500  # batch rows in the MMD (a seeded subsample): bounds its cost
    permutations: int = 999  # MMD permutations at most; the smallest p-value is 1 / (1 + this)
    permutation_stop: int = 10  # stop permuting once this many reach the observed MMD²
    seed: int = 0  # seeds the batch subsample and the permutations

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, 0.0, 0.5, lo_open=True)
        check_number("ink_warn_ks", self.ink_warn_ks, 0.0, 1.0)
        for warn, alarm, hi in (("confidence_warn_ks", "confidence_alarm_ks", 1.0),
                                ("embedding_warn_mmd", "embedding_alarm_mmd", 2.0),
                                ("rates_warn_tvd", "rates_alarm_tvd", 1.0)):
            check_number(warn, getattr(self, warn), 0.0, hi)
            check_number(alarm, getattr(self, alarm), 0.0, hi)
            check(getattr(self, warn) <= getattr(self, alarm), warn, getattr(self, warn),
                  f"must not exceed {alarm!r} = {getattr(self, alarm)!r}")
        check_number("embedding_sample", self.embedding_sample, 10, 100_000, integer=True)
        check_number("permutations", self.permutations, 1, 1_000_000, integer=True)
        check_number("permutation_stop", self.permutation_stop, 1, 1_000_000, integer=True)
        check_number("seed", self.seed, 0, 2**32 - 1, integer=True)
        # Holm multiplies the smallest p-value by the number of tests; the MMD's cannot be
        # below 1 / (1 + permutations), so with too few it could never fire.
        tests = len(MONITOR_LIMIT_FIELDS)
        check(tests / (1 + self.permutations) < self.alpha, "permutations", self.permutations,
              f"must be at least {math.ceil(tests / self.alpha)} for alpha={self.alpha} (the "
              "embedding test could never fire)")

    def limits(self, test: str) -> tuple[float, float | None]:
        """The (warn, alarm) effect-size limits of ``test`` (a key of ``monitor.TESTS``);
        alarm None for the input statistics."""
        warn, alarm = MONITOR_LIMIT_FIELDS[test]
        return getattr(self, warn), (None if alarm is None else getattr(self, alarm))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ScoringConfig:
    """What a scoring run needs besides the store; :func:`mnist_tasks.config.scoring_config`
    builds it from the deployment's environment.

    Attributes:
        landing: the landing prefix (``s3://bucket/prefix``, ``file:///path`` or a folder).
        model_name: the registered model's name.
        shard_size: images per shard (each shard is one mapped task in the DAG).
        rescore_window: how many of the most recent batches (by batch id) are scored again
            with a new champion; 0 scores only new batches.
        confidence_threshold: predictions with a lower top probability are counted.
        divergence_threshold: total variation distance between a batch's predicted-class
            distribution and the training prior above which the batch is flagged.
        batch_size: the ``model.predict`` batch size.
        label_queue: how many of each batch's least confident images are exported for
            labelling (``scoring/<model>/labeling/``); 0 exports none.
        registry: the MLflow server whose registry holds the model (``MNIST_REGISTRY``);
            None: the store's.
    """

    landing: str
    model_name: str = DEFAULT_MODEL_NAME
    registry: str | None = None
    shard_size: int = 5000
    rescore_window: int = 5
    confidence_threshold: float = 0.5
    divergence_threshold: float = 0.1
    batch_size: int = 1024
    label_queue: int = 100

    def __post_init__(self) -> None:
        check(isinstance(self.landing, str) and bool(self.landing.strip()), "landing",
              self.landing, "must be a URI: s3://bucket/prefix, file:///path or a folder")
        check_number("shard_size", self.shard_size, 1, integer=True)
        check_number("rescore_window", self.rescore_window, 0, integer=True)
        check_number("confidence_threshold", self.confidence_threshold, 0.0, 1.0)
        check_number("divergence_threshold", self.divergence_threshold, 0.0, 1.0)
        check_number("batch_size", self.batch_size, 1, integer=True)
        check_number("label_queue", self.label_queue, 0, integer=True)


@dataclass(frozen=True)
class FeedbackConfig:
    """How feedback is judged and where its increment goes.

    Attributes:
        model_name: the registered model whose outputs the labels are merged with.
        source: where the labelled images land as an increment (the training source: a folder,
            ``file://`` or ``s3://``); None: no increment.
        alarm_margin: ALARM when live accuracy is significantly below benchmark - margin.
        alpha: the one-sided binomial test's level.
        min_labels: fewer labels than this for a version: TOO_FEW, never an alarm.
        registry: the MLflow server whose registry holds the model (``MNIST_REGISTRY``);
            None: the store's.
    """

    model_name: str = DEFAULT_MODEL_NAME
    registry: str | None = None
    source: str | None = None
    alarm_margin: float = 0.02
    alpha: float = 0.01
    min_labels: int = 50

    def __post_init__(self) -> None:
        check_number("alarm_margin", self.alarm_margin, 0.0, 1.0, hi_open=True)
        check_number("alpha", self.alpha, 0.0, 1.0, lo_open=True, hi_open=True)
        check_number("min_labels", self.min_labels, 1, integer=True)


__all__ = ["MONITOR_LIMIT_FIELDS", "ConfigError", "FeedbackConfig", "IncrementPolicy",
           "MonitorPolicy", "ScoringConfig"]
