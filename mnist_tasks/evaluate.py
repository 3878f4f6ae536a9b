"""Evaluate: test-set metrics, per-digit report, confusion matrix, plots and predictions.

Loads the trained model (``safe_mode=True``) and the prepared test split, and writes under
``runs/<run-key>/evaluate/``:

* ``metrics.json``: ``test_accuracy``, ``test_loss``, ``n_test``, ``per_digit`` (precision,
  recall, f1, support per digit "0".."9"), ``macro_avg``, ``weighted_avg``,
  ``confusion_matrix`` (rows = true, columns = predicted), ``most_confused_pairs`` (top 5);
* ``predictions.npy``: the predicted class (int64) of each test image;
* ``report.txt``: scikit-learn's classification report;
* ``confusion_matrix.png``, ``training_curves.png`` (when the history is given),
  ``sample_grid.png``, ``misclassified_grid.png``;
* ``result.json``: what :func:`evaluate` returned, written last.

``test_loss`` is the mean cross-entropy of the predicted probabilities (without any weight
regularisation term, so models trained with and without L2 compare fairly).

Run it alone: ``python -m mnist_tasks evaluate --model URI --prepared URI --store URI
--run-id ID``.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks.artifacts import (
    NUM_CLASSES,
    load_keras_model,
    load_prepared,
    predict_proba,
    read_json,
    recorded_result,
    write_json,
)
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

TOP_CONFUSED = 5
MISCLASSIFIED_SHOWN = 16
_EPS = 1e-7  # probability clip for the cross-entropy, as Keras does


def cross_entropy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean categorical cross-entropy of integer labels under predicted probabilities."""
    p = np.clip(proba[np.arange(len(y_true)), np.asarray(y_true, dtype=np.int64)], _EPS, 1.0)
    return float(-np.mean(np.log(p)))


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None = None
) -> dict[str, Any]:
    """The ``metrics.json`` dict for predictions of the ten digits.

    Args:
        y_true: true labels (N,).
        y_pred: predicted labels (N,).
        proba: predicted probabilities (N, 10); adds ``test_loss`` when given.

    Returns:
        ``test_accuracy``, ``test_loss`` (only with ``proba``), ``n_test``, ``per_digit``,
        ``macro_avg``, ``weighted_avg``, ``confusion_matrix``, ``most_confused_pairs``.

    Raises:
        ValueError: if the arrays' lengths differ or are empty, or a label is not a digit.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if len(y_true) != len(y_pred) or len(y_true) == 0:
        raise ValueError(f"y_true has {len(y_true)} labels and y_pred {len(y_pred)}; "
                         "need the same, non-zero number")
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= NUM_CLASSES:
            raise ValueError(f"{name} has labels outside 0..{NUM_CLASSES - 1}")
    labels = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_digit = {
        str(d): {"precision": float(precision[d]), "recall": float(recall[d]),
                 "f1": float(f1[d]), "support": int(support[d])}
        for d in labels
    }

    def average(kind: str) -> dict[str, Any]:
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=kind, zero_division=0
        )
        return {"precision": float(p), "recall": float(r), "f1": float(f),
                "support": len(y_true)}

    cm = confusion_matrix(y_true, y_pred, labels=labels)
    pairs = [
        {"true": int(t), "predicted": int(p), "count": int(cm[t, p])}
        for t in labels for p in labels if t != p and cm[t, p] > 0
    ]
    pairs.sort(key=lambda e: (-e["count"], e["true"], e["predicted"]))
    metrics: dict[str, Any] = {"test_accuracy": float(np.mean(y_true == y_pred))}
    if proba is not None:
        proba = np.asarray(proba)
        if proba.shape != (len(y_true), NUM_CLASSES):
            raise ValueError(f"proba has shape {proba.shape}; expected ({len(y_true)}, "
                             f"{NUM_CLASSES})")
        metrics["test_loss"] = cross_entropy(y_true, proba)
    metrics.update({
        "n_test": len(y_true),
        "per_digit": per_digit,
        "macro_avg": average("macro"),
        "weighted_avg": average("weighted"),
        "confusion_matrix": cm.astype(int).tolist(),
        "most_confused_pairs": pairs[:TOP_CONFUSED],
    })
    return metrics


def evaluate(
    model_uri: str,
    prepared_uri: str,
    store: Store,
    run_key: str,
    *,
    history_uri: str | None = None,
) -> dict[str, Any]:
    """Evaluate the model on the prepared test split and store metrics, report and plots.

    Idempotent: a retry for the same model and data returns the recorded result.

    Args:
        model_uri: the trained ``model.keras``.
        prepared_uri: ``prepared.npz`` from the preprocess stage.
        store: the run's store.
        run_key: the run's key.
        history_uri: the train stage's ``history.json``, for the training-curves plot.

    Returns:
        ``metrics_uri``, ``report_uri``, ``predictions_uri``, ``plots`` (name -> URI),
        ``test_accuracy``, ``test_loss``, ``n_test``, and the inputs (``model_uri``,
        ``model_sha256``, ``prepared_uri``, ``history_uri``).

    Raises:
        ObjectNotFound: if the model, the prepared data or the history does not exist.
        ValueError: if the model cannot be loaded or does not fit the data.
    """
    from sklearn.metrics import classification_report

    from mnist_tasks import plots

    prefix = f"runs/{run_key}/evaluate"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnist-model-") as tmp:
        model_path = Path(tmp) / "model.keras"
        store.download_file(store.key_of(model_uri), model_path)
        # The model's content, not its URI, says whether an earlier result still holds: a
        # retrained model may replace the file at the same URI.
        model_sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
        inputs = {"model_uri": model_uri, "model_sha256": model_sha256,
                  "prepared_uri": prepared_uri, "history_uri": history_uri}
        recorded = recorded_result(store, f"{prefix}/result.json", inputs,
                                   requires=[f"{prefix}/metrics.json"])
        if recorded is not None:
            log.info("evaluate: %s already evaluated (test accuracy %.4f); reusing it",
                     model_uri, recorded["test_accuracy"])
            return recorded
        try:
            model = load_keras_model(model_path)
        except ValueError as exc:
            raise ValueError(f"{model_uri}: {exc}") from exc
    prepared = load_prepared(prepared_uri, store)
    x_test, y_test = prepared.x_test, np.asarray(prepared.y_test, dtype=np.int64)
    expected = tuple(model.input_shape[1:])
    if tuple(x_test.shape[1:]) != expected:
        raise ValueError(f"{model_uri} takes inputs of shape {expected} but the test images "
                         f"in {prepared_uri} have shape {tuple(x_test.shape[1:])}")
    proba = predict_proba(model, x_test)
    y_pred = np.argmax(proba, axis=1).astype(np.int64)
    metrics = classification_metrics(y_test, y_pred, proba)
    history = read_json(store, store.key_of(history_uri)) if history_uri else None

    plot_uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mnist-evaluate-") as tmp:
        work = Path(tmp)
        np.save(work / "predictions.npy", y_pred)
        store.upload_file(work / "predictions.npy", f"{prefix}/predictions.npy")
        report = classification_report(y_test, y_pred, labels=list(range(NUM_CLASSES)),
                                       digits=4, zero_division=0)
        store.write_bytes(f"{prefix}/report.txt", report.encode())

        figures = {
            "confusion_matrix": lambda p: plots.confusion_matrix_png(
                metrics["confusion_matrix"], p,
                title=f"Confusion matrix (test accuracy {metrics['test_accuracy']:.2%})"),
            "sample_grid": lambda p: _sample_grid(plots, x_test, y_test, y_pred, p),
            "misclassified_grid": lambda p: _misclassified_grid(
                plots, x_test, y_test, y_pred, proba, p),
        }
        if history is not None:
            figures["training_curves"] = lambda p: plots.training_curves_png(
                history, p, title=f"Training curves ({history.get('preset', 'model')})")
        for name, draw in figures.items():
            path = draw(work / f"{name}.png")
            store.upload_file(path, f"{prefix}/{name}.png")
            plot_uris[name] = store.uri_for(f"{prefix}/{name}.png")

    write_json(store, f"{prefix}/metrics.json", metrics)
    result: dict[str, Any] = {
        "metrics_uri": store.uri_for(f"{prefix}/metrics.json"),
        "report_uri": store.uri_for(f"{prefix}/report.txt"),
        "predictions_uri": store.uri_for(f"{prefix}/predictions.npy"),
        "plots": plot_uris,
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "n_test": metrics["n_test"],
        **inputs,
    }
    write_json(store, f"{prefix}/result.json", result)
    log_summary(metrics, time.perf_counter() - start, result["metrics_uri"])
    return result


def log_summary(metrics: dict[str, Any], seconds: float, metrics_uri: str) -> None:
    """Log a short summary: accuracy, loss, the 3 worst digits by recall, most-confused pairs."""
    worst = sorted(metrics["per_digit"].items(), key=lambda kv: kv[1]["recall"])[:3]
    worst_txt = ", ".join(f"{d} ({v['recall']:.2%})" for d, v in worst)
    pairs_txt = ", ".join(f"{p['true']}->{p['predicted']} x{p['count']}"
                          for p in metrics["most_confused_pairs"][:3]) or "none"
    loss = metrics.get("test_loss")
    log.info("evaluated on %d test images in %.1f s: accuracy=%.4f loss=%s; worst recall: %s; "
             "most confused (true->pred): %s; metrics -> %s", metrics["n_test"], seconds,
             metrics["test_accuracy"], f"{loss:.4f}" if loss is not None else "n/a",
             worst_txt, pairs_txt, metrics_uri)


def _sample_grid(plots: Any, x: np.ndarray, y: np.ndarray, y_pred: np.ndarray,
                 path: Path) -> Path:
    n = min(9, len(x))
    captions = [f"true {y[i]} / pred {y_pred[i]}" for i in range(n)]
    colors = ["black" if y[i] == y_pred[i] else "red" for i in range(n)]
    return plots.digit_grid_png(x[:n], captions, path, title="Test digits: true / predicted",
                                cols=3, colors=colors)


def _misclassified_grid(plots: Any, x: np.ndarray, y: np.ndarray, y_pred: np.ndarray,
                        proba: np.ndarray, path: Path) -> Path:
    wrong = np.flatnonzero(y != y_pred)
    confidence = proba[wrong, y_pred[wrong]]
    shown = wrong[np.argsort(-confidence, kind="stable")][:MISCLASSIFIED_SHOWN]
    captions = [f"true {y[i]} / pred {y_pred[i]}\n({proba[i, y_pred[i]]:.1%} sure)"
                for i in shown]
    return plots.digit_grid_png(
        x[shown], captions, path, cols=4,
        title=f"Most confidently misclassified ({len(wrong)} errors in {len(y)})")
