"""The tracking mirror: each evaluated training run is also an MLflow run, whichever registry.

With ``MNIST_MLFLOW_TRACKING_URI=mlflow+http://host:port`` the pipeline copies what a run
trained and measured into the experiment ``<model-name>`` of that server, through MLflow's REST
API (:mod:`mnist_tasks.mlflow_rest`)::

    mirror_evaluation("mlflow+http://mlflow:5000", store, evaluation, model_name=...,
                      run_key=..., run_id=..., dag_id=...)   # a MirroredRun, or None

params: the training config; metrics: the per-epoch history (one step per epoch), test and fresh
accuracy, per-digit recall; artifacts: the plots, the report and the metrics; tags: the Airflow
run id and (given its URL) a link back to the Airflow run, the dataset version, the code
fingerprint. One MLflow run per pipeline run (found again by its ``mnist.run_key`` tag: a retry
finds it and logs nothing twice); a run that trained several candidates has one child run per
candidate (``mlflow.parentRunId``: its config and final validation metrics, from select's table).
The mirror never fails a task: an outage is one warning.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mnist_tasks.artifacts import prepared_record_uri, read_result
from mnist_tasks.mlflow_rest import MlflowError, MlflowRest, http_base
from mnist_tasks.results import CandidateRow, EvaluateResult, PreprocessResult, TrainResult
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

TAG_RUN_KEY = "mnist.run_key"
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests a child run under its parent
TAG_NOTE = "mlflow.note.content"  # MLflow's own: the run's description (markdown)
TAG_AIRFLOW_URL = "mnist.airflow_run_url"


@dataclass(frozen=True)
class MirroredRun:
    """Where a pipeline run is in MLflow: ``url`` is its page in MLflow's UI."""

    run_id: str
    experiment_id: str
    url: str
    children: tuple[str, ...] = ()  # the candidates' child runs, by candidate


def run_page_url(location: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run (``http://host:port/#/experiments/<exp>/runs/<run>``)."""
    return f"{http_base(location)}/#/experiments/{experiment_id}/runs/{run_id}"


def airflow_note(run_id: str, dag_id: str | None, airflow_run_url: str | None) -> str:
    """The MLflow run's description: which Airflow run it mirrors, linked when its URL is
    known (markdown)."""
    what = f"`{dag_id or '-'}` run `{run_id}`"
    if airflow_run_url:
        what = f"[{what}]({airflow_run_url})"
    return f"Mirrored by the MNIST pipeline from Airflow: {what}."
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param's value
BATCH = 900  # metrics per log-batch call (MLflow takes 1000)


def _experiment(rest: MlflowRest, name: str) -> str:
    try:
        return str(rest.call("GET", "experiments/get-by-name",
                             params={"experiment_name": name})["experiment"]["experiment_id"])
    except MlflowError as exc:
        if exc.code != "RESOURCE_DOES_NOT_EXIST":
            raise
    try:
        return str(rest.call("POST", "experiments/create", body={"name": name})["experiment_id"])
    except MlflowError as exc:
        if exc.code != "RESOURCE_ALREADY_EXISTS":
            raise
    return str(rest.call("GET", "experiments/get-by-name",
                         params={"experiment_name": name})["experiment"]["experiment_id"])


def mirror_run(
    location: str,
    experiment: str,
    run_key: str,
    *,
    run_name: str,
    params: Mapping[str, Any],
    history: Mapping[str, list[float]],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    artifacts: Mapping[str, bytes],
    status: str = "FINISHED",
) -> dict[str, str]:
    """Log one pipeline run as the MLflow run tagged ``mnist.run_key=run_key`` (created on
    first use; a ``mlflow.parentRunId`` tag makes it a child run); returns ``{"run_id",
    "artifact_uri", "experiment_id"}``.

    Raises:
        MlflowError: one line naming the server, when a call fails (callers that must not
            fail use :func:`mirror_evaluation`).
    """
    rest = MlflowRest(location)
    experiment_id = _experiment(rest, experiment)
    found = rest.call("POST", "runs/search", body={
        "experiment_ids": [experiment_id], "max_results": 1,
        "filter": f"tags.`{TAG_RUN_KEY}` = '{run_key}'"}).get("runs", [])
    if found:
        info = found[0]["info"]
        if info.get("status") in ("FINISHED", "FAILED"):  # an earlier attempt's, complete
            return {"run_id": str(info["run_id"]), "artifact_uri": str(info["artifact_uri"]),
                    "experiment_id": experiment_id}
    else:
        info = rest.call("POST", "runs/create", body={
            "experiment_id": experiment_id, "run_name": run_name,
            "start_time": int(time.time() * 1000),
            "tags": [{"key": TAG_RUN_KEY, "value": run_key}]})["run"]["info"]
    run_id = str(info["run_id"])
    now = int(time.time() * 1000)
    entries = [{"key": k, "value": float(v), "timestamp": now, "step": step}
               for k, values in history.items() for step, v in enumerate(values, 1)]
    entries += [{"key": k, "value": float(v), "timestamp": now, "step": 0}
                for k, v in metrics.items()]
    params_list = [{"key": k, "value": (v if isinstance(v, str) else json.dumps(
        v, sort_keys=True, default=str))[:MAX_PARAM_LENGTH]} for k, v in sorted(params.items())]
    tag_list = [{"key": k, "value": v} for k, v in tags.items()]
    # An attempt that died before FINISHED is logged again: params keep their value (MLflow
    # refuses a change), metrics may then hold a step twice.
    rest.call("POST", "runs/log-batch", body={"run_id": run_id, "params": params_list[:100],
                                              "tags": tag_list})
    for start in range(0, len(entries), BATCH):
        rest.call("POST", "runs/log-batch",
                  body={"run_id": run_id, "metrics": entries[start:start + BATCH]})
    root = str(info["artifact_uri"]).removeprefix("mlflow-artifacts:").strip("/")
    for name, data in artifacts.items():
        rest.put_artifact(f"{root}/{name}", data)
    rest.call("POST", "runs/update", body={"run_id": run_id, "status": status,
                                           "end_time": int(time.time() * 1000)})
    return {"run_id": run_id, "artifact_uri": str(info["artifact_uri"]),
            "experiment_id": experiment_id}


def mirror_evaluation(
    location: str,
    store: Store,
    evaluation: EvaluateResult,
    *,
    model_name: str,
    run_key: str,
    run_id: str,
    dag_id: str | None,
    code_fingerprint: str | None = None,
    airflow_run_url: str | None = None,
    candidates: Sequence[CandidateRow] = (),
) -> MirroredRun | None:
    """Mirror an evaluated run (its train record, history, metrics, plots and report, read
    from the store) into MLflow, and each of its ``candidates`` (select's table; a run with
    one model has none) as a child run; None after a warning when anything failed: the mirror
    never fails the task.

    Args:
        airflow_run_url: the Airflow run's page: the MLflow run links back to it (its
            ``mnist.airflow_run_url`` tag and its description).
    """
    try:
        metrics_doc = json.loads(store.read_bytes(store.key_of(evaluation.metrics_uri)))
        history: dict[str, list[float]] = {}
        params: dict[str, Any] = {}
        tags = {"mnist.airflow_run_id": run_id, "mnist.dag_id": dag_id or "-",
                TAG_NOTE: airflow_note(run_id, dag_id, airflow_run_url)}
        if airflow_run_url:
            tags[TAG_AIRFLOW_URL] = airflow_run_url
        if code_fingerprint:
            tags["mnist.code_fingerprint"] = code_fingerprint
        if evaluation.history_uri:
            raw = json.loads(store.read_bytes(store.key_of(evaluation.history_uri)))
            history = {k: v for k, v in raw.items() if k not in ("epoch",)
                       and isinstance(v, list) and all(isinstance(x, int | float) for x in v)}
        if evaluation.train_uri:
            trained = read_result(store, evaluation.train_uri, TrainResult)
            params = {**trained.params, "preset": trained.preset}
            prepared = read_result(store, prepared_record_uri(evaluation.prepared_uri),
                                   PreprocessResult)
            if prepared.dataset_version:
                tags["mnist.dataset_version"] = prepared.dataset_version
        metrics = {"test_accuracy": evaluation.test_accuracy}
        if evaluation.test_loss is not None:
            metrics["test_loss"] = evaluation.test_loss
        if evaluation.fresh_accuracy is not None:
            metrics["fresh_accuracy"] = evaluation.fresh_accuracy
        for digit, row in (metrics_doc.get("per_digit") or {}).items():
            metrics[f"recall_digit_{digit}"] = float(row["recall"])
        artifacts = {"metrics.json": store.read_bytes(store.key_of(evaluation.metrics_uri)),
                     "report.txt": store.read_bytes(store.key_of(evaluation.report_uri))}
        for name, uri in evaluation.plots.items():
            artifacts[f"plots/{name}.png" if not name.endswith(".png") else f"plots/{name}"] = \
                store.read_bytes(store.key_of(uri))
        run = mirror_run(location, model_name, run_key, run_name=run_id, params=params,
                         history=history, metrics=metrics, tags=tags, artifacts=artifacts)
        children = tuple(
            mirror_run(location, model_name, f"{run_key}.candidate-{row.candidate}",
                       run_name=f"{run_id} candidate {row.candidate}: {row.label}",
                       **_candidate(row, run["run_id"], tags))["run_id"]
            for row in candidates)
    except Exception as exc:  # the mirror never fails a task: any failure is one warning
        log.warning("tracking mirror: run %s not mirrored to %s: %s", run_key, location,
                    " ".join(str(exc).split()) or type(exc).__name__)
        return None
    log.info("tracking mirror: run %s is MLflow run %s in %s (experiment %s)%s", run_key,
             run["run_id"], location, model_name,
             f", its {len(children)} candidates child runs" if children else "")
    return MirroredRun(run["run_id"], run["experiment_id"],
                       run_page_url(location, run["experiment_id"], run["run_id"]), children)


def _candidate(row: CandidateRow, parent: str, tags: Mapping[str, str]) -> dict[str, Any]:
    """A candidate's child run: its config as params, its final validation metrics, the
    parent's tags (but its note) with ``mlflow.parentRunId``; FAILED when it did not train."""
    metrics = {k: float(v) for k, v in (("val_accuracy", row.val_accuracy),
                                        ("val_loss", row.val_loss),
                                        ("fit_seconds", row.fit_seconds),
                                        ("epochs_run", row.epochs_run)) if v is not None}
    child_tags = {**{k: v for k, v in tags.items() if k != TAG_NOTE}, TAG_PARENT: parent,
                  "mnist.candidate": str(row.candidate), "mnist.chosen": str(row.chosen).lower(),
                  "mnist.status": row.status}
    if row.error:
        child_tags["mnist.error"] = row.error[:5000]
    return {"params": {"label": row.label, "preset": row.preset, "epochs": row.epochs,
                       "batch_size": row.batch_size, "learning_rate": row.learning_rate,
                       "seed": row.seed, **{f"override.{k}": v for k, v in row.overrides.items()}},
            "history": {}, "metrics": metrics, "tags": child_tags, "artifacts": {},
            "status": "FINISHED" if row.status == "trained" else "FAILED"}
