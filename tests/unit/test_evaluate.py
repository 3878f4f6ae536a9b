"""The evaluate stage: metrics schema, report, predictions, plots, safe model loading."""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mnist_tasks import evaluate as ev
from mnist_tasks import plots
from mnist_tasks.artifacts import (
    full_batches,
    load_keras_model,
    load_prepared,
    predict_classes,
    predict_proba,
)
from mnist_tasks.results import FreshDigitRecall, FreshIncrementMetrics, to_json
from mnist_tasks.storage import Store
from tests.helpers import PNG_SIGNATURE, RUN, make_prepared, put_model

# ---------------------------------------------------------------------------- metrics


def test_classification_metrics_by_hand() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    y_pred = np.array([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    m = ev.classification_metrics(y_true, y_pred)
    assert "test_loss" not in m
    assert m["test_accuracy"] == pytest.approx(0.7)
    assert m["n_test"] == 10
    assert set(m["per_digit"]) == {str(d) for d in range(10)}
    assert m["per_digit"]["0"] == {"precision": 1.0, "recall": pytest.approx(2 / 3),
                                   "f1": pytest.approx(0.8), "support": 3}
    assert m["per_digit"]["3"]["precision"] == pytest.approx(1 / 3)
    assert m["per_digit"]["9"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 10
    assert cm[0, 0] == 2 and cm[0, 1] == 1 and cm[2, 3] == 2  # rows true, columns predicted
    assert m["most_confused_pairs"] == [
        {"true": 2, "predicted": 3, "count": 2},
        {"true": 0, "predicted": 1, "count": 1},
    ]
    for avg in ("macro_avg", "weighted_avg"):
        assert set(m[avg]) == {"precision", "recall", "f1", "support"}
        assert m[avg]["support"] == 10
    json.dumps(m)


def test_most_confused_pairs_keep_the_top_five_in_descending_order() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 10, 2000)
    y_pred = np.where(rng.random(2000) < 0.3, rng.integers(0, 10, 2000), y_true)
    m = ev.classification_metrics(y_true, y_pred)
    pairs = m["most_confused_pairs"]
    assert len(pairs) == 5
    counts = [p["count"] for p in pairs]
    assert counts == sorted(counts, reverse=True)
    cm = np.array(m["confusion_matrix"])
    np.fill_diagonal(cm, 0)
    assert counts[0] == cm.max()
    assert all(p["true"] != p["predicted"] for p in pairs)


def test_test_loss_is_the_cross_entropy_keras_computes() -> None:
    import keras

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 10))
    proba = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    y = rng.integers(0, 10, 50)
    m = ev.classification_metrics(y, proba.argmax(1), proba)
    expected = float(keras.losses.SparseCategoricalCrossentropy()(y, proba))
    assert m["test_loss"] == pytest.approx(expected, rel=1e-5)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="same, non-zero number"):
        ev.classification_metrics(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match=r"y_pred has labels outside 0..9"):
        ev.classification_metrics(np.array([1, 2]), np.array([1, 10]))
    with pytest.raises(ValueError, match=r"proba has shape \(2, 3\)"):
        ev.classification_metrics(np.array([1, 2]), np.array([1, 2]), np.ones((2, 3)))


# ---------------------------------------------------------------------------- fresh data


def test_fresh_metrics_overall_per_increment_and_per_digit() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 3, 3])
    increment = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    m = ev.fresh_metrics(y_true, y_pred, increment, ["inc-a", "inc-b", "inc-c"])
    assert m is not None
    assert (m.n, m.accuracy) == (8, 0.75)
    assert m.per_increment == {"inc-a": FreshIncrementMetrics(n=4, accuracy=0.75),
                               "inc-b": FreshIncrementMetrics(n=4, accuracy=0.75),
                               "inc-c": FreshIncrementMetrics(n=0, accuracy=None)}
    assert m.per_digit["0"] == FreshDigitRecall(recall=0.5, support=2)
    assert m.per_digit["3"] == FreshDigitRecall(recall=1.0, support=2)
    assert m.per_digit["9"] == FreshDigitRecall(recall=None, support=0)
    assert set(m.per_digit) == {str(d) for d in range(10)}
    json.dumps(to_json(m))


def test_fresh_metrics_none_without_fresh_images_and_refusals() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert ev.fresh_metrics(empty, empty, empty, []) is None
    assert ev.fresh_metrics(empty, empty, empty, ["inc-a"]) is None
    with pytest.raises(ValueError, match="need the same number"):
        ev.fresh_metrics(np.array([1, 2]), np.array([1]), np.array([0, 0]), ["a"])
    with pytest.raises(ValueError, match=r"index 1, but the increments listed .* \['a'\]"):
        ev.fresh_metrics(np.array([1, 2]), np.array([1, 2]), np.array([0, 1]), ["a"])
    with pytest.raises(ValueError, match=r"fresh labels include values outside 0\.\.9"):
        ev.fresh_metrics(np.array([1, 12]), np.array([1, 2]), np.array([0, 0]), ["a"])


def _add_fresh(store: Store, prepared_uri: str, ids: list[str]) -> np.ndarray:
    """Give the prepared data a fresh part: 60 synthetic digits from ``len(ids)`` increments
    (as preprocess does with accepted increments); returns the increment index per image."""
    from mnist_tasks.artifacts import PREPARED_ARRAYS, load_npz, save_npz, write_json
    from tests.helpers import synthetic_digits

    key = store.key_of(prepared_uri)
    arrays = load_npz(store, key, PREPARED_ARRAYS)
    x, y = synthetic_digits(60, seed=9)
    increment = np.arange(60) % len(ids)
    save_npz(store, key, {**arrays, "x_fresh": x.astype(np.float32) / 255, "y_fresh": y,
                          "fresh_increment": increment.astype(np.int64)})
    meta_key = key.rsplit("/", 1)[0] + "/prepared.json"
    meta = json.loads(store.read_bytes(meta_key))
    write_json(store, meta_key, {**meta, "fresh_increments": ids})
    return increment


def test_evaluate_measures_the_fresh_data_per_increment(
    file_store: Store, model_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mnist_tasks.evaluate")
    store = file_store
    prepared_uri = make_prepared(store, n_train=200, n_test=50)
    increment = _add_fresh(store, prepared_uri, ["2026-11-20", "2026-11-21"])
    model_uri = put_model(store, model_file)

    result = ev.evaluate(model_uri, prepared_uri, store, RUN)

    data = load_prepared(prepared_uri, store)
    expected = predict_classes(load_keras_model(model_file), data.x_fresh)
    base = f"runs/{RUN}/evaluate"
    assert result.fresh_predictions_uri == store.uri_for(f"{base}/fresh_predictions.npy")
    preds = np.load(io.BytesIO(store.read_bytes(f"{base}/fresh_predictions.npy")))
    assert preds.dtype == np.int64
    np.testing.assert_array_equal(preds, expected)
    right = preds == data.y_fresh
    fresh = result.fresh
    assert fresh.n == 60
    assert result.fresh_accuracy == fresh.accuracy == pytest.approx(right.mean())
    assert list(fresh.per_increment) == ["2026-11-20", "2026-11-21"]
    for index, inc_id in enumerate(["2026-11-20", "2026-11-21"]):
        assert fresh.per_increment[inc_id] == FreshIncrementMetrics(
            n=30, accuracy=pytest.approx(right[increment == index].mean()))
    assert sum(d.support for d in fresh.per_digit.values()) == 60
    metrics = json.loads(store.read_bytes(f"{base}/metrics.json"))
    assert metrics["fresh"] == to_json(fresh)
    assert metrics["n_test"] == 50  # the benchmark is still the test set alone
    a, b = (fresh.per_increment[i].accuracy for i in ("2026-11-20", "2026-11-21"))
    assert (f"fresh accuracy={fresh.accuracy:.4f} on 60 images (2026-11-20 {a:.4f} n=30, "
            f"2026-11-21 {b:.4f} n=30)") in caplog.text

    # A retry reuses the recorded result; one recorded before fresh data existed (no "fresh"
    # key) or whose fresh predictions are gone is done again.
    caplog.clear()
    assert ev.evaluate(model_uri, prepared_uri, store, RUN) == result
    assert f"fresh accuracy {fresh.accuracy:.4f}); reusing it" in caplog.text
    store.delete(f"{base}/fresh_predictions.npy")
    caplog.clear()
    assert ev.evaluate(model_uri, prepared_uri, store, RUN) == result
    assert "already evaluated" not in caplog.text
    assert store.exists(f"{base}/fresh_predictions.npy")
    old = {k: v for k, v in to_json(result).items() if not k.startswith("fresh")}
    store.write_bytes(f"{base}/result.json", json.dumps(old).encode())
    caplog.clear()
    assert ev.evaluate(model_uri, prepared_uri, store, RUN) == result
    assert "already evaluated" not in caplog.text


def test_evaluate_refuses_fresh_arrays_that_do_not_fit(file_store: Store,
                                                      model_file: Path) -> None:
    store = file_store
    prepared_uri = make_prepared(store, n_train=200, n_test=50)
    _add_fresh(store, prepared_uri, ["only-one"])
    meta_key = store.key_of(prepared_uri).rsplit("/", 1)[0] + "/prepared.json"
    meta = json.loads(store.read_bytes(meta_key))
    store.write_bytes(meta_key, json.dumps({**meta, "fresh_increments": []}).encode())
    with pytest.raises(ValueError, match=r"prepared\.npz: fresh_increment holds index 0, but "
                                         r"the increments listed \(fresh_increments\) are \[\]"):
        ev.evaluate(put_model(store, model_file), prepared_uri, store, RUN)


# ---------------------------------------------------------------------------- models


def test_predict_helpers(model_file: Path) -> None:
    model = load_keras_model(model_file)
    x = np.random.default_rng(2).random((7, 28, 28), dtype=np.float32)
    shapes: list[tuple[int, ...]] = []
    predict_on_batch = model.predict_on_batch
    model.predict_on_batch = lambda batch: shapes.append(batch.shape) or predict_on_batch(batch)
    proba = predict_proba(model, x, batch_size=3)
    assert proba.shape == (7, 10) and proba.dtype == np.float32
    # One input shape (the tail padded), so TensorFlow traces the predict step once.
    assert shapes == [(3, 28, 28)] * 3
    np.testing.assert_allclose(proba, model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
    classes = predict_classes(model, x)
    assert classes.dtype == np.int64
    np.testing.assert_array_equal(classes, proba.argmax(1))
    assert predict_classes(model, x[:0]).shape == (0,)


def test_full_batches_pad_only_the_tail_and_count_its_real_rows() -> None:
    x = np.arange(7 * 2, dtype=np.uint8).reshape(7, 2) + 1
    batches = list(full_batches(x, 3))
    assert [(b.shape, n) for b, n in batches] == [((3, 2), 3), ((3, 2), 3), ((3, 2), 1)]
    np.testing.assert_array_equal(np.concatenate([b[:n] for b, n in batches]), x)
    np.testing.assert_array_equal(batches[-1][0][1:], 0)
    assert batches[-1][0].dtype == np.uint8
    assert list(full_batches(x[:0], 3)) == []
    assert [n for _, n in full_batches(x[:6], 3)] == [3, 3]


def test_load_keras_model_refuses_code_in_safe_mode(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match=r"lambda.keras: not a loadable Keras model"):
        load_keras_model(path)
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.keras: not a loadable Keras model"):
        load_keras_model(junk)
    with pytest.raises(ValueError, match=r"missing\.keras: no such model file"):
        load_keras_model(tmp_path / "missing.keras")


# ---------------------------------------------------------------------------- evaluate()


def test_evaluate_rejects_a_model_of_another_input_shape(file_store: Store,
                                                         tmp_path: Path) -> None:
    import keras

    prepared_uri = make_prepared(file_store)
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    model.save(tmp_path / "flat.keras")
    uri = put_model(file_store, tmp_path / "flat.keras")
    with pytest.raises(ValueError, match=r"takes inputs of shape \(784,\) but the test images"):
        ev.evaluate(uri, prepared_uri, file_store, RUN)


# ---------------------------------------------------------------------------- plots


def test_plots_write_pngs_and_handle_edge_cases(tmp_path: Path) -> None:
    cm = np.diag(np.full(10, 100))
    cm[4, 9] = 7
    assert plots.confusion_matrix_png(cm, tmp_path / "cm.png").read_bytes()[:8] == PNG_SIGNATURE
    curves = plots.training_curves_png({"loss": [1.0, 0.5]}, tmp_path / "c.png")
    assert curves.read_bytes()[:8] == PNG_SIGNATURE  # no validation, no accuracy: still draws
    with pytest.raises(ValueError, match="no per-epoch 'loss'"):
        plots.training_curves_png({"accuracy": [0.5]}, tmp_path / "bad.png")
    empty = plots.digit_grid_png(np.zeros((0, 28, 28)), [], tmp_path / "none.png", title="none")
    assert empty.read_bytes()[:8] == PNG_SIGNATURE


def test_plots_do_not_touch_pyplot_state() -> None:
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        plots.digit_grid_png(np.zeros((2, 28, 28)), ["a", "b"], Path(tmp) / "g.png", title="t")
    pyplot = sys.modules.get("matplotlib.pyplot")
    assert pyplot is None or pyplot.get_fignums() == []
