"""Register: store the evaluated model as an immutable registry version, verify it, promote it.

Takes the gate's decision (or the approval step's, which cites it) and reads the rest through
their references. Steps, each safe to retry: write the version (model, metrics, plots, report,
model card, metadata with its lineage); before it becomes visible, load the model back from
the registry in safe mode and check its test predictions equal the evaluated ones exactly;
only on PROMOTE, move the ``champion`` alias by compare-and-swap *from the champion the gate
compared against*. If the champion moved since the gate ran, the version is registered but not
promoted (``promotion_skipped`` says why). Registering the same run again returns its version
and does not move the alias twice. Design: docs/registry.md.

Run it alone: ``python -m mnist_tasks register --gate @gate.json --store URI --run-id ID``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks import monitor
from mnist_tasks.artifacts import candidates_key, prepared_record_uri, read_json, read_result
from mnist_tasks.model_card import render_model_card
from mnist_tasks.registry_api import (
    CHAMPION,
    MODEL_FILE,
    AliasConflict,
    FileSource,
    ModelRegistry,
    PendingVersion,
    RegistryError,
    VersionInfo,
    validate_run_key,
)
from mnist_tasks.results import (
    ApproveResult,
    EvaluateResult,
    GateDecision,
    PreprocessResult,
    RegisterResult,
    TrainResult,
    to_json,
)
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)


# Training result fields copied into the metadata's "training" section.
TRAINING_FIELDS = ("preset", "epochs_run", "fit_seconds", "device", "resumed_from_epoch",
                   "best_val_accuracy", "best_epoch", "stopped_early", "n_train", "n_val")
DATASET_FIELDS = ("fingerprint", "data_sha256", "dataset_uri", "val_fraction", "seed",
                  "n_train", "n_val", "n_test", "image_shape")


class VerificationError(RegistryError):
    """The model read back from the registry does not reproduce the evaluated predictions."""


def _file_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape a model, read from installed metadata.

    Never imports the packages themselves (importing TensorFlow takes seconds).

    Returns:
        ``python``, ``keras``, ``tensorflow``, ``jax``, ``numpy``, ``scikit-learn``: a version
        string, or None when not installed.
    """
    from importlib import metadata

    def version(*dists: str) -> str | None:
        for dist in dists:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return None

    return {
        "python": platform.python_version(),
        "keras": version("keras"),
        "tensorflow": version("tensorflow", "tensorflow-cpu", "tensorflow_cpu"),
        "jax": version("jax"),
        "numpy": version("numpy"),
        "scikit-learn": version("scikit-learn"),
    }


def build_metadata(
    *,
    run_key: str,
    trained: TrainResult,
    evaluation: EvaluateResult,
    decision: GateDecision,
    approved: ApproveResult | None,
    prepared: PreprocessResult,
    candidates: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    dag_id: str | None,
    run_id: str | None,
    code_version: str | None,
) -> dict[str, Any]:
    """The ``metadata.json`` content of a version (the registry adds version and created_at).

    Returns:
        ``run``, ``code_version``, ``packages``, ``dataset``, ``parameters``, ``training``,
        ``metrics`` (summary: test accuracy and loss, averages, per-digit recall), ``gate``,
        ``approval`` (the approval step's record; None without one), ``lineage`` (the dataset
        version, its increments and quarantines, the inputs key and code fingerprint: what the
        check stage compares to skip a run whose inputs the champion already covers),
        ``candidates`` (the run's table; [] for a run of one) and ``sources`` (the run
        artifacts the version was made from).
    """
    per_digit = metrics.get("per_digit") or {}
    dataset = to_json(prepared)
    return {
        "run": {"dag_id": dag_id, "run_id": run_id, "run_key": run_key},
        "code_version": code_version,
        "packages": package_versions(),
        "dataset": {k: dataset[k] for k in DATASET_FIELDS}
        | {"prepared_uri": evaluation.prepared_uri},
        "parameters": dict(trained.params),
        "training": {k: getattr(trained, k) for k in TRAINING_FIELDS}
        | {"runtime": to_json(trained.runtime)},
        "metrics": {
            "test_accuracy": evaluation.test_accuracy,
            "test_loss": evaluation.test_loss,
            "fresh_accuracy": evaluation.fresh_accuracy,
            "n_test": metrics.get("n_test"),
            "macro_avg": metrics.get("macro_avg"),
            "weighted_avg": metrics.get("weighted_avg"),
            "per_digit_recall": {d: m.get("recall") for d, m in per_digit.items()},
        },
        # The gate's own verdict (REJECT on an override: the approval says who overrode it).
        "gate": {
            "decision": decision.decision,
            "reasons": list(decision.reasons),
            "champion_version": decision.champion_version,
            "champion_accuracy": decision.champion_accuracy,
            "challenger_accuracy": decision.challenger_accuracy,
            "mcnemar": to_json(decision.mcnemar) if decision.mcnemar else None,
            "decision_uri": decision.decision_uri,
            "fresh": to_json(decision.fresh) if decision.fresh else None,
        },
        "approval": to_json(approved.approval) if approved else None,
        "lineage": to_json(prepared.lineage) if prepared.lineage else {},
        "candidates": [dict(row) for row in candidates],
        "sources": {
            "model_uri": trained.model_uri,
            "metrics_uri": evaluation.metrics_uri,
            "predictions_uri": evaluation.predictions_uri,
        },
    }


def _verifier(
    registry: ModelRegistry, x_test: np.ndarray, expected: np.ndarray, predictions_uri: str
) -> Any:
    """A registry verifier: reload the stored model in safe mode, compare predictions."""

    def verify(pending: PendingVersion) -> dict[str, Any]:
        import keras

        from mnist_tasks.artifacts import load_keras_model, predict_classes

        with tempfile.TemporaryDirectory(prefix="mnist-verify-") as tmp:
            model = load_keras_model(registry.fetch_pending_model(pending, tmp))
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


def _monitor_reference(model_path: Path, x_val: np.ndarray, version: int,
                       test_accuracy: float) -> bytes:
    """What "normal" looks like for this version (its outputs on the validation split), which
    scoring compares each batch with; stored with the version, so immutable like it."""
    from mnist_tasks.artifacts import load_keras_model
    from mnist_tasks.monitor import Forward, Reference

    probs, embeddings = Forward(load_keras_model(model_path))(x_val)
    ref = Reference.build(probs, embeddings, x_val, model_version=version,
                          benchmark_accuracy=test_accuracy)
    log.info("register: monitoring reference of v%d from %d validation images", version,
             len(x_val))
    return ref.to_bytes()


def _candidates(store: Store, run_key: str) -> list[dict[str, Any]]:
    """The run's candidates table (select's record); empty for a run that trained one."""
    try:
        rows = read_json(store, candidates_key(run_key)).get("candidates")
    except ObjectNotFound:
        return []
    return [dict(row) for row in rows or []]


def _champion_moved(gate_champion: int | None, current: int | None) -> str:
    def name(version: int | None) -> str:
        return f"v{version}" if version is not None else "no champion"

    return (f"the champion moved from {name(gate_champion)} (what the gate compared against) "
            f"to {name(current)} before register; registered without promoting (run the gate "
            f"again to compare with {name(current)})")


def register(
    decided: GateDecision | ApproveResult,
    *,
    store: Store,
    registry: ModelRegistry,
    run_key: str,
    dag_id: str | None,
    run_id: str,
    code_version: str | None,
) -> RegisterResult:
    """Register the run's model as a new version, verify the stored copy, promote on PROMOTE.

    The champion alias is moved only from the champion the gate compared against
    (its decision's ``champion``), by compare-and-swap. If the champion has moved since
    the gate ran (a manual promote or rollback, another run), the version is registered
    without promoting: a WARNING is logged, and the reason is recorded as
    ``promotion_skipped`` in the version's metadata (when known before the version is
    written, the usual case) and in the result.

    Args:
        decided: the gate's decision, or the approval step's final decision (which cites the
            gate's). The rest is read from the records they cite: the evaluation
            (``evaluation_uri``), its train result (``train_uri``), the prepared data and its
            lineage (``prepared_uri``), and the run's candidates table (by ``run_key``).
        store: the store holding the run's artifacts.
        registry: the model registry to write to.
        run_key: the run's key (``config.run_key(run_id)``); registration is idempotent on it.
        dag_id, run_id, code_version: recorded in the metadata (dag_id/code_version None when
            unknown).

    Returns:
        The version (its registry copy of the model, its folder, its test accuracy), whether
        it is the champion now, ``previous_champion`` (on PROMOTE the champion this version
        replaced, also on a retry; otherwise the champion left in place; None if there was
        none) and ``promotion_skipped`` (why a PROMOTE did not move the champion, else None).

    Raises:
        ObjectNotFound, ValueError: a record the decision cites is missing or is not what it
            should be (naming it); an evaluation without a train record; a bad run key.
        VerificationError: if the stored model does not reproduce the evaluated predictions.
        RegistryError, StorageError: on registry or storage failures (a retry resumes).
    """
    run_key = validate_run_key(run_key)
    if isinstance(decided, ApproveResult):
        approved: ApproveResult | None = decided
        decision = read_result(store, decided.decision_uri, GateDecision)
    else:
        approved, decision = None, decided
    verdict = approved.decision if approved else decision.decision
    gate_champion = decision.champion_version

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
        info = _write(run_key, decision=decision, approved=approved, store=store,
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

    return RegisterResult(
        model_uri=info.model_uri,
        version=info.version,
        test_accuracy=info.test_accuracy,
        champion=champion,
        verified=bool(verification.get("verified")),
        registry_uri=info.uri,
        decision=verdict,
        previous_champion=previous,
        promotion_skipped=skipped,
        trained_model_uri=(info.metadata.get("sources") or {}).get("model_uri"),
        dataset_version=(info.metadata.get("lineage") or {}).get("dataset_version"),
    )


def _write(
    run_key: str,
    *,
    decision: GateDecision,
    approved: ApproveResult | None,
    store: Store,
    registry: ModelRegistry,
    dag_id: str | None,
    run_id: str | None,
    code_version: str | None,
    promotion_skipped: str | None,
) -> VersionInfo:
    from mnist_tasks.artifacts import load_prepared

    evaluation = read_result(store, decision.evaluation_uri, EvaluateResult)
    if evaluation.train_uri is None:
        raise ValueError(f"{evaluation.result_uri} names no train record (train_uri): "
                         "register needs the model's training parameters")
    trained = read_result(store, evaluation.train_uri, TrainResult)
    preprocessed = read_result(store, prepared_record_uri(evaluation.prepared_uri),
                               PreprocessResult)
    prepared = load_prepared(evaluation.prepared_uri, store)
    predictions_uri = evaluation.predictions_uri
    with store.local_copy(store.key_of(predictions_uri)) as path:
        expected = np.load(path, allow_pickle=False)
    metrics_bytes = store.read_bytes(store.key_of(evaluation.metrics_uri))
    metrics = json.loads(metrics_bytes)
    metadata = build_metadata(
        run_key=run_key, trained=trained, evaluation=evaluation, decision=decision,
        approved=approved, prepared=preprocessed, candidates=_candidates(store, run_key),
        metrics=metrics, dag_id=dag_id, run_id=run_id, code_version=code_version,
    ) | {"promotion_skipped": promotion_skipped}

    def card(pending: PendingVersion) -> bytes:
        text = render_model_card(
            model_name=pending.model_name, version=pending.version,
            created_at=pending.created_at, model_uri=pending.model_uri,
            store_uri=registry.store_uri, metadata={**metadata, "run_key": run_key},
            metrics=metrics,
        )
        return text.encode()

    with contextlib.ExitStack() as stack:
        model_path: Path = stack.enter_context(
            store.local_copy(store.key_of(trained.model_uri)))
        files: dict[str, FileSource] = {MODEL_FILE: model_path, "metrics.json": metrics_bytes,
                                        "model_card.md": card}

        def reference(pending: PendingVersion) -> bytes:
            return _monitor_reference(model_path, prepared.x_val, pending.version,
                                      evaluation.test_accuracy)

        files[monitor.REFERENCE_FILE] = reference
        for uri in (*evaluation.plots.values(), evaluation.report_uri):
            files[_file_name(uri)] = store.read_bytes(store.key_of(uri))
        verify = _verifier(registry, prepared.x_test, expected, predictions_uri)
        return registry.register(run_key, files, metadata, verify=verify)
