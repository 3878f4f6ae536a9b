"""What every MNIST DAG shares: the DAG ids and assets, the trigger form and the run's config,
the S3 credentials from the Airflow connection, the notifier, and every task's defaults.

The trigger form's ``Param``s are generated from ``mnist_tasks.config``; the deployment settings
are read from the environment (``MNIST_*``: the README's deployment table).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, Param
from airflow.sdk import get_current_context as _context

from mnist_tasks.config import TRIGGER_PARAMS, env_number

if TYPE_CHECKING:
    from mnist_tasks.config import ParamSpec, PipelineConfig
    from mnist_tasks.pipeline import Pipeline
    from mnist_tasks.settings import Settings

log = logging.getLogger("mnist_training")

DAG_ID = "mnist_training"
WATCH_DAG_ID = "mnist_increments_watch"
SCORING_DAG_ID = "mnist_batch_scoring"
FEEDBACK_DAG_ID = "mnist_feedback"

# Downstream DAGs can schedule on new model versions: `schedule=[MODEL_REGISTRY]`.
MODEL_REGISTRY = Asset(name="mnist_model_registry", uri="mnist://registry/mnist-classifier")
# New labeled increments landed in the source: the watch DAG's `land` task emits its events
# (extra: {"increments": [ids], "source": ...}); the training DAG is scheduled on it.
MNIST_INCREMENTS = Asset(name="mnist_increments", uri="mnist://increments")

# Landed scoring batches, announced once each: the watch DAG's `land_batches` task emits its
# events (extra: {"batches": [ids], "landing": ...}) in events mode (MNIST_LANDING_EVENTS), and
# the scoring DAG is then scheduled on it instead of its interval.
LANDED_BATCHES = Asset(name="mnist_landed_batches", uri="mnist://landing/batches")

# An event whenever a model's health needs attention: a scored batch's drift ALARM or a live
# accuracy ALARM from feedback; other DAGs (or a notifier) can be scheduled on it.
MODEL_HEALTH = Asset(name="mnist_model_health", uri="mnist://health/mnist-classifier")


def form_default(spec: ParamSpec, environ: Mapping[str, str] = os.environ) -> Any:
    """A trigger parameter's default: its ``env`` variable's value when set, else the spec's.

    Raises:
        ValueError: naming the variable, for a value outside the parameter's choices (the DAG
            file then fails to import, with this message).
    """
    value = (environ.get(spec.env, "").strip() if spec.env else "") or spec.default
    if spec.env and spec.enum is not None and value not in spec.enum:
        raise ValueError(f"{spec.env}={value!r}: expected one of {', '.join(spec.enum)}")
    return value


def trigger_params(environ: Mapping[str, str] = os.environ) -> dict[str, Param]:
    """The trigger form: one ``Param`` per ``mnist_tasks.config.TRIGGER_PARAMS`` entry.

    A parameter with an ``env`` (store, source) takes that variable's value as its default.
    """
    params: dict[str, Param] = {}
    for spec in TRIGGER_PARAMS:
        section = {"section": spec.section} if spec.section else {}
        params[spec.name] = Param(
            form_default(spec, environ), description=spec.help, title=spec.title,
            **section, **spec.schema(),
        )
    return params


def pipeline_config(params: Mapping[str, Any], environ: Mapping[str, str] = os.environ
                    ) -> PipelineConfig:
    """The run's config: the trigger's params plus the deployment settings from ``environ``.

    Airflow merges a run's ``conf`` into ``params`` without checking its keys, so a key that is
    not on the form (``checksums``, ``model_name``, a typo) is refused here, in the first task.

    Raises:
        AirflowFailException: (no retry: a retry cannot fix it) naming the bad keys or value.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks import config

    try:
        values = config.check_trigger_params(params)
        return config.pipeline_config({**values, **config.deployment_values(environ)})
    except config.ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


def deployment_settings(environ: Mapping[str, str] = os.environ) -> Settings:
    """The deployment's settings (``MNIST_REGISTRY``, ``MNIST_MLFLOW_TRACKING_URI``, ...) that
    the task hands to the library.

    Raises:
        AirflowFailException: (no retry) naming the variable with a bad value.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.config import ConfigError
    from mnist_tasks.settings import Settings

    try:
        return Settings.from_environ(environ)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from None


def airflow_run_url(dag_id: str, run_id: str, settings: Settings) -> str | None:
    """The Airflow UI's page of a run, for links from outside Airflow (the MLflow mirror):
    under Airflow's ``[api] base_url``, else ``MNIST_AIRFLOW_API_URL``; None without either
    (a root-relative link means nothing in another application)."""
    from urllib.parse import quote

    from airflow.configuration import conf

    base = (conf.get("api", "base_url", fallback="") or settings.airflow_api_url or "")
    if not base.startswith(("http://", "https://")):
        return None
    return f"{base.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}"


def pipeline() -> Pipeline:
    """The library's Pipeline for the running task: its config, run id and S3 credentials."""
    from mnist_tasks.pipeline import Pipeline

    ctx = _context()
    settings = deployment_settings()
    return Pipeline(
        pipeline_config(ctx["params"]),
        run_id=ctx["run_id"],
        dag_id=ctx["dag"].dag_id,
        s3_client_kwargs=s3_client_kwargs(),
        registry=settings.registry,
        mlflow_tracking=settings.mlflow_tracking,
        airflow_run_url=airflow_run_url(ctx["dag"].dag_id, ctx["run_id"], settings)
        if settings.mlflow_tracking else None,
    )


def s3_client_kwargs() -> dict[str, Any] | None:
    """boto3 arguments from the Airflow connection ``MNIST_S3_CONN_ID`` (default ``mnist_s3``).

    login = access key, password = secret key, extra ``endpoint_url`` (or the host) and
    ``region_name``. None when the connection does not exist: boto3's standard configuration.
    Works in a task (through the supervisor) and in the API server (the metadata database).
    """
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(os.environ.get("MNIST_S3_CONN_ID", "mnist_s3"))
    except AirflowNotFoundException:
        return None
    extra = conn.extra_dejson
    kwargs: dict[str, Any] = {}
    if conn.login:
        kwargs["aws_access_key_id"] = conn.login
    if conn.password:
        kwargs["aws_secret_access_key"] = conn.password
    endpoint = extra.get("endpoint_url") or (conn.host if conn.host else None)
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if extra.get("region_name"):
        kwargs["region_name"] = extra["region_name"]
    return kwargs or None


def notify(context: Any, message: str, level: int = logging.ERROR) -> None:
    """Log ``message`` (at ``level``) and, when MNIST_NOTIFIER is set, send it through that
    Airflow notifier.

    MNIST_NOTIFIER: ``{"class": "dotted.path.Notifier", "kwargs": {...}}``, e.g. the SMTP or
    Slack provider's notifier; its templates can use ``{{ mnist_alert }}``.
    """
    log.log(level, "%s", message)
    spec_text = os.environ.get("MNIST_NOTIFIER", "")
    if not spec_text:
        return
    from airflow.sdk.module_loading import import_string

    spec = json.loads(spec_text)
    notifier = import_string(spec["class"])(**spec.get("kwargs", {}))
    context["mnist_alert"] = message
    notifier(context)


def on_failure(context: Any) -> None:
    """A clear, single-paragraph summary of what failed, for the log and the notifier."""
    ti = context["ti"]
    error = context.get("exception")
    notify(
        context,
        f"ALERT {ti.dag_id} run {ti.run_id}: task {ti.task_id} failed on try {ti.try_number} "
        f"with {type(error).__name__ if error else 'an error'}: {error}",
    )


def retry_delay_seconds(environ: Mapping[str, str] = os.environ) -> float:
    """The first retry's delay: MNIST_RETRY_DELAY_SECONDS (default 30; doubled on each retry).

    Raises:
        ValueError: naming the variable, for a value that is not a number from 1 to 3600.
    """
    return float(env_number(environ, "MNIST_RETRY_DELAY_SECONDS"))


def default_args(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Every task's defaults: retries with exponential backoff from MNIST_RETRY_DELAY_SECONDS, a
    timeout (train overrides its own), the failure notification, and no dump of a task's
    return value in its log (the stage wrapper's SUMMARY line says what matters)."""
    return {
        "show_return_value_in_logs": False,
        "owner": "ml-platform",
        "retries": 2,
        "retry_delay": timedelta(seconds=retry_delay_seconds(environ)),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "execution_timeout": timedelta(minutes=30),
        "on_failure_callback": on_failure,
    }

