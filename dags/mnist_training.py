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
increment to be trained on.

Trigger it from the UI with the form, or from the CLI:
`airflow dags trigger mnist_training --conf '{"preset": "fast_mlp"}'`; several candidates
(a sweep) with `--conf '{"candidates": [{"seed": [1, 2], "learning_rate": [0.002, 0.005]}]}'`
(docs/candidates.md). A trigger may set only
the form's fields; any other key fails the run at its first task, naming the key. The checksum
policy (`MNIST_CHECKSUMS`), the model name (`MNIST_MODEL_NAME`) and the other deployment settings
are environment variables: see `mnist_airflow.py` and the README's deployment table.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import mnist_airflow as glue
from airflow.sdk import TriggerRule, dag, task


@dag(
    dag_id=glue.DAG_ID,
    # Weekly (MNIST_TRAINING_SCHEDULE), or as soon as the landing check announces increments.
    schedule=glue.training_timetable(),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=glue.default_args(),
    params=glue.trigger_params(),
    tags=["mnist", "ml", "retraining"],
    doc_md=__doc__,
    deadline=glue.deadline_alert(),
)
def mnist_training() -> None:
    @task
    def ingest() -> dict[str, Any]:
        return glue.stage("ingest")

    @task.short_circuit
    def check(ingested: dict[str, Any]) -> dict[str, Any] | bool:
        """UNCHANGED (the champion covers these inputs) returns False: nothing later runs."""
        return glue.check(ingested)

    @task
    def preprocess(checked: dict[str, Any]) -> dict[str, Any]:
        return glue.stage("preprocess", checked)

    @task
    def candidates(checked: dict[str, Any]) -> list[int]:
        """The candidates' indexes (the `candidates` param): train maps over them."""
        return glue.candidates(checked)

    @task(pool=glue.TRAIN_POOL, queue=glue.TRAIN_QUEUE, execution_timeout=timedelta(hours=6))
    def train(prepared: dict[str, Any], candidate: int) -> dict[str, Any]:
        """One mapped instance per candidate. Notes each checkpoint in the task state store
        (per instance); a retry resumes from it."""
        return glue.train(prepared, candidate)

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def select(trained: Any) -> dict[str, Any]:
        """Runs when every candidate is done, failed ones too: the best by validation accuracy
        of those that trained; fails when fewer than `min_candidates` did."""
        return glue.select(trained)

    @task
    def evaluate(trained: dict[str, Any]) -> dict[str, Any]:
        return glue.stage("evaluate", trained)

    @task.short_circuit
    def gate(evaluation: dict[str, Any]) -> dict[str, Any] | bool:
        """PROMOTE passes the decision on; REJECT notifies, returns False and skips approve and
        register (with approval 'always' it goes on to a person, who may override it)."""
        return glue.gate(evaluation)

    @task(outlets=[glue.MODEL_REGISTRY])
    def register(decision: dict[str, Any]) -> dict[str, Any]:
        return glue.register(decision)

    checked = check(ingest())
    trained = train.partial(prepared=preprocess(checked)).expand(candidate=candidates(checked))
    # A person's approval (the `approval` param: off | borderline | always): Airflow's
    # ApprovalOperator; it passes the decision on, or asks under "Required actions" and applies
    # the answer. Anything but a final PROMOTE skips register.
    approve = glue.PromotionApproval(
        task_id=glue.APPROVAL_TASK_ID, decision=gate(evaluate(select(trained))))
    register(approve.output)


mnist_training()
