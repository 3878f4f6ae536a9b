"""Typed, frozen configuration for every stage, and the training presets.

Configs are built at the edges (CLI, DAG task) from plain values and validated here, so a bad
value fails early with a message that names the parameter. Library functions take these
objects; they never read Airflow Variables or environment variables themselves.

The trigger parameters (what the DAG's trigger form offers and the CLI's options take) are
defined once, in :data:`TRIGGER_PARAMS`: the DAG's ``Param``s and the CLI's options are generated
from it, and the dataclasses below check their fields against the same ranges. The presets are
the :data:`PRESETS` table; a new preset is one entry there plus its model in ``models.py``.

The package is the one home of configuration: :mod:`.checks` holds the validator every config
uses, :mod:`.policies` the configs of the increment checks, monitoring, scoring and feedback,
and :mod:`.environment` every ``MNIST_*`` deployment setting, parsed from the ``environ`` an
edge hands it. All their public names are importable from here.

This package is cheap to import (no numpy, no TensorFlow): the DAG file uses it at parse time
to build its params.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlparse

# The validator and the configs of the other stages live in submodules; imported here (as
# explicit re-exports) so that every config is ``from mnist_tasks.config import X``.
from mnist_tasks.config.checks import ConfigError as ConfigError
from mnist_tasks.config.checks import check, check_bool, check_number
from mnist_tasks.config.environment import DEPLOYMENT_SETTINGS as DEPLOYMENT_SETTINGS
from mnist_tasks.config.environment import ENV_SETTINGS as ENV_SETTINGS
from mnist_tasks.config.environment import MAX_JSON_FILE_BYTES as MAX_JSON_FILE_BYTES
from mnist_tasks.config.environment import DeploymentSetting as DeploymentSetting
from mnist_tasks.config.environment import EnvSetting as EnvSetting
from mnist_tasks.config.environment import deployment_values as deployment_values
from mnist_tasks.config.environment import env_number as env_number
from mnist_tasks.config.environment import feedback_landing as feedback_landing
from mnist_tasks.config.environment import parse_checksums as parse_checksums
from mnist_tasks.config.environment import read_json_file as read_json_file
from mnist_tasks.config.environment import scoring_config as scoring_config
from mnist_tasks.config.policies import DEFAULT_MODEL_NAME as DEFAULT_MODEL_NAME
from mnist_tasks.config.policies import MAX_IMAGES as MAX_IMAGES
from mnist_tasks.config.policies import MODEL_NAME_PATTERN as MODEL_NAME_PATTERN
from mnist_tasks.config.policies import MONITOR_LIMIT_FIELDS as MONITOR_LIMIT_FIELDS
from mnist_tasks.config.policies import FeedbackConfig as FeedbackConfig
from mnist_tasks.config.policies import IncrementPolicy as IncrementPolicy
from mnist_tasks.config.policies import MonitorPolicy as MonitorPolicy
from mnist_tasks.config.policies import ScoringConfig as ScoringConfig

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


def _check_param(name: str, value: Any, where: str | None = None) -> None:
    """Check ``value`` against the range of the trigger parameter ``name`` (one definition);
    the message names ``where`` (e.g. ``candidates[0].seed``), by default ``name``."""
    spec = PARAM_SPECS[name]
    assert spec.minimum is not None and spec.maximum is not None
    check_number(where or name, value, spec.minimum, spec.maximum,
                 integer=spec.type == "integer")


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
    # A 24 (5x5) | 32 (3x3) convnet with batch norm and a 256-unit dense layer, trained on
    # images shifted by up to 2 pixels (made in the input pipeline), one-cycle LR, batches of
    # 256: >= 99.5 % test accuracy in a few minutes on two CPU cores (docs/benchmarks.md).
    "cnn": {
        "description": "a small convnet with shift augmentation (best accuracy)",
        "epochs": 8,
        "batch_size": 256,
        "learning_rate": 3e-3,
        "val_fraction": 0.1,
        "steps_per_execution": 8,
        "shift_pixels": 2,
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


# -- Trigger parameters: the one definition the DAG's form, the CLI and the configs share ------

# Where the store may be, for the trigger form: s3://bucket[/prefix], file:///path or an
# absolute folder, never with a '..' segment (the lookahead; check_store_uri says why).
STORE_PATTERN = (
    r"^(?!(.*/)?\.\.(/|$))(s3://[a-z0-9][a-z0-9.-]+[a-z0-9](/.*)?|file:///.+|/.+)$"
)


@dataclass(frozen=True)
class ParamSpec:
    """One trigger parameter: a field of the DAG's trigger form and an option of the CLI.

    ``type`` is the JSON-schema type (``boolean``: a switch on the form); ``nullable``
    parameters accept ``None`` (empty in the form), which means "the preset's value". ``env``
    names the environment variable that an edge (the DAG, the CLI) uses as the default instead
    of ``default`` when it is set.
    """

    name: str
    type: Literal["string", "integer", "number", "boolean", "array"]
    default: Any
    title: str
    description: str
    group: Literal["data", "store", "training", "gating", "approval"]
    nullable: bool = False
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    env: str | None = None
    # The whole JSON schema, for a structured value (``array``): used as it is.
    json_schema: Mapping[str, Any] | None = None

    def schema(self) -> dict[str, Any]:
        """The JSON schema of the value: what Airflow's ``Param`` validates a trigger against.

        The range sits under ``allOf``, not at the top: Airflow's trigger form gives a number
        field a top-level ``minimum``/``maximum`` as its bounds and silently clamps a value
        typed outside them (0 epochs would become 1). Under ``allOf`` the value stays as
        typed, and the trigger is refused, naming the parameter and its range.
        """
        if self.json_schema is not None:
            return json.loads(json.dumps(self.json_schema))  # a deep copy
        schema: dict[str, Any] = {"type": ["null", self.type] if self.nullable else self.type}
        for key, value in (("pattern", self.pattern), ("minLength", self.min_length)):
            if value is not None:
                schema[key] = value
        bounds = {key: value for key, value in (("minimum", self.minimum),
                                                ("maximum", self.maximum)) if value is not None}
        if bounds:
            schema["allOf"] = [bounds]
        if self.enum is not None:
            schema["enum"] = list(self.enum)
        return schema

    @property
    def section(self) -> str | None:
        """The trigger form's section of the parameter (None: the form's first, open one)."""
        return FORM_SECTIONS[self.group]

    @property
    def help(self) -> str:
        """The description, with the range when there is one: what the form shows."""
        if self.minimum is None or self.maximum is None:
            return self.description
        low, high = (f"{v:g}" for v in (self.minimum, self.maximum))
        kind = "A whole number" if self.type == "integer" else "A number"
        return (f"{self.description} {kind} from {low} to {high}; another value is refused "
                "when you trigger, and the first task checks it again.")


# The trigger form's sections, by group: Airflow shows the parameters without a section first,
# in its open "Run Parameters" section, and each section below it, collapsed until opened.
FORM_SECTIONS: dict[str, str | None] = {
    "training": None, "gating": "Gate", "data": "Data and store", "store": "Data and store",
    "approval": "Approval",
}


def _preset_line(name: str) -> str:
    """``fast_mlp (6 epochs, batch 512, learning rate 0.005): tuned for CPU time``."""
    preset = PRESETS[name]
    return (f"{name} ({preset['epochs']} epochs, batch {preset['batch_size']}, learning rate "
            f"{preset['learning_rate']:g}): {preset['description']}")


_OVERRIDE = "Unset (empty): the preset's (listed under Training preset)."
TRIGGER_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "preset", "string", TrainConfig.preset, "Training preset",
        "; ".join(_preset_line(name) for name in PRESETS) + ".",
        "training", enum=PRESET_NAMES, env="MNIST_PRESET",
    ),
    ParamSpec("epochs", "integer", None, "Epochs",
              f"Overrides the preset's number of epochs. {_OVERRIDE}", "training",
              nullable=True, minimum=1, maximum=1000),
    ParamSpec("batch_size", "integer", None, "Batch size",
              f"Overrides the preset's batch size. {_OVERRIDE}", "training",
              nullable=True, minimum=1, maximum=65536),
    ParamSpec("learning_rate", "number", None, "Learning rate",
              f"Overrides the preset's Adam learning rate. {_OVERRIDE}", "training",
              nullable=True, minimum=1e-6, maximum=1.0),
    ParamSpec("seed", "integer", TrainConfig.seed, "Seed",
              "Seeds the validation split, weight initialisation and shuffling.", "training",
              minimum=0, maximum=2**31 - 1),
    ParamSpec("force", "boolean", CheckConfig.force, "Retrain even if unchanged",
              "Retrain even when the champion was trained on exactly these inputs (dataset "
              "version, preprocessing, training config and code); off: such a run stops "
              "before training as UNCHANGED.", "training"),
    ParamSpec("min_accuracy", "number", GateConfig.min_accuracy, "Minimum test accuracy",
              "The gate rejects a model whose test accuracy is below this.", "gating",
              minimum=0.0, maximum=1.0),
    ParamSpec("champion_margin", "number", GateConfig.champion_margin, "Champion margin",
              "The gate rejects a model that is worse than the champion by more than this "
              "(absolute test accuracy).", "gating", minimum=0.0, maximum=1.0),
    ParamSpec("max_recall_drop", "number", GateConfig.max_recall_drop,
              "Max per-digit recall drop",
              "The gate rejects a model whose recall on any digit drops by more than this "
              "compared with the champion.", "gating", minimum=0.0, maximum=1.0),
    ParamSpec("fresh_drop_margin", "number", CheckConfig.fresh_drop_margin,
              "Fresh-data drop margin",
              "Before training, the champion is evaluated on each new increment's held-out "
              "part; a FRESH-DATA DROP warning is raised when its accuracy there is below its "
              "benchmark (test set) accuracy by more than this (absolute accuracy).", "gating",
              minimum=0.0, maximum=1.0),
    ParamSpec("source", "string", DEFAULT_SOURCE, "Data source",
              "Where the four MNIST IDX .gz files are: 'default' (the public mirrors), "
              "https:// prefix(es), s3://bucket/prefix, file:///path or a folder on the worker.",
              "data", min_length=1, env="MNIST_SOURCE"),
    ParamSpec("fail_on_quarantine", "boolean", IngestConfig.fail_on_quarantine,
              "Fail on a quarantined increment",
              "A quarantined increment (unreadable, bad labels, leaked test images, too few "
              "images) fails the run, naming it; off: a warning, and the run goes on without "
              "it.", "data"),
    ParamSpec("store", "string", DEFAULT_STORE, "Artifact store",
              "Where artifacts, cache and the model registry live: s3://bucket/prefix or "
              "file:///path (no '..' segments).", "store", pattern=STORE_PATTERN,
              env="MNIST_STORE"),
)

# -- Approval (issue 12): a person's decision between the gate and register ---------------------
APPROVAL_MODES: tuple[str, ...] = ("off", "borderline", "always")
TRIGGER_PARAMS += (
    ParamSpec("approval", "string", ApprovalConfig.mode, "Approval before promotion",
              "off: the gate decides alone. borderline: a person approves a promotion that "
              "is not clearly better than the champion (McNemar's test not significant, or any "
              "digit's recall drops). always: a person approves or rejects every gate decision, "
              "and may override a REJECT with a written reason. The request appears under "
              "Required actions; unanswered, it is rejected after the timeout.", "approval",
              enum=APPROVAL_MODES, env="MNIST_APPROVAL"),
    ParamSpec("approval_timeout_minutes", "number", ApprovalConfig.timeout_minutes,
              "Approval timeout (minutes)",
              "How long a request for approval waits for an answer; then it is rejected "
              "(nothing is promoted).", "approval", minimum=0.05, maximum=10080),
)

# -- Candidates (several training configurations in one run; docs/candidates.md) ----------------
# A run trains each candidate (the run's training parameters with the candidate's overrides),
# picks the best by validation accuracy (mnist_tasks.select) and sends only that one on to
# evaluate, gate and register. The default, one candidate without overrides, is a plain run.

CANDIDATE_FIELDS: tuple[str, ...] = ("preset", "seed", "learning_rate", "epochs", "batch_size")
MAX_CANDIDATES = 16


def _candidates_schema(specs: Mapping[str, ParamSpec]) -> dict[str, Any]:
    """The trigger form's schema of ``candidates``: a list of objects whose fields are the
    overridable training parameters (each with its parameter's range), a value or a list of
    values (a sweep)."""
    fields: dict[str, Any] = {}
    for name in CANDIDATE_FIELDS:
        scalar = {**specs[name].schema(), "type": specs[name].type}
        fields[name] = {"anyOf": [scalar, {"type": "array", "items": scalar, "minItems": 1,
                                           "maxItems": MAX_CANDIDATES}]}
    item = {"type": "object", "properties": fields, "additionalProperties": False}
    return {"type": "array", "items": item, "minItems": 1, "maxItems": MAX_CANDIDATES}


TRIGGER_PARAMS += (
    ParamSpec(
        "candidates", "array", [{}], "Candidates",
        "Train several candidates and keep the best by validation accuracy: a JSON list of "
        f"overrides of {', '.join(CANDIDATE_FIELDS)} (unset: the run's). A list as a value is "
        'a sweep: [{"seed": [1, 2]}] is two candidates. Default [{}]: one candidate, the '
        f"run's parameters. At most {MAX_CANDIDATES}.", "training",
        json_schema=_candidates_schema({s.name: s for s in TRIGGER_PARAMS}),
    ),
    ParamSpec("min_candidates", "integer", 1, "Minimum trained candidates",
              "The run goes on while at least this many candidates trained; a failed "
              "candidate is logged, naming it and why.", "training",
              minimum=1, maximum=MAX_CANDIDATES),
)
PARAM_SPECS: dict[str, ParamSpec] = {spec.name: spec for spec in TRIGGER_PARAMS}


@dataclass(frozen=True)
class Candidate:
    """One candidate of a run: its position, its overrides and the training config they give."""

    index: int
    overrides: Mapping[str, Any]  # the fields the candidate sets (after a sweep's expansion)
    train: TrainConfig

    @property
    def label(self) -> str:
        """``fast_mlp seed=2 learning_rate=0.005``: for logs, the report and the card."""
        sets = " ".join(f"{k}={v}" for k, v in self.overrides.items() if k != "preset")
        return self.train.preset + (f" {sets}" if sets else "")


def expand_candidates(value: Any) -> list[dict[str, Any]]:
    """The ``candidates`` trigger parameter as a list of override dicts, sweeps expanded.

    ``value`` is a list of objects (or one object: a list of one); a field given a list of
    values is a sweep: ``[{"seed": [1, 2], "learning_rate": [1e-3, 5e-3]}]`` is four
    candidates (the product, in the order of the fields, the last varying fastest). None or an
    empty list is one candidate without overrides.

    Raises:
        ConfigError: naming ``candidates[i].field`` (``i``: the position in ``value``) and the
            problem: an unknown field, a value out of the parameter's range, too many candidates.
    """
    import itertools

    if value is None or value == []:
        return [{}]
    items = [value] if isinstance(value, Mapping) else value
    check(isinstance(items, list), "candidates", value,
           "must be a list of objects, e.g. [{\"seed\": 1}, {\"learning_rate\": 0.005}]")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"candidates[{i}]"
        check(isinstance(item, Mapping), where, item,
               f"must be an object with some of {', '.join(CANDIDATE_FIELDS)}")
        axes: list[list[tuple[str, Any]]] = []
        for name, given in item.items():
            check(name in CANDIDATE_FIELDS, f"{where}.{name}", given,
                   f"is not a candidate field (one of {', '.join(CANDIDATE_FIELDS)})")
            values = given if isinstance(given, list) else [given]
            check(bool(values), f"{where}.{name}", given, "a sweep needs at least one value")
            for v in values:
                if name == "preset":
                    check(v in PRESETS, f"{where}.preset", v,
                           f"must be one of {', '.join(PRESET_NAMES)}")
                else:
                    _check_param(name, v, f"{where}.{name}")
            axes.append([(name, v) for v in values])
        for combo in itertools.product(*axes):
            out.append(dict(combo))
            check(len(out) <= MAX_CANDIDATES, "candidates", f"{len(out)}+ candidates",
                   f"at most {MAX_CANDIDATES} candidates (count a sweep's product)")
    return out


def build_candidates(value: Any, run_values: Mapping[str, Any], val_fraction: float
                     ) -> tuple[Candidate, ...]:
    """The run's candidates: each is the run's training parameters (``run_values``: preset and
    the overrides given, None for unset) with the candidate's overrides applied.

    All candidates share the run's validation split (``val_fraction`` and the run's ``seed``
    made it, in preprocess): a candidate's ``seed`` seeds its weights and shuffling only, so
    every candidate is measured on the same validation images.

    Raises:
        ConfigError: naming ``candidates[i]...`` and the problem.
    """
    out = []
    for index, overrides in enumerate(expand_candidates(value)):
        values = {**{k: v for k, v in run_values.items() if v is not None}, **overrides}
        preset = values.pop("preset", TrainConfig.preset)
        try:
            cfg = train_config(preset, **values, val_fraction=val_fraction)
        except ConfigError as exc:
            raise ConfigError(f"candidate {index} ({overrides}): {exc}") from None
        out.append(Candidate(index, dict(overrides), cfg))
    return tuple(out)


def check_trigger_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """The trigger's values, refusing every key that is not a field of the trigger form.

    Airflow merges a run's ``conf`` into its params without checking the keys, so this is
    where ``{"checksums": "off"}`` in a trigger is caught.

    Raises:
        ConfigError: naming all the unknown keys (and the variable of a deployment setting).
    """
    unknown = sorted(k for k in params if k not in PARAM_SPECS)
    if unknown:
        envs = {s.name: s.env for s in DEPLOYMENT_SETTINGS}
        fixed = [f"{k} is set by the deployment ({envs[k]})" for k in unknown if k in envs]
        raise ConfigError(
            f"unknown trigger parameter(s) {', '.join(map(repr, unknown))}: a trigger may set "
            f"only {', '.join(PARAM_SPECS)}" + (f"; {'; '.join(fixed)}" if fixed else "")
        )
    return dict(params)


def check_store_uri(store: Any, param: str = "store") -> None:
    """Check a store URI: s3://bucket[/prefix], file:///path or a folder, without '..' segments.

    A '..' would let a trigger point the store outside the tree it names
    (``file:///data/../../etc/x``); it is refused rather than normalised, so the store a run
    used is exactly the one written in its params. The same check guards every other place
    a command takes (a landing prefix, a data source: ``param`` names it in the message).

    Raises:
        ConfigError: naming ``param`` and the problem.
    """
    check(isinstance(store, str) and bool(store.strip()), param, store,
           "must be a URI: s3://bucket/prefix, file:///path or a folder")
    parsed = urlparse(store)
    path = parsed.path if parsed.scheme in ("s3", "file") else store
    for candidate in (path, unquote(path)):
        check(".." not in candidate.replace("\\", "/").split("/"), param, store,
               "must not contain '..' path segments: give the path without them")


def cli_location(value: str, param: str) -> str:
    """A store, landing prefix or data source given on a command line, checked: a relative
    folder is taken from the current directory (made absolute, as a shell user means it), and
    the result goes through :func:`check_store_uri` (no '..' segment, also percent-encoded).

    Returns:
        The value to use: ``value``, or the absolute folder for a relative one.

    Raises:
        ConfigError: naming ``param`` and the problem.
    """
    if isinstance(value, str) and value.strip() and "://" not in value \
            and value != DEFAULT_SOURCE and not os.path.isabs(value):
        value = os.path.abspath(value)
    check_store_uri(value, param)
    return value


_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._=@-]+")


def run_key(run_id: str) -> str:
    """A storage-safe key for an Airflow run id (``scheduled__2026-11-21T00:00:00+00:00``).

    Deterministic, so a retried task writes to the same place.
    """
    check(isinstance(run_id, str) and bool(run_id.strip()), "run_id", run_id,
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
    check: CheckConfig = field(default_factory=CheckConfig)
    approval: ApprovalConfig = field(default_factory=ApprovalConfig)
    # The run's candidates (empty: one, ``train``) and how many must train (docs/candidates.md).
    candidates: tuple[Candidate, ...] = ()
    min_candidates: int = 1

    @property
    def candidate_list(self) -> tuple[Candidate, ...]:
        """The candidates to train: ``candidates``, or the run's ``train`` config alone."""
        return self.candidates or (Candidate(0, {}, self.train),)

    def __post_init__(self) -> None:
        check_store_uri(self.store)
        check_number("min_candidates", self.min_candidates, 1, MAX_CANDIDATES, integer=True)
        check(self.min_candidates <= len(self.candidate_list), "min_candidates",
               self.min_candidates, f"more than the {len(self.candidate_list)} candidate(s)")
        check(isinstance(self.model_name, str)
               and bool(re.fullmatch(MODEL_NAME_PATTERN, self.model_name)),
               "model_name", self.model_name,
               "must be 1-63 lowercase letters, digits, '.', '_' or '-'")


# The flat parameter names pipeline_config takes: the trigger form's and the deployment's.
PIPELINE_PARAMS: tuple[str, ...] = (
    *PARAM_SPECS, *(setting.name for setting in DEPLOYMENT_SETTINGS)
)


def pipeline_config(params: Mapping[str, Any]) -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from flat params (DAG params or CLI flags).

    Missing or None values take the defaults (the preset's, for training fields).

    Raises:
        ConfigError: naming the first invalid parameter.
    """
    unknown = sorted(k for k in params if k not in PIPELINE_PARAMS)
    check(not unknown, ", ".join(unknown), None,
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
    run_values = {"preset": get("preset", "seed_mlp"), "epochs": get("epochs"),
                  "batch_size": get("batch_size"), "learning_rate": get("learning_rate"),
                  "seed": get("seed")}
    candidates = build_candidates(params.get("candidates"), run_values, train.val_fraction)
    return PipelineConfig(
        store=get("store", ""),
        ingest=IngestConfig(source=get("source", DEFAULT_SOURCE),
                            checksums=parse_checksums(get("checksums", "pinned")),
                            fail_on_quarantine=get("fail_on_quarantine", False)),
        preprocess=PreprocessConfig(val_fraction=train.val_fraction, seed=train.seed),
        train=train,
        gate=GateConfig(
            min_accuracy=get("min_accuracy", gate_defaults.min_accuracy),
            champion_margin=get("champion_margin", gate_defaults.champion_margin),
            max_recall_drop=get("max_recall_drop", gate_defaults.max_recall_drop),
        ),
        model_name=get("model_name", DEFAULT_MODEL_NAME),
        check=CheckConfig(
            force=get("force", CheckConfig.force),
            fresh_drop_margin=get("fresh_drop_margin", CheckConfig.fresh_drop_margin),
        ),
        approval=ApprovalConfig(
            mode=get("approval", ApprovalConfig.mode),
            timeout_minutes=get("approval_timeout_minutes", ApprovalConfig.timeout_minutes),
        ),
        candidates=candidates,
        min_candidates=get("min_candidates", 1),
    )
