"""The feedback DAG's glue (mnist_feedback): how often landed labels are looked for, and the
task that merges them with the predictions, lands them as increments and raises live-accuracy
alarms."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from airflow.sdk import get_current_context as _context

from mnist_airflow import lineage
from mnist_airflow.common import MODEL_HEALTH, form_default, log, notify, s3_client_kwargs
from mnist_airflow.schedules import interval_timetable
from mnist_airflow.scoring import open_scoring
from mnist_tasks.config import PARAM_SPECS, env_number

# Settings: MNIST_FEEDBACK_LANDING (default <scoring store>/feedback),
# MNIST_FEEDBACK_INTERVAL_MINUTES (default 5). The labelled images land as increments in
# MNIST_SOURCE, where the watch finds them.


def feedback_interval(environ: Mapping[str, str] = os.environ) -> Any:
    """How often landed feedback is looked for: MNIST_FEEDBACK_INTERVAL_MINUTES (default 5).

    Raises:
        ValueError: naming the variable, for a value that is not 1 to 1440 whole minutes.
    """
    return interval_timetable(int(env_number(environ, "MNIST_FEEDBACK_INTERVAL_MINUTES")))


def feedback(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Merge newly landed feedback with the scored batches' predictions, land the labelled
    images as increments in the source, and emit :data:`MODEL_HEALTH` on a live-accuracy
    ALARM; nothing new: skipped."""
    from airflow.sdk.exceptions import AirflowSkipException

    from mnist_tasks import config
    from mnist_tasks import feedback as fb
    from mnist_tasks.storage import open_store

    cfg, store, landing = open_scoring(environ)
    kwargs = s3_client_kwargs()
    feedback_uri = config.feedback_landing(environ, store.uri)
    source_uri = form_default(PARAM_SPECS["source"], environ)
    source = None
    if source_uri != "default" and not source_uri.startswith(("http://", "https://")):
        config.check_store_uri(source_uri)
        source = open_store(source_uri, client_kwargs=kwargs)
    reports = fb.process_pending(
        fb.FeedbackConfig(model_name=cfg.model_name, registry=cfg.registry,
                          source=source_uri if source else None),
        store, open_store(feedback_uri, client_kwargs=kwargs), landing, source=source)
    if not reports:
        raise AirflowSkipException(f"no new feedback under {feedback_uri}")
    lineage.report(reports)
    alarms = [r for r in reports if r.status == "ALARM"]
    result = {"batches": [r.batch for r in reports],
              "increments": [r.increment for r in reports if r.increment],
              "alarms": [{"batch": r.batch, "versions": [
                  {"version": v.version, "accuracy": v.accuracy, "interval": list(v.interval),
                   "benchmark_accuracy": v.benchmark_accuracy}
                  for v in r.versions if v.status == "ALARM"]} for r in alarms]}
    if not alarms:
        # Processed, nothing to raise: the event would say "healthy", which nobody schedules on.
        log.info("feedback: %d batch(es) processed, no alarm", len(reports))
        raise AirflowSkipException("feedback processed; no live-accuracy alarm")
    _context()["outlet_events"][MODEL_HEALTH].extra = {"kind": "live_accuracy", **result}
    message = "LIVE ACCURACY ALARM: " + "; ".join(r.summary_line() for r in alarms)
    notify(_context(), message)
    return result
