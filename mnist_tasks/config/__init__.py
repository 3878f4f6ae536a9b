"""Typed, frozen configuration for every stage, and the training presets.

Configs are built at the edges (CLI, DAG task) from plain values and validated here, so a bad
value fails early with a message that names the parameter. Library functions take these
objects; they never read Airflow Variables or environment variables themselves.

The package is the one home of configuration, every public name importable from here:
:mod:`.stages` the stage configs and the presets, :mod:`.params` the trigger parameters (one
definition for the form, the CLI and the ranges), :mod:`.policies` the increment checks,
monitoring, scoring and feedback, :mod:`.checks` the one validator, :mod:`.environment` every
``MNIST_*`` setting; this module, a run's whole config (:func:`pipeline_config`).

This package is cheap to import (no numpy, no TensorFlow): the DAG file uses it at parse time
to build its params.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The validator and the configs of the other stages live in submodules; imported here (as
# explicit re-exports) so that every config is ``from mnist_tasks.config import X``.
from mnist_tasks.config.checks import ConfigError as ConfigError
from mnist_tasks.config.checks import check as check
from mnist_tasks.config.checks import check_bool as check_bool
from mnist_tasks.config.checks import check_number as check_number
from mnist_tasks.config.environment import DEPLOYMENT_SETTINGS as DEPLOYMENT_SETTINGS
from mnist_tasks.config.environment import ENV_SETTINGS as ENV_SETTINGS
from mnist_tasks.config.environment import MAX_JSON_FILE_BYTES as MAX_JSON_FILE_BYTES
from mnist_tasks.config.environment import DeploymentSetting as DeploymentSetting
from mnist_tasks.config.environment import EnvSetting as EnvSetting
from mnist_tasks.config.environment import deployment_values as deployment_values
from mnist_tasks.config.environment import env_number as env_number
from mnist_tasks.config.environment import feedback_landing as feedback_landing
from mnist_tasks.config.environment import landing_events as landing_events
from mnist_tasks.config.environment import parse_checksums as parse_checksums
from mnist_tasks.config.environment import read_json_file as read_json_file
from mnist_tasks.config.environment import registry_location as registry_location
from mnist_tasks.config.environment import scoring_config as scoring_config
from mnist_tasks.config.environment import tracking_location as tracking_location
from mnist_tasks.config.params import CANDIDATE_FIELDS as CANDIDATE_FIELDS
from mnist_tasks.config.params import FORM_SECTIONS as FORM_SECTIONS
from mnist_tasks.config.params import MAX_CANDIDATES as MAX_CANDIDATES
from mnist_tasks.config.params import PARAM_SPECS as PARAM_SPECS
from mnist_tasks.config.params import STORE_PATTERN as STORE_PATTERN
from mnist_tasks.config.params import TRIGGER_PARAMS as TRIGGER_PARAMS
from mnist_tasks.config.params import Candidate as Candidate
from mnist_tasks.config.params import ParamSpec as ParamSpec
from mnist_tasks.config.params import build_candidates as build_candidates
from mnist_tasks.config.params import check_param as check_param
from mnist_tasks.config.params import check_store_uri as check_store_uri
from mnist_tasks.config.params import check_trigger_params as check_trigger_params
from mnist_tasks.config.params import cli_location as cli_location
from mnist_tasks.config.params import expand_candidates as expand_candidates
from mnist_tasks.config.policies import DEFAULT_MODEL_NAME as DEFAULT_MODEL_NAME
from mnist_tasks.config.policies import MAX_IMAGES as MAX_IMAGES
from mnist_tasks.config.policies import MODEL_NAME_PATTERN as MODEL_NAME_PATTERN
from mnist_tasks.config.policies import MONITOR_LIMIT_FIELDS as MONITOR_LIMIT_FIELDS
from mnist_tasks.config.policies import FeedbackConfig as FeedbackConfig
from mnist_tasks.config.policies import IncrementPolicy as IncrementPolicy
from mnist_tasks.config.policies import MonitorPolicy as MonitorPolicy
from mnist_tasks.config.policies import ScoringConfig as ScoringConfig
from mnist_tasks.config.stages import APPROVAL_MODES as APPROVAL_MODES
from mnist_tasks.config.stages import DEFAULT_SOURCE as DEFAULT_SOURCE
from mnist_tasks.config.stages import DEFAULT_STORE as DEFAULT_STORE
from mnist_tasks.config.stages import MNIST_FILES as MNIST_FILES
from mnist_tasks.config.stages import MNIST_MIRRORS as MNIST_MIRRORS
from mnist_tasks.config.stages import MNIST_PAYLOAD_SHA256 as MNIST_PAYLOAD_SHA256
from mnist_tasks.config.stages import PRESET_NAMES as PRESET_NAMES
from mnist_tasks.config.stages import PRESETS as PRESETS
from mnist_tasks.config.stages import ApprovalConfig as ApprovalConfig
from mnist_tasks.config.stages import CheckConfig as CheckConfig
from mnist_tasks.config.stages import GateConfig as GateConfig
from mnist_tasks.config.stages import IngestConfig as IngestConfig
from mnist_tasks.config.stages import PreprocessConfig as PreprocessConfig
from mnist_tasks.config.stages import TrainConfig as TrainConfig
from mnist_tasks.config.stages import ValidationThresholds as ValidationThresholds
from mnist_tasks.config.stages import train_config as train_config

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
