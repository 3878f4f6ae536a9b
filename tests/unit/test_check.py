"""The check stage: the inputs key, UNCHANGED against the champion, force, and the champion on
the new increments' fresh data (FRESH-DATA DROP).

The data: 28x28 uint8 images where digit d is a bright 4x4 patch at its own place over faint
noise; the champion is Flatten + Dense(10) with hand-set weights that maps each patch to its
digit (100 % on such images). A "moved" increment draws every digit's patch where the next
digit's belongs, so the champion gets it all wrong: a crafted fresh-data drop.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_tasks import datasets
from mnist_tasks.artifacts import code_fingerprint
from mnist_tasks.check import TRAIN, UNCHANGED, check, inputs_key
from mnist_tasks.config import PreprocessConfig, TrainConfig, train_config
from mnist_tasks.increments import ACCEPTED, CheckedIncrement
from mnist_tasks.registry import Registry
from mnist_tasks.results import (
    ChampionFresh,
    CheckResult,
    IncrementRecord,
    IngestResult,
    Lineage,
    LineageIncrement,
    to_json,
)
from mnist_tasks.storage import LocalStore
from tests.helpers import ingest_result, patch_images, patch_model

REPO = Path(__file__).resolve().parents[2]
BASE = datasets.BaseInfo(
    {name: f"{i:064x}" for i, name in enumerate(sorted(
        ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]))},
    train_count=100, test_count=50)
PRE = PreprocessConfig(val_fraction=0.1, seed=1)
TRAIN_CFG = train_config("seed_mlp", epochs=1)


def increment(inc_id: str, seed: int, *, moved: bool = False) -> CheckedIncrement:
    y_train = np.repeat(np.arange(10, dtype=np.uint8), 4)
    y_fresh = np.repeat(np.arange(10, dtype=np.uint8), 2)
    return CheckedIncrement(
        id=inc_id, status=ACCEPTED, reasons=(), uri=f"file:///src/increments/{inc_id}",
        format="idx", payload_sha256=f"{seed:064x}",
        counts={"received": 60, "kept": 60, "train": 40, "fresh": 20, "leaked": 0,
                "duplicates_within": 0, "duplicates_accepted": 0},
        class_counts=(6,) * 10, drift={}, fresh_fraction=0.2,
        train_images=patch_images(y_train, seed, moved=moved), train_labels=y_train,
        fresh_images=patch_images(y_fresh, seed + 1000, moved=moved), fresh_labels=y_fresh,
    )


def ingested(store: LocalStore, version: datasets.DatasetVersion) -> IngestResult:
    """What ingest returns for ``version``."""
    return ingest_result(
        dataset_uri=store.uri_for("cache/datasets/k/mnist.npz"),
        dataset_version=version.id,
        increments=tuple(IncrementRecord(
            id=e.id, status="ACCEPTED", reasons=(), counts=dict(e.counts), drift=e.drift,
            payload_sha256=e.payload_sha256, train=e.train, fresh=e.fresh, new=True)
            for e in version.increments),
    )


def save_champion(store: LocalStore, tmp_path: Path, lineage: dict[str, Any] | None,
                  accuracy: float = 0.99) -> Registry:
    """Register the patch model as v1 (with ``lineage`` in its metadata) and promote it."""
    path = tmp_path / "champion.keras"
    patch_model().save(path)
    metadata: dict[str, Any] = {"metrics": {"test_accuracy": accuracy}}
    if lineage is not None:
        metadata["lineage"] = lineage
    registry = Registry(store)
    info = registry.register("run-1", {"model.keras": path}, metadata)
    registry.promote(info.version)
    return registry


@pytest.fixture
def base_version(file_store: LocalStore) -> datasets.DatasetVersion:
    return datasets.save_version(file_store, BASE, [], fresh_fraction=0.2)


def key_of(version: datasets.DatasetVersion, train: TrainConfig = TRAIN_CFG) -> str:
    return inputs_key(version.id, PRE, train, code_fingerprint())


def run_check(store: LocalStore, registry: Registry, version: datasets.DatasetVersion,
              **kwargs: Any) -> CheckResult:
    return check(ingested(store, version), preprocess=PRE, train=TRAIN_CFG, store=store,
                 registry=registry, **kwargs)


def test_inputs_key_covers_data_configs_and_code() -> None:
    key = inputs_key("0123456789abcdef", PRE, TRAIN_CFG, "c0de")
    assert len(key) == 16 and key == inputs_key("0123456789abcdef", PRE, TRAIN_CFG, "c0de")
    others = {
        inputs_key("fedcba9876543210", PRE, TRAIN_CFG, "c0de"),
        inputs_key("0123456789abcdef", PreprocessConfig(val_fraction=0.2, seed=1), TRAIN_CFG,
                   "c0de"),
        inputs_key("0123456789abcdef", PRE, train_config("seed_mlp", epochs=2), "c0de"),
        inputs_key("0123456789abcdef", PRE, TRAIN_CFG, "c0df"),
    }
    assert key not in others and len(others) == 4


def test_code_fingerprint_covers_every_library_module() -> None:
    fp = code_fingerprint()
    assert len(fp) == 64 and fp == code_fingerprint()
    import hashlib

    h = hashlib.sha256(b"mnist-tasks/code-fingerprint/1\n")
    for path in sorted((REPO / "mnist_tasks").glob("*.py")):
        data = path.read_bytes()
        h.update(f"{path.name}:{len(data)}\n".encode())
        h.update(data)
    assert h.hexdigest() == fp


def test_no_champion_means_train(file_store: LocalStore,
                                 base_version: datasets.DatasetVersion) -> None:
    out = run_check(file_store, Registry(file_store), base_version)
    assert out.decision == TRAIN and out.champion_version is None
    assert out.covered_by is None and out.champion_fresh == {} and out.warnings == ()
    assert out.inputs_key == key_of(base_version)
    assert out.lineage == Lineage(dataset_version=base_version.id, inputs_key=out.inputs_key,
                                  code_fingerprint=code_fingerprint(), increments=(),
                                  quarantined=())
    assert out.dataset_uri.endswith("mnist.npz")  # what preprocess reads, passed on


def test_unchanged_when_the_champion_has_the_same_inputs_key(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = save_champion(file_store, tmp_path, {"inputs_key": key_of(base_version),
                                                    "dataset_version": base_version.id})
    with caplog.at_level(logging.INFO, logger="mnist_tasks.check"):
        out = run_check(file_store, registry, base_version)
    assert out.decision == UNCHANGED and out.covered_by == 1
    assert out.champion_version == 1 and out.champion_inputs_key == out.inputs_key
    line = next(r.getMessage() for r in caplog.records if "UNCHANGED" in r.getMessage())
    assert (f"champion v1 was trained on exactly these inputs (dataset version "
            f"{base_version.id}, preset seed_mlp, code {code_fingerprint()[:12]}); nothing to "
            "train. Trigger with force=true to retrain.") in line


def test_force_trains_even_when_unchanged(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
) -> None:
    registry = save_champion(file_store, tmp_path, {"inputs_key": key_of(base_version)})
    out = run_check(file_store, registry, base_version, force=True)
    assert out.decision == TRAIN and out.covered_by is None and out.force is True


def test_other_training_config_trains(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
) -> None:
    registry = save_champion(file_store, tmp_path, {"inputs_key": key_of(base_version)})
    out = check(ingested(file_store, base_version), preprocess=PRE,
                train=train_config("seed_mlp", epochs=2), store=file_store, registry=registry)
    assert out.decision == TRAIN


def test_a_new_dataset_version_trains_and_checks_the_champion_on_its_fresh_data(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = save_champion(file_store, tmp_path, {"inputs_key": key_of(base_version),
                                                    "dataset_version": base_version.id})
    newer = datasets.save_version(file_store, BASE, [increment("inc-001", 1)],
                                  fresh_fraction=0.2, previous=base_version)
    with caplog.at_level(logging.INFO, logger="mnist_tasks.check"):
        out = run_check(file_store, registry, newer)
    assert out.decision == TRAIN and out.inputs_key != key_of(base_version)
    assert out.champion_fresh == {"inc-001": ChampionFresh(
        n=20, accuracy=1.0, benchmark_accuracy=0.99, drop=pytest.approx(-0.01),
        flagged=False)}
    assert out.warnings == ()
    assert "champion v1 on increment inc-001: 100.00 % (20 fresh images; benchmark 99.00 %)" \
        in caplog.text
    assert out.lineage.increments == (LineageIncrement(
        id="inc-001", payload_sha256=f"{1:064x}", train=40, fresh=20, drift=False),)


def test_fresh_data_drop_is_a_named_warning(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = datasets.save_version(file_store, BASE, [increment("inc-001", 1)],
                                 fresh_fraction=0.2, previous=base_version)
    registry = save_champion(file_store, tmp_path, {"inputs_key": key_of(good),
                                                    "dataset_version": good.id})
    newer = datasets.save_version(file_store, BASE, [increment("inc-002", 2, moved=True)],
                                  fresh_fraction=0.2, previous=good)
    with caplog.at_level(logging.INFO, logger="mnist_tasks.check"):
        out = run_check(file_store, registry, newer, fresh_drop_margin=0.05)
    # Only the increment the champion has not seen is evaluated, and it fails on every image.
    assert list(out.champion_fresh) == ["inc-002"]
    fresh = out.champion_fresh["inc-002"]
    assert fresh.accuracy == 0.0 and fresh.flagged and fresh.drop == pytest.approx(0.99)
    (warning,) = out.warnings
    assert warning.startswith("FRESH-DATA DROP: champion v1 on increment inc-002: 0.00 % ")
    assert "99.00 points below its benchmark accuracy, over fresh_drop_margin 5.00 points" \
        in warning
    assert [r.levelno for r in caplog.records if "FRESH-DATA DROP" in r.getMessage()] \
        == [logging.WARNING]


def test_a_drop_within_the_margin_is_no_warning(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
) -> None:
    registry = save_champion(file_store, tmp_path, {"inputs_key": "0" * 16}, accuracy=0.99)
    newer = datasets.save_version(file_store, BASE, [increment("inc-001", 1)],
                                  fresh_fraction=0.2, previous=base_version)
    out = run_check(file_store, registry, newer, fresh_drop_margin=0.0)
    assert out.champion_fresh["inc-001"].flagged is False and out.warnings == ()


def test_a_champion_without_lineage_sees_every_increment_as_new(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
) -> None:
    registry = save_champion(file_store, tmp_path, None)  # registered before lineage existed
    newer = datasets.save_version(file_store, BASE, [increment("inc-001", 1),
                                                     increment("inc-002", 2, moved=True)],
                                  fresh_fraction=0.2)
    out = run_check(file_store, registry, newer)
    assert out.decision == TRAIN and out.champion_inputs_key is None
    assert sorted(out.champion_fresh) == ["inc-001", "inc-002"]
    assert len(out.warnings) == 1 and "inc-002" in out.warnings[0]


def test_an_ingest_result_without_a_dataset_version_is_refused(file_store: LocalStore) -> None:
    with pytest.raises(ValueError, match="no 'dataset_version'"):
        check(ingest_result(dataset_version=""), preprocess=PRE, train=TRAIN_CFG,
              store=file_store, registry=Registry(file_store))


def test_the_unchanged_path_never_imports_keras(
    file_store: LocalStore, tmp_path: Path, base_version: datasets.DatasetVersion,
) -> None:
    save_champion(file_store, tmp_path, {"inputs_key": key_of(base_version)})
    (tmp_path / "ingested.json").write_text(
        json.dumps(to_json(ingested(file_store, base_version))))
    script = textwrap.dedent(f"""
        import json, sys
        from mnist_tasks.check import check
        from mnist_tasks.config import PreprocessConfig, train_config
        from mnist_tasks.registry import Registry
        from mnist_tasks.results import IngestResult, from_json
        from mnist_tasks.storage import LocalStore
        store = LocalStore({str(file_store.root)!r})
        ingested = from_json(IngestResult, json.load(open({str(tmp_path / "ingested.json")!r})))
        out = check(ingested,
                    preprocess=PreprocessConfig(val_fraction=0.1, seed=1),
                    train=train_config("seed_mlp", epochs=1), store=store,
                    registry=Registry(store))
        heavy = sorted(m for m in ("keras", "tensorflow", "scipy") if m in sys.modules)
        print(json.dumps({{"decision": out.decision, "heavy": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"decision": UNCHANGED,
                                                               "heavy": []}


def test_run_all_stops_after_check_when_unchanged(
    file_store: LocalStore, tmp_path: Path,
) -> None:
    from mnist_tasks.config import pipeline_config
    from mnist_tasks.pipeline import Pipeline, run_summary
    from tests.helpers import write_folder

    params = {"store": file_store.uri, "source": str(write_folder(tmp_path / "src")),
              "checksums": "off", "epochs": 1}
    first = Pipeline(pipeline_config(params), "run-0")
    checked = first.check(first.ingest())
    assert checked.decision == TRAIN
    prepared = first.preprocess(checked)  # the lineage is recorded with the prepared data
    assert prepared.lineage == checked.lineage and prepared.n_fresh == 0
    assert prepared.dataset_version == checked.dataset_version == checked.lineage.dataset_version
    recorded = json.loads(file_store.read_bytes("runs/run-0/preprocess/prepared.json"))
    assert recorded["lineage"]["inputs_key"] == checked.inputs_key
    save_champion(file_store, tmp_path, to_json(checked.lineage))

    out = Pipeline(pipeline_config(params), "run-2").run_all()
    assert out["decision"] == UNCHANGED and out["covered_by"] == 1
    assert out["dataset_version"] == checked.dataset_version
    assert out["inputs_key"] == checked.inputs_key and out["warnings"] == []
    assert list(out["timings"]) == ["ingest", "check"]
    assert file_store.list("runs/run-2") == ["runs/run-2/summary.json"]  # nothing prepared
    summary = run_summary(file_store, "run-2")
    assert summary["decision"] == UNCHANGED and summary["covered_by"] == 1
    assert summary["dataset_version"] == checked.dataset_version
    assert summary["warnings"] == []
