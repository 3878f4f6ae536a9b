"""The monitoring loop through Airflow (`airflow dags test`), on real MNIST.

A fast_mlp champion is registered with its monitoring reference. Two batches of 2,000 real test
images land, one of them inverted: the scoring DAG flags the inverted one (ALARM, an event of
`mnist_model_health`) and not the clean one. Labels come back for the inverted batch: the
feedback DAG measures the champion's live accuracy there, raises the ALARM, and lands the
labelled images as an increment in the source (its OpenLineage event names the labels and the
predictions it read, the report and the increment it wrote); the watch DAG then announces that
increment, which is what starts a training run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import score
from mnist_tasks.idx import decompress, encode_idx, parse_idx
from mnist_tasks.increment_files import discover
from mnist_tasks.monitor import REFERENCE_FILE, Forward, Reference
from mnist_tasks.registry import Registry
from mnist_tasks.scoring_batches import write_batch
from mnist_tasks.scoring_outputs import read_manifest
from mnist_tasks.storage import LocalStore
from tests.helpers import AirflowCLI, lineage_graph

pytestmark = [pytest.mark.slow, pytest.mark.integration]

N = 2000


def _read_idx(path: Path) -> np.ndarray:
    return parse_idx(decompress(path.read_bytes(), source=str(path)), source=str(path))


def test_drift_alarm_then_feedback_alarm_then_an_increment_for_the_watch(
    tmp_path: Path, mnist_dir: Path, airflow_home: Path,
) -> None:
    from mnist_tasks.artifacts import load_keras_model
    from mnist_tasks.config import train_config
    from mnist_tasks.train import fit_arrays

    x_train = _read_idx(mnist_dir / "train-images-idx3-ubyte.gz")
    y_train = _read_idx(mnist_dir / "train-labels-idx1-ubyte.gz")
    x_test = _read_idx(mnist_dir / "t10k-images-idx3-ubyte.gz")
    y_test = _read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    fit = fit_arrays(train_config("fast_mlp", epochs=2, seed=1),
                     x_train[:12000].astype(np.float32) / 255.0, y_train[:12000])
    model_path = tmp_path / "model.keras"
    fit.model.save(model_path)
    model = load_keras_model(model_path)
    # Random samples: MNIST's test set is ordered (its first 5,000 digits are the easier
    # writers'), and a contiguous slice is a real shift the monitor rightly notices.
    rng = np.random.default_rng(7)
    x_val = x_train[12000 + rng.permutation(48000)[:3000]]
    order = rng.permutation(len(x_test))
    x_test, y_test = x_test[order], y_test[order]
    benchmark = float((np.asarray(model.predict(x_test.astype(np.float32) / 255.0, verbose=0))
                       .argmax(1) == y_test).mean())
    reference = Reference.build(*Forward(model)(x_val), x_val, model_version=1,
                                benchmark_accuracy=benchmark)

    store = LocalStore(tmp_path / "store")
    registry = Registry(store)
    registry.register("run-a", {"model.keras": model_path, REFERENCE_FILE: reference.to_bytes()},
                      {"metrics": {"test_accuracy": benchmark}})
    registry.promote(1)
    landing = LocalStore(tmp_path / "store" / "landing")
    write_batch(landing, "2026-12-01-clean", {"a-idx3-ubyte": encode_idx(x_test[:N])})
    write_batch(landing, "2026-12-01-inverted",
                      {"a-idx3-ubyte": encode_idx(255 - x_test[N:2 * N])})
    source = tmp_path / "source"
    (source / "increments").mkdir(parents=True)
    airflow = AirflowCLI(airflow_home, {"MNIST_STORE": store.uri, "MNIST_SOURCE": str(source)})

    # 1. Scoring: the inverted batch is an ALARM (and an asset event), the clean one OK.
    run = airflow("dags", "test", "mnist_batch_scoring")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "MONITOR OK batch 2026-12-01-clean" in log
    assert "MONITOR ALARM batch 2026-12-01-inverted" in log
    assert "DRIFT ALARM on 1 batch(es)" in log
    cfg = score.ScoringConfig(landing=landing.uri)
    assert read_manifest(store, cfg, "2026-12-01-clean", 1)["monitor"]["status"] == "OK"
    inverted = read_manifest(store, cfg, "2026-12-01-inverted", 1)["monitor"]
    assert inverted["status"] == "ALARM" and "confidence" in inverted["fired"]

    # 2. Labels come back for half the inverted batch: the live accuracy, its ALARM, and an
    #    increment made from the batch's own pixels with those labels.
    labelled = range(0, N, 2)
    rows = "".join(f"a-idx3-ubyte#{i},{y_test[N + i]}\n" for i in labelled)
    feedback = tmp_path / "store" / "feedback" / "2026-12-01-inverted"
    feedback.mkdir(parents=True)
    (feedback / "labels.csv").write_text("image_id,label\n" + rows)
    (feedback / "_SUCCESS").write_text("")
    events = tmp_path / "lineage.jsonl"
    run = AirflowCLI(airflow_home, {**airflow.env, "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
        {"type": "file", "log_file_path": str(events), "append": True})})("dags", "test",
                                                                          "mnist_feedback")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "LIVE ACCURACY ALARM: FEEDBACK ALARM batch 2026-12-01-inverted: 1000 label(s)" in log
    [report_key] = [k for k in store.list("scoring/mnist-classifier/feedback")
                    if "/fb-" in k]
    report = json.loads(store.read_bytes(report_key))
    [live] = report["versions"]
    predicted = np.asarray(model.predict((255 - x_test[N:2 * N]).astype(np.float32) / 255.0,
                                         verbose=0)).argmax(1)
    expected = float((predicted[list(labelled)] == y_test[N:2 * N][list(labelled)]).mean())
    assert live["accuracy"] == pytest.approx(expected, abs=1e-6) and live["status"] == "ALARM"
    [increment] = discover(str(source)).complete
    assert increment.id == report["increment"]
    images = _read_idx(source / "increments" / increment.id / "images-idx3-ubyte.gz")
    labels = _read_idx(source / "increments" / increment.id / "labels-idx1-ubyte.gz")
    assert np.array_equal(labels, y_test[N:2 * N][list(labelled)])
    assert np.array_equal(images, 255 - x_test[N:2 * N][list(labelled)])
    # Its lineage: the labels and the batch's predictions in; the report and the increment out,
    # the folder the next ingest reads (named alike: tests/e2e/test_dag_e2e.py).
    graph = lineage_graph(events.read_text().splitlines())
    assert graph.inputs_of["default/mnist_feedback.feedback"] == {
        ("file", str(feedback)),
        ("file", str(store.root / "scoring/mnist-classifier/batches/2026-12-01-inverted/v000001"))}
    assert graph.outputs_of["default/mnist_feedback.feedback"] == {
        ("file", str(store.root / report_key)),
        ("file", str(source / "increments" / increment.id))}
    assert graph.facets[("file", str(store.root / report_key))]["mnist"]["status"] == "ALARM"

    # Landed twice: nothing new to do.
    again = airflow("dags", "test", "mnist_feedback")
    assert again.returncode == 0 and "no new feedback" in again.stdout + again.stderr

    # 3. The watch announces the new increment: the event that starts mnist_training.
    run = airflow("dags", "test", "mnist_increments_watch")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert f"NEW INCREMENTS in {source}: {increment.id}" in log
