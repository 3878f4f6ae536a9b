"""Alert callbacks that Airflow calls by import path; plain Python, no Airflow import.

``deadline_missed`` is the DAG's deadline callback: Airflow's triggerer awaits it when a run
takes far longer than its recent average.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


async def deadline_missed(dag_id: str = "mnist_training", **context: Any) -> None:
    """Log a clear alert that a run of ``dag_id`` is running far longer than usual."""
    run_id = getattr(context.get("dag_run"), "run_id", None)
    log.warning(
        "ALERT %s run %s missed its deadline: it is running more than an hour longer than the "
        "average of its recent runs. Check the train task's log for the ETA and the worker.",
        dag_id, run_id or "(unknown)",
    )
