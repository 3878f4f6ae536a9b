"""A person's approval before a promotion, answered through Airflow's REST API, on the Celery
deployment (``celery_deployment``: scheduler, api-server, Celery worker, PostgreSQL, Redis, the
store in S3 on the moto server).

Two training runs (fast_mlp, one epoch, ``approval: always``) serve the four answers, in order;
the second answer of each run is given after clearing its ``approve`` task (what an operator
does to reconsider: the task asks again):

1. run 1 (no champion yet, the gate says PROMOTE): **reject** → nothing registered, no
   champion, the rejection recorded with who and when; cleared, then **approve** → v1
   registered and promoted, the approver, time and comment in its metadata and model card;
2. run 2 (``min_accuracy: 1.0``: the gate REJECTs; a short ``approval_timeout_minutes``): the
   form requires a comment; nobody answers → the **timeout**'s default (reject) applies,
   champion still v1; cleared, then **Approve without a reason** (the REST API does not check
   the form) → the override is refused: the approve task fails, saying why, nothing
   registered; cleared, then **override** with a reason → v2 registered and promoted,
   recorded as an override, which ``registry list`` shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from mnist_tasks.config import run_key
from mnist_tasks.registry import Registry
from mnist_tasks.storage import S3Store
from tests.integration.airflow_services import (
    DAG_ID,
    DEPLOYMENT_BUCKET,
    REPO,
    ApiClient,
    CeleryDeployment,
    run_failure_report,
    run_path,
    task_instances,
    task_log,
    wait_for_run,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PREFIX = "approval"
RUN_TIMEOUT_S = 15 * 60
TIMEOUT_MINUTES = 0.5  # run 2's request: 30 s, then the scheduler's sweep (every 15 s)
CONF = {"preset": "fast_mlp", "epochs": 1, "min_accuracy": 0.9, "approval": "always",
        "force": True}


def _trigger(deployment: CeleryDeployment, **conf: Any) -> str:
    body = {**CONF, "source": str(deployment.static_source),
            "store": deployment.store_uri(PREFIX), **conf}
    run = deployment.api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                              json={"logical_date": None, "conf": body})
    return str(run["dag_run_id"])


def _hitl_path(run_id: str) -> str:
    return f"{run_path(DAG_ID, run_id)}/taskInstances/approve/-1/hitlDetails"


def _wait_for_request(deployment: CeleryDeployment, run_id: str) -> dict[str, Any]:
    """Poll until the approve task waits for input; its request (subject, body, options)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        deployment.services.check_alive()
        try:
            tis = task_instances(deployment.api, DAG_ID, run_id)
        except requests.Timeout:  # a busy api-server: ask again
            continue
        state = tis.get("approve", {}).get("state")
        if state == "awaiting_input":
            return dict(deployment.api.json("GET", _hitl_path(run_id)))
        if state in ("success", "failed", "skipped", "upstream_failed") or (
                time.monotonic() > deadline):
            pytest.fail(f"approve is {state!r}, not awaiting input: " + run_failure_report(
                deployment.api, deployment.services, DAG_ID, run_id))
        time.sleep(1)


def _answer(api: ApiClient, run_id: str, choice: str, comment: str | None) -> dict[str, Any]:
    return dict(api.json("PATCH", _hitl_path(run_id), json={
        "chosen_options": [choice], "params_input": {"comment": comment}}))


def _wait(deployment: CeleryDeployment, run_id: str) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        try:
            wait_for_run(deployment.api, deployment.services, DAG_ID, run_id,
                         deadline - time.monotonic())
            return
        except requests.Timeout:  # a busy api-server: ask again
            continue
        except AssertionError as exc:
            pytest.fail(str(exc))


def _clear_approve(api: ApiClient, run_id: str) -> None:
    """Ask again: clear approve (and register after it), as the UI's "Clear" does."""
    api.json("POST", f"/api/v2/dags/{DAG_ID}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["approve"],
        "include_downstream": True, "only_failed": False, "reset_dag_runs": True})


def _states(api: ApiClient, run_id: str) -> dict[str, str]:
    tis = task_instances(api, DAG_ID, run_id)
    return {t: tis[t]["state"] for t in ("gate", "approve", "register")}


def _run_record(deployment: CeleryDeployment, run_id: str, name: str) -> dict[str, Any]:
    store = S3Store(DEPLOYMENT_BUCKET, PREFIX, client_kwargs=deployment.s3_client_kwargs)
    return dict(json.loads(store.read_bytes(f"runs/{run_key(run_id)}/{name}")))


def test_approve_reject_timeout_and_override_through_the_rest_api(
        celery_deployment: CeleryDeployment) -> None:
    deployment = celery_deployment
    api = deployment.api
    registry = Registry(S3Store(DEPLOYMENT_BUCKET, PREFIX,
                                client_kwargs=deployment.s3_client_kwargs))
    started = time.monotonic()

    # -- run 1: the gate says PROMOTE (no champion yet); a person rejects, then approves.
    run1 = _trigger(deployment)
    request = _wait_for_request(deployment, run1)
    asked_s = time.monotonic() - started
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    assert "Promote mnist-classifier" in request["subject"] and run1 in request["subject"]
    body = request["body"]
    dataset_version = _run_record(deployment, run1, "summary.json")["dataset_version"]
    assert body.startswith("### What was trained\n\nPreset **fast_mlp**, 1 epoch, "), body
    assert f"on dataset version **`{dataset_version}`**" in body, body
    assert "### Gate decision: PROMOTE" in body and "approval is 'always'" in body
    assert "| threshold | benchmark | PASS |" in body, body
    assert "### McNemar's test" in body and "### Per-digit recall" in body
    assert "/models/?dag_id=mnist_training&run_id=" in body, body
    # The waiting task holds no worker slot: nothing of this run is running meanwhile.
    assert "running" not in _states(api, run1).values()

    answered = _answer(api, run1, "Reject", "not this week")
    assert answered["responded_by"]["name"] == "admin"
    _wait(deployment, run1)
    assert _states(api, run1) == {"gate": "success", "approve": "success",
                                  "register": "skipped"}
    assert registry.list_versions() == [] and registry.get_alias("champion") is None
    rejected = _run_record(deployment, run1, "approval.json")
    assert rejected["decision"] == "REJECT" and rejected["gate_decision"] == "PROMOTE"
    assert (rejected["approval"]["outcome"], rejected["approval"]["by"],
            rejected["approval"]["comment"]) == ("rejected", "admin", "not this week")
    assert _run_record(deployment, run1, "summary.json")["decision"] == "REJECT"

    _clear_approve(api, run1)
    _wait_for_request(deployment, run1)
    _answer(api, run1, "Approve", "fine for the demo")
    _wait(deployment, run1)
    assert _states(api, run1) == {"gate": "success", "approve": "success",
                                  "register": "success"}
    v1 = registry.version_for_run(run_key(run1))
    assert v1 is not None and v1.version == 1 and registry.get_alias("champion") == 1
    approval = v1.metadata["approval"]
    assert (approval["outcome"], approval["by"], approval["comment"], approval["override"]) == (
        "approved", "admin", "fine for the demo", False), approval
    assert approval["at"] and approval["at"].startswith("20"), approval
    assert v1.gate_decision == "PROMOTE"
    card = registry.store.read_bytes(registry.store.key_of(f"{v1.uri}/model_card.md")).decode()
    assert "## Approval" in card and "fine for the demo" in card and "admin" in card
    run1_s = time.monotonic() - started

    # -- run 2: the gate REJECTs (min_accuracy 1.0); nobody answers in time, then an override.
    run2 = _trigger(deployment, min_accuracy=1.0, approval_timeout_minutes=TIMEOUT_MINUTES)
    request = _wait_for_request(deployment, run2)
    waited = time.monotonic()
    assert "REJECTED" in request["subject"] and "### Gate decision: REJECT" in request["body"]
    assert "written reason" in request["body"] and "| threshold | benchmark | **FAIL** |" in (
        request["body"])
    # The form requires the comment (Airflow's form disables both answers until it is given).
    schema = request["params"]["comment"]["schema"]
    assert (schema["type"], schema["minLength"]) == ("string", 1), schema
    _wait(deployment, run2)
    timeout_s = time.monotonic() - waited
    assert timeout_s >= TIMEOUT_MINUTES * 60 - 5, timeout_s
    assert _states(api, run2) == {"gate": "success", "approve": "success",
                                  "register": "skipped"}
    timed_out = _run_record(deployment, run2, "approval.json")["approval"]
    assert (timed_out["outcome"], timed_out["by"], timed_out["timed_out"]) == (
        "timed out", None, True), timed_out
    assert registry.get_alias("champion") == 1 and registry.version_for_run(run_key(run2)) is None

    # Approve without a reason (past the form, through the REST API): refused, visibly.
    _clear_approve(api, run2)
    _wait_for_request(deployment, run2)
    _answer(api, run2, "Approve", None)
    with pytest.raises(AssertionError, match="ended as 'failed'"):
        wait_for_run(api, deployment.services, DAG_ID, run2, RUN_TIMEOUT_S)
    assert _states(api, run2) == {"gate": "success", "approve": "failed",
                                  "register": "upstream_failed"}
    refused = _run_record(deployment, run2, "approval.json")["approval"]
    assert refused["outcome"] == "override refused", refused
    log = task_log(api, DAG_ID, run2, "approve",
                   task_instances(api, DAG_ID, run2)["approve"]["try_number"])
    assert "override refused: an override of the gate's REJECT needs a written reason" in log
    assert registry.get_alias("champion") == 1 and registry.version_for_run(run_key(run2)) is None

    _clear_approve(api, run2)
    _wait_for_request(deployment, run2)
    reason = "threshold set too high for this experiment"
    _answer(api, run2, "Approve", reason)
    _wait(deployment, run2)
    v2 = registry.version_for_run(run_key(run2))
    assert v2 is not None and v2.version == 2, run_failure_report(
        api, deployment.services, DAG_ID, run2)
    assert registry.get_alias("champion") == 2
    assert v2.gate_decision == "REJECT" and v2.overridden
    assert (v2.metadata["approval"]["outcome"], v2.metadata["approval"]["comment"]) == (
        "override", reason)
    log = task_log(api, DAG_ID, run2, "approve",
                   task_instances(api, DAG_ID, run2)["approve"]["try_number"])
    assert "APPROVAL override" in log, log[-3000:]

    listing = subprocess.run(
        [sys.executable, "-m", "mnist_tasks.registry", "--store", deployment.store_uri(PREFIX),
         "list"], cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**_s3_env(deployment)},
    )
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    row2 = next(line for line in lines if line.split()[:2] == ["*", "2"])
    assert "REJECT" in row2 and "OVERRIDE by admin" in row2, listing.stdout
    assert any(line.startswith("v2 OVERRIDE of the gate's REJECT by admin") and reason in line
               for line in lines), listing.stdout
    print(f"\napproval scenarios: run 1 asked after {asked_s:.0f} s, done (reject, clear, "
          f"approve) after {run1_s:.0f} s; run 2's timeout resolved {timeout_s:.0f} s after the "
          f"request; all {time.monotonic() - started:.0f} s")
    print(listing.stdout)


def _s3_env(deployment: CeleryDeployment) -> dict[str, str]:
    import os

    kwargs = deployment.s3_client_kwargs
    return {**os.environ, "AWS_ENDPOINT_URL_S3": kwargs["endpoint_url"],
            "AWS_ACCESS_KEY_ID": kwargs["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": kwargs["aws_secret_access_key"],
            "AWS_DEFAULT_REGION": kwargs["region_name"]}
