"""
### MNIST retraining

Weekly retraining of the MNIST digit classifier:
**ingest** (four IDX files, verified, validated, cached) → **preprocess** (float32 in [0, 1],
seeded validation split) → **train** (Keras 3, a preset) → **evaluate** (metrics, per-digit
report, plots) → **gate** (threshold, champion comparison with McNemar's test, per-digit
recall) → **register** (an immutable version in the model registry; champion alias moved).

The gate short-circuits registration: a rejected model is never registered.

Trigger it from the UI with the form, or from the CLI:
`airflow dags trigger mnist_training --conf '{"preset": "fast_mlp"}'`.

Deployment settings (environment variables read when the file is parsed):
`MNIST_STORE` (default store URI), `MNIST_SOURCE` (default data source),
`MNIST_S3_CONN_ID` (Airflow connection with S3 credentials/endpoint, default `mnist_s3`;
the standard AWS configuration is used when it does not exist),
`MNIST_TRAIN_POOL` / `MNIST_TRAIN_QUEUE` (where the train task runs, default `default_pool` /
`default`; set `gpu` / `gpu` on a deployment with a GPU worker),
`MNIST_DEADLINE_MARGIN_MINUTES` (alert when a run exceeds its recent average runtime by this
much, default 60; `off` disables it, which `airflow dags test` needs on Airflow 3.3.2, whose
test loop cannot load deadline alerts: apache/airflow#73428),
`MNIST_NOTIFIER` (optional JSON `{"class": "dotted.path.Notifier", "kwargs": {...}}`: an Airflow
notifier called on failure and on a gate rejection, e.g. the SMTP or Slack provider's).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import (
    Asset,
    AsyncCallback,
    DeadlineAlert,
    DeadlineReference,
    Param,
    dag,
    get_current_context,
    task,
)

log = logging.getLogger("mnist_training")

DAG_ID = "mnist_training"
DEFAULT_STORE = os.environ.get("MNIST_STORE", "file:///tmp/mnist-store")
DEFAULT_SOURCE = os.environ.get("MNIST_SOURCE", "default")
S3_CONN_ID = os.environ.get("MNIST_S3_CONN_ID", "mnist_s3")
TRAIN_POOL = os.environ.get("MNIST_TRAIN_POOL", "default_pool")
TRAIN_QUEUE = os.environ.get("MNIST_TRAIN_QUEUE", "default")
NOTIFIER = os.environ.get("MNIST_NOTIFIER", "")
DEADLINE_MARGIN = os.environ.get("MNIST_DEADLINE_MARGIN_MINUTES", "60")

# The train task's key in Airflow's task state store (shared by its retries): the last
# checkpointed epoch, for the log of a retry and a cross-check of the resume.
TRAIN_PROGRESS_KEY = "train_progress"

# Downstream DAGs can schedule on new model versions: `schedule=[MODEL_REGISTRY]`.
MODEL_REGISTRY = Asset(name="mnist_model_registry", uri="mnist://registry/mnist-classifier")

PARAMS = {
    "preset": Param(
        "seed_mlp",
        enum=["seed_mlp", "seed_wide_mlp", "fast_mlp", "cnn"],
        title="Training preset",
        description="seed_mlp: the first notebook's 784-128-64-10 MLP. seed_wide_mlp: the second "
        "notebook's 784-512-10 MLP with L2 and early stopping. fast_mlp: tuned for CPU time. "
        "cnn: a small convnet with augmentation (best accuracy).",
    ),
    "epochs": Param(
        None, type=["null", "integer"], minimum=1, maximum=1000, title="Epochs",
        description="Overrides the preset's number of epochs. Empty: the preset's.",
    ),
    "batch_size": Param(
        None, type=["null", "integer"], minimum=1, maximum=65536, title="Batch size",
        description="Overrides the preset's batch size. Empty: the preset's.",
    ),
    "learning_rate": Param(
        None, type=["null", "number"], minimum=0.000001, maximum=1.0, title="Learning rate",
        description="Overrides the preset's Adam learning rate. Empty: the preset's.",
    ),
    "seed": Param(
        42, type="integer", minimum=0, maximum=2**31 - 1, title="Seed",
        description="Seeds the validation split, weight initialisation and shuffling.",
    ),
    "min_accuracy": Param(
        0.97, type="number", minimum=0.0, maximum=1.0, title="Minimum test accuracy",
        description="The gate rejects a model whose test accuracy is below this.",
    ),
    "champion_margin": Param(
        0.002, type="number", minimum=0.0, maximum=1.0, title="Champion margin",
        description="The gate rejects a model that is worse than the champion by more than this "
        "(absolute test accuracy).",
    ),
    "max_recall_drop": Param(
        0.01, type="number", minimum=0.0, maximum=1.0, title="Max per-digit recall drop",
        description="The gate rejects a model whose recall on any digit drops by more than this "
        "compared with the champion.",
    ),
    "source": Param(
        DEFAULT_SOURCE, type="string", minLength=1, title="Data source",
        description="Where the four MNIST IDX .gz files are: 'default' (the public mirrors), "
        "https:// prefix(es), s3://bucket/prefix, file:///path or a folder on the worker.",
    ),
    "store": Param(
        DEFAULT_STORE, type="string", pattern=r"^(s3://[a-z0-9][a-z0-9.-]+[a-z0-9](/.*)?|file:///.+|/.+)$",
        title="Artifact store",
        description="Where artifacts, cache and the model registry live: s3://bucket/prefix or "
        "file:///path.",
    ),
}

def _notify(context: Any, message: str) -> None:
    """Log ``message`` and, when MNIST_NOTIFIER is set, send it through that Airflow notifier."""
    log.error("%s", message)
    if not NOTIFIER:
        return
    from airflow.sdk.module_loading import import_string

    spec = json.loads(NOTIFIER)
    notifier = import_string(spec["class"])(**spec.get("kwargs", {}))
    context["mnist_alert"] = message  # templates in the notifier's kwargs can use it
    notifier(context)


def on_failure(context: Any) -> None:
    """A clear, single-paragraph summary of what failed, for the log and the notifier."""
    ti = context["ti"]
    error = context.get("exception")
    _notify(
        context,
        f"ALERT {ti.dag_id} run {ti.run_id}: task {ti.task_id} failed on try {ti.try_number} "
        f"with {type(error).__name__ if error else 'an error'}: {error}",
    )


def _freeze_long_lived_objects() -> None:
    """Collect once, then move every live object out of the cyclic GC's reach (``gc.freeze``).

    A task process holds ~1M long-lived objects (Airflow's task runner, and TensorFlow's once a
    stage imported it). Without this, each full collection rescans them all (0.3-0.9 s, a dozen
    times in an `airflow dags test` run, plus the interpreter's teardown): measured 1.5-3 s of a
    ~27 s run (docs/benchmarks.md). Collecting first means no garbage is frozen.
    """
    gc.collect()
    gc.freeze()


def _run_stage(name: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run a library stage inside a collapsible log group, then log one summary line."""
    start = time.perf_counter()
    _freeze_long_lived_objects()
    log.info("::group::%s: details", name)
    try:
        result = fn(*args)
    finally:
        log.info("::endgroup::")
    # Scalars only, and of the URIs only the model's: the details are in the group above.
    brief = ", ".join(
        f"{k}={v}"
        for k, v in result.items()
        if isinstance(v, str | int | float)
        and (k == "model_uri" or not k.endswith(("_uri", "_key")))
    )
    log.info("SUMMARY %s finished in %.1f s: %s", name, time.perf_counter() - start, brief)
    return result


def _pipeline() -> Any:
    """The library's Pipeline for the running task: params → validated config, run id, S3 creds."""
    from mnist_tasks.config import PIPELINE_PARAMS, pipeline_config
    from mnist_tasks.pipeline import Pipeline

    ctx = get_current_context()
    params = {k: v for k, v in ctx["params"].items() if k in PIPELINE_PARAMS}
    return Pipeline(
        pipeline_config(params),
        run_id=ctx["run_id"],
        dag_id=ctx["dag"].dag_id,
        s3_client_kwargs=_s3_client_kwargs(),
    )


def _s3_client_kwargs() -> dict[str, Any] | None:
    """boto3 arguments from the Airflow connection, if one is defined (secrets stay masked)."""
    from airflow.sdk import Connection
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = Connection.get(S3_CONN_ID)
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


def _deadline_alert() -> DeadlineAlert | None:
    """Alert when a run takes far longer than usual: the margin beyond the recent average."""
    if DEADLINE_MARGIN.strip().lower() in ("", "0", "off", "none"):
        return None
    try:
        minutes = float(DEADLINE_MARGIN)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(
            f"MNIST_DEADLINE_MARGIN_MINUTES={DEADLINE_MARGIN!r}: expected a positive number of "
            "minutes, or 'off'"
        )
    return DeadlineAlert(
        reference=DeadlineReference.AVERAGE_RUNTIME(max_runs=10, min_runs=3),
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback("mnist_tasks.alerts.deadline_missed", kwargs={"dag_id": DAG_ID}),
    )


# Retries with exponential backoff and a timeout on every task; train overrides its own.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
    "on_failure_callback": on_failure,
}


@dag(
    dag_id=DAG_ID,
    schedule="@weekly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["mnist", "ml", "retraining"],
    doc_md=__doc__,
    deadline=_deadline_alert(),
)
def mnist_training() -> None:
    @task
    def ingest() -> dict[str, Any]:
        return _run_stage("ingest", _pipeline().ingest)

    @task
    def preprocess(ingested: dict[str, Any]) -> dict[str, Any]:
        return _run_stage("preprocess", _pipeline().preprocess, ingested)

    @task(pool=TRAIN_POOL, queue=TRAIN_QUEUE, execution_timeout=timedelta(hours=6))
    def train(prepared: dict[str, Any]) -> dict[str, Any]:
        """Each checkpoint is noted in the task state store, which retries share; a retry
        resumes from the store's checkpoint and checks it against that note."""
        ctx = get_current_context()
        state = ctx.get("task_state_store")
        previous = state.get(TRAIN_PROGRESS_KEY) if state is not None else None
        previous = previous if isinstance(previous, dict) else None
        if previous:
            log.info("try %s: the previous try checkpointed epoch %s of %s at %s (%s)",
                     ctx["ti"].try_number, previous.get("epoch"), previous.get("epochs"),
                     previous.get("saved_at"), previous.get("checkpoint_uri"))
        note = functools.partial(state.set, TRAIN_PROGRESS_KEY) if state is not None else None
        stage = functools.partial(_pipeline().train, on_checkpoint=note, previous=previous)
        return _run_stage("train", stage, prepared)

    @task
    def evaluate(prepared: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
        return _run_stage("evaluate", _pipeline().evaluate, prepared, trained)

    @task.short_circuit
    def gate(prepared: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any] | bool:
        """PROMOTE passes the decision on; REJECT returns False and skips register."""
        decision = _run_stage("gate", _pipeline().gate, prepared, evaluation)
        if decision["decision"] == "PROMOTE":
            return decision
        ctx = get_current_context()
        _notify(
            ctx,
            f"ALERT {ctx['dag'].dag_id} run {ctx['run_id']}: gate REJECTED the model "
            f"(test accuracy {evaluation['test_accuracy']:.4f}): "
            + "; ".join(decision.get("reasons", [])),
        )
        return False

    @task(outlets=[MODEL_REGISTRY])
    def register(
        prepared: dict[str, Any],
        trained: dict[str, Any],
        evaluation: dict[str, Any],
        decision: dict[str, Any],
    ) -> dict[str, Any]:
        pipe = _pipeline()
        result = _run_stage("register", pipe.register, prepared, trained, evaluation, decision)
        # The asset event tells downstream DAGs which version is new and how good it is.
        get_current_context()["outlet_events"][MODEL_REGISTRY].extra = {
            k: result[k] for k in ("version", "test_accuracy", "model_uri") if k in result
        }
        return result

    ingested = ingest()
    prepared = preprocess(ingested)
    trained = train(prepared)
    evaluation = evaluate(prepared, trained)
    decision = gate(prepared, evaluation)
    register(prepared, trained, evaluation, decision)


mnist_training()
