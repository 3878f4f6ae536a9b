"""Gate and register together, with tiny Keras models and the real preprocess/evaluate stages.

The data: 28×28 uint8 images where digit d is a bright 4×4 patch at its own place, over faint
noise. The models: Flatten + Dense(10, softmax) with hand-set weights (no training needed):
``good`` matches each patch to its digit (100 %), ``broken(k)`` sends the patches of ``k``
digits to the wrong class.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks.artifacts import save_npz
from mnist_tasks.config import GateConfig, PreprocessConfig
from mnist_tasks.gate import gate
from mnist_tasks.preprocess import preprocess
from mnist_tasks.register import VerificationError, register
from mnist_tasks.registry import CHAMPION, Registry, VersionNotFound
from mnist_tasks.storage import Store

PER_DIGIT_TEST = 20


def patch(digit: int) -> tuple[slice, slice]:
    row, col = 2 + (digit // 5) * 12, 2 + (digit % 5) * 5
    return slice(row, row + 4), slice(col, col + 4)


def images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, digit in enumerate(labels):
        x[i][patch(int(digit))] = 255
    return x


def make_prepared(store: Store) -> str:
    """Write a tiny data set and run the real preprocess stage on it."""
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(10, dtype=np.uint8), 5)
    y_test = np.repeat(np.arange(10, dtype=np.uint8), PER_DIGIT_TEST)
    save_npz(store, "cache/datasets/tiny/mnist.npz", {
        "x_train": images(y_train, rng), "y_train": y_train,
        "x_test": images(y_test, rng), "y_test": y_test,
    })
    result = preprocess(store.uri_for("cache/datasets/tiny/mnist.npz"),
                        PreprocessConfig(val_fraction=0.2, seed=1), store, "prep")
    return str(result["prepared_uri"])


@pytest.fixture
def prepared_uri(store: Store) -> str:
    return make_prepared(store)


def load_npy(store: Store, uri: str) -> np.ndarray:
    with store.local_copy(store.key_of(uri)) as path:
        return np.load(path)


def model_with(mapping: dict[int, int]) -> Any:
    """A Dense classifier sending the patch of digit d to class mapping.get(d, d)."""
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(10, activation="softmax")])
    weights = np.zeros((28 * 28, 10), dtype=np.float32)
    for digit in range(10):
        mask = np.zeros((28, 28), dtype=np.float32)
        mask[patch(digit)] = 1.0
        weights[:, mapping.get(digit, digit)] += mask.ravel()
    model.layers[-1].set_weights([weights, np.zeros(10, dtype=np.float32)])
    return model


GOOD: dict[int, int] = {}


def broken(k: int) -> dict[int, int]:
    """Digits 10-k..9 are predicted as 0."""
    return {d: 0 for d in range(10 - k, 10)}


def run_stages(store: Store, registry: Registry, prepared_uri: str, run_key: str,
               mapping: dict[int, int], cfg: GateConfig) -> dict[str, Any]:
    """Save the model where train would, then evaluate and gate it for real."""
    from mnist_tasks.evaluate import evaluate

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model_with(mapping).save(path)
        store.upload_file(path, f"runs/{run_key}/train/model.keras")
    model_uri = store.uri_for(f"runs/{run_key}/train/model.keras")
    trained = {"model_uri": model_uri, "preset": "tiny", "epochs_run": 0,
               "params": {"preset": "tiny", "seed": 1}}
    evaluation = evaluate(model_uri, prepared_uri, store, run_key)
    decision = gate(evaluation, cfg, registry, prepared_uri, store, run_key)
    return {"trained": trained, "evaluation": evaluation, "gate": decision}


def carried(prepared_uri: str, stages: dict[str, Any]) -> dict[str, Any]:
    """The gate's result as the stage chain carries it (CONTRACT: gate -> register)."""
    evaluation = {**stages["evaluation"], "prepared_uri": prepared_uri,
                  "trained": {**stages["trained"], "prepared_uri": prepared_uri}}
    return {**stages["gate"], "prepared_uri": prepared_uri, "evaluation": evaluation}


def do_register(store: Store, registry: Registry, prepared_uri: str, run_key: str,
                stages: dict[str, Any]) -> dict[str, Any]:
    return register(carried(prepared_uri, stages), store=store, registry=registry,
                    run_key=run_key, dag_id="mnist_training", run_id=f"manual__{run_key}",
                    code_version="c0ffee")


def test_first_run_then_a_clearly_worse_challenger(store: Store, prepared_uri: str) -> None:
    registry = Registry(store)
    cfg = GateConfig(min_accuracy=0.8)

    first = run_stages(store, registry, prepared_uri, "run-1", GOOD, cfg)
    assert first["gate"]["decision"] == "PROMOTE"
    assert first["gate"]["champion_version"] is None and first["gate"]["mcnemar"] is None
    assert "champion INFO: no champion yet: threshold only" in first["gate"]["reasons"]
    registered = do_register(store, registry, prepared_uri, "run-1", first)
    assert registered == {
        "model_uri": registry.model_uri(1), "version": 1, "test_accuracy": 1.0,
        "champion": True, "verified": True, "registry_uri": registry.get(1).uri,
        "decision": "PROMOTE", "previous_champion": None, "promotion_skipped": None,
    }
    info = registry.get(1)
    assert {"model.keras", "metrics.json", "model_card.md", "report.txt", "metadata.json",
            "confusion_matrix.png", "sample_grid.png", "misclassified_grid.png"} <= set(info.files)
    meta = info.metadata
    assert meta["gate"]["decision"] == "PROMOTE" and meta["code_version"] == "c0ffee"
    assert meta["run"] == {"dag_id": "mnist_training", "run_id": "manual__run-1",
                           "run_key": "run-1"}
    prepared_meta = json.loads(store.read_bytes(store.key_of(prepared_uri)[:-4] + ".json"))
    assert meta["dataset"]["fingerprint"] == prepared_meta["fingerprint"]
    assert meta["parameters"] == {"preset": "tiny", "seed": 1}
    assert meta["packages"]["keras"] and meta["packages"]["numpy"]
    assert meta["verification"]["verified"] is True
    card = store.read_bytes(store.key_of(info.uri) + "/model_card.md").decode()
    assert prepared_meta["fingerprint"] in card and "download 1" in card

    # A challenger that gets five digits wrong: rejected, the champion stays.
    second = run_stages(store, registry, prepared_uri, "run-2", broken(5), cfg)
    decision = second["gate"]
    assert second["evaluation"]["test_accuracy"] == pytest.approx(0.5)
    assert decision["decision"] == "REJECT"
    assert decision["champion_version"] == 1 and decision["champion_accuracy"] == 1.0
    assert decision["mcnemar"]["b"] == 5 * PER_DIGIT_TEST and decision["mcnemar"]["c"] == 0
    assert decision["mcnemar"]["significant"] is True
    assert any(r.startswith("threshold FAIL") for r in decision["reasons"])
    assert any(r.startswith("champion FAIL") for r in decision["reasons"])
    assert any(r.startswith("per-digit recall FAIL") for r in decision["reasons"])
    recorded = json.loads(store.read_bytes(store.key_of(decision["decision_uri"])))
    assert recorded["decision"] == "REJECT" and recorded["champion"]["version"] == 1
    champion_pred = load_npy(store, recorded["champion"]["predictions_uri"])
    assert (champion_pred == np.repeat(np.arange(10), PER_DIGIT_TEST)).all()

    # Registering the rejected model records it but never touches the champion.
    rejected = do_register(store, registry, prepared_uri, "run-2", second)
    assert rejected["version"] == 2
    assert (rejected["champion"], rejected["previous_champion"]) == (False, 1)
    assert registry.get_alias(CHAMPION) == 1
    assert registry.get(2).gate_decision == "REJECT"


def test_better_challenger_is_promoted_and_register_is_idempotent(file_store: Store) -> None:
    store = file_store
    prepared = make_prepared(store)
    registry = Registry(store)
    cfg = GateConfig(min_accuracy=0.8)
    first = run_stages(store, registry, prepared, "run-1", broken(1), cfg)  # 90 %
    assert do_register(store, registry, prepared, "run-1", first)["champion"] is True

    second = run_stages(store, registry, prepared, "run-2", GOOD, cfg)  # 100 %
    decision = second["gate"]
    assert decision["decision"] == "PROMOTE", decision["reasons"]
    assert decision["champion_version"] == 1 and decision["champion_accuracy"] == pytest.approx(0.9)
    assert (decision["mcnemar"]["b"], decision["mcnemar"]["c"]) == (0, PER_DIGIT_TEST)
    assert decision["mcnemar"]["method"] == "exact binomial"
    result = do_register(store, registry, prepared, "run-2", second)
    assert (result["version"], result["champion"], result["previous_champion"]) == (2, True, 1)

    # A retry of the same run: same version, the alias is not moved again.
    assert do_register(store, registry, prepared, "run-2", second) == result
    record = registry.alias_record(CHAMPION)
    assert record is not None and [h["version"] for h in record.history] == [1, 2]

    # After a rollback, a late retry of run-2 must not undo it.
    assert registry.rollback().version == 1
    late = do_register(store, registry, prepared, "run-2", second)
    assert (late["version"], late["champion"]) == (2, False)
    assert registry.get_alias(CHAMPION) == 1
    assert [v.version for v in registry.list_versions()] == [1, 2]


def test_verification_mismatch_registers_nothing(file_store: Store) -> None:
    store = file_store
    prepared = make_prepared(store)
    registry = Registry(store)
    stages = run_stages(store, registry, prepared, "run-1", GOOD, GateConfig(min_accuracy=0.8))
    predictions_uri = stages["evaluation"]["predictions_uri"]
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
    assert (result["version"], result["champion"], result["verified"]) == (1, True, True)


# --- the champion the gate compared against is the only one register replaces ------------------


def test_champion_moved_between_gate_and_register_is_not_replaced(
    store: Store, prepared_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(store)
    cfg = GateConfig(min_accuracy=0.8)
    first = run_stages(store, registry, prepared_uri, "run-1", broken(1), cfg)  # 90 %
    assert do_register(store, registry, prepared_uri, "run-1", first)["version"] == 1

    # Two challengers are gated against v1; the second registers (and is promoted) first.
    late = run_stages(store, registry, prepared_uri, "run-late", GOOD, cfg)
    early = run_stages(store, registry, prepared_uri, "run-early", GOOD, cfg)
    assert late["gate"]["decision"] == early["gate"]["decision"] == "PROMOTE"
    assert late["gate"]["champion_version"] == early["gate"]["champion_version"] == 1
    assert do_register(store, registry, prepared_uri, "run-early", early)["champion"] is True
    assert registry.get_alias(CHAMPION) == 2

    with caplog.at_level("WARNING", logger="mnist_tasks.register"):
        result = do_register(store, registry, prepared_uri, "run-late", late)
    assert (result["version"], result["champion"], result["previous_champion"]) == (3, False, 2)
    reason = result["promotion_skipped"]
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
    assert do_register(store, registry, prepared_uri, "run-2", second)["champion"] is True
    third = run_stages(store, registry, prepared_uri, "run-3", GOOD, cfg)
    assert (third["gate"]["decision"], third["gate"]["champion_version"]) == ("PROMOTE", 2)

    racing = RollsBackAfterWriting(store)
    result = do_register(store, racing, prepared_uri, "run-3", third)
    assert (result["version"], result["champion"], result["previous_champion"]) == (3, False, 1)
    assert "from v2" in result["promotion_skipped"] and "to v1" in result["promotion_skipped"]
    assert registry.get_alias(CHAMPION) == 1  # the rollback stands


def test_register_refuses_a_gate_result_without_what_it_carries(file_store: Store) -> None:
    prepared_uri = make_prepared(file_store)
    stages = run_stages(file_store, Registry(file_store), prepared_uri, "run-1", GOOD,
                        GateConfig(min_accuracy=0.8))
    good = carried(prepared_uri, stages)
    for key, message in (("champion_version", "no 'champion_version'"),
                         ("evaluation", "no 'evaluation'"), ("prepared_uri", "no 'prepared_uri'")):
        with pytest.raises(ValueError, match=message):
            register({k: v for k, v in good.items() if k != key}, store=file_store,
                     registry=Registry(file_store), run_key="run-1", dag_id=None,
                     run_id="manual__run-1", code_version=None)
    assert Registry(file_store).list_versions() == []
