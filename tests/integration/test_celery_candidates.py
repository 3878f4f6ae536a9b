"""Candidates on the Celery deployment (``celery_deployment``: two workers of one slot each, a
``gpu`` pool of two slots): the train task's two mapped instances run at the same time, on two
workers, and the run spends less time training than its two trainings add up to.

One run of two small candidates (fast_mlp, different seeds), on its own store prefix and the
deployment's static source. The windows come from the REST API's task instances (start and end
of each mapped instance, and the worker that ran it).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from mnist_tasks.config import run_key
from mnist_tasks.pipeline import run_summary
from mnist_tasks.registry import Registry
from mnist_tasks.storage import S3Store
from tests.integration.airflow_services import run_path, wait_for_run
from tests.integration.conftest import DAG_ID, DEPLOYMENT_BUCKET, CeleryDeployment

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PREFIX = "candidates"
RUN_TIMEOUT_S = 15 * 60
# Long enough that training, not the task start-up, is most of a train task (2 cores here).
EPOCHS = 2


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _mapped(deployment: CeleryDeployment, run_id: str, task_id: str) -> list[dict[str, Any]]:
    body = deployment.api.json("GET", f"{run_path(DAG_ID, run_id)}/taskInstances",
                               params={"task_id": task_id, "limit": 100})
    return sorted((ti for ti in body["task_instances"] if ti["task_id"] == task_id),
                  key=lambda ti: ti["map_index"])


def test_two_candidates_train_at_the_same_time_on_two_workers(
    celery_deployment: CeleryDeployment,
) -> None:
    deployment = celery_deployment
    store_uri = deployment.store_uri(PREFIX)
    conf = {"preset": "fast_mlp", "epochs": EPOCHS, "min_accuracy": 0.9,
            "source": str(deployment.static_source), "store": store_uri,
            "candidates": [{"seed": [1, 2]}]}
    run = deployment.api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                              json={"logical_date": None, "conf": conf})
    run_id = str(run["dag_run_id"])
    triggered = time.monotonic()
    try:
        run = wait_for_run(deployment.api, deployment.services, DAG_ID, run_id, RUN_TIMEOUT_S)
    except AssertionError as exc:
        pytest.fail(str(exc))
    print(f"\ncandidates run: {time.monotonic() - triggered:.0f} s")

    trains = _mapped(deployment, run_id, "train")
    assert [(t["map_index"], t["state"], t["pool"]) for t in trains] == [
        (0, "success", "gpu"), (1, "success", "gpu")]
    starts = [_time(t["start_date"]) for t in trains]
    ends = [_time(t["end_date"]) for t in trains]
    durations = [(e - s).total_seconds() for s, e in zip(starts, ends, strict=True)]
    # The two windows overlap: with one slot per worker, two workers ran them.
    overlap = (min(ends) - max(starts)).total_seconds()
    wall = (_time(run["end_date"]) - _time(run["start_date"])).total_seconds()
    windows = [f"{s:%H:%M:%S}-{e:%H:%M:%S}" for s, e in zip(starts, ends, strict=True)]
    print(f"train windows {windows}, durations {[round(d) for d in durations]} s, overlap "
          f"{overlap:.0f} s, run wall {wall:.0f} s")
    assert overlap > 0, (starts, ends)
    assert overlap > 0.5 * min(durations), (starts, ends)  # mostly at the same time
    # The run spent less time training than its two trainings add up to: one after the other
    # (one worker), the run would take at least `wall - span + sum(durations)`.
    span = (max(ends) - min(starts)).total_seconds()
    assert span < sum(durations), (span, durations)
    print(f"training span {span:.0f} s < sum of trainings {sum(durations):.0f} s; the run "
          f"{wall:.0f} s < {wall - span + sum(durations):.0f} s one after the other")

    # The run went on with the better one; the record lists both.
    summary = run_summary(S3Store(DEPLOYMENT_BUCKET, PREFIX,
                                  client_kwargs=deployment.s3_client_kwargs), run_id)
    rows = summary["candidates"]
    assert [(r["seed"], r["status"]) for r in rows] == [(1, "trained"), (2, "trained")]
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["candidate"]))
    assert summary["chosen_candidate"] == best["candidate"]
    registry = Registry(S3Store(DEPLOYMENT_BUCKET, PREFIX,
                                client_kwargs=deployment.s3_client_kwargs))
    info = registry.version_for_run(run_key(run_id))
    assert info is not None and info.metadata["parameters"]["seed"] == best["seed"]
    assert len(info.metadata["candidates"]) == 2
