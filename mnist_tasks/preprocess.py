"""Preprocess: scale pixels to float32 in [0, 1], split off a seeded validation set, fingerprint.

Input is the cached data set written by ingest (``mnist.npz`` with uint8 ``x_train``,
``y_train``, ``x_test``, ``y_test``). Output, under ``runs/<run-key>/preprocess/``:

* ``prepared.npz``: float32 ``x_train``, ``x_val``, ``x_test`` of shape (N, 28, 28) and uint8
  labels ``y_train``, ``y_val``, ``y_test``;
* ``prepared.json``: the fingerprint, split sizes and parameters (written last).

Run it alone: ``python -m mnist_tasks preprocess --dataset URI --store URI --run-id ID``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnist_tasks.config import PreprocessConfig
from mnist_tasks.storage import ObjectNotFound, Store

log = logging.getLogger(__name__)

PREPARED_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
RAW_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Prepared:
    """The arrays a model is trained and evaluated on, plus their metadata."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict[str, Any]


def load_npz(store: Store, key: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load the named arrays of an ``.npz`` object fully into memory.

    Raises:
        ObjectNotFound: if the object does not exist.
        ValueError: if an array is missing, naming the object and the array.
    """
    with store.local_copy(key) as path, np.load(path, allow_pickle=False) as npz:
        missing = [n for n in names if n not in npz.files]
        if missing:
            raise ValueError(f"{store.uri_for(key)}: missing arrays {missing}")
        return {n: npz[n] for n in names}


def save_npz(store: Store, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as an uncompressed ``.npz`` object, atomically."""
    with tempfile.TemporaryDirectory(prefix="mnist-npz-") as tmp:
        path = Path(tmp) / "data.npz"
        np.savez(path, **arrays)  # type: ignore[arg-type]
        store.upload_file(path, key)


def data_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the raw arrays (names, shapes, dtypes and bytes): the data's identity."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.data)
    return h.hexdigest()


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratification-free shuffle split; returns sorted (train, val) index arrays."""
    n_val = round(n * val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def preprocess(
    dataset_uri: str, cfg: PreprocessConfig, store: Store, run_key: str
) -> dict[str, Any]:
    """Scale, split and fingerprint the data set at ``dataset_uri``; store the result.

    Idempotent: a retry with the same inputs finds ``prepared.json`` and returns it.

    Returns:
        ``prepared_uri``, ``fingerprint``, ``data_sha256``, ``n_train``, ``n_val``, ``n_test``.

    Raises:
        ObjectNotFound: if the data set does not exist in the store.
        ValueError: if the data set is malformed.
    """
    start = time.perf_counter()
    prefix = f"runs/{run_key}/preprocess"
    raw = load_npz(store, store.key_of(dataset_uri), RAW_ARRAYS)
    for split in ("train", "test"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if x.ndim != 3 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{dataset_uri}: x_{split} has shape {x.shape} but y_{split} has {y.shape}; "
                "expected (N, rows, cols) images and N labels"
            )
    raw_sha = data_sha256(raw)
    fingerprint = hashlib.sha256(
        f"{raw_sha}|scale=1/255|val_fraction={cfg.val_fraction}|seed={cfg.seed}".encode()
    ).hexdigest()

    try:
        existing = json.loads(store.read_bytes(f"{prefix}/prepared.json"))
        if existing.get("fingerprint") == fingerprint and store.exists(f"{prefix}/prepared.npz"):
            log.info("preprocess: %s already prepared (fingerprint %s); reusing it",
                     store.uri_for(prefix), fingerprint[:12])
            return dict(existing)
    except ObjectNotFound:
        pass

    train_idx, val_idx = split_indices(len(raw["y_train"]), cfg.val_fraction, cfg.seed)
    scale = np.float32(1.0 / 255.0)
    x_train = raw["x_train"].astype(np.float32) * scale
    arrays = {
        "x_train": x_train[train_idx],
        "y_train": raw["y_train"][train_idx],
        "x_val": x_train[val_idx],
        "y_val": raw["y_train"][val_idx],
        "x_test": raw["x_test"].astype(np.float32) * scale,
        "y_test": raw["y_test"],
    }
    save_npz(store, f"{prefix}/prepared.npz", arrays)
    result: dict[str, Any] = {
        "prepared_uri": store.uri_for(f"{prefix}/prepared.npz"),
        "dataset_uri": dataset_uri,
        "fingerprint": fingerprint,
        "data_sha256": raw_sha,
        "val_fraction": cfg.val_fraction,
        "seed": cfg.seed,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "n_test": len(raw["y_test"]),
        "image_shape": list(raw["x_train"].shape[1:]),
    }
    store.write_bytes(f"{prefix}/prepared.json", json.dumps(result, indent=2).encode())
    log.info(
        "preprocess: %d train / %d validation / %d test images, float32 in [0, 1], "
        "fingerprint %s, %.2f s -> %s",
        result["n_train"], result["n_val"], result["n_test"], fingerprint[:12],
        time.perf_counter() - start, result["prepared_uri"],
    )
    return result


def load_prepared(prepared_uri: str, store: Store) -> Prepared:
    """Load what :func:`preprocess` wrote at ``prepared_uri``.

    Raises:
        ObjectNotFound: if the prepared data or its metadata are missing.
    """
    key = store.key_of(prepared_uri)
    arrays = load_npz(store, key, PREPARED_ARRAYS)
    meta_key = key.rsplit("/", 1)[0] + "/prepared.json"
    meta = json.loads(store.read_bytes(meta_key))
    return Prepared(meta=meta, **arrays)
