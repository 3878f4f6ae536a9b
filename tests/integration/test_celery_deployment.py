"""The DAGs on a real distributed Airflow: CeleryExecutor, PostgreSQL, Redis, no Docker.

All scenarios share one deployment, ``celery_deployment`` (conftest.py: api-server, scheduler,
dag-processor, a Celery worker for the ``default`` and ``gpu`` queues, the store in S3 on the
moto server over HTTP, both DAGs unpaused under the scheduler); each has its own store prefix
and source, so their order does not matter.

* The first run (``base_run``, triggered through the REST API on the deployment's own source
  and store): its train task routed to the ``gpu`` queue and pool, the new version read back
  from the S3 registry and shown by the Models page, the train and ingest logs read through
  the API.
* Candidates over the workers: the first run has two candidates (fast_mlp, seeds 1 and 2);
  the train task's two mapped instances run at the same time on the two workers (one slot
  each, a ``gpu`` pool of two), so the run spends less time training than its two trainings
  add up to, and it goes on with the better one by validation accuracy.
* A crashed worker: the train task's process is SIGKILLed after epoch 2; Airflow retries the
  task, and the retry resumes from the checkpoint in S3 and from the note in the task state
  store.
* Triggered by data, with nothing polling: after the first run, an increment lands in the
  deployment's source in S3; its marker's PUT notifies the SQS queue, the triggerer's asset
  watcher turns the message into an event, and with no one touching Airflow the watch DAG
  announces the increment (an ``mnist_increments`` asset event), the scheduler starts an
  asset-triggered training run, and that run registers a version trained on the increment,
  whose gate compared it with the champion on the increment's fresh data, which the Models
  page (in Chromium, inside Airflow) shows above the first, with both runs' outcomes. The same
  message delivered again starts a watch run that is skipped, and no second training run; no
  interval-scheduled watch run exists.

The first run is a module fixture shared by three tests (whichever runs first triggers it):
fewer models to train, and the base of the data-triggered scenario is a run already checked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from mnist_tasks.config import run_key
from mnist_tasks.landing_events import parse_markers
from mnist_tasks.pipeline import run_summary
from mnist_tasks.registry import Registry
from mnist_tasks.storage import S3Store
from tests.integration.airflow_services import (
    DAG_ID,
    DEPLOYMENT_BUCKET,
    REPO,
    SOURCE_PREFIX,
    WATCH_DAG_ID,
    WATCHED_PREFIX,
    WORKERS,
    ApiClient,
    CeleryDeployment,
    Services,
    run_failure_report,
    run_path,
    task_instances,
    task_log,
    upload_tree,
    wait_for_run,
    worker_name,
)
from tests.integration.browser import (
    artifacts,
    chromium,
    frame_fits,
    open_logged_in,
    save_failure,
    save_screenshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

RUN_TIMEOUT_S = 15 * 60
# From an increment's marker to the watch's event: the message's reception by the triggerer,
# then the watch run's queueing and its land task's start-up on a busy machine.
ANNOUNCE_TIMEOUT_S = 120
# The DAG's tasks (approve: the approval step, which passes the decision on with approval off).
STAGES = ("ingest", "check", "candidates", "preprocess", "train", "select", "evaluate", "gate",
          "approve", "register")
INCREMENT_ID = "demo-01"


def _trigger(api: ApiClient, conf: dict[str, Any]) -> str:
    run = api.json("POST", f"/api/v2/dags/{DAG_ID}/dagRuns",
                   json={"logical_date": None, "conf": conf})
    return str(run["dag_run_id"])


def _wait_for_run(deployment: CeleryDeployment, run_id: str, dag_id: str = DAG_ID
                  ) -> dict[str, Any]:
    try:
        return wait_for_run(deployment.api, deployment.services, dag_id, run_id, RUN_TIMEOUT_S)
    except AssertionError as exc:
        pytest.fail(str(exc))


def _registry(deployment: CeleryDeployment, prefix: str) -> Registry:
    return Registry(S3Store(DEPLOYMENT_BUCKET, prefix,
                            client_kwargs=deployment.s3_client_kwargs))


def _kill_train_after_epoch(api: ApiClient, services: Services, home: Path, run_id: str,
                            epoch: int, epochs: int) -> int:
    """SIGKILL the train task's process (try 1) once its log shows ``epoch``; the epochs done."""
    log_file = (home / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}" / "task_id=train"
                / "map_index=0" / "attempt=1.log")
    done = re.compile(rf"epoch (\d+)/{epochs} ")
    deadline = time.monotonic() + 300
    while True:
        services.check_alive()
        assert time.monotonic() < deadline, f"no 'epoch {epoch}/{epochs}' in {log_file}"
        text = log_file.read_text(errors="replace") if log_file.exists() else ""
        epochs_done = [int(n) for n in done.findall(text)]
        if epochs_done and max(epochs_done) >= epoch:
            break
        time.sleep(0.1)
    assert max(epochs_done) < epochs, "training finished before it could be killed"
    pid = task_instances(api, DAG_ID, run_id)["train"]["pid"]
    assert isinstance(pid, int) and pid > 0
    os.kill(pid, signal.SIGKILL)
    return max(epochs_done)


@dataclass(frozen=True)
class BaseRun:
    """The deployment's first training run, on its own source and store (MNIST_SOURCE,
    MNIST_STORE): the first-run checks read it, and it is the data-triggered scenario's base."""

    run_id: str
    seconds: float
    champion: int | None  # the registry's champion right after the run
    models_listing: dict[str, Any]  # the Models page's JSON listing right after the run


@pytest.fixture(scope="module")
def base_run(celery_deployment: CeleryDeployment) -> BaseRun:
    """One run shared by three tests (whichever asks first triggers it), so the file trains
    fewer models. Two candidates (seeds 1 and 2) train on the two workers at once. It is
    deliberately weak (fast_mlp, 1 epoch): the asset-triggered run trains
    with the form's defaults (the deployment's MNIST_PRESET, fast_mlp: 6 epochs), and the gate
    compares it with this champion on the benchmark and on the fresh data, digit by digit (a
    recall drop of 0.01 rejects), so its promotion must not hang on a close race between two
    good models."""
    deployment = celery_deployment
    conf = {"preset": "fast_mlp", "epochs": 1, "min_accuracy": 0.9,
            "source": deployment.source_uri, "store": deployment.watched_store_uri,
            "candidates": [{"seed": [1, 2]}]}
    run_id = _trigger(deployment.api, conf)
    triggered = time.monotonic()
    _wait_for_run(deployment, run_id)
    seconds = time.monotonic() - triggered
    print(f"\nbase run: {seconds:.0f} s ({_task_seconds(deployment.api, run_id)})")
    return BaseRun(
        run_id=run_id, seconds=seconds,
        champion=_registry(deployment, WATCHED_PREFIX).get_alias("champion"),
        models_listing=deployment.api.json("GET", "/models/api/versions"),
    )


def _task_seconds(api: ApiClient, run_id: str) -> str:
    """Each task's duration, for the output (where a run's time goes)."""
    tis = task_instances(api, DAG_ID, run_id)
    return ", ".join(f"{t} {ti['duration'] or 0:.0f} s" for t, ti in tis.items())


def test_first_run_is_routed_and_registered(celery_deployment: CeleryDeployment,
                                            base_run: BaseRun) -> None:
    deployment = celery_deployment
    api = deployment.api
    run_id = base_run.run_id

    # Routing: train went to the gpu queue and pool, everything else to default.
    tis = task_instances(api, DAG_ID, run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == {t: "success" for t in STAGES}
    assert (tis["train"]["queue"], tis["train"]["pool"]) == ("gpu", "gpu")
    assert (tis["evaluate"]["queue"], tis["evaluate"]["pool"]) == ("default", "default_pool")
    assert all(ti["executor"] in (None, "CeleryExecutor") for ti in tis.values())

    # The registry in S3 holds the run's version, and it was the champion.
    registry = _registry(deployment, WATCHED_PREFIX)
    info = registry.version_for_run(run_key(run_id))
    assert info is not None and info.version == 1
    assert info.run_id == run_id and info.gate_decision == "PROMOTE"
    assert info.test_accuracy is not None and info.test_accuracy >= 0.9
    assert base_run.champion == 1
    print(f"\nbase run: test accuracy {info.test_accuracy:.4f}")

    # Task logs come back through the API: the worker's per-epoch lines.
    train_log = task_log(api, DAG_ID, run_id, "train", tis["train"]["try_number"], 0)
    assert "epoch 1/1" in train_log, train_log[-3000:]
    ingest_log = task_log(api, DAG_ID, run_id, "ingest", tis["ingest"]["try_number"])
    assert "ingest: validation" in ingest_log, ingest_log[-3000:]

    # The Models page of the same deployment (it reads MNIST_STORE) showed the version.
    listing = base_run.models_listing
    assert [v["version"] for v in listing["versions"]] == [1] and listing["champion"] == 1


def test_workers_import_keras_once_before_their_tasks(
    celery_deployment: CeleryDeployment, base_run: BaseRun,
) -> None:
    """``extra_celery_config`` imports Keras in each worker's main process (as
    docker-compose.yaml's worker): TensorFlow's library is mapped there, so the task processes,
    forks of it, start with it loaded. (After the first run: both workers have run tasks, so
    both finished starting.)"""
    for n in range(1, WORKERS + 1):
        pid = celery_deployment.services.procs[worker_name(n)].pid  # `airflow celery worker`
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "_pywrap_tensorflow_internal" in maps, f"{worker_name(n)} (pid {pid})"


def _train_instances_by_worker(deployment: CeleryDeployment, run_id: str
                               ) -> dict[str, list[int]]:
    """Worker name -> the map indexes of the run's train instances it executed (from the
    ``Executing workload in Celery`` line that the worker logs for each task it takes)."""
    ran: dict[str, list[int]] = {}
    for n in range(1, WORKERS + 1):
        name = worker_name(n)
        for line in (deployment.home / "logs" / f"{name}.log").read_text(
                errors="replace").splitlines():
            if ("Executing workload in Celery" in line and "task_id='train'" in line
                    and f"run_id='{run_id}'" in line):
                found = re.search(r"\bmap_index=(-?\d+)", line)
                assert found, line
                ran.setdefault(name, []).append(int(found.group(1)))
    return ran


def _mapped(api: ApiClient, run_id: str, task_id: str) -> list[dict[str, Any]]:
    body = api.json("GET", f"{run_path(DAG_ID, run_id)}/taskInstances",
                    params={"task_id": task_id, "limit": 100})
    return sorted((ti for ti in body["task_instances"] if ti["task_id"] == task_id),
                  key=lambda ti: ti["map_index"])


def test_two_candidates_train_at_the_same_time_on_two_workers(
    celery_deployment: CeleryDeployment, base_run: BaseRun,
) -> None:
    """The first run's two candidates: the windows come from the REST API's task instances
    (start and end of each mapped instance)."""
    deployment = celery_deployment
    run_id = base_run.run_id
    trains = _mapped(deployment.api, run_id, "train")
    assert [(t["map_index"], t["state"], t["pool"]) for t in trains] == [
        (0, "success", "gpu"), (1, "success", "gpu")]
    starts = [_time(t["start_date"]) for t in trains]
    ends = [_time(t["end_date"]) for t in trains]
    durations = [(e - s).total_seconds() for s, e in zip(starts, ends, strict=True)]
    # Each worker took one of them (its log names the workloads it ran) ...
    ran = _train_instances_by_worker(deployment, run_id)
    assert sorted(ran.values()) == [[0], [1]], ran
    # ... and the two windows overlap: they ran at the same time.
    overlap = (min(ends) - max(starts)).total_seconds()
    windows = [f"{s:%H:%M:%S}-{e:%H:%M:%S}" for s, e in zip(starts, ends, strict=True)]
    print(f"\ntrain windows {windows}, durations {[round(d) for d in durations]} s, overlap "
          f"{overlap:.0f} s")
    assert overlap > 0, (starts, ends)
    # The run spent less time training than its two trainings add up to.
    span = (max(ends) - min(starts)).total_seconds()
    assert span < sum(durations), (span, durations)
    print(f"training span {span:.0f} s < sum of trainings {sum(durations):.0f} s")

    # The run went on with the better one; the record lists both.
    store = S3Store(DEPLOYMENT_BUCKET, WATCHED_PREFIX, client_kwargs=deployment.s3_client_kwargs)
    summary = run_summary(store, run_id)
    rows = summary["candidates"]
    assert [(r["seed"], r["status"]) for r in rows] == [(1, "trained"), (2, "trained")]
    best = max(rows, key=lambda r: (r["val_accuracy"], -r["candidate"]))
    assert summary["chosen_candidate"] == best["candidate"]
    info = _registry(deployment, WATCHED_PREFIX).version_for_run(run_key(run_id))
    assert info is not None and info.metadata["parameters"]["seed"] == best["seed"]
    assert len(info.metadata["candidates"]) == 2


def test_killed_worker_retry_resumes(celery_deployment: CeleryDeployment) -> None:
    # A worker dies mid-training: its process is SIGKILLed after epoch 2. Airflow retries
    # the task (after its retry delay), and the retry resumes instead of starting over.
    deployment = celery_deployment
    api = deployment.api
    conf = {"preset": "seed_mlp", "epochs": 4, "batch_size": 64, "min_accuracy": 0.9,
            "source": str(deployment.static_source), "store": deployment.store_uri("resume")}
    run_id = _trigger(api, conf)
    triggered = time.monotonic()
    killed_after = _kill_train_after_epoch(api, deployment.services, deployment.home, run_id,
                                           epoch=2, epochs=4)
    _wait_for_run(deployment, run_id)
    print(f"\nkilled-worker run: {time.monotonic() - triggered:.0f} s "
          f"({_task_seconds(api, run_id)})")
    train = task_instances(api, DAG_ID, run_id)["train"]
    assert (train["state"], train["try_number"]) == ("success", 2)
    tries = api.json("GET", f"{run_path(DAG_ID, run_id)}/taskInstances/train/0/tries")[
        "task_instances"]
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]
    retry_log = task_log(api, DAG_ID, run_id, "train", 2, 0)
    resumed = re.search(r"resuming from epoch (\d+) of 4", retry_log)
    assert resumed, retry_log[-3000:]
    epoch = int(resumed.group(1))
    assert killed_after <= epoch <= killed_after + 1  # at most the epoch in flight is lost
    assert "try 2: the previous try checkpointed epoch" in retry_log, retry_log[-3000:]
    assert "epoch 1/4" not in retry_log and "epoch 4/4" in retry_log
    print(f"killed after epoch {killed_after}, resumed from epoch {epoch}")


def _watch_events(api: ApiClient) -> list[dict[str, Any]]:
    body = api.json("GET", "/api/v2/assets/events",
                    params={"source_dag_id": WATCH_DAG_ID, "order_by": "timestamp"})
    return list(body["asset_events"])


def _asset_runs(api: ApiClient) -> list[dict[str, Any]]:
    body = api.json("GET", f"/api/v2/dags/{DAG_ID}/dagRuns",
                    params={"run_type": "asset_triggered", "order_by": "run_after"})
    return list(body["dag_runs"])


def _watch_runs(api: ApiClient) -> list[dict[str, Any]]:
    body = api.json("GET", f"/api/v2/dags/{WATCH_DAG_ID}/dagRuns",
                    params={"order_by": "run_after", "limit": 100})
    return list(body["dag_runs"])


def _watch_state(api: ApiClient) -> str:
    """The watch runs and their land tasks, for a failure message."""
    lines = []
    for run in _watch_runs(api)[-6:]:
        land = task_instances(api, WATCH_DAG_ID, run["dag_run_id"]).get("land", {})
        lines.append(f"{run['dag_run_id']}: run {run['state']}, land {land.get('state')}")
    return "watch runs:\n  " + "\n  ".join(lines)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _wait_until(deployment: CeleryDeployment, what: str, timeout: float,
                probe: Any) -> Any:
    """Poll ``probe()`` until it returns something truthy; fail naming ``what``, with the watch
    runs and the services' logs, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        deployment.services.check_alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{_watch_state(deployment.api)}\n"
                        f"{deployment.services.all_logs(2500)}")
        time.sleep(2)


def _models_page_shows(deployment: CeleryDeployment, outcomes: dict[str, str],
                       dataset_version: str, tmp_path: Path) -> None:
    """The Models page in Airflow, in Chromium, as a user reads it: v2 the champion above v1,
    and the training runs with their outcomes (a screenshot in the test's tmp folder)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    shots = artifacts(tmp_path)
    driver = chromium(tmp_path / "chromium-profile")
    wait = WebDriverWait(driver, 60)
    try:
        open_logged_in(driver, f"{deployment.api.base_url}/plugin/models")
        frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR,
                                                           "iframe[title='Models']")))
        driver.switch_to.frame(frame)
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-version]"))
        assert [r.get_attribute("data-version") for r in rows] == ["2", "1"]
        assert "★ champion" in rows[0].text and "fast_mlp" in rows[0].text, rows[0].text
        runs = {r.get_attribute("data-run"): r for r in driver.find_elements(
            By.CSS_SELECTOR, "table.runs tr[data-run]")}
        assert {k: runs[k].get_attribute("data-outcome") for k in outcomes if k in runs} == (
            outcomes), list(runs)
        run_id = list(outcomes)[-1]
        assert dataset_version in runs[run_id].text, runs[run_id].text
        driver.switch_to.default_content()
        wait.until(lambda d: frame_fits(d, frame))
        save_screenshot(driver, shots, "models-page-deployment.png")
    except Exception:
        save_failure(driver, shots, "models-page-deployment-failure")
        raise
    finally:
        driver.quit()


def _consumed_bodies(api: ApiClient, run_id: str) -> list[str]:
    """The SQS message bodies of the landing events that started a watch run."""
    events = api.json("GET", f"{run_path(WATCH_DAG_ID, run_id)}/upstreamAssetEvents")
    return [message["Body"] for event in events["asset_events"]
            for message in (event.get("extra") or {}).get("payload", {}).get("message_batch", [])]


def test_new_increment_triggers_training(celery_deployment: CeleryDeployment,
                                        base_run: BaseRun, tmp_path: Path) -> None:
    """Triggered by data: nobody touches Airflow between the increment landing and the new
    version (the deployment's MNIST_SOURCE and MNIST_STORE are this scenario's alone), and
    nothing polls: the marker's notification starts the watch."""
    import boto3

    deployment = celery_deployment
    api = deployment.api
    source = deployment.source_uri
    registry = _registry(deployment, WATCHED_PREFIX)
    started = time.monotonic()

    # (a) The base run (the fixture: a version of the base-only dataset version).
    base = registry.version_for_run(run_key(base_run.run_id))
    assert base is not None and base.version == 1 and base.gate_decision == "PROMOTE"
    base_lineage = base.metadata["lineage"]
    assert base_lineage["dataset_version"] and base_lineage["increments"] == [], base_lineage
    assert not _watch_events(api), "the watch announced increments before any landed"

    # (b) An increment lands in the source in S3, its marker last: 5,000 of the training
    # images the demo's base held back.
    result = subprocess.run(
        [sys.executable, "-m", "mnist_tasks", "data", "add-increment", "--mnist",
         str(deployment.mnist_dir), "--out", str(deployment.watched_source),
         "--id", INCREMENT_ID],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    s3 = boto3.client("s3", **deployment.s3_client_kwargs)
    keys = upload_tree(s3, deployment.watched_source / "increments" / INCREMENT_ID,
                       DEPLOYMENT_BUCKET, f"{SOURCE_PREFIX}/increments/{INCREMENT_ID}")
    assert keys[-1].endswith("/_SUCCESS"), keys
    landed = time.monotonic()

    events = _wait_until(deployment, f"the watch announcing {INCREMENT_ID}",
                         ANNOUNCE_TIMEOUT_S, lambda: _watch_events(api))
    assert len(events) == 1, events
    event = events[0]
    assert event["source_task_id"] == "land", event
    assert event["extra"] == {"increments": [INCREMENT_ID], "source": source}, event
    announced_s = time.monotonic() - landed
    runs = _wait_until(deployment, "an asset-triggered mnist_training run", 120,
                       lambda: _asset_runs(api))
    assert len(runs) == 1, runs
    run_id = runs[0]["dag_run_id"]
    assert runs[0]["run_type"] == "asset_triggered"
    _wait_for_run(deployment, run_id)
    trained_s = time.monotonic() - landed
    print(f"\nasset-triggered run: {_task_seconds(api, run_id)}")
    tis = task_instances(api, DAG_ID, run_id)
    assert {t: ti["state"] for t, ti in tis.items()} == {t: "success" for t in STAGES}

    info = registry.version_for_run(run_key(run_id))
    assert info is not None and info.version == 2, run_failure_report(
        api, deployment.services, DAG_ID, run_id)
    assert info.gate_decision == "PROMOTE" and registry.get_alias("champion") == 2
    assert info.metadata["parameters"]["preset"] == "fast_mlp"  # the deployment's default
    lineage = info.metadata["lineage"]
    assert [inc["id"] for inc in lineage["increments"]] == [INCREMENT_ID], lineage
    assert lineage["dataset_version"] != base_lineage["dataset_version"], lineage
    increment = lineage["increments"][0]
    assert increment["train"] > 0 and increment["fresh"] > 0, increment
    gate = info.metadata["gate"]
    assert gate["champion_version"] == 1, gate
    fresh = gate["fresh"]
    assert fresh is not None and fresh["n"] == increment["fresh"], gate
    for who in ("challenger_accuracy", "champion_accuracy"):
        assert isinstance(fresh[who], float) and 0.5 < fresh[who] <= 1.0, fresh
    listing = api.json("GET", "/models/api/versions")
    assert [v["version"] for v in listing["versions"]] == [1, 2] and listing["champion"] == 2
    assert listing["versions"][1]["dataset_version"] == lineage["dataset_version"]
    _models_page_shows(deployment, {base_run.run_id: "PROMOTE", run_id: "PROMOTE"},
                       lineage["dataset_version"], tmp_path)

    # (c) At least once: the same message delivered again starts a watch run whose land task
    # is skipped (the record has the increment), so no event and no second training run.
    announcer = event["source_run_id"]
    marker = f"{SOURCE_PREFIX}/increments/{INCREMENT_ID}/_SUCCESS"
    [body] = [b for b in _consumed_bodies(api, announcer)
              if [m.key for m in parse_markers([b])[0]] == [marker]]
    boto3.client("sqs", **deployment.s3_client_kwargs).send_message(
        QueueUrl=deployment.queue_url, MessageBody=body)

    def duplicate_watch_done() -> dict[str, Any] | None:
        for run in _watch_runs(api):
            if (run["dag_run_id"] != announcer and run["state"] in ("success", "failed")
                    and body in _consumed_bodies(api, run["dag_run_id"])):
                return run
        return None

    duplicate = _wait_until(deployment, "the watch run of the repeated message to finish",
                            ANNOUNCE_TIMEOUT_S, duplicate_watch_done)
    lands = task_instances(api, WATCH_DAG_ID, duplicate["dag_run_id"])
    assert {t: ti["state"] for t, ti in lands.items()} == {
        "land": "skipped", "land_batches": "skipped"}, (duplicate, lands)
    assert len(_watch_events(api)) == 1
    assert [r["dag_run_id"] for r in _asset_runs(api)] == [run_id]
    # Nothing polled: every watch run was started by a landing event.
    assert {r["run_type"] for r in _watch_runs(api)} == {"asset_triggered"}
    print(f"data-triggered: base run {base_run.seconds:.0f} s, landed -> announced "
          f"{announced_s:.0f} s, landed -> new version {trained_s:.0f} s, this test "
          f"{time.monotonic() - started:.0f} s; fresh accuracy: challenger "
          f"{fresh['challenger_accuracy']:.4f}, champion {fresh['champion_accuracy']:.4f}")
