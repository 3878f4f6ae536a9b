"""The committed outputs of batch scoring, for whoever reads them: where an output is, and its
files read through the manifest, each checked against the SHA-256 the manifest holds.

An output exists only once its manifest does (:mod:`mnist_tasks.score` writes it last)::

    if is_committed(store, cfg, "2026-11-22-a", 3):
        rows = read_output(store, cfg, "2026-11-22-a", 3, PREDICTIONS)   # bytes, checked
        manifest = read_manifest(store, cfg, "2026-11-22-a", 3)

Layout and guarantees: docs/scoring.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from mnist_tasks.artifacts import read_json
from mnist_tasks.config import ScoringConfig
from mnist_tasks.scoring_index import MANIFEST, version_prefix
from mnist_tasks.storage import StorageError, Store, validate_key

PREDICTIONS = "predictions.csv"
ERRORS = "errors.json"
SCHEMA = 2  # 2: the files are in the commit's own folder, named by the manifest
COLUMNS = ("image_id", "predicted", "probability", "runner_up", "runner_up_probability",
           "model_version")  # of predictions.csv


class CorruptOutput(StorageError):
    """An output file that does not match the SHA-256 its manifest holds."""


def output_prefix(cfg: ScoringConfig, batch: str, version: int) -> str:
    """The output folder of ``batch`` scored with ``version`` (its manifest is inside)."""
    return version_prefix(cfg.model_name, batch, version)


def is_committed(store: Store, cfg: ScoringConfig, batch: str, version: int) -> bool:
    """Whether ``batch`` has a complete output for ``version`` (its manifest exists)."""
    return store.exists(f"{output_prefix(cfg, batch, version)}/{MANIFEST}")


def read_manifest(store: Store, cfg: ScoringConfig, batch: str, version: int) -> dict[str, Any]:
    """The manifest of ``batch`` scored with ``version`` (the JSON document, as written).

    Raises:
        ObjectNotFound: if the batch has no complete output for that version.
    """
    return dict(read_json(store, f"{output_prefix(cfg, batch, version)}/{MANIFEST}"))


def output_key(cfg: ScoringConfig, manifest: Mapping[str, Any], name: str) -> str:
    """The key of the output file ``name`` (``predictions.csv``, ``errors.json``) that
    ``manifest`` names: in its commit's folder (schema 2), or beside it (schema 1)."""
    prefix = output_prefix(cfg, str(manifest["batch"]), int(manifest["model_version"]))
    path = manifest["files"][name].get("path", name)
    return validate_key(f"{prefix}/{path}")


def read_output(store: Store, cfg: ScoringConfig, batch: str, version: int, name: str) -> bytes:
    """The output file ``name`` of ``batch`` scored with ``version``, checked against the
    SHA-256 in its manifest.

    Raises:
        ObjectNotFound: if the batch has no complete output for that version.
        CorruptOutput: if the file does not match its manifest.
    """
    manifest = read_manifest(store, cfg, batch, version)
    key = output_key(cfg, manifest, name)
    data = store.read_bytes(key)
    if hashlib.sha256(data).hexdigest() != manifest["files"][name]["sha256"]:
        raise CorruptOutput(f"{store.uri_for(key)}: SHA-256 does not match its manifest")
    return data
