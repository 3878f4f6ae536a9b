"""The train and evaluate stages against both stores (file:// and S3 over HTTP): what they
write where, idempotent retries, loading a model from the store."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks import evaluate as ev
from mnist_tasks import runtime
from mnist_tasks import train as train_mod
from mnist_tasks.artifacts import (
    load_keras_model,
    load_model_from_store,
    load_prepared,
    predict_classes,
)
from mnist_tasks.results import EvaluateResult, TrainResult, from_json, to_json
from mnist_tasks.storage import Store
from tests.helpers import PNG_SIGNATURE, RUN, make_prepared, put_model, small_cfg

# ---------------------------------------------------------------------------- train()


def test_train_stores_model_history_and_result(store: Store,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.train")
    prepared_uri = make_prepared(store)
    cfg = small_cfg(epochs=2)
    result = train_mod.train(prepared_uri, cfg, store, RUN)

    assert result.model_uri == store.uri_for(f"runs/{RUN}/train/model.keras")
    assert result.history_uri == store.uri_for(f"runs/{RUN}/train/history.json")
    assert result.preset == "seed_mlp"
    assert result.epochs_run == 2
    assert result.resumed_from_epoch == 0
    assert result.device == runtime.describe_devices().describe()
    assert result.params["epochs"] == 2 and result.params["batch_size"] == 32
    assert result.best_val_accuracy is not None and 0.5 < result.best_val_accuracy <= 1.0
    assert result.fit_seconds > 0
    assert (result.n_train, result.n_val) == (540, 60)
    json.dumps(to_json(result))  # XCom-safe

    history = json.loads(store.read_bytes(f"runs/{RUN}/train/history.json"))
    assert history["epoch"] == [1, 2] and len(history["val_accuracy"]) == 2
    assert result.train_uri == store.uri_for(f"runs/{RUN}/train/result.json")
    recorded = json.loads(store.read_bytes(f"runs/{RUN}/train/result.json"))
    assert from_json(TrainResult, recorded) == result
    assert store.list(f"runs/{RUN}/train/checkpoints") == []  # cleaned up after success

    model = load_model_from_store(store, result.model_uri)
    data = load_prepared(prepared_uri, store)
    acc = float(np.mean(model.predict(data.x_val, verbose=0).argmax(1) == data.y_val))
    assert acc == pytest.approx(history["val_accuracy"][-1], abs=1e-6)
    assert re.search(r"trained seed_mlp: 2 epochs in \d+\.\d s on (CPU|GPU), best "
                     r"val_accuracy=\d\.\d{4}, model -> ", caplog.text)

    # A retry of the same run returns the recorded result without training again.
    caplog.clear()
    assert train_mod.train(prepared_uri, cfg, store, RUN) == result
    assert "reusing it" in caplog.text
    assert "epoch 1/2" not in caplog.text
    # Other parameters for the same run key train again.
    again = train_mod.train(prepared_uri, small_cfg(epochs=1), store, RUN)
    assert again.epochs_run == 1


# ---------------------------------------------------------------------------- evaluate()


def test_load_model_from_store(store: Store, model_file: Path) -> None:
    uri = put_model(store, model_file)
    model = load_model_from_store(store, uri)
    assert model.output_shape == (None, 10)
    from mnist_tasks.storage import ObjectNotFound

    with pytest.raises(ObjectNotFound):
        load_model_from_store(store, store.uri_for("runs/none/model.keras"))


def _history() -> dict[str, Any]:
    return {"epoch": [1, 2], "loss": [0.9, 0.4], "accuracy": [0.7, 0.9], "val_loss": [0.5, 0.3],
            "val_accuracy": [0.85, 0.93], "seconds": [1.0, 0.9], "preset": "seed_mlp",
            "best_epoch": None}


def test_evaluate_writes_metrics_report_predictions_and_plots(
    store: Store, model_file: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.evaluate")
    prepared_uri = make_prepared(store)
    model_uri = put_model(store, model_file)
    store.write_bytes(f"runs/{RUN}/train/history.json", json.dumps(_history()).encode())
    history_uri = store.uri_for(f"runs/{RUN}/train/history.json")

    result = ev.evaluate(model_uri, prepared_uri, store, RUN, history_uri=history_uri)

    base = f"runs/{RUN}/evaluate"
    assert result.metrics_uri == store.uri_for(f"{base}/metrics.json")
    assert result.report_uri == store.uri_for(f"{base}/report.txt")
    assert result.predictions_uri == store.uri_for(f"{base}/predictions.npy")
    assert set(result.plots) == {"confusion_matrix", "training_curves", "sample_grid",
                                  "misclassified_grid"}
    assert result.result_uri == store.uri_for(f"{base}/result.json")
    assert from_json(EvaluateResult, json.loads(store.read_bytes(f"{base}/result.json"))) \
        == result

    metrics = json.loads(store.read_bytes(f"{base}/metrics.json"))
    assert list(metrics) == ["test_accuracy", "test_loss", "n_test", "per_digit", "macro_avg",
                             "weighted_avg", "confusion_matrix", "most_confused_pairs", "fresh"]
    # No increments, no fresh data: the fresh fields say so.
    assert metrics["fresh"] is None
    assert (result.fresh, result.fresh_accuracy, result.fresh_predictions_uri) == \
        (None, None, None)
    assert not store.exists(f"{base}/fresh_predictions.npy")
    assert metrics["n_test"] == 200
    assert result.test_accuracy == metrics["test_accuracy"] > 0.8
    assert result.test_loss == metrics["test_loss"] > 0

    data = load_prepared(prepared_uri, store)
    preds = np.load(io.BytesIO(store.read_bytes(f"{base}/predictions.npy")))
    assert preds.dtype == np.int64 and preds.shape == (200,)
    np.testing.assert_array_equal(preds, predict_classes(load_keras_model(model_file),
                                                            data.x_test))
    assert metrics["test_accuracy"] == pytest.approx(float(np.mean(preds == data.y_test)))
    cm = np.array(metrics["confusion_matrix"])
    assert cm.sum(axis=1).tolist() == np.bincount(data.y_test, minlength=10).tolist()

    report = store.read_bytes(f"{base}/report.txt").decode()
    assert "precision" in report and "recall" in report and "weighted avg" in report
    for name, uri in result.plots.items():
        png = store.read_bytes(store.key_of(uri))
        assert png.startswith(PNG_SIGNATURE), name
        assert len(png) > 5000, name
    assert "evaluated on 200 test images" in caplog.text
    assert "worst recall:" in caplog.text and "most confused (true->pred):" in caplog.text
    assert "fresh: no fresh data" in caplog.text

    # A retry returns the recorded result; another model at the same URI is evaluated anew.
    caplog.clear()
    assert ev.evaluate(model_uri, prepared_uri, store, RUN, history_uri=history_uri) == result
    assert "already evaluated" in caplog.text
    without_history = ev.evaluate(model_uri, prepared_uri, store, RUN)
    assert "training_curves" not in without_history.plots
    assert without_history.test_accuracy == result.test_accuracy
    caplog.clear()
    retrained = tmp_path / "model.keras"
    load_keras_model(model_file).save(retrained)  # same weights, new file (save time)
    put_model(store, retrained)
    again = ev.evaluate(model_uri, prepared_uri, store, RUN)
    assert "already evaluated" not in caplog.text
    assert again.model_sha256 != without_history.model_sha256
