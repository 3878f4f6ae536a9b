"""
### MNIST increments watch

The landing check. Polling (the default): every `MNIST_WATCH_INTERVAL_MINUTES` minutes
(default 5) one cheap task, **land**, lists `<source>/increments/` (the deployment's
`MNIST_SOURCE`) and compares the complete increments (those with their `_SUCCESS` marker) with
the ones it announced before (`watch/<source key>/announced.json` in `MNIST_STORE`). New ones
become an event of the asset `mnist_increments`, extra `{"increments": [...], "source": ...}`,
which starts `mnist_training` (scheduled on "weekly, or new increments"). Nothing new: the task
is skipped and no event is emitted. It reads no data and never waits, so it holds a worker slot
for a second or two per check, not between checks.

Landing events (`MNIST_LANDING_EVENTS=sqs:<queue>`): the buckets' `_SUCCESS` notifications
reach the asset `mnist_landing_events` through an asset watcher in the triggerer, and each
event starts a run: **land** announces the increments the messages name, and
**land_batches** the scoring batches (an event of `mnist_landed_batches`, which starts
`mnist_batch_scoring`); both through the same record, so a repeated message starts nothing.
See docs/data.md, "Triggered by data", and docs/deployment.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task
from mnist_airflow import common, schedules, watch

EVENTS = watch.events_queue() is not None


@dag(
    dag_id=common.WATCH_DAG_ID,
    schedule=watch.watch_schedule(),
    description=("Announces the increments and batches that S3 notifies as landed; new ones "
                 "start mnist_training or scoring." if EVENTS else
                 "Looks for new labeled increments "
                 f"{schedules.every('MNIST_WATCH_INTERVAL_MINUTES')}; new ones start "
                 "mnist_training."),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=common.default_args(),
    tags=["mnist", "data", "watch"],
    doc_md=__doc__,
)
def mnist_increments_watch() -> None:
    @task(outlets=[common.MNIST_INCREMENTS], execution_timeout=timedelta(minutes=10))
    def land() -> dict[str, Any]:
        """Announces new complete increments as an event of mnist_increments; none: skipped."""
        return watch.land()

    land()

    if EVENTS:
        @task(outlets=[common.LANDED_BATCHES], execution_timeout=timedelta(minutes=10))
        def land_batches() -> dict[str, Any]:
            """Announces the landed batches the events name, as an event of
            mnist_landed_batches; none new: skipped."""
            return watch.land_batches()

        land_batches()


mnist_increments_watch()
