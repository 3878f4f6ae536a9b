"""Typed, frozen configuration for every stage, and the training presets.

Configs are built at the edges (CLI, DAG task) from plain values and validated here, so a bad
value fails early with a message that names the parameter. Library functions take these
objects; they never read Airflow Variables or environment variables themselves.

This module is cheap to import (no numpy, no TensorFlow): the DAG file may use it at run time
to build configs from params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
DEFAULT_MODEL_NAME = "mnist-classifier"


class ConfigError(ValueError):
    """A configuration value is out of range or of the wrong type; names the parameter."""


def _check(cond: bool, param: str, value: Any, requirement: str) -> None:
    if not cond:
        raise ConfigError(f"parameter {param!r} = {value!r} is invalid: {requirement}")


def _check_range(param: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    _check(
        isinstance(value, kind) and not isinstance(value, bool),
        param,
        value,
        f"must be {'an integer' if integer else 'a number'}",
    )
    _check(lo <= value <= hi, param, value, f"must be between {lo} and {hi}")


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
            _check_range(name, getattr(self, name), 0.0, 1e9)
        _check_range("min_train_images", self.min_train_images, 0, 10**9, integer=True)
        _check_range("min_test_images", self.min_test_images, 0, 10**9, integer=True)


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

    def __post_init__(self) -> None:
        _check(isinstance(self.source, str) and bool(self.source), "source", self.source,
               "must be a non-empty URI or folder")
        if isinstance(self.checksums, str):
            _check(self.checksums in ("pinned", "off"), "checksums", self.checksums,
                   "must be 'pinned', 'off' or a mapping of file name to SHA-256")
        else:
            for name, digest in dict(self.checksums).items():
                _check(name in MNIST_FILES.values(), "checksums", name,
                       f"unknown file name (expected one of {sorted(MNIST_FILES.values())})")
                _check(isinstance(digest, str) and bool(re.fullmatch(r"[0-9a-f]{64}", digest)),
                       f"checksums[{name}]", digest, "must be a 64-digit lowercase hex SHA-256")
        _check_range("timeout_s", self.timeout_s, 0.01, 3600)
        _check_range("retries", self.retries, 0, 20, integer=True)
        _check_range("backoff_s", self.backoff_s, 0.0, 60)

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
        _check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _check_range("seed", self.seed, 0, 2**31 - 1, integer=True)


PRESET_NAMES: tuple[str, ...] = ("seed_mlp", "seed_wide_mlp", "fast_mlp", "cnn")


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

    def __post_init__(self) -> None:
        _check(self.preset in PRESET_NAMES, "preset", self.preset,
               f"must be one of {', '.join(PRESET_NAMES)}")
        _check_range("epochs", self.epochs, 1, 1000, integer=True)
        _check_range("batch_size", self.batch_size, 1, 65536, integer=True)
        _check_range("learning_rate", self.learning_rate, 1e-6, 1.0)
        _check_range("seed", self.seed, 0, 2**31 - 1, integer=True)
        _check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _check_range("early_stopping_patience", self.early_stopping_patience, 0, 1000,
                     integer=True)
        _check_range("steps_per_execution", self.steps_per_execution, 1, 10000, integer=True)
        _check(self.jit_compile in (True, False, "auto"), "jit_compile", self.jit_compile,
               "must be true, false or 'auto'")
        _check(self.mixed_precision in (True, False, "auto"), "mixed_precision",
               self.mixed_precision, "must be true, false or 'auto'")


# Each preset's defaults; user overrides replace single fields.
PRESETS: dict[str, dict[str, Any]] = {
    # The first notebook, exactly: 784-128-64-10, dropout 0.3, Adam, 10 epochs, batch 128.
    # steps_per_execution only runs 16 of the same steps per call: the math is unchanged,
    # the per-step Python overhead (a third of the fit time on 2 cores) is not.
    "seed_mlp": {
        "epochs": 10,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 16,
    },
    # The second notebook: 784-512-10, L2(0.001), dropout 0.3, early stopping (patience 3).
    "seed_wide_mlp": {
        "epochs": 50,
        "batch_size": 128,
        "learning_rate": 1e-3,
        "val_fraction": 0.2,
        "early_stopping_patience": 3,
        "steps_per_execution": 16,
    },
    # Tuned for wall time to >= 97.5 % on a small CPU: 784-256-10, big batches, one-cycle LR.
    "fast_mlp": {
        "epochs": 6,
        "batch_size": 512,
        "learning_rate": 5e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 32,
    },
    # A 32-32 | 64-64 convnet with batch norm, shift/rotation/zoom augmentation (never flips),
    # one-cycle LR: 99.54 % test accuracy on MNIST.
    "cnn": {"epochs": 15, "batch_size": 128, "learning_rate": 2e-3, "val_fraction": 0.1},
}


def train_config(preset: str = "seed_mlp", **overrides: Any) -> TrainConfig:
    """The preset's config with ``overrides`` (None values are ignored) applied.

    Raises:
        ConfigError: for an unknown preset, an unknown field or an out-of-range value.
    """
    _check(preset in PRESETS, "preset", preset, f"must be one of {', '.join(PRESET_NAMES)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = dict(PRESETS[preset])
    for key, value in overrides.items():
        if value is None:
            continue
        _check(key in known, key, value, "is not a training parameter")
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
        _check_range("min_accuracy", self.min_accuracy, 0.0, 1.0)
        _check_range("champion_margin", self.champion_margin, 0.0, 1.0)
        _check_range("max_recall_drop", self.max_recall_drop, 0.0, 1.0)
        _check_range("significance", self.significance, 1e-9, 0.5)


_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._=@-]+")


def run_key(run_id: str) -> str:
    """A storage-safe key for an Airflow run id (``scheduled__2026-11-21T00:00:00+00:00``).

    Deterministic, so a retried task writes to the same place.
    """
    _check(isinstance(run_id, str) and bool(run_id.strip()), "run_id", run_id,
           "must be a non-empty string")
    key = _RUN_ID_UNSAFE.sub("_", run_id.strip()).strip("._-@=")[:180] or "run"
    if key != run_id:
        # Sanitising can map two run ids to one key; a short hash of the original keeps them apart.
        key += "-" + hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return key


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run needs, built from flat params by :func:`pipeline_config`."""

    store: str
    ingest: IngestConfig = field(default_factory=IngestConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    model_name: str = DEFAULT_MODEL_NAME

    def __post_init__(self) -> None:
        _check(isinstance(self.store, str) and bool(self.store), "store", self.store,
               "must be a URI: s3://bucket/prefix, file:///path or a folder")
        _check(isinstance(self.model_name, str)
               and bool(re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", self.model_name)),
               "model_name", self.model_name,
               "must be 1-63 lowercase letters, digits, '.', '_' or '-'")


# The flat parameter names shared by the DAG's trigger form and the CLI.
PIPELINE_PARAMS: tuple[str, ...] = (
    "source", "store", "checksums", "preset", "epochs", "batch_size", "learning_rate", "seed",
    "min_accuracy", "champion_margin", "max_recall_drop", "model_name",
)


def pipeline_config(params: Mapping[str, Any]) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from flat params (DAG params or CLI flags).

    Missing or None values take the defaults (the preset's, for training fields).

    Raises:
        ConfigError: naming the first invalid parameter.
    """
    unknown = sorted(k for k in params if k not in PIPELINE_PARAMS)
    _check(not unknown, ", ".join(unknown), None,
           f"unknown parameter(s); known: {', '.join(PIPELINE_PARAMS)}")

    def get(name: str, default: Any = None) -> Any:
        value = params.get(name)
        return default if value is None or value == "" else value

    train = train_config(
        get("preset", "seed_mlp"),
        epochs=get("epochs"),
        batch_size=get("batch_size"),
        learning_rate=get("learning_rate"),
        seed=get("seed"),
    )
    gate_defaults = GateConfig()
    return PipelineConfig(
        store=get("store", ""),
        ingest=IngestConfig(source=get("source", DEFAULT_SOURCE),
                            checksums=get("checksums", "pinned")),
        preprocess=PreprocessConfig(val_fraction=train.val_fraction, seed=train.seed),
        train=train,
        gate=GateConfig(
            min_accuracy=get("min_accuracy", gate_defaults.min_accuracy),
            champion_margin=get("champion_margin", gate_defaults.champion_margin),
            max_recall_drop=get("max_recall_drop", gate_defaults.max_recall_drop),
        ),
        model_name=get("model_name", DEFAULT_MODEL_NAME),
    )
