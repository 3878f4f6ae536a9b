"""The training DAG's own glue: its schedule (weekly or new increments) and deadline alert, and
the task bodies that need Airflow's context: the candidates train maps over, train's progress
note in the task state store, the check and gate short-circuits, register's asset event."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference
from airflow.sdk import get_current_context as _context

from mnist_airflow.common import (
    DAG_ID,
    MNIST_INCREMENTS,
    MODEL_REGISTRY,
    log,
    notify,
    pipeline,
    pipeline_config,
)
from mnist_airflow.stages import run_stage, typed

if TYPE_CHECKING:
    from mnist_tasks.pipeline import Pipeline

# Where the train task runs: `gpu` / `gpu` on a deployment with a GPU worker.
TRAIN_POOL = os.environ.get("MNIST_TRAIN_POOL", "default_pool")
TRAIN_QUEUE = os.environ.get("MNIST_TRAIN_QUEUE", "default")

# The train task's key in Airflow's task state store (shared by its retries): the last
# checkpointed epoch, for the log of a retry and a cross-check of the resume.
TRAIN_PROGRESS_KEY = "train_progress"


def training_timetable(environ: Mapping[str, str] = os.environ) -> Any:
    """The training DAG's schedule: the time part from MNIST_TRAINING_SCHEDULE (a cron
    expression or preset, default ``@weekly``, UTC; ``off``: data-triggered only), or a new
    increment, whichever comes first.

    Raises:
        ValueError: naming the variable, for a cron expression Airflow cannot parse.
    """
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    text = _training_cron(environ)
    if text is None:
        return [MNIST_INCREMENTS]
    timetable = CronTriggerTimetable(text, timezone="UTC")
    return AssetOrTimeSchedule(timetable=timetable, assets=[MNIST_INCREMENTS])


def _training_cron(environ: Mapping[str, str]) -> str | None:
    """MNIST_TRAINING_SCHEDULE, checked; None for ``off``."""
    text = environ.get("MNIST_TRAINING_SCHEDULE", "").strip() or "@weekly"
    if text.lower() in ("off", "none"):
        return None
    from croniter import croniter  # Airflow's own cron parser

    if not croniter.is_valid(text):
        raise ValueError(f"MNIST_TRAINING_SCHEDULE={text!r}: not a cron expression; "
                         "use e.g. '@weekly', '0 3 * * 1' or 'off'")
    return text


def training_schedule_text(environ: Mapping[str, str] = os.environ) -> str:
    """The training schedule in words, for the DAG's description: Airflow's UI shows only the
    asset of an asset-or-time schedule, so the time part would appear nowhere else."""
    from airflow.timetables.trigger import CronTriggerTimetable

    text = _training_cron(environ)
    if text is None:
        return f"when new labeled increments land (asset {MNIST_INCREMENTS.name})"
    words = CronTriggerTimetable(text, timezone="UTC").description
    when = "Weekly" if text == "@weekly" else "On a schedule"
    return (f"{when} ({words}, UTC) or when new labeled increments land (asset "
            f"{MNIST_INCREMENTS.name}), whichever comes first")


def deadline_alert(environ: Mapping[str, str] = os.environ) -> DeadlineAlert | None:
    """Alert when a run takes MNIST_DEADLINE_MARGIN_MINUTES (default 60) longer than its recent
    average; ``off`` disables it (``airflow dags test`` on 3.3.2 needs that: apache/airflow#73428).

    Raises:
        ValueError: naming the variable, for a value that is not a positive number or ``off``.
    """
    margin = environ.get("MNIST_DEADLINE_MARGIN_MINUTES", "60")
    if margin.strip().lower() in ("", "0", "off", "none"):
        return None
    try:
        minutes = float(margin)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(
            f"MNIST_DEADLINE_MARGIN_MINUTES={margin!r}: expected a positive number of "
            "minutes, or 'off'"
        )
    return DeadlineAlert(
        reference=DeadlineReference.AVERAGE_RUNTIME(max_runs=10, min_runs=3),
        interval=timedelta(minutes=minutes),
        callback=AsyncCallback("mnist_tasks.alerts.deadline_missed", kwargs={"dag_id": DAG_ID}),
    )


def candidates(checked: dict[str, Any]) -> list[int]:
    """The indexes of the run's candidates, what the train task maps over (one mapped
    instance each); logs the list."""
    cands = pipeline_config(_context()["params"]).candidate_list
    for cand in cands:
        log.info("candidate %d: %s", cand.index, cand.label)
    return [cand.index for cand in cands]


def train(prepared: dict[str, Any], candidate: int | None = None) -> dict[str, Any]:
    """Train (one candidate: ``candidate``, its index; one mapped instance each), noting each
    checkpoint in the task state store, which retries share (per mapped instance): a retry
    resumes from the store's checkpoint and checks it against that note.

    A failure is noted in the store for select, naming the candidate and why; a parameter that
    turns out invalid only now (a batch larger than the training set) fails without retries.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.config import ConfigError
    from mnist_tasks.select import record_failure

    pipe = pipeline()
    cand = pipe.cfg.candidate_list[candidate or 0]
    try:
        return _train(pipe, prepared, candidate)
    except ConfigError as exc:
        record_failure(pipe.store, pipe.run_key, cand, exc, _context()["ti"].try_number)
        raise AirflowFailException(f"candidate {cand.index} ({cand.label}): {exc}") from None
    except Exception as exc:
        record_failure(pipe.store, pipe.run_key, cand, exc, _context()["ti"].try_number)
        raise


def select(trained: Any) -> dict[str, Any]:
    """Pick the best candidate by validation accuracy, of the mapped train instances that
    succeeded (this task runs when all are done, failed ones included: ``all_done``).

    Raises:
        AirflowFailException: (no retry) fewer than ``min_candidates`` trained.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from mnist_tasks.select import SelectionError

    # A slice is one request for every instance's result; iterating would fetch one at a time
    # until Airflow's client logs a 404 (as an ERROR line) past the last one.
    done = [typed("select", r) for r in (trained[:] if trained else []) if r]
    try:
        return run_stage("select", pipeline().select, done)
    except SelectionError as exc:
        raise AirflowFailException(str(exc)) from None


def _train(pipe: Pipeline, prepared: dict[str, Any], candidate: int | None) -> dict[str, Any]:
    ctx = _context()
    state = ctx.get("task_state_store")
    previous = state.get(TRAIN_PROGRESS_KEY) if state is not None else None
    previous = previous if isinstance(previous, dict) else None
    if previous:
        log.info("try %s: the previous try checkpointed epoch %s of %s at %s (%s)",
                 ctx["ti"].try_number, previous.get("epoch"), previous.get("epochs"),
                 previous.get("saved_at"), previous.get("checkpoint_uri"))
    note = functools.partial(state.set, TRAIN_PROGRESS_KEY) if state is not None else None
    fn = functools.partial(pipe.train, on_checkpoint=note, previous=previous,
                           candidate=candidate)
    return run_stage("train", fn, typed("train", prepared))


def check(ingested: dict[str, Any]) -> dict[str, Any] | bool:
    """The check's result when there is something to train on; on UNCHANGED, return False (the
    short-circuit skips every later task: no training, no version, no asset event). Warnings
    (a champion that does worse on fresh data) go to the notifier."""
    result = run_stage("check", pipeline().check, typed("check", ingested))
    ctx = _context()
    for warning in result["warnings"]:
        notify(ctx, f"WARNING {ctx['dag'].dag_id} run {ctx['run_id']}: {warning}",
               logging.WARNING)
    if result["decision"] == "UNCHANGED":
        return False
    return result


def gate(evaluation: dict[str, Any]) -> dict[str, Any] | bool:
    """The gate's decision when it is PROMOTE; on REJECT, notify and return False (the
    short-circuit skips approve and register), unless the run's approval mode (``always``)
    sends a REJECT to a person, who may override it: then the decision goes on to approve."""
    from mnist_tasks import approve

    pipe = pipeline()
    decision = run_stage("gate", pipe.gate, typed("gate", evaluation))
    if decision["decision"] == "PROMOTE":
        return decision
    ctx = _context()
    to_person = approve.asks_on_reject(pipe.cfg.approval.mode)
    notify(
        ctx,
        f"ALERT {ctx['dag'].dag_id} run {ctx['run_id']}: gate REJECTED the model "
        f"(test accuracy {decision['challenger']['accuracy']:.4f}): "
        + "; ".join(decision["reasons"])
        + ("; a person may override it (approval 'always')" if to_person else ""),
    )
    return decision if to_person else False


def register(decision: dict[str, Any]) -> dict[str, Any]:
    """Register the promoted model; the registry asset's event says which version and how good."""
    result = run_stage("register", pipeline().register, typed("register", decision))
    _context()["outlet_events"][MODEL_REGISTRY].extra = {
        k: result[k] for k in ("version", "test_accuracy", "model_uri")
    }
    return result

