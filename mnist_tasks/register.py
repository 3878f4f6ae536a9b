"""Register: store the evaluated model as an immutable registry version, verify it, promote it.

Steps, each safe to retry:

1. write the version: ``model.keras``, ``metrics.json``, the evaluation plots and report,
   ``model_card.md`` and ``metadata.json`` (metrics, parameters, data fingerprint, run, code
   and package versions, gate decision);
2. before the version becomes visible, load the model back *from the registry* with Keras
   safe mode and check that its predictions on the test set equal the evaluated
   ``predictions.npy`` exactly (the notebooks' "save, reload, verify"); a mismatch raises and
   the version never gets its manifest, so no reader ever sees it;
3. only if the gate said PROMOTE, move the ``champion`` alias by compare-and-swap (the previous
   champion stays on the alias's rollback stack).

Registering the same run again returns the version it created and does not move the alias a
second time.

Run it alone: ``python -m mnist_tasks register --prepared URI --train @t.json ...``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks.model_card import render_model_card
from mnist_tasks.registry import (
    CHAMPION,
    MODEL_FILE,
    FileSource,
    PendingVersion,
    Registry,
    RegistryError,
    VersionInfo,
    package_versions,
    validate_run_key,
)
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

DECISIONS = ("PROMOTE", "REJECT")
# Training result fields copied into the metadata's "training" section.
TRAINING_FIELDS = ("preset", "epochs_run", "fit_seconds", "device", "resumed_from_epoch",
                   "best_val_accuracy", "best_epoch", "stopped_early", "n_train", "n_val")
DATASET_FIELDS = ("fingerprint", "data_sha256", "dataset_uri", "val_fraction", "seed",
                  "n_train", "n_val", "n_test", "image_shape")


class VerificationError(RegistryError):
    """The model read back from the registry does not reproduce the evaluated predictions."""


def _file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _prepared_meta(store: Store, prepared_uri: str) -> dict[str, Any]:
    key = store.key_of(prepared_uri)
    meta_key = key.rsplit("/", 1)[0] + "/prepared.json"
    try:
        return dict(json.loads(store.read_bytes(meta_key)))
    except ObjectNotFound:
        log.warning("register: %s not found; the data fingerprint is not recorded",
                    store.uri_for(meta_key))
        return {}


def build_metadata(
    *,
    run_key: str,
    train_result: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    gate_result: Mapping[str, Any],
    metrics: Mapping[str, Any],
    prepared_meta: Mapping[str, Any],
    dag_id: str | None,
    run_id: str | None,
    code_version: str | None,
) -> dict[str, Any]:
    """The ``metadata.json`` content of a version (the registry adds version and created_at).

    Returns:
        ``run``, ``code_version``, ``packages``, ``dataset``, ``parameters``, ``training``,
        ``metrics`` (summary: test accuracy and loss, averages, per-digit recall), ``gate``,
        ``sources`` (the run artifacts the version was made from).
    """
    per_digit = metrics.get("per_digit") or {}
    return {
        "run": {"dag_id": dag_id, "run_id": run_id, "run_key": run_key},
        "code_version": code_version,
        "packages": package_versions(),
        "dataset": {k: prepared_meta.get(k) for k in DATASET_FIELDS if k in prepared_meta}
        | {"prepared_uri": evaluation.get("prepared_uri") or prepared_meta.get("prepared_uri")},
        "parameters": dict(train_result.get("params") or {}),
        "training": {k: train_result[k] for k in TRAINING_FIELDS if k in train_result}
        | {"runtime": train_result.get("runtime")},
        "metrics": {
            "test_accuracy": evaluation.get("test_accuracy", metrics.get("test_accuracy")),
            "test_loss": evaluation.get("test_loss", metrics.get("test_loss")),
            "n_test": metrics.get("n_test"),
            "macro_avg": metrics.get("macro_avg"),
            "weighted_avg": metrics.get("weighted_avg"),
            "per_digit_recall": {d: m.get("recall") for d, m in per_digit.items()},
        },
        "gate": {k: gate_result.get(k) for k in (
            "decision", "reasons", "champion_version", "champion_accuracy",
            "challenger_accuracy", "mcnemar", "decision_uri")},
        "sources": {
            "model_uri": train_result.get("model_uri"),
            "metrics_uri": evaluation.get("metrics_uri"),
            "predictions_uri": evaluation.get("predictions_uri"),
        },
    }


def _verifier(
    registry: Registry, x_test: np.ndarray, expected: np.ndarray, predictions_uri: str
) -> Any:
    """A registry verifier: reload the stored model in safe mode, compare predictions."""

    def verify(pending: PendingVersion) -> dict[str, Any]:
        import keras

        from mnist_tasks.artifacts import load_model_from_store, predict_classes

        model = load_model_from_store(registry.store, pending.model_uri)
        got = np.asarray(predict_classes(model, x_test))
        if got.shape != expected.shape or not np.array_equal(got, expected.astype(got.dtype)):
            differ = int((got != expected).sum()) if got.shape == expected.shape else len(got)
            raise VerificationError(
                f"{pending.model_uri} reloaded with safe_mode=True predicts differently from "
                f"the evaluated model ({predictions_uri}) on {differ} of {len(expected)} test "
                f"images; version {pending.version} is left incomplete and the champion is "
                "not moved"
            )
        log.info("register: reloaded %s (safe mode): predictions on %d test images identical",
                 pending.model_uri, len(expected))
        return {
            "verified": True,
            "method": "reloaded from the registry with keras.saving.load_model(safe_mode=True); "
                      "argmax predictions on the test set equal the evaluated predictions.npy",
            "n_test": len(expected),
            "predictions_uri": predictions_uri,
            "keras_backend": keras.backend.backend(),
        }

    return verify


def register(
    run_key: str,
    *,
    train_result: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    gate_result: Mapping[str, Any],
    prepared_uri: str,
    store: Store,
    registry: Registry,
    dag_id: str | None,
    run_id: str | None,
    code_version: str | None,
) -> dict[str, Any]:
    """Register the run's model as a new version, verify the stored copy, promote on PROMOTE.

    Args:
        run_key: the run's key (``config.run_key(run_id)``); registration is idempotent on it.
        train_result: what train returned (``model_uri``, ``params``, ...).
        evaluation: what evaluate returned (``metrics_uri``, ``predictions_uri``, ``plots``,
            ``report_uri``, ``test_accuracy``, ``test_loss``).
        gate_result: what gate returned (``decision``, ``reasons``, ...).
        prepared_uri: the prepared data the model was evaluated on.
        store: the store holding the run's artifacts.
        registry: the model registry to write to.
        dag_id, run_id, code_version: recorded in the metadata (None when unknown).

    Returns:
        ``model_uri`` (the registry copy), ``version``, ``test_accuracy``, ``champion`` (whether
        this version is the champion now), ``verified``, ``registry_uri`` (the version folder),
        ``decision``, ``previous_champion`` (on PROMOTE the champion this version replaced,
        also on a retry; on REJECT the champion left in place; None if there was none).

    Raises:
        ValueError: for a gate decision other than PROMOTE/REJECT or a bad run key.
        VerificationError: if the stored model does not reproduce the evaluated predictions.
        RegistryError, StorageError: on registry or storage failures (a retry resumes).
    """
    run_key = validate_run_key(run_key)
    decision = gate_result.get("decision")
    if decision not in DECISIONS:
        raise ValueError(f"gate decision {decision!r} is not one of {', '.join(DECISIONS)}")

    info = registry.version_for_run(run_key)
    if info is not None:
        log.info("register: run %s is already %s v%d; not writing it again",
                 run_key, registry.model_name, info.version)
    else:
        info = _write(run_key, train_result=train_result, evaluation=evaluation,
                      gate_result=gate_result, prepared_uri=prepared_uri, store=store,
                      registry=registry, dag_id=dag_id, run_id=run_id,
                      code_version=code_version)
    verification = info.metadata.get("verification") or {}

    before = registry.alias_record(CHAMPION)
    current = before.version if before else None
    previous = current
    if decision == "PROMOTE":
        history = list(before.history) if before else []
        ours = [i for i, h in enumerate(history)
                if h.get("version") == info.version and h.get("action") == "set"]
        if ours:
            # A retry: this version was promoted before; a later move (another run, a rollback)
            # must not be undone.
            previous = int(history[ours[0] - 1]["version"]) if ours[0] > 0 else None
            champion = current == info.version
            log.info("register: v%d was promoted earlier; champion stays at v%s",
                     info.version, current)
        else:
            record = registry.promote(info.version)
            champion = record.version == info.version
            previous = record.previous[-1] if record.previous else None
            log.info("register: champion -> v%d (was %s)", info.version,
                     f"v{current}" if current is not None else "unset")
    else:
        champion = current == info.version
        log.info("register: gate said %s; champion stays at %s", decision,
                 f"v{current}" if current is not None else "unset")

    return {
        "model_uri": info.model_uri,
        "version": info.version,
        "test_accuracy": info.test_accuracy,
        "champion": champion,
        "verified": bool(verification.get("verified")),
        "registry_uri": info.uri,
        "decision": decision,
        "previous_champion": previous,
    }


def _write(
    run_key: str,
    *,
    train_result: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    gate_result: Mapping[str, Any],
    prepared_uri: str,
    store: Store,
    registry: Registry,
    dag_id: str | None,
    run_id: str | None,
    code_version: str | None,
) -> VersionInfo:
    from mnist_tasks.artifacts import load_prepared

    prepared = load_prepared(prepared_uri, store)
    predictions_uri = str(evaluation["predictions_uri"])
    with store.local_copy(store.key_of(predictions_uri)) as path:
        expected = np.load(path, allow_pickle=False)
    metrics_bytes = store.read_bytes(store.key_of(str(evaluation["metrics_uri"])))
    metrics = json.loads(metrics_bytes)
    metadata = build_metadata(
        run_key=run_key, train_result=train_result, evaluation=evaluation,
        gate_result=gate_result, metrics=metrics, prepared_meta=prepared.meta,
        dag_id=dag_id, run_id=run_id, code_version=code_version,
    )

    def card(pending: PendingVersion) -> bytes:
        text = render_model_card(
            model_name=pending.model_name, version=pending.version,
            created_at=pending.created_at, model_uri=pending.model_uri,
            store_uri=registry.store.uri, metadata={**metadata, "run_key": run_key},
            metrics=metrics,
        )
        return text.encode()

    with contextlib.ExitStack() as stack:
        model_path: Path = stack.enter_context(
            store.local_copy(store.key_of(str(train_result["model_uri"]))))
        files: dict[str, FileSource] = {MODEL_FILE: model_path, "metrics.json": metrics_bytes,
                                        "model_card.md": card}
        extra = dict(evaluation.get("plots") or {})
        if evaluation.get("report_uri"):
            extra["report"] = evaluation["report_uri"]
        for uri in extra.values():
            files[_file_name(str(uri))] = store.read_bytes(store.key_of(str(uri)))
        verify = _verifier(registry, prepared.x_test, expected, predictions_uri)
        return registry.register(run_key, files, metadata, verify=verify)
