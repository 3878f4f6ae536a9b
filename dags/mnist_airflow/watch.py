"""The landing check's glue (mnist_increments_watch): how often it runs, and the land task that
announces new increments as an event of the increments asset, which starts training."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import get_current_context as _context

from mnist_airflow.common import MNIST_INCREMENTS, form_default, log, s3_client_kwargs
from mnist_airflow.schedules import interval_timetable
from mnist_tasks.config import PARAM_SPECS, env_number


def watch_interval(environ: Mapping[str, str] = os.environ) -> Any:
    """How often the landing check runs: MNIST_WATCH_INTERVAL_MINUTES (default 5).

    Raises:
        ValueError: naming the variable, for a value that is not a whole number of minutes
            from 1 to 1440 (the DAG file then fails to import, with this message).
    """
    return interval_timetable(int(env_number(environ, "MNIST_WATCH_INTERVAL_MINUTES")))


def land() -> dict[str, Any]:
    """Announce the increments that landed since the last check, as an event of
    :data:`MNIST_INCREMENTS`; with nothing new the task is skipped, so no event is emitted.

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
    try:
        new = announce_new(source, store, client_kwargs=s3_client_kwargs(),
                           announcer=ctx["run_id"])
    except config.ConfigError as exc:
        log.info("%s; nothing to watch", exc)
        raise AirflowSkipException(f"source {source!r} cannot hold increments") from None
    if not new:
        raise AirflowSkipException(f"no new increments in {source}")
    ctx["outlet_events"][MNIST_INCREMENTS].extra = {"increments": new, "source": source}
    log.info("NEW INCREMENTS in %s: %s (event on asset %s)", source, ", ".join(new),
             MNIST_INCREMENTS.name)
    return {"increments": new, "source": source}

