"""Preprocess: scale pixels to float32 in [0, 1], split off a seeded validation set, fingerprint.

Input is the cached data set written by ingest (``mnist.npz`` with uint8 ``x_train``,
``y_train``, ``x_test``, ``y_test``). Output, under ``runs/<run-key>/preprocess/``:

* ``prepared.npz``: float32 ``x_train``, ``x_val``, ``x_test`` of shape (N, 28, 28) and uint8
  labels ``y_train``, ``y_val``, ``y_test``;
* ``prepared.json``: the fingerprint, split sizes and parameters (written last).

The later stages read both with :func:`mnist_tasks.artifacts.load_prepared`.

Run it alone: ``python -m mnist_tasks preprocess --dataset URI --store URI --run-id ID``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from mnist_tasks.artifacts import (
    RAW_ARRAYS,
    data_sha256,
    load_npz,
    recorded_result,
    save_npz,
    write_json,
)
from mnist_tasks.config import PreprocessConfig
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)


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

    existing = recorded_result(store, f"{prefix}/prepared.json", {"fingerprint": fingerprint},
                               requires=[f"{prefix}/prepared.npz"])
    if existing is not None:
        log.info("preprocess: %s already prepared (fingerprint %s); reusing it",
                 store.uri_for(prefix), fingerprint[:12])
        return existing

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
    write_json(store, f"{prefix}/prepared.json", result)
    log.info(
        "preprocess: %d train / %d validation / %d test images, float32 in [0, 1], "
        "fingerprint %s, %.2f s -> %s",
        result["n_train"], result["n_val"], result["n_test"], fingerprint[:12],
        time.perf_counter() - start, result["prepared_uri"],
    )
    return result
