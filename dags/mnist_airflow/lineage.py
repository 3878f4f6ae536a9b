"""OpenLineage for the tasks: what each stage read and wrote, as OpenLineage datasets.

The library's typed results name their inputs and outputs (URIs); :func:`of` turns a result into
datasets with facets (a pure function), and :func:`report` hands them to Airflow's OpenLineage
provider for the running task, when OpenLineage is configured (off otherwise, as the provider
is). The stage wrapper calls it for every stage, the feedback task for its reports::

    report(result)       # in the task, after the stage returned: no I/O, never raises

The datasets go to the provider as the task's ``get_openlineage_facets_on_complete``, which the
provider's listener calls after the task, in its own process, and emits from there. Names follow
the provider's asset conversion (``s3://bucket`` + key, ``file`` + absolute path); the graph, the
``mnist`` facet and the set-up are in docs/lineage.md.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mnist_tasks import results

log = logging.getLogger(__name__)

# The `mnist` dataset facet's JSON schema, in this repository (docs/lineage.md describes it).
FACET_SCHEMA_URL = "docs/lineage-facet.schema.json#/$defs/MnistDatasetFacet"


@dataclass(frozen=True)
class LineageDataset:
    """One dataset a stage read or wrote: its URI, the standard ``version`` facet's value, and
    the fields of the ``mnist`` facet (``kind`` first)."""

    uri: str
    version: str | None = None
    mnist: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageLineage:
    inputs: tuple[LineageDataset, ...]
    outputs: tuple[LineageDataset, ...]


def _ds(uri: str, kind: str, version: str | None = None, **fields: Any) -> LineageDataset:
    return LineageDataset(uri, version, {"kind": kind, **{k: v for k, v in fields.items()
                                                           if v is not None}})


def _version_dataset(uri: str, version: str, **fields: Any) -> LineageDataset:
    return _ds(uri, "dataset_version", version, dataset_version=version, **fields)


def _ingest(r: results.IngestResult) -> StageLineage:
    base = tuple(_ds(uri, "base_file", sha256=r.checksums.get(uri.rsplit("/", 1)[-1]))
                 for uri in r.base_files)
    # The version's accepted increments, and those this run read and quarantined.
    read = tuple(_ds(i.uri, "increment", i.payload_sha256, increment_id=i.id, status=i.status)
                 for i in r.increments
                 if i.uri and (i.status == "ACCEPTED" or i.new))
    accepted = [i.id for i in r.increments if i.status == "ACCEPTED"]
    out = _version_dataset(r.dataset_manifest_uri, r.dataset_version, increments=accepted,
                           quarantined=list(r.quarantined))
    return StageLineage(base + read, (out,))


def _preprocess(r: results.PreprocessResult) -> StageLineage:
    source = (_version_dataset(r.dataset_manifest_uri, r.dataset_version)
              if r.dataset_manifest_uri and r.dataset_version else _ds(r.dataset_uri, "base"))
    out = _ds(r.prepared_uri, "prepared", r.fingerprint[:16],
              dataset_version=r.dataset_version, increments=list(r.increments))
    return StageLineage((source,), (out,))


def _train(r: results.TrainResult) -> StageLineage:
    out = _ds(r.model_uri, "model", preset=r.preset)
    return StageLineage((_ds(r.prepared_uri, "prepared"),), (out,))


def _evaluate(r: results.EvaluateResult) -> StageLineage:
    out = _ds(r.result_uri, "evaluation", test_accuracy=r.test_accuracy)
    return StageLineage((_ds(r.model_uri, "model"), _ds(r.prepared_uri, "prepared")), (out,))


def _gate(r: results.GateDecision) -> StageLineage:
    out = _ds(r.decision_uri, "gate_decision", gate_decision=r.decision,
              test_accuracy=r.challenger.accuracy)
    return StageLineage((_ds(r.evaluation_uri, "evaluation"),), (out,))


def _register(r: results.RegisterResult) -> StageLineage:
    out = _ds(r.model_uri, "model_version", str(r.version), model_version=r.version,
              test_accuracy=r.test_accuracy, gate_decision=r.decision, champion=r.champion,
              dataset_version=r.dataset_version)
    inputs = (_ds(r.trained_model_uri, "model"),) if r.trained_model_uri else ()
    return StageLineage(inputs, (out,))


def _commit(r: results.ScoreCommit) -> StageLineage:
    inputs: list[LineageDataset] = []
    if r.model_uri:
        inputs.append(_ds(r.model_uri, "model_version", str(r.model_version),
                          model_version=r.model_version))
    inputs += [_ds(uri, "scoring_batch", batch=batch) for batch, uri in sorted(r.inputs.items())]
    outputs = [_ds(uri, "predictions", batch=batch, model_version=r.model_version)
               for batch, uri in sorted(r.outputs.items())]
    return StageLineage(tuple(inputs), tuple(outputs))


def _feedback(reports: Sequence[Any]) -> StageLineage:
    inputs: dict[str, LineageDataset] = {}
    outputs: dict[str, LineageDataset] = {}
    for rep in reports:
        if rep.feedback_uri:
            inputs[rep.feedback_uri] = _ds(rep.feedback_uri, "feedback_labels", batch=rep.batch)
        for uri in rep.scored_uris:
            inputs[uri] = _ds(uri, "predictions", batch=rep.batch)
        if rep.report_uri:
            outputs[rep.report_uri] = _ds(rep.report_uri, "feedback_report", batch=rep.batch,
                                          status=rep.status)
        if rep.increment_uri:
            outputs[rep.increment_uri] = _ds(rep.increment_uri, "increment",
                                             increment_id=rep.increment)
    return StageLineage(tuple(inputs.values()), tuple(outputs.values()))


_BY_TYPE: dict[type, Callable[[Any], StageLineage]] = {
    results.IngestResult: _ingest, results.PreprocessResult: _preprocess,
    results.TrainResult: _train, results.EvaluateResult: _evaluate,
    results.GateDecision: _gate, results.RegisterResult: _register,
    results.ScoreCommit: _commit,
}


def of(result: Any) -> StageLineage | None:
    """The datasets a stage's result says it read and wrote; None for a stage that moves no
    data (check, select, approve, the scoring plan and shards). A list of feedback reports
    is the feedback task's."""
    if isinstance(result, list | tuple):
        return _feedback(result) if result else None
    fn = _BY_TYPE.get(type(result))
    return fn(result) if fn else None


def enabled() -> bool:
    """Whether the OpenLineage provider is configured to emit (a transport, a config file or
    connection, and not disabled): its own rule, so lineage is off exactly when it is."""
    try:
        from airflow.providers.openlineage import conf
    except ImportError:
        return False
    return not conf.is_disabled()


def report(result: Any) -> None:
    """Give the running task's lineage (:func:`of` ``result``) to the OpenLineage provider,
    when it is configured; its listener emits it after the task, in its own process.

    No I/O here and nothing raised: lineage never fails a task (how long the provider waits
    for an emission: docs/lineage.md).
    """
    try:
        if not enabled():
            return
        lineage = of(result)
        if lineage is None or not (lineage.inputs or lineage.outputs):
            return
        from airflow.sdk import get_current_context

        # The provider's extractor for an operator with this method (DefaultExtractor) calls it
        # on success, failure or skip. A @task operator has no extractor of its own, and the
        # hook lineage collector is one per process: under `airflow dags test` it would carry
        # every earlier task's datasets into the next task's events, and it keeps no facets.
        context = get_current_context()
        context["task"].get_openlineage_facets_on_complete = functools.partial(
            operator_lineage, lineage, _identity(context["ti"]))
    except Exception as exc:
        log.warning("lineage: not reported (the task goes on): %s", exc)


def _identity(ti: Any) -> tuple[Any, ...]:
    return (ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.try_number)


def operator_lineage(lineage: StageLineage, reported_by: tuple[Any, ...] | None = None,
                     task_instance: Any = None) -> Any:
    """The provider's ``OperatorLineage`` of ``lineage``: each URI named by the provider's
    asset conversion, with the ``version`` and ``mnist`` facets. None for a task instance other
    than the one that reported it (the operator object outlives it under `airflow dags test`:
    another mapped instance, a later try)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    if reported_by is not None and task_instance is not None and \
            _identity(task_instance) != reported_by:
        return None

    return OperatorLineage(inputs=[openlineage_dataset(d) for d in lineage.inputs],
                           outputs=[openlineage_dataset(d) for d in lineage.outputs])


def dataset_name(uri: str) -> tuple[str, str]:
    """The OpenLineage (namespace, name) of ``uri``, as the provider's asset conversion names
    it (``s3://bucket`` + key, ``file`` + absolute path; a test holds the two equal), and its
    object-storage rule for other schemes (https: ``https`` + host and path). Computed here:
    the provider's conversion loads every provider's metadata first, seconds per task."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme == "s3":
        return f"s3://{parts.netloc}", parts.path.lstrip("/") or "/"
    if parts.scheme == "file":
        # As the provider does: the path as the URI has it (percent-escapes kept).
        return (f"file://{parts.netloc}" if parts.netloc else "file"), parts.path
    return parts.scheme, f"{parts.netloc}{parts.path}"


def openlineage_dataset(ds: LineageDataset) -> Any:
    """``ds`` as an OpenLineage dataset (:func:`dataset_name`), with its ``version`` and
    ``mnist`` facets."""
    from openlineage.client.event_v2 import Dataset
    from openlineage.client.facet_v2 import dataset_version_dataset

    facets: dict[str, Any] = {}
    if ds.version is not None:
        facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
            datasetVersion=ds.version)
    if ds.mnist:
        facets["mnist"] = _facet_class()(**ds.mnist)
    namespace, name = dataset_name(ds.uri)
    return Dataset(namespace=namespace, name=name, facets=facets)


@functools.cache
def _facet_class() -> type:
    """The ``mnist`` dataset facet (its fields: docs/lineage.md and its JSON schema)."""
    import attr
    from openlineage.client.generated.base import DatasetFacet

    @attr.define
    class MnistDatasetFacet(DatasetFacet):  # type: ignore[misc]
        kind: str
        dataset_version: str | None = None
        increments: list[str] | None = None
        quarantined: list[str] | None = None
        increment_id: str | None = None
        status: str | None = None
        sha256: str | None = None
        preset: str | None = None
        test_accuracy: float | None = None
        gate_decision: str | None = None
        model_version: int | None = None
        champion: bool | None = None
        batch: str | None = None

        @staticmethod
        def _get_schema() -> str:
            return FACET_SCHEMA_URL

    return MnistDatasetFacet
