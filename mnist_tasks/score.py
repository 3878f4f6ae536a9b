"""Score: put the champion to work on batches of unlabeled images.

A *batch* is a folder under the landing prefix (a local folder or ``s3://``)::

    <landing>/<batch-id>/*.png                  28x28 PNG files (any names), and/or
    <landing>/<batch-id>/*-idx3-ubyte[.gz]      IDX image files (also ``*.idx``, ``*.idx3``)
    <landing>/<batch-id>/_SUCCESS               the completion marker, written last

A batch is read only once its marker exists. Its outputs, one set per (batch, model version),
in the store::

    scoring/<model>/batches/<batch-id>/v<NNNNNN>/MANIFEST.json     written last: counts, model
                                                                   version, input SHA-256,
                                                                   timing, the commit's folder
    scoring/<model>/batches/<batch-id>/v<NNNNNN>/<commit>/predictions.csv   one row per image
    scoring/<model>/batches/<batch-id>/v<NNNNNN>/<commit>/errors.json       files skipped, why

An output exists for readers only once its manifest does, and no object of it is ever replaced:
each commit writes its files into a folder of its own, and the manifest (created only if
absent) names the one that won, so its SHA-256s always match (:func:`read_output` checks them).
Scoring a batch again with the same version does nothing and says so; a new version writes a
new folder beside the old one. Each commit also adds its batch to the version's summary
(:mod:`mnist_tasks.scoring_index`), which the Models page reads (:func:`scored_batches`).

The work is split into steps that an orchestrator can run as separate tasks (the
``mnist_batch_scoring`` DAG does, with one mapped task per shard):

1. :func:`plan`: resolve the model version once (a triggering registry event's version, else
   the champion alias), pick the batches (new ones, and the most recent ``rescore_window``
   ones without an output of that version), and record the plan (a retry reuses it: the
   version is never re-resolved mid-run);
2. :func:`prepare`: read and decode each batch (bad files skipped, named in its error list),
   hash it, stage the decoded images, cut them into shards;
3. :func:`score_shard`: predict one shard with the pinned version, stage the result;
4. :func:`commit`: for each batch, check every shard is there, then write the predictions, the
   error list and, last, the manifest; log the operators' view (images/s, predicted-class
   distribution against the training prior, low-confidence count).

:func:`score_batches` runs the four in one process (``python -m mnist_tasks score``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mnist_tasks.artifacts import (
    NUM_CLASSES,
    json_default,
    load_keras_model,
    load_npz,
    read_json,
    save_npz,
    utc_now,
)
from mnist_tasks.config import ScoringConfig
from mnist_tasks.monitor import (
    OK,
    REFERENCE_FILE,
    WARN,
    Forward,
    MonitorPolicy,
    Reference,
    check_scored,
)
from mnist_tasks.registry import CHAMPION, Registry, RegistryError, parse_version
from mnist_tasks.registry_api import ModelRegistry
from mnist_tasks.scoring_index import (
    BATCH_ID,
    MANIFEST,
    REJECTED,
    look_at_landing,
    look_at_named,
    rebuild_summaries,
    record_scored,
    scored_batches,
    version_prefix,
)
from mnist_tasks.storage import MARKER, ObjectNotFound, Store, validate_key
from mnist_tasks.userfiles import (
    MAX_IDX_FILE_BYTES,
    MAX_IMAGES,
    MAX_PNG_BYTES,
    UserFileError,
    decode_idx_images,
    decode_png,
    list_files,
    read_many,
)

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.csv"
ERRORS = "errors.json"
SCHEMA = 2  # 2: the files are in the commit's own folder, named by the manifest
ROWS = COLS = 28
COLUMNS = ("image_id", "predicted", "probability", "runner_up", "runner_up_probability",
           "model_version")
# The class frequencies of the MNIST training set (60,000 labels): the prior the predicted
# distribution of a batch is compared with.
TRAINING_PRIOR_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
_IDX_SUFFIXES = ("-ubyte", ".idx", ".idx3")
_BATCH_RE = BATCH_ID
MAX_BATCH_IMAGES = 10 * MAX_IMAGES  # images scored from one batch (784 MB decoded)


class ScoringError(RuntimeError):
    """Scoring cannot go on; the message names the batch, file or model version."""


class BatchRejected(ScoringError):
    """Every file of a batch is bad: nothing of it can be scored (nothing is written)."""


class NoChampion(ScoringError):
    """No champion to score with (and no registry event names a version)."""


# --- keys ---------------------------------------------------------------------------------------


def _root(cfg: ScoringConfig) -> str:
    return f"scoring/{cfg.model_name}"


def output_prefix(cfg: ScoringConfig, batch: str, version: int) -> str:
    """The output folder of ``batch`` scored with ``version`` (its manifest is inside)."""
    return version_prefix(cfg.model_name, batch, version)


def _staging(cfg: ScoringConfig, run_key: str, batch: str, version: int) -> str:
    return f"{_root(cfg)}/staging/{run_key}/{batch}/v{version:06d}"


def _plan_key(cfg: ScoringConfig, run_key: str) -> str:
    return f"{_root(cfg)}/runs/{run_key}/plan.json"


def validate_batch_id(batch: object) -> str:
    """Return ``batch`` if it is a valid batch id (one path segment), else raise ValueError."""
    if not isinstance(batch, str) or not _BATCH_RE.fullmatch(batch):
        raise ValueError(f"invalid batch id {batch!r}: must be one folder name of letters, "
                         "digits, '.', '_', '=', '+', '@' or '-' (at most 128)")
    return batch


# --- the landing prefix -------------------------------------------------------------------------


def list_batches(landing: Store) -> list[str]:
    """The complete batches under the landing prefix (those with a ``_SUCCESS`` marker), by id.

    One listing of the folders and one marker check per folder: for operators and tests (a
    plan looks only at the folders it has not decided:
    :func:`mnist_tasks.scoring_index.look_at_landing`).
    A folder without its marker is still being written: logged and left alone.
    """
    folders = [f for f in landing.list_children() if _BATCH_RE.fullmatch(f)]
    complete = [f for f in folders if landing.has_marker(f)]
    waiting = sorted(set(folders) - set(complete))
    if waiting:
        log.info("score: %d batch(es) without their %s marker yet, not read: %s", len(waiting),
                 MARKER, ", ".join(waiting))
    return sorted(complete)


def is_committed(store: Store, cfg: ScoringConfig, batch: str, version: int) -> bool:
    """Whether ``batch`` has a complete output for ``version`` (its manifest exists)."""
    return store.exists(f"{output_prefix(cfg, batch, version)}/{MANIFEST}")


def read_manifest(store: Store, cfg: ScoringConfig, batch: str, version: int) -> dict[str, Any]:
    """The manifest of ``batch`` scored with ``version``.

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
        ScoringError: if the file does not match its manifest.
    """
    manifest = read_manifest(store, cfg, batch, version)
    key = output_key(cfg, manifest, name)
    data = store.read_bytes(key)
    if hashlib.sha256(data).hexdigest() != manifest["files"][name]["sha256"]:
        raise ScoringError(f"{store.uri_for(key)}: SHA-256 does not match its manifest")
    return data


# --- 1. plan ------------------------------------------------------------------------------------


def resolve_model(
    registry: ModelRegistry, events: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The model version a run scores with, resolved once.

    The newest registry event (its ``extra``) that names a version of *this* registry wins
    (its ``model_uri``, when given, must be inside the registry: an event from another
    deployment's store is ignored, logged); otherwise the champion alias.

    Returns:
        ``{"model_version", "model_uri", "resolved_from"}`` (``event`` or ``champion``).

    Raises:
        ScoringError: if there is no champion (and no usable event), or the version is not a
            complete version of the registry.
    """
    for extra in reversed(list(events)):
        if not isinstance(extra, Mapping) or extra.get("version") is None:
            continue
        uri = str(extra.get("model_uri") or "")
        if uri and not uri.startswith(registry.uri + "/"):
            log.info("score: ignoring a registry event for %s (not in %s)", uri, registry.uri)
            continue
        try:
            version = parse_version(extra["version"])
            return {"model_version": version, "model_uri": registry.model_uri(version),
                    "resolved_from": "event"}
        except RegistryError as exc:
            raise ScoringError(f"the registry event names version {extra['version']!r}: "
                               f"{exc}") from None
    champion = registry.get_alias(CHAMPION)
    if champion is None:
        raise NoChampion(f"no champion in {registry.uri}: nothing to score with (register "
                         "and promote a model first)")
    return {"model_version": champion, "model_uri": registry.model_uri(champion),
            "resolved_from": "champion"}


def plan(
    cfg: ScoringConfig,
    store: Store,
    landing: Store,
    run_key: str,
    events: Sequence[Mapping[str, Any]] = (),
    *,
    batches: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Pin the model version and choose the batches of this run; recorded, so a retry of the
    run's plan returns the same (the version is never re-resolved mid-run).

    Without ``batches``, the landing is looked at through its record
    (:func:`mnist_tasks.scoring_index.look_at_landing`): only the folders not decided yet and
    the re-score window, so a landing check with nothing new costs the same however many
    batches were scored before; a run started by a registry event lists every folder instead.

    Args:
        events: the ``extra`` of the registry events that triggered the run, oldest first.
        batches: score exactly these (complete) batches instead of choosing.

    Returns:
        ``{"model_version", "model_uri", "resolved_from", "batches": [...], "skipped":
        {batch: why}, "planned_at"}``.

    Raises:
        ScoringError: no champion; a named batch that is not complete.
    """
    key = _plan_key(cfg, run_key)
    try:
        recorded = read_json(store, key)
        log.info("score: run %s already planned (v%s, %d batch(es)); reusing it", run_key,
                 recorded["model_version"], len(recorded["batches"]))
        return dict(recorded)
    except ObjectNotFound:
        pass
    model = resolve_model(Registry(store, cfg.model_name), events)
    version = int(model["model_version"])
    skipped: dict[str, str] = {}
    if batches is not None:
        state = look_at_named(store, landing, cfg.model_name,
                              [validate_batch_id(b) for b in batches])
        if state.waiting:
            raise ScoringError(f"batch(es) {', '.join(state.waiting)} not found in "
                               f"{landing.uri} (or without their {MARKER} marker)")
        candidates = list(dict.fromkeys(batches))
    else:
        state = look_at_landing(store, landing, cfg.model_name, window=cfg.rescore_window,
                                sweep=bool(events))
        # New: complete and not decided (no output of any version, not rejected). A commit
        # that never finished (no manifest) counts as none.
        new = [b for b in state.complete if not state.outputs.decided(b)]
        recent = state.complete[-cfg.rescore_window:] if cfg.rescore_window else []
        candidates = sorted(set(new) | set(recent))
    chosen = []
    for batch in candidates:
        if version in state.outputs.scored.get(batch, ()):
            skipped[batch] = f"already scored with v{version}"
        elif batch in state.outputs.rejected and batches is None:
            skipped[batch] = "rejected before: every file is bad (see its REJECTED.json)"
        else:
            chosen.append(batch)
    for batch, why in skipped.items():
        log.info("score: batch %s: %s; nothing to do", batch, why)
    result = {**model, "batches": chosen, "skipped": skipped, "run_key": run_key,
              "planned_at": utc_now()}
    # Created only if absent: two tries of one run racing each other share the first plan.
    if not store.write_if_absent(key, json.dumps(result, indent=2).encode()):
        log.info("score: run %s was planned concurrently; using that plan", run_key)
        return dict(read_json(store, key))
    log.info("score: run %s scores %d batch(es) with %s v%d (from the %s): %s", run_key,
             len(chosen), cfg.model_name, version, model["resolved_from"],
             ", ".join(chosen) or "none")
    return result


# --- 2. prepare ---------------------------------------------------------------------------------


def _is_idx(name: str) -> bool:
    return name.removesuffix(".gz").endswith(_IDX_SUFFIXES)


def read_batch(landing: Store, batch: str) -> dict[str, Any]:
    """Read and decode one complete batch with the one reader for user files
    (:mod:`mnist_tasks.userfiles`); bad files are skipped and named.

    Returns:
        ``{"images": uint8 (N, 28, 28), "ids": [N image ids], "errors": [{"file", "error"}],
        "input_sha256", "files", "decode_s"}``. Image ids are the PNG's path in the batch, or
        ``<idx file>#<index>``. The input SHA-256 is over the sorted (name, SHA-256) of every
        file of the batch but the marker (a file that cannot be read: its name and problem).

    Raises:
        BatchRejected: if no image of the batch can be read (the message names every file
            and its problem).
        StorageError: if the landing itself fails (the task is retried).
    """
    import numpy as np

    start = time.perf_counter()
    batch = validate_batch_id(batch)
    listing = list_files(landing, batch)
    folder = f"{listing.root_uri.rstrip('/')}/{batch}/"
    names = {f.key: f.key[len(batch) + 1:] for f in listing.files}
    decoded: dict[str, np.ndarray | str] = {}  # name -> images, or the problem

    def problem(exc: UserFileError) -> str:
        return str(exc).replace(folder, "")  # "x.png: ...": the batch is named elsewhere

    for key, why in listing.refused:
        decoded[key[len(batch) + 1:]] = f"{key[len(batch) + 1:]}: {why}"
    pngs = [f for f in listing.files if f.name.lower().endswith(".png")]
    idxs = [f for f in listing.files if _is_idx(f.name) and not f.name.lower().endswith(".png")]
    others = [f for f in listing.files if f not in set(pngs) | set(idxs)]
    digest_parts: dict[str, str] = {}
    for files, limit in ((pngs, MAX_PNG_BYTES), (idxs, MAX_IDX_FILE_BYTES)):
        for f, data in read_many(landing, files, limit):
            name = names[f.key]
            if isinstance(data, UserFileError):
                decoded[name] = digest_parts[name] = problem(data)
                continue
            digest_parts[name] = hashlib.sha256(data).hexdigest()
            try:
                arr = (decode_png(data, folder + name)[None] if f in pngs
                       else decode_idx_images(data, folder + name))
            except UserFileError as exc:
                decoded[name] = problem(exc)
                continue
            decoded[name] = arr
    for f in others:
        name = names[f.key]
        decoded[name] = digest_parts[name] = (f"{name}: neither a .png nor an IDX images "
                                               "file; ignored")
    digest = hashlib.sha256(b"mnist-tasks/scoring-batch/1\n")
    for name in sorted(digest_parts):
        digest.update(f"{name}\0{digest_parts[name]}\n".encode())
    images: list[np.ndarray] = []
    ids: list[str] = []
    errors: list[dict[str, str]] = []
    total = 0
    for name in sorted(decoded):
        item = decoded[name]
        if isinstance(item, str):
            errors.append({"file": name, "error": item})
        elif total + len(item) > MAX_BATCH_IMAGES:
            errors.append({"file": name, "error": f"{name}: over the batch's limit of "
                           f"{MAX_BATCH_IMAGES:,} images; land it in another batch"})
        else:
            total += len(item)
            images.append(item)
            ids.extend([name] if name.lower().endswith(".png")
                       else [f"{name}#{i}" for i in range(len(item))])
    uri = landing.uri_for(batch)
    if not ids:
        detail = "; ".join(e["error"] for e in errors[:20]) or "the folder holds no files"
        more = f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""
        raise BatchRejected(f"batch {batch} ({uri}): no readable image, nothing scored: "
                            f"{detail}{more}")
    for e in errors:
        log.warning("score: batch %s: skipped %s", batch, e["error"])
    return {
        "images": np.concatenate(images) if len(images) > 1 else images[0],
        "ids": ids,
        "errors": errors,
        "input_sha256": digest.hexdigest(),
        "files": len(listing.files) + len(listing.refused),
        "decode_s": time.perf_counter() - start,
    }


def prepare(cfg: ScoringConfig, store: Store, landing: Store, planned: Mapping[str, Any]
            ) -> dict[str, Any]:
    """Decode every planned batch, stage its images, and cut it into shards.

    A batch whose every file is bad is recorded as rejected (``REJECTED.json`` beside its
    outputs, so later runs do not read it again) and left out; the others go on.

    Returns:
        ``{"shards": [{"batch", "version", "staging", "index", "start", "stop"}, ...],
        "batches": [ids staged], "rejected": {batch: message}}``; the shards are what the
        mapped scoring task takes, one each.
    """
    version = int(planned["model_version"])
    run_key = str(planned["run_key"])
    shards: list[dict[str, Any]] = []
    staged: list[str] = []
    rejected: dict[str, str] = {}
    for batch in planned["batches"]:
        staging = _staging(cfg, run_key, batch, version)
        try:
            info = read_json(store, f"{staging}/batch.json")
            log.info("score: batch %s already staged by an earlier try; reusing it", batch)
        except ObjectNotFound:
            try:
                read = read_batch(landing, batch)
            except BatchRejected as exc:
                rejected[batch] = str(exc)
                store.write_if_absent(f"{_root(cfg)}/batches/{batch}/{REJECTED}", json.dumps(
                    {"batch": batch, "error": str(exc), "at": utc_now()}, indent=2).encode())
                log.error("score: %s", exc)
                continue
            import numpy as np

            n = len(read["ids"])
            save_npz(store, f"{staging}/images.npz", {"images": read["images"],
                                                      "ids": np.asarray(read["ids"])})
            info = {"batch": batch, "version": version, "images": n, "ids_count": n,
                    "errors": read["errors"], "input_sha256": read["input_sha256"],
                    "files": read["files"], "decode_s": round(read["decode_s"], 3),
                    "shards": max(1, math.ceil(n / cfg.shard_size)),
                    "landing_uri": landing.uri_for(batch)}
            store.write_bytes(f"{staging}/batch.json", json.dumps(info, indent=2).encode())
            log.info("score: batch %s: %d image(s) from %d file(s), %d skipped, %d shard(s), "
                     "decoded in %.2f s", batch, n, read["files"], len(read["errors"]),
                     info["shards"], read["decode_s"])
        staged.append(batch)
        n = int(info["images"])
        for i in range(int(info["shards"])):
            shards.append({"batch": batch, "version": version, "staging": staging, "index": i,
                           "start": i * cfg.shard_size, "stop": min(n, (i + 1) * cfg.shard_size),
                           "model_uri": planned["model_uri"]})
    return {"shards": shards, "batches": staged, "rejected": rejected}


def prepared_state(cfg: ScoringConfig, store: Store, planned: Mapping[str, Any]
                   ) -> dict[str, Any]:
    """What :func:`prepare` did for a run, read back from the store (for a commit in another
    process): ``{"batches": [staged ids], "rejected": {batch: message}}``.

    Raises:
        ScoringError: naming a planned batch that was neither staged nor rejected.
    """
    version, run_key = int(planned["model_version"]), str(planned["run_key"])
    staged, rejected = [], {}
    for batch in planned["batches"]:
        if store.exists(f"{_staging(cfg, run_key, batch, version)}/batch.json") or \
                is_committed(store, cfg, batch, version):
            staged.append(batch)
            continue
        try:
            rejected[batch] = str(read_json(store, f"{_root(cfg)}/batches/{batch}/{REJECTED}")
                                  ["error"])
        except ObjectNotFound:
            raise ScoringError(f"batch {batch} v{version} of run {run_key} was not prepared; "
                               "nothing committed") from None
    return {"batches": staged, "rejected": rejected}


# --- 3. score -----------------------------------------------------------------------------------


def top2(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The predicted class and its probability, and the runner-up and its probability."""
    import numpy as np

    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    rows = np.arange(len(probs))
    first, second = order[:, 0], order[:, 1]
    return (first.astype(np.uint8), probs[rows, first].astype(np.float32),
            second.astype(np.uint8), probs[rows, second].astype(np.float32))


def predict_images(model: keras.Model, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Class probabilities of uint8 images, scaled exactly as preprocess scales them."""
    import numpy as np

    x = images.astype(np.float32) * np.float32(1.0 / 255.0)
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def _forward(model: keras.Model, images: np.ndarray, batch_size: int
             ) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities and penultimate embeddings in one pass; a model the monitor cannot split
    (built without an input layer) gives probabilities alone."""
    try:
        forward = Forward(model)
    except ValueError as exc:
        log.info("score: no embeddings from this model (%s); the embedding test is skipped",
                 exc)
        return predict_images(model, images, batch_size), None
    return forward(images, batch_size)


def load_version(store: Store, model_name: str, version: int) -> keras.Model:
    """The registered model of ``version``, downloaded and SHA-256-verified, in safe mode."""
    registry = Registry(store, model_name)
    with tempfile.TemporaryDirectory(prefix="mnist-score-") as tmp:
        return load_keras_model(registry.fetch_model(version, tmp))


def score_shard(cfg: ScoringConfig, store: Store, shard: Mapping[str, Any],
                model: keras.Model | None = None) -> dict[str, Any]:
    """Predict one shard with the pinned version and stage the result (idempotent: a shard
    already staged is not scored again).

    Returns:
        ``{"batch", "index", "images", "score_s"}``.
    """
    staging, index = str(shard["staging"]), int(shard["index"])
    out = f"{staging}/shard-{index:05d}.npz"
    if store.exists(out):
        log.info("score: %s shard %d already scored; reusing it", shard["batch"], index)
        return {"batch": shard["batch"], "index": index,
                "images": int(shard["stop"]) - int(shard["start"]), "score_s": 0.0}
    images = load_npz(store, f"{staging}/images.npz", ("images",))["images"]
    part = images[int(shard["start"]):int(shard["stop"])]
    if model is None:
        model = load_version(store, cfg.model_name, int(shard["version"]))
    import numpy as np

    start = time.perf_counter()
    probs, embeddings = _forward(model, part, cfg.batch_size)
    score_s = time.perf_counter() - start
    pred, prob, second, prob2 = top2(probs)
    staged = {"predicted": pred, "probability": prob, "runner_up": second,
              "runner_up_probability": prob2, "score_s": np.asarray(score_s, dtype=np.float64)}
    if embeddings is not None:  # a seeded share, for the monitor's embedding test
        rng = np.random.default_rng(index)
        keep = np.sort(rng.permutation(len(part))[:MonitorPolicy().embedding_sample])
        staged["embeddings"] = embeddings[keep].astype(np.float32)
    save_npz(store, out, staged)
    log.info("score: batch %s shard %d: %d image(s) in %.2f s (%.0f images/s) with v%s",
             shard["batch"], index, len(part), score_s, len(part) / max(score_s, 1e-9),
             shard["version"])
    return {"batch": shard["batch"], "index": index, "images": len(part),
            "score_s": round(score_s, 4)}


# --- 4. commit ----------------------------------------------------------------------------------


def class_report(predicted: np.ndarray, probability: np.ndarray, cfg: ScoringConfig
                 ) -> dict[str, Any]:
    """The operators' view of one batch's predictions: class counts and distribution against
    the training prior (total variation distance, flagged above the threshold), and how many
    predictions are below the confidence threshold."""
    import numpy as np

    counts = np.bincount(predicted.astype(np.int64), minlength=NUM_CLASSES)
    dist = counts / max(1, counts.sum())
    prior = np.asarray(TRAINING_PRIOR_COUNTS, dtype=np.float64)
    prior /= prior.sum()
    tvd = float(0.5 * np.abs(dist - prior).sum())
    low = int((probability < cfg.confidence_threshold).sum())
    return {
        "class_counts": [int(c) for c in counts],
        "class_distribution": [round(float(d), 4) for d in dist],
        "training_prior": [round(float(p), 4) for p in prior],
        "divergence_tvd": round(tvd, 4),
        "divergence_threshold": cfg.divergence_threshold,
        "divergence_flagged": tvd > cfg.divergence_threshold,
        "low_confidence": low,
        "confidence_threshold": cfg.confidence_threshold,
    }


def _predictions_csv(ids: Sequence[str], shards: Mapping[str, np.ndarray], version: int) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    pred, prob = shards["predicted"].tolist(), shards["probability"].tolist()
    second, prob2 = shards["runner_up"].tolist(), shards["runner_up_probability"].tolist()
    for i, image_id in enumerate(ids):
        writer.writerow((image_id, pred[i], f"{prob[i]:.6f}", second[i], f"{prob2[i]:.6f}",
                         version))
    return buf.getvalue().encode()


def commit_batch(cfg: ScoringConfig, store: Store, batch: str, version: int, staging: str,
                 *, run_id: str | None = None, run_key: str | None = None,
                 score_s: float | None = None, summarize: bool = True,
                 hook: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Commit one batch's staged shards as its output for ``version``: the predictions and
    errors into a folder of this commit's own, then, last, the manifest naming that folder
    (created only if absent). Nothing to do (and says so) if the manifest already exists.

    No object is ever replaced, so two overlapping commits of one batch and version cannot mix:
    the one whose manifest lands wins, the other deletes its own folder, and the manifest's
    SHA-256s always match the files it names. Then the batch is added to the version's summary
    (also when the manifest was there already: a commit that stopped in between is made good).

    Args:
        run_key: names the commit's folder (``<run_key>.<8 hex digits>``), with ``run_id``
            recorded in the manifest.
        summarize: add the batch to the version's summary (False: the caller adds it, as
            :func:`commit` does once for all its batches).
        hook: called with ``"write"`` before the files are written and ``"publish"`` before the
            manifest is; for tests that interleave two commits deterministically.

    Raises:
        ScoringError: if a shard is missing (its task did not finish): nothing is written.
    """
    import numpy as np

    prefix = output_prefix(cfg, batch, version)
    manifest_key = f"{prefix}/{MANIFEST}"
    try:
        existing = read_json(store, manifest_key)
    except ObjectNotFound:
        existing = None
    if existing is not None:
        log.info("score: batch %s already scored with v%d (%s); nothing to do", batch, version,
                 store.uri_for(manifest_key))
        if summarize:
            record_scored(store, [existing])
        return {**existing, "committed": False}
    start = time.perf_counter()
    info = read_json(store, f"{staging}/batch.json")
    missing = [i for i in range(int(info["shards"]))
               if not store.exists(f"{staging}/shard-{i:05d}.npz")]
    if missing:
        raise ScoringError(f"batch {batch} v{version}: shard(s) {missing} were not scored; "
                           "nothing committed")
    columns = ("predicted", "probability", "runner_up", "runner_up_probability")
    parts = [load_npz(store, f"{staging}/shard-{i:05d}.npz", columns,
                      optional=("score_s", "embeddings"))
             for i in range(int(info["shards"]))]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in columns}
    if score_s is None:  # the shards' own predict times (each shard records its own)
        score_s = sum(float(p["score_s"]) for p in parts if "score_s" in p) or None
    staged = load_npz(store, f"{staging}/images.npz", ("ids", "images"))
    ids = [str(i) for i in staged["ids"]]
    if len(ids) != len(merged["predicted"]) or len(ids) != int(info["images"]):
        raise ScoringError(f"batch {batch} v{version}: {len(merged['predicted'])} predictions "
                           f"for {len(ids)} images; nothing committed")
    predictions = _predictions_csv(ids, merged, version)
    errors = json.dumps(info["errors"], indent=2).encode()
    report = class_report(merged["predicted"], merged["probability"], cfg)
    health = _health(store, cfg, batch, version, merged, parts, staged["images"])
    # The files first, in a folder no other commit writes to; the manifest last: until it
    # exists, readers see nothing of this output, and only the manifest that lands counts.
    commit_id = f"{run_key or 'commit'}.{uuid.uuid4().hex[:8]}"
    files = {PREDICTIONS: predictions, ERRORS: errors}
    if hook is not None:
        hook("write")
    for name, data in files.items():
        if not store.write_if_absent(f"{prefix}/{commit_id}/{name}", data):
            raise ScoringError(f"{store.uri_for(f'{prefix}/{commit_id}/{name}')} exists: "
                               "another commit used this commit id; nothing committed")
    commit_s = time.perf_counter() - start
    n = len(ids)
    manifest = {
        "schema": SCHEMA,
        "batch": batch,
        "model_name": cfg.model_name,
        "model_version": version,
        "input_uri": info.get("landing_uri"),
        "input_sha256": info["input_sha256"],
        "counts": {"files": info["files"], "images": n, "skipped_files": len(info["errors"]),
                   "shards": int(info["shards"])},
        "timing": {"decode_s": info["decode_s"],
                   "score_s": round(score_s, 3) if score_s is not None else None,
                   "images_per_s": round(n / score_s, 1) if score_s else None,
                   "commit_s": round(commit_s, 3)},
        "report": report,
        "monitor": health,
        "commit": commit_id,
        "files": {name: {"path": f"{commit_id}/{name}",
                         "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in files.items()},
        "run_id": run_id,
        "created_at": utc_now(),
    }
    body = json.dumps(manifest, indent=2, default=json_default).encode()
    if hook is not None:
        hook("publish")
    if not store.write_if_absent(manifest_key, body):
        log.info("score: batch %s v%d was committed concurrently; keeping that one", batch,
                 version)
        for name in files:  # named by no manifest: nobody will ever read them
            store.delete(f"{prefix}/{commit_id}/{name}")
        winner = read_json(store, manifest_key)
        if summarize:
            record_scored(store, [winner])
        return {**winner, "committed": False}
    _delete_unnamed(store, prefix, commit_id)
    if summarize:
        record_scored(store, [manifest])
    _log_view(cfg, manifest)
    export_label_queue(cfg, store, batch, version, ids, staged["images"], merged)
    return {**manifest, "committed": True}


def label_queue_prefix(cfg: ScoringConfig, batch: str, version: int) -> str:
    return f"{_root(cfg)}/labeling/{batch}/v{version:06d}"


def export_label_queue(cfg: ScoringConfig, store: Store, batch: str, version: int,
                       ids: Sequence[str], images: np.ndarray,
                       merged: Mapping[str, np.ndarray]) -> str | None:
    """Export the batch's ``cfg.label_queue`` least confident images for people to label:
    PNG files, ``queue.csv`` (file, image_id, predicted, probability, runner_up) and
    ``label-studio.json`` (tasks with the prediction as a pre-annotation). Labels come back as
    feedback (``image_id,label``). Objects are created only if absent, so a re-run is a no-op.

    Returns:
        The queue's URI, or None when nothing is exported.
    """
    import numpy as np
    from PIL import Image

    k = min(cfg.label_queue, len(ids))
    if k == 0:
        return None
    prefix = label_queue_prefix(cfg, batch, version)
    order = np.argsort(merged["probability"], kind="stable")[:k]
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(("file", "image_id", "predicted", "probability", "runner_up"))
    tasks = []
    for rank, i in enumerate(order.tolist()):
        name = f"{rank:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.asarray(images[i], dtype=np.uint8)).save(buf, format="PNG")
        store.write_if_absent(f"{prefix}/{name}", buf.getvalue())
        predicted, probability = int(merged["predicted"][i]), float(merged["probability"][i])
        writer.writerow((name, ids[i], predicted, f"{probability:.6f}",
                         int(merged["runner_up"][i])))
        tasks.append({"data": {"image": store.uri_for(f"{prefix}/{name}"), "image_id": ids[i],
                               "batch": batch},
                      "predictions": [{"model_version": str(version), "score": probability,
                                       "result": [{"from_name": "label", "to_name": "image",
                                                   "type": "choices",
                                                   "value": {"choices": [str(predicted)]}}]}]})
    store.write_if_absent(f"{prefix}/queue.csv", rows.getvalue().encode())
    store.write_if_absent(f"{prefix}/label-studio.json", json.dumps(tasks, indent=1).encode())
    log.info("score: batch %s: the %d least confident image(s) exported for labelling to %s",
             batch, k, store.uri_for(prefix))
    return store.uri_for(prefix)


def _health(store: Store, cfg: ScoringConfig, batch: str, version: int,
            merged: Mapping[str, np.ndarray], parts: Sequence[Mapping[str, np.ndarray]],
            images: np.ndarray) -> dict[str, Any] | None:
    """The batch's drift against the version's monitoring reference (docs/monitoring.md), or
    None when the version has no reference (registered before monitoring) or no embeddings."""
    import numpy as np

    if not all("embeddings" in p for p in parts):
        return None
    try:
        blob = Registry(store, cfg.model_name).read_file(version, REFERENCE_FILE)
    except RegistryError as exc:
        log.info("score: batch %s: v%d has no monitoring reference (%s); drift not checked",
                 batch, version, exc)
        return None
    health = check_scored(Reference.from_bytes(blob), merged["probability"],
                          merged["predicted"], np.concatenate([p["embeddings"] for p in parts]),
                          images, MonitorPolicy())
    level = {OK: logging.INFO, WARN: logging.WARNING}.get(health.status, logging.ERROR)
    log.log(level, "MONITOR %s batch %s with %s v%d: %s", health.status, batch,
            cfg.model_name, version, health.summary_line())
    return health.to_dict()


def _delete_unnamed(store: Store, prefix: str, commit_id: str) -> None:
    """Delete what earlier tries of this output left (files of commits that stopped before
    their manifest): the manifest now names ``commit_id``, so nothing will read them. A
    concurrent commit still writing loses at its manifest and deletes its own anyway."""
    for key in store.list(prefix):
        rel = key[len(prefix) + 1:]
        if rel != MANIFEST and not rel.startswith(f"{commit_id}/"):
            log.info("score: deleting %s (a commit that did not finish)", store.uri_for(key))
            store.delete(key)


def _log_view(cfg: ScoringConfig, manifest: Mapping[str, Any]) -> None:
    report, timing = manifest["report"], manifest["timing"]
    counts = manifest["counts"]
    log.info("SCORED batch %s with %s v%d: %d image(s), %d file(s) skipped, %s images/s; "
             "predicted classes %s", manifest["batch"], cfg.model_name,
             manifest["model_version"], counts["images"], counts["skipped_files"],
             timing.get("images_per_s") or "-", report["class_counts"])
    level = logging.WARNING if report["divergence_flagged"] else logging.INFO
    log.log(level, "%sbatch %s: predicted-class distribution vs the training prior: total "
            "variation %.3f (threshold %.3f)", "CLASS DRIFT " if report["divergence_flagged"]
            else "", manifest["batch"], report["divergence_tvd"], report["divergence_threshold"])
    log.info("batch %s: %d prediction(s) below confidence %.2f", manifest["batch"],
             report["low_confidence"], report["confidence_threshold"])


def commit(cfg: ScoringConfig, store: Store, planned: Mapping[str, Any],
           prepared: Mapping[str, Any] | None = None,
           scored: Iterable[Mapping[str, Any]] = (),
           run_id: str | None = None) -> dict[str, Any]:
    """Commit every staged batch of the run, then clear the run's staging area.

    ``prepared`` is :func:`prepare`'s result; None reads it back (:func:`prepared_state`).

    Returns:
        ``{"model_version", "committed": [batches], "unchanged": [batches], "rejected": {...},
        "images", "outputs": {batch: output URI}}``.

    Raises:
        BatchRejected: after committing the others, naming each batch whose every file was bad.
        ScoringError: if a shard is missing.
    """
    version = int(planned["model_version"])
    if prepared is None:
        prepared = prepared_state(cfg, store, planned)
    score_s: dict[str, float] = {}
    for s in scored:
        score_s[str(s["batch"])] = score_s.get(str(s["batch"]), 0.0) + float(s["score_s"])
    committed: list[str] = []
    unchanged: list[str] = []
    outputs: dict[str, str] = {}
    manifests: list[dict[str, Any]] = []
    images = 0
    try:
        for batch in prepared["batches"]:
            staging = _staging(cfg, str(planned["run_key"]), batch, version)
            result = commit_batch(cfg, store, batch, version, staging, run_id=run_id,
                                  run_key=str(planned["run_key"]), score_s=score_s.get(batch),
                                  summarize=False)
            (committed if result["committed"] else unchanged).append(batch)
            images += int(result["counts"]["images"])
            outputs[batch] = store.uri_for(output_prefix(cfg, batch, version))
            manifests.append({k: v for k, v in result.items() if k != "committed"})
    finally:
        # One summary update for the batches committed, also when a later one fails (a
        # retry that finds a batch committed adds it again: rows are added once).
        record_scored(store, manifests)
    for key in store.list(f"{_root(cfg)}/staging/{planned['run_key']}"):
        store.delete(key)
    rejected = dict(prepared.get("rejected") or {})
    result = {"model_version": version, "committed": committed, "unchanged": unchanged,
              "rejected": rejected, "images": images, "outputs": outputs}
    if rejected:
        raise BatchRejected("; ".join(rejected.values()))
    return result


# --- all steps in one process -------------------------------------------------------------------


def score_batches(cfg: ScoringConfig, store: Store, landing: Store, run_key: str, *,
                  batches: Sequence[str] | None = None, events: Sequence[Mapping[str, Any]] = (),
                  run_id: str | None = None) -> dict[str, Any]:
    """Plan, prepare, score every shard and commit, in this process (the CLI's ``score``).

    Returns:
        :func:`commit`'s result plus ``skipped`` (from the plan); with nothing to score,
        ``committed`` is empty.
    """
    planned = plan(cfg, store, landing, run_key, events=events, batches=batches)
    if not planned["batches"]:
        return {"model_version": planned["model_version"], "committed": [], "unchanged": [],
                "rejected": {}, "images": 0, "outputs": {}, "skipped": planned["skipped"]}
    prepared = prepare(cfg, store, landing, planned)
    model = (load_version(store, cfg.model_name, int(planned["model_version"]))
             if prepared["shards"] else None)
    scored = [score_shard(cfg, store, s, model) for s in prepared["shards"]]
    result = commit(cfg, store, planned, prepared, scored, run_id=run_id)
    return {**result, "skipped": planned["skipped"]}


def write_batch(landing: Store, batch: str, files: Mapping[str, bytes]) -> str:
    """Land a batch: write its files, then its ``_SUCCESS`` marker (last). Returns its URI.

    For producers and tests; a producer writing with other tools must write the marker last too.
    """
    batch = validate_batch_id(batch)
    for name, data in files.items():
        landing.write_bytes(validate_key(f"{batch}/{name}"), data)
    landing.write_marker(batch)
    return landing.uri_for(batch)


__all__ = [
    "BatchRejected", "ScoringConfig", "ScoringError", "commit", "commit_batch", "list_batches",
    "output_key", "plan", "prepare", "read_batch", "read_manifest", "read_output",
    "rebuild_summaries", "resolve_model", "score_batches", "score_shard", "scored_batches",
    "write_batch",
]
