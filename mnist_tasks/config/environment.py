"""The deployment's settings: every ``MNIST_*`` environment variable, declared and parsed here.

The environment is read only at the edges (the DAG glue and the CLI pass ``os.environ``);
what they read is parsed and validated here, as pure functions of the ``environ`` mapping they
are given, and a bad value raises a :class:`ConfigError` naming the variable::

    deployment_values(os.environ)         # {"checksums": "pinned", "model_name": ...}
    env_number(os.environ, "MNIST_WATCH_INTERVAL_MINUTES")          # 5
    landing_events(os.environ)             # the SQS queue URL, or None: poll
    scoring_config(os.environ, store_uri)  # a ScoringConfig from the MNIST_SCORING_* variables

:data:`DEPLOYMENT_SETTINGS` are the pipeline settings a trigger may not change;
:data:`ENV_SETTINGS` are the others (schedules, scoring, feedback, where tasks run). Together
with the trigger parameters' ``env`` defaults they are the README's deployment table, which a
test checks against them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mnist_tasks.config.checks import ConfigError, check, check_number
from mnist_tasks.config.policies import DEFAULT_MODEL_NAME, MODEL_NAME_PATTERN, ScoringConfig


@dataclass(frozen=True)
class DeploymentSetting:
    """A pipeline setting that a deployment fixes and a trigger may not change."""

    name: str  # the pipeline_config key (and the CLI's option, --name-with-dashes)
    env: str  # the environment variable the DAG reads (and the CLI's default)
    default: str
    description: str


DEPLOYMENT_SETTINGS: tuple[DeploymentSetting, ...] = (
    DeploymentSetting(
        "checksums", "MNIST_CHECKSUMS", "pinned",
        "'pinned' (MNIST's published payload SHA-256s), 'off' (accept any IDX data; logged and "
        "recorded) or @/path/to/file.json (a JSON object: file name -> payload SHA-256)",
    ),
    DeploymentSetting(
        "model_name", "MNIST_MODEL_NAME", DEFAULT_MODEL_NAME,
        "the registry's model name (1-63 lowercase letters, digits, '.', '_' or '-')",
    ),
)

# Cap on a JSON file given as @path (checksums, a stage's result): these are a few kB.
MAX_JSON_FILE_BYTES = 1 << 20


def read_json_file(path: str, param: str) -> Any:
    """The JSON value in the file at ``path`` (given as ``@path`` for ``param``).

    Raises:
        ConfigError: naming ``param`` and the file, when it cannot be read, is larger than
            :data:`MAX_JSON_FILE_BYTES` or is not JSON.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"parameter {param!r}: cannot read {path}: "
                          f"{exc.strerror or exc}") from None
    if len(data) > MAX_JSON_FILE_BYTES:
        raise ConfigError(f"parameter {param!r}: {path} is larger than "
                          f"{MAX_JSON_FILE_BYTES} bytes")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"parameter {param!r}: {path} is not JSON ({exc})") from None


def parse_checksums(value: str | Mapping[str, str], param: str = "checksums") -> Any:
    """``"pinned"``, ``"off"``, a mapping, or ``@path`` to a JSON object: what IngestConfig takes.

    Raises:
        ConfigError: naming ``param``, for any other value or an unreadable or non-object file.
    """
    if isinstance(value, Mapping):
        return dict(value)
    check(isinstance(value, str) and (value in ("pinned", "off") or value.startswith("@")),
           param, value, "must be 'pinned', 'off' or @/path/to/file.json")
    if value in ("pinned", "off"):
        return value
    obj = read_json_file(value[1:], param)
    check(isinstance(obj, dict), param, value,
           "the file must hold a JSON object: file name -> payload SHA-256")
    return obj


def deployment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The deployment settings from ``environ`` (the DAG passes ``os.environ``).

    Raises:
        ConfigError: naming the environment variable whose value is invalid.
    """
    checksums = parse_checksums(environ.get("MNIST_CHECKSUMS") or "pinned", "MNIST_CHECKSUMS")
    model_name = environ.get("MNIST_MODEL_NAME") or DEFAULT_MODEL_NAME
    check(bool(re.fullmatch(MODEL_NAME_PATTERN, model_name)), "MNIST_MODEL_NAME", model_name,
           "must be 1-63 lowercase letters, digits, '.', '_' or '-'")
    return {"checksums": checksums, "model_name": model_name}


@dataclass(frozen=True)
class EnvSetting:
    """An environment variable the deployment may set (besides :data:`DEPLOYMENT_SETTINGS`).

    ``kind`` (with ``minimum``/``maximum``) makes it a number that :func:`env_number` parses
    and checks; ``scoring_field`` names the :class:`ScoringConfig` field it sets.
    """

    env: str
    default: str  # as the README shows it
    description: str
    kind: type[int] | type[float] | None = None
    minimum: float | None = None
    maximum: float | None = None
    unit: str = ""  # what the number counts, for the message: "minutes", "seconds"
    scoring_field: str | None = None


def _minutes(env: str, what: str) -> EnvSetting:
    return EnvSetting(env, "5", f"how often {what}, in whole minutes (1 to 1440); read when the "
                      "DAG file is parsed", int, 1, 1440, "minutes")


def _scoring(env: str, field: str, kind: type[int] | type[float], description: str
             ) -> EnvSetting:
    default = {f.name: f.default for f in fields(ScoringConfig)}[field]
    return EnvSetting(env, str(default), description, kind, scoring_field=field)


ENV_SETTINGS: tuple[EnvSetting, ...] = (
    EnvSetting("MNIST_TRAINING_SCHEDULE", "@weekly",
               "the time part of mnist_training's schedule: cron or a preset, UTC; off: only "
               "when increments land"),
    _minutes("MNIST_WATCH_INTERVAL_MINUTES", "mnist_increments_watch lists the increments"),
    EnvSetting("MNIST_LANDING_EVENTS", "none",
               "sqs:<queue URL>: the watch and scoring wait for the buckets' _SUCCESS "
               "notifications on that SQS queue instead of polling; read when the DAG file is "
               "parsed"),
    EnvSetting("MNIST_RETRY_DELAY_SECONDS", "30",
               "every task's first retry delay (doubled on each further retry)", float, 1, 3600,
               "seconds"),
    EnvSetting("MNIST_DEADLINE_MARGIN_MINUTES", "60",
               "alert when a run exceeds its recent average runtime by this much; off: no alert"),
    EnvSetting("MNIST_S3_CONN_ID", "mnist_s3", "the Airflow connection with S3 credentials"),
    EnvSetting("MNIST_TRAIN_POOL", "default_pool", "the pool the train task runs in"),
    EnvSetting("MNIST_TRAIN_QUEUE", "default", "the queue the train task runs on"),
    EnvSetting("MNIST_NOTIFIER", "none",
               'an Airflow notifier for failures and warnings: {"class": ..., "kwargs": ...}'),
    EnvSetting("MNIST_SCORING_STORE", "MNIST_STORE",
               "the store the scoring DAG reads the registry from and writes to"),
    _minutes("MNIST_SCORING_INTERVAL_MINUTES", "the scoring DAG looks for new batches"),
    EnvSetting("MNIST_SCORING_LANDING", "<store>/landing", "where scoring batches land",
               scoring_field="landing"),
    _scoring("MNIST_SCORING_SHARD_SIZE", "shard_size", int, "images per scoring shard"),
    _scoring("MNIST_SCORING_RESCORE_WINDOW", "rescore_window", int,
             "how many recent batches a new champion scores again"),
    _scoring("MNIST_SCORING_CONFIDENCE_THRESHOLD", "confidence_threshold", float,
             "predictions below this top probability are counted as low-confidence"),
    _scoring("MNIST_SCORING_DIVERGENCE_THRESHOLD", "divergence_threshold", float,
             "a batch's predicted-class distance from the training prior that flags it"),
    _scoring("MNIST_SCORING_LABEL_QUEUE", "label_queue", int,
             "each batch's least confident images exported for labelling; 0: none"),
    EnvSetting("MNIST_REGISTRY", "store",
               "where the model registry lives: store (in MNIST_STORE) or mlflow+http://host:port "
               "(an MLflow server's registry; docs/registry.md)"),
    EnvSetting("MNIST_MLFLOW_TRACKING_URI", "off",
               "mlflow+http://host:port: each evaluated training run is also an MLflow run "
               "(params, per-epoch metrics, plots; a sweep's candidates as child runs), linked "
               "both ways with the Airflow run; an outage is a warning"),
    EnvSetting("MNIST_FEEDBACK_LANDING", "<scoring store>/feedback",
               "where the labels that come back land"),
    _minutes("MNIST_FEEDBACK_INTERVAL_MINUTES", "landed feedback is looked for"),
)
_ENV: dict[str, EnvSetting] = {s.env: s for s in ENV_SETTINGS}


def env_number(environ: Mapping[str, str], env: str) -> Any:
    """The number in the declared environment variable ``env`` (its default when unset or
    empty), of the setting's kind.

    Raises:
        ConfigError: naming the variable and its value, when it does not parse or is outside
            the setting's range (a DAG file that reads it at parse time fails to import).
    """
    setting = _ENV[env]
    assert setting.kind is not None and setting.minimum is not None
    text = environ.get(env, "").strip() or setting.default
    what = f"{'a whole number' if setting.kind is int else 'a number'} of {setting.unit}"
    try:
        value = setting.kind(text)
        check_number(env, value, setting.minimum, setting.maximum)
    except ValueError:  # a ConfigError is one
        raise ConfigError(f"{env}={text!r}: expected {what} from {setting.minimum:g} to "
                          f"{setting.maximum:g}") from None
    return value


def scoring_config(environ: Mapping[str, str], store_uri: str) -> ScoringConfig:
    """The scoring config from ``MNIST_MODEL_NAME``, ``MNIST_REGISTRY`` and the
    ``MNIST_SCORING_*`` variables of :data:`ENV_SETTINGS`; the landing prefix defaults to
    ``<store_uri>/landing``.

    Raises:
        ConfigError: naming the variable, for a value that does not parse or is out of range.
    """
    values: dict[str, Any] = {"landing": store_uri.rstrip("/") + "/landing",
                              "registry": registry_location(environ)}
    given: dict[str, str] = {}  # field -> the variable that set it
    sources = [("MNIST_MODEL_NAME", "model_name", str),
               *((s.env, s.scoring_field, s.kind or str) for s in ENV_SETTINGS
                 if s.scoring_field)]
    for env, name, kind in sources:
        text = environ.get(env, "").strip()
        if not text:
            continue
        try:
            values[name] = kind(text)
        except ValueError:
            raise ConfigError(f"{env}={text!r}: expected {kind.__name__}") from None
        given[name] = env
    try:
        return ScoringConfig(**values)
    except ConfigError as exc:
        where = f"{given[exc.param]}={environ[given[exc.param]].strip()!r}: " \
            if exc.param in given else ""
        raise ConfigError(f"{where}scoring setting {exc.param}={exc.value!r}: "
                          f"{exc.requirement}", exc.param, exc.value, exc.requirement) from None


_SQS_QUEUE_URL = re.compile(r"https?://[^/\s]+/[^\s]+")


def landing_events(environ: Mapping[str, str]) -> str | None:
    """The SQS queue URL of ``MNIST_LANDING_EVENTS=sqs:<queue URL>``; None when unset, empty or
    ``none`` (the watch and scoring poll, as they must for folders and MinIO).

    Raises:
        ConfigError: naming the variable, for any other value.
    """
    text = environ.get("MNIST_LANDING_EVENTS", "").strip()
    if text.lower() in ("", "none", "off"):
        return None
    scheme, _, queue = text.partition(":")
    if scheme.lower() != "sqs" or not _SQS_QUEUE_URL.fullmatch(queue):
        raise ConfigError(f"MNIST_LANDING_EVENTS={text!r}: expected sqs:<queue URL> (e.g. "
                          "sqs:https://sqs.eu-west-1.amazonaws.com/123456789012/mnist-landing) "
                          "or none")
    return queue


def feedback_landing(environ: Mapping[str, str], store_uri: str) -> str:
    """Where labels land: ``MNIST_FEEDBACK_LANDING``, else ``<store_uri>/feedback``."""
    return environ.get("MNIST_FEEDBACK_LANDING", "").strip() or store_uri.rstrip("/") + "/feedback"


def _mlflow_location(environ: Mapping[str, str], env: str, off: str) -> str | None:
    value = environ.get(env, "").strip()
    if value in ("", off):
        return None
    check(bool(re.fullmatch(r"mlflow\+https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", value)),
          env, value, f"must be '{off}' or mlflow+http://host:port")
    return value.rstrip("/")


def registry_location(environ: Mapping[str, str]) -> str | None:
    """``MNIST_REGISTRY``: None for the store-backed registry (unset, empty or ``store``), else
    the MLflow server's ``mlflow+http(s)://host:port``.

    Raises:
        ConfigError: naming ``MNIST_REGISTRY``, for any other value.
    """
    return _mlflow_location(environ, "MNIST_REGISTRY", "store")


def tracking_location(environ: Mapping[str, str]) -> str | None:
    """``MNIST_MLFLOW_TRACKING_URI``: the MLflow server the training runs are mirrored to, or
    None (unset, empty or ``off``).

    Raises:
        ConfigError: naming the variable, for a value that is not mlflow+http(s)://host:port.
    """
    return _mlflow_location(environ, "MNIST_MLFLOW_TRACKING_URI", "off")
