"""Evaluate: test-set metrics, per-digit report, confusion matrix, plots and predictions.

Loads the trained model (``safe_mode=True``) and the prepared data, and writes under
``runs/<run-key>/evaluate/``: ``metrics.json`` (accuracy, loss, per-digit precision, recall and
F1, averages, the confusion matrix, the most confused pairs, and ``fresh``: the same model on
the increments' fresh data, overall, per increment and per digit, or null), ``predictions.npy``
and ``fresh_predictions.npy`` (the predicted classes), ``report.txt``, the plots, and last
``result.json``, the result (a retry of the same model and data returns it). The benchmark is
the fixed MNIST test set, so every version is compared on the same images.

Run it alone: ``python -m mnist_tasks evaluate --trained @train.json --store URI --run-id ID``.
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
    Prepared,
    load_keras_model,
    load_prepared,
    predict_proba,
    read_json,
    recorded_result,
    write_json,
    write_result,
)
from mnist_tasks.results import (
    EvaluateResult,
    FreshDigitRecall,
    FreshIncrementMetrics,
    FreshMetrics,
    to_json,
)
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

TOP_CONFUSED = 5
MISCLASSIFIED_SHOWN = 16
_EPS = 1e-7  # probability clip for the cross-entropy, as Keras does


def cross_entropy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean categorical cross-entropy of integer labels under predicted probabilities (no
    weight-regularisation term, so models trained with and without L2 compare fairly)."""
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


def fresh_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    increment: np.ndarray,
    increment_ids: list[str],
) -> FreshMetrics | None:
    """Accuracy on the fresh data, overall, per increment and per digit.

    Args:
        y_true: the fresh labels (N,).
        y_pred: the predicted classes (N,).
        increment: for each image, the index of its increment in ``increment_ids`` (N,).
        increment_ids: the increments' ids, in the prepared data's order.

    Returns:
        None when there is no fresh image, else ``n``, ``accuracy``, ``per_increment`` (every
        listed increment, in order; its ``accuracy`` None without images) and ``per_digit``
        ("0".."9"; ``recall`` None without images of that digit).

    Raises:
        ValueError: if the lengths differ, a label is not a digit, or an increment index is
            outside ``increment_ids``.
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    increment = np.asarray(increment).astype(np.int64).ravel()
    if not len(y_true) == len(y_pred) == len(increment):
        raise ValueError(f"fresh data: {len(y_true)} labels, {len(y_pred)} predictions and "
                         f"{len(increment)} increment indices; need the same number")
    if len(y_true) == 0:
        return None
    for name, arr in (("fresh labels", y_true), ("fresh predictions", y_pred)):
        if arr.min() < 0 or arr.max() >= NUM_CLASSES:
            raise ValueError(f"{name} include values outside 0..{NUM_CLASSES - 1}")
    outside = increment[(increment < 0) | (increment >= len(increment_ids))]
    if len(outside):
        raise ValueError(f"fresh_increment holds index {int(outside[0])}, but the increments "
                         f"listed (fresh_increments) are {list(increment_ids)}")
    right = y_true == y_pred
    per_increment: dict[str, FreshIncrementMetrics] = {}
    for index, inc_id in enumerate(increment_ids):
        mine = increment == index
        n = int(mine.sum())
        per_increment[str(inc_id)] = FreshIncrementMetrics(
            n=n, accuracy=float(right[mine].mean()) if n else None)
    support = np.bincount(y_true, minlength=NUM_CLASSES)
    hits = np.bincount(y_true[right], minlength=NUM_CLASSES)
    per_digit = {
        str(d): FreshDigitRecall(recall=float(hits[d] / support[d]) if support[d] else None,
                                 support=int(support[d]))
        for d in range(NUM_CLASSES)
    }
    return FreshMetrics(n=len(y_true), accuracy=float(right.mean()),
                        per_increment=per_increment, per_digit=per_digit)


def evaluate(
    model_uri: str,
    prepared_uri: str,
    store: Store,
    run_key: str,
    *,
    history_uri: str | None = None,
    train_uri: str | None = None,
) -> EvaluateResult:
    """Evaluate the model on the benchmark (the test split) and the fresh data; store the results.

    Idempotent: a retry for the same model and data returns the recorded result.

    Args:
        model_uri: the trained ``model.keras``.
        prepared_uri: ``prepared.npz`` from the preprocess stage.
        store: the run's store.
        run_key: the run's key.
        history_uri: the train stage's ``history.json``, for the training-curves plot.
        train_uri: the model's train record, cited in the result for register.

    Returns:
        The URIs of the metrics, report, predictions and plots, the benchmark accuracy and
        loss, the fresh metrics (:func:`fresh_metrics`; None without fresh data), and the
        inputs; also recorded as ``result.json`` (``result_uri``).

    Raises:
        ObjectNotFound: if the model, the prepared data or the history does not exist.
        ValueError: if the model cannot be loaded or does not fit the data, or the fresh
            arrays do not fit together.
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
                  "prepared_uri": prepared_uri, "history_uri": history_uri,
                  "train_uri": train_uri}
        recorded = _reusable(store, prefix, inputs)
        if recorded is not None:
            fresh_acc = recorded.fresh_accuracy
            log.info("evaluate: %s already evaluated (test accuracy %.4f, fresh accuracy %s); "
                     "reusing it", model_uri, recorded.test_accuracy,
                     "n/a" if fresh_acc is None else f"{fresh_acc:.4f}")
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
    x_fresh, y_fresh, fresh_increment, fresh_ids = _fresh_data(prepared, prepared_uri)
    if len(y_fresh) and tuple(x_fresh.shape[1:]) != expected:
        raise ValueError(f"{model_uri} takes inputs of shape {expected} but the fresh images "
                         f"in {prepared_uri} have shape {tuple(x_fresh.shape[1:])}")
    fresh_pred = (np.argmax(predict_proba(model, x_fresh), axis=1).astype(np.int64)
                  if len(y_fresh) else np.zeros(0, dtype=np.int64))
    try:
        fresh = fresh_metrics(y_fresh, fresh_pred, fresh_increment, fresh_ids)
    except ValueError as exc:
        raise ValueError(f"{prepared_uri}: {exc}") from exc
    metrics["fresh"] = None if fresh is None else to_json(fresh)
    history = read_json(store, store.key_of(history_uri)) if history_uri else None

    plot_uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="mnist-evaluate-") as tmp:
        work = Path(tmp)
        np.save(work / "predictions.npy", y_pred)
        store.upload_file(work / "predictions.npy", f"{prefix}/predictions.npy")
        if fresh is not None:
            np.save(work / "fresh_predictions.npy", fresh_pred)
            store.upload_file(work / "fresh_predictions.npy", f"{prefix}/fresh_predictions.npy")
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
    result = EvaluateResult(
        metrics_uri=store.uri_for(f"{prefix}/metrics.json"),
        report_uri=store.uri_for(f"{prefix}/report.txt"),
        predictions_uri=store.uri_for(f"{prefix}/predictions.npy"),
        plots=plot_uris,
        test_accuracy=metrics["test_accuracy"],
        test_loss=metrics["test_loss"],
        n_test=metrics["n_test"],
        fresh=fresh,
        fresh_accuracy=None if fresh is None else fresh.accuracy,
        fresh_predictions_uri=(None if fresh is None
                               else store.uri_for(f"{prefix}/fresh_predictions.npy")),
        model_uri=model_uri,
        model_sha256=model_sha256,
        prepared_uri=prepared_uri,
        history_uri=history_uri,
        train_uri=train_uri,
        result_uri=store.uri_for(f"{prefix}/result.json"),
    )
    write_result(store, f"{prefix}/result.json", result)
    log_summary(metrics, fresh, time.perf_counter() - start, result.metrics_uri)
    return result


def _reusable(store: Store, prefix: str, inputs: dict[str, Any]) -> EvaluateResult | None:
    """The recorded result of an earlier attempt, if it still holds (with its fresh part)."""
    recorded = recorded_result(store, f"{prefix}/result.json", EvaluateResult, inputs,
                               requires=[f"{prefix}/metrics.json"])
    if recorded is None:
        return None
    fresh_uri = recorded.fresh_predictions_uri
    if fresh_uri is not None and not store.exists(store.key_of(fresh_uri)):
        return None
    return recorded


def _fresh_data(
    prepared: Prepared, prepared_uri: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """The fresh images, labels, increment indices and increment ids of the prepared data.

    Prepared data without accepted increments (or made before fresh data existed) has none.
    """
    x, y, increment = prepared.x_fresh, prepared.y_fresh, prepared.fresh_increment
    if not len(x) == len(y) == len(increment):
        raise ValueError(f"{prepared_uri}: x_fresh has {len(x)} images, y_fresh {len(y)} "
                         f"labels and fresh_increment {len(increment)} entries; need the "
                         "same number")
    ids = [str(i) for i in prepared.meta.get("fresh_increments") or []]
    return x, np.asarray(y, dtype=np.int64), np.asarray(increment, dtype=np.int64), ids


def fresh_summary(fresh: FreshMetrics | None) -> str:
    """``fresh accuracy=0.9412 on 500 images (inc-001 0.9500 n=250, ...)``, or
    ``fresh: no fresh data``."""
    if fresh is None:
        return "fresh: no fresh data"
    parts = ", ".join(
        f"{inc_id} {'n/a' if m.accuracy is None else format(m.accuracy, '.4f')} n={m.n}"
        for inc_id, m in fresh.per_increment.items())
    return (f"fresh accuracy={fresh.accuracy:.4f} on {fresh.n} images"
            + (f" ({parts})" if parts else ""))


def log_summary(metrics: dict[str, Any], fresh: FreshMetrics | None, seconds: float,
                metrics_uri: str) -> None:
    """Log a short summary: accuracy, loss, the 3 worst digits by recall, most-confused pairs,
    and the fresh accuracy overall and per increment."""
    worst = sorted(metrics["per_digit"].items(), key=lambda kv: kv[1]["recall"])[:3]
    worst_txt = ", ".join(f"{d} ({v['recall']:.2%})" for d, v in worst)
    pairs_txt = ", ".join(f"{p['true']}->{p['predicted']} x{p['count']}"
                          for p in metrics["most_confused_pairs"][:3]) or "none"
    loss = metrics.get("test_loss")
    log.info("evaluated on %d test images in %.1f s: accuracy=%.4f loss=%s; worst recall: %s; "
             "most confused (true->pred): %s; %s; metrics -> %s", metrics["n_test"], seconds,
             metrics["test_accuracy"], f"{loss:.4f}" if loss is not None else "n/a",
             worst_txt, pairs_txt, fresh_summary(fresh), metrics_uri)


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
