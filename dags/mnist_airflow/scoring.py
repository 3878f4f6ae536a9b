"""Batch scoring's glue (mnist_batch_scoring): its schedule (a registry event or the interval),
its settings and stores, and the plan, prepare, score, commit and health task bodies."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context as _context

from mnist_airflow.common import (
    LANDED_BATCHES,
    MODEL_HEALTH,
    MODEL_REGISTRY,
    form_default,
    log,
    notify,
    s3_client_kwargs,
)
from mnist_airflow.stages import run_stage, typed
from mnist_tasks import results
from mnist_tasks.config import PARAM_SPECS, env_number, landing_events

# Settings: MNIST_SCORING_STORE (default MNIST_STORE: the registry read and the outputs written),
# MNIST_SCORING_LANDING (default <store>/landing), MNIST_SCORING_INTERVAL_MINUTES (how often new
# batches are looked for; default 5), and the MNIST_SCORING_* knobs
# (all declared and parsed in mnist_tasks.config.environment).


def scoring_timetable(environ: Mapping[str, str] = os.environ) -> Any:
    """The scoring DAG's schedule: an event of the registry asset (a new champion, or a
    rollback posted by the registry CLI) or every MNIST_SCORING_INTERVAL_MINUTES (default 5; the
    landing check for new batches), whichever comes first. In events mode
    (MNIST_LANDING_EVENTS), an event of the registry asset or of the landed batches asset (the
    watch announces each batch that S3 notifies), and no interval: nothing polls.

    Raises:
        ValueError: naming the variable, for a bad MNIST_LANDING_EVENTS, or a minutes value
            that is not 1 to 1440 whole minutes.
    """
    from airflow.sdk import AssetOrTimeSchedule, DeltaTriggerTimetable

    if landing_events(environ) is not None:
        return MODEL_REGISTRY | LANDED_BATCHES
    minutes = env_number(environ, "MNIST_SCORING_INTERVAL_MINUTES")
    return AssetOrTimeSchedule(timetable=DeltaTriggerTimetable(timedelta(minutes=minutes)),
                               assets=[MODEL_REGISTRY])


def open_scoring(environ: Mapping[str, str] = os.environ) -> tuple[Any, Any, Any]:
    """The scoring config, the store and the landing store (S3 from the Airflow connection).

    Raises:
        AirflowFailException: for a bad setting (no retry), naming the variable.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks import config
    from mnist_tasks.storage import open_store

    store_uri = environ.get("MNIST_SCORING_STORE", "").strip() or form_default(
        PARAM_SPECS["store"], environ)
    try:
        config.check_store_uri(store_uri)
        cfg = config.scoring_config(environ, store_uri)
        config.check_store_uri(cfg.landing)
    except ValueError as exc:
        raise AirflowFailException(f"scoring settings: {exc}") from None
    kwargs = s3_client_kwargs()
    return (cfg, open_store(store_uri, client_kwargs=kwargs),
            open_store(cfg.landing, client_kwargs=kwargs))


def _registry_events(ctx: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The extras of the registry asset's events that triggered this run, oldest first."""
    events: list[Any] = []
    for asset, evs in (ctx.get("triggering_asset_events") or {}).items():
        if getattr(asset, "name", None) == MODEL_REGISTRY.name or \
                getattr(asset, "uri", None) == MODEL_REGISTRY.uri:
            events.extend(evs)
    events.sort(key=lambda e: str(getattr(e, "timestamp", "")))
    return [dict(getattr(e, "extra", None) or {}) for e in events]


def score_plan() -> dict[str, Any]:
    """Pin the model version for the run (the registry event's, else the champion) and pick
    the batches; nothing to score (or no champion yet): skipped, so nothing else runs."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_tasks import config, score

    ctx = _context()
    cfg, store, landing = open_scoring()
    events = _registry_events(ctx)
    try:
        xcom = run_stage("plan", score.plan, cfg, store, landing, config.run_key(ctx["run_id"]),
                         events)
    except score.NoChampion as exc:
        raise AirflowSkipException(str(exc)) from None
    planned = results.from_json(results.ScorePlan, xcom)
    log.info("MODEL VERSION %s v%d pinned for this run (from the %s%s)", cfg.model_name,
             planned.model_version, planned.resolved_from,
             f"; {len(events)} registry event(s)" if events else "")
    if not planned.batches:
        raise AirflowSkipException("nothing to score: no new batch, and the recent ones are "
                                   f"scored with v{planned.model_version}")
    return xcom


def score_prepare(planned: dict[str, Any]) -> list[dict[str, Any]]:
    """Decode and stage the planned batches; the shards, one per mapped scoring task."""
    from mnist_tasks import score

    cfg, store, landing = open_scoring()
    prepared = run_stage("prepare", score.prepare, cfg, store, landing,
                         typed("prepare", planned))
    return list(prepared["shards"])


def score_shard(shard: dict[str, Any]) -> dict[str, Any]:
    """Score one shard with the pinned version."""
    from mnist_tasks import score

    cfg, store, _ = open_scoring()
    return run_stage("score", score.score_shard, cfg, store, typed("score", shard))


def score_commit(planned: dict[str, Any]) -> dict[str, Any]:
    """Commit every staged batch, all or nothing per batch (the manifest last); a batch whose
    every file is bad fails the task after the others are committed (no retry)."""
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks import score

    cfg, store, _ = open_scoring()
    try:
        # What prepare staged and the shards' results are read from the store, not XCom: the
        # mapped task has no XCom when there were no shards (every batch rejected).
        return run_stage("commit", score.commit, cfg, store, typed("commit", planned),
                         None, (), _context()["run_id"])
    except score.BatchRejected as exc:
        raise AirflowFailException(str(exc)) from None


def health(committed: dict[str, Any]) -> dict[str, Any]:
    """The scoring run's drift ALARMs as an event of :data:`MODEL_HEALTH`; none: skipped."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_tasks.scoring_monitor import drift_alarms

    cfg, store, _ = open_scoring()
    run = typed("health", committed)
    alarms = drift_alarms(store, cfg, run)
    if not alarms:
        raise AirflowSkipException("no drift alarm in this run's batches")
    extra = {"kind": "drift", "model_version": run.model_version,
             "alarms": [results.to_json(a) for a in alarms]}
    _context()["outlet_events"][MODEL_HEALTH].extra = extra
    message = (f"DRIFT ALARM on {len(alarms)} batch(es) scored with {cfg.model_name} "
               f"v{run.model_version}: " + "; ".join(f"{a.batch} ({', '.join(a.fired)})"
                                                     for a in alarms))
    notify(_context(), message)
    return extra

