"""The lineage glue (dags/mnist_airflow/lineage.py): which datasets each stage's result names, with
what facets, under the names the OpenLineage provider gives; and that it stays off, and never
raises, unless the provider is configured. The graph of a whole run is checked end to end in
tests/e2e/test_dag_e2e.py."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from mnist_tasks.feedback import FeedbackReport
from mnist_tasks.results import IncrementRecord, RegisterResult, ScoreCommit
from tests.helpers import gate_decision, ingest_result, train_result

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "docs" / "lineage-facet.schema.json"


@pytest.fixture(scope="module")
def lineage() -> Any:
    """dags/mnist_airflow/lineage.py, imported as the DAG files import it (dags/ on the path,
    as Airflow puts it)."""
    if str(REPO / "dags") not in sys.path:
        sys.path.append(str(REPO / "dags"))
    return importlib.import_module("mnist_airflow.lineage")


def _inc(inc_id: str, status: str = "ACCEPTED", *, new: bool = True) -> IncrementRecord:
    return IncrementRecord(id=inc_id, status=status, reasons=(), counts={"images": 10},
                           drift=False, payload_sha256="ab" * 32, train=8, fresh=2, new=new,
                           uri=f"s3://src/data/increments/{inc_id}")


def _uris(datasets: tuple[Any, ...]) -> list[str]:
    return [d.uri for d in datasets]


def test_names_are_those_of_the_providers_asset_conversion(lineage: Any) -> None:
    """The converters the installed providers register for s3:// and file:// assets (what
    the OpenLineage provider's ``translate_airflow_asset`` calls) name each URI as we do."""
    from airflow.providers.amazon.get_provider_info import get_provider_info as amazon
    from airflow.providers.common.io.get_provider_info import get_provider_info as common_io
    from airflow.sdk import Asset

    converters = {scheme: entry["to_openlineage_converter"]
                  for info in (amazon(), common_io()) for entry in info["asset-uris"]
                  for scheme in entry["schemes"]}
    for uri in ("s3://bucket/store/datasets/0123/manifest.json", "s3://bucket/landing/b-1",
                "file:///data/source/increments/inc-001", "file:///tmp/a%20b/model.keras"):
        module, name = converters[uri.split(":")[0]].rsplit(".", 1)
        expected = getattr(importlib.import_module(module), name)(Asset(uri=uri), None)
        assert lineage.dataset_name(uri) == (expected.namespace, expected.name), uri
    assert lineage.dataset_name("s3://bucket/k/x.npz") == ("s3://bucket", "k/x.npz")
    assert lineage.dataset_name("file:///data/x") == ("file", "/data/x")


def test_ingest_reads_the_base_files_and_increments_and_writes_the_dataset_version(
        lineage: Any) -> None:
    base = tuple(f"file:///data/mnist/{name}" for name in ("t10k-images-idx3-ubyte.gz",
                                                           "train-images-idx3-ubyte.gz"))
    result = ingest_result(base_files=base, increments=(
        _inc("inc-1"), _inc("old-bad", "QUARANTINED", new=False), _inc("new-bad", "QUARANTINED")),
        quarantined=("old-bad", "new-bad"))
    got = lineage.of(result)
    assert got is not None
    # A quarantined increment decided by an earlier run was not read by this one.
    assert _uris(got.inputs) == [*base, "s3://src/data/increments/inc-1",
                                 "s3://src/data/increments/new-bad"]
    assert got.inputs[0].mnist == {"kind": "base_file",
                                   "sha256": result.checksums["t10k-images-idx3-ubyte.gz"]}
    assert got.inputs[2].version == "ab" * 32
    assert got.inputs[2].mnist == {"kind": "increment", "increment_id": "inc-1",
                                   "status": "ACCEPTED"}
    [out] = got.outputs
    assert out.uri == result.dataset_manifest_uri and out.version == result.dataset_version
    assert out.mnist == {"kind": "dataset_version", "dataset_version": result.dataset_version,
                         "increments": ["inc-1"], "quarantined": ["old-bad", "new-bad"]}


def test_the_chain_connects_train_gate_register_and_scoring_by_uri(lineage: Any) -> None:
    trained = train_result()
    train = lineage.of(trained)
    decided = gate_decision("PROMOTE")
    gate = lineage.of(decided)
    registered = RegisterResult(
        model_uri="s3://b/s/registry/m/versions/000004/model.keras", version=4,
        test_accuracy=0.98, champion=True, verified=True,
        registry_uri="s3://b/s/registry/m/versions/000004", decision="PROMOTE",
        previous_champion=3, promotion_skipped=None, trained_model_uri=trained.model_uri,
        dataset_version="0123456789abcdef")
    register = lineage.of(registered)
    commit = lineage.of(ScoreCommit(
        model_version=4, committed=("b-1",), unchanged=(), rejected={}, skipped={}, images=9,
        outputs={"b-1": "s3://b/s/scoring/m/batches/b-1/v000004"},
        inputs={"b-1": "s3://b/s/landing/b-1"}, model_uri=registered.model_uri))
    assert train and gate and register and commit
    assert _uris(train.outputs) == [trained.model_uri] == _uris(register.inputs)
    assert _uris(gate.inputs) == [decided.evaluation_uri]
    assert gate.outputs[0].mnist == {"kind": "gate_decision", "gate_decision": "PROMOTE",
                                     "test_accuracy": decided.challenger.accuracy}
    [version] = register.outputs
    assert version.version == "4" and version.mnist == {
        "kind": "model_version", "model_version": 4, "test_accuracy": 0.98,
        "gate_decision": "PROMOTE", "champion": True, "dataset_version": "0123456789abcdef"}
    assert _uris(commit.inputs) == [registered.model_uri, "s3://b/s/landing/b-1"]
    assert commit.outputs[0].mnist == {"kind": "predictions", "batch": "b-1", "model_version": 4}


def test_feedback_reads_labels_and_predictions_and_writes_a_report_and_an_increment(
        lineage: Any) -> None:
    report = FeedbackReport(
        batch="b-1", feedback_id="fb-0", files=("labels.csv",), labels=5, refused=(),
        duplicates=0, versions=(), increment="fb-b-1-0", created_at="t", status="ALARM",
        feedback_uri="s3://b/s/feedback/b-1",
        scored_uris=("s3://b/s/scoring/m/batches/b-1/v000004",),
        report_uri="s3://b/s/scoring/m/feedback/b-1/fb-0.json",
        increment_uri="s3://src/increments/fb-b-1-0")
    got = lineage.of([report])
    assert got is not None
    assert _uris(got.inputs) == ["s3://b/s/feedback/b-1", "s3://b/s/scoring/m/batches/b-1/v000004"]
    assert _uris(got.outputs) == ["s3://b/s/scoring/m/feedback/b-1/fb-0.json",
                                  "s3://src/increments/fb-b-1-0"]
    assert got.outputs[0].mnist["status"] == "ALARM"
    assert lineage.of([]) is None and lineage.of(object()) is None


def test_the_events_datasets_carry_the_standard_version_and_the_documented_mnist_facet(
        lineage: Any) -> None:
    from openlineage.client.serde import Serde

    got = lineage.of(ingest_result(increments=(_inc("inc-1"),), base_files=(
        "file:///data/mnist/train-images-idx3-ubyte.gz",)))
    assert got is not None
    ol = lineage.operator_lineage(got)
    out = json.loads(Serde.to_json(ol.outputs[0]))
    assert (out["namespace"], out["name"]) == ("file",
                                               "/s/datasets/0123456789abcdef/manifest.json")
    assert out["facets"]["version"]["datasetVersion"] == "0123456789abcdef"
    assert out["facets"]["mnist"]["_schemaURL"] == lineage.FACET_SCHEMA_URL
    schema = json.loads(SCHEMA.read_text())["$defs"]["MnistDatasetFacet"]["allOf"][1]
    for ds in [*ol.inputs, *ol.outputs]:
        jsonschema.validate(json.loads(Serde.to_json(ds))["facets"]["mnist"], schema)
    # Only for the task instance that reported it: not another mapped instance or a later try
    # that finds the same operator object (under `airflow dags test`).
    ti = types.SimpleNamespace(dag_id="d", task_id="train", run_id="r", map_index=0,
                               try_number=1)
    key = (ti.dag_id, ti.task_id, ti.run_id, ti.map_index, ti.try_number)
    assert lineage.operator_lineage(got, key, ti).outputs == ol.outputs
    assert lineage.operator_lineage(got, key, types.SimpleNamespace(**{**vars(ti),
                                                                       "map_index": 1})) is None
    assert lineage.operator_lineage(got, key, types.SimpleNamespace(**{**vars(ti),
                                                                       "try_number": 2})) is None
    # Every field of the facet class is in the schema, and nothing else.
    fields = {f.name for f in dataclasses.fields(lineage.LineageDataset)}
    assert fields == {"uri", "version", "mnist"}
    import attr

    assert {a.name for a in attr.fields(lineage._facet_class())} - {"_producer", "_schemaURL",
                                                                   "_deleted"} == set(
        schema["properties"])


def test_off_unless_configured_and_never_raising(lineage: Any, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    from airflow.providers.openlineage import conf

    def configure(transport: str | None) -> None:
        if transport is None:
            monkeypatch.delenv("AIRFLOW__OPENLINEAGE__TRANSPORT", raising=False)
        else:
            monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT", transport)
        for fn in (conf.is_disabled, conf.transport, conf.config_path):
            getattr(fn, "cache_clear", lambda: None)()  # not cached under pytest

    result = ingest_result(increments=(_inc("inc-1"),))
    try:
        configure(None)
        assert not lineage.enabled()
        with caplog.at_level(logging.WARNING):
            lineage.report(result)  # off: nothing done, nothing logged
        assert not caplog.records
        configure(json.dumps({"type": "console"}))
        assert lineage.enabled()
        with caplog.at_level(logging.WARNING):
            lineage.report(result)  # outside a task: logged, not raised
        assert "lineage: not reported (the task goes on)" in caplog.text
    finally:
        configure(None)
