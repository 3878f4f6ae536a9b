"""The landing check's glue (mnist_increments_watch): its schedule (an interval, or landing
events from SQS), and the land tasks that announce new increments as an event of the increments
asset, which starts training, and (events mode) new scoring batches as an event of the landed
batches asset, which starts scoring."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import get_current_context as _context

from mnist_airflow.common import (
    LANDED_BATCHES,
    MNIST_INCREMENTS,
    form_default,
    log,
    s3_client_kwargs,
)
from mnist_airflow.schedules import interval_timetable
from mnist_tasks.config import PARAM_SPECS, env_number, landing_events

# The asset the SQS watcher feeds (events mode): each received batch of messages is one event,
# extra {"from_trigger": true, "payload": {"message_batch": [SQS messages]}}.
LANDING_EVENTS = "mnist_landing_events"
# SQS long poll per receive (at most 20), and the pause between empty receives: a marker's
# message is taken within about a second of arriving.
_SQS_WAIT_SECONDS = 10
_SQS_PAUSE_SECONDS = 1


def events_queue(environ: Mapping[str, str] = os.environ) -> str | None:
    """The SQS queue of MNIST_LANDING_EVENTS, None when the watch and scoring poll.

    Raises:
        ValueError: naming the variable, for a value that is not ``sqs:<queue URL>`` (the DAG
            files then fail to import, with this message).
    """
    return landing_events(environ)


def landing_asset(queue: str) -> Any:
    """The asset that an ``AssetWatcher`` in the triggerer feeds from the SQS ``queue``."""
    from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
    from airflow.sdk import Asset, AssetWatcher

    region = queue.split(".")[1] if queue.startswith("https://sqs.") else None
    # The provider's SQS trigger (SqsSensorTrigger, aiobotocore) on the triggerer's standard
    # AWS configuration: no Airflow connection, the region from the queue URL.
    trigger = MessageQueueTrigger(scheme="sqs", sqs_queue=queue, aws_conn_id=None,
                                  region_name=region, max_messages=10,
                                  wait_time_seconds=_SQS_WAIT_SECONDS,
                                  waiter_delay=_SQS_PAUSE_SECONDS)
    return Asset(name=LANDING_EVENTS, uri="mnist://landing/events",
                 watchers=[AssetWatcher(name="mnist_landing_sqs", trigger=trigger)])


def watch_schedule(environ: Mapping[str, str] = os.environ) -> Any:
    """The watch's schedule: the landing asset in events mode (MNIST_LANDING_EVENTS), else
    every MNIST_WATCH_INTERVAL_MINUTES (default 5).

    Raises:
        ValueError: naming the variable, for a bad MNIST_LANDING_EVENTS or a minutes value that
            is not a whole number from 1 to 1440 (the DAG file then fails to import).
    """
    queue = events_queue(environ)
    if queue is not None:
        return [landing_asset(queue)]
    return interval_timetable(int(env_number(environ, "MNIST_WATCH_INTERVAL_MINUTES")))


def _event_bodies(ctx: Mapping[str, Any]) -> list[str] | None:
    """The SQS message bodies of the landing events that triggered this run; None when no
    landing event did (a manual run)."""
    bodies: list[str] | None = None
    for asset, events in (ctx.get("triggering_asset_events") or {}).items():
        if getattr(asset, "name", None) != LANDING_EVENTS:
            continue
        bodies = bodies or []
        for event in events:
            payload = (getattr(event, "extra", None) or {}).get("payload") or {}
            for message in payload.get("message_batch") or ():
                body = message.get("Body") if isinstance(message, dict) else None
                if isinstance(body, str):
                    bodies.append(body)
    return bodies


def _landed(ctx: Mapping[str, Any], source: str | None, landing: str | None) -> Any:
    """What the triggering landing events name (a ``Landed``), what else they hold logged;
    None when no landing event started the run (a manual run: the land task then lists)."""
    from mnist_tasks.landing_events import parse_markers, route

    bodies = _event_bodies(ctx)
    if bodies is None:
        return None
    markers, left_out = parse_markers(bodies)
    landed = route(markers, source=source, landing=landing)
    for line in [*left_out, *landed.ignored]:
        log.info("landing event ignored: %s", line)
    return landed


def land() -> dict[str, Any]:
    """Announce the increments that landed since the last check, as an event of
    :data:`MNIST_INCREMENTS`; with nothing new the task is skipped, so no event is emitted.

    Polling (or a manual run): every complete increment of the source. Events mode: only those
    the triggering landing events name (one named but incomplete or invalid is logged, by
    name, and dropped).
    Source and store are the deployment's (MNIST_SOURCE, MNIST_STORE, the S3 connection): what
    a run of the training DAG that the event starts reads. A source that cannot hold increments
    (the https mirrors, ``default``) has nothing to watch: logged, skipped.

    Raises:
        AirflowSkipException: nothing new, or a source without increments.
        AirflowFailException: for a store URI a run would refuse too (no retry).
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from mnist_tasks import config
    from mnist_tasks.watch import announce_new

    ctx = _context()
    source = form_default(PARAM_SPECS["source"])
    store = form_default(PARAM_SPECS["store"])
    try:
        config.check_store_uri(store)
    except config.ConfigError as exc:
        raise AirflowFailException(f"MNIST_STORE: {exc}") from None
    only: tuple[str, ...] | None = None
    if events_queue() is not None:
        landed = _landed(ctx, source, None)
        if landed is not None:
            only = landed.increments
            if not only:
                raise AirflowSkipException("the landing events name no increment of "
                                           f"{source}")
    try:
        new = announce_new(source, store, client_kwargs=s3_client_kwargs(),
                           announcer=ctx["run_id"], only=only)
    except config.ConfigError as exc:
        log.info("%s; nothing to watch", exc)
        raise AirflowSkipException(f"source {source!r} cannot hold increments") from None
    if not new:
        raise AirflowSkipException(f"no new increments in {source}")
    ctx["outlet_events"][MNIST_INCREMENTS].extra = {"increments": new, "source": source}
    log.info("NEW INCREMENTS in %s: %s (event on asset %s)", source, ", ".join(new),
             MNIST_INCREMENTS.name)
    return {"increments": new, "source": source}


def land_batches() -> dict[str, Any]:
    """Events mode: announce the scoring batches that the triggering landing events name, once
    each, as an event of :data:`LANDED_BATCHES` (which starts scoring); none new: skipped.

    Raises:
        AirflowSkipException: no batch named, or all announced before.
        AirflowFailException: for a bad scoring setting (no retry).
    """
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_airflow.scoring import open_scoring
    from mnist_tasks.watch import announce_batches

    ctx = _context()
    cfg, store, _ = open_scoring()
    landed = _landed(ctx, None, cfg.landing)
    if landed is None or not landed.batches:
        raise AirflowSkipException(f"the landing events name no batch under {cfg.landing}")
    new = announce_batches(cfg.landing, landed.batches, store, announcer=ctx["run_id"])
    if not new:
        raise AirflowSkipException(f"no new batch under {cfg.landing}: "
                                   f"{', '.join(landed.batches)} announced before")
    ctx["outlet_events"][LANDED_BATCHES].extra = {"batches": new, "landing": cfg.landing}
    log.info("NEW BATCHES under %s: %s (event on asset %s)", cfg.landing, ", ".join(new),
             LANDED_BATCHES.name)
    return {"batches": new, "landing": cfg.landing}
