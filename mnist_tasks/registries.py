"""Which registry backend a deployment uses: ``MNIST_REGISTRY`` picks it, one call opens it.

Unset (or ``store``), versions and aliases live in the store (:class:`~mnist_tasks.registry.
Registry`); ``mlflow+http://host:port``, in an MLflow server's registry
(:class:`~mnist_tasks.registry_mlflow.MlflowRegistry`)::

    registry = open_registry(store, "mnist-classifier")          # as MNIST_REGISTRY says
    registry = open_registry(None, "mnist-classifier", "mlflow+http://mlflow:5000")

Every process that reaches the registry (the tasks, the scoring and feedback DAGs, the Models
page, the CLI) must agree on it, like on the S3 endpoint boto3 reads from the environment: so
with no ``location`` given it is read here, once per call, from the deployment's environment
through :class:`~mnist_tasks.settings.Settings`, not threaded through every stage's config.
"""

from __future__ import annotations

import os
from types import EllipsisType

from mnist_tasks.registry_api import ModelRegistry
from mnist_tasks.settings import Settings
from mnist_tasks.storage import Store


def open_registry(
    store: Store | None, model_name: str, location: str | EllipsisType | None = ...
) -> ModelRegistry:
    """The registry of ``model_name``.

    Args:
        store: where the store-backed registry lives (unused for MLflow).
        model_name: the registered model's name.
        location: an MLflow server (``mlflow+http://host:port``), None for the store, or
            ``...`` (default): ``MNIST_REGISTRY`` from the environment.

    Raises:
        ConfigError: for a bad ``MNIST_REGISTRY``; ValueError: no store for a store-backed one.
    """
    if location is ...:
        location = Settings.from_environ(os.environ).registry
    if isinstance(location, str) and location:
        from mnist_tasks.registry_mlflow import MlflowRegistry

        return MlflowRegistry(location, model_name)
    if store is None:
        raise ValueError("the store-backed registry needs a store: pass --store URI or set "
                         "MNIST_STORE (or MNIST_REGISTRY=mlflow+http://host:port)")
    from mnist_tasks.registry import Registry

    return Registry(store, model_name)
