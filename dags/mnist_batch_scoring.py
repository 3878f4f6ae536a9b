"""
### MNIST batch scoring

Puts the champion to work: scores batches of unlabeled digit images that land under the
landing prefix (`MNIST_SCORING_LANDING`, default `<MNIST_STORE>/landing`; a folder of PNG files
or an IDX images file per batch, read only once its `_SUCCESS` marker exists).

**plan** (pins the model version once: the version in the triggering `mnist_model_registry`
event, else the champion alias; picks the new batches and the most recent
`MNIST_SCORING_RESCORE_WINDOW` ones not yet scored with that version) → **prepare** (decode,
skip and name bad files, stage, cut into shards of `MNIST_SCORING_SHARD_SIZE` images) →
**score** (one mapped task per shard, in parallel) → **commit** (per batch, all or nothing:
`predictions.csv` and `errors.json` in the commit's own folder, then `MANIFEST.json` last,
naming it, under `scoring/<model>/batches/<batch>/v<NNNNNN>/`; no object ever overwritten; a
re-run does nothing; the batch is added to the version's summary, which the Models page reads;
each batch is checked for drift against the version's monitoring reference: OK, WARN or ALARM)
→ **health** (an ALARM becomes an event of the asset `mnist_model_health`; none: skipped).

Schedule: an event of the asset `mnist_model_registry` (the training DAG's register task, or
`python -m mnist_tasks.registry promote|rollback --notify-airflow`), or every
`MNIST_SCORING_INTERVAL_MINUTES` minutes (default 5) for new batches, whichever comes first;
with landing events (`MNIST_LANDING_EVENTS`), an event of `mnist_landed_batches` (the watch
announces each batch whose `_SUCCESS` S3 notifies) instead of the interval.
An interval (or landed batches) run lists only the batch folders after its watermark
(`landing.json`); a registry event's run, and one a day, lists them all.
Nothing to score: the plan is skipped and nothing else runs. See docs/scoring.md.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import dag, task
from mnist_airflow import common, schedules, scoring, watch

EVENTS = watch.events_queue() is not None


@dag(
    dag_id=common.SCORING_DAG_ID,
    # A new champion (promote or rollback), or the interval's landing check (events mode: the
    # watch's announcement of landed batches).
    schedule=scoring.scoring_timetable(),
    description=("Scores landed batches with the champion: on a new champion, or when the "
                 "watch announces landed batches." if EVENTS else
                 "Scores landed batches with the champion: on a new champion, or "
                 f"{schedules.every('MNIST_SCORING_INTERVAL_MINUTES')} for new batches."),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=common.default_args(),
    tags=["mnist", "ml", "scoring"],
    doc_md=__doc__,
)
def mnist_batch_scoring() -> None:
    @task
    def plan() -> dict[str, Any]:
        """Pins the model version and picks the batches to score; nothing to do: skipped."""
        return scoring.score_plan()

    @task
    def prepare(planned: dict[str, Any]) -> list[dict[str, Any]]:
        """Decodes and stages the batches' images, cut into shards, one `score` each."""
        return scoring.score_prepare(planned)

    # A mapped task takes neither its docstring (as its description) nor the operator's
    # arguments in default_args (show_return_value_in_logs): given here.
    @task(execution_timeout=timedelta(hours=1), show_return_value_in_logs=False,
          doc_md="Scores one shard of images with the pinned model version.")
    def score(shard: dict[str, Any]) -> dict[str, Any]:
        return scoring.score_shard(shard)

    @task(trigger_rule="none_failed_min_one_success")
    def commit(planned: dict[str, Any]) -> dict[str, Any]:
        """Commits each batch's predictions, manifest last, once every shard is scored."""
        return scoring.score_commit(planned)

    @task(outlets=[common.MODEL_HEALTH])
    def health(committed: dict[str, Any]) -> dict[str, Any]:
        """Turns a batch's drift ALARM into an event of mnist_model_health; none: skipped."""
        return scoring.health(committed)

    planned = plan()
    committed = commit(planned)
    score.expand(shard=prepare(planned)) >> committed
    health(committed)

mnist_batch_scoring()
