"""Preprocess: scale pixels to float32 in [0, 1], split off a seeded validation set, fingerprint.

The training pool is the base training set (ingest's cached ``mnist.npz``) followed by each
accepted increment's train part, in id order (their arrays read from the store); the seeded
validation split comes from that pool. ``x_test``/``y_test`` stay the fixed MNIST test set, the
benchmark; ``x_fresh``/``y_fresh``/``fresh_increment`` are the increments' held-out parts.
Writes ``runs/<run-key>/preprocess/prepared.npz`` (float32 images, uint8 labels) and then its
record ``prepared.json`` (the result: fingerprint, split sizes, dataset version, increments,
lineage); later stages read both with :func:`mnist_tasks.artifacts.load_prepared`.

Run it alone: ``python -m mnist_tasks preprocess --checked @check.json --store URI --run-id ID``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from mnist_tasks import datasets
from mnist_tasks.artifacts import (
    RAW_ARRAYS,
    data_sha256,
    empty_fresh,
    load_npz,
    recorded_result,
    save_npz,
    write_result,
)
from mnist_tasks.config import PreprocessConfig
from mnist_tasks.results import Lineage, PreprocessResult, to_json
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratification-free shuffle split; returns sorted (train, val) index arrays."""
    n_val = round(n * val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _increments(
    store: Store, version: datasets.DatasetVersion | None, image_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The accepted increments' train and fresh parts, concatenated in id order (uint8)."""
    parts = [(e, datasets.load_arrays(store, e)) for e in (version.increments if version else ())]
    if not parts:
        fresh = empty_fresh(image_shape)
        return {"x_train": np.zeros((0, *image_shape), np.uint8),
                "y_train": np.zeros(0, np.uint8),
                "x_fresh": np.zeros((0, *image_shape), np.uint8),
                "y_fresh": fresh["y_fresh"], "fresh_increment": fresh["fresh_increment"],
                "ids": []}
    for entry, arrays in parts:
        if arrays["x_train"].shape[1:] != image_shape:
            raise ValueError(f"{store.uri_for(entry.arrays_key)}: increment {entry.id!r} has "
                             f"images of {arrays['x_train'].shape[1:]}, the base {image_shape}")
    return {
        "x_train": np.concatenate([a["x_train"] for _, a in parts]),
        "y_train": np.concatenate([a["y_train"] for _, a in parts]).astype(np.uint8),
        "x_fresh": np.concatenate([a["x_fresh"] for _, a in parts]),
        "y_fresh": np.concatenate([a["y_fresh"] for _, a in parts]).astype(np.uint8),
        "fresh_increment": np.concatenate(
            [np.full(len(a["y_fresh"]), i, np.int32) for i, (_, a) in enumerate(parts)]),
        "ids": [e.id for e, _ in parts],
    }


def preprocess(
    dataset_uri: str,
    cfg: PreprocessConfig,
    store: Store,
    run_key: str,
    *,
    dataset_version: str | None = None,
    lineage: Lineage | None = None,
) -> PreprocessResult:
    """Scale, split and fingerprint the data set at ``dataset_uri`` (plus the accepted
    increments of ``dataset_version``); store the result.

    Idempotent: a retry with the same inputs finds ``prepared.json`` and returns it.

    Args:
        dataset_uri: the base data set ingest cached.
        cfg: the validation split's fraction and seed.
        store: the run's store (where the dataset version and its arrays are too).
        run_key: the run's key.
        dataset_version: the dataset version id (see :mod:`mnist_tasks.datasets`); None for
            the base alone, as before dataset versions existed.
        lineage: check's lineage of the run, recorded with the prepared data for register.

    Returns:
        The prepared data's URI, fingerprint and split sizes, its dataset version and
        increments, and ``lineage``; the same as ``prepared.json``.

    Raises:
        ObjectNotFound: if the data set does not exist in the store.
        ValueError: if the data set is malformed; DatasetError (a ValueError) if the dataset
            version is unknown or an increment's arrays are missing or corrupt.
    """
    start = time.perf_counter()
    prefix = f"runs/{run_key}/preprocess"
    version = datasets.load_version(store, dataset_version) if dataset_version else None
    raw = load_npz(store, store.key_of(dataset_uri), RAW_ARRAYS)
    for split in ("train", "test"):
        x, y = raw[f"x_{split}"], raw[f"y_{split}"]
        if x.ndim != 3 or x.shape[0] != y.shape[0]:
            raise ValueError(
                f"{dataset_uri}: x_{split} has shape {x.shape} but y_{split} has {y.shape}; "
                "expected (N, rows, cols) images and N labels"
            )
    raw_sha = data_sha256(raw)
    spec = f"{raw_sha}|scale=1/255|val_fraction={cfg.val_fraction}|seed={cfg.seed}"
    if version is not None:
        # The version id covers its increments' content (payload hashes, counts, splits).
        spec += f"|dataset_version={version.id}"
    fingerprint = hashlib.sha256(spec.encode()).hexdigest()

    inputs = {"fingerprint": fingerprint, "lineage": to_json(lineage) if lineage else None}
    existing = recorded_result(store, f"{prefix}/prepared.json", PreprocessResult, inputs,
                               requires=[f"{prefix}/prepared.npz"])
    if existing is not None:
        log.info("preprocess: %s already prepared (fingerprint %s); reusing it",
                 store.uri_for(prefix), fingerprint[:12])
        return existing

    image_shape = tuple(raw["x_train"].shape[1:])
    inc = _increments(store, version, image_shape)
    pool_x = np.concatenate([raw["x_train"], inc["x_train"]])
    pool_y = np.concatenate([raw["y_train"], inc["y_train"]])
    train_idx, val_idx = split_indices(len(pool_y), cfg.val_fraction, cfg.seed)
    scale = np.float32(1.0 / 255.0)
    x_pool = pool_x.astype(np.float32) * scale
    arrays = {
        "x_train": x_pool[train_idx],
        "y_train": pool_y[train_idx],
        "x_val": x_pool[val_idx],
        "y_val": pool_y[val_idx],
        "x_test": raw["x_test"].astype(np.float32) * scale,
        "y_test": raw["y_test"],
        "x_fresh": inc["x_fresh"].astype(np.float32) * scale,
        "y_fresh": inc["y_fresh"],
        "fresh_increment": inc["fresh_increment"],
    }
    save_npz(store, f"{prefix}/prepared.npz", arrays)
    result = PreprocessResult(
        prepared_uri=store.uri_for(f"{prefix}/prepared.npz"),
        dataset_uri=dataset_uri,
        fingerprint=fingerprint,
        data_sha256=raw_sha,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
        n_train=len(train_idx),
        n_val=len(val_idx),
        n_test=len(raw["y_test"]),
        n_fresh=len(inc["y_fresh"]),
        n_increment_train=len(inc["y_train"]),
        dataset_version=version.id if version else None,
        increments=tuple(inc["ids"]),
        fresh_increments=tuple(inc["ids"]),
        image_shape=tuple(int(d) for d in image_shape),
        lineage=lineage,
        dataset_manifest_uri=(store.uri_for(datasets.manifest_key(version.id))
                              if version else None),
    )
    write_result(store, f"{prefix}/prepared.json", result)
    log.info(
        "preprocess: %d train / %d validation / %d test (benchmark) / %d fresh images "
        "(dataset version %s: base + %d increment(s), %d increment training images), "
        "float32 in [0, 1], fingerprint %s, %.2f s -> %s",
        result.n_train, result.n_val, result.n_test, result.n_fresh,
        result.dataset_version or "none", len(inc["ids"]), result.n_increment_train,
        fingerprint[:12], time.perf_counter() - start, result.prepared_uri,
    )
    return result
