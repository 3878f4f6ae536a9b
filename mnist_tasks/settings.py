"""The settings the edges read from the environment: the CLIs, the DAG glue and the UI plugin.

The library takes its settings as arguments; an edge parses the environment once, here, and
passes the values on::

    settings = Settings.from_environ(os.environ)
    store = open_store(settings.store_or_default, client_kwargs=...)
    registry = open_registry(store, settings.model_name, settings.registry)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mnist_tasks.config import (
    DEFAULT_MODEL_NAME,
    DEFAULT_STORE,
    registry_location,
    tracking_location,
)

TRAINING_DAG_ID = "mnist_training"  # the DAG whose runs register models
REGISTRY_ASSET = "mnist_model_registry"  # the asset a register task (or promote/rollback) emits
DEFAULT_S3_CONN_ID = "mnist_s3"  # the Airflow connection with the store's S3 credentials


@dataclass(frozen=True)
class Settings:
    """The deployment's settings, each from one environment variable (named beside it)."""

    store: str | None = None  # MNIST_STORE: the artifact store (and the registry's)
    model_name: str = DEFAULT_MODEL_NAME  # MNIST_MODEL_NAME: the registry's model name
    s3_conn_id: str = DEFAULT_S3_CONN_ID  # MNIST_S3_CONN_ID: the Airflow connection for S3
    airflow_api_url: str | None = None  # MNIST_AIRFLOW_API_URL: for registry --notify-airflow
    airflow_token: str | None = None  # MNIST_AIRFLOW_TOKEN
    airflow_username: str | None = None  # MNIST_AIRFLOW_USERNAME (when there is no token)
    airflow_password: str | None = None  # MNIST_AIRFLOW_PASSWORD
    registry: str | None = None  # MNIST_REGISTRY: an MLflow server's registry (None: the store's)
    mlflow_tracking: str | None = None  # MNIST_MLFLOW_TRACKING_URI: the runs' mirror (None: off)

    @property
    def store_or_default(self) -> str:
        """``MNIST_STORE``, else the DAG's default store."""
        return self.store or DEFAULT_STORE

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings in ``environ`` (an edge passes ``os.environ``); empty means unset."""
        return cls(
            store=environ.get("MNIST_STORE") or None,
            model_name=environ.get("MNIST_MODEL_NAME") or DEFAULT_MODEL_NAME,
            registry=registry_location(environ),
            mlflow_tracking=tracking_location(environ),
            s3_conn_id=environ.get("MNIST_S3_CONN_ID") or DEFAULT_S3_CONN_ID,
            airflow_api_url=environ.get("MNIST_AIRFLOW_API_URL") or None,
            airflow_token=environ.get("MNIST_AIRFLOW_TOKEN") or None,
            airflow_username=environ.get("MNIST_AIRFLOW_USERNAME") or None,
            airflow_password=environ.get("MNIST_AIRFLOW_PASSWORD") or None,
        )


def s3_client_kwargs(
    login: str | None, password: str | None, host: str | None, extra: Mapping[str, Any]
) -> dict[str, Any] | None:
    """boto3 arguments from an S3 connection's fields: login = access key, password = secret
    key, extra ``endpoint_url`` (or the host) and ``region_name``; None when it sets none."""
    kwargs: dict[str, Any] = {}
    if login:
        kwargs["aws_access_key_id"] = login
    if password:
        kwargs["aws_secret_access_key"] = password
    endpoint = extra.get("endpoint_url") or host or None
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if extra.get("region_name"):
        kwargs["region_name"] = extra["region_name"]
    return kwargs or None
