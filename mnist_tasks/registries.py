"""Which registry backend a deployment uses: ``MNIST_REGISTRY`` picks it, one call opens it.

Unset (or ``store``), versions and aliases live in the store (:class:`~mnist_tasks.registry.
Registry`); ``mlflow+http://host:port``, in an MLflow server's registry
(:class:`~mnist_tasks.registry_mlflow.MlflowRegistry`)::

    registry = open_registry(store, "mnist-classifier")          # the store's
    registry = open_registry(None, "mnist-classifier", "mlflow+http://mlflow:5000")
    registry = open_registry(store, settings.model_name, settings.registry)  # MNIST_REGISTRY

Every process that reaches the registry (the tasks, the scoring and feedback DAGs, the Models
page, the CLI) must agree on it: each edge reads ``MNIST_REGISTRY`` once through
:class:`~mnist_tasks.settings.Settings` (or :func:`~mnist_tasks.config.scoring_config`) and
passes it on (``Pipeline(registry=...)``, ``ScoringConfig.registry``, ``FeedbackConfig.registry``).
"""

from __future__ import annotations

from mnist_tasks.registry_api import ModelRegistry
from mnist_tasks.storage import Store


def open_registry(
    store: Store | None, model_name: str, location: str | None = None
) -> ModelRegistry:
    """The registry of ``model_name``.

    Args:
        store: where the store-backed registry lives (unused for MLflow).
        model_name: the registered model's name.
        location: an MLflow server (``mlflow+http://host:port``: ``Settings.registry``), or
            None (default) for the store's.

    Raises:
        ValueError: no store for a store-backed one; a location that is no MLflow server.
    """
    if location:
        from mnist_tasks.registry_mlflow import MlflowRegistry

        return MlflowRegistry(location, model_name)
    if store is None:
        raise ValueError("the store-backed registry needs a store: pass --store URI or set "
                         "MNIST_STORE (or MNIST_REGISTRY=mlflow+http://host:port)")
    from mnist_tasks.registry import Registry

    return Registry(store, model_name)
