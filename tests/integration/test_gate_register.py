"""Gate and register together, with tiny Keras models and the real preprocess/evaluate stages.

The data: 28×28 uint8 images where digit d is a bright 4×4 patch at its own place, over faint
noise. The models: Flatten + Dense(10, softmax) with hand-set weights (no training needed):
``good`` matches each patch to its digit (100 %), ``broken(k)`` sends the patches of ``k``
digits to the wrong class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks import approve
from mnist_tasks.artifacts import (
    candidates_key,
    load_prepared,
    write_json,
    write_result,
)
from mnist_tasks.config import GateConfig
from mnist_tasks.gate import gate
from mnist_tasks.mlflow_rest import MlflowError, MlflowRest
from mnist_tasks.monitor import Reference
from mnist_tasks.register import VerificationError, register
from mnist_tasks.registry import Registry
from mnist_tasks.registry_api import CHAMPION, ModelRegistry, VersionNotFound
from mnist_tasks.registry_mlflow import MlflowRegistry
from mnist_tasks.results import EvaluateResult, GateDecision, RegisterResult
from mnist_tasks.storage import ObjectNotFound, Store
from tests.helpers import make_prepared, patch_images, patch_model, train_result

PER_DIGIT_TEST = 20


def make_patch_prepared(store: Store) -> str:
    """A tiny data set of patch images, prepared by the real preprocess stage."""
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(10, dtype=np.uint8), 5)
    y_test = np.repeat(np.arange(10, dtype=np.uint8), PER_DIGIT_TEST)
    arrays = {"x_train": patch_images(y_train, rng), "y_train": y_train,
              "x_test": patch_images(y_test, rng), "y_test": y_test}
    return make_prepared(store, "prep", val_fraction=0.2, split_seed=1, arrays=arrays,
                         dataset_key="cache/datasets/tiny/mnist.npz")


@pytest.fixture
def prepared_uri(store: Store) -> str:
    return make_patch_prepared(store)


def load_npy(store: Store, uri: str) -> np.ndarray:
    with store.local_copy(store.key_of(uri)) as path:
        return np.load(path)


GOOD: dict[int, int] = {}


def broken(k: int) -> dict[int, int]:
    """Digits 10-k..9 are predicted as 0."""
    return {d: 0 for d in range(10 - k, 10)}


@dataclass(frozen=True)
class Stages:
    evaluation: EvaluateResult
    gate: GateDecision


def open_backend(request: pytest.FixtureRequest, store: Store, backend: str) -> ModelRegistry:
    """The store-backed registry, or a fresh model in the session's MLflow server."""
    if backend == "store":
        return Registry(store)
    location = request.getfixturevalue("mlflow_server")
    with contextlib.suppress(MlflowError):  # left by an earlier test
        MlflowRest(location).call("DELETE", "registered-models/delete",
                                  body={"name": "gate-register"})
    return MlflowRegistry(location, "gate-register")


def run_stages(store: Store, registry: ModelRegistry, prepared_uri: str, run_key: str,
               mapping: dict[int, int], cfg: GateConfig) -> Stages:
    """Save the model and its train record where train would, then evaluate and gate it for
    real."""
    from mnist_tasks.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        patch_model(mapping).save(path)
        store.upload_file(path, f"runs/{run_key}/train/model.keras")
    trained = train_result(model_uri=store.uri_for(f"runs/{run_key}/train/model.keras"),
                           prepared_uri=prepared_uri,
                           train_uri=store.uri_for(f"runs/{run_key}/train/result.json"))
    write_result(store, f"runs/{run_key}/train/result.json", trained)
    evaluation = evaluate(trained.model_uri, prepared_uri, store, run_key,
                          train_uri=trained.train_uri)
    return Stages(evaluation, gate(evaluation, cfg, registry, store, run_key))


def do_register(store: Store, registry: ModelRegistry, prepared_uri: str, run_key: str,
                stages: Stages) -> RegisterResult:
    """Register the gate's decision (register reads the rest by the references in it)."""
    return register(stages.gate, store=store, registry=registry, run_key=run_key,
                    dag_id="mnist_training", run_id=f"manual__{run_key}", code_version="c0ffee")


def test_first_run_then_a_clearly_worse_challenger(store: Store, prepared_uri: str) -> None:
    registry = Registry(store)
    cfg = GateConfig(min_accuracy=0.8)

    first = run_stages(store, registry, prepared_uri, "run-1", GOOD, cfg)
    assert first.gate.decision == "PROMOTE"
    assert first.gate.champion_version is None and first.gate.mcnemar is None
    assert "champion INFO: no champion yet: threshold only" in first.gate.reasons
    registered = do_register(store, registry, prepared_uri, "run-1", first)
    assert registered == RegisterResult(
        model_uri=registry.model_uri(1), version=1, test_accuracy=1.0, champion=True,
        verified=True, registry_uri=registry.get(1).uri, decision="PROMOTE",
        previous_champion=None, promotion_skipped=None,
        trained_model_uri=store.uri_for("runs/run-1/train/model.keras"),
        dataset_version=registry.get(1).metadata["lineage"].get("dataset_version"))
    info = registry.get(1)
    assert {"model.keras", "metrics.json", "model_card.md", "report.txt", "metadata.json",
            "confusion_matrix.png", "sample_grid.png", "misclassified_grid.png",
            "monitor_reference.npz"} <= set(info.files)
    # What scoring compares batches with: this version's outputs on the validation split.
    reference = Reference.from_bytes(registry.read_file(1, "monitor_reference.npz"))
    assert reference.model_version == 1 and reference.benchmark_accuracy == 1.0
    assert reference.n_images == load_prepared(prepared_uri, store).x_val.shape[0]
    meta = info.metadata
    assert meta["gate"]["decision"] == "PROMOTE" and meta["code_version"] == "c0ffee"
    assert meta["run"] == {"dag_id": "mnist_training", "run_id": "manual__run-1",
                           "run_key": "run-1"}
    prepared_meta = json.loads(store.read_bytes(store.key_of(prepared_uri)[:-4] + ".json"))
    assert meta["dataset"]["fingerprint"] == prepared_meta["fingerprint"]
    assert meta["parameters"] == {"preset": "tiny", "seed": 1}
    assert meta["packages"]["keras"] and meta["packages"]["numpy"]
    assert meta["verification"]["verified"] is True
    card = registry.read_file(1, "model_card.md").decode()
    assert prepared_meta["fingerprint"] in card and "download 1" in card

    # A challenger that gets five digits wrong: rejected, the champion stays.
    second = run_stages(store, registry, prepared_uri, "run-2", broken(5), cfg)
    decision = second.gate
    assert second.evaluation.test_accuracy == pytest.approx(0.5)
    assert decision.decision == "REJECT"
    assert decision.champion_version == 1 and decision.champion_accuracy == 1.0
    assert decision.mcnemar is not None and decision.mcnemar.significant is True
    assert decision.mcnemar.b == 5 * PER_DIGIT_TEST and decision.mcnemar.c == 0
    assert any(r.startswith("threshold FAIL") for r in decision.reasons)
    assert any(r.startswith("champion FAIL") for r in decision.reasons)
    assert any(r.startswith("per-digit recall FAIL") for r in decision.reasons)
    recorded = json.loads(store.read_bytes(store.key_of(decision.decision_uri)))
    assert recorded["decision"] == "REJECT" and recorded["champion"]["version"] == 1
    champion_pred = load_npy(store, recorded["champion"]["predictions_uri"])
    assert (champion_pred == np.repeat(np.arange(10), PER_DIGIT_TEST)).all()

    # Registering the rejected model records it but never touches the champion.
    rejected = do_register(store, registry, prepared_uri, "run-2", second)
    assert rejected.version == 2
    assert (rejected.champion, rejected.previous_champion) == (False, 1)
    assert registry.get_alias(CHAMPION) == 1
    assert registry.get(2).gate_decision == "REJECT"


@pytest.mark.parametrize("backend", ["store", "mlflow"])
def test_better_challenger_is_promoted_and_register_is_idempotent(
        file_store: Store, backend: str, request: pytest.FixtureRequest) -> None:
    store = file_store
    prepared = make_patch_prepared(store)
    registry = open_backend(request, store, backend)
    cfg = GateConfig(min_accuracy=0.8)
    first = run_stages(store, registry, prepared, "run-1", broken(1), cfg)  # 90 %
    assert do_register(store, registry, prepared, "run-1", first).champion is True

    second = run_stages(store, registry, prepared, "run-2", GOOD, cfg)  # 100 %
    decision = second.gate
    assert decision.decision == "PROMOTE", decision.reasons
    assert decision.champion_version == 1 and decision.champion_accuracy == pytest.approx(0.9)
    assert decision.mcnemar is not None
    assert (decision.mcnemar.b, decision.mcnemar.c) == (0, PER_DIGIT_TEST)
    assert decision.mcnemar.method == "exact binomial"
    result = do_register(store, registry, prepared, "run-2", second)
    assert (result.version, result.champion, result.previous_champion) == (2, True, 1)

    # A retry of the same run: same version, the alias is not moved again.
    assert do_register(store, registry, prepared, "run-2", second) == result
    record = registry.alias_record(CHAMPION)
    assert record is not None and [h["version"] for h in record.history] == [1, 2]

    # After a rollback, a late retry of run-2 must not undo it.
    assert registry.rollback().version == 1
    late = do_register(store, registry, prepared, "run-2", second)
    assert (late.version, late.champion) == (2, False)
    assert registry.get_alias(CHAMPION) == 1
    assert [v.version for v in registry.list_versions()] == [1, 2]
    # The model card tells how to download this version from where it is registered.
    card = registry.read_file(2, "model_card.md").decode()
    assert f"--store {registry.store_uri}" in card and "download 2" in card


def test_verification_mismatch_registers_nothing(file_store: Store) -> None:
    store = file_store
    prepared = make_patch_prepared(store)
    registry = Registry(store)
    stages = run_stages(store, registry, prepared, "run-1", GOOD, GateConfig(min_accuracy=0.8))
    predictions_uri = stages.evaluation.predictions_uri
    good = load_npy(store, predictions_uri)
    with tempfile.TemporaryDirectory() as tmp:
        tampered = good.copy()
        tampered[:3] = (tampered[:3] + 1) % 10
        np.save(Path(tmp) / "p.npy", tampered)
        store.upload_file(Path(tmp) / "p.npy", store.key_of(predictions_uri))

    with pytest.raises(VerificationError, match=r"predicts differently .* on 3 of 200 test images"):
        do_register(store, registry, prepared, "run-1", stages)
    assert registry.list_versions() == []
    assert registry.version_for_run("run-1") is None
    assert registry.get_alias(CHAMPION) is None
    with pytest.raises(VersionNotFound):
        registry.get(1)

    # With the evaluated predictions back in place, the retry completes the same version.
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "p.npy", good)
        store.upload_file(Path(tmp) / "p.npy", store.key_of(predictions_uri))
    result = do_register(store, registry, prepared, "run-1", stages)
    assert (result.version, result.champion, result.verified) == (1, True, True)


# --- the champion the gate compared against is the only one register replaces ------------------


def test_champion_moved_between_gate_and_register_is_not_replaced(
    store: Store, prepared_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(store)
    cfg = GateConfig(min_accuracy=0.8)
    first = run_stages(store, registry, prepared_uri, "run-1", broken(1), cfg)  # 90 %
    assert do_register(store, registry, prepared_uri, "run-1", first).version == 1

    # Two challengers are gated against v1; the second registers (and is promoted) first.
    late = run_stages(store, registry, prepared_uri, "run-late", GOOD, cfg)
    early = run_stages(store, registry, prepared_uri, "run-early", GOOD, cfg)
    assert late.gate.decision == early.gate.decision == "PROMOTE"
    assert late.gate.champion_version == early.gate.champion_version == 1
    assert do_register(store, registry, prepared_uri, "run-early", early).champion is True
    assert registry.get_alias(CHAMPION) == 2

    with caplog.at_level("WARNING", logger="mnist_tasks.register"):
        result = do_register(store, registry, prepared_uri, "run-late", late)
    assert (result.version, result.champion, result.previous_champion) == (3, False, 2)
    reason = result.promotion_skipped
    assert reason and "from v1" in reason and "to v2" in reason
    assert registry.get_alias(CHAMPION) == 2  # the champion the gate never saw stays
    assert registry.get(3).metadata["promotion_skipped"] == reason
    assert any(r.levelname == "WARNING" and "v3 not promoted" in r.getMessage()
               for r in caplog.records)
    # A retry of the late run: same version, still not promoted, same reason.
    assert do_register(store, registry, prepared_uri, "run-late", late) == result
    assert registry.get_alias(CHAMPION) == 2


class RollsBackAfterWriting(Registry):
    """A registry where a rollback lands after the version is written, before the alias move
    (the narrowest window: register's early check still saw the gate's champion)."""

    def register(self, *args: Any, **kwargs: Any) -> Any:
        info = super().register(*args, **kwargs)
        Registry(self.store).rollback()
        return info


def test_champion_moved_after_the_version_was_written_is_not_replaced(
    store: Store, prepared_uri: str
) -> None:
    registry = Registry(store)
    cfg = GateConfig(min_accuracy=0.7)
    first = run_stages(store, registry, prepared_uri, "run-1", broken(2), cfg)  # 80 %
    do_register(store, registry, prepared_uri, "run-1", first)
    second = run_stages(store, registry, prepared_uri, "run-2", broken(1), cfg)  # 90 %
    assert do_register(store, registry, prepared_uri, "run-2", second).champion is True
    third = run_stages(store, registry, prepared_uri, "run-3", GOOD, cfg)
    assert (third.gate.decision, third.gate.champion_version) == ("PROMOTE", 2)

    racing = RollsBackAfterWriting(store)
    result = do_register(store, racing, prepared_uri, "run-3", third)
    assert (result.version, result.champion, result.previous_champion) == (3, False, 1)
    assert "from v2" in result.promotion_skipped and "to v1" in result.promotion_skipped
    assert registry.get_alias(CHAMPION) == 1  # the rollback stands


def test_an_override_registers_with_the_gates_verdict_and_who_overrode_it(
    file_store: Store,
) -> None:
    """The approval step's result cites the gate's decision; register reads it from there,
    and the run's candidates table by the run key."""
    prepared_uri = make_patch_prepared(file_store)
    registry = Registry(file_store)
    cfg = GateConfig(min_accuracy=0.8)
    do_register(file_store, registry, prepared_uri, "run-1",
                run_stages(file_store, registry, prepared_uri, "run-1", broken(1), cfg))
    rejected = run_stages(file_store, registry, prepared_uri, "run-2", broken(5), cfg)
    assert rejected.gate.decision == "REJECT"
    row = {"candidate": 0, "label": "tiny", "status": "trained", "chosen": True}
    write_json(file_store, candidates_key("run-2"), {"candidates": [row]})
    final = approve.apply_response(
        rejected.gate, approve.Response(choice="Approve", by="alice", at="2026-11-22T04:00",
                                        comment="the floor is wrong for this data"),
        mode="always", why="approval is 'always'")
    assert final.decision_uri == rejected.gate.decision_uri

    result = register(final, store=file_store, registry=registry, run_key="run-2",
                      dag_id="mnist_training", run_id="manual__run-2", code_version=None)
    assert (result.decision, result.version, result.champion) == ("PROMOTE", 2, True)
    meta = registry.get(2).metadata
    assert meta["gate"]["decision"] == "REJECT"  # the gate's own verdict
    assert meta["gate"]["decision_uri"] == rejected.gate.decision_uri
    assert (meta["approval"]["outcome"], meta["approval"]["by"]) == ("override", "alice")
    assert meta["candidates"] == [row]
    assert registry.get(1).metadata["candidates"] == []  # a run of one has no table


def test_register_names_a_record_it_cannot_read(file_store: Store) -> None:
    prepared_uri = make_patch_prepared(file_store)
    registry = Registry(file_store)
    stages = run_stages(file_store, registry, prepared_uri, "run-1", GOOD,
                        GateConfig(min_accuracy=0.8))

    def attempt(decision: GateDecision) -> RegisterResult:
        return register(decision, store=file_store, registry=registry, run_key="run-1",
                        dag_id=None, run_id="manual__run-1", code_version=None)

    gone = dataclasses.replace(stages.gate,
                               evaluation_uri=file_store.uri_for("runs/run-1/none.json"))
    with pytest.raises(ObjectNotFound, match=r"none\.json"):
        attempt(gone)
    evaluation_key = file_store.key_of(stages.evaluation.result_uri)
    write_result(file_store, evaluation_key,
                 dataclasses.replace(stages.evaluation, train_uri=None))
    with pytest.raises(ValueError, match="names no train record"):
        attempt(stages.gate)
    file_store.write_bytes(evaluation_key, b'{"test_accuracy": 1.0}')
    with pytest.raises(ValueError, match=r"evaluate/result\.json: EvaluateResult: missing"):
        attempt(stages.gate)
    assert registry.list_versions() == []
