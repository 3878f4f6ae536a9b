"""The stages' configs and the training presets: frozen dataclasses, checked on creation.

Each range a field shares with a trigger parameter is declared once, in
:mod:`mnist_tasks.config.params`, and checked here against it (:func:`_check_param`). A new
preset is one entry of :data:`PRESETS` plus its model in ``mnist_tasks/models.py``.

Usage::

    train = train_config("cnn", epochs=3)              # the preset's values, overridden
    GateConfig(min_accuracy=0.99)                      # ConfigError naming a bad value
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mnist_tasks.config.checks import check, check_bool, check_number


def _check_param(name: str, value: Any, where: str | None = None) -> None:
    # The ranges live with the trigger parameters, which take their defaults from these
    # classes: imported when a config is checked, not when this module loads.
    from mnist_tasks.config.params import check_param

    check_param(name, value, where)


# The four IDX files, by role.
MNIST_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}

# SHA-256 of the *decompressed* IDX payloads: mirrors re-compress the archives, so the .gz
# hash differs between mirrors while these stay the same.
MNIST_PAYLOAD_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",  # noqa: E501
    "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",  # noqa: E501
    "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# The public mirrors, tried in turn when the source is "default".
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

DEFAULT_SOURCE = "default"
DEFAULT_STORE = "file:///tmp/mnist-store"


@dataclass(frozen=True)
class ValidationThresholds:
    """Limits for the data validation report; a violation fails ingest."""

    max_class_imbalance: float = 0.5  # max |count/mean - 1| for any class
    max_blank_fraction: float = 0.001  # images whose pixels are all equal
    max_duplicate_fraction: float = 0.01  # exact duplicate images within train
    max_leakage_fraction: float = 0.0  # test images also present in train
    min_train_images: int = 1
    min_test_images: int = 1

    def __post_init__(self) -> None:
        for name in (
            "max_class_imbalance",
            "max_blank_fraction",
            "max_duplicate_fraction",
            "max_leakage_fraction",
        ):
            check_number(name, getattr(self, name), 0.0, 1e9)
        check_number("min_train_images", self.min_train_images, 0, 10**9, integer=True)
        check_number("min_test_images", self.min_test_images, 0, 10**9, integer=True)


@dataclass(frozen=True)
class IngestConfig:
    """Where the four IDX files come from and how they are checked.

    ``checksums``: ``"pinned"`` (MNIST's published payload hashes), ``"off"`` (accept any IDX
    files, e.g. another digit data set; logged and recorded), or a mapping from file name to the
    expected SHA-256 of the decompressed payload.
    """

    source: str = DEFAULT_SOURCE
    checksums: Literal["pinned", "off"] | Mapping[str, str] = "pinned"
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 1.0
    thresholds: ValidationThresholds = field(default_factory=ValidationThresholds)
    # A quarantined increment fails the run (True) instead of a warning (False); feeds
    # increments.IncrementPolicy.fail_on_quarantine.
    fail_on_quarantine: bool = False

    def __post_init__(self) -> None:
        check(isinstance(self.source, str) and bool(self.source), "source", self.source,
               "must be a non-empty URI or folder")
        if isinstance(self.checksums, str):
            check(self.checksums in ("pinned", "off"), "checksums", self.checksums,
                   "must be 'pinned', 'off' or a mapping of file name to SHA-256")
        else:
            for name, digest in dict(self.checksums).items():
                check(name in MNIST_FILES.values(), "checksums", name,
                       f"unknown file name (expected one of {sorted(MNIST_FILES.values())})")
                check(isinstance(digest, str) and bool(re.fullmatch(r"[0-9a-f]{64}", digest)),
                       f"checksums[{name}]", digest, "must be a 64-digit lowercase hex SHA-256")
        check_number("timeout_s", self.timeout_s, 0.01, 3600)
        check_number("retries", self.retries, 0, 20, integer=True)
        check_number("backoff_s", self.backoff_s, 0.0, 60)
        check_bool("fail_on_quarantine", self.fail_on_quarantine)

    def expected_sha256(self) -> dict[str, str] | None:
        """The expected payload hashes by file name, or None when verification is off."""
        if self.checksums == "pinned":
            return dict(MNIST_PAYLOAD_SHA256)
        if self.checksums == "off":
            return None
        assert not isinstance(self.checksums, str)
        return {**MNIST_PAYLOAD_SHA256, **dict(self.checksums)}


@dataclass(frozen=True)
class PreprocessConfig:
    """Normalisation and the seeded validation split."""

    val_fraction: float = 0.1
    seed: int = 42

    def __post_init__(self) -> None:
        check_number("val_fraction", self.val_fraction, 0.0, 0.5)
        _check_param("seed", self.seed)


@dataclass(frozen=True)
class TrainConfig:
    """One training recipe. Build it with :func:`train_config` from a preset plus overrides."""

    preset: str = "seed_mlp"
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 42
    val_fraction: float = 0.1  # carried to preprocess: the notebooks differ (10 % vs 20 %)
    early_stopping_patience: int = 0  # 0: no early stopping
    steps_per_execution: int = 1
    jit_compile: bool | Literal["auto"] = "auto"
    mixed_precision: bool | Literal["auto"] = "auto"  # bfloat16 on a capable GPU
    # Training images are shifted by a random whole number of pixels in [-shift, shift] along
    # each axis, a fresh draw per image and epoch (in the input pipeline; 0: no augmentation).
    shift_pixels: int = 0
    # Beyond whole-pixel shifts: each training image also gets a random rotation in
    # [-r, r] degrees, zoom in [1 - s, 1 + s] and an elastic distortion of about e pixels
    # (mnist_tasks.augment; the shift then becomes sub-pixel). 0 turns each off.
    rotation_degrees: float = 0.0
    zoom: float = 0.0
    elastic_pixels: float = 0.0
    # Cross-entropy against labels moved this far towards uniform (0: the plain labels).
    label_smoothing: float = 0.0
    # Decoupled weight decay (AdamW) on every weight, per step, times the learning rate
    # (0: plain Adam).
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check(self.preset in PRESETS, "preset", self.preset,
               f"must be one of {', '.join(PRESET_NAMES)}")
        for name in ("epochs", "batch_size", "learning_rate", "seed"):
            _check_param(name, getattr(self, name))
        check_number("val_fraction", self.val_fraction, 0.0, 0.5)
        check_number("early_stopping_patience", self.early_stopping_patience, 0, 1000,
                     integer=True)
        check_number("steps_per_execution", self.steps_per_execution, 1, 10000, integer=True)
        check_number("shift_pixels", self.shift_pixels, 0, 8, integer=True)
        check_number("rotation_degrees", self.rotation_degrees, 0.0, 45.0)
        check_number("zoom", self.zoom, 0.0, 0.5)
        check_number("elastic_pixels", self.elastic_pixels, 0.0, 4.0)
        check_number("label_smoothing", self.label_smoothing, 0.0, 0.5)
        check_number("weight_decay", self.weight_decay, 0.0, 1.0)
        check(self.jit_compile in (True, False, "auto"), "jit_compile", self.jit_compile,
               "must be true, false or 'auto'")
        check(self.mixed_precision in (True, False, "auto"), "mixed_precision",
               self.mixed_precision, "must be true, false or 'auto'")


# Each preset's defaults; user overrides replace single fields. A new preset is one entry here
# (its "description" is what the trigger form and the CLI's help show) plus its model in
# models.py. "description" is not a TrainConfig field: train_config leaves it out.
PRESETS: dict[str, dict[str, Any]] = {
    # The first notebook, exactly: 784-128-64-10, dropout 0.3, Adam, 10 epochs, batch 128.
    # steps_per_execution only runs 16 of the same steps per call: the math is unchanged,
    # the per-step Python overhead (a third of the fit time on 2 cores) is not.
    "seed_mlp": {
        "description": "the first notebook's 784-128-64-10 MLP",
        "epochs": 10,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 16,
    },
    # The second notebook: 784-512-10, L2(0.001), dropout 0.3, early stopping (patience 3).
    "seed_wide_mlp": {
        "description": "the second notebook's 784-512-10 MLP with L2 and early stopping",
        "epochs": 50,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "val_fraction": 0.2,
        "early_stopping_patience": 3,
        "steps_per_execution": 16,
    },
    # Tuned for wall time to >= 97.5 % on a small CPU: 784-256-10, big batches, one-cycle LR.
    "fast_mlp": {
        "description": "tuned for CPU time",
        "epochs": 6,
        "batch_size": 512,
        "learning_rate": 5e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 32,
    },
    # A 24 (5x5) | 32 (3x3) | 32 (3x3) convnet with batch norm and a 256-unit dense layer
    # (models.py), trained on images shifted by up to 2 pixels, rotated by up to 8 degrees and
    # zoomed by up to 8 % (made in the input pipeline, beside the model's steps), label
    # smoothing 0.1, batches of 256, 10 epochs of AdamW (weight decay 0.05, cnn_best's) with a
    # one-cycle LR peaking at 4e-3. Against Adam at 3e-3, at the same time per epoch, the
    # validation splits of seeds 42-44 ended at a loss of 0.5205 / 0.5186 / 0.5208 against
    # 0.5228 / 0.5204 / 0.5237, 99.57 / 99.65 / 99.53 % against 99.43 / 99.60 / 99.48 %
    # (docs/benchmarks.md, session 14).
    "cnn": {
        "description": "a small convnet with shift, rotation and zoom augmentation",
        "epochs": 10,
        "batch_size": 256,
        "learning_rate": 4e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 8,
        "shift_pixels": 2,
        "rotation_degrees": 8.0,
        "zoom": 0.08,
        "label_smoothing": 0.1,
        "weight_decay": 0.05,
    },
    # The cnn wider (32 | 32 | 64 filters, a dense layer of 512: models.py), trained 14 epochs
    # with AdamW (weight decay 0.05, peak LR 4e-3) on images also distorted elastically; each
    # choice lowered the validation loss on seeds 42-44 (docs/benchmarks.md).
    "cnn_best": {
        "description": "a wider convnet with elastic distortion, trained longer (best accuracy)",
        "epochs": 14,
        "batch_size": 256,
        "learning_rate": 4e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 8,
        "shift_pixels": 2,
        "rotation_degrees": 10.0,
        "zoom": 0.1,
        "elastic_pixels": 1.0,
        "label_smoothing": 0.1,
        "weight_decay": 0.05,
    },
    # The notebooks' dense network done well: one 800-unit layer with batch norm and dropout,
    # trained on the cnn's distortions plus elastic ones, one-cycle LR, 9 epochs: 98.69-98.73 %
    # at 1.8-1.9x plain Keras's fit time on seeds 42-44 (docs/benchmarks.md, session 14).
    "mlp_plus": {
        "description": "a dense-only network trained on distorted digits",
        "epochs": 9,
        "batch_size": 256,
        "learning_rate": 3e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 16,
        "shift_pixels": 2,
        "rotation_degrees": 8.0,
        "zoom": 0.08,
        "elastic_pixels": 0.8,
        "label_smoothing": 0.1,
    },
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def train_config(preset: str = "seed_mlp", **overrides: Any) -> TrainConfig:
    """The preset's config with ``overrides`` (None values are ignored) applied.

    Raises:
        ConfigError: for an unknown preset, an unknown field or an out-of-range value.
    """
    check(preset in PRESETS, "preset", preset, f"must be one of {', '.join(PRESET_NAMES)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in PRESETS[preset].items() if k != "description"}
    for key, value in overrides.items():
        if value is None:
            continue
        check(key in known, key, value, "is not a training parameter")
        values[key] = value
    return TrainConfig(preset=preset, **values)


@dataclass(frozen=True)
class GateConfig:
    """When a challenger may be registered and promoted."""

    min_accuracy: float = 0.97  # absolute floor on test accuracy
    champion_margin: float = 0.002  # reject if worse than the champion by more than this
    max_recall_drop: float = 0.01  # per-digit recall may not drop by more than this
    significance: float = 0.05  # McNemar p-value below which a difference is called real

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "champion_margin", "max_recall_drop"):
            _check_param(name, getattr(self, name))
        check_number("significance", self.significance, 1e-9, 0.5)


@dataclass(frozen=True)
class CheckConfig:
    """The check before training: skip when nothing changed, the champion on fresh data."""

    force: bool = False  # retrain even when the champion already covers these inputs
    # Warn ("FRESH-DATA DROP") when the champion's accuracy on a new increment's held-out part
    # is below its benchmark accuracy by more than this (absolute accuracy).
    fresh_drop_margin: float = 0.02

    def __post_init__(self) -> None:
        check_bool("force", self.force)
        _check_param("fresh_drop_margin", self.fresh_drop_margin)


@dataclass(frozen=True)
class ApprovalConfig:
    """Whether a person approves a promotion (``mode``), and how long a request waits."""

    mode: Literal["off", "borderline", "always"] = "off"
    timeout_minutes: float = 1440.0  # a day; then the default answer (reject) applies

    def __post_init__(self) -> None:
        check(self.mode in APPROVAL_MODES, "approval", self.mode,
               f"must be one of {', '.join(APPROVAL_MODES)}")
        _check_param("approval_timeout_minutes", self.timeout_minutes)


APPROVAL_MODES: tuple[str, ...] = ("off", "borderline", "always")
