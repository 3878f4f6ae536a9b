"""
### MNIST increments watch

The landing check: every `MNIST_WATCH_INTERVAL_MINUTES` minutes (default 5) one cheap task,
**land**, lists `<source>/increments/` (the deployment's `MNIST_SOURCE`) and compares the
complete increments (those with their `_SUCCESS` marker) with the ones it announced before
(`watch/<source key>/announced.json` in `MNIST_STORE`). New ones become an event of the asset
`mnist_increments`, extra `{"increments": [...], "source": ...}`, which starts `mnist_training`
(scheduled on "weekly, or new increments"). Nothing new: the task is skipped and no event is
emitted. It reads no data and never waits, so it holds a worker slot for a second or two per
check, not between checks. See docs/data.md, "Triggered by data".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task
from mnist_airflow import common, schedules, watch


@dag(
    dag_id=common.WATCH_DAG_ID,
    schedule=watch.watch_interval(),
    description="Looks for new labeled increments "
                f"{schedules.every('MNIST_WATCH_INTERVAL_MINUTES')}; new ones start "
                "mnist_training.",
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


mnist_increments_watch()
