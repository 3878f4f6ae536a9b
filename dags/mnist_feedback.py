"""
### MNIST feedback: labels that come back

Every `MNIST_FEEDBACK_INTERVAL_MINUTES` minutes (default 5) one task, **feedback**, looks for
feedback landed under `MNIST_FEEDBACK_LANDING` (default `<store>/feedback`): per scored batch, a
folder of CSV files of `image_id,label`, its `_SUCCESS` marker last. It merges the labels with
the predictions of every version that scored the batch (live accuracy with its interval,
per-digit recall), raises an **ALARM** when a version is significantly below its benchmark
accuracy (an event of the asset `mnist_model_health`, and the notifier), and lands the labelled
images as a training increment in the source (`MNIST_SOURCE`), where `mnist_increments_watch`
finds it and starts `mnist_training`. Nothing new: skipped. See docs/monitoring.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task
from mnist_airflow import common, schedules
from mnist_airflow import feedback as feedback_glue  # `feedback` is the task below


@dag(
    dag_id=common.FEEDBACK_DAG_ID,
    schedule=feedback_glue.feedback_interval(),
    description="Merges labels that come back "
                f"{schedules.every('MNIST_FEEDBACK_INTERVAL_MINUTES')}: live accuracy, alarms, "
                "new increments.",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=common.default_args(),
    tags=["mnist", "ml", "monitoring"],
    doc_md=__doc__,
)
def mnist_feedback() -> None:
    @task(outlets=[common.MODEL_HEALTH], execution_timeout=timedelta(minutes=30))
    def feedback() -> dict[str, Any]:
        """Merges landed labels with the predictions; an ALARM is an event of mnist_model_health."""
        return feedback_glue.feedback()

    feedback()


mnist_feedback()
