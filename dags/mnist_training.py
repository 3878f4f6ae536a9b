"""
### MNIST retraining

Retraining of the MNIST digit classifier, **weekly or when new labeled increments land**
(whichever comes first), a chain in which each task takes only the
previous task's result: **ingest** (four IDX files and the labeled increments beside them,
verified, validated, cached, as a dataset version) → **check** (stops the run, UNCHANGED, when
the champion was trained on exactly these inputs; the champion on new increments' held-out
data, before any training) →
**preprocess** (float32 in [0, 1], seeded validation split) → **train** (Keras 3, a preset; one
mapped instance per candidate of the `candidates` param, in parallel on the workers) →
**select** (the best candidate by validation accuracy; a failed one is named, and the run goes
on while `min_candidates` trained) → **evaluate** (metrics, per-digit report, plots) →
**gate** (threshold, champion comparison with McNemar's test, per-digit recall) → **approve**
(a person's approval, per the `approval` param: `off`, `borderline` or `always`; the request
waits under "Required actions") → **register** (an immutable version in the model registry;
champion alias moved). The gate short-circuits approval and registration: a rejected model is
never registered, unless with `approval: always` a person overrides the REJECT, with a written
reason (recorded as an override).

Schedule: `AssetOrTimeSchedule`: every Sunday at 00:00 UTC (`@weekly`; `MNIST_TRAINING_SCHEDULE`
sets another cron, or `off`), and also on each event of
the asset `mnist_increments`, which the `mnist_increments_watch` DAG emits when complete
increments land in the source (`MNIST_SOURCE`); no one needs to touch Airflow for a new
increment to be trained on. **Unpausing** a paused DAG (also the trigger form's "Unpause on
trigger" box, ticked by default) makes the scheduler start the latest weekly run it missed
while paused, at once: Airflow does this even with `catchup=False`, and no built-in timetable
option prevents it (`run_immediately` only concerns the first run of a DAG that never ran). Untick
the box, or expect one scheduled run besides the triggered one.

Trigger it from the UI with the form, or from the CLI:
`airflow dags trigger mnist_training --conf '{"preset": "fast_mlp"}'`; several candidates
(a sweep) with `--conf '{"candidates": [{"seed": [1, 2], "learning_rate": [0.002, 0.005]}]}'`
(docs/candidates.md). A trigger may set only
the form's fields; any other key fails the run at its first task, naming the key. A value out
of its range is refused when you trigger (the form keeps the value as typed and says why),
and the first task checks every value again: `parameter 'epochs' = 0 is invalid: ...`.

Each run's **note** (the grid) says what it did, e.g. `fast_mlp · 2 epochs · PROMOTE v4
(99.12 %)`, `... · REJECT (threshold: ...)` or `UNCHANGED (v3)`: the DAG's success and failure
callback writes it through Airflow's REST API (`MNIST_AIRFLOW_API_URL` and a token or user),
and logs it as `RUN NOTE`. The checksum
policy (`MNIST_CHECKSUMS`), the model name (`MNIST_MODEL_NAME`) and the other deployment settings
are environment variables: see the README's deployment table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import TriggerRule, dag, task
from mnist_airflow import approval, common, notes, stages, training


@dag(
    dag_id=common.DAG_ID,
    # Weekly (MNIST_TRAINING_SCHEDULE), or as soon as the landing check announces increments.
    schedule=training.training_timetable(),
    description=f"Retrains the MNIST classifier: {training.training_schedule_text()}.",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=common.default_args(),
    params=common.trigger_params(),
    tags=["mnist", "ml", "retraining"],
    doc_md=__doc__,
    deadline=training.deadline_alert(),
    on_success_callback=notes.note_the_run,
    on_failure_callback=notes.note_the_run,
)
def mnist_training() -> None:
    # Each task's docstring is its description in the UI (Details, and the graph's tooltip).
    @task
    def ingest() -> dict[str, Any]:
        """Fetches, verifies and validates the base data and the increments: a dataset version."""
        return stages.stage("ingest")

    @task.short_circuit
    def check(ingested: dict[str, Any]) -> dict[str, Any] | bool:
        """Stops the run as UNCHANGED when the champion was trained on exactly these inputs."""
        return training.check(ingested)

    @task
    def preprocess(checked: dict[str, Any]) -> dict[str, Any]:
        """Scales the images and makes the seeded validation split and the fresh test data."""
        return stages.stage("preprocess", checked)

    @task
    def candidates(checked: dict[str, Any]) -> list[int]:
        """Lists the run's candidates (the `candidates` param), one `train` instance each."""
        return training.candidates(checked)

    # A mapped task takes neither its docstring (as its description) nor the operator's
    # arguments in default_args (show_return_value_in_logs): given here.
    @task(pool=training.TRAIN_POOL, queue=training.TRAIN_QUEUE,
          execution_timeout=timedelta(hours=6),
          doc_md="Trains one candidate, one log line per epoch; a retry resumes from its "
                 "checkpoint.", show_return_value_in_logs=False)
    def train(prepared: dict[str, Any], candidate: int) -> dict[str, Any]:
        return training.train(prepared, candidate)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def select(trained: Any) -> dict[str, Any]:
        """Keeps the candidate with the best validation accuracy (failed ones are named)."""
        return training.select(trained)

    @task
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        """Measures the model on the test set and the fresh data: metrics, report, plots."""
        return stages.stage("evaluate", trained)

    @task.short_circuit
    def gate(evaluation: dict[str, Any]) -> dict[str, Any] | bool:
        """Decides PROMOTE or REJECT (threshold, champion, McNemar, per-digit recall)."""
        return training.gate(evaluation)

    @task(outlets=[common.MODEL_REGISTRY])
    def register(decision: dict[str, Any]) -> dict[str, Any]:
        """Registers the promoted model as a new version and moves the champion alias."""
        return training.register(decision)

    checked = check(ingest())
    trained = train.partial(prepared=preprocess(checked)).expand(candidate=candidates(checked))
    # A person's approval (the `approval` param: off | borderline | always): Airflow's
    # ApprovalOperator; it passes the decision on, or asks under "Required actions" and applies
    # the answer. Anything but a final PROMOTE skips register.
    approve = approval.PromotionApproval(
        task_id=approval.APPROVAL_TASK_ID, decision=gate(evaluate(select(trained))),
        doc_md="Passes the gate's decision on, or asks a person (the `approval` param).")
    register(approve.output)


mnist_training()
