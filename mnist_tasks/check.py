"""Check: is there anything to train, and how does the champion do on the new data?

Between ingest and preprocess. The run's **inputs key** is 16 hex digits of a SHA-256 over the
dataset version, both configs and the code fingerprint. When the champion's metadata records
the same key (and ``force`` is off) the decision is **UNCHANGED**, ``covered_by`` the champion's
version; that path reads the champion's metadata alone (no TensorFlow import). Otherwise
**TRAIN**, after evaluating the champion on each new increment's fresh part: an accuracy below
its benchmark accuracy by more than ``fresh_drop_margin`` is a **FRESH-DATA DROP** warning.
The result also holds the run's lineage, which preprocess records with the prepared data.
Design: docs/architecture.md (Check: skip when nothing changed).

Run it alone: ``python -m mnist_tasks check --ingested @ingest.json --store URI``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Literal

from mnist_tasks import datasets
from mnist_tasks.artifacts import code_fingerprint
from mnist_tasks.config import CheckConfig, PreprocessConfig, TrainConfig
from mnist_tasks.registry_api import CHAMPION, ModelRegistry, VersionInfo
from mnist_tasks.results import (
    ChampionFresh,
    CheckResult,
    IngestResult,
    Lineage,
    LineageIncrement,
    QuarantinedIncrement,
)
from mnist_tasks.storage import Store

log = logging.getLogger(__name__)

__all__ = ["TRAIN", "UNCHANGED", "check", "inputs_key", "lineage_of"]

UNCHANGED: Literal["UNCHANGED"] = "UNCHANGED"
TRAIN: Literal["TRAIN"] = "TRAIN"
INPUTS_KEY_SCHEMA = "mnist-tasks/inputs-key/1"


def inputs_key(dataset_version: str, preprocess: PreprocessConfig, train: TrainConfig,
               code: str) -> str:
    """The run's inputs key: 16 hex digits of SHA-256 over the canonical JSON (sorted keys,
    no spaces) of the dataset version, both configs (every field) and the code fingerprint."""
    doc = {
        "schema": INPUTS_KEY_SCHEMA,
        "dataset_version": dataset_version,
        "preprocess": dataclasses.asdict(preprocess),
        "train": dataclasses.asdict(train),
        "code": code,
    }
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def lineage_of(ingested: IngestResult, key: str, code: str) -> Lineage:
    """The run's lineage (preprocess records it with the prepared data; register copies it
    into the version's metadata): the dataset version, the inputs key, the code fingerprint,
    the accepted increments and the quarantined ones."""
    return Lineage(
        dataset_version=ingested.dataset_version,
        inputs_key=key,
        code_fingerprint=code,
        increments=tuple(LineageIncrement(r.id, r.payload_sha256, r.train, r.fresh, r.drift)
                         for r in ingested.increments if r.status == "ACCEPTED"),
        quarantined=tuple(QuarantinedIncrement(r.id, r.reasons)
                          for r in ingested.increments if r.status == "QUARANTINED"),
    )


def _lineage(info: VersionInfo) -> Mapping[str, Any]:
    """The champion's recorded lineage; empty for versions registered before it existed."""
    value = info.metadata.get("lineage")
    return value if isinstance(value, Mapping) else {}


def _champion(registry: ModelRegistry) -> VersionInfo | None:
    number = registry.get_alias(CHAMPION)
    return registry.get(number) if number is not None else None


def _champion_increments(store: Store, lineage: Mapping[str, Any]) -> set[str]:
    """The accepted increment ids the champion was trained with (empty when unknown: a
    champion from before dataset versions saw the base only)."""
    recorded = lineage.get("increments")
    if isinstance(recorded, list):
        return {str(r["id"]) if isinstance(r, Mapping) else str(r) for r in recorded}
    version = lineage.get("dataset_version")
    if isinstance(version, str):
        try:
            return set(datasets.load_version(store, version).increment_ids)
        except datasets.DatasetError as exc:
            log.warning("check: the champion's dataset version cannot be read (%s); treating "
                        "every increment as new to it", exc)
    return set()


def _fresh_accuracy(
    store: Store, registry: ModelRegistry, champion: VersionInfo,
    entries: list[datasets.IncrementEntry], margin: float,
) -> tuple[dict[str, ChampionFresh], list[str]]:
    """The champion on each entry's fresh part: per increment results and the warnings."""
    import numpy as np

    from mnist_tasks.artifacts import load_keras_model, predict_classes

    benchmark = champion.test_accuracy
    per: dict[str, ChampionFresh] = {}
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mnist-check-") as tmp:
        model = load_keras_model(registry.fetch_model(champion.version, tmp))
    for entry in entries:
        arrays = datasets.load_arrays(store, entry)
        x, y = arrays["x_fresh"], arrays["y_fresh"]
        if not len(y):
            log.info("check: increment %s has no fresh images; nothing to check", entry.id)
            continue
        predicted = predict_classes(model, x.astype(np.float32) * np.float32(1.0 / 255.0))
        accuracy = float(np.mean(predicted == y.astype(np.int64)))
        drop = None if benchmark is None else benchmark - accuracy
        flagged = drop is not None and drop > margin
        per[entry.id] = ChampionFresh(n=len(y), accuracy=accuracy, benchmark_accuracy=benchmark,
                                      drop=drop, flagged=flagged)
        line = (f"champion v{champion.version} on increment {entry.id}: {accuracy:.2%} "
                f"({len(y)} fresh images; benchmark "
                f"{'n/a' if benchmark is None else f'{benchmark:.2%}'})").replace("%", " %")
        if flagged:
            assert drop is not None
            warning = (f"FRESH-DATA DROP: {line}: {drop * 100:.2f} points below its benchmark "
                       f"accuracy, over fresh_drop_margin {margin * 100:.2f} points")
            log.warning("check: %s", warning)
            warnings.append(warning)
        else:
            log.info("check: %s", line)
    return per, warnings


def check(
    ingested: IngestResult,
    *,
    preprocess: PreprocessConfig,
    train: TrainConfig,
    store: Store,
    registry: ModelRegistry,
    force: bool = False,
    fresh_drop_margin: float = CheckConfig.fresh_drop_margin,
) -> CheckResult:
    """Decide UNCHANGED or TRAIN for the ingested data; check the champion on new data.

    Args:
        ingested: the ingest result (its data set, dataset version and increments).
        preprocess, train: the run's configs (part of the inputs key).
        store: the store holding the dataset versions.
        registry: the model registry (the champion's metadata and model).
        force: train even when the champion covers these inputs.
        fresh_drop_margin: the champion's fresh accuracy may be this much (absolute) below its
            benchmark accuracy before a FRESH-DATA DROP warning.

    Returns:
        UNCHANGED (``covered_by``: the champion's version) or TRAIN, the inputs key, the
        champion's accuracy on each increment new to it, the warnings, and the lineage
        (:func:`lineage_of`); ``dataset_uri`` and ``dataset_version`` for preprocess.

    Raises:
        ValueError: if ``ingested`` has no dataset version.
        DatasetError: if the dataset version or an increment's arrays cannot be read.
        RegistryError, StorageError: on registry or storage failures.
    """
    start = time.perf_counter()
    dataset_version = ingested.dataset_version
    if not dataset_version:
        raise ValueError("the ingest result has no 'dataset_version': give the output of an "
                         "ingest that records dataset versions")
    code = code_fingerprint()
    key = inputs_key(dataset_version, preprocess, train, code)
    champion = _champion(registry)
    champion_key = _lineage(champion).get("inputs_key") if champion else None
    result = CheckResult(
        decision=TRAIN,
        covered_by=None,
        dataset_uri=ingested.dataset_uri,
        dataset_version=dataset_version,
        inputs_key=key,
        champion_version=champion.version if champion else None,
        champion_inputs_key=champion_key,
        champion_fresh={},
        warnings=(),
        force=force,
        lineage=lineage_of(ingested, key, code),
    )
    if champion is not None and champion_key == key:
        if not force:
            log.info("check: UNCHANGED: champion v%d was trained on exactly these inputs "
                     "(dataset version %s, preset %s, code %s); nothing to train. Trigger with "
                     "force=true to retrain. [inputs key %s, %.2f s]", champion.version,
                     dataset_version, train.preset, code[:12], key, time.perf_counter() - start)
            return dataclasses.replace(result, decision=UNCHANGED, covered_by=champion.version)
        log.info("check: champion v%d was trained on exactly these inputs (inputs key %s); "
                 "retraining because force=true", champion.version, key)
    elif champion is not None:
        log.info("check: inputs key %s differs from champion v%d's %s; training", key,
                 champion.version, champion_key or "(not recorded)")
    else:
        log.info("check: no champion yet; training (inputs key %s)", key)

    if champion is not None:
        version = datasets.load_version(store, dataset_version)
        seen = _champion_increments(store, _lineage(champion))
        new = [e for e in version.increments if e.id not in seen]
        if new:
            log.info("check: %d increment(s) new to champion v%d: %s; evaluating it on their "
                     "fresh parts before training", len(new), champion.version,
                     ", ".join(e.id for e in new))
            per, warnings = _fresh_accuracy(store, registry, champion, new, fresh_drop_margin)
            result = dataclasses.replace(result, champion_fresh=per, warnings=tuple(warnings))
    log.info("check: TRAIN (%.2f s)", time.perf_counter() - start)
    return result
