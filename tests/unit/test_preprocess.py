"""Preprocess: float32 in [0, 1], seeded split, fingerprint, idempotent retries."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_tasks.artifacts import load_prepared, save_npz
from mnist_tasks.config import PreprocessConfig
from mnist_tasks.preprocess import preprocess
from mnist_tasks.storage import LocalStore


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
    assert (out["n_train"], out["n_val"], out["n_test"]) == (180, 20, 50)
    p = load_prepared(out["prepared_uri"], file_store)
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
    assert p.meta["fingerprint"] == out["fingerprint"]


def test_same_seed_same_split_other_seed_other_fingerprint(
    file_store: LocalStore, dataset: str
) -> None:
    a = preprocess(dataset, PreprocessConfig(seed=1), file_store, "a")
    b = preprocess(dataset, PreprocessConfig(seed=1), file_store, "b")
    c = preprocess(dataset, PreprocessConfig(seed=2), file_store, "c")
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    pa = load_prepared(a["prepared_uri"], file_store)
    pc = load_prepared(c["prepared_uri"], file_store)
    assert not np.array_equal(pa.y_val, pc.y_val)


def test_retry_reuses_the_prepared_data(file_store: LocalStore, dataset: str) -> None:
    first = preprocess(dataset, PreprocessConfig(), file_store, "r")
    npz = file_store.root / "runs/r/preprocess/prepared.npz"
    mtime = npz.stat().st_mtime_ns
    assert preprocess(dataset, PreprocessConfig(), file_store, "r") == first
    assert npz.stat().st_mtime_ns == mtime


def test_malformed_dataset_names_the_uri(file_store: LocalStore) -> None:
    save_npz(file_store, "bad/mnist.npz", {
        "x_train": np.zeros((10, 28, 28), np.uint8), "y_train": np.zeros(9, np.uint8),
        "x_test": np.zeros((2, 28, 28), np.uint8), "y_test": np.zeros(2, np.uint8),
    })
    uri = file_store.uri_for("bad/mnist.npz")
    with pytest.raises(ValueError, match=r"bad/mnist\.npz.*x_train"):
        preprocess(uri, PreprocessConfig(), file_store, "r")
    assert file_store.list("runs") == []
