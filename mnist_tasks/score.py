"""Score: put the champion to work on batches of unlabeled images that land under the landing
prefix (:mod:`mnist_tasks.scoring_batches`), in four steps an orchestrator runs as separate
tasks (the ``mnist_batch_scoring`` DAG maps one per shard), each taking the previous one's
typed result (:mod:`mnist_tasks.results`)::

    planned = plan(cfg, store, landing, run_key)       # ScorePlan: the version pinned, recorded
    prepared = prepare(cfg, store, landing, planned)   # ScorePrepared: staged, cut into shards
    scored = [score_shard(cfg, store, s) for s in prepared.shards]   # ShardScored each
    committed = commit(cfg, store, planned, prepared, scored)        # ScoreCommit

:func:`score_batches` runs the four in one process (``python -m mnist_tasks score``). Each
output is one folder per (batch, version): the files in the commit's own folder, the manifest
last (readers: :mod:`mnist_tasks.scoring_outputs`). Design and guarantees: docs/scoring.md.
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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mnist_tasks.artifacts import (
    json_default,
    load_keras_model,
    load_npz,
    read_json,
    save_npz,
    utc_now,
)
from mnist_tasks.config import MonitorPolicy, ScoringConfig
from mnist_tasks.labeling import export_label_queue
from mnist_tasks.monitor import Forward
from mnist_tasks.registries import open_registry
from mnist_tasks.registry_api import CHAMPION, ModelRegistry, RegistryError, parse_version
from mnist_tasks.results import (
    ScoreCommit,
    ScorePlan,
    ScorePrepared,
    ScoreShard,
    ShardScored,
    from_json,
    to_json,
)
from mnist_tasks.scoring_batches import BatchRejected, read_batch, validate_batch_id
from mnist_tasks.scoring_index import (
    MANIFEST,
    REJECTED,
    look_at_landing,
    look_at_named,
    record_scored,
    root,
)
from mnist_tasks.scoring_monitor import batch_health, class_report, log_view
from mnist_tasks.scoring_outputs import (
    COLUMNS,
    ERRORS,
    PREDICTIONS,
    SCHEMA,
    is_committed,
    output_prefix,
)
from mnist_tasks.storage import MARKER, ObjectNotFound, Store

if TYPE_CHECKING:
    import keras
    import numpy as np

log = logging.getLogger(__name__)


class ScoringError(RuntimeError):
    """Scoring cannot go on; the message names the batch, file or model version."""


class NoChampion(ScoringError):
    """No champion to score with (and no registry event names a version)."""


@dataclass(frozen=True)
class PinnedModel:
    """The model version a run scores with (:func:`resolve_model`)."""

    version: int
    uri: str
    resolved_from: Literal["event", "champion"]


@dataclass(frozen=True)
class BatchCommit:
    """One batch's output: its manifest (the JSON document) and whether this commit wrote it
    (False: it was there already, or a concurrent commit's manifest landed first)."""

    manifest: dict[str, Any]
    committed: bool


# --- keys ---------------------------------------------------------------------------------------


def _root(cfg: ScoringConfig) -> str:
    return root(cfg.model_name)


def _staging(cfg: ScoringConfig, run_key: str, batch: str, version: int) -> str:
    return f"{_root(cfg)}/staging/{run_key}/{batch}/v{version:06d}"


def _plan_key(cfg: ScoringConfig, run_key: str) -> str:
    return f"{_root(cfg)}/runs/{run_key}/plan.json"


# --- 1. plan ------------------------------------------------------------------------------------


def resolve_model(
    registry: ModelRegistry, events: Sequence[Mapping[str, Any]] = ()
) -> PinnedModel:
    """The model version a run scores with, resolved once.

    The newest registry event (its ``extra``) that names a version of *this* registry wins
    (its ``model_uri``, when given, must be inside the registry: an event from another
    deployment's store is ignored, logged); otherwise the champion alias.

    Raises:
        NoChampion: if there is no champion (and no usable event).
        ScoringError: if the event's version is not a complete version of the registry.
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
            return PinnedModel(version, registry.model_uri(version), "event")
        except RegistryError as exc:
            raise ScoringError(f"the registry event names version {extra['version']!r}: "
                               f"{exc}") from None
    champion = registry.get_alias(CHAMPION)
    if champion is None:
        raise NoChampion(f"no champion in {registry.uri}: nothing to score with (register "
                         "and promote a model first)")
    return PinnedModel(champion, registry.model_uri(champion), "champion")


def plan(
    cfg: ScoringConfig,
    store: Store,
    landing: Store,
    run_key: str,
    events: Sequence[Mapping[str, Any]] = (),
    *,
    batches: Sequence[str] | None = None,
) -> ScorePlan:
    """Pin the model version and choose the batches of this run; recorded, so a retry of the
    run's plan returns the same (the version is never re-resolved mid-run).

    Without ``batches``, the landing is looked at through its record
    (:func:`mnist_tasks.scoring_index.look_at_landing`): only the folders not decided yet and
    the re-score window, so a landing check with nothing new costs the same however many
    batches were scored before; a run started by a registry event lists every folder instead.

    Args:
        events: the ``extra`` of the registry events that triggered the run, oldest first.
        batches: score exactly these (complete) batches instead of choosing.

    Raises:
        NoChampion: no champion (and no event names a version).
        ScoringError: a named batch that is not complete.
    """
    key = _plan_key(cfg, run_key)
    try:
        recorded = from_json(ScorePlan, read_json(store, key))
        log.info("score: run %s already planned (v%d, %d batch(es)); reusing it", run_key,
                 recorded.model_version, len(recorded.batches))
        return recorded
    except ObjectNotFound:
        pass
    model = resolve_model(open_registry(store, cfg.model_name, cfg.registry), events)
    version = model.version
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
    result = ScorePlan(model_version=version, model_uri=model.uri,
                       resolved_from=model.resolved_from, batches=tuple(chosen),
                       skipped=skipped, run_key=run_key, planned_at=utc_now())
    # Created only if absent: two tries of one run racing each other share the first plan.
    if not store.write_if_absent(key, json.dumps(to_json(result), indent=2).encode()):
        log.info("score: run %s was planned concurrently; using that plan", run_key)
        return from_json(ScorePlan, read_json(store, key))
    log.info("score: run %s scores %d batch(es) with %s v%d (from the %s): %s", run_key,
             len(chosen), cfg.model_name, version, model.resolved_from,
             ", ".join(chosen) or "none")
    return result


# --- 2. prepare ---------------------------------------------------------------------------------


def prepare(cfg: ScoringConfig, store: Store, landing: Store, planned: ScorePlan
            ) -> ScorePrepared:
    """Decode every planned batch, stage its images, and cut it into shards (what the mapped
    scoring task takes, one each).

    A batch whose every file is bad is recorded as rejected (``REJECTED.json`` beside its
    outputs, so later runs do not read it again) and left out; the others go on.
    """
    version, run_key = planned.model_version, planned.run_key
    shards: list[ScoreShard] = []
    staged: list[str] = []
    rejected: dict[str, str] = {}
    for batch in planned.batches:
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

            n = len(read.ids)
            save_npz(store, f"{staging}/images.npz", {"images": read.images,
                                                      "ids": np.asarray(read.ids)})
            info = {"batch": batch, "version": version, "images": n, "ids_count": n,
                    "errors": read.errors, "input_sha256": read.input_sha256,
                    "files": read.files, "decode_s": round(read.decode_s, 3),
                    "shards": max(1, math.ceil(n / cfg.shard_size)),
                    "landing_uri": landing.uri_for(batch)}
            store.write_bytes(f"{staging}/batch.json", json.dumps(info, indent=2).encode())
            log.info("score: batch %s: %d image(s) from %d file(s), %d skipped, %d shard(s), "
                     "decoded in %.2f s", batch, n, read.files, len(read.errors),
                     info["shards"], read.decode_s)
        staged.append(batch)
        n = int(info["images"])
        for i in range(int(info["shards"])):
            shards.append(ScoreShard(batch=batch, version=version, staging=staging, index=i,
                                     start=i * cfg.shard_size,
                                     stop=min(n, (i + 1) * cfg.shard_size),
                                     model_uri=planned.model_uri))
    return ScorePrepared(shards=tuple(shards), batches=tuple(staged), rejected=rejected)


def prepared_state(cfg: ScoringConfig, store: Store, planned: ScorePlan) -> ScorePrepared:
    """What :func:`prepare` did for a run, read back from the store (for a commit in another
    process): the batches staged and those rejected (``shards`` is left empty).

    Raises:
        ScoringError: naming a planned batch that was neither staged nor rejected.
    """
    version, run_key = planned.model_version, planned.run_key
    staged, rejected = [], {}
    for batch in planned.batches:
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
    return ScorePrepared(shards=(), batches=tuple(staged), rejected=rejected)


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


def load_version(store: Store, cfg: ScoringConfig, version: int) -> keras.Model:
    """The registered model of ``version``, downloaded and SHA-256-verified, in safe mode."""
    registry = open_registry(store, cfg.model_name, cfg.registry)
    with tempfile.TemporaryDirectory(prefix="mnist-score-") as tmp:
        return load_keras_model(registry.fetch_model(version, tmp))


def score_shard(cfg: ScoringConfig, store: Store, shard: ScoreShard,
                model: keras.Model | None = None) -> ShardScored:
    """Predict one shard with the pinned version and stage the result (idempotent: a shard
    already staged is not scored again)."""
    staging, index = shard.staging, shard.index
    out = f"{staging}/shard-{index:05d}.npz"
    if store.exists(out):
        log.info("score: %s shard %d already scored; reusing it", shard.batch, index)
        return ShardScored(shard.batch, index, shard.stop - shard.start, 0.0)
    images = load_npz(store, f"{staging}/images.npz", ("images",))["images"]
    part = images[shard.start:shard.stop]
    if model is None:
        model = load_version(store, cfg, shard.version)
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
    log.info("score: batch %s shard %d: %d image(s) in %.2f s (%.0f images/s) with v%d",
             shard.batch, index, len(part), score_s, len(part) / max(score_s, 1e-9),
             shard.version)
    return ShardScored(shard.batch, index, len(part), round(score_s, 4))


# --- 4. commit ----------------------------------------------------------------------------------


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
                 hook: Callable[[str], None] | None = None) -> BatchCommit:
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
        return BatchCommit(dict(existing), committed=False)
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
    embeddings = (np.concatenate([p["embeddings"] for p in parts])
                  if all("embeddings" in p for p in parts) else None)
    health = batch_health(store, cfg, batch, version, merged["predicted"],
                          merged["probability"], embeddings, staged["images"])
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
        "report": to_json(report),
        "monitor": health.to_dict() if health is not None else None,
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
        return BatchCommit(dict(winner), committed=False)
    _delete_unnamed(store, prefix, commit_id)
    if summarize:
        record_scored(store, [manifest])
    log_view(cfg, manifest)
    export_label_queue(cfg, store, batch, version, ids, staged["images"], merged)
    return BatchCommit(manifest, committed=True)


def _delete_unnamed(store: Store, prefix: str, commit_id: str) -> None:
    """Delete what earlier tries of this output left (files of commits that stopped before
    their manifest): the manifest now names ``commit_id``, so nothing will read them. A
    concurrent commit still writing loses at its manifest and deletes its own anyway."""
    for key in store.list(prefix):
        rel = key[len(prefix) + 1:]
        if rel != MANIFEST and not rel.startswith(f"{commit_id}/"):
            log.info("score: deleting %s (a commit that did not finish)", store.uri_for(key))
            store.delete(key)


def commit(cfg: ScoringConfig, store: Store, planned: ScorePlan,
           prepared: ScorePrepared | None = None, scored: Iterable[ShardScored] = (),
           run_id: str | None = None) -> ScoreCommit:
    """Commit every staged batch of the run, then clear the run's staging area.

    Args:
        prepared: :func:`prepare`'s result; None reads it back (:func:`prepared_state`).
        scored: the shards' results, for the batches' predict times (none: each shard's own
            time, staged with it).

    Raises:
        BatchRejected: after committing the others, naming each batch whose every file was bad.
        ScoringError: if a shard is missing.
    """
    version, run_key = planned.model_version, planned.run_key
    if prepared is None:
        prepared = prepared_state(cfg, store, planned)
    score_s: dict[str, float] = {}
    for s in scored:
        score_s[s.batch] = score_s.get(s.batch, 0.0) + s.score_s
    committed: list[str] = []
    unchanged: list[str] = []
    outputs: dict[str, str] = {}
    inputs: dict[str, str] = {}
    manifests: list[dict[str, Any]] = []
    images = 0
    try:
        for batch in prepared.batches:
            staging = _staging(cfg, run_key, batch, version)
            result = commit_batch(cfg, store, batch, version, staging, run_id=run_id,
                                  run_key=run_key, score_s=score_s.get(batch), summarize=False)
            (committed if result.committed else unchanged).append(batch)
            images += int(result.manifest["counts"]["images"])
            outputs[batch] = store.uri_for(output_prefix(cfg, batch, version))
            if result.manifest.get("input_uri"):
                inputs[batch] = str(result.manifest["input_uri"])
            manifests.append(result.manifest)
    finally:
        # One summary update for the batches committed, also when a later one fails (a
        # retry that finds a batch committed adds it again: rows are added once).
        record_scored(store, manifests)
    for key in store.list(f"{_root(cfg)}/staging/{run_key}"):
        store.delete(key)
    if prepared.rejected:
        raise BatchRejected("; ".join(prepared.rejected.values()))
    return ScoreCommit(model_version=version, committed=tuple(committed),
                       unchanged=tuple(unchanged), rejected=dict(prepared.rejected),
                       skipped=dict(planned.skipped), images=images, outputs=outputs,
                       inputs=inputs, model_uri=planned.model_uri)


# --- all steps in one process -------------------------------------------------------------------


def score_batches(cfg: ScoringConfig, store: Store, landing: Store, run_key: str, *,
                  batches: Sequence[str] | None = None, events: Sequence[Mapping[str, Any]] = (),
                  run_id: str | None = None) -> ScoreCommit:
    """Plan, prepare, score every shard and commit, in this process (the CLI's ``score``);
    with nothing to score, ``committed`` is empty."""
    planned = plan(cfg, store, landing, run_key, events=events, batches=batches)
    if not planned.batches:
        return ScoreCommit(model_version=planned.model_version, committed=(), unchanged=(),
                           rejected={}, skipped=dict(planned.skipped), images=0, outputs={})
    prepared = prepare(cfg, store, landing, planned)
    model = (load_version(store, cfg, planned.model_version)
             if prepared.shards else None)
    scored = [score_shard(cfg, store, s, model) for s in prepared.shards]
    return commit(cfg, store, planned, prepared, scored, run_id=run_id)


__all__ = [
    "BatchCommit", "BatchRejected", "NoChampion", "PinnedModel", "ScoringConfig",
    "ScoringError", "commit", "commit_batch", "plan", "prepare", "resolve_model", "score_batches",
    "score_shard",
]
