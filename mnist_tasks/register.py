"""Register: store the evaluated model as an immutable registry version, verify it, promote it.

Steps, each safe to retry:

1. write the version: ``model.keras``, ``metrics.json``, the evaluation plots and report,
   ``model_card.md`` and ``metadata.json`` (metrics, parameters, data fingerprint, run, code
   and package versions, gate decision);
2. before the version becomes visible, load the model back *from the registry* with Keras
   safe mode and check that its predictions on the test set equal the evaluated
   ``predictions.npy`` exactly (the notebooks' "save, reload, verify"); a mismatch raises and
   the version never gets its manifest, so no reader ever sees it;
3. only if the decision is PROMOTE (the gate's, approved by a person where the ``approval``
   step asked one, or a person's override of the gate's REJECT), move the ``champion`` alias
   by compare-and-swap *from the champion the gate compared against* (the previous champion
   stays on the alias's rollback stack). If the champion has moved since the gate ran, the
   version is registered but not promoted: a WARNING says why, and so do
   ``promotion_skipped`` in its metadata and result.

Registering the same run again returns the version it created and does not move the alias a
second time.

Run it alone: ``python -m mnist_tasks register --gate @gate.json`` (the gate stage's output).
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
    AliasConflict,
    FileSource,
    PendingVersion,
    Registry,
    RegistryError,
    VersionInfo,
    package_versions,
    validate_run_key,
)
from mnist_tasks.storage import Store

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
        ``approval`` (the approval step's record: see :func:`mnist_tasks.approve.apply_response`;
        None without one), ``sources`` (the run artifacts the version was made from), and
        ``lineage`` (the dataset
        version, its increments and quarantines, the inputs key and code fingerprint: what the
        check stage compares to skip a run whose inputs the champion already covers).
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
            "fresh_accuracy": evaluation.get("fresh_accuracy"),
            "n_test": metrics.get("n_test"),
            "macro_avg": metrics.get("macro_avg"),
            "weighted_avg": metrics.get("weighted_avg"),
            "per_digit_recall": {d: m.get("recall") for d, m in per_digit.items()},
        },
        "gate": {k: gate_result.get(k) for k in (
            "decision", "reasons", "champion_version", "champion_accuracy",
            "challenger_accuracy", "mcnemar", "decision_uri", "fresh")}
        # After an approval step the gate's own verdict is kept here (REJECT on an override).
        | ({"decision": gate_result["gate_decision"]} if gate_result.get("gate_decision") else {}),
        # Who approved, rejected or overrode, when and why (mnist_tasks.approve); None without
        # an approval step.
        "approval": dict(gate_result["approval"]) if isinstance(
            gate_result.get("approval"), Mapping) else None,
        "lineage": dict(gate_result.get("lineage") or {}),
        # The run's candidates (docs/candidates.md): [] for a run of one.
        "candidates": list(train_result.get("candidates") or []),
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


def _gate_inputs(decision: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], str]:
    """The gate decision, evaluation, train result and prepared URI from the gate's result."""
    verdict = decision.get("decision")
    if verdict not in DECISIONS:
        raise ValueError(f"gate decision {verdict!r} is not one of {', '.join(DECISIONS)}")
    if "champion_version" not in decision:
        raise ValueError("gate result has no 'champion_version' (the champion it compared "
                         "against); pass the gate stage's result unchanged")
    evaluation = decision.get("evaluation")
    if not isinstance(evaluation, Mapping):
        raise ValueError("gate result has no 'evaluation' object (the evaluate result it "
                         "carries); pass the gate stage's result unchanged")
    trained = evaluation.get("trained")
    if not isinstance(trained, Mapping):
        raise ValueError("gate result's 'evaluation' has no 'trained' object (the train "
                         "result it carries); pass the gate stage's result unchanged")
    prepared_uri = decision.get("prepared_uri")
    if not isinstance(prepared_uri, str) or not prepared_uri:
        raise ValueError("gate result has no 'prepared_uri'; pass the gate stage's result "
                         "unchanged")
    return verdict, dict(evaluation), dict(trained), prepared_uri


def _champion_moved(gate_champion: int | None, current: int | None) -> str:
    def name(version: int | None) -> str:
        return f"v{version}" if version is not None else "no champion"

    return (f"the champion moved from {name(gate_champion)} (what the gate compared against) "
            f"to {name(current)} before register; registered without promoting (run the gate "
            f"again to compare with {name(current)})")


def register(
    decision: Mapping[str, Any],
    *,
    store: Store,
    registry: Registry,
    run_key: str,
    dag_id: str | None,
    run_id: str,
    code_version: str | None,
) -> dict[str, Any]:
    """Register the run's model as a new version, verify the stored copy, promote on PROMOTE.

    The champion alias is moved only from the champion the gate compared against
    (``decision["champion_version"]``), by compare-and-swap. If the champion has moved since
    the gate ran (a manual promote or rollback, another run), the version is registered
    without promoting: a WARNING is logged, and the reason is recorded as
    ``promotion_skipped`` in the version's metadata (when known before the version is
    written, the usual case) and in the result.

    Args:
        decision: what the gate stage returned: ``decision``, ``reasons``,
            ``champion_version``, ... plus ``prepared_uri`` and ``evaluation`` (the evaluate
            result, which carries ``trained``, the train result).
        store: the store holding the run's artifacts.
        registry: the model registry to write to.
        run_key: the run's key (``config.run_key(run_id)``); registration is idempotent on it.
        dag_id, run_id, code_version: recorded in the metadata (dag_id/code_version None when
            unknown).

    Returns:
        ``model_uri`` (the registry copy), ``version``, ``test_accuracy``, ``champion`` (whether
        this version is the champion now), ``verified``, ``registry_uri`` (the version folder),
        ``decision``, ``previous_champion`` (on PROMOTE the champion this version replaced,
        also on a retry; otherwise the champion left in place; None if there was none),
        ``promotion_skipped`` (why a PROMOTE did not move the champion, else None).

    Raises:
        ValueError: for a gate result without its decision or carried results, or a bad run key.
        VerificationError: if the stored model does not reproduce the evaluated predictions.
        RegistryError, StorageError: on registry or storage failures (a retry resumes).
    """
    run_key = validate_run_key(run_key)
    verdict, evaluation, train_result, prepared_uri = _gate_inputs(decision)
    raw_champion = decision.get("champion_version")
    gate_champion = int(raw_champion) if raw_champion is not None else None

    info = registry.version_for_run(run_key)
    if info is not None:
        log.info("register: run %s is already %s v%d; not writing it again",
                 run_key, registry.model_name, info.version)
    else:
        skipped = None
        if verdict == "PROMOTE":
            now = registry.get_alias(CHAMPION)
            if now != gate_champion:
                skipped = _champion_moved(gate_champion, now)
        info = _write(run_key, train_result=train_result, evaluation=evaluation,
                      gate_result=decision, prepared_uri=prepared_uri, store=store,
                      registry=registry, dag_id=dag_id, run_id=run_id,
                      code_version=code_version, promotion_skipped=skipped)
    verification = info.metadata.get("verification") or {}

    before = registry.alias_record(CHAMPION)
    current = before.version if before else None
    previous = current
    skipped = None
    if verdict == "PROMOTE":
        history = list(before.history) if before else []
        ours = [i for i, h in enumerate(history)
                if h.get("version") == info.version and h.get("action") == "set"]
        recorded = info.metadata.get("promotion_skipped")
        if ours:
            # A retry: this version was promoted before; a later move (another run, a rollback)
            # must not be undone.
            previous = int(history[ours[0] - 1]["version"]) if ours[0] > 0 else None
            champion = current == info.version
            log.info("register: v%d was promoted earlier; champion stays at v%s",
                     info.version, current)
        elif recorded:
            skipped = str(recorded)
            champion = current == info.version
            log.warning("register: v%d not promoted: %s", info.version, skipped)
        else:
            try:
                record = registry.set_alias(CHAMPION, info.version, expected=gate_champion)
            except AliasConflict:
                # Moved after the version was written: the promise still holds (not promoted);
                # the reason is in the log and the result (the version is already immutable).
                now_record = registry.alias_record(CHAMPION)
                current = previous = now_record.version if now_record else None
                skipped = _champion_moved(gate_champion, current)
                champion = False
                log.warning("register: v%d not promoted: %s", info.version, skipped)
            else:
                champion = record.version == info.version
                previous = record.previous[-1] if record.previous else None
                log.info("register: champion -> v%d (was %s)", info.version,
                         f"v{current}" if current is not None else "unset")
    else:
        champion = current == info.version
        log.info("register: gate said %s; champion stays at %s", verdict,
                 f"v{current}" if current is not None else "unset")

    return {
        "model_uri": info.model_uri,
        "version": info.version,
        "test_accuracy": info.test_accuracy,
        "champion": champion,
        "verified": bool(verification.get("verified")),
        "registry_uri": info.uri,
        "decision": verdict,
        "previous_champion": previous,
        "promotion_skipped": skipped,
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
    promotion_skipped: str | None,
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
    ) | {"promotion_skipped": promotion_skipped}

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
