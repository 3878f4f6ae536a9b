"""Preprocess: float32 in [0, 1], seeded split, fingerprint, idempotent retries, and the
dataset version's increments (train parts in the pool, fresh parts held out)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mnist_tasks.artifacts import load_prepared, save_npz
from mnist_tasks.config import MNIST_FILES, PreprocessConfig
from mnist_tasks.datasets import BaseInfo, DatasetError, DatasetVersion, save_version
from mnist_tasks.increments import ACCEPTED, CheckedIncrement
from mnist_tasks.preprocess import preprocess
from mnist_tasks.results import PreprocessResult, from_json
from mnist_tasks.storage import LocalStore
from tests.helpers import lineage


@pytest.fixture
def dataset(file_store: LocalStore) -> str:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (200, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, 200, dtype=np.uint8),
        "x_test": rng.integers(0, 256, (50, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, 50, dtype=np.uint8),
    }
    save_npz(file_store, "cache/datasets/k/mnist.npz", arrays)
    return file_store.uri_for("cache/datasets/k/mnist.npz")


def test_scales_splits_and_keeps_every_image(file_store: LocalStore, dataset: str) -> None:
    out = preprocess(dataset, PreprocessConfig(val_fraction=0.1, seed=1), file_store, "r1")
    assert (out.n_train, out.n_val, out.n_test) == (180, 20, 50)
    p = load_prepared(out.prepared_uri, file_store)
    assert p.x_train.dtype == np.float32 and p.x_train.shape == (180, 28, 28)
    assert p.x_train.min() >= 0.0 and p.x_train.max() <= 1.0
    # Train and validation partition the original training images, with their labels.
    raw = np.load(file_store.root / "cache/datasets/k/mnist.npz")
    original = sorted(
        (img.tobytes(), int(y)) for img, y in zip(raw["x_train"], raw["y_train"], strict=True)
    )
    restored = sorted(
        (np.rint(img * 255).astype(np.uint8).tobytes(), int(y))
        for img, y in zip(
            np.concatenate([p.x_train, p.x_val]), np.concatenate([p.y_train, p.y_val]),
            strict=True,
        )
    )
    assert restored == original
    assert p.meta["fingerprint"] == out.fingerprint


def test_same_seed_same_split_other_seed_other_fingerprint(
    file_store: LocalStore, dataset: str
) -> None:
    a = preprocess(dataset, PreprocessConfig(seed=1), file_store, "a")
    b = preprocess(dataset, PreprocessConfig(seed=1), file_store, "b")
    c = preprocess(dataset, PreprocessConfig(seed=2), file_store, "c")
    assert a.fingerprint == b.fingerprint != c.fingerprint
    pa = load_prepared(a.prepared_uri, file_store)
    pc = load_prepared(c.prepared_uri, file_store)
    assert not np.array_equal(pa.y_val, pc.y_val)


def test_retry_reuses_the_prepared_data(file_store: LocalStore, dataset: str) -> None:
    first = preprocess(dataset, PreprocessConfig(), file_store, "r")
    npz = file_store.root / "runs/r/preprocess/prepared.npz"
    mtime = npz.stat().st_mtime_ns
    assert preprocess(dataset, PreprocessConfig(), file_store, "r") == first
    assert npz.stat().st_mtime_ns == mtime
    # The lineage check hands on is recorded with the data; other lineage, another record.
    with_lineage = preprocess(dataset, PreprocessConfig(), file_store, "r", lineage=lineage())
    assert with_lineage.lineage == lineage() and first.lineage is None
    recorded = from_json(PreprocessResult,
                         json.loads(file_store.read_bytes("runs/r/preprocess/prepared.json")))
    assert recorded == with_lineage


def test_malformed_dataset_names_the_uri(file_store: LocalStore) -> None:
    save_npz(file_store, "bad/mnist.npz", {
        "x_train": np.zeros((10, 28, 28), np.uint8), "y_train": np.zeros(9, np.uint8),
        "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8),
    })
    uri = file_store.uri_for("bad/mnist.npz")
    with pytest.raises(ValueError, match=r"bad/mnist\.npz.*x_train"):
        preprocess(uri, PreprocessConfig(), file_store, "r")
    assert file_store.list("runs") == []


# --- dataset versions: the increments' train parts join the pool, their fresh parts do not ---


def _increment(inc_id: str, seed: int, n_train: int, n_fresh: int) -> CheckedIncrement:
    rng = np.random.default_rng(seed)
    return CheckedIncrement(
        id=inc_id, status=ACCEPTED, reasons=(), uri=f"file:///src/increments/{inc_id}",
        format="idx", payload_sha256=f"{seed:064x}",
        counts={"received": n_train + n_fresh, "kept": n_train + n_fresh, "train": n_train,
                "fresh": n_fresh},
        class_counts=(0,) * 10, drift={}, fresh_fraction=0.2,
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train, dtype=np.uint8),
        fresh_images=rng.integers(0, 256, (n_fresh, 28, 28), dtype=np.uint8),
        fresh_labels=rng.integers(0, 10, n_fresh, dtype=np.uint8),
    )


BASE = BaseInfo({name: f"{i:064x}" for i, name in enumerate(sorted(MNIST_FILES.values()))},
                train_count=200, test_count=50)


def _rows(x: np.ndarray, y: np.ndarray) -> list[tuple[bytes, int]]:
    """(uint8 image bytes, label) pairs, sorted: a multiset to compare splits with."""
    images = np.rint(x * 255).astype(np.uint8) if x.dtype == np.float32 else x
    return sorted((img.tobytes(), int(label)) for img, label in zip(images, y, strict=True))


@pytest.fixture
def two_increments(file_store: LocalStore) -> tuple[DatasetVersion, list[CheckedIncrement]]:
    checked = [_increment("inc-a", 1, 30, 8), _increment("inc-b", 2, 20, 5)]
    return save_version(file_store, BASE, checked, fresh_fraction=0.2), checked


def test_increments_train_parts_join_the_pool_and_fresh_parts_stay_out(
    file_store: LocalStore, dataset: str,
    two_increments: tuple[DatasetVersion, list[CheckedIncrement]],
) -> None:
    version, checked = two_increments
    out = preprocess(dataset, PreprocessConfig(val_fraction=0.1, seed=1), file_store, "r1",
                     dataset_version=version.id)
    assert (out.n_train + out.n_val, out.n_test, out.n_fresh) == (250, 50, 13)
    assert out.dataset_version == version.id
    assert out.increments == out.fresh_increments == ("inc-a", "inc-b")
    p = load_prepared(out.prepared_uri, file_store)
    raw = np.load(file_store.root / "cache/datasets/k/mnist.npz")
    # train + validation = the base training set + each increment's train part, nothing else
    pool = _rows(np.concatenate([p.x_train, p.x_val]), np.concatenate([p.y_train, p.y_val]))
    expected = _rows(
        np.concatenate([raw["x_train"], *(c.train_images for c in checked)]),
        np.concatenate([raw["y_train"], *(c.train_labels for c in checked)]))
    assert pool == expected
    # the fresh parts: float32, labelled by increment, never in train or validation
    assert p.x_fresh.dtype == np.float32 and p.x_fresh.shape == (13, 28, 28)
    assert p.meta["fresh_increments"] == p.fresh_increments == ["inc-a", "inc-b"]
    assert p.fresh_increment.tolist() == [0] * 8 + [1] * 5
    for i, c in enumerate(checked):
        part = p.fresh_increment == i
        assert _rows(p.x_fresh[part], p.y_fresh[part]) == _rows(c.fresh_images, c.fresh_labels)
    assert not set(_rows(p.x_fresh, p.y_fresh)) & set(pool)
    # the benchmark is still exactly the base's test set
    assert _rows(p.x_test, p.y_test) == _rows(raw["x_test"], raw["y_test"])
    assert p.meta["dataset_version"] == version.id


def test_fingerprint_changes_with_the_dataset_version(
    file_store: LocalStore, dataset: str,
    two_increments: tuple[DatasetVersion, list[CheckedIncrement]],
) -> None:
    version, _ = two_increments
    base_only = save_version(file_store, BASE, [], fresh_fraction=0.2)
    cfg = PreprocessConfig(seed=1)
    a = preprocess(dataset, cfg, file_store, "a", dataset_version=base_only.id)
    b = preprocess(dataset, cfg, file_store, "b", dataset_version=version.id)
    again = preprocess(dataset, cfg, file_store, "c", dataset_version=version.id)
    assert a.fingerprint != b.fingerprint == again.fingerprint
    # the base-only version has no fresh data: empty arrays, not missing ones
    p = load_prepared(a.prepared_uri, file_store)
    assert p.x_fresh.shape == (0, 28, 28) and len(p.y_fresh) == len(p.fresh_increment) == 0
    assert a.n_fresh == 0 and a.increments == ()
    # a retry of run "a" with another version does not reuse a's prepared data
    redo = preprocess(dataset, cfg, file_store, "a", dataset_version=version.id)
    assert redo.fingerprint == b.fingerprint and redo.n_fresh == 13


def test_prepared_data_from_before_increments_reads_as_no_fresh_data(
    file_store: LocalStore,
) -> None:
    arrays = {name: np.zeros((3, 28, 28), np.float32) if name.startswith("x")
              else np.zeros(3, np.uint8)
              for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
    save_npz(file_store, "runs/old/preprocess/prepared.npz", arrays)
    file_store.write_bytes("runs/old/preprocess/prepared.json", b'{"fingerprint": "f"}')
    p = load_prepared(file_store.uri_for("runs/old/preprocess/prepared.npz"), file_store)
    assert p.x_fresh.shape == (0, 28, 28) and p.x_fresh.dtype == np.float32
    assert p.fresh_increments == [] and "dataset_version" not in p.meta


def test_an_unknown_dataset_version_is_named(file_store: LocalStore, dataset: str) -> None:
    with pytest.raises(DatasetError, match="unknown dataset version '0123456789abcdef'"):
        preprocess(dataset, PreprocessConfig(), file_store, "r", dataset_version="0123456789abcdef")
